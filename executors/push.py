"""`push`: the target pushes to the API; the worker only reports when the last push is missing or late."""

from __future__ import annotations

import time

from executors import DOWN, Monitor, Result, instant, parse_rfc3339


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
