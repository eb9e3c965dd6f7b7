"""Fuzz acceptance (issue 7, part 3): hostile payloads and configs through the real handler and a real
worker process, against a private redis-server and local targets that answer or refuse at once.

Every case must end as a result in the ingester queue or a TaskError with a readable message (the task
is archived); nothing may raise anything else, log a traceback, write text that is not UTF-8, or stay
in `active`. The seed changes per run (FUZZ_SEED reproduces one; FUZZ_CASES changes the count).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time

import asynq_protocol as aq
import healthcheck
import worker
from conftest import ROOT, free_port
from fuzz_payloads import Generator, start_targets
from helpers import wait_until

SEED = int(os.environ.get("FUZZ_SEED") or random.randrange(2**32))
CASES = int(os.environ.get("FUZZ_CASES") or 10_000)
PROCESS_CASES = int(os.environ.get("FUZZ_PROCESS_CASES") or 300)
READABLE_ERRORS = ("failed to unmarshal payload: ", "executor not found for monitor type: ", "monitor type \"")
INGEST_KEYS = {"monitor_id", "monitor_name", "monitor_type", "monitor_interval", "monitor_timeout", "monitor_max_retries",
               "monitor_retry_interval", "monitor_resend_interval", "monitor_config", "status", "message", "ping_ms",
               "start_time", "end_time", "is_under_maintenance", "check_cert_expiry"}


def readable(error: str) -> bool:
    """An archive reason a person can act on: one of the handler's sentences, valid UTF-8, no traceback."""
    try:
        error.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return error.startswith(READABLE_ERRORS) and "Traceback" not in error and "panic" not in error


async def ingest_results(redis) -> dict[str, list[dict]]:
    """Every ingest task's payload, decoded as strict UTF-8 JSON, by monitor id."""
    ids = await redis.lrange("asynq:{ingester}:pending", 0, -1)
    found: dict[str, list[dict]] = collections.defaultdict(list)
    for start in range(0, len(ids), 500):
        pipe = redis.pipeline(transaction=False)
        for task_id in ids[start:start + 500]:
            pipe.hget(aq.task_key("ingester", task_id.decode()), "msg")
        for raw in await pipe.execute():
            msg = aq.TaskMessage()
            msg.ParseFromString(raw)
            body = json.loads(msg.payload.decode("utf-8"))
            assert set(body) >= INGEST_KEYS and body["status"] in (0, 1, 2, 3), body
            assert isinstance(body["message"], str) and body["message"] and "Traceback" not in body["message"]
            found[body["monitor_id"]].append(body)
    return found


def check_expectations(meta: dict[int, tuple], outcomes: dict[int, str | None], results: dict[str, list[dict]]) -> None:
    for i, (monitor_id, expect, maintenance) in meta.items():
        outcome = outcomes[i]
        context = f"seed {SEED} case {i}: {outcome!r}"
        if outcome is not None:
            assert readable(outcome), context
        if expect == "result":
            assert outcome is None and results.get(monitor_id), context
            if maintenance:
                assert [r["status"] for r in results[monitor_id]] == [3], context
        elif expect == "error":
            assert outcome is not None, context


def fallback_summary(records: list[logging.LogRecord]) -> collections.Counter:
    """Unexpected exceptions the handler's last line of defence turned into DOWN (type and place)."""
    return collections.Counter(r.fields["error"].split(":", 2)[0] + ":" + r.fields["error"].split(":", 2)[1]
                               for r in records if r.getMessage().startswith("check raised an unexpected exception"))


async def test_fuzzed_payloads_through_the_handler_end_as_result_or_readable_error(redis, caplog):
    caplog.set_level(logging.INFO)
    targets, servers = await start_targets(free_port())
    broker = aq.Broker(redis)
    handler = healthcheck.healthcheck_handler(aq.Client(broker))
    generator = Generator(SEED, targets)
    meta: dict[int, tuple] = {}
    outcomes: dict[int, str | None] = {}
    crashes: list[str] = []
    slots = asyncio.Semaphore(64)

    async def run(i: int, payload: bytes) -> None:
        task = worker.Task(worker.HEALTHCHECK_TASK, payload, f"healthcheck:f{i}", "healthcheck", 0, 0, time.time() + 4)
        try:
            await handler(task)
            outcomes[i] = None
        except worker.TaskError as exc:
            outcomes[i] = str(exc)
        except Exception as exc:  # the failure this test exists to find
            outcomes[i] = None
            crashes.append(f"case {i}: {type(exc).__name__}: {str(exc)[:200]}")
        finally:
            slots.release()

    started = time.monotonic()
    running: set[asyncio.Task] = set()
    for i in range(CASES):
        await slots.acquire()
        case = generator.case(i)
        meta[i] = (case.monitor_id, case.expect, case.maintenance)
        job = asyncio.create_task(run(i, case.payload))
        running.add(job)
        job.add_done_callback(running.discard)
    await asyncio.gather(*running)
    elapsed = time.monotonic() - started
    for server in servers:
        server.close()
    await broker.close()

    assert not crashes, f"seed {SEED}: {crashes[:5]}"
    results = await ingest_results(redis)
    check_expectations(meta, outcomes, results)
    assert sum(map(len, results.values())) <= sum(o is None for o in outcomes.values())
    assert all(r.exc_info is None for r in caplog.records), f"seed {SEED}: a log record carries a traceback"
    assert "Traceback" not in caplog.text
    kinds = collections.Counter("result" if o is None else re.sub(r'"[^"]*"', "X", o.split(":")[0])
                                for o in outcomes.values())
    print(f"\nfuzz seed {SEED}: {CASES} cases in {elapsed:.1f} s; outcomes {dict(kinds)}; "
          f"last-line-of-defence hits {dict(fallback_summary(caplog.records))}")


async def test_fuzzed_tasks_through_a_worker_process_leave_nothing_active(redis, redis_server):
    targets, servers = await start_targets(free_port())
    broker = aq.Broker(redis)
    client = aq.Client(broker)
    generator = Generator(SEED + 1, targets, big_every=60)
    meta: dict[int, tuple] = {}
    for i in range(PROCESS_CASES):
        case = generator.case(i)
        meta[i] = (case.monitor_id, case.expect, case.maintenance)
        await client.enqueue(worker.HEALTHCHECK_TASK, case.payload, queue="healthcheck", max_retry=0, timeout=4,
                             retention=0, task_id=f"healthcheck:{i}")
    log_file = tempfile.TemporaryFile(mode="w+")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    env.update(MODE="dev", LOG_LEVEL="info")
    proc = subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--redis-url", redis_server.url,
                             "--concurrency", "64"], env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        async def drained() -> bool:
            return not await redis.exists("asynq:{healthcheck}:pending", "asynq:{healthcheck}:active",
                                          "asynq:{healthcheck}:lease")
        await wait_until(drained, 90, interval=0.2)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        for server in servers:
            server.close()
    log_file.seek(0)
    logs = log_file.read()
    assert code == 0, logs[-2000:]
    assert "Traceback" not in logs and "panic" not in logs, f"seed {SEED + 1}: {logs[-3000:]}"
    assert not await redis.zcard("asynq:{healthcheck}:retry")
    outcomes: dict[int, str | None] = {}
    for i in meta:
        key = aq.task_key("healthcheck", f"healthcheck:{i}")
        state, raw = await redis.hmget(key, "state", "msg")
        assert state in (None, b"archived"), (i, state)  # done (retention 0 deletes it) or archived
        if state is None:
            outcomes[i] = None
        else:
            msg = aq.TaskMessage()
            msg.ParseFromString(raw)
            outcomes[i] = msg.error_msg
    check_expectations(meta, outcomes, await ingest_results(redis))
    await broker.close()
