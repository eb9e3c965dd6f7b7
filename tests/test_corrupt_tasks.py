"""Task messages that do not decode: they are archived and kept, and never stop the rest of the work."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

import asynq_protocol as aq
from helpers import enqueue_healthcheck, healthcheck_payload, ingest_tasks, running_server, task_message, wait_until
from test_worker_process import start_worker, stop

QUEUE = "healthcheck"


def _good_message(task_id: str) -> aq.TaskMessage:
    return aq.TaskMessage(type="monitor:healthcheck", payload=b'{"monitor_id":"x"}', id=task_id, queue=QUEUE,
                          timeout=16)


def corrupt_messages() -> dict[str, bytes]:
    """Three ways a stored msg goes bad; each is checked to really be unusable."""
    whole = _good_message("bad:truncated").SerializeToString()
    wrong_wire = aq.TaskMessage(type="monitor:healthcheck", payload=b"{}", queue=QUEUE).SerializeToString()
    wrong_wire += b"\x1d" + b"abcd"  # field 3 (id, a string) sent as fixed32: parsers drop it as unknown
    samples = {
        "bad:garbage": b"not a protobuf \xff\xfe\x00\x01",
        "bad:truncated": whole[: len(whole) - 5],  # cut inside the payload field
        "bad:wrong-wire-type": wrong_wire,
    }
    for task_id, raw in samples.items():
        assert isinstance(aq.decode_task(QUEUE, task_id.encode(), raw), aq.Corrupt), task_id
    return samples


async def push_raw(redis, queue: str, task_id: str, raw: bytes) -> None:
    """A pending task whose msg is `raw`, stored the way the Go client stores one."""
    await redis.sadd("asynq:queues", queue)
    await redis.hset(aq.task_key(queue, task_id), mapping={"msg": raw, "state": "pending",
                                                            "pending_since": time.time_ns()})
    await redis.lpush(f"asynq:{{{queue}}}:pending", task_id)


async def assert_kept_in_archive(redis, queue: str, task_id: str, raw: bytes) -> None:
    """Archived like any failed task, readable by Go's Inspector, with the original bytes kept."""
    p = f"asynq:{{{queue}}}:"
    key = aq.task_key(queue, task_id)
    assert await redis.zscore(p + "archived", task_id) is not None
    assert await redis.lpos(p + "active", task_id) is None and await redis.lpos(p + "pending", task_id) is None
    assert await redis.zscore(p + "lease", task_id) is None
    assert await redis.hget(key, "state") == b"archived"
    assert await redis.hget(key, "corrupt_msg") == raw
    msg = await task_message(redis, queue, task_id)  # the Inspector decodes msg the same way (UTF-8 checked)
    assert (msg.id, msg.queue, msg.payload, msg.retry) == (task_id, queue, raw, 0)
    assert msg.error_msg.startswith("cannot decode task message: ") and abs(msg.last_failed_at - time.time()) < 120
    assert await redis.memory_usage(key) is not None  # what the Inspector's queue stats sample


def _log_lines(err: str) -> list[dict]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


@pytest.fixture
async def client(redis):
    broker = aq.Broker(redis)
    yield aq.Client(broker)
    await broker.close()


async def test_corrupt_messages_are_archived_once_while_good_tasks_around_them_run(redis, redis_server, client,
                                                                                    open_port):
    """The acceptance case: good tasks, three corrupt ones, good tasks; then a restart on the same data."""
    samples = corrupt_messages()
    config = {"host": "127.0.0.1", "port": open_port}
    for i in range(5):
        await enqueue_healthcheck(client, healthcheck_payload("tcp", config, monitor_id=f"before-{i}"), f"before-{i}")
    for task_id, raw in samples.items():
        await push_raw(redis, QUEUE, task_id, raw)
    for i in range(5):
        await enqueue_healthcheck(client, healthcheck_payload("tcp", config, monitor_id=f"after-{i}"), f"after-{i}")

    proc = start_worker(redis_server.url)
    try:
        await wait_until(lambda: _results(redis, 10), 20, interval=0.1)
        await wait_until(lambda: _archived(redis, 3), 10, interval=0.1)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    results = [r for _, r in await ingest_tasks(redis)]
    assert sorted(r["monitor_id"] for r in results) == sorted([f"before-{i}" for i in range(5)] +
                                                             [f"after-{i}" for i in range(5)])
    assert all(r["status"] == 1 for r in results)
    for task_id, raw in samples.items():
        await assert_kept_in_archive(redis, QUEUE, task_id, raw)
    assert int(await redis.get("asynq:{healthcheck}:failed")) == 3
    reported = [(line["task_id"], line["queue"]) for line in _log_lines(err)
                if line["msg"] == "corrupt task message archived" and line["level"] == "error"]
    assert sorted(reported) == sorted((task_id, QUEUE) for task_id in samples)
    archived_before = await redis.zrange("asynq:{healthcheck}:archived", 0, -1, withscores=True)

    proc = start_worker(redis_server.url)  # a restart on the same data: nothing to re-log, work goes on
    try:
        await enqueue_healthcheck(client, healthcheck_payload("tcp", config, monitor_id="later"), "later")
        await wait_until(lambda: _results(redis, 11), 20, interval=0.1)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert not [line for line in _log_lines(err) if line["level"] in ("error", "warn")], err
    assert await redis.zrange("asynq:{healthcheck}:archived", 0, -1, withscores=True) == archived_before


async def _results(redis, n: int) -> bool:
    return await redis.llen("asynq:{ingester}:pending") >= n


async def _archived(redis, n: int) -> bool:
    return await redis.zcard("asynq:{healthcheck}:archived") >= n


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_recoverer_archives_a_corrupt_active_task_and_still_recovers_the_others(redis):
    """A crashed worker's leftovers: a corrupt and a good task, both active with expired leases."""
    redis_now = int((await redis.time())[0])
    raw = b"\x0a\xff\xff\xff"  # field 1 with a length running past the end
    good = _good_message("good-1")
    good.queue, good.retry = "default", 0
    p = "asynq:{default}:"
    await redis.sadd("asynq:queues", "default")
    for task_id, msg in (("bad-1", raw), ("good-1", good.SerializeToString())):
        await redis.hset(aq.task_key("default", task_id), mapping={"msg": msg, "state": "active"})
        await redis.lpush(p + "active", task_id)
        await redis.zadd(p + "lease", {task_id: redis_now - 100})

    logger, seen = logging.getLogger("peekaping"), _Records()
    logger.addHandler(seen)
    try:
        async with running_server(redis, {}, queues={"default": 1}):  # the recoverer runs at start
            await wait_until(lambda: _archived_in(redis, "default", 2), 10)
    finally:
        logger.removeHandler(seen)
    await assert_kept_in_archive(redis, "default", "bad-1", raw)
    assert (await task_message(redis, "default", "good-1")).error_msg == "asynq: task lease expired"
    errors = [r for r in seen.records if r.levelno == logging.ERROR]
    assert [(r.getMessage(), r.fields["task_id"]) for r in errors] == [("corrupt task message archived", "bad-1")]


async def _archived_in(redis, queue: str, n: int) -> bool:
    return await redis.zcard(f"asynq:{{{queue}}}:archived") >= n


async def test_message_filed_under_another_id_or_queue_is_treated_as_corrupt(redis):
    """Completion writes use the id and queue inside msg: a mismatch would strand the task in active."""
    await push_raw(redis, "default", "real-id", aq.TaskMessage(type="t", id="other-id", queue="default")
                   .SerializeToString())
    await push_raw(redis, "default", "moved", aq.TaskMessage(type="t", id="moved", queue="elsewhere")
                   .SerializeToString())
    taken = await aq.Broker(redis).take(["default"], [[0], [0]])
    assert taken.messages == []
    assert sorted(c.task_id for c in taken.corrupt) == ["moved", "real-id"]
    assert all("it names task" in c.error for c in taken.corrupt)


async def test_best_effort_type_of_a_corrupt_message_is_read_off_the_wire():
    """The archived record shows the task type when the bytes that hold it are intact."""
    samples = corrupt_messages()
    types = {task_id: aq.corrupt_record(aq.decode_task(QUEUE, task_id.encode(), raw), 0).type
             for task_id, raw in samples.items()}
    assert types == {"bad:garbage": "", "bad:truncated": "monitor:healthcheck",
                     "bad:wrong-wire-type": "monitor:healthcheck"}


async def test_lone_surrogates_in_texts_are_written_as_replacement_characters(redis, client):
    """Protobuf refuses lone surrogates; Go would have U+FFFD there. Nothing may crash the write."""
    msg = await client.enqueue("type-\udc80", b"x", queue="q\ud800", task_id="id-\udfff", max_retry=1)
    assert (msg.type, msg.queue, msg.id) == ("type-\ufffd", "q\ufffd", "id-\ufffd")
    broker = aq.Broker(redis)
    [got] = await broker.dequeue(["q\ufffd"], [[0]])
    await broker.retry(got, "first \udc80 failure", time.time() - 1)
    stored = await task_message(redis, "q\ufffd", "id-\ufffd")
    assert (stored.error_msg, stored.retried) == ("first \ufffd failure", 1)
    await broker.forward("q\ufffd")
    [got] = await broker.dequeue(["q\ufffd"], [[0]])
    await broker.archive(got, "executor not found for monitor type: \udc80")
    stored = await task_message(redis, "q\ufffd", "id-\ufffd")
    assert stored.error_msg == "executor not found for monitor type: \ufffd"
    await broker.close()


async def test_task_key_of_the_wrong_type_never_strands_the_tasks_around_it(redis, client):
    """A script error half-way would leave the tasks it already took active with nobody running them."""
    first = await client.enqueue("t", b"1")
    await redis.set(aq.task_key("default", "not-a-hash"), "x")
    await redis.lpush("asynq:{default}:pending", "not-a-hash")
    last = await client.enqueue("t", b"2")
    taken = await aq.Broker(redis).take(["default"], [[0]] * 3)
    assert [m.id for m in taken.messages] == [first.id, last.id]
    assert taken.not_hashes == [("default", "not-a-hash")]
    assert await redis.lrange("asynq:{default}:active", 0, -1) == [last.id.encode(), first.id.encode()]
    assert await redis.get(aq.task_key("default", "not-a-hash")) == b"x"  # left for inspection

    due = await client.enqueue("t", b"3", process_in=1)
    await redis.zadd("asynq:{default}:scheduled", {"not-a-hash": 1})
    await asyncio.sleep(1.1)
    assert await aq.Broker(redis).forward("default") == 2
    assert await redis.lrange("asynq:{default}:pending", 0, -1) == [due.id.encode()]
    assert not await redis.exists("asynq:{default}:scheduled")

    await redis.lpush("asynq:{default}:active", "not-a-hash")
    await redis.zadd("asynq:{default}:lease", {"not-a-hash": 1, first.id: 1})
    assert [m.id for m in await aq.Broker(redis).list_lease_expired("default", 5)] == [first.id]
