"""The cost of --metrics-addr: worker CPU per /metrics scrape with 128 checks in flight, and what the
counters cost on the hot path when metrics are off.

1. A worker process (--concurrency 128 --metrics-addr) against a private redis-server runs one maintenance
   task of every known type (so every type has its series, as on a busy worker), then 128 tcp checks
   against a port that never answers, which stay in flight. `--scrapes` GET /metrics on one keep-alive
   connection; worker CPU (/proc utime+stime) over them, minus the same worker's CPU over as long a span
   without scrapes, divided by the number of scrapes.
2. RSS of two idle workers, with and without --metrics-addr (prometheus_client's imports).
3. In this process: ns per call of the hooks the loop runs for each check (plain counters) and of the
   prometheus_client equivalents (labelled Counter.inc and Histogram.observe), for comparison.
Usage: python bench/scrape.py [--scrapes 200] [--in-flight 128]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, PrivateRedis, cpu_seconds, enqueue_all, free_port, payload


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_worker(url: str, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_") and k != "METRICS_ADDR"}
    env.update(MODE="prod", LOG_LEVEL="error")
    return subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--redis-url", url, "--queues", "healthcheck:5",
                             *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def hanging_port() -> tuple[int, list[socket.socket]]:
    """A loopback port whose accept queue is full: connects hang until the check's timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    keep = [listener]
    for _ in range(2):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        keep.append(s)
    time.sleep(0.05)
    return port, keep


def get(conn: http.client.HTTPConnection, path: str) -> bytes:
    conn.request("GET", path)
    reply = conn.getresponse()
    return reply.read()


def sample(body: bytes, name: str) -> float:
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return -1.0


def scrape_cost(scrapes: int, in_flight: int) -> None:
    sys.path.insert(0, str(ROOT))
    from worker import EXECUTORS

    redis = PrivateRedis()
    port, keep = hanging_port()
    metrics_port = free_port()
    worker = start_worker(redis.url, "--concurrency", str(in_flight), "--metrics-addr", f"127.0.0.1:{metrics_port}")
    idle = None
    try:
        import redis as syncredis

        r = syncredis.Redis.from_url(redis.url)
        types = sorted(t for t, path in EXECUTORS.items() if path)
        asyncio.run(enqueue_all(redis.url, [(f"maint-{t}", payload(f"maint-{t}", t, {}, maintenance=True))
                                            for t in types]))
        deadline = time.time() + 30
        while r.llen("asynq:{ingester}:pending") < len(types):
            if time.time() > deadline or worker.poll() is not None:
                raise RuntimeError(f"maintenance results missing: {worker.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        asyncio.run(enqueue_all(redis.url, [(f"hang-{i}", payload(f"hang-{i}", "tcp", {"host": "127.0.0.1", "port": port}))
                                            for i in range(in_flight)]))
        conn = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=10)
        while sample(get(conn, "/metrics"), "peekaping_worker_checks_in_flight") != in_flight:
            if time.time() > deadline:
                raise RuntimeError("checks did not get in flight")
            time.sleep(0.05)
        time.sleep(0.5)
        body = get(conn, "/metrics")

        quiet_start, cpu0 = time.perf_counter(), cpu_seconds(worker.pid)
        time.sleep(2.0)
        quiet_rate = (cpu_seconds(worker.pid) - cpu0) / (time.perf_counter() - quiet_start)

        latencies = []
        start, cpu0 = time.perf_counter(), cpu_seconds(worker.pid)
        for _ in range(scrapes):
            t = time.perf_counter()
            get(conn, "/metrics")
            latencies.append(time.perf_counter() - t)
        elapsed, cpu = time.perf_counter() - start, cpu_seconds(worker.pid) - cpu0
        still = sample(get(conn, "/metrics"), "peekaping_worker_checks_in_flight")
        per_scrape = (cpu - quiet_rate * elapsed) / scrapes
        samples = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
        print(f"scrape at {int(still)} in flight, {len(types)} types with series: {per_scrape * 1000:.2f} ms worker CPU "
              f"per scrape ({scrapes} scrapes; quiet CPU {quiet_rate * 1000:.1f} ms/s subtracted), "
              f"{len(body) / 1000:.1f} kB, {samples} samples, latency p50 {statistics.median(latencies) * 1000:.2f} ms "
              f"max {max(latencies) * 1000:.2f} ms")
        conn.close()

        idle = [start_worker(redis.url, "--queues", "idle:1"),
                start_worker(redis.url, "--queues", "idle:1", "--metrics-addr", f"127.0.0.1:{free_port()}")]
        time.sleep(3.0)
        print(f"RSS of an idle worker: {rss_mb(idle[0].pid):.1f} MB without --metrics-addr, "
              f"{rss_mb(idle[1].pid):.1f} MB with it (not scraped)")
    finally:
        for proc in (worker, *(idle or [])):
            proc.terminate()
            proc.wait(30)
        for s in keep:
            s.close()
        redis.close()


def hook_costs(rounds: int = 200_000) -> None:
    sys.path.insert(0, str(ROOT))
    from metrics import Stats
    from worker import EXECUTORS

    stats = Stats(EXECUTORS)

    def per_call(fn) -> float:
        fn()
        t = time.perf_counter_ns()
        for _ in range(rounds):
            fn()
        return (time.perf_counter_ns() - t) / rounds

    def plain_check() -> None:  # what the loop does for one check: handler + task outcome + results gauge
        stats.check_done("tcp", 1, 0.0123)
        stats.results_waiting += 1
        stats.results_waiting -= 1
        stats.succeeded += 1

    def nothing() -> None:
        pass

    import prometheus_client as pc

    registry = pc.CollectorRegistry()
    checks = pc.Counter("x_checks", "", ["type", "status"], registry=registry)
    durations = pc.Histogram("x_duration_seconds", "", ["type"], registry=registry,
                             buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60))
    waiting = pc.Gauge("x_waiting", "", registry=registry)
    succeeded = pc.Counter("x_succeeded", "", registry=registry)

    def library_check() -> None:
        checks.labels("tcp", "up").inc()
        durations.labels("tcp").observe(0.0123)
        waiting.inc()
        waiting.dec()
        succeeded.inc()

    empty = per_call(nothing)
    print(f"per check, hooks on the hot path: plain counters {per_call(plain_check) - empty:.0f} ns; "
          f"prometheus_client metrics {per_call(library_check) - empty:.0f} ns (call overhead of {empty:.0f} ns "
          "subtracted)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=128)
    args = parser.parse_args()
    scrape_cost(args.scrapes, args.in_flight)
    hook_costs()


if __name__ == "__main__":
    main()
