"""Through a worker process and a private Redis, with producer-style tasks: gzip-bomb targets cost their
own checks only (healthy checks beside them keep their timings and are never archived), and a burst
of large configs leaves no lasting memory behind.

Targets run in a child process (tests/cpu_peers.py). The machine has 2 cores shared with other work,
so the bounds are generous; each test prints the figures it measured.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time

import psutil
import pytest

import asynq_protocol as aq
import cpu_peers
from helpers import enqueue_healthcheck, healthcheck_payload, wait_until
from test_worker_process import start_worker, stop

TIMEOUT = 5
KEYWORD_DOWN = "Keyword check failed: keyword 'needle' not found in response"


@pytest.fixture(scope="module")
def target():
    proc, port = cpu_peers.start()
    yield f"http://127.0.0.1:{port}"
    cpu_peers.stop(proc)


@pytest.fixture
async def client(redis):
    broker = aq.Broker(redis)
    yield aq.Client(broker)
    await broker.close()


def keyword_config(url: str, keyword: str) -> dict:
    return {"url": url, "method": "GET", "headers": "", "encoding": "json", "body": "",
            "accepted_statuscodes": ["2XX"], "max_redirects": 10, "ignore_tls_errors": False,
            "authMethod": "none", "check_cert_expiry": False, "keyword": keyword, "invert_keyword": False}


class Results:
    """Ingest results as they arrive, by monitor id, with the time each was first seen."""

    def __init__(self, redis) -> None:
        self.redis = redis
        self.seen: dict[str, tuple[float, dict]] = {}
        self._ids: set[bytes] = set()

    async def poll(self) -> None:
        for raw in await self.redis.lrange("asynq:{ingester}:pending", 0, -1):
            if raw in self._ids:
                continue
            self._ids.add(raw)
            data = await self.redis.hget(aq.task_key("ingester", raw.decode()), "msg")
            msg = aq.TaskMessage()
            msg.ParseFromString(data)
            result = json.loads(msg.payload)
            self.seen[result["monitor_id"]] = (time.monotonic(), result)

    async def wait_for(self, ids: list[str], timeout: float) -> None:
        async def all_in() -> bool:
            await self.poll()
            return all(i in self.seen for i in ids)

        await wait_until(all_in, timeout, interval=0.05)


class PeakRSS:
    """Samples a process's RSS every 20 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


async def _run_phase(client, results: Results, target: str, prefix: str, bombs: int) -> dict[str, float]:
    """100 healthy http-keyword checks at 10/s, with `bombs` gzip-bomb checks spread among them;
    returns the enqueue time of each monitor."""
    enqueued: dict[str, float] = {}
    for i in range(100):
        if bombs and i % (100 // bombs) == 0:
            mid = f"{prefix}-bomb-{i}"
            await enqueue_healthcheck(client, healthcheck_payload("http-keyword", keyword_config(f"{target}/bomb", "needle"),
                                                                  monitor_id=mid, timeout=TIMEOUT),
                                      monitor_id=mid, timeout=TIMEOUT)
            enqueued[mid] = time.monotonic()
        mid = f"{prefix}-ok-{i}"
        await enqueue_healthcheck(client, healthcheck_payload("http-keyword", keyword_config(f"{target}/healthy", "healthy"),
                                                              monitor_id=mid, timeout=TIMEOUT),
                                  monitor_id=mid, timeout=TIMEOUT)
        enqueued[mid] = time.monotonic()
        await results.poll()
        await asyncio.sleep(0.1)
    await results.wait_for(list(enqueued), 30)
    return enqueued


async def test_gzip_bombs_do_not_delay_or_archive_healthy_checks(redis, redis_server, client, target):
    proc = start_worker(redis_server.url, LOG_LEVEL="warn")  # info lines per check would fill the pipe
    results = Results(redis)
    try:
        await enqueue_healthcheck(client, healthcheck_payload("http-keyword", keyword_config(f"{target}/healthy", "healthy"),
                                                              monitor_id="warm", timeout=TIMEOUT),
                                  monitor_id="warm", timeout=TIMEOUT)
        await results.wait_for(["warm"], 15)
        base = await _run_phase(client, results, target, "base", bombs=0)
        rss_before = psutil.Process(proc.pid).memory_info().rss
        with PeakRSS(proc.pid) as rss:
            load = await _run_phase(client, results, target, "load", bombs=10)
    finally:
        code, err = stop(proc)
    assert code == 0, err

    assert not await redis.zcard("asynq:{healthcheck}:archived"), "a check was archived"
    base_pings = [results.seen[m][1]["ping_ms"] for m in base]
    load_ok = [m for m in load if "-ok-" in m]
    bombs = [m for m in load if "-bomb-" in m]
    load_pings = [results.seen[m][1]["ping_ms"] for m in load_ok]
    bomb_took = [results.seen[m][0] - load[m] for m in bombs]
    grown = (rss.peak - rss_before) / 2**20
    print(f"\nhealthy ping_ms without bombs: median {statistics.median(base_pings)}, max {max(base_pings)}; "
          f"with 10 bombs: median {statistics.median(load_pings)}, max {max(load_pings)}")
    print(f"bombs: enqueue to result {min(bomb_took):.2f}-{max(bomb_took):.2f} s; "
          f"worker RSS {rss_before / 2**20:.1f} MiB, peak {rss.peak / 2**20:.1f} MiB (+{grown:.1f} MiB)")
    for m in [*base, *load_ok]:
        assert (results.seen[m][1]["status"], results.seen[m][1]["message"]) == (1, "200 - 200 OK"), m
    assert len(bombs) == 10
    for m, took in zip(bombs, bomb_took):
        assert (results.seen[m][1]["status"], results.seen[m][1]["message"]) == (0, KEYWORD_DOWN), m
        assert took <= TIMEOUT + 1, (m, took)
    assert max(load_pings) <= max(base_pings) + 50, (sorted(base_pings)[-5:], sorted(load_pings)[-5:])
    assert abs(statistics.median(load_pings) - statistics.median(base_pings)) <= 50
    assert grown < 100, f"RSS grew {grown:.1f} MiB"


async def test_rss_returns_to_idle_after_a_burst_of_large_configs(redis, redis_server, client, target):
    """400 http checks, each with its own 1 MB POST body, at concurrency 128: RSS 30 s after the
    burst is within 50 MB of the start (it stayed ~1.2 GB above it when the plan cache held them)."""
    proc = start_worker(redis_server.url, "--concurrency", "128", LOG_LEVEL="warn")
    results = Results(redis)
    info = psutil.Process(proc.pid)
    try:
        small = {**keyword_config(f"{target}/sink", ""), "method": "POST", "encoding": "text", "body": "warm"}
        await enqueue_healthcheck(client, healthcheck_payload("http", small, monitor_id="warm"), monitor_id="warm")
        await results.wait_for(["warm"], 15)
        await asyncio.sleep(2)
        start = info.memory_info().rss
        filler = "x" * (1 << 20)
        with PeakRSS(proc.pid) as rss:
            for i in range(400):
                config = {**small, "body": f"{i:04d}{filler}"}
                await enqueue_healthcheck(client, healthcheck_payload("http", config, monitor_id=f"big-{i}"),
                                          monitor_id=f"big-{i}")
            await wait_until(lambda: _ingested(redis, 401), 120, interval=0.2)
            burst_end = info.memory_info().rss
        await asyncio.sleep(30)
        idle = info.memory_info().rss
    finally:
        code, err = stop(proc)
    assert code == 0, err
    statuses = set()
    for raw in await redis.lrange("asynq:{ingester}:pending", 0, -1):
        msg = aq.TaskMessage()
        msg.ParseFromString(await redis.hget(aq.task_key("ingester", raw.decode()), "msg"))
        statuses.add(json.loads(msg.payload)["status"])
    mb = 2**20
    print(f"\nworker RSS start {start / mb:.1f} MiB, peak {rss.peak / mb:.1f} MiB, at burst end {burst_end / mb:.1f} MiB, "
          f"after 30 s idle {idle / mb:.1f} MiB (+{(idle - start) / mb:.1f} MiB)")
    assert statuses == {1}, statuses
    assert idle - start < 50 * mb, f"RSS {(idle - start) / mb:.1f} MiB above the start after 30 s idle"


async def _ingested(redis, n: int) -> bool:
    return await redis.llen("asynq:{ingester}:pending") >= n
