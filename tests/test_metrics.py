"""--metrics-addr against real worker processes and a private redis-server: /metrics parsed with
prometheus_client's own parsers while checks run, counters that match what the tasks did, /ready
following Redis away and back, the endpoint under bad requests, and no prometheus_client when off."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

import pytest

import asynq_protocol as aq
from conftest import ROOT, RedisServer, free_port
from helpers import enqueue_healthcheck, healthcheck_payload, ingest_tasks, wait_until

from prometheus_client import parser as prometheus_parser  # noqa: E402  (a runtime dependency)


def need_redis() -> None:
    import shutil

    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is required under CI")
        pytest.skip("redis-server is not installed")


class WorkerProcess:
    """`worker.py --metrics-addr 127.0.0.1:<port>` with its log in a file (a pipe nobody reads could fill)."""

    def __init__(self, url: str, *args: str) -> None:
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="pw-metrics-", suffix=".log")
        env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_") and k != "METRICS_ADDR"}
        env.update(MODE="prod", LOG_LEVEL="info")
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--redis-url", url,
                                      "--metrics-addr", f"127.0.0.1:{self.port}", *args],
                                     env=env, stdout=subprocess.DEVNULL, stderr=self.log)

    def text(self) -> str:
        if self.log.closed:
            return self.output
        with open(self.log.name) as fh:
            return fh.read()

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.text().splitlines() if line.strip()]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.output = self.text()
            self.log.close()

    def get(self, path: str, accept: str = "") -> tuple[int, str, str]:
        """(status, content type, body) of GET path."""
        assert self.proc.poll() is None, self.text()[-3000:]
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers={"Accept": accept} if accept else {})
        try:
            with urllib.request.urlopen(request, timeout=5) as reply:
                return reply.status, reply.headers["Content-Type"], reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()
        except (urllib.error.URLError, ConnectionError) as exc:  # not listening yet
            return 0, "", str(exc)

    def scrape(self) -> dict[tuple[str, tuple], float]:
        """Every sample of /metrics, parsed by prometheus_client: {(name, sorted labels): value}."""
        status, content_type, body = self.get("/metrics")
        assert status == 200 and content_type.startswith("text/plain; version=0.0.4"), (status, content_type)
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in prometheus_parser.text_string_to_metric_families(body) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def until_ready(worker: WorkerProcess, timeout: float = 20) -> None:
    async def ready() -> bool:
        return worker.get("/ready")[0] == 200

    await wait_until(ready, timeout, 0.1)


@pytest.fixture(scope="module")
def module_redis():
    need_redis()
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def worker(module_redis):
    process = WorkerProcess(module_redis.url, "--concurrency", "64", "--queues", "healthcheck:5")
    yield process
    assert process.stop() == 0


@pytest.fixture
async def producer(module_redis):
    import redis.asyncio as aioredis

    redis = aioredis.Redis.from_url(module_redis.url, protocol=2)
    await redis.flushdb()
    broker = aq.Broker(redis)
    yield redis, aq.Client(broker)
    await broker.close()
    await redis.aclose()


async def test_counters_move_as_the_tasks_did_and_each_task_gives_one_result(worker, producer, hanging_port,
                                                                             open_port, closed_port):
    redis, client = producer
    await until_ready(worker)
    before = worker.scrape()
    assert value(before, "peekaping_worker_concurrency_limit") == 64
    assert value(before, "peekaping_worker_queue_priority", queue="healthcheck") == 5

    # Checks that hang until their 4 s timeout (3.5 s budget) are in flight while /metrics is scraped.
    for i in range(8):
        await enqueue_healthcheck(client, healthcheck_payload("tcp", {"host": "127.0.0.1", "port": hanging_port},
                                                              monitor_id=f"hang-{i}", timeout=4),
                                  monitor_id=f"hang-{i}", timeout=4)

    async def eight_in_flight() -> bool:
        return value(worker.scrape(), "peekaping_worker_checks_in_flight") == 8

    await wait_until(eight_in_flight, 10, 0.05)

    expected = {f"hang-{i}": 0 for i in range(8)}
    for i in range(100):
        expected[f"up-{i}"] = 1
        await enqueue_healthcheck(client, healthcheck_payload("tcp", {"host": "127.0.0.1", "port": open_port},
                                                              monitor_id=f"up-{i}", timeout=5), monitor_id=f"up-{i}")
    for i in range(20):
        expected[f"down-{i}"] = 0
        await enqueue_healthcheck(client, healthcheck_payload("tcp", {"host": "127.0.0.1", "port": closed_port},
                                                              monitor_id=f"down-{i}", timeout=5), monitor_id=f"down-{i}")
    for i in range(3):
        expected[f"maint-{i}"] = 3
        await enqueue_healthcheck(client, healthcheck_payload("tcp", {"host": "127.0.0.1", "port": open_port},
                                                              monitor_id=f"maint-{i}", is_under_maintenance=True),
                                  monitor_id=f"maint-{i}")
    for i in range(5):  # unknown type: the task fails and, with no retry left, is archived
        await enqueue_healthcheck(client, healthcheck_payload("no-such-type", {}, monitor_id=f"bad-{i}"),
                                  monitor_id=f"bad-{i}")
    for i in range(2):  # scheduled long ago: skipped as stale, the task succeeds without a result
        await enqueue_healthcheck(client, healthcheck_payload("tcp", {"host": "127.0.0.1", "port": open_port},
                                                              monitor_id=f"stale-{i}",
                                                              scheduled_at="2020-01-01T00:00:00Z"),
                                  monitor_id=f"stale-{i}")

    async def all_done() -> bool:
        samples = worker.scrape()
        return (value(samples, "peekaping_worker_tasks_succeeded_total") - value(before, "peekaping_worker_tasks_succeeded_total") == 133
                and value(samples, "peekaping_worker_tasks_failed_total") - value(before, "peekaping_worker_tasks_failed_total") == 5
                and value(samples, "peekaping_worker_checks_in_flight") == 0)

    await wait_until(all_done, 30, 0.2)
    after = worker.scrape()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("peekaping_worker_checks_total", type="tcp", status="up") == 100
    assert moved("peekaping_worker_checks_total", type="tcp", status="down") == 28
    assert moved("peekaping_worker_checks_total", type="tcp", status="maintenance") == 3
    assert moved("peekaping_worker_checks_total", type="tcp", status="pending") == 0
    assert moved("peekaping_worker_check_duration_seconds_count", type="tcp") == 128  # maintenance runs nothing
    assert moved("peekaping_worker_check_duration_seconds_bucket", type="tcp", le="+Inf") == 128
    assert moved("peekaping_worker_check_duration_seconds_bucket", type="tcp", le="2.5") == 120  # all but the hung (3.5 s)
    assert moved("peekaping_worker_check_duration_seconds_sum", type="tcp") >= 8 * 3.0
    assert moved("peekaping_worker_tasks_dequeued_total") == 138
    assert moved("peekaping_worker_tasks_archived_total") == 5
    assert moved("peekaping_worker_tasks_retried_total") == 0
    assert moved("peekaping_worker_tasks_requeued_total") == 0
    assert moved("peekaping_worker_stale_checks_skipped_total") == 2
    assert value(after, "peekaping_worker_results_waiting") == 0
    assert value(after, "peekaping_worker_ready") == 1
    assert moved("peekaping_worker_redis_roundtrip_seconds_count", op="dequeue") >= 1
    assert value(after, "peekaping_worker_redis_roundtrip_seconds_count", op="heartbeat") >= 1
    assert value(after, "peekaping_worker_redis_errors_total") == 0
    assert value(after, "process_resident_memory_bytes") > 10e6 and value(after, "process_cpu_seconds_total") > 0
    [info] = [labels for (name, labels) in after if name == "peekaping_worker_build_info"]
    info = dict(info)
    from executors import VERSION
    assert info["version"] == VERSION and "tcp" in info["executors"].split(",")

    results = await ingest_tasks(redis)
    by_monitor: dict[str, list[int]] = {}
    for msg, body in results:
        assert msg.type == "monitor:ingest"
        by_monitor.setdefault(body["monitor_id"], []).append(body["status"])
    assert {m: statuses for m, statuses in by_monitor.items()} == {m: [s] for m, s in expected.items()}
    assert await redis.zcard("asynq:{healthcheck}:archived") == 5


async def test_ready_follows_redis_away_and_back_and_live_answers_throughout(tmp_path):
    need_redis()
    redis_server = RedisServer()
    worker = None
    try:
        worker = WorkerProcess(redis_server.url, "--queues", "healthcheck:5")  # Redis not started yet

        async def says(prefix: str) -> bool:
            status, _, body = worker.get("/ready")
            return status == 503 and body.startswith(prefix) and body.count("\n") == 1

        await wait_until(lambda: says("connecting to Redis"), 10, 0.1)
        assert worker.get("/live")[:3:2] == (200, "live\n")
        redis_server.start()
        await until_ready(worker, 20)
        assert worker.get("/ready")[2] == "ready\n"

        redis_server.stop()
        await wait_until(lambda: says("Redis unreachable: ") or says("registration in asynq:servers expired"), 20, 0.1)
        assert worker.get("/live")[0] == 200
        outage = worker.scrape()
        assert value(outage, "peekaping_worker_ready") == 0
        assert value(outage, "peekaping_worker_redis_errors_total") >= 1

        redis_server.start()
        await until_ready(worker, 20)
        back = worker.scrape()
        assert value(back, "peekaping_worker_redis_reconnects_total") >= 1
        assert value(back, "peekaping_worker_ready") == 1
    finally:
        code = worker.stop() if worker else 0
        redis_server.cleanup()
    assert code == 0
    messages = [line["msg"] for line in worker.lines()]
    assert "metrics endpoint listening" in messages and "Redis reachable again" in messages


async def _exchange(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Send raw bytes, read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


async def test_endpoint_answers_bad_requests_briefly_and_keeps_serving(worker):
    await until_ready(worker)
    assert (await _exchange(worker.port, b"garbage\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
    post = await _exchange(worker.port, b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
    assert post.startswith(b"HTTP/1.1 405 ") and b"Allow: GET, HEAD" in post
    assert (await _exchange(worker.port, b"GET /nope HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.1 404 ")
    head = await _exchange(worker.port, b"HEAD /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")  # headers only
    two = await _exchange(worker.port, b"GET /live HTTP/1.1\r\n\r\nGET /ready HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert two.count(b"HTTP/1.1 200 OK") == 2 and two.endswith(b"ready\n")  # keep-alive
    oversized = await _exchange(worker.port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 40000 + b"\r\n\r\n")
    assert b"200 OK" not in oversized

    # Connections beyond the limit are closed at once; those within it are served.
    idle = [socket.create_connection(("127.0.0.1", worker.port)) for _ in range(16)]
    try:
        await asyncio.sleep(0.2)
        assert await _exchange(worker.port, b"GET /live HTTP/1.1\r\n\r\n") == b""
    finally:
        for s in idle:
            s.close()

    async def serving() -> bool:
        return worker.get("/live")[0] == 200

    await wait_until(serving, 5, 0.1)
    # OpenMetrics when asked for, parsed by prometheus_client's OpenMetrics parser.
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    status, content_type, body = worker.get("/metrics", accept="application/openmetrics-text; version=1.0.0")
    assert status == 200 and content_type.startswith("application/openmetrics-text")
    names = {family.name for family in text_string_to_metric_families(body)}
    assert {"peekaping_worker_checks", "peekaping_worker_tasks_dequeued", "peekaping_worker_build_info"} <= names


def test_bad_or_busy_metrics_address_exits_2_with_one_line(module_redis):
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_") and k != "METRICS_ADDR"}
    run = [sys.executable, str(ROOT / "worker.py"), "--redis-url", module_redis.url]
    for bad in ("9780", "[::1:9780", "localhost:99999", "bad host:80"):
        proc = subprocess.run([*run, "--metrics-addr", bad], env=env, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2 and proc.stderr.startswith("peekaping-worker: invalid configuration: --metrics-addr: "), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    proc = subprocess.run(run, env={**env, "METRICS_ADDR": "nope"}, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "--metrics-addr: expected host:port" in proc.stderr, proc.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([*run, "--metrics-addr", f"127.0.0.1:{port}"], env={**env, "MODE": "dev"},
                              capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert f"--metrics-addr: cannot listen on 127.0.0.1:{port}: " in proc.stderr and "Traceback" not in proc.stderr


async def test_worker_without_metrics_does_not_import_prometheus_client(module_redis, tmp_path):
    from test_idle_imports import WRAPPER, _modules

    trigger, out = str(tmp_path / "trigger"), str(tmp_path / "modules")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_") and k != "METRICS_ADDR"}
    env.update(MODE="prod")
    proc = subprocess.Popen([sys.executable, "-c", WRAPPER, trigger, out, "--redis-url", module_redis.url,
                             "--queues", "metrics-off:1"], cwd=str(ROOT), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        import redis.asyncio as aioredis

        redis = aioredis.Redis.from_url(module_redis.url, protocol=2)
        try:
            async def registered() -> bool:
                assert proc.poll() is None, proc.communicate()[1][-2000:]
                keys = await redis.zrange("asynq:servers", 0, -1)
                return any(str(proc.pid).encode() in key for key in keys)

            await wait_until(registered, 20)
        finally:
            await redis.aclose()
        modules = await _modules(trigger, out, proc)
        assert "metrics" in modules  # the plain counters
        assert not [m for m in modules if m.split(".")[0] == "prometheus_client"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def test_stats_counts_by_type_status_and_bucket():
    from metrics import OTHER_TYPE, Histogram, Stats

    stats = Stats(["tcp", "http"])
    for seconds in (0.001, 0.005, 0.3, 70.0):
        stats.check_done("tcp", 1, seconds)
    stats.check_done("tcp", 0, None)
    stats.check_done("made-up-by-a-payload", 3, None)  # maintenance of any type name: one shared label
    stats.check_done("another-one", 3, None)
    assert sorted(stats.checks) == [OTHER_TYPE, "tcp"]
    assert stats.checks["tcp"].by_status == [1, 4, 0, 0] and stats.checks[OTHER_TYPE].by_status == [0, 0, 0, 2]
    cumulative = dict(stats.checks["tcp"].durations.cumulative())
    assert cumulative["0.005"] == 2 and cumulative["0.25"] == 2 and cumulative["0.5"] == 3
    assert cumulative["60.0"] == 3 and cumulative["+Inf"] == 4
    assert abs(stats.checks["tcp"].durations.total - 70.306) < 1e-9
    h = Histogram((1.0, 2.0))
    h.observe(1.0)  # a value on a bound counts in that bucket (le = less or equal)
    assert h.cumulative() == [("1.0", 1), ("2.0", 1), ("+Inf", 1)]


def test_listen_address_forms():
    from metrics import listen_address

    assert listen_address("127.0.0.1:9780") == ("127.0.0.1", 9780)
    assert listen_address(":9780") == ("", 9780)
    assert listen_address("[::1]:9780") == ("::1", 9780)
    assert listen_address("metrics.local:1") == ("metrics.local", 1)
    for bad in ("", "9780", "::1:9780", "[nope]:1", "host:0", "host:x", "a b:1"):
        with pytest.raises(ValueError):
            listen_address(bad)
