"""A test peer: an executor with bugs, to prove the handler's last line of defence. Registered under
the type `broken` by the tests that use it; `mode` in the config picks the bug."""

from __future__ import annotations

import json


async def check(monitor, proxy, budget):
    cfg = json.loads(monitor.config)
    mode = cfg.get("mode")
    if mode == "leak":
        return int(cfg["password"])  # ValueError: invalid literal for int() with base 10: '<password>'
    if mode == "recurse":
        return _forever(0)
    if mode == "bad-text":
        raise RuntimeError("text with a lone surrogate \udc80 in it")
    raise KeyError(mode)


def _forever(n: int) -> int:
    return _forever(n + 1) + 1
