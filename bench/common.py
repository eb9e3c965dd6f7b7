"""Benchmark plumbing: a private redis-server, producer-style enqueueing, a worker subprocess, /proc readings."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="pw-bench-")
        self.proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--dir", self.dir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.1).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def payload(monitor_id: str, monitor_type: str, config: dict, *, maintenance: bool = False, timeout: int = 16) -> bytes:
    from executors._kit.gotext import format_rfc3339

    return json.dumps({
        "monitor_id": monitor_id, "monitor_name": monitor_id, "monitor_type": monitor_type, "interval": 60,
        "timeout": timeout, "max_retries": 0, "retry_interval": 60, "resend_interval": 0,
        "config": json.dumps(config), "scheduled_at": format_rfc3339(time.time_ns()),
        "is_under_maintenance": maintenance, "check_cert_expiry": False,
    }, separators=(",", ":")).encode()


async def enqueue_all(url: str, payloads: list[tuple[str, bytes]]) -> None:
    """Enqueue like the Go producer (queue healthcheck, MaxRetry 0, Unique 2x interval, TaskID per monitor)."""
    import redis.asyncio as aioredis

    import asynq_protocol as aq

    redis = aioredis.Redis.from_url(url, protocol=2)
    broker = aq.Broker(redis)
    client = aq.Client(broker)
    for start in range(0, len(payloads), 500):
        await asyncio.gather(*(client.enqueue("monitor:healthcheck", body, queue="healthcheck", max_retry=0, timeout=16,
                                              retention=0, unique_ttl=120, task_id=f"healthcheck:{mid}")
                               for mid, body in payloads[start:start + 500]))
    await broker.close()
    await redis.aclose()


@dataclass
class RunFigures:
    checks: int
    seconds: float
    worker_cpu: float
    redis_cpu: float
    peak_rss_mb: float

    @property
    def per_second(self) -> float:
        return self.checks / self.seconds

    def line(self, label: str) -> str:
        return (f"{label:<28} {self.per_second:9.0f} checks/s   {self.worker_cpu / self.checks * 1000:6.2f} worker CPU s/1000"
                f"   {self.redis_cpu / self.checks * 1000:5.2f} redis CPU s/1000   peak RSS {self.peak_rss_mb:5.1f} MB")


def drain(redis_server: PrivateRedis, payloads: list[tuple[str, bytes]], concurrency: int,
          worker_cmd: list[str] | None = None) -> RunFigures:
    """Enqueue everything, start a worker, time from the first dequeue until every result is in `ingester`."""
    import redis as syncredis

    r = syncredis.Redis.from_url(redis_server.url)
    r.flushdb()
    asyncio.run(enqueue_all(redis_server.url, payloads))
    n = len(payloads)
    cmd = worker_cmd or [sys.executable, str(ROOT / "worker.py")]
    env = dict(os.environ, MODE="prod", LOG_LEVEL="error")
    proc = subprocess.Popen([*cmd, "--redis-url", redis_server.url, "--concurrency", str(concurrency)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while r.llen("asynq:{healthcheck}:pending") >= n:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode())
            time.sleep(0.002)
        started, cpu0, rcpu0 = time.perf_counter(), cpu_seconds(proc.pid), cpu_seconds(redis_server.proc.pid)
        deadline = started + 600
        while r.llen("asynq:{ingester}:pending") < n:
            if time.perf_counter() > deadline or proc.poll() is not None:
                raise RuntimeError(f"only {r.llen('asynq:{ingester}:pending')} of {n} results")
            time.sleep(0.005)
        elapsed = time.perf_counter() - started
        figures = RunFigures(n, elapsed, cpu_seconds(proc.pid) - cpu0, cpu_seconds(redis_server.proc.pid) - rcpu0,
                             peak_rss_mb(proc.pid))
    finally:
        proc.terminate()
        proc.wait(30)
    return figures
