"""The idle wake-up (BLMOVE on the pending lists): it takes tasks only through the dequeue script, so
queue order, pauses and competing workers behave as with the 1 s poll; it never spins and never holds
up a shutdown. The poll is made too slow to matter where a test must prove the wake-up did the work."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter

import asynq_protocol as aq
from asynq_scripts import SCRIPTS
from conftest import ROOT
from helpers import enqueue_healthcheck, healthcheck_payload, ingest_tasks, running_server, wait_until
from pending_watch import PendingWatch
from redis_checks import acl_rule
from test_redis_startup import admin, set_worker_user  # noqa: F401 (admin is a fixture)
from test_worker_process import stop

NEVER = 3600.0  # seconds: a poll that never comes within a test


def _slow_poll(server) -> None:
    server.IDLE_SLEEP = NEVER
    server.WAKE_POLL = NEVER


async def calls(redis, command: str) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def enqueue_atomically(redis, tasks: list[tuple[str, str]]) -> None:
    """Enqueue (queue, id) tasks in one MULTI, as the Go client's enqueue script would, one by one."""
    pipe = redis.pipeline(transaction=True)
    for queue, task_id in tasks:
        msg = aq.TaskMessage(type="t", id=task_id, queue=queue, retry=0, timeout=60)
        p = f"asynq:{{{queue}}}:"
        pipe.eval(SCRIPTS["enqueue"], 2, p + "t:" + task_id, p + "pending", msg.SerializeToString(), task_id, 1)
    await pipe.execute()


async def test_blocking_on_a_pending_list_wakes_and_leaves_its_ids_in_order(redis):
    """RIGHT RIGHT on the same list pops the tail and pushes it back: the list must be unchanged."""
    watch = PendingWatch(redis, 1, block=1)
    try:
        assert await watch.wait(["q"], 1.5, 1) is False
        await redis.lpush("asynq:{q}:pending", "a", "b", "c")
        before = await redis.lrange("asynq:{q}:pending", 0, -1)
        assert await watch.wait(["q"], 5, 1) is True
        assert await redis.lrange("asynq:{q}:pending", 0, -1) == before == [b"c", b"b", b"a"]
    finally:
        await watch.close()


async def test_dequeue_names_the_paused_queues(redis):
    """The idle wait must not watch a paused queue (its tasks would wake it again and again); it learns
    which queues are paused from the dequeue that found nothing."""
    await redis.set("asynq:{b}:paused", 1)
    await redis.lpush("asynq:{b}:pending", "x")
    taken = await aq.Broker(redis).take(["a", "b", "c"], [[0, 1, 2]])
    assert taken.paused == ["b"] and not taken.messages and not taken.corrupt
    assert await redis.lrange("asynq:{b}:pending", 0, -1) == [b"x"]


async def test_task_enqueued_into_an_idle_worker_is_taken_by_the_wake_up(redis):
    """With the poll an hour away, only the BLMOVE wake-up can make the worker dequeue."""
    ran = []

    async def handler(task):
        ran.append(task.id)

    client = aq.Client(aq.Broker(redis))
    async with running_server(redis, {"t": handler}, queues={"default": 1}) as server:
        _slow_poll(server)
        await wait_until(lambda: _blocked_clients(redis, 1), 10)
        for i in range(3):
            await client.enqueue("t", b"", queue="default", task_id=f"task-{i}")
            await wait_until(lambda: _ran(ran, i + 1), 10)
    await client.broker.close()
    assert ran == ["task-0", "task-1", "task-2"]


async def _ran(ran: list, n: int) -> bool:
    return len(ran) >= n


async def test_paused_queue_does_not_wake_the_worker_into_a_loop_and_keeps_its_tasks(redis):
    """A block that was waiting when the queue got paused answers for the paused queue's tasks; the dequeue
    then finds it paused and the worker must stop watching it, not wake again and again. Another queue
    still wakes the worker, and the paused tasks are taken once the queue is unpaused."""
    ran = []

    async def handler(task):
        ran.append(task.id)

    client = aq.Client(aq.Broker(redis))
    async with running_server(redis, {"t": handler}, queues={"a": 2, "b": 1}) as server:
        _slow_poll(server)
        await wait_until(lambda: _blocked_clients(redis, 2), 10)
        await redis.set("asynq:{a}:paused", 1)
        await client.enqueue("t", b"", queue="a", task_id="a-1")
        await client.enqueue("t", b"", queue="a", task_id="a-2")
        await asyncio.sleep(0.5)
        before = await calls(redis, "evalsha"), await calls(redis, "blmove")
        await asyncio.sleep(2)
        after = await calls(redis, "evalsha"), await calls(redis, "blmove")
        # Heartbeats and the other periodic jobs send a few; a wake-up loop would send thousands.
        assert after[0] - before[0] < 20 and after[1] - before[1] < 5, (before, after)
        assert await redis.lrange("asynq:{a}:pending", 0, -1) == [b"a-2", b"a-1"]
        assert ran == []
        server.IDLE_SLEEP = 0.1  # from the next wait on: while a queue is paused the worker polls, as Go does
        await client.enqueue("t", b"", queue="b", task_id="b-1")
        await wait_until(lambda: _ran(ran, 1), 10)
        await redis.delete("asynq:{a}:paused")
        await wait_until(lambda: _ran(ran, 3), 10)
    await client.broker.close()
    assert ran == ["b-1", "a-1", "a-2"]


async def test_strict_priority_holds_when_several_queues_get_tasks_while_idle(redis):
    """Tasks land in low, default and critical in one transaction, lowest first; the wake-up only
    starts the dequeue script, which must still take critical first, then default, then low."""
    ran = []
    release = asyncio.Event()

    async def handler(task):
        ran.append(task.id)
        await release.wait()

    async with running_server(redis, {"t": handler}, queues={"critical": 6, "default": 3, "low": 1},
                              strict_priority=True, concurrency=1) as server:
        _slow_poll(server)
        await wait_until(lambda: _blocked_clients(redis, 3), 10)
        await enqueue_atomically(redis, [("low", "l-1"), ("low", "l-2"), ("default", "d-1"), ("critical", "c-1"),
                                         ("critical", "c-2")])
        await wait_until(lambda: _ran(ran, 1), 10)
        release.set()
        await wait_until(lambda: _ran(ran, 5), 10)
    assert ran == ["c-1", "c-2", "d-1", "l-1", "l-2"]


def _start(url: str, *code: str, queues: str = "healthcheck:5") -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    env.update(MODE="prod", LOG_LEVEL="info")
    launch = "; ".join(["import sys, worker", *code, "sys.exit(worker.main(sys.argv[1:]))"])
    return subprocess.Popen([sys.executable, "-c", launch, "--redis-url", url, "--queues", queues], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def test_competing_worker_processes_take_every_task_once(redis, redis_server):
    """Every idle worker wakes for each task; the dequeue script gives it to one of them only."""
    procs = [_start(redis_server.url, "worker.Server.IDLE_SLEEP = 3600", "worker.Server.WAKE_POLL = 3600")
             for _ in range(3)]
    client = aq.Client(aq.Broker(redis))
    try:
        await wait_until(lambda: _blocked_clients(redis, 3), 20)
        for i in range(30):
            await enqueue_healthcheck(client, healthcheck_payload("tcp", {}, monitor_id=f"m{i}",
                                                                  is_under_maintenance=True), monitor_id=f"m{i}")
            if i % 3 == 0:
                await asyncio.sleep(0.05)  # some tasks land on sleeping workers, some in bursts
        await wait_until(lambda: _results(redis, 30), 20)
        await asyncio.sleep(0.5)  # a task taken twice would give its second result by now
    finally:
        results = [stop(p) for p in procs]
        await client.broker.close()
    assert all(code == 0 for code, _ in results), results
    counts = Counter(r["monitor_id"] for _, r in await ingest_tasks(redis))
    assert counts == Counter(f"m{i}" for i in range(30))
    assert not await redis.exists("asynq:{healthcheck}:pending", "asynq:{healthcheck}:active",
                                  "asynq:{healthcheck}:archived", "asynq:{healthcheck}:retry")
    assert int(await redis.get("asynq:{healthcheck}:processed")) == 30


async def _blocked_clients(redis, n: int) -> bool:
    return sum(c["cmd"] == "blmove" and "b" in c["flags"] for c in await redis.client_list()) >= n


async def _results(redis, n: int) -> bool:
    return await redis.llen("asynq:{ingester}:pending") >= n


async def test_shutdown_while_blocked_exits_without_waiting_for_the_block(redis, redis_server):
    """A BLMOVE of 10 minutes is in flight: SIGTERM must still end the worker (it cancels the block,
    which closes its connection), cleanly."""
    proc = _start(redis_server.url, "worker.Server.WAKE_BLOCK = 600", "worker.Server.WAKE_POLL = 600")
    try:
        await wait_until(lambda: _blocked_clients(redis, 1), 20)
    finally:
        code, err = stop(proc, timeout=60)
    assert code == 0, err
    assert '"worker stopped"' in err and "did not stop" not in err, err
    assert not await _blocked_clients(redis, 1)


async def test_acl_user_without_blmove_still_gets_its_tasks_by_polling(admin, redis_server, caplog):
    """A worker set up with an older ACL rule (no +blmove) must keep working as before, and say once
    why an idle worker picks tasks up more slowly."""
    import redis.asyncio as aioredis

    await set_worker_user(admin, acl_rule(["default"]).replace(" +blmove", ""), "pw-1")
    user = aioredis.Redis(port=redis_server.port, username="peekaping-worker", password="pw-1", protocol=2)
    ran = []

    async def handler(task):
        ran.append(task.id)

    client = aq.Client(aq.Broker(admin))
    try:
        async with running_server(user, {"t": handler}, queues={"default": 1}):
            for i in range(3):
                await asyncio.sleep(0.3)
                await client.enqueue("t", b"", queue="default", task_id=f"task-{i}")
                await wait_until(lambda: _ran(ran, i + 1), 10)
    finally:
        await client.broker.close()
        await user.aclose()
    assert ran == ["task-0", "task-1", "task-2"]
    warned = [r for r in caplog.records if "may not run BLMOVE" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelname == "WARNING"
