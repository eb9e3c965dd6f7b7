"""`peekaping-worker check`: run one check locally, without Redis, and print its result."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from typing import Any

from worker import EXECUTORS, TaskError, __version__, _event_loop_runner, load_executor


async def _check_once(monitor_type: str, config: str, timeout: float) -> Any:
    from executors import Monitor

    monitor = Monitor(id="local", name="local check", type=monitor_type, interval=60, timeout=int(math.ceil(timeout)),
                      config=config)
    module = await load_executor(monitor_type)
    return await asyncio.wait_for(module.check(monitor, None, timeout), timeout + 0.1)


def check_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="peekaping-worker check",
                                     description="Run one check locally (no Redis) and print the result.")
    parser.add_argument("type", help="monitor type, e.g. tcp")
    parser.add_argument("config", help="the monitor's config as a JSON string")
    parser.add_argument("--timeout", type=float, default=16.0, help="seconds (default 16)")
    parser.add_argument("--json", action="store_true", help="print the ingest fields as JSON")
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        print("peekaping-worker check: --timeout must be positive", file=sys.stderr)
        return 2
    from executors import ConfigError, format_rfc3339

    try:
        result = _event_loop_runner()(_check_once(args.type, args.config, args.timeout))
    except ConfigError as exc:
        print(f"peekaping-worker check: {exc}", file=sys.stderr)
        return 2
    except TaskError as exc:
        print(f"peekaping-worker check: {exc}", file=sys.stderr)
        return 2
    except asyncio.TimeoutError:
        print(f"DOWN  check timed out after {args.timeout:g}s")
        return 1
    if result is None:
        print("nothing to report (the executor returned no result)")
        return 0
    if args.json:
        out: dict[str, Any] = {"status": result.status, "message": result.message, "ping_ms": result.ping_ms,
                               "start_time": format_rfc3339(result.start_ns),
                               "end_time": format_rfc3339(result.end_ns)}
        if result.tls_info is not None:
            out["tls_info"] = result.tls_info
        if result.timings:
            out["timings"] = result.timings
        print(json.dumps(out, ensure_ascii=False))
    else:
        name = {0: "DOWN", 1: "UP", 2: "PENDING", 3: "MAINTENANCE"}.get(result.status, str(result.status))
        print(f"{name}  {result.message}  ({result.ping_ms} ms)")
    return 0 if result.status in (1, 3) else 1


def version_text() -> str:
    built = sorted(t for t, path in EXECUTORS.items() if path)
    coming = sorted(t for t, path in EXECUTORS.items() if not path)
    return (f"peekaping-worker {__version__} (Python {sys.version.split()[0]})\n"
            f"executors: {', '.join(built)}\n"
            f"not yet supported: {', '.join(coming)}")


