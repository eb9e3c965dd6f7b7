"""The worker as a process: signals, crashes, Redis outages, configuration errors, logs."""

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
from conftest import ROOT
from helpers import enqueue_healthcheck, healthcheck_payload, ingest_tasks, task_message, wait_until

WORKER = [sys.executable, str(ROOT / "worker.py")]


def start_worker(url: str, *args: str, **env: str) -> subprocess.Popen:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    full_env.update({"MODE": "prod", "LOG_LEVEL": "info"}, **env)
    return subprocess.Popen([*WORKER, "--redis-url", url, *args], env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"worker did not exit in {timeout} s:\n{err}")
    return proc.returncode, err


@pytest.fixture
async def client(redis):
    broker = aq.Broker(redis)
    yield aq.Client(broker)
    await broker.close()


async def active_ids(redis, queue: str = "healthcheck") -> list[bytes]:
    return await redis.lrange(f"asynq:{{{queue}}}:active", 0, -1)


async def test_sigterm_requeues_unfinished_checks_and_clears_server_keys(redis, redis_server, client, hanging_port, open_port):
    await enqueue_healthcheck(client, healthcheck_payload("tcp", {"host": "127.0.0.1", "port": hanging_port}, timeout=60),
                              monitor_id="slow", timeout=60)
    proc = start_worker(redis_server.url, "--shutdown-timeout", "1")
    try:
        await wait_until(lambda: _has(active_ids(redis)), 10)
        await enqueue_healthcheck(client, healthcheck_payload("tcp", {"host": "127.0.0.1", "port": open_port}), monitor_id="fast")
        await wait_until(lambda: redis.exists("asynq:{ingester}:pending"), 10)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert await redis.lrange("asynq:{healthcheck}:pending", -1, -1) == [b"healthcheck:slow"]
    assert await redis.hget(aq.task_key("healthcheck", "healthcheck:slow"), "state") == b"pending"
    assert not await active_ids(redis) and not await redis.exists("asynq:{healthcheck}:lease")
    assert not await redis.keys("asynq:servers:*") and not await redis.keys("asynq:workers:*")
    assert not await redis.zcard("asynq:servers") and not await redis.zcard("asynq:workers")
    assert [r["monitor_id"] for _, r in await ingest_tasks(redis)] == ["mon-1"]
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert any(line["msg"] == "shutting down" for line in lines) and all(line["svc"] == "peekaping:worker" for line in lines)


async def test_sigterm_lets_short_checks_finish(redis, redis_server, client, hanging_port):
    await enqueue_healthcheck(client, healthcheck_payload("tcp", {"host": "127.0.0.1", "port": hanging_port}, timeout=2),
                              timeout=2)
    proc = start_worker(redis_server.url)
    try:
        await wait_until(lambda: _has(active_ids(redis)), 10)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    [(_, result)] = await ingest_tasks(redis)
    assert result["status"] == 0 and "i/o timeout" in result["message"]
    assert not await redis.exists("asynq:{healthcheck}:pending", "asynq:{healthcheck}:active")


async def _has(aw) -> bool:
    return bool(await aw)


async def test_kill_9_task_is_recovered_by_another_worker_after_lease_expiry(redis, redis_server, client, hanging_port):
    await enqueue_healthcheck(client, healthcheck_payload("tcp", {"host": "127.0.0.1", "port": hanging_port}, timeout=120),
                              timeout=120)
    first = start_worker(redis_server.url)
    await wait_until(lambda: _has(active_ids(redis)), 10)
    await asyncio.sleep(5.5)  # at least one heartbeat lists the task
    first.kill()
    first.communicate()
    killed_at = time.time()
    second = start_worker(redis_server.url)
    try:
        await asyncio.sleep(3)
        assert await active_ids(redis) == [b"healthcheck:mon-1"], "a valid lease must not be stolen"
        await wait_until(lambda: redis.exists("asynq:{healthcheck}:archived"), 60, interval=0.2)
        recovered_after = time.time() - killed_at
    finally:
        code, err = stop(second)
    assert code == 0, err
    msg = await task_message(redis, "healthcheck", "healthcheck:mon-1")
    assert msg.error_msg == "asynq: task lease expired"
    assert not await active_ids(redis) and not await redis.exists("asynq:{healthcheck}:lease")
    print(f"task recovered by the second worker {recovered_after:.1f} s after kill -9")
    assert 24 < recovered_after < 55, recovered_after


async def test_redis_outage_is_survived_and_work_continues(redis, redis_server, client, open_port):
    proc = start_worker(redis_server.url)
    try:
        await enqueue_healthcheck(client, healthcheck_payload("tcp", {"host": "127.0.0.1", "port": open_port}, monitor_id="before"),
                                  monitor_id="before")
        await wait_until(lambda: redis.exists("asynq:{ingester}:pending"), 10)
        redis_server.stop()
        await asyncio.sleep(10)
        assert proc.poll() is None, "worker exited while Redis was down"
        redis_server.start()
        await redis.connection_pool.disconnect()
        await enqueue_healthcheck(client, healthcheck_payload("tcp", {"host": "127.0.0.1", "port": open_port}, monitor_id="after"),
                                  monitor_id="after")
        await wait_until(lambda: _count(redis, 2), 20, interval=0.2)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert sorted(r["monitor_id"] for _, r in await ingest_tasks(redis)) == ["after", "before"]
    assert not await active_ids(redis)
    assert any("failed" in json.loads(line)["msg"] or "unreachable" in json.loads(line)["msg"]
               for line in err.splitlines() if line.strip())


async def _count(redis, n: int) -> bool:
    return await redis.llen("asynq:{ingester}:pending") >= n


def run_cli(*args: str, env: dict | None = None, timeout: float = 20) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("REDIS_DB", "REDIS_PORT", "MODE", "QUEUE_CONCURRENCY")}
    full_env.update(env or {})
    return subprocess.run([*WORKER, *args], env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("env, args, setting", [
    ({"REDIS_DB": "16"}, [], "REDIS_DB"),
    ({"MODE": "staging"}, [], "MODE"),
    ({"REDIS_PORT": "abc"}, [], "REDIS_PORT"),
    ({"REDIS_PORT": "0"}, [], "REDIS_PORT"),
    ({"LOG_LEVEL": "loud"}, [], "LOG_LEVEL"),
    ({"QUEUE_CONCURRENCY": "many"}, [], "QUEUE_CONCURRENCY"),
    ({}, ["--concurrency", "0"], "--concurrency"),
    ({}, ["--queues", "healthcheck"], "--queues"),
    ({}, ["--queues", "a:0"], "--queues"),
    ({}, ["--redis-url", "http://x"], "--redis-url"),
    ({"PEEKAPING_PING_MODE": "icmp"}, [], "PEEKAPING_PING_MODE"),
])
def test_bad_setting_exits_2_naming_it(env, args, setting):
    proc = run_cli(*args, env=env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and setting in lines[0], proc.stderr


def test_version_and_help_answer_without_redis():
    version = run_cli("--version")
    assert version.returncode == 0 and "peekaping-worker" in version.stdout and "tcp" in version.stdout
    forced = run_cli("--version", env={"PEEKAPING_PING_MODE": "command"})
    assert "ping: command (PEEKAPING_PING_MODE=command)" in forced.stdout.splitlines()
    helptext = run_cli("--help")
    assert helptext.returncode == 0 and "--concurrency" in helptext.stdout and "--redis-url" in helptext.stdout


def test_defaults_match_the_go_worker():
    import argparse

    import worker

    s = worker.load_settings({}, worker.build_parser().parse_args([]))
    assert (s.redis_host, s.redis_port, s.redis_db, s.concurrency) == ("redis", 6379, 0, 128)
    assert s.queues == {"critical": 6, "healthcheck": 5, "default": 3, "low": 1} and s.strict_priority
    assert (s.mode, s.log_level, s.service_name, s.shutdown_timeout) == ("dev", "info", "peekaping:worker", 8.0)
    s = worker.load_settings({"QUEUE_CONCURRENCY": "0", "REDIS_DB": ""}, argparse.Namespace(
        concurrency=32, redis_url=None, queues="a:2,b:1", strict_priority=False, shutdown_timeout=3))
    assert (s.concurrency, s.queues, s.strict_priority, s.shutdown_timeout) == (32, {"a": 2, "b": 1}, False, 3)


def test_redis_password_never_reaches_the_logs(closed_port):
    secret = "s3cr3t-pass-word"
    proc = subprocess.Popen([*WORKER, "--redis-url", f"redis://user:{secret}@127.0.0.1:{closed_port}/0"],
                            env={**os.environ, "MODE": "prod", "LOG_LEVEL": "debug", "REDIS_PASSWORD": secret},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.5)
    code, err = stop(proc)
    assert code == 0
    assert "unreachable" in err and "***@127.0.0.1" in err
    assert secret not in err


def test_dev_mode_logs_are_readable_lines(closed_port):
    proc = subprocess.Popen([*WORKER, "--redis-url", f"redis://127.0.0.1:{closed_port}/0"],
                            env={**os.environ, "MODE": "dev"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    code, err = stop(proc)
    first = err.splitlines()[0]
    assert code == 0 and "INFO" in first and "connecting to Redis" in first and not first.startswith("{")


def test_start_path_imports_no_third_party_and_executors_load_on_demand():
    code = ("import sys, worker\n"
            "assert not {'redis', 'google.protobuf', 'asynq_protocol'} & set(sys.modules), sorted(sys.modules)\n"
            "import asyncio; asyncio.run(worker.load_executor('tcp'))\n"
            "loaded = sorted(m for m in sys.modules if m.startswith('executors.') and not m.startswith('executors._'))\n"
            "assert loaded == ['executors.tcp'], loaded\n"  # shared private plumbing (timing, dialers) may load
            "assert 'executors._kit.http1' not in sys.modules, 'tcp loaded the HTTP client'\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


async def test_unix_socket_redis_url_works(tmp_path, open_port):
    import shutil

    import redis.asyncio as aioredis

    sock = tmp_path / "redis.sock"
    server = subprocess.Popen([shutil.which("redis-server"), "--port", "0", "--unixsocket", str(sock), "--save", "",
                               "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        redis = aioredis.Redis(unix_socket_path=str(sock), db=3, protocol=2)
        await assert_worker_checks_through(redis, f"unix://{sock}?db=3", open_port)
        await redis.aclose()
    finally:
        server.terminate()
        server.wait()


async def assert_worker_checks_through(redis, url: str, target_port: int) -> None:
    """Enqueue one tcp check with `redis`, run the worker against `url`, expect one UP result."""
    await wait_until(lambda: _ping(redis), 10)
    client = aq.Client(aq.Broker(redis))
    await enqueue_healthcheck(client, healthcheck_payload("tcp", {"host": "127.0.0.1", "port": target_port}))
    proc = start_worker(url)
    try:
        await wait_until(lambda: redis.exists("asynq:{ingester}:pending"), 10)
    except AssertionError:
        raise AssertionError(stop(proc)[1])
    code, err = stop(proc)
    assert code == 0, err
    assert [r["status"] for _, r in await ingest_tasks(redis)] == [1]
    await client.broker.close()


async def _ping(redis) -> bool:
    try:
        return await redis.ping()
    except Exception:
        return False


def _tls_files(directory) -> tuple[str, str, str]:
    """A throwaway CA and a server certificate for 127.0.0.1, written as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = [str(directory / name) for name in ("ca.pem", "cert.pem", "key.pem")]
    for path, data in zip(paths, (ca.public_bytes(serialization.Encoding.PEM), cert.public_bytes(serialization.Encoding.PEM),
                                  key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))):
        with open(path, "wb") as fh:
            fh.write(data)
    return paths[0], paths[1], paths[2]


async def test_tls_redis_url_verifies_the_server_and_works(tmp_path, open_port):
    import shutil

    import redis.asyncio as aioredis

    from conftest import free_port

    ca, cert, key = _tls_files(tmp_path)
    port = free_port()
    server = subprocess.Popen([shutil.which("redis-server"), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                               "--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", ca,
                               "--tls-auth-clients", "no", "--save", "", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        redis = aioredis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=ca, protocol=2)
        await assert_worker_checks_through(redis, f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}", open_port)
        untrusted = start_worker(f"rediss://127.0.0.1:{port}/0")  # system CAs do not know our test CA
        time.sleep(2)
        code, err = stop(untrusted)
        assert code == 0 and "certificate verify failed" in err
        await redis.aclose()
    finally:
        server.terminate()
        server.wait()
