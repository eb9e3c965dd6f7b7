"""`peekaping-worker doctor` as a process against a private redis-server: a good ACL user, a user without
scripting rights, a wrong password and Redis down each fail the right line with the right exit status;
queue sizes, live servers and the host lines (ICMP, CA bundle, file descriptors) read what is there."""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
from urllib.parse import quote

import pytest

import asynq_protocol as aq
from conftest import ROOT, RedisServer, free_port
from helpers import enqueue_healthcheck, healthcheck_payload
from redis_checks import acl_rule

ADMIN_PASSWORD = "admin-pw-5d1e"
WORKER_PASSWORD = "worker-pw-a9c4"
NOSCRIPT_PASSWORD = "noscript-pw-77b0"
SECRETS = (ADMIN_PASSWORD, WORKER_PASSWORD, NOSCRIPT_PASSWORD, "wrong-pw-0c3f")
LEVELS = ("OK", "WARN", "FAIL")


@pytest.fixture(scope="module")
def server():
    import shutil

    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is required under CI")
        pytest.skip("redis-server is not installed")
    redis_server = RedisServer()
    redis_server.start()
    import redis as sync_redis

    admin = sync_redis.Redis(port=redis_server.port, protocol=2)
    admin.execute_command("ACL", "SETUSER", "admin", "on", f">{ADMIN_PASSWORD}", "~*", "&*", "+@all")
    rule = acl_rule({"healthcheck": 5}, user="worker", password=WORKER_PASSWORD).split()
    admin.execute_command(*rule)
    no_scripts = [w for w in acl_rule({"healthcheck": 5}, user="noscript", password=NOSCRIPT_PASSWORD).split()
                  if w not in ("+eval", "+evalsha", "+script|load")]
    admin.execute_command(*no_scripts)
    admin.execute_command("CONFIG", "SET", "requirepass", ADMIN_PASSWORD)  # the default user needs a password too
    admin.close()
    yield redis_server
    redis_server.cleanup()


def url(redis_server: RedisServer, user: str, password: str) -> str:
    return f"redis://{quote(user)}:{quote(password)}@127.0.0.1:{redis_server.port}/0"


def doctor(*args: str, limit_files: int | None = None, **env: str) -> tuple[int, dict[str, list[tuple[str, str]]], str]:
    """(exit status, {line name: [(level, text)]}, the whole output)."""
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("REDIS_", "PEEKAPING_", "SSL_CERT")) and k not in ("METRICS_ADDR", "QUEUE_CONCURRENCY")}
    full_env.update(env)

    def lower_limit() -> None:
        if limit_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit_files, limit_files))

    proc = subprocess.run([sys.executable, str(ROOT / "worker.py"), "doctor", *args], env=full_env,
                          capture_output=True, text=True, timeout=60, preexec_fn=lower_limit)
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output
    assert not [s for s in SECRETS if s in output], output
    lines: dict[str, list[tuple[str, str]]] = {}
    for line in proc.stdout.splitlines():
        level, _, rest = line.partition(" ")
        assert level in LEVELS, line
        name, _, text = rest.strip().partition(": ")
        lines.setdefault(name, []).append((level, text))
    return proc.returncode, lines, output


def failing(lines: dict) -> list[str]:
    return [name for name, entries in lines.items() if any(level == "FAIL" for level, _ in entries)]


def test_good_user_passes_every_line(server):
    code, lines, output = doctor("--redis-url", url(server, "worker", WORKER_PASSWORD), "--queues", "healthcheck:5")
    assert code == 0 and failing(lines) == [], output
    assert lines["redis"][0][0] == "OK" and "worker:***@" in lines["redis"][0][1]
    assert lines["authentication"] == [("OK", "accepted as user worker")]
    [(level, text)] = lines["ACL permissions"]
    assert level == "OK" and "scripts load" in text and "queues healthcheck" in text, output
    assert lines["server version"][0][0] == "OK" and lines["server version"][0][1].startswith("Redis ")
    assert lines["clock skew"][0][0] == "OK"
    # The minimal rule has no LLEN/ZCARD: sizes are not shown, and that is not a problem.
    assert lines["queues"][0][0] == "OK" and "may not run LLEN" in lines["queues"][0][1]
    for name in ("other workers", "ICMP", "CA bundle", "DNS resolver", "file descriptors"):
        assert name in lines, output
    assert list(lines)[:4] == ["redis", "authentication", "ACL permissions", "server version"]


def test_user_without_scripting_rights_fails_the_acl_line(server):
    code, lines, output = doctor("--redis-url", url(server, "noscript", NOSCRIPT_PASSWORD), "--queues", "healthcheck:5")
    assert code == 1
    assert failing(lines) == ["ACL permissions"], output
    [(_, text)] = lines["ACL permissions"]
    assert "script|load" in text and "NOPERM" in text and "--acl-rule" in text
    assert lines["authentication"] == [("OK", "accepted as user noscript")]


def test_wrong_password_fails_the_authentication_line(server):
    code, lines, output = doctor("--redis-url", url(server, "worker", "wrong-pw-0c3f"), "--queues", "healthcheck:5")
    assert code == 1
    assert failing(lines) == ["authentication"], output
    assert lines["redis"][0][0] == "OK"
    assert "WRONGPASS" in lines["authentication"][0][1]
    assert "ACL permissions" not in lines and "ICMP" in lines  # Redis lines stop; host lines still run
    code, lines, output = doctor(REDIS_HOST="127.0.0.1", REDIS_PORT=str(server.port))  # no password at all
    assert code == 1 and failing(lines) == ["authentication"] and "NOAUTH" in lines["authentication"][0][1], output


def test_redis_down_fails_the_redis_line():
    port = free_port()
    code, lines, output = doctor("--redis-url", f"redis://:{WORKER_PASSWORD}@127.0.0.1:{port}/0")
    assert code == 1
    assert failing(lines) == ["redis"], output
    assert f"127.0.0.1:{port}" in lines["redis"][0][1] and "refused" in lines["redis"][0][1].lower()
    assert {"ICMP", "CA bundle", "DNS resolver", "file descriptors"} <= set(lines)


def test_queue_sizes_paused_queue_unserved_queues_and_live_servers(server):
    async def prepare() -> None:
        import redis.asyncio as aioredis

        redis = aioredis.Redis(port=server.port, username="admin", password=ADMIN_PASSWORD, protocol=2)
        broker = aq.Broker(redis)
        try:
            await redis.delete("asynq:{healthcheck}:pending", "asynq:{low}:paused")
            client = aq.Client(broker)
            for i in range(3):
                await enqueue_healthcheck(client, healthcheck_payload("tcp", {"host": "127.0.0.1", "port": 1},
                                                                      monitor_id=f"m{i}"), monitor_id=f"m{i}")
            await redis.set("asynq:{low}:paused", 1)
            info = aq.ServerInfo(host="edge-7", pid=4242, server_id="s-1", concurrency=32, queues={"healthcheck": 5},
                                 strict_priority=True, status="active", active_worker_count=2)
            await broker.write_server_state(info, [])
        finally:
            await broker.close()
            await redis.aclose()

    asyncio.run(prepare())
    code, lines, output = doctor("--redis-url", url(server, "admin", ADMIN_PASSWORD), "--queues", "healthcheck:5,low:1")
    assert code == 0, output
    assert lines["queue healthcheck"] == [("OK", "3 pending, 0 active, 0 scheduled, 0 retry, 0 archived (priority 5)")]
    assert lines["queue low"][0][0] == "WARN" and "paused" in lines["queue low"][0][1]
    assert lines["queue ingester"][0][0] == "OK"
    [(level, text)] = lines["other workers"]
    assert level == "OK" and "1 alive: edge-7 pid 4242 (active, 2/32 busy, healthcheck:5)" in text

    # The minimal rule for healthcheck only: the default queues it may not use are warned about, not failed.
    code, lines, output = doctor("--redis-url", url(server, "worker", WORKER_PASSWORD))
    assert code == 0, output
    warnings = [text for level, text in lines["ACL permissions"] if level == "WARN"]
    assert len(warnings) == 3 and all("will not be served" in w for w in warnings), output


def test_host_lines_ping_without_program_empty_ca_bundle_and_few_file_descriptors(server, tmp_path):
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    code, lines, output = doctor("--redis-url", url(server, "worker", WORKER_PASSWORD), "--queues", "healthcheck:5",
                                 "--concurrency", "500", limit_files=200, PATH=str(tmp_path),
                                 PEEKAPING_PING_MODE="command", SSL_CERT_FILE=str(empty),
                                 SSL_CERT_DIR=str(tmp_path / "none"))
    assert code == 1
    assert sorted(failing(lines)) == ["ICMP", "file descriptors"], output
    assert "no ping program" in lines["ICMP"][0][1]
    assert lines["CA bundle"][0][0] == "WARN" and "holds no CA certificate" in lines["CA bundle"][0][1]
    assert "of 200 free" in lines["file descriptors"][0][1] and "500 checks" in lines["file descriptors"][0][1]


def test_bad_configuration_is_one_failing_line():
    code, lines, output = doctor("--redis-url", "http://nope")
    assert code == 1 and failing(lines) == ["configuration"] and "--redis-url" in lines["configuration"][0][1], output
