"""What hostile bodies cost a check, before and after the bounds of executors/_kit/limits.py, in one process.

    python bench/bench_hostile.py [--checks 5]

Prints, for a gzip bomb (1 MB inflating to 1 GiB) and for http-json-query on 1 MiB of nested arrays:
CPU per check and the longest loop stall, through the real executor on uvloop (targets in a child
process). The "before" rows run the same executor with the bound taken out (an inflater without the
cap; body work called on the loop), as the code was before. Then the cost of `offload` itself:
inline vs on the lane.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import uvloop  # noqa: E402

import cpu_peers  # noqa: E402
from executors._kit import limits as _limits  # noqa: E402
from http_peers import cfg, run  # noqa: E402


class Uncapped(_limits.Inflater):
    """The inflate before the cap: the whole stream is inflated (keeping the first `keep` bytes)."""

    def __init__(self, cap: int) -> None:
        super().__init__(1 << 62)


async def inline(fn, *args):
    """The body work before `offload`: run on the loop, start to end."""
    return fn(*args)


def fmt(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:7.1f} ms, max {max(values) * 1000:7.1f} ms"


async def measure(label: str, doc: dict, monitor_type: str, checks: int, passed) -> None:
    """Run `checks` checks of `doc` one after another, each measured by cpu_peers.with_lag; every result
    must pass `passed`. Prints CPU per check and the longest loop stall under `label`."""
    got = [await cpu_peers.with_lag(run(doc, monitor_type, timeout=30)) for _ in range(checks)]
    assert all(passed(r) for r, _, _ in got), {r.message for r, _, _ in got}
    print(f"  {label}: CPU per check {fmt([c for _, c, _ in got])}; loop stall {fmt([lag for _, _, lag in got])}")


async def main(checks: int, base: str) -> None:
    bomb_size = len(cpu_peers.gzip_bomb(cpu_peers.BOMB_BYTES))
    print(f"gzip bomb ({bomb_size / 1e6:.2f} MB inflating to {cpu_peers.BOMB_BYTES >> 30} GiB), http-keyword, {checks} checks")
    doc = cfg(f"{base}/bomb", keyword="keyword-at-start")
    for label, inflater in (("before (whole stream inflated)", Uncapped), ("now (inflated up to the cap) ", _limits.Inflater)):
        with mock.patch.object(_limits, "Inflater", inflater):
            await measure(label, doc, "http-keyword", checks, lambda r: r.message == "200 - 200 OK")

    print(f"http-json-query '#.id' on {cpu_peers.DEEP_BYTES >> 20} MiB of nested arrays, {checks} checks")
    doc = cfg(f"{base}/deep", json_query="#.id", json_condition="==", expected_value="1")
    for label, runner in (("before (query on the loop)", inline), ("now (offloaded)           ", _limits.offload)):
        with mock.patch.object(_limits, "offload", runner):
            await measure(label, doc, "http-json-query", checks,
                          lambda r: r.message.startswith("JSON query validation failed"))

    def small(n: int) -> int:
        return n + 1

    def slow(n: int) -> int:
        while True:
            _limits.checkpoint()  # past the inline slice at once: moves to the lane
            return n + 1

    for name, fn in (("inline (quick work)", small), ("lane thread", slow)):
        rounds = 2000
        _limits.INLINE_BUDGET = 0.002 if fn is small else -1.0  # -1: every checkpoint is past the slice
        t, cpu = time.perf_counter(), time.process_time()
        for i in range(rounds):
            await _limits.offload(fn, i)
        print(f"offload {name:20}: {(time.perf_counter() - t) / rounds * 1e6:6.1f} us wall, "
              f"{(time.process_time() - cpu) / rounds * 1e6:6.1f} us CPU per call")
    _limits.INLINE_BUDGET = 0.002


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=5)
    args = parser.parse_args()
    proc, port = cpu_peers.start()
    try:
        uvloop.run(main(args.checks, f"http://127.0.0.1:{port}"))
    finally:
        cpu_peers.stop(proc)
