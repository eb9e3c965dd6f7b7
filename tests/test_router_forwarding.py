"""The router in-process against a private Redis: the forwarded message, re-deliveries, what waits in a
site queue, tasks a dead router left active, offline sites and the sweep."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from contextlib import asynccontextmanager
from types import SimpleNamespace

from helpers import enqueue_healthcheck, ingest_tasks, task_message, wait_until
from router_helpers import named_payload

import asynq_protocol as aq
from router import Router
from sites_rules import parse_rules

RULES = """
unmatched = "run"
[[rule]]
site = "berlin"
names = ["[berlin]*"]
[[rule]]
site = "paris"
names = ["[paris-queue]*"]
offline = "queue"
[[rule]]
site = "paris"
names = ["[paris-run]*"]
offline = "run"
[[rule]]
site = "paris"
types = ["push"]
"""
DEAD = SimpleNamespace(host="gone", pid=1, server_id="dead-router")


@asynccontextmanager
async def running_router(redis, rules: str = RULES, extensions: bool = False):
    router = Router(redis, parse_rules(rules), concurrency=16, shutdown_timeout=1)
    router.IDLE_SLEEP = 0.1
    router.report_with(extensions, {"worker": "router-1"} if extensions else {})
    run = asyncio.create_task(router.run())
    try:
        yield router
    finally:
        router.stop()
        await asyncio.wait_for(run, 30)


async def site_worker_alive(redis, site: str, workers: list | None = None) -> None:
    """The heartbeat a live edge worker writes (asynq:servers and its workers hash)."""
    info = aq.ServerInfo(host="edge", pid=7, server_id=f"edge-{site}", concurrency=8,
                         queues={f"healthcheck-{site}": 5}, status="active")
    await aq.Broker(redis).write_server_state(info, workers or [])


async def pending_ids(redis, queue: str) -> list[bytes]:
    return await redis.lrange(f"asynq:{{{queue}}}:pending", 0, -1)


def client_of(redis) -> aq.Client:
    return aq.Client(aq.Broker(redis))


async def test_forwarded_task_keeps_payload_bytes_and_options(redis):
    await site_worker_alive(redis, "berlin")
    payload = named_payload("tcp", {"host": "10.1.0.1", "port": 22}, "m1", "[berlin] core switch")
    await enqueue_healthcheck(client_of(redis), payload, monitor_id="m1", timeout=16, interval=60)
    original = await task_message(redis, "healthcheck", "healthcheck:m1")
    async with running_router(redis):
        await wait_until(lambda: pending_ids(redis, "healthcheck-berlin"), 10)
        await wait_until(lambda: _not(redis.exists(aq.task_key("healthcheck", "healthcheck:m1"))), 10)
    copy = await task_message(redis, "healthcheck-berlin", "healthcheck:m1")
    assert copy.payload == payload == original.payload
    assert (copy.type, copy.id, copy.retry, copy.retried, copy.timeout, copy.deadline, copy.retention) == \
           ("monitor:healthcheck", "healthcheck:m1", 0, 0, 16, 0, 0)
    expected_lock = f"asynq:{{healthcheck-berlin}}:unique:monitor:healthcheck:{hashlib.md5(payload).hexdigest()}"
    assert copy.queue == "healthcheck-berlin" and copy.unique_key == expected_lock
    assert 110 <= await redis.ttl(expected_lock) <= 120  # what remained of the producer's 2 x interval
    assert await redis.get(expected_lock) == b"healthcheck:m1"
    fields = await redis.hgetall(aq.task_key("healthcheck-berlin", "healthcheck:m1"))
    assert fields[b"state"] == b"pending" and fields[b"unique_key"] == expected_lock.encode()
    assert await redis.sismember(aq.ALL_QUEUES, "healthcheck-berlin")
    assert not await redis.exists(original.unique_key)  # the original completed as any task
    assert not await redis.llen("asynq:{healthcheck}:pending") and not await redis.llen("asynq:{healthcheck}:active")
    assert await redis.get("asynq:{healthcheck}:processed") == b"1"


async def _not(aw) -> bool:
    return not await aw


async def take(redis, queue: str, worker=DEAD):
    taken = await aq.Broker(redis).take([queue], [[0]], worker)
    (msg,) = taken.messages
    return msg


async def test_a_redelivered_original_is_acknowledged_without_a_second_copy(redis):
    """The router died after forwarding but before acknowledging; the site has checked the copy since."""
    payload = named_payload("tcp", {"host": "10.1.0.1", "port": 22}, "m2", "[berlin] x")
    await enqueue_healthcheck(client_of(redis), payload, monitor_id="m2")
    original = await take(redis, "healthcheck")
    router = Router(redis, parse_rules(RULES))
    assert await router.forward_message(original, "healthcheck-berlin", time.time() + 10) == 1
    assert await router.forward_message(original, "healthcheck-berlin", time.time() + 10) == 2
    assert await pending_ids(redis, "healthcheck-berlin") == [b"healthcheck:m2"]
    copy = await take(redis, "healthcheck-berlin")
    await aq.Broker(redis).done(copy)  # the Berlin worker checked it
    await aq.Broker(redis).requeue(original)  # what the recoverer does with the dead router's task
    await site_worker_alive(redis, "berlin")
    async with running_router(redis):
        await wait_until(lambda: _not(redis.exists(aq.task_key("healthcheck", "healthcheck:m2"))), 10)
    assert await pending_ids(redis, "healthcheck-berlin") == []
    assert not await redis.exists(aq.task_key("healthcheck-berlin", "healthcheck:m2"))
    assert await ingest_tasks(redis) == []


async def test_an_archived_task_in_the_site_queue_is_replaced_a_waiting_one_is_kept(redis):
    client, broker = client_of(redis), aq.Broker(redis)
    router = Router(redis, parse_rules(RULES))
    for monitor_id in ("old", "busy"):
        payload = named_payload("tcp", {"host": "10.1.0.1", "port": 22}, monitor_id, "[berlin] x", scheduled_at=None)
        await client.enqueue("monitor:healthcheck", payload, queue="healthcheck-berlin", max_retry=0, timeout=16,
                             unique_ttl=120, task_id=f"healthcheck:{monitor_id}")
    archived = await take(redis, "healthcheck-berlin")
    assert archived.id == "healthcheck:old"
    await broker.archive(archived, "context deadline exceeded")
    for monitor_id in ("old", "busy"):
        await enqueue_healthcheck(client, named_payload("tcp", {"host": "10.1.0.1", "port": 22}, monitor_id,
                                                        "[berlin] x", interval=61), monitor_id=monitor_id)
        msg = await take(redis, "healthcheck")
        code = await router.forward_message(msg, "healthcheck-berlin", time.time() + 10)
        assert code == (1 if monitor_id == "old" else 0)
        copy = await task_message(redis, "healthcheck-berlin", f"healthcheck:{monitor_id}")
        assert (json.loads(copy.payload)["interval"] == 61) == (monitor_id == "old")
        assert await redis.hget(aq.task_key("healthcheck", msg.id), "forwarded") == b"healthcheck-berlin"
    assert await redis.zcard("asynq:{healthcheck-berlin}:archived") == 0
    assert await pending_ids(redis, "healthcheck-berlin") == [b"healthcheck:old", b"healthcheck:busy"]


async def test_tasks_a_dead_router_left_active_are_put_back_and_forwarded(redis):
    client = client_of(redis)
    await site_worker_alive(redis, "berlin")
    for monitor_id in ("orphan", "held"):
        await enqueue_healthcheck(client, named_payload("tcp", {"host": "10.1.0.1", "port": 22}, monitor_id,
                                                        "[berlin] x"), monitor_id=monitor_id)
    orphan = await take(redis, "healthcheck")  # by a router that then died: no live server lists it
    held = await take(redis, "healthcheck", SimpleNamespace(host="slow", pid=2, server_id="live-router"))
    live = aq.ServerInfo(host="slow", pid=2, server_id="live-router", queues={"healthcheck": 1}, status="active")
    await aq.Broker(redis).write_server_state(live, [aq.WorkerInfo(task_id=held.id, queue="healthcheck")])
    seconds, _ = await redis.time()
    for msg in (orphan, held):  # both leases went 25 s without extension
        await redis.zadd("asynq:{healthcheck}:lease", {msg.id: seconds + 5})
    dead_workers = aq.server_keys(DEAD.host, DEAD.pid, DEAD.server_id)[1]
    assert await redis.hexists(dead_workers, orphan.id)  # listed, but its registration ran out:
    await redis.zadd(aq.ALL_WORKERS, {dead_workers: seconds - 1})
    async with running_router(redis) as router:
        await wait_until(lambda: pending_ids(redis, "healthcheck-berlin"), 10)
        assert await pending_ids(redis, "healthcheck-berlin") == [b"healthcheck:orphan"]
        await asyncio.sleep(router.RECOVER_INTERVAL + 0.5)  # another recoverer turn
    assert await redis.lrange("asynq:{healthcheck}:active", 0, -1) == [b"healthcheck:held"]
    assert not await redis.exists(aq.task_key("healthcheck", "healthcheck:orphan"))


async def test_offline_site_by_rule_and_the_sweep_of_its_waiting_tasks(redis):
    """Nobody serves healthcheck-paris: `down` reports, `run` checks here, `queue` forwards or leaves in place."""
    client = client_of(redis)
    await site_worker_alive(redis, "berlin")
    tasks = {  # monitor id -> (type, name, queue it is in)
        "push-new": ("push", "p", "healthcheck"), "push-waiting": ("push", "p", "healthcheck-paris"),
        "run-new": ("push", "[paris-run] p", "healthcheck"), "queue-new": ("tcp", "[paris-queue] t", "healthcheck"),
        "queue-waiting": ("tcp", "[paris-queue] t", "healthcheck-paris"),
    }
    for monitor_id, (monitor_type, name, queue) in tasks.items():
        payload = named_payload(monitor_type, {"host": "10.2.0.1", "port": 1}, monitor_id, name)
        await client.enqueue("monitor:healthcheck", payload, queue=queue, max_retry=0, timeout=16, unique_ttl=120,
                             task_id=f"healthcheck:{monitor_id}")
    async with running_router(redis, extensions=True):
        await wait_until(lambda: _count(ingest_tasks(redis), 3), 10)
        await wait_until(lambda: _count(pending_ids(redis, "healthcheck-paris"), 2), 10)
    bodies = {body["monitor_id"]: body for _, body in await ingest_tasks(redis)}
    assert set(bodies) == {"push-new", "push-waiting", "run-new"}
    for monitor_id in ("push-new", "push-waiting"):
        assert (bodies[monitor_id]["status"], bodies[monitor_id]["message"]) == (0, 'No worker online for site "paris"')
    assert bodies["run-new"]["message"] == "No push received yet"  # checked by the router
    assert all(body["worker"] == "router-1" and "site" not in body for body in bodies.values())
    assert sorted(await pending_ids(redis, "healthcheck-paris")) == [b"healthcheck:queue-new", b"healthcheck:queue-waiting"]
    assert not await redis.llen("asynq:{healthcheck-paris}:active")
    assert not await redis.llen("asynq:{healthcheck}:pending") and not await redis.llen("asynq:{healthcheck}:active")


async def _count(aw, n: int) -> bool:
    return len(await aw) >= n


async def test_offline_result_has_the_go_shape_without_extensions(redis):
    payload = named_payload("tcp", {"host": "10.2.0.1", "port": 1}, "shape", "p", is_under_maintenance=False)
    await enqueue_healthcheck(client_of(redis), payload.replace(b'"tcp"', b'"push"', 1), monitor_id="shape")
    async with running_router(redis):
        await wait_until(lambda: _count(ingest_tasks(redis), 1), 10)
    ((msg, body),) = await ingest_tasks(redis)
    assert list(body) == ["monitor_id", "monitor_name", "monitor_type", "monitor_interval", "monitor_timeout",
                          "monitor_max_retries", "monitor_retry_interval", "monitor_resend_interval",
                          "monitor_config", "status", "message", "ping_ms", "start_time", "end_time",
                          "is_under_maintenance", "check_cert_expiry"]
    assert (body["status"], body["message"], body["ping_ms"]) == (0, 'No worker online for site "paris"', 0)
    assert (msg.queue, msg.retry, msg.timeout, msg.retention) == ("ingester", 3, 120, 3600)
    assert msg.id.startswith("ingest:shape:")
