"""Asynq compatibility checklist items (protocol spec section 14) against a private Redis."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

import asynq_protocol as aq
import worker
from helpers import running_server, task_message, wait_until


@pytest.fixture
async def client(redis):
    broker = aq.Broker(redis)
    yield aq.Client(broker)
    await broker.close()


async def test_plain_enqueue_writes_go_defaults(redis, client):
    msg = await client.enqueue("t", b"p")
    key = aq.task_key("default", msg.id)
    assert await redis.smembers("asynq:queues") == {b"default"}
    fields = await redis.hgetall(key)
    assert set(fields) == {b"msg", b"state", b"pending_since"}
    assert fields[b"state"] == b"pending"
    assert abs(int(fields[b"pending_since"]) - time.time_ns()) < 2 * 10**9
    assert await redis.lindex("asynq:{default}:pending", 0) == msg.id.encode()
    stored = await task_message(redis, "default", msg.id)
    assert (stored.retry, stored.timeout, stored.deadline, stored.retried, stored.queue) == (25, 1800, 0, 0, "default")
    assert len(stored.id) == 36 and stored.id == stored.id.lower()


async def test_task_id_conflict_leaves_everything_unchanged(redis, client):
    await client.enqueue("t", b"1", task_id="X")
    before = await redis.lrange("asynq:{default}:pending", 0, -1)
    with pytest.raises(aq.TaskIDConflict, match="task ID conflicts with another task"):
        await client.enqueue("t", b"2", task_id="X")
    assert await redis.lrange("asynq:{default}:pending", 0, -1) == before
    assert (await task_message(redis, "default", "X")).payload == b"1"


async def test_unique_lock_key_ttl_and_duplicate_error(redis, client):
    msg = await client.enqueue("t1", b"{}", unique_ttl=60)
    key = "asynq:{default}:unique:t1:99914b932bd37a50b983c5e7c90ae93b"
    assert await redis.get(key) == msg.id.encode() and 0 < await redis.ttl(key) <= 60
    assert (await redis.hget(aq.task_key("default", msg.id), "unique_key")).decode() == key
    assert msg.unique_key == key
    with pytest.raises(aq.TaskAlreadyExists, match="task already exists"):
        await client.enqueue("t1", b"{}", unique_ttl=60)
    assert await redis.llen("asynq:{default}:pending") == 1


async def test_unique_with_conflicting_task_id_keeps_the_new_lock(redis, client):
    await client.enqueue("t", b"a", task_id="X")
    with pytest.raises(aq.TaskIDConflict):
        await client.enqueue("t", b"b", task_id="X", unique_ttl=60)
    key = aq.unique_key("default", "t", b"b")
    assert await redis.get(key) == b"X" and 55 <= await redis.ttl(key) <= 60


async def test_process_in_schedules_with_lock_lasting_past_process_time(redis, client):
    msg = await client.enqueue("t", b"x", process_in=3600, unique_ttl=600)
    fields = await redis.hgetall(aq.task_key("default", msg.id))
    assert fields[b"state"] == b"scheduled" and b"pending_since" not in fields
    assert abs(await redis.zscore("asynq:{default}:scheduled", msg.id) - (time.time() + 3600)) <= 2
    assert not await redis.exists("asynq:{default}:pending")
    assert 4198 <= await redis.ttl(msg.unique_key) <= 4200


async def test_option_encoding_matches_go(client):
    deadline = time.time() + 100
    assert (m := client.build("t", b"", deadline=deadline)[0]).timeout == 0 and m.deadline == int(deadline)
    assert (m := client.build("t", b"", timeout=300)[0]).timeout == 300 and m.deadline == 0
    assert client.build("t", b"", retention=86400)[0].retention == 86400
    assert client.build("t", b"", max_retry=-3)[0].retry == 0
    assert client.build("t", None, unique_ttl=5)[0].unique_key == "asynq:{default}:unique:t:"
    for bad, text in [(dict(unique_ttl=0.5), "Unique TTL cannot be less than 1s"),
                      (dict(queue=" "), "queue name must contain one or more characters"),
                      (dict(task_id=""), "task ID cannot be empty")]:
        with pytest.raises(ValueError, match=text):
            client.build("t", b"", **bad)
    with pytest.raises(ValueError, match="task typename cannot be empty"):
        client.build(" ", b"")


async def test_dequeue_is_fifo_sets_lease_and_drops_pending_since(redis, client):
    a = await client.enqueue("t", b"a")
    b = await client.enqueue("t", b"b")
    broker = aq.Broker(redis)
    [got] = await broker.dequeue(["default"], [[0]])
    assert got.id == a.id
    key = aq.task_key("default", a.id)
    assert await redis.hget(key, "state") == b"active" and not await redis.hexists(key, "pending_since")
    assert await redis.lindex("asynq:{default}:active", 0) == a.id.encode()
    assert abs(await redis.zscore("asynq:{default}:lease", a.id) - (time.time() + 30)) <= 1
    [second] = await broker.dequeue(["default"], [[0]])
    assert second.id == b.id


async def test_paused_queue_is_skipped_and_others_still_served(redis, client):
    await client.enqueue("t", b"1", queue="a")
    await client.enqueue("t", b"2", queue="b")
    await redis.set("asynq:{a}:paused", int(time.time()))
    got = await aq.Broker(redis).dequeue(["a", "b"], [[0, 1], [0, 1]])
    assert [m.queue for m in got] == ["b"]
    assert await redis.llen("asynq:{a}:pending") == 1


async def test_strict_priority_drains_higher_queue_first(redis, client):
    for i in range(5):
        await client.enqueue("t", str(i).encode(), queue="low")
        await client.enqueue("t", str(i).encode(), queue="critical")
    server = worker.Server(redis, {}, queues={"critical": 6, "low": 1}, strict_priority=True)
    got = await server.broker.dequeue(server._names, server._orders(7))
    assert [m.queue for m in got] == ["critical"] * 5 + ["low"] * 2


async def test_weighted_priority_share_matches_weights(redis, client):
    for i in range(2000):
        await client.enqueue("t", b"", queue="a")
        await client.enqueue("t", b"", queue="b")
    server = worker.Server(redis, {}, queues={"a": 3, "b": 1}, strict_priority=False)
    counts: Counter = Counter()
    for _ in range(40):
        counts.update(m.queue for m in await server.broker.dequeue(server._names, server._orders(50)))
    share = counts["a"] / (counts["a"] + counts["b"])
    assert 0.70 <= share <= 0.80, counts


async def test_weighted_mode_serves_other_queue_when_one_is_empty(redis, client):
    await client.enqueue("t", b"", queue="b")
    server = worker.Server(redis, {}, queues={"a": 3, "b": 1}, strict_priority=False)
    got = await server.broker.dequeue(server._names, server._orders(1))
    assert [m.queue for m in got] == ["b"]


async def test_success_deletes_task_counts_processed_and_releases_own_lock(redis, client):
    msg = await client.enqueue("t", b"x", unique_ttl=60)
    other = await client.enqueue("t", b"y", unique_ttl=60)
    await redis.set(other.unique_key, "someone-else")

    async def ok(task):
        return None

    async with running_server(redis, {"t": ok}, queues={"default": 1}):
        await wait_until(lambda: _none_left(redis))
    day = time.strftime("%Y-%m-%d", time.gmtime())
    assert not await redis.exists(aq.task_key("default", msg.id))
    assert int(await redis.get(f"asynq:{{default}}:processed:{day}")) == 2
    assert abs(await redis.ttl(f"asynq:{{default}}:processed:{day}") - 90 * 86400) < 120
    assert int(await redis.get("asynq:{default}:processed")) == 2
    assert not await redis.exists("asynq:{default}:failed", f"asynq:{{default}}:failed:{day}")
    assert not await redis.exists(msg.unique_key)
    assert await redis.get(other.unique_key) == b"someone-else"
    assert not await redis.exists("asynq:{default}:lease", "asynq:{default}:active")


async def _true(value: bool) -> bool:
    return value


async def _none_left(redis) -> bool:
    return not await redis.exists("asynq:{default}:pending", "asynq:{default}:active")


async def test_retention_success_marks_completed_and_janitor_removes_expired(redis, client):
    msg = await client.enqueue("t", b"x", retention=1)

    async def ok(task):
        await redis.hset(aq.task_key(task.queue, task.id), "result", b"r")

    async with running_server(redis, {"t": ok}, queues={"default": 1}) as server:
        server.JANITOR_INTERVAL = 0.5
        await wait_until(lambda: redis.exists("asynq:{default}:completed"))
        stored = await task_message(redis, "default", msg.id)
        assert await redis.hget(aq.task_key("default", msg.id), "state") == b"completed"
        assert await redis.hget(aq.task_key("default", msg.id), "result") == b"r"
        assert await redis.zscore("asynq:{default}:completed", msg.id) == stored.completed_at + 1
    async with running_server(redis, {}, queues={"default": 1}) as server:
        await asyncio.sleep(1.2)
        await server._janitor()
        assert not await redis.exists(aq.task_key("default", msg.id), "asynq:{default}:completed")


async def test_timeout_fails_with_context_deadline_exceeded_without_awaiting_handler(redis, client):
    msg = await client.enqueue("t", b"x", timeout=1, max_retry=2)
    finished = []

    async def slow(task):
        await asyncio.sleep(5)
        finished.append(task.id)

    async with running_server(redis, {"t": slow}, queues={"default": 1}) as server:
        started = time.time()
        await wait_until(lambda: redis.exists("asynq:{default}:retry"), 5)
        assert time.time() - started < 2.5
        await wait_until(lambda: _true(not server.jobs), 1)  # the slot is free again
    stored = await task_message(redis, "default", msg.id)
    assert stored.error_msg == "context deadline exceeded" and stored.retried == 1
    assert not finished


async def test_past_deadline_task_never_reaches_handler(redis, client):
    msg = await client.enqueue("t", b"x", deadline=time.time() - 5, max_retry=0)
    called = []

    async def handler(task):
        called.append(task)

    async with running_server(redis, {"t": handler}, queues={"default": 1}):
        await wait_until(lambda: redis.exists("asynq:{default}:archived"))
    assert not called
    assert (await task_message(redis, "default", msg.id)).error_msg == "context deadline exceeded"


async def test_cancel_via_pubsub_fails_task_with_context_canceled(redis, client):
    msg = await client.enqueue("t", b"x", max_retry=0)
    started = asyncio.Event()

    async def handler(task):
        started.set()
        await asyncio.sleep(30)

    async with running_server(redis, {"t": handler}, queues={"default": 1}):
        await asyncio.wait_for(started.wait(), 5)
        await asyncio.sleep(0.2)
        await redis.publish("asynq:cancel", "unknown-id")
        await redis.publish("asynq:cancel", msg.id)
        await wait_until(lambda: redis.exists("asynq:{default}:archived"), 5)
    assert (await task_message(redis, "default", msg.id)).error_msg == "context canceled"


async def test_handler_exception_is_reported_in_go_panic_shape(redis, client):
    msg = await client.enqueue("t", b"x", max_retry=0)

    async def broken(task):
        raise KeyError("boom")

    async with running_server(redis, {"t": broken}, queues={"default": 1}):
        await wait_until(lambda: redis.exists("asynq:{default}:archived"))
    error = (await task_message(redis, "default", msg.id)).error_msg
    assert error.startswith("panic error cause by: panic [test_asynq_protocol.py:") and "KeyError" in error


async def test_unknown_task_type_is_archived_with_handler_not_found(redis, client):
    msg = await client.enqueue("mystery", b"x", max_retry=0)
    async with running_server(redis, {}, queues={"default": 1}):
        await wait_until(lambda: redis.exists("asynq:{default}:archived"))
    assert (await task_message(redis, "default", msg.id)).error_msg == 'handler not found for task "mystery"'


async def test_heartbeat_registers_server_and_workers_and_extends_leases(redis, client):
    msg = await client.enqueue("t", b"payload")
    started = asyncio.Event()

    async def handler(task):
        started.set()
        await asyncio.sleep(30)

    async with running_server(redis, {"t": handler}, queues={"default": 1}, concurrency=7) as server:
        await asyncio.wait_for(started.wait(), 5)
        ident = f"{server.host}:{server.pid}:{server.server_id}"
        lease_before = await redis.zscore("asynq:{default}:lease", msg.id)
        await asyncio.sleep(1.1)
        await server._heartbeat()
        info = aq.ServerInfo()
        info.ParseFromString(await redis.get(f"asynq:servers:{{{ident}}}"))
        assert (info.status, info.concurrency, dict(info.queues), info.active_worker_count) == ("active", 7, {"default": 1}, 1)
        assert 0 < await redis.ttl(f"asynq:servers:{{{ident}}}") <= 10
        assert abs(await redis.zscore("asynq:servers", f"asynq:servers:{{{ident}}}") - time.time() - 10) <= 2
        w = aq.WorkerInfo()
        w.ParseFromString(await redis.hget(f"asynq:workers:{{{ident}}}", msg.id))
        assert (w.task_id, w.task_type, w.task_payload, w.queue, w.server_id) == (msg.id, "t", b"payload", "default", server.server_id)
        assert await redis.zscore("asynq:{default}:lease", msg.id) >= lease_before + 1
        server.status = "closed"
        await server._heartbeat()
        info.ParseFromString(await redis.get(f"asynq:servers:{{{ident}}}"))
        assert info.status == "closed"
    assert not await redis.exists(f"asynq:servers:{{{ident}}}", f"asynq:workers:{{{ident}}}")
    assert await redis.zscore("asynq:servers", f"asynq:servers:{{{ident}}}") is None
    assert await redis.zscore("asynq:workers", f"asynq:workers:{{{ident}}}") is None


async def test_shutdown_requeues_unfinished_task_at_the_head(redis, client):
    first = await client.enqueue("t", b"x", max_retry=0)
    second = await client.enqueue("other", b"y")
    started = asyncio.Event()

    async def stuck(task):
        started.set()
        await asyncio.sleep(60)

    async with running_server(redis, {"t": stuck}, queues={"default": 1}, concurrency=1, shutdown_timeout=0.5):
        await asyncio.wait_for(started.wait(), 5)
    assert await redis.lrange("asynq:{default}:pending", 0, -1) == [second.id.encode(), first.id.encode()]
    fields = await redis.hgetall(aq.task_key("default", first.id))
    assert fields[b"state"] == b"pending" and b"pending_since" not in fields
    assert not await redis.exists("asynq:{default}:active", "asynq:{default}:lease", "asynq:{default}:processed")


async def test_forwarder_moves_due_scheduled_tasks_in_batches(redis, client):
    ids = [(await client.enqueue("t", str(i).encode(), process_in=1)).id for i in range(250)]
    await asyncio.sleep(1.1)
    moved = await aq.Broker(redis).forward("default")
    assert moved == 250
    assert await redis.llen("asynq:{default}:pending") == 250 and not await redis.exists("asynq:{default}:scheduled")
    fields = await redis.hgetall(aq.task_key("default", ids[0]))
    assert fields[b"state"] == b"pending" and abs(int(fields[b"pending_since"]) - time.time_ns()) < 2 * 10**9


async def test_archive_trims_to_9999_and_drops_entries_older_than_90_days(redis, client):
    now = int(time.time())
    pipe = redis.pipeline(transaction=False)
    for i in range(10000):
        pipe.zadd("asynq:{default}:archived", {f"old{i}": now - 1000 + i})
        pipe.hset(aq.task_key("default", f"old{i}"), mapping={"msg": b"", "state": "archived"})
    pipe.zadd("asynq:{default}:archived", {"ancient": now - 91 * 86400})
    pipe.hset(aq.task_key("default", "ancient"), mapping={"msg": b"", "state": "archived"})
    await pipe.execute()
    msg = await client.enqueue("t", b"x", max_retry=0)

    async def fail(task):
        raise worker.TaskError("nope")

    async with running_server(redis, {"t": fail}, queues={"default": 1}):
        await wait_until(lambda: redis.zscore("asynq:{default}:archived", msg.id))
    assert await redis.zcard("asynq:{default}:archived") == 9999
    assert not await redis.exists(aq.task_key("default", "ancient"), aq.task_key("default", "old0"),
                                  aq.task_key("default", "old1"))
    assert await redis.exists(aq.task_key("default", "old2"))


async def test_retry_delay_follows_asynq_formula():
    for n in range(5):
        for _ in range(200):
            assert n**4 + 15 <= aq.retry_delay_seconds(n) <= n**4 + 15 + 29 * (n + 1)


async def test_pause_stops_dequeuing_and_reports_stopped(redis, client):
    async def ok(task):
        return None

    async with running_server(redis, {"t": ok}, queues={"default": 1}) as server:
        server.pause()
        await asyncio.sleep(0.3)
        msg = await client.enqueue("t", b"x")
        await asyncio.sleep(1.5)
        assert await redis.lrange("asynq:{default}:pending", 0, -1) == [msg.id.encode()]
        await server._heartbeat()
        info = aq.ServerInfo()
        info.ParseFromString(await redis.get(f"asynq:servers:{{{server.host}:{server.pid}:{server.server_id}}}"))
        assert info.status == "stopped"


async def test_shutdown_is_prompt_even_if_a_library_swallows_cancellation(redis):
    server = worker.Server(redis, {}, queues={"default": 1})
    entered = asyncio.Event()

    async def swallowing_recover():
        entered.set()
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            raise RuntimeError("cancellation turned into another error")  # what some client libraries do

    server._recover = swallowing_recover
    run = asyncio.create_task(server.run())
    await asyncio.wait_for(entered.wait(), 5)
    started = time.time()
    server.stop()
    await asyncio.wait_for(run, 10)
    assert time.time() - started < 3
