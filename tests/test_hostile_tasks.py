"""Issue 7, part 3: hostile tasks and configs end as a DOWN result or an archived task with a readable
error at once; an unexpected exception in a check is the handler's last line of defence (one log
line, no traceback, no secret); every text written to Redis is valid UTF-8."""

from __future__ import annotations

import json
import logging
import time

import pytest

import asynq_protocol as aq
import healthcheck
import worker
from executors import Result
from helpers import enqueue_healthcheck, healthcheck_payload, ingest_tasks, queue_empty, running_server, task_message, wait_until

SECRET = "s3cr3t-Pa55"


@pytest.fixture
async def client(redis):
    broker = aq.Broker(redis)
    yield aq.Client(broker)
    await broker.close()


@pytest.fixture
def broken_type(monkeypatch):
    """Register tests/broken_executor.py as the executor of the type `broken`."""
    monkeypatch.setitem(worker.EXECUTORS, "broken", "broken_executor")
    return "broken"


async def process(redis, client, payloads: list[bytes]) -> float:
    """Run the real handler in a real Server until the queue is drained; return the seconds it took."""
    started = time.time()
    for i, payload in enumerate(payloads):
        await enqueue_healthcheck(client, payload, monitor_id=f"m{i}")
    async with running_server(redis, {worker.HEALTHCHECK_TASK: healthcheck.healthcheck_handler(client)}):
        await wait_until(lambda: queue_empty(redis, "healthcheck"), 30)
        await wait_until(lambda: _no_lease(redis), 5)
    return time.time() - started


async def _no_lease(redis) -> bool:
    return not await redis.exists("asynq:{healthcheck}:lease")


async def archived_error(redis, monitor: str) -> str:
    key = aq.task_key("healthcheck", f"healthcheck:{monitor}")
    assert await redis.hget(key, "state") == b"archived"
    return (await task_message(redis, "healthcheck", f"healthcheck:{monitor}")).error_msg


async def results(redis) -> dict[str, dict]:
    return {r["monitor_id"]: r for _, r in await ingest_tasks(redis)}


async def test_unexpected_exception_is_a_down_result_logged_once_without_traceback_or_secret(
        redis, client, broken_type, open_port, caplog):
    caplog.set_level(logging.DEBUG)
    leak = healthcheck_payload(broken_type, {"mode": "leak", "password": SECRET}, monitor_id="m0")
    good = healthcheck_payload("tcp", {"host": "127.0.0.1", "port": open_port}, monitor_id="m1")
    await process(redis, client, [leak, good])
    found = await results(redis)
    assert found["m1"]["status"] == 1
    down = found["m0"]
    assert down["status"] == 0
    assert down["message"].startswith("broken check failed: unexpected ValueError at broken_executor.py:")
    assert down["message"].endswith("invalid literal for int() with base 10: '***'")
    assert SECRET not in down["message"] and SECRET not in down["monitor_config"]  # masked there too
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in errors] == ["check raised an unexpected exception; reporting DOWN"]
    assert errors[0].exc_info is None and errors[0].fields["error"].startswith("ValueError at broken_executor.py:")
    assert "Traceback" not in caplog.text and SECRET not in caplog.text
    assert all(SECRET not in json.dumps(r.__dict__.get("fields", {})) for r in caplog.records)


async def test_runaway_recursion_and_surrogate_texts_still_give_clean_down_results(redis, client, broken_type):
    await process(redis, client, [healthcheck_payload(broken_type, {"mode": "recurse"}, monitor_id="m0"),
                                  healthcheck_payload(broken_type, {"mode": "bad-text"}, monitor_id="m1")])
    raw = [msg.payload for msg, _ in await ingest_tasks(redis)]
    assert all(p.decode("utf-8") for p in raw)  # strict UTF-8
    found = await results(redis)
    assert "unexpected RecursionError at broken_executor.py:" in found["m0"]["message"]
    assert found["m1"]["message"].endswith("text with a lone surrogate \ufffd in it")


async def test_host_label_over_63_characters_is_down_like_go_without_dns(redis, client):
    host = "a" * 64 + ".example.com"
    elapsed = await process(redis, client, [healthcheck_payload("tcp", {"host": host, "port": 80})])
    [(_, result)] = await ingest_tasks(redis)
    assert (result["status"], result["message"]) == (0, f"TCP connection failed: dial tcp: lookup {host}: no such host")
    assert result["ping_ms"] < 50 and elapsed < 5


async def test_lone_surrogate_in_config_host_is_replaced_before_the_check(redis, client):
    config = '{"host":"bad\\udc80name","port":80}'
    await process(redis, client, [healthcheck_payload("tcp", config)])
    [(msg, result)] = await ingest_tasks(redis)
    assert result["message"] == "TCP connection failed: dial tcp: lookup bad\ufffdname: no such host"
    assert msg.payload.decode("utf-8")


async def test_lone_surrogate_in_monitor_type_is_archived_at_once_with_a_readable_error(redis, client, open_port):
    bad = healthcheck_payload("tcp", {"host": "127.0.0.1", "port": open_port}).replace(b'"tcp"', b'"t\\udc80"')
    good = healthcheck_payload("tcp", {"host": "127.0.0.1", "port": open_port}, monitor_id="m1")
    elapsed = await process(redis, client, [bad, good])
    assert await archived_error(redis, "m0") == "executor not found for monitor type: t\ufffd"
    assert [r["status"] for r in (await results(redis)).values()] == [1]
    assert elapsed < 10  # not left in active until the lease expires (was ~39 s)
    assert not await redis.llen("asynq:{healthcheck}:active")


@pytest.mark.parametrize("change, error", [
    ((b'"timeout":16', b'"timeout":1e999'),
     "json: cannot unmarshal number 1e999 into Go struct field HealthCheckTaskPayload.timeout of type int"),
    ((b'"interval":60', b'"interval":99999999999999999999'),
     "json: cannot unmarshal number 99999999999999999999 into Go struct field HealthCheckTaskPayload.interval of type int"),
    ((b'"config":', b'"deep":' + b"[" * 10001 + b"]" * 10001 + b',"config":'), "invalid character '[' exceeded max depth"),
])
async def test_payloads_go_cannot_decode_are_archived_with_gos_text(redis, client, change, error):
    payload = healthcheck_payload("tcp", {"host": "127.0.0.1", "port": 1})
    assert change[0] in payload
    await process(redis, client, [payload.replace(*change)])
    assert await archived_error(redis, "m0") == f"failed to unmarshal payload: {error}"
    assert await ingest_tasks(redis) == []


async def test_payload_nested_deeper_than_python_allows_but_within_go_limit_is_checked(redis, client, closed_port):
    payload = healthcheck_payload("tcp", {"host": "127.0.0.1", "port": closed_port})
    await process(redis, client, [payload.replace(b'"config":', b'"deep":' + b"[" * 5000 + b"]" * 5000 + b',"config":')])
    assert [r["status"] for r in (await results(redis)).values()] == [0]


async def test_failure_texts_and_ingest_payloads_written_to_redis_are_valid_utf8():
    async def failing(task):
        raise worker.SkipRetry("executor said \udc80")

    error = await worker._guarded(failing, worker.Task("t", b"", "id", "q", 0, 0, time.time() + 5))
    assert isinstance(error, worker.SkipRetry) and str(error) == "executor said \ufffd"
    payload = healthcheck.decode_payload(healthcheck_payload("tcp", {"host": "h", "port": 1}))
    body = healthcheck.ingest_payload(payload, Result(0, "peer sent \udcff\udcfe", 1, 2))
    assert json.loads(body.decode("utf-8"))["message"] == "peer sent \ufffd\ufffd"
