"""The task runner: a handler runs in its task's own asyncio task, and when the deadline, a cancel or a
shutdown comes first, the outcome is written at once from another task, whatever the handler does
with its cancellation (swallows it, or takes long to unwind)."""

from __future__ import annotations

import asyncio
import time

import pytest

import asynq_protocol as aq
from helpers import running_server, task_message, wait_until


@pytest.fixture
async def client(redis):
    broker = aq.Broker(redis)
    yield aq.Client(broker)
    await broker.close()


async def test_deadline_fails_the_task_even_if_the_handler_swallows_its_cancellation(redis, client):
    msg = await client.enqueue("t", b"x", timeout=1, max_retry=0)
    still_running = asyncio.Event()

    async def stubborn(task):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            still_running.set()
            await asyncio.sleep(3)  # goes on as if nothing happened

    async with running_server(redis, {"t": stubborn}, queues={"default": 1}) as server:
        started = time.time()
        await wait_until(lambda: redis.exists("asynq:{default}:archived"), 5)
        assert time.time() - started < 2.5
        assert still_running.is_set()
        await wait_until(lambda: _true(not server.jobs), 1)  # the slot is free while the handler still runs
    assert (await task_message(redis, "default", msg.id)).error_msg == "context deadline exceeded"


async def test_cancel_is_written_at_once_while_the_handler_unwinds_slowly(redis, client):
    msg = await client.enqueue("t", b"x", max_retry=0)
    started = asyncio.Event()

    async def slow_to_unwind(task):
        started.set()
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(3)  # a cleanup that takes its time

    async with running_server(redis, {"t": slow_to_unwind}, queues={"default": 1}):
        await asyncio.wait_for(started.wait(), 5)
        await asyncio.sleep(0.2)
        cancelled = time.time()
        await redis.publish("asynq:cancel", msg.id)
        await wait_until(lambda: redis.exists("asynq:{default}:archived"), 5)
        assert time.time() - cancelled < 1.5
    assert (await task_message(redis, "default", msg.id)).error_msg == "context canceled"


async def test_shutdown_requeues_at_once_while_the_handler_unwinds_slowly(redis, client):
    msg = await client.enqueue("t", b"x", max_retry=0)
    started = asyncio.Event()

    async def slow_to_unwind(task):
        started.set()
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(5)

    stopping = 0.0
    async with running_server(redis, {"t": slow_to_unwind}, queues={"default": 1}, shutdown_timeout=0.3):
        await asyncio.wait_for(started.wait(), 5)
        stopping = time.time()
    assert time.time() - stopping < 3
    assert await redis.lrange("asynq:{default}:pending", 0, -1) == [msg.id.encode()]
    assert not await redis.exists("asynq:{default}:active", "asynq:{default}:lease")


async def test_an_interrupt_after_the_handler_returned_changes_nothing(redis, client):
    msg = await client.enqueue("t", b"x", max_retry=0)
    done = []

    async def quick(task):
        done.append(task.id)

    async with running_server(redis, {"t": quick}, queues={"default": 1}) as server:
        await wait_until(lambda: redis.exists("asynq:{default}:processed"), 5)
        await redis.publish("asynq:cancel", msg.id)
        await asyncio.sleep(0.3)
        assert not server.jobs
    assert done == [msg.id]
    assert not await redis.exists("asynq:{default}:archived", "asynq:{default}:retry", "asynq:{default}:pending")
    assert int(await redis.get("asynq:{default}:processed")) == 1 and not await redis.exists("asynq:{default}:failed")


async def _true(value: bool) -> bool:
    return value
