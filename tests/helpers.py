"""Small helpers shared by the tests: run an in-process server until a condition holds, decode tasks."""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import asynccontextmanager
from typing import Any

import asynq_protocol as aq
import worker


async def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if await predicate():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not reached within {timeout} s")


@asynccontextmanager
async def running_server(redis, handlers: dict, **options: Any):
    """An in-process worker.Server, stopped gracefully on exit."""
    options.setdefault("queues", dict(worker.DEFAULT_QUEUES))
    server = worker.Server(redis, handlers, **options)
    server.IDLE_SLEEP = 0.1
    run = asyncio.create_task(server.run())
    try:
        yield server
    finally:
        server.stop()
        await asyncio.wait_for(run, 30)


async def task_message(redis, queue: str, task_id: str) -> Any:
    data = await redis.hget(aq.task_key(queue, task_id), "msg")
    if data is None:
        return None
    msg = aq.TaskMessage()
    msg.ParseFromString(data)
    return msg


async def ingest_tasks(redis) -> list[tuple[Any, dict]]:
    """(message, decoded JSON payload) of every task waiting in the ingester queue."""
    out = []
    for raw in await redis.lrange("asynq:{ingester}:pending", 0, -1):
        msg = await task_message(redis, "ingester", raw.decode())
        out.append((msg, json.loads(msg.payload)))
    return out


async def queue_empty(redis, queue: str) -> bool:
    return not await redis.llen(f"asynq:{{{queue}}}:pending") and not await redis.llen(f"asynq:{{{queue}}}:active")


def healthcheck_payload(monitor_type: str, config: dict | str, *, monitor_id: str = "mon-1", interval: int = 60,
                        timeout: int = 16, scheduled_at: str | None = None, **extra: Any) -> bytes:
    """A payload as the Go producer encodes it (key order of spec section 2.2)."""
    from executors._kit.gotext import format_rfc3339

    body: dict[str, Any] = {
        "monitor_id": monitor_id, "monitor_name": f"Monitor {monitor_id}", "monitor_type": monitor_type,
        "interval": interval, "timeout": timeout, "max_retries": 0, "retry_interval": 60, "resend_interval": 0,
        "config": config if isinstance(config, str) else json.dumps(config),
    }
    body.update({k: v for k, v in extra.items() if k in ("proxy", "last_heartbeat")})
    body["scheduled_at"] = scheduled_at or format_rfc3339(time.time_ns() // 1_000_000 * 1_000_000)
    body["is_under_maintenance"] = extra.get("is_under_maintenance", False)
    body["check_cert_expiry"] = extra.get("check_cert_expiry", False)
    return json.dumps(body, separators=(",", ":")).encode()


async def enqueue_healthcheck(client: aq.Client, payload: bytes, monitor_id: str = "mon-1", timeout: int = 16,
                              interval: int = 60) -> Any:
    """Enqueue with the Go producer's options (spec section 2.1)."""
    return await client.enqueue("monitor:healthcheck", payload, queue="healthcheck", max_retry=0, timeout=timeout,
                                retention=0, unique_ttl=2 * interval, task_id=f"healthcheck:{monitor_id}")
