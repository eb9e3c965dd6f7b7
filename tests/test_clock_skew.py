"""Leases under clock skew: a worker whose clock is off never loses a valid lease, and a dead one's tasks
are still recovered. Lease and registration times come from the Redis clock; a task is listed in its
server's workers hash from the instant it is dequeued."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import asynq_protocol as aq
import worker
from conftest import ROOT
from helpers import enqueue_healthcheck, healthcheck_payload, ingest_tasks, task_message, wait_until
from test_worker_process import stop

HOUR = 3600


async def redis_now(redis) -> float:
    seconds, micros = await redis.time()
    return seconds + micros / 1e6


def shift_local_clock(monkeypatch, offset: float) -> None:
    wall, wall_ns = time.time, time.time_ns
    monkeypatch.setattr(time, "time", lambda: wall() + offset)
    monkeypatch.setattr(time, "time_ns", lambda: wall_ns() + int(offset * 1e9))


async def test_dequeue_lists_the_task_in_the_workers_hash_in_the_same_script(redis):
    """No moment exists where a task is active but named by no server."""
    client = aq.Client(aq.Broker(redis))
    msg = await client.enqueue("t", b"p", task_id="long-" + "x" * 300)  # lengths over 127 take two varint bytes
    server = worker.Server(redis, {}, queues={"default": 1})
    taken = await server.broker.take(["default"], [[0]], server)
    assert [m.id for m in taken.messages] == [msg.id]
    now = await redis_now(redis)
    wkey = aq.server_keys(server.host, server.pid, server.server_id)[1]
    entry = aq.WorkerInfo()
    entry.ParseFromString(await redis.hget(wkey, msg.id))  # a valid WorkerInfo, as Go's Inspector reads it
    assert (entry.host, entry.pid, entry.server_id, entry.task_id, entry.queue) == (
        server.host, server.pid, server.server_id, msg.id, "default")
    assert abs(entry.start_time.seconds + entry.start_time.nanos / 1e9 - now) < 2
    assert 0 < await redis.ttl(wkey) <= 10
    assert abs(await redis.zscore("asynq:workers", wkey) - (now + 10)) < 2
    assert abs(await redis.zscore("asynq:{default}:lease", msg.id) - (now + 30)) < 2
    await client.broker.close()


@pytest.mark.parametrize("offset", [-HOUR, HOUR])
async def test_lease_and_registration_scores_come_from_the_redis_clock(redis, monkeypatch, offset):
    """A local clock an hour off changes no score a recoverer or an Inspector compares with the time."""
    client = aq.Client(aq.Broker(redis))
    msg = await client.enqueue("t", b"p")
    server = worker.Server(redis, {}, queues={"default": 1})
    shift_local_clock(monkeypatch, offset)
    taken = await server.broker.take(["default"], [[0]], server)
    assert 28 < taken.lease_expiry - time.time() <= 30  # the local lease stays relative to the local clock
    extended = await server.broker.extend_leases("default", [msg.id])
    assert 28 < extended - time.time() <= 30
    await server._heartbeat()
    now = await redis_now(redis)
    skey, wkey = aq.server_keys(server.host, server.pid, server.server_id)
    assert abs(await redis.zscore("asynq:{default}:lease", msg.id) - (now + 30)) < 2
    assert abs(await redis.zscore("asynq:servers", skey) - (now + 10)) < 2
    assert abs(await redis.zscore("asynq:workers", wkey) - (now + 10)) < 2
    await client.broker.close()


async def test_recoverer_takes_only_unlisted_tasks_whose_lease_expired_by_the_redis_clock(redis):
    """Both conditions, each checked alone."""
    client = aq.Client(aq.Broker(redis))
    listed, fresh, free = [await client.enqueue("t", str(i).encode()) for i in range(3)]
    broker = aq.Broker(redis)
    await broker.dequeue(["default"], [[0]] * 3)
    now = int(await redis_now(redis))
    await redis.zadd("asynq:{default}:lease", {listed.id: now - 100, fresh.id: now - 2, free.id: now - 100})
    other = "asynq:workers:{elsewhere:1:x}"  # a live server listing one of them
    await redis.zadd("asynq:workers", {other: now + 10})
    await redis.hset(other, listed.id, b"")
    assert [m.id for m in await broker.list_lease_expired("default", 5)] == [free.id]
    await redis.hdel(other, listed.id)
    assert sorted(m.id for m in await broker.list_lease_expired("default", 5)) == sorted([listed.id, free.id])
    await client.broker.close()


async def test_heartbeat_keeps_entries_that_a_concurrent_dequeue_wrote(redis):
    """The beat removes only the tasks that ended; one dequeued while the beat was on its way stays."""
    client = aq.Client(aq.Broker(redis))
    ended, raced = await client.enqueue("t", b"1"), await client.enqueue("t", b"2")
    server = worker.Server(redis, {}, queues={"default": 1})
    await server.broker.take(["default"], [[0]], server)
    server._listed.add(ended.id)  # it ran here and is gone from server.jobs
    await aq.Broker(redis).take(["default"], [[0]], server)  # the reply has not reached the server yet
    await server._heartbeat()
    wkey = aq.server_keys(server.host, server.pid, server.server_id)[1]
    assert await redis.hkeys(wkey) == [raced.id.encode()]
    await client.broker.close()


# --------------------------------------------------------------------------------------------------
# Two worker processes: A with its clock an hour off runs slow checks, B's recoverer runs every 0.5 s.

def start_worker(url: str, offset: float, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    env.update(MODE="prod", LOG_LEVEL="info", PEEKAPING_TEST_CLOCK_OFFSET=str(offset),
               PEEKAPING_TEST_RECOVER_INTERVAL="0.5")
    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "skewed_worker.py"), "--redis-url", url,
                             "--queues", "healthcheck:1", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def server_info(redis, pid: int) -> aq.ServerInfo | None:
    for key in await redis.keys("asynq:servers:{*}"):
        info = aq.ServerInfo()
        info.ParseFromString(await redis.get(key) or b"")
        if info.pid == pid:
            return info
    return None


async def _registered(redis, pid: int) -> bool:
    return await server_info(redis, pid) is not None


async def _none_active(redis) -> bool:
    return not await redis.exists("asynq:{healthcheck}:active")


async def _count(redis, key: str, n: int) -> bool:
    kind = (await redis.type(key)).decode()
    size = await redis.llen(key) if kind == "list" else await redis.zcard(key) if kind == "zset" else 0
    return size >= n


@pytest.mark.parametrize("offset", [-HOUR, HOUR], ids=["an-hour-behind", "an-hour-ahead"])
async def test_skewed_worker_keeps_valid_leases_and_its_tasks_are_recovered_after_kill_9(
        redis, redis_server, hanging_port, offset):
    """The README's guarantee as stated: behind, a wrong clock made leases look expired at once; ahead, a
    dead worker's leases outlived it by the offset."""
    client = aq.Client(aq.Broker(redis))
    hanging = {"host": "127.0.0.1", "port": hanging_port}
    b = start_worker(redis_server.url, 0)
    a = None
    try:
        await wait_until(lambda: _registered(redis, b.pid), 15)
        b.send_signal(signal.SIGTSTP)  # B stops dequeuing; its recoverer keeps running
        a = start_worker(redis_server.url, offset, "--concurrency", "64")
        await wait_until(lambda: _registered(redis, a.pid), 15)
        started = (await server_info(redis, a.pid)).start_time.seconds
        assert abs(started - offset - time.time()) < 60, "A's clock is not shifted"

        # 30 checks that each hang for ~11 s (the interval keeps them fresh for the stale rule on any clock),
        # enqueued in waves so dequeues interleave with B's recoveries.
        for wave in range(3):
            for i in range(10):
                mid = f"slow-{wave}-{i}"
                await enqueue_healthcheck(client, healthcheck_payload("tcp", hanging, monitor_id=mid, timeout=12,
                                                                      interval=2 * HOUR), mid, timeout=12)
            await asyncio.sleep(1)
        now = await redis_now(redis)
        leases = [s for _, s in await redis.zrange("asynq:{healthcheck}:lease", 0, -1, withscores=True)]
        assert leases and all(now - 2 <= s <= now + 31 for s in leases), (now, leases)
        await wait_until(lambda: _count(redis, "asynq:{ingester}:pending", 30), 60, interval=0.2)
        await wait_until(lambda: _none_active(redis), 10)
        await asyncio.sleep(1)  # B's recoverer has run twice more
        results = [r for _, r in await ingest_tasks(redis)]
        assert sorted(r["monitor_id"] for r in results) == sorted(f"slow-{w}-{i}" for w in range(3) for i in range(10))
        assert all(r["status"] == 0 for r in results)
        assert not await redis.exists("asynq:{healthcheck}:archived", "asynq:{healthcheck}:retry")

        for i in range(3):  # then A dies mid-check: B must still take its tasks back
            mid = f"stuck-{i}"
            await enqueue_healthcheck(client, healthcheck_payload("tcp", hanging, monitor_id=mid, timeout=120,
                                                                  interval=2 * HOUR), mid, timeout=120)
        await wait_until(lambda: _count(redis, "asynq:{healthcheck}:active", 3), 10)
        await asyncio.sleep(1)
        a.kill()
        a.communicate()
        killed_at = time.time()
        await wait_until(lambda: _count(redis, "asynq:{healthcheck}:archived", 3), 90, interval=0.2)
        print(f"clock offset {offset:+} s: B recovered A's tasks {time.time() - killed_at:.1f} s after kill -9")
    finally:
        if a is not None and a.poll() is None:
            a.kill()
            a.communicate()
        code, err = stop(b)
    assert code == 0, err
    for i in range(3):
        msg = await task_message(redis, "healthcheck", f"healthcheck:stuck-{i}")
        assert msg.error_msg == "asynq: task lease expired"
    recovered = [json.loads(line)["task_id"] for line in err.splitlines()
                 if line.startswith("{") and json.loads(line)["msg"] == "recovered task with expired lease"]
    assert sorted(recovered) == [f"healthcheck:stuck-{i}" for i in range(3)]
    await client.broker.close()
