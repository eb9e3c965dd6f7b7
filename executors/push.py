"""`push`: the target pushes to the API; the worker only reports when the last push is missing or late."""

from __future__ import annotations

import time

from executors import DOWN, Monitor, Result, instant
from executors._kit.gotext import parse_rfc3339

# Go's PushConfig, for `peekaping-worker types`: the executor never reads the config; it judges the last
# heartbeat.
SCHEMA = {"pushToken": str}
FIELDS = {"pushToken": "the token in the push URL the monitored system calls (used by the API, not here)"}
SUMMARY = ("the monitored system pushes to the API; the check is DOWN when the last push is missing, not UP "
           "or older than the interval, and reports nothing otherwise")
EXAMPLES = {"push": ({"pushToken": "abc123"}, "DOWN", '"No push received yet" (a local check has no last push)')}


async def check(monitor: Monitor, proxy: dict | None, budget: float) -> Result | None:
    beat = monitor.last_heartbeat
    if beat is None:
        return instant(DOWN, "No push received yet")
    try:
        when = parse_rfc3339(beat.get("time") or "")
    except ValueError:
        when = None
    if beat.get("status") == 1 and when is not None and time.time() - when <= monitor.interval:
        return None
    return instant(DOWN, "No push received in time")
