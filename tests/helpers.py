"""Small helpers shared by the tests: run an in-process server until a condition holds, decode tasks,
run checks through Redis and the real handler, look for secrets and open sockets."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterable
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


# --------------------------------------------------------------------------------------------------
# Checks through Redis and the real handler, as in production

# The ingester's payload: its keys in Go's order (no tls_info unless a check has one) and the Go struct the
# ingester decodes it into (DisallowUnknownFields: a key it lacks would be an error).
INGEST_KEYS = ["monitor_id", "monitor_name", "monitor_type", "monitor_interval", "monitor_timeout",
               "monitor_max_retries", "monitor_retry_interval", "monitor_resend_interval", "monitor_config",
               "status", "message", "ping_ms", "start_time", "end_time", "is_under_maintenance", "check_cert_expiry"]
INGEST_SCHEMA = {"monitor_id": str, "monitor_name": str, "monitor_type": str, "monitor_interval": int,
                 "monitor_timeout": int, "monitor_max_retries": int, "monitor_retry_interval": int,
                 "monitor_resend_interval": int, "monitor_config": str, "status": int, "message": str,
                 "ping_ms": int, "start_time": str, "end_time": str, "is_under_maintenance": bool,
                 "tls_info": dict, "check_cert_expiry": bool}


async def ingested_at_least(redis, n: int) -> bool:
    return await redis.llen("asynq:{ingester}:pending") >= n


async def no_healthcheck_leases(redis) -> bool:
    return not await redis.exists("asynq:{healthcheck}:lease")


async def run_through_worker(redis, payloads: Iterable[bytes], concurrency: int = 64, timeout: float = 30,
                             go_strict: bool = False, **server_options: Any) -> list[dict]:
    """Enqueue each healthcheck payload (from healthcheck_payload) as the Go producer does, run an
    in-process worker with the real healthcheck handler at `concurrency` until the healthcheck queue is
    empty (within `timeout` s), every result is in the ingester queue and no lease is left, then stop it.
    Returns every ingester payload in queue order, each decoded from strict UTF-8 JSON; with `go_strict`
    each must also decode as the Go ingester's struct with DisallowUnknownFields."""
    import healthcheck
    from executors._kit.gojson import decode_struct

    broker = aq.Broker(redis)
    client = aq.Client(broker)
    try:
        count = 0
        for payload in payloads:
            task = json.loads(payload)
            await enqueue_healthcheck(client, payload, task["monitor_id"], timeout=task["timeout"],
                                      interval=task["interval"])
            count += 1
        handlers = {worker.HEALTHCHECK_TASK: healthcheck.healthcheck_handler(client)}
        async with running_server(redis, handlers, concurrency=concurrency, **server_options):
            await wait_until(lambda: queue_empty(redis, "healthcheck"), timeout)
            await wait_until(lambda: ingested_at_least(redis, count), 10)
            await wait_until(lambda: no_healthcheck_leases(redis), 10)
        bodies = []
        for raw in await redis.lrange("asynq:{ingester}:pending", 0, -1):
            text = (await task_message(redis, "ingester", raw.decode())).payload.decode("utf-8")  # strict UTF-8
            if go_strict:
                decode_struct(text, INGEST_SCHEMA, "ingester.Payload", strict=True)
            bodies.append(json.loads(text))
        return bodies
    finally:
        await broker.close()


def cycled(monitor_type: str, cases: list[tuple], prefix: str, count: int = 100,
           timeout: int = 5) -> tuple[list[bytes], dict[str, Any]]:
    """`count` healthcheck payloads going round `cases` ((config, what it should give, ...) each), for
    monitors prefix0, prefix1, ...; and by monitor id what its case expects (the rest of the case: a
    tuple, or the one value)."""
    payloads, expected = [], {}
    for i in range(count):
        config, *expects = cases[i % len(cases)]
        payloads.append(healthcheck_payload(monitor_type, config, monitor_id=f"{prefix}{i}", timeout=timeout))
        expected[f"{prefix}{i}"] = expects[0] if len(expects) == 1 else tuple(expects)
    return payloads, expected


def one_result_each(bodies: Iterable[dict]) -> dict[str, dict]:
    """The ingester payloads by monitor id; fails when a monitor has more than one."""
    seen: dict[str, dict] = {}
    for body in bodies:
        assert body["monitor_id"] not in seen, f"a second result for {body['monitor_id']}"
        seen[body["monitor_id"]] = body
    return seen


def assert_no_secret(secrets: Iterable[str], bodies: Iterable[dict] = (), caplog=None, *,
                     logged: bool = False) -> None:
    """No secret in what the worker wrote to the ingester (monitor_config included: its secrets are
    masked) nor in any captured log record: its message, its arguments or its structured `fields`. With
    `logged`, there must be log records to look at."""
    secrets = [secret for secret in secrets if secret]
    for body in bodies:
        written = json.dumps(body, ensure_ascii=False)
        assert not [s for s in secrets if s in written], body.get("monitor_id")
    if caplog is not None:
        assert caplog.records or not logged, "nothing was logged"
        text = caplog.text + "\n".join(f"{record.getMessage()} {record.args!r} {getattr(record, 'fields', '')!r}"
                                        for record in caplog.records)
        assert not [s for s in secrets if s in text], "a secret in a log record"


# --------------------------------------------------------------------------------------------------
# Sockets

def connections_to(port: int) -> list:
    """This process's TCP connections (psutil's) whose remote port is `port`."""
    import psutil

    return [c for c in psutil.Process().net_connections(kind="tcp") if c.raddr and c.raddr.port == port]


def sockets_to(*ports: int) -> int:
    """How many TCP sockets of this process have one of `ports` as their remote port."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                count += fields[9] in inodes and int(fields[2].rsplit(":", 1)[1], 16) in ports
    return count
