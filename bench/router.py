"""The router's forwarding rate: tasks/s moved from `healthcheck` into site queues (target: >= 2,000/s).

A private redis-server gets N health-check tasks as Peekaping's producer enqueues them (one monitor each,
targets spread over three sites by name, CIDR and host-name rules, so every decision is made afresh);
then `peekaping-worker route` is started and timed from its first forward until every task is in its
site queue. No edge worker runs (it would compete for the CPU): a heartbeat written here stands for
each site's worker, so the router sees every site online.
Usage: python bench/router.py [--tasks 20000] [--concurrency 128] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time

from common import ROOT, PrivateRedis, cpu_seconds, enqueue_all, payload

SITES = ("berlin", "paris", "tokyo")
RULES = """
unmatched = "run"
[[rule]]
site = "berlin"
names = ["[berlin]*"]
hosts = ["10.1.0.0/16"]
[[rule]]
site = "paris"
hosts = ["10.2.0.0/16", "*.paris.example"]
[[rule]]
site = "tokyo"
types = ["dns"]
hosts = ["10.3.0.0/16"]
"""


def payloads(n: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        mid = f"bench-{i:06d}"
        kind = i % 4
        if kind == 0:
            body = payload(mid, "tcp", {"host": f"10.1.{i % 250}.{i % 200 + 1}", "port": 22})
        elif kind == 1:
            body = payload(mid, "http", {"url": f"https://sw{i}.paris.example/health", "accepted_statuscodes": ["2XX"]})
        elif kind == 2:
            body = payload(mid, "ping", {"host": f"10.3.{i % 250}.{i % 200 + 1}"})
        else:
            body = payload(mid, "tcp", {"host": f"10.1.{i % 250}.{i % 200 + 1}", "port": 443})
            body = body.replace(f'"monitor_name":"{mid}"'.encode(), f'"monitor_name":"[berlin] {mid}"'.encode())
        out.append((mid, body))
    return out


def site_heartbeats(url: str, stop: threading.Event) -> None:
    """asynq:servers entries for one worker per site, renewed as a live worker renews its own."""
    import redis.asyncio as aioredis

    import asynq_protocol as aq

    async def beat() -> None:
        redis = aioredis.Redis.from_url(url, protocol=2)
        broker = aq.Broker(redis)
        infos = [aq.ServerInfo(host="bench", pid=i + 1, server_id=f"site-{site}", concurrency=64,
                               queues={f"healthcheck-{site}": 5}, status="active") for i, site in enumerate(SITES)]
        while not stop.is_set():
            for info in infos:
                await broker.write_server_state(info, [])
            await asyncio.sleep(2)
        await redis.aclose()

    asyncio.run(beat())


def one_run(redis_server: PrivateRedis, n: int, concurrency: int, rules: str) -> tuple[float, float]:
    import redis as syncredis

    r = syncredis.Redis.from_url(redis_server.url)
    r.flushdb()
    stop = threading.Event()
    beats = threading.Thread(target=site_heartbeats, args=(redis_server.url, stop), daemon=True)
    beats.start()
    asyncio.run(enqueue_all(redis_server.url, payloads(n)))
    queues = [f"asynq:{{healthcheck-{site}}}:pending" for site in SITES]
    env = dict(os.environ, MODE="prod", LOG_LEVEL="error")
    proc = subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "route", rules, "--redis-url", redis_server.url,
                             "--concurrency", str(concurrency)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)

    def forwarded() -> int:
        pipe = r.pipeline(transaction=False)
        for q in queues:
            pipe.llen(q)
        return sum(pipe.execute())

    try:
        while forwarded() == 0:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode())
            time.sleep(0.002)
        started, cpu0 = time.perf_counter(), cpu_seconds(proc.pid)
        deadline = started + 300
        while forwarded() < n:
            if time.perf_counter() > deadline or proc.poll() is not None:
                raise RuntimeError(f"only {forwarded()} of {n} forwarded")
            time.sleep(0.005)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait(30)
        stop.set()
        beats.join(10)
    return n / elapsed, cpu / n * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    redis_server = PrivateRedis()
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as fh:
        fh.write(RULES)
    try:
        rates = []
        for run in range(args.runs):
            rate, cpu_ms = one_run(redis_server, args.tasks, args.concurrency, fh.name)
            rates.append(rate)
            print(f"run {run + 1}: {rate:8.0f} tasks/s forwarded   router CPU {cpu_ms:.3f} ms/task")
        best = max(rates)
        print(f"router forwarding rate: {best:.0f} tasks/s (best of {args.runs}; target >= 2000)")
        return 0 if best >= 2000 else 1
    finally:
        os.unlink(fh.name)
        redis_server.close()


if __name__ == "__main__":
    sys.exit(main())
