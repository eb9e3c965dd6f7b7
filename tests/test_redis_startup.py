"""Redis credentials and ACL permissions at start-up and during a run, against a private redis-server:
what retrying cannot fix ends the worker with one line (exit 2); a worker under the minimal ACL rule
runs checks end to end; no log line ever holds the password."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from urllib.parse import quote

import pytest

import asynq_protocol as aq
from conftest import ROOT
from helpers import enqueue_healthcheck, healthcheck_payload, ingest_tasks, wait_until
from redis_checks import acl_rule

ADMIN_PASSWORD = "admin-pw-7f3c"


def start(url: str, *args: str, mode: str = "prod", level: str = "info", **env: str) -> subprocess.Popen:
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith("REDIS_") and k not in ("MODE", "LOG_LEVEL", "QUEUE_CONCURRENCY")}
    full_env.update(MODE=mode, LOG_LEVEL=level, **env)
    return subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--redis-url", url, *args], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 30) -> tuple[int, str]:
    """SIGTERM (if still running) and wait; the exit status and all of stderr."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"worker did not exit within {timeout} s:\n{err}")
    return proc.returncode, err


def exits_at_start(url: str, *args: str, mode: str = "prod") -> tuple[int, str]:
    proc = start(url, *args, mode=mode)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        return finish(proc)[0] + 1000, "worker kept running"
    return proc.returncode, err


def json_lines(err: str) -> list[dict]:
    return [json.loads(line) for line in err.splitlines() if line.strip()]


@pytest.fixture
async def admin(redis_server):
    """A client as an `admin` user with every right, so the default user's password can be changed."""
    import redis.asyncio as aioredis

    bootstrap = aioredis.Redis(port=redis_server.port, protocol=2)
    await bootstrap.execute_command("ACL", "SETUSER", "admin", "on", f">{ADMIN_PASSWORD}", "~*", "&*", "+@all")
    await bootstrap.aclose()
    client = aioredis.Redis(port=redis_server.port, username="admin", password=ADMIN_PASSWORD, protocol=2)
    yield client
    await client.aclose()


async def set_worker_user(admin, rule: str, password: str) -> None:
    words = rule.replace(">CHANGE-ME", f">{password}").split()
    await admin.execute_command("ACL", "DELUSER", words[2])
    await admin.execute_command(*words)


def url(redis_server, user: str = "", password: str = "") -> str:
    auth = f"{quote(user, safe='')}:{quote(password, safe='')}@" if user or password else ""
    return f"redis://{auth}127.0.0.1:{redis_server.port}/0"


# --- fatal at start-up -----------------------------------------------------------------------------

@pytest.mark.parametrize("case, expected", [
    ("wrong password", "WRONGPASS"),
    ("missing password", "NOAUTH"),
    ("password to a server without one", "without any password configured"),
    ("ACL user without scripting", "'script|load'"),
])
async def test_refused_credentials_or_permissions_exit_2_at_start_up_with_one_fatal_line(admin, redis_server,
                                                                                          case, expected):
    secret = "Sup3r-secret-pw"
    if case == "wrong password":
        await admin.config_set("requirepass", secret)
        target = url(redis_server, password="not-the-" + secret)
    elif case == "missing password":
        await admin.config_set("requirepass", secret)
        target = url(redis_server)
    elif case == "password to a server without one":
        target = url(redis_server, password=secret)
    else:
        rule = acl_rule(["healthcheck"]).replace(" +eval ", " ").replace(" +evalsha ", " ").replace(" +script|load", "")
        await set_worker_user(admin, rule, secret)
        target = url(redis_server, "peekaping-worker", secret)
    code, err = exits_at_start(target)
    assert code == 2, err
    lines = json_lines(err)
    fatal = [line for line in lines if line["level"] == "fatal"]
    assert len(fatal) == 1 and expected in fatal[0]["msg"], err
    assert "Traceback" not in err and secret not in err


async def test_acl_user_without_the_ingester_queue_or_server_keys_cannot_start(admin, redis_server):
    """Results go to asynq:{ingester} and heartbeats to asynq:servers/workers: without them the worker
    would run checks whose results are lost, so it refuses to start."""
    for dropped, named in (("~asynq:{ingester}:*", "asynq:{ingester}:"), ("~asynq:workers:*", "asynq:workers:{")):
        await set_worker_user(admin, acl_rule(["healthcheck"]).replace(f" {dropped}", ""), "pw-1")
        code, err = exits_at_start(url(redis_server, "peekaping-worker", "pw-1"))
        [fatal] = [line for line in json_lines(err) if line["level"] == "fatal"]
        assert code == 2 and named in fatal["msg"], err


async def test_acl_user_without_the_cancel_channel_or_any_served_queue_cannot_start(admin, redis_server):
    await set_worker_user(admin, acl_rule(["healthcheck"]).replace(" &asynq:cancel", ""), "pw-1")
    code, err = exits_at_start(url(redis_server, "peekaping-worker", "pw-1"))
    [fatal] = [line for line in json_lines(err) if line["level"] == "fatal"]
    assert code == 2 and "asynq:cancel" in fatal["msg"], err

    await set_worker_user(admin, acl_rule(["healthcheck"]), "pw-1")
    code, err = exits_at_start(url(redis_server, "peekaping-worker", "pw-1"), "--queues", "critical:6,low:1")
    [fatal] = [line for line in json_lines(err) if line["level"] == "fatal"]
    assert code == 2 and "any configured queue (critical,low)" in fatal["msg"], err


# --- the minimal ACL rule ----------------------------------------------------------------------------

async def test_worker_under_the_minimal_acl_rule_serves_its_queue_and_drops_the_others(admin, redis_server,
                                                                                        open_port):
    """The documented rule (`--acl-rule` for the healthcheck queue) is enough for a whole run: dequeue,
    result enqueue, heartbeats, forwarder, janitor, recoverer; the default --queues lose the queues the
    user may not touch, each with a warning, instead of failing every dequeue."""
    rule = subprocess.run([sys.executable, str(ROOT / "worker.py"), "--acl-rule", "--queues", "healthcheck:5"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert rule == acl_rule(["healthcheck"])
    await set_worker_user(admin, rule, "worker-pw")
    await admin.execute_command("ACL", "LOG", "RESET")
    client = aq.Client(aq.Broker(admin))
    await enqueue_healthcheck(client, healthcheck_payload("tcp", {"host": "127.0.0.1", "port": open_port}))
    proc = start(url(redis_server, "peekaping-worker", "worker-pw"))
    try:
        await wait_until(lambda: admin.exists("asynq:{ingester}:pending"), 15)
        await asyncio.sleep(9)  # the forwarder (5 s) and the janitor (8 s) run at least once
        assert await admin.zcard("asynq:servers") == 1
    finally:
        code, err = finish(proc)
        await client.broker.close()
    assert code == 0, err
    assert [r["status"] for _, r in await ingest_tasks(admin)] == [1]
    lines = json_lines(err)
    [started] = [line for line in lines if line["msg"] == "worker started"]
    assert started["queues"] == "healthcheck:5"
    dropped = sorted(line["queue"] for line in lines if line["msg"].startswith("not serving a queue"))
    assert dropped == ["critical", "default", "low"]
    others = [line for line in lines if line["level"] in ("warn", "error", "fatal")
              and not line["msg"].startswith("not serving a queue")]
    assert not others, others
    denied = [e for e in await admin.acl_log(200) if e["username"] == "peekaping-worker"]
    assert denied and all(e["reason"] == "key" and e["object"].startswith(("asynq:{critical}", "asynq:{default}",
                                                                           "asynq:{low}")) for e in denied), denied


async def test_server_keeps_only_the_permitted_queues_in_all_three_queue_attributes(admin, redis_server):
    """queues (heartbeat, recoverer, forwarder, janitor), _names (dequeue keys) and _strict_order
    (dequeue order) must agree, or a dequeue would still name a queue the user may not touch."""
    import redis.asyncio as aioredis

    from helpers import running_server

    await set_worker_user(admin, acl_rule(["healthcheck", "low"]), "pw-2")
    client = aioredis.Redis(port=redis_server.port, username="peekaping-worker", password="pw-2", protocol=2)
    try:
        async with running_server(client, {}) as server:
            await wait_until(lambda: _started(server), 10)
            assert server.queues == {"healthcheck": 5, "low": 1}
            assert [server._names[i] for i in server._strict_order] == ["healthcheck", "low"]
            assert sorted(server._names) == ["healthcheck", "low"]
    finally:
        await client.aclose()


async def _started(server) -> bool:
    return len(server._names) == 2


def test_readme_shows_the_acl_rule_the_worker_prints():
    """The rule is built from the Lua scripts' commands: a script that starts calling a new command
    changes it, and the README must follow, or users copy a rule that fails."""
    assert acl_rule(["healthcheck"]) in (ROOT / "README.md").read_text(encoding="utf-8")


# --- secrets in URLs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["dev", "prod"])
async def test_password_with_url_delimiters_works_percent_encoded_and_never_reaches_the_logs(
        admin, redis_server, open_port, mode):
    """The same secret given percent-encoded in the user info and in `?password=`: the worker runs a
    check with each, and neither the secret nor its encoded form is in any log line (debug level);
    the unencoded forms exit 2 with one line that names the character and quotes no part of the URL."""
    secret = "p@ss/w#rd?x"
    await admin.execute_command("ACL", "SETUSER", "default", "resetpass", f">{secret}")
    encoded = quote(secret, safe="")
    client = aq.Client(aq.Broker(admin))
    seen = []
    for n, target in enumerate((url(redis_server, password=secret),
                                f"redis://127.0.0.1:{redis_server.port}/0?password={encoded}")):
        await enqueue_healthcheck(client, healthcheck_payload("tcp", {"host": "127.0.0.1", "port": open_port},
                                                              monitor_id=f"m{n}"), monitor_id=f"m{n}")
        proc = start(target, mode=mode, level="debug")
        try:
            await wait_until(lambda: _ingested(admin, n + 1), 15)
        finally:
            code, err = finish(proc)
        assert code == 0, err
        seen.append(err)
    await client.broker.close()
    for raw in (f"redis://:{secret}@127.0.0.1:{redis_server.port}/0",
                f"redis://:{secret.replace('#', '')}@127.0.0.1:{redis_server.port}/0",
                f"redis://:{secret.replace('#', '').replace('?', '')}@127.0.0.1:{redis_server.port}/0",
                f"redis://:{secret.replace('@', '%40').replace('/', '')}@127.0.0.1:{redis_server.port}/0"):
        code, err = exits_at_start(raw, mode=mode)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "percent-encode" in err, err
        seen.append(err)
    for err in seen:
        for fragment in (secret, encoded, "w#rd", "ss/w", "p@ss", "rd?x", "w%23rd"):
            assert fragment not in err, (fragment, err)
    assert ":***@127.0.0.1" in seen[0] and "password=***" in seen[1]


async def _ingested(redis, n: int) -> bool:
    return await redis.llen("asynq:{ingester}:pending") >= n


# --- during a run ----------------------------------------------------------------------------------

async def test_password_changed_during_a_run_is_an_error_line_and_retried_until_fixed(admin, redis_server,
                                                                                      open_port):
    await set_worker_user(admin, acl_rule(["healthcheck"]), "first-pw")
    proc = start(url(redis_server, "peekaping-worker", "first-pw"), "--queues", "healthcheck:1")
    try:
        await wait_until(lambda: admin.zcard("asynq:servers"), 10)
        await admin.execute_command("ACL", "SETUSER", "peekaping-worker", "resetpass", ">second-pw")
        await admin.execute_command("CLIENT", "KILL", "USER", "peekaping-worker")
        await asyncio.sleep(4)
        assert proc.poll() is None, "a refused password after start-up must not end the worker"
        await admin.execute_command("ACL", "SETUSER", "peekaping-worker", "resetpass", ">first-pw")
        client = aq.Client(aq.Broker(admin))
        await enqueue_healthcheck(client, healthcheck_payload("tcp", {"host": "127.0.0.1", "port": open_port}))
        await wait_until(lambda: admin.exists("asynq:{ingester}:pending"), 20)
        await client.broker.close()
        await asyncio.sleep(1.5)
    finally:
        code, err = finish(proc)
    assert code == 0, err
    lines = json_lines(err)
    refused = [line for line in lines if line["msg"] == "Redis refuses the worker; retrying"]
    assert len(refused) == 1 and refused[0]["level"] == "error" and "WRONGPASS" in refused[0]["error"], err
    assert [line["level"] for line in lines if line["msg"] == "Redis reachable again"] == ["info"], err


async def test_permission_revoked_during_a_run_is_an_error_line_and_the_worker_keeps_running(admin, redis_server):
    rule = acl_rule(["healthcheck"])
    await set_worker_user(admin, rule, "pw-3")
    proc = start(url(redis_server, "peekaping-worker", "pw-3"), "--queues", "healthcheck:1")
    try:
        await wait_until(lambda: admin.zcard("asynq:servers"), 10)
        await admin.execute_command("ACL", "SETUSER", "peekaping-worker", "resetkeys",
                                    *[w for w in rule.split() if w.startswith("~") and "healthcheck" not in w])
        await asyncio.sleep(12)  # the watch probes permissions every 10 s
        assert proc.poll() is None
        await set_worker_user(admin, rule, "pw-3")
        await asyncio.sleep(2)
    finally:
        code, err = finish(proc)
    assert code == 0, err
    lines = json_lines(err)
    [refused] = [line for line in lines if line["msg"] == "Redis refuses the worker; retrying"]
    assert refused["level"] == "error" and "asynq:{healthcheck}:" in refused["error"], err
    assert len([line for line in lines if line["msg"] == "Redis reachable again"]) == 1, err


async def test_outage_is_logged_once_and_the_return_once_with_its_duration(redis, redis_server):
    proc = start(url(redis_server), "--queues", "healthcheck:1")
    try:
        await wait_until(lambda: redis.zcard("asynq:servers"), 10)
        redis_server.stop()
        await asyncio.sleep(4)
        redis_server.start()
        await asyncio.sleep(3)
    finally:
        code, err = finish(proc)
    assert code == 0, err
    lines = json_lines(err)
    assert len([line for line in lines if line["msg"] == "Redis unreachable; retrying"]) == 1, err
    [back] = [line for line in lines if line["msg"] == "Redis reachable again"]
    assert back["level"] == "info" and 3 <= back["down_s"] <= 7, back


async def test_shutdown_says_how_many_unfinished_checks_were_requeued(admin, redis_server, hanging_port):
    client = aq.Client(aq.Broker(admin))
    for n in range(2):
        await enqueue_healthcheck(client, healthcheck_payload("tcp", {"host": "127.0.0.1", "port": hanging_port},
                                                              monitor_id=f"slow{n}", timeout=60),
                                  monitor_id=f"slow{n}", timeout=60)
    await client.broker.close()
    proc = start(url(redis_server, "admin", ADMIN_PASSWORD), "--shutdown-timeout", "1")
    try:
        await wait_until(lambda: _active(admin, 2), 10)
    finally:
        code, err = finish(proc)
    assert code == 0, err
    [line] = [line for line in json_lines(err) if line["msg"] == "requeued unfinished checks at shutdown"]
    assert line["level"] == "warn" and line["requeued"] == 2 and line["unfinished"] == 2, line
    assert await admin.llen("asynq:{healthcheck}:pending") == 2


async def _active(redis, n: int) -> bool:
    return await redis.llen("asynq:{healthcheck}:active") >= n


async def test_host_clock_far_from_redis_time_is_a_start_up_warning_with_the_offset(redis, caplog):
    """The host clock is passed in, so one host can play a host an hour behind Redis."""
    from redis_checks import check_clock

    with caplog.at_level("WARNING", logger="peekaping.worker"):
        assert abs(await check_clock(redis)) < 1.0
        assert not caplog.records
        offset = await check_clock(redis, clock=lambda: time.time() - 3600)
    assert -3601 < offset < -3599
    [record] = caplog.records
    assert record.levelname == "WARNING" and "3600.0 s behind Redis TIME" in record.getMessage()


async def test_worker_on_a_host_an_hour_behind_warns_at_start_up_with_the_offset(redis, redis_server):
    """tests/skewed_worker.py shifts the worker process's wall clock; Redis TIME is the real one."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    full_env.update(MODE="prod", LOG_LEVEL="info", PEEKAPING_TEST_CLOCK_OFFSET="-3600")
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "skewed_worker.py"), "--redis-url",
                             url(redis_server), "--queues", "healthcheck:1"], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        await wait_until(lambda: redis.zcard("asynq:servers"), 10)
    finally:
        code, err = finish(proc)
    assert code == 0, err
    [line] = [line for line in json_lines(err) if "Redis TIME" in line["msg"]]
    assert line["level"] == "warn" and "behind" in line["msg"] and -3601 < line["offset_s"] < -3599, line
