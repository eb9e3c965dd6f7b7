"""Peekaping's `monitor:healthcheck` handler: decode the producer's payload, skip stale tasks, report
maintenance, run the monitor's executor under the task's budget, enqueue the `monitor:ingest` result.

It is the one job function the worker loop (`worker.py`) serves; everything it writes follows the Go
worker's handler and the Go ingester's payload byte for byte.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from executors import DOWN, ConfigError, Result, instant
from settings import _fields
from worker import INGEST_TASK, Handler, Task, TaskError, executor_path, load_executor

log = logging.getLogger("peekaping.worker")

# executors._kit modules, imported by the first task (an idle worker does without them) and kept here:
# a `from … import` in a function costs about a microsecond per call.
_gojson: Any = None
_gotext: Any = None
_limits: Any = None
_redact: Any = None


def _load_kit() -> None:
    global _gojson, _gotext, _limits, _redact
    from executors._kit import gojson, gotext, limits, redact

    _gojson, _gotext, _limits, _redact = gojson, gotext, limits, redact


PAYLOAD_SCHEMA = {"monitor_id": str, "monitor_name": str, "monitor_type": str, "interval": int, "timeout": int,
                  "max_retries": int, "retry_interval": int, "resend_interval": int, "config": str,
                  "proxy": dict, "last_heartbeat": dict, "scheduled_at": str, "is_under_maintenance": bool,
                  "check_cert_expiry": bool}
PROXY_SCHEMA = {"id": str, "protocol": str, "host": str, "port": int, "auth": bool, "username": str,
                "password": str}
HEARTBEAT_SCHEMA = {"id": str, "monitor_id": str, "status": int, "msg": str, "ping": int, "duration": int,
                    "down_count": int, "retries": int, "important": bool, "time": str, "end_time": str,
                    "notified": bool}


_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # json.dumps makes one per call


def decode_payload(data: bytes) -> dict[str, Any]:
    """Lenient Go-style decoding of the health-check payload; ValueError on bad JSON or types."""
    if _gojson is None:
        _load_kit()
    decode_struct = _gojson.decode_struct
    p = decode_struct(data, PAYLOAD_SCHEMA, "worker.HealthCheckTaskPayload", strict=False)
    if p["proxy"] is not None:
        p["proxy"] = decode_struct(p["proxy"], PROXY_SCHEMA, "worker.ProxyPayload", strict=False, parsed=True)
    if p["last_heartbeat"] is not None:
        p["last_heartbeat"] = decode_struct(p["last_heartbeat"], HEARTBEAT_SCHEMA, "worker.HeartbeatPayload",
                                            strict=False, parsed=True)
    # A missing scheduled_at is Go's zero time (year 1): always stale.
    p["scheduled_at"] = _gotext.parse_rfc3339(p["scheduled_at"]) if p["scheduled_at"] else -62135596800.0
    return p


def check_margin(timeout: float) -> float:
    """Time kept back from the task deadline to enqueue the result and acknowledge the task."""
    return min(1.0, max(0.5, timeout * 0.05))


async def run_check(monitor: Any, proxy: dict | None, budget: float) -> Any:
    """Run one executor under a hard budget; config errors and overruns become DOWN results, and so
    does any unexpected exception (the last line of defence: the monitor still gets its heartbeat)."""
    module = await load_executor(monitor.type)
    start = time.time_ns()
    try:
        async with asyncio.timeout(max(budget, 0.0) + 0.1):
            return await module.check(monitor, proxy, budget)
    except ConfigError as exc:
        return instant(DOWN, str(exc))
    except asyncio.TimeoutError:
        return Result(DOWN, f"{monitor.type} check timed out after {budget:.3g}s: context deadline exceeded",
                      start, time.time_ns())
    except Exception as exc:  # CancelledError is a BaseException: shutdown and task cancels still pass
        from executors._kit.unexpected import unexpected_result

        return unexpected_result(monitor, proxy, exc, start)


def ingest_payload(p: dict[str, Any], result: Any, extensions: bool = False, origin: dict | None = None) -> bytes:
    """The ingest JSON; with extensions, phase timings and `origin` (`site`, `worker`: where it was checked)."""
    if _gotext is None:
        _load_kit()
    format_rfc3339 = _gotext.format_rfc3339
    body: dict[str, Any] = {
        "monitor_id": p["monitor_id"], "monitor_name": p["monitor_name"], "monitor_type": p["monitor_type"],
        "monitor_interval": p["interval"], "monitor_timeout": p["timeout"],
        "monitor_max_retries": p["max_retries"], "monitor_retry_interval": p["retry_interval"],
        "monitor_resend_interval": p["resend_interval"], "monitor_config": _redact.masked_config(p["config"]),
        "status": result.status, "message": result.message, "ping_ms": result.ping_ms,
        "start_time": format_rfc3339(result.start_ns), "end_time": format_rfc3339(result.end_ns),
        "is_under_maintenance": result.status == 3,
    }
    if result.tls_info is not None:
        body["tls_info"] = result.tls_info
    body["check_cert_expiry"] = p["check_cert_expiry"]
    if extensions and result.timings:
        body["timings"] = result.timings
    if extensions and origin:
        body.update(origin)
    text = _JSON.encode(body)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate in an executor's text: U+FFFD, as Go's json.Marshal
        from executors._kit.gojson import clean_text
        return clean_text(text).encode("utf-8")


async def enqueue_result(client: Any, p: dict[str, Any], result: Any, extensions: bool = False,
                         origin: dict | None = None) -> None:
    """Enqueue the `monitor:ingest` task of a result with the Go worker's options; TaskError if Redis refuses."""
    try:
        await client.enqueue(INGEST_TASK, ingest_payload(p, result, extensions, origin), queue="ingester",
                             max_retry=3, timeout=120, retention=3600, unique_ttl=1,
                             task_id=f"ingest:{p['monitor_id']}:{result.start_ns}")
    except Exception as exc:
        raise TaskError(f"failed to enqueue ingester task: {exc}") from None
    # Go logs this at info; here it is debug: one line per check floods an edge box's journal at
    # thousands of checks/s (LOG_LEVEL=debug shows it; /metrics counts results by type and status).
    log.debug("Successfully enqueued result to ingester",
             extra=_fields(monitor_id=p["monitor_id"], status=result.status, ping_ms=result.ping_ms))


def healthcheck_handler(client: Any, extensions: bool = False, origin: dict | None = None,
                        stats: Any = None) -> Handler:
    """The `monitor:healthcheck` handler (as Peekaping's Go worker handler); `origin` is added to results
    with extensions; `stats` (metrics.Stats) counts results, durations and stale tasks."""
    from executors import MAINTENANCE, Monitor, instant
    from metrics import Stats

    if stats is None:
        stats = Stats()

    async def handle(task: Task) -> None:
        if _limits is None:
            _load_kit()  # on the first task: an idle worker does without them (and ctypes)
        _limits.trim_soon(len(task.payload))  # hand the heap back to the OS after a burst of large payloads
        try:
            p = decode_payload(task.payload)
        except Exception as exc:  # ValueError in Go's words; anything else still names the payload
            raise TaskError(f"failed to unmarshal payload: {exc}") from None
        if time.time() - p["scheduled_at"] > p["interval"] * 1.5:
            stats.stale_skipped += 1
            log.warning("Skipping stale health check task", extra=_fields(monitor_id=p["monitor_id"]))
            return
        monitor = Monitor(p["monitor_id"], p["monitor_name"], p["monitor_type"], p["interval"], p["timeout"],
                          p["max_retries"], p["retry_interval"], p["resend_interval"], p["config"],
                          p["last_heartbeat"])
        ran = None
        if p["is_under_maintenance"]:
            result = instant(MAINTENANCE, "Monitor under maintenance")
        else:
            executor_path(monitor.type)  # unknown or unbuilt type: fail before any work
            budget = min(float(monitor.timeout), task.deadline - time.time() - check_margin(monitor.timeout))
            started = time.monotonic()
            result = await run_check(monitor, p["proxy"], budget)
            ran = time.monotonic() - started
            if result is None:
                log.debug("Executor returned nil - no heartbeat needed", extra=_fields(monitor_id=monitor.id))
                return
        stats.check_done(monitor.type, result.status, ran)
        stats.results_waiting += 1
        try:
            await enqueue_result(client, p, result, extensions, origin)
        finally:
            stats.results_waiting -= 1

    return handle
