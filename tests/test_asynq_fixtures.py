"""Replays each Go-recorded fixture scenario (a-g) with our client and server and compares full Redis dumps."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import FIXTURES, ROOT, SHARED
from redisdump import compare, dump, load_fixture

import asynq_protocol as aq
import worker



def test_vendored_fixtures_match_shared():
    shared = SHARED / "fixtures" / "asynq"
    if not shared.is_dir():
        pytest.skip(f"no shared fixtures at {shared} to compare the vendored copy with")
    names = sorted(p.name for p in shared.iterdir())
    assert names == sorted(p.name for p in FIXTURES.iterdir())
    for name in names:
        assert (shared / name).read_bytes() == (FIXTURES / name).read_bytes(), name

HEALTHCHECK_OPTS = dict(queue="healthcheck", max_retry=0, timeout=10, retention=0, unique_ttl=120,
                        task_id="healthcheck:mon-fixture-1")
INGEST_OPTS = dict(queue="ingester", max_retry=3, timeout=120, retention=3600, unique_ttl=1,
                   task_id="ingest:mon-fixture-1:1767323045700000000")


def fixture(name: str) -> dict:
    return load_fixture(FIXTURES / f"{name}.json")


def event_payloads(fx: dict, kind: str = "enqueue") -> list[bytes]:
    return [e["payload"].encode() for s in fx["steps"] for e in s["events"] if e["event"] == kind]


async def assert_step(redis, fx: dict, index: int) -> None:
    step = fx["steps"][index]
    problems = compare(step["keys"], await dump(redis))
    assert not problems, f"{fx['scenario']} step {index} ({step['name']}):\n" + "\n".join(problems)
    # what the recorder's Inspector.Servers() call did after each dump: prune expired members
    now = int(time.time())
    await redis.zremrangebyscore(aq.ALL_SERVERS, "-inf", now - 1)
    await redis.zremrangebyscore(aq.ALL_WORKERS, "-inf", now - 1)


def client_for(redis) -> aq.Client:
    return aq.Client(aq.Broker(redis))


async def start_server(redis, handlers, queues, strict=True) -> tuple[worker.Server, asyncio.Task]:
    server = worker.Server(redis, handlers, queues=queues, concurrency=128, strict_priority=strict)
    server.HEARTBEAT_INTERVAL = 3600  # one beat at start; the test forces the others
    return server, asyncio.create_task(server.run())


async def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


async def test_a_enqueue_unique_healthcheck_matches_go(redis):
    fx = fixture("a_enqueue_unique_healthcheck")
    await client_for(redis).enqueue("monitor:healthcheck", event_payloads(fx)[0], **HEALTHCHECK_OPTS)
    await assert_step(redis, fx, 0)


async def test_b_enqueue_twice_gives_go_errors_and_state(redis):
    fx = fixture("b_enqueue_twice")
    first, second, next_tick = event_payloads(fx)
    client = client_for(redis)
    await client.enqueue("monitor:healthcheck", first, **HEALTHCHECK_OPTS)
    await assert_step(redis, fx, 0)
    with pytest.raises(aq.TaskAlreadyExists, match="^task already exists$"):
        await client.enqueue("monitor:healthcheck", second, **HEALTHCHECK_OPTS)
    await assert_step(redis, fx, 1)
    with pytest.raises(aq.TaskIDConflict, match="^task ID conflicts with another task$"):
        await client.enqueue("monitor:healthcheck", next_tick, **HEALTHCHECK_OPTS)
    await assert_step(redis, fx, 2)


async def test_c_processed_success_matches_go(redis):
    fx = fixture("c_processed_success")
    await client_for(redis).enqueue("monitor:healthcheck", event_payloads(fx)[0], **HEALTHCHECK_OPTS)
    await assert_step(redis, fx, 0)
    called, release = asyncio.Event(), asyncio.Event()

    async def handler(task):
        called.set()
        await release.wait()

    server, run = await start_server(redis, {"monitor:healthcheck": handler}, worker.DEFAULT_QUEUES)
    await asyncio.wait_for(called.wait(), 10)
    await server._heartbeat()
    await assert_step(redis, fx, 1)
    release.set()
    await wait_for(lambda: _gone(redis, "asynq:{healthcheck}:t:healthcheck:mon-fixture-1"))
    await assert_step(redis, fx, 2)
    await server._heartbeat()
    await assert_step(redis, fx, 3)
    server.stop()
    await asyncio.wait_for(run, 15)
    await assert_step(redis, fx, 4)


async def _gone(redis, key: str) -> bool:
    return not await redis.exists(key)


async def test_d_handler_error_archives_like_go(redis):
    fx = fixture("d_handler_error_archived")
    first, next_tick, following = event_payloads(fx)
    client = client_for(redis)
    await client.enqueue("monitor:healthcheck", first, **HEALTHCHECK_OPTS)

    async def handler(task):
        raise worker.TaskError("fixture: simulated check failure")

    server, run = await start_server(redis, {"monitor:healthcheck": handler}, worker.DEFAULT_QUEUES)
    await wait_for(lambda: redis.exists("asynq:{healthcheck}:archived"))
    await assert_step(redis, fx, 0)
    msg = aq.TaskMessage()
    msg.ParseFromString(await redis.hget("asynq:{healthcheck}:t:healthcheck:mon-fixture-1", "msg"))
    assert msg.error_msg == "fixture: simulated check failure" and abs(msg.last_failed_at - time.time()) < 3
    server.stop()
    await asyncio.wait_for(run, 15)
    await assert_step(redis, fx, 1)
    with pytest.raises(aq.TaskIDConflict):
        await client.enqueue("monitor:healthcheck", next_tick, **HEALTHCHECK_OPTS)
    await assert_step(redis, fx, 2)
    await inspector_delete_archived(redis, "healthcheck", "healthcheck:mon-fixture-1")
    await assert_step(redis, fx, 3)
    await client.enqueue("monitor:healthcheck", following, **HEALTHCHECK_OPTS)
    await assert_step(redis, fx, 4)


async def inspector_delete_archived(redis, queue: str, task_id: str) -> None:
    """What Inspector.DeleteTask does to an archived task (the producer calls it on a stale conflict)."""
    key = aq.task_key(queue, task_id)
    msg = aq.TaskMessage()
    msg.ParseFromString(await redis.hget(key, "msg"))
    await redis.zrem(f"asynq:{{{queue}}}:archived", task_id)
    await redis.delete(key)
    if msg.unique_key and (await redis.get(msg.unique_key) or b"").decode() == task_id:
        await redis.delete(msg.unique_key)


async def test_e_ingest_task_enqueued_and_completed_like_go(redis):
    fx = fixture("e_ingester_completed")
    await client_for(redis).enqueue("monitor:ingest", event_payloads(fx)[0], **INGEST_OPTS)
    await assert_step(redis, fx, 0)

    async def handler(task):
        return None

    server, run = await start_server(redis, {"monitor:ingest": handler}, {"ingester": 10}, strict=False)
    await wait_for(lambda: redis.exists("asynq:{ingester}:completed"))
    await assert_step(redis, fx, 1)
    msg = aq.TaskMessage()
    msg.ParseFromString(await redis.hget("asynq:{ingester}:t:" + INGEST_OPTS["task_id"], "msg"))
    score = await redis.zscore("asynq:{ingester}:completed", INGEST_OPTS["task_id"])
    assert score == msg.completed_at + 3600 and abs(msg.completed_at - time.time()) < 3
    server.stop()
    await asyncio.wait_for(run, 15)
    await assert_step(redis, fx, 2)


async def test_f_failure_with_retries_left_goes_to_retry_like_go(redis):
    fx = fixture("f_failed_once_retry")
    await client_for(redis).enqueue("monitor:ingest", event_payloads(fx)[0], **INGEST_OPTS)

    async def handler(task):
        raise worker.TaskError("failed to process heartbeat: fixture: simulated ingest failure")

    server, run = await start_server(redis, {"monitor:ingest": handler}, {"ingester": 10}, strict=False)
    await wait_for(lambda: redis.exists("asynq:{ingester}:retry"))
    await assert_step(redis, fx, 0)
    delay = await redis.zscore("asynq:{ingester}:retry", INGEST_OPTS["task_id"]) - time.time()
    assert 13 <= delay <= 45
    server.stop()
    await asyncio.wait_for(run, 15)
    await asyncio.sleep(1.1)  # the recorder's shutdown took longer than the 1 s unique TTL; wait it out too
    await assert_step(redis, fx, 1)


async def test_g_killed_worker_task_recovered_after_lease_expiry_like_go(redis, redis_server):
    fx = fixture("g_lease_expired_recovery")
    hc, ingest = event_payloads(fx)
    client = client_for(redis)
    await client.enqueue("monitor:healthcheck", hc, **HEALTHCHECK_OPTS)
    await client.enqueue("monitor:ingest", ingest, **INGEST_OPTS)
    await assert_step(redis, fx, 0)

    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")
    child = subprocess.Popen([sys.executable, str(ROOT / "tests" / "block_server.py"), redis_server.url],
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        started = set()
        while len(started) < 2:
            line = json.loads(child.stdout.readline())
            if line["event"] == "task_started":
                started.add(line["task_id"])
        await asyncio.sleep(5.5)  # one heartbeat after both tasks started lists them as workers
        await assert_step(redis, fx, 1)
        child.kill()
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
    await assert_step(redis, fx, 2)
    await wait_for(lambda: _server_keys_gone(redis), 15)
    await assert_step(redis, fx, 3)
    leases = [s for q in ("healthcheck", "ingester")
              for _, s in await redis.zrange(f"asynq:{{{q}}}:lease", 0, -1, withscores=True)]
    # A live lease is never stolen: a second server started now must leave both tasks alone.
    server, run = await start_server(redis, {}, {"healthcheck": 5, "ingester": 10}, strict=False)
    await asyncio.sleep(0.5)
    assert await redis.llen("asynq:{healthcheck}:active") == 1 and await redis.llen("asynq:{ingester}:active") == 1
    server.stop()
    await asyncio.wait_for(run, 15)
    await redis.delete(*(await redis.keys("asynq:servers*")), *(await redis.keys("asynq:workers*")))
    await asyncio.sleep(max(0.0, max(leases) + worker.Server.RECOVER_SLACK + 1 - time.time()))
    await assert_step(redis, fx, 4)

    server, run = await start_server(redis, {}, {"healthcheck": 5, "ingester": 10}, strict=False)
    await wait_for(lambda: redis.exists("asynq:{ingester}:retry"), 5)
    await assert_step(redis, fx, 5)
    for queue, task_id in (("healthcheck", HEALTHCHECK_OPTS["task_id"]), ("ingester", INGEST_OPTS["task_id"])):
        msg = aq.TaskMessage()
        msg.ParseFromString(await redis.hget(aq.task_key(queue, task_id), "msg"))
        assert msg.error_msg == "asynq: task lease expired"
    server.stop()
    await asyncio.wait_for(run, 15)
    await assert_step(redis, fx, 6)


async def _server_keys_gone(redis) -> bool:
    return not (await redis.keys("asynq:servers:*") or await redis.keys("asynq:workers:*"))
