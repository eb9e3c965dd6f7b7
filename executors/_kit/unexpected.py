"""The last line of defence: an exception no executor expected still gives the monitor its heartbeat."""

from __future__ import annotations

import logging
import os
import time
import traceback

from executors import DOWN, Monitor, Result
from executors._kit.gojson import clean_text, decode_json

_log = logging.getLogger("peekaping.worker")
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def unexpected_result(monitor: Monitor, proxy: dict | None, exc: Exception, start_ns: int) -> Result:
    """The DOWN result for an exception an executor did not expect, logged as one line (no traceback).

    The exception's text can quote config values (a password in `invalid literal ...`), so every
    string of the config and the proxy credentials is masked in it, and it is cut to 200 characters.
    """
    detail = _mask(str(exc), _config_strings(monitor.config, proxy))
    detail = clean_text(detail if len(detail) <= 200 else detail[:200] + "...")
    place = where(exc)
    _log.error("check raised an unexpected exception; reporting DOWN",
               extra={"fields": {"monitor_id": clean_text(monitor.id[:100]), "monitor_type": clean_text(monitor.type[:100]),
                                 "error": f"{type(exc).__name__} at {place}: {detail}"}})
    message = f"{monitor.type} check failed: unexpected {type(exc).__name__} at {place}"
    return Result(DOWN, clean_text(f"{message}: {detail}" if detail else message), start_ns, time.time_ns())


def where(exc: BaseException) -> str:
    """`file:line` of the innermost frame of this program the exception passed through, then the
    innermost frame when that is in a library: `tcp.py:52 > idna.py:165`."""
    frames = [(frame.f_code.co_filename, line) for frame, line in traceback.walk_tb(exc.__traceback__)]
    if not frames:
        return "?"
    ours = [f for f in frames if os.path.abspath(f[0]).startswith(_ROOT + os.sep)
            and "site-packages" not in f[0] and os.sep + ".venv" + os.sep not in f[0]]
    text = lambda frame: f"{os.path.basename(frame[0])}:{frame[1]}"
    if not ours or ours[-1] == frames[-1]:
        return text(frames[-1])
    return f"{text(ours[-1])} > {text(frames[-1])}"


def _config_strings(config: str, proxy: dict | None) -> list[str]:
    """Every string (of 3+ characters) in the config document and the proxy credentials, longest first."""
    found = {config, clean_text(config)}
    if proxy:
        found.update(v for v in (proxy.get("username"), proxy.get("password")) if isinstance(v, str))
    try:
        pending = [decode_json(config)]
    except ValueError:  # not JSON: the whole document is masked
        pending = []
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            found.add(value)
        elif isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return sorted((s for s in found if len(s) >= 3), key=len, reverse=True)


def _mask(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text
