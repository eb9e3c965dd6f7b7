"""The monitor:healthcheck handler end to end through a private Redis (Peekaping spec sections 3, 4, 10.1-10.3)."""

from __future__ import annotations

import base64
import json
import re
import time

import pytest

import asynq_protocol as aq
import healthcheck
import worker
from conftest import FIXTURES
from executors._kit.gotext import format_rfc3339, parse_rfc3339
from helpers import enqueue_healthcheck, healthcheck_payload, ingest_tasks, queue_empty, running_server, task_message, wait_until

INGEST_KEYS = ["monitor_id", "monitor_name", "monitor_type", "monitor_interval", "monitor_timeout",
               "monitor_max_retries", "monitor_retry_interval", "monitor_resend_interval", "monitor_config",
               "status", "message", "ping_ms", "start_time", "end_time", "is_under_maintenance", "check_cert_expiry"]
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")


@pytest.fixture
async def client(redis):
    broker = aq.Broker(redis)
    yield aq.Client(broker)
    await broker.close()


async def process(redis, client, payloads: list[bytes], timeout: int = 16, **server_options) -> None:
    """Enqueue like the producer, run the real worker handler until the healthcheck queue is drained."""
    for i, payload in enumerate(payloads):
        await enqueue_healthcheck(client, payload, monitor_id=f"m{i}", timeout=timeout)
    handlers = {worker.HEALTHCHECK_TASK: healthcheck.healthcheck_handler(client)}
    async with running_server(redis, handlers, **server_options):
        await wait_until(lambda: queue_empty(redis, "healthcheck"), 30)
        await wait_until(lambda: _no_jobs(redis), 5)


async def _no_jobs(redis) -> bool:
    return not await redis.exists("asynq:{healthcheck}:lease")


def fixture_payload(**changes) -> tuple[dict, bytes]:
    """The task payload bytes recorded from the Go producer (fixture a), with some fields changed."""
    fx = json.load(open(FIXTURES / "a_enqueue_unique_healthcheck.json"))
    raw = next(k for k in fx["steps"][0]["keys"] if k["type"] == "hash")["value"]["msg"]["base64"]
    msg = aq.TaskMessage()
    msg.ParseFromString(base64.b64decode(raw))
    body = json.loads(msg.payload)
    body.update(changes)
    return body, json.dumps(body, separators=(",", ":")).encode()


async def archived_error(redis, monitor: str = "m0") -> str:
    msg = await task_message(redis, "healthcheck", f"healthcheck:{monitor}")
    assert msg is not None and await redis.hget(aq.task_key("healthcheck", f"healthcheck:{monitor}"), "state") == b"archived"
    return msg.error_msg


async def test_fixture_task_under_maintenance_yields_every_ingest_field(redis, client):
    body, payload = fixture_payload(scheduled_at=format_rfc3339(time.time_ns()), is_under_maintenance=True,
                                    check_cert_expiry=True)
    await process(redis, client, [payload])
    [(msg, result)] = await ingest_tasks(redis)
    assert list(result) == INGEST_KEYS  # every key, Go's order, no tls_info
    assert result["monitor_id"] == body["monitor_id"] == "mon-fixture-1"
    assert (result["monitor_name"], result["monitor_type"]) == ("Fixture Monitor", "http")
    assert (result["monitor_interval"], result["monitor_timeout"], result["monitor_max_retries"],
            result["monitor_retry_interval"], result["monitor_resend_interval"]) == (60, 10, 0, 60, 0)
    assert result["monitor_config"] == body["config"]
    assert (result["status"], result["message"], result["is_under_maintenance"]) == (3, "Monitor under maintenance", True)
    assert result["ping_ms"] <= 1 and result["check_cert_expiry"] is True
    for name in ("start_time", "end_time"):
        assert RFC3339_UTC.match(result[name]), result[name]
    start_ns = int(msg.id.rsplit(":", 1)[1])
    assert msg.id == f"ingest:mon-fixture-1:{start_ns}" and format_rfc3339(start_ns) == result["start_time"]
    assert (msg.type, msg.queue, msg.retry, msg.timeout, msg.retention, msg.deadline) == ("monitor:ingest", "ingester", 3, 120, 3600, 0)
    assert msg.unique_key == aq.unique_key("ingester", "monitor:ingest", msg.payload)
    assert await redis.smembers("asynq:queues") >= {b"ingester", b"healthcheck"}
    assert not await redis.exists("asynq:{healthcheck}:archived")


async def test_fixture_task_as_tcp_check_reports_up(redis, client, open_port):
    body, payload = fixture_payload(scheduled_at=format_rfc3339(time.time_ns()), monitor_type="tcp",
                                    config=json.dumps({"host": "127.0.0.1", "port": open_port}))
    await process(redis, client, [payload])
    [(msg, result)] = await ingest_tasks(redis)
    assert (result["status"], result["message"]) == (1, f"TCP port {open_port} is open")
    assert result["ping_ms"] == (parse_rfc3339(result["end_time"]) - parse_rfc3339(result["start_time"])) * 1000 // 1
    assert isinstance(result["ping_ms"], int) and "tls_info" not in result
    assert int(await redis.get("asynq:{healthcheck}:processed")) == 1


async def test_closed_port_reports_down_with_go_dial_error(redis, client, closed_port):
    await process(redis, client, [healthcheck_payload("tcp", {"host": "127.0.0.1", "port": closed_port})])
    [(_, result)] = await ingest_tasks(redis)
    assert result["status"] == 0
    assert result["message"] == f"TCP connection failed: dial tcp 127.0.0.1:{closed_port}: connect: connection refused"


async def test_stale_task_is_acknowledged_without_result(redis, client, open_port):
    config = {"host": "127.0.0.1", "port": open_port}
    old = format_rfc3339(time.time_ns() - 91 * 10**9)
    await process(redis, client, [healthcheck_payload("tcp", config, scheduled_at=old),
                                  healthcheck_payload("tcp", config, interval=0, scheduled_at=format_rfc3339(time.time_ns() - 10**9))])
    assert await ingest_tasks(redis) == []
    assert int(await redis.get("asynq:{healthcheck}:processed")) == 2
    assert not await redis.exists("asynq:{healthcheck}:archived", "asynq:{healthcheck}:failed")


async def test_just_inside_the_stale_threshold_is_checked(redis, client, open_port):
    recent = format_rfc3339(time.time_ns() - 88 * 10**9)  # threshold is 90 s for interval 60
    await process(redis, client, [healthcheck_payload("tcp", {"host": "127.0.0.1", "port": open_port}, scheduled_at=recent)])
    assert len(await ingest_tasks(redis)) == 1


@pytest.mark.parametrize("stamp", ["%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S.123Z", "%Y-%m-%dT%H:%M:%S.123456Z",
                                   "%Y-%m-%dT%H:%M:%S.123456789Z", "+02:00"])
async def test_scheduled_at_forms_are_accepted(redis, client, open_port, stamp):
    if stamp == "+02:00":
        text = time.strftime("%Y-%m-%dT%H:%M:%S+02:00", time.gmtime(time.time() + 7200))
    else:
        text = time.strftime(stamp, time.gmtime())
    await process(redis, client, [healthcheck_payload("tcp", {"host": "127.0.0.1", "port": open_port}, scheduled_at=text)])
    assert [r["status"] for _, r in await ingest_tasks(redis)] == [1]


@pytest.mark.parametrize("payload, start", [
    (b"not json", "failed to unmarshal payload:"),
    (b"[]", "failed to unmarshal payload: json: cannot unmarshal array"),
    (b'{"monitor_id":"m","interval":"60"}', "failed to unmarshal payload: json: cannot unmarshal string into Go struct field"),
    (b'{"monitor_id":"m","scheduled_at":"yesterday"}', "failed to unmarshal payload:"),
])
async def test_malformed_payload_is_archived_with_readable_error(redis, client, payload, start):
    await process(redis, client, [payload])
    assert (await archived_error(redis)).startswith(start)
    assert await ingest_tasks(redis) == []


@pytest.mark.parametrize("monitor_type, error", [
    ("HTTP", "executor not found for monitor type: HTTP"),
    ("", "executor not found for monitor type: "),
    ("bogus", "executor not found for monitor type: bogus"),
])
async def test_unknown_type_is_archived_and_worker_goes_on(redis, client, open_port, monitor_type, error):
    good = healthcheck_payload("tcp", {"host": "127.0.0.1", "port": open_port})
    await process(redis, client, [healthcheck_payload(monitor_type, "{}"), good])
    assert await archived_error(redis, "m0") == error
    assert [r["status"] for _, r in await ingest_tasks(redis)] == [1]


async def test_payload_missing_type_and_config_is_archived_with_readable_error(redis, client):
    fresh = format_rfc3339(time.time_ns())
    await process(redis, client, [json.dumps({"monitor_id": "m", "interval": 60, "scheduled_at": fresh}).encode()])
    assert await archived_error(redis) == "executor not found for monitor type: "
    assert await ingest_tasks(redis) == []


async def test_maintenance_wins_for_every_type_and_touches_no_target(redis, client, hanging_port):
    payloads = [healthcheck_payload(t, {"host": "127.0.0.1", "port": hanging_port}, is_under_maintenance=True)
                for t in ("tcp", "push")] + [healthcheck_payload("tcp", "not a config", is_under_maintenance=True)]
    started = time.time()
    await process(redis, client, payloads)
    results = [r for _, r in await ingest_tasks(redis)]
    assert [(r["status"], r["message"]) for r in results] == [(3, "Monitor under maintenance")] * 3
    assert time.time() - started < 5


async def test_bad_config_is_a_down_result_not_a_task_failure(redis, client):
    await process(redis, client, [healthcheck_payload("tcp", {"host": "a", "port": 1, "foo": 1}, monitor_id="m0"),
                                  healthcheck_payload("tcp", "", monitor_id="m1"),
                                  healthcheck_payload("tcp", {"host": "a", "port": "80"}, monitor_id="m2")])
    results = sorted((r for _, r in await ingest_tasks(redis)), key=lambda r: r["monitor_id"])
    assert [r["status"] for r in results] == [0, 0, 0]
    assert results[0]["message"] == 'failed to parse config: json: unknown field "foo"'
    assert results[1]["message"] == "failed to parse config: EOF"
    assert results[2]["message"].startswith("failed to parse config: json: cannot unmarshal string into Go struct field TCPConfig.port")
    assert all(r["start_time"] == r["end_time"] for r in results)


async def test_config_keys_match_case_insensitively(redis, client, open_port):
    await process(redis, client, [healthcheck_payload("tcp", {"HOST": "127.0.0.1", "Port": open_port})])
    assert [r["status"] for _, r in await ingest_tasks(redis)] == [1]


async def test_push_reports_only_missing_or_late_beats(redis, client):
    now = time.time_ns()
    beat = lambda status, age: {"id": "b", "monitor_id": "m", "status": status, "msg": "", "ping": 0,
                                "time": format_rfc3339(now - age * 10**9)}
    payloads = [healthcheck_payload("push", '{"pushToken":"x"}', monitor_id="m0", last_heartbeat=beat(1, 30)),
                healthcheck_payload("push", '{"pushToken":"x"}', monitor_id="m1"),
                healthcheck_payload("push", "{}", monitor_id="m2", interval=30, last_heartbeat=beat(1, 40)),
                healthcheck_payload("push", "{}", monitor_id="m3", last_heartbeat=beat(0, 1))]
    await process(redis, client, payloads)
    results = {r["monitor_id"]: r for _, r in await ingest_tasks(redis)}
    assert "m0" not in results
    assert (results["m1"]["status"], results["m1"]["message"], results["m1"]["ping_ms"]) == (0, "No push received yet", 0)
    assert results["m2"]["message"] == results["m3"]["message"] == "No push received in time"


async def test_hanging_target_ends_down_before_the_task_deadline(redis, client, hanging_port):
    started = time.time()
    await process(redis, client, [healthcheck_payload("tcp", {"host": "127.0.0.1", "port": hanging_port}, timeout=2)],
                  timeout=2)
    [(_, result)] = await ingest_tasks(redis)
    assert result["status"] == 0 and result["message"].startswith("TCP connection failed:")
    assert "i/o timeout" in result["message"] and 1000 <= result["ping_ms"] <= 2000
    assert time.time() - started < 4
    assert not await redis.exists("asynq:{healthcheck}:archived", "asynq:{healthcheck}:failed")
    assert int(await redis.get("asynq:{healthcheck}:processed")) == 1


async def test_failed_result_enqueue_fails_the_task(redis, client, open_port, closed_port):
    import redis.asyncio as aioredis

    dead = aioredis.Redis(host="127.0.0.1", port=closed_port, protocol=2)
    dead_client = aq.Client(aq.Broker(dead))
    handler = healthcheck.healthcheck_handler(dead_client)
    payload = healthcheck_payload("tcp", {"host": "127.0.0.1", "port": open_port})
    task = worker.Task("monitor:healthcheck", payload, "healthcheck:m0", "healthcheck", 0, 0, time.time() + 16)
    with pytest.raises(worker.TaskError, match="^failed to enqueue ingester task: "):
        await handler(task)
    await dead.aclose()


async def test_result_extensions_add_timings_only_when_enabled(open_port):
    from executors import Result

    payload = healthcheck.decode_payload(healthcheck_payload("tcp", {"host": "127.0.0.1", "port": open_port}))
    result = Result(1, "ok", 1, 2_000_001, timings={"connect": 1.5})
    assert "timings" not in json.loads(healthcheck.ingest_payload(payload, result))
    assert json.loads(healthcheck.ingest_payload(payload, result, extensions=True))["timings"] == {"connect": 1.5}
