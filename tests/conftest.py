"""Shared test fixtures: private redis-server instances, a hanging TCP target, Redis dumps."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("PEEKAPING_SHARED", ROOT.parent / "shared"))
# Redis states recorded from the real Go Asynq, vendored from shared/fixtures/asynq so that the tests
# also run where shared/ is absent (GitHub); test_vendored_fixtures_match_shared guards the copy.
FIXTURES = ROOT / "tests" / "fixtures" / "asynq"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private redis-server on a free port, with an append-only file so it can be restarted with its data."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="pw-redis-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", self.dir, "--logfile", os.path.join(self.dir, "log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def redis_server():
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is required under CI")
        pytest.skip("redis-server is not installed")
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
async def redis(redis_server):
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_server.url, protocol=2)
    yield client
    await client.aclose()


@pytest.fixture
def hanging_port():
    """A loopback port whose accept queue is full, so new TCP connects hang (SYNs are dropped)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(2):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(s)
    time.sleep(0.05)
    yield port
    for s in fillers:
        s.close()
    listener.close()


@pytest.fixture
def open_port():
    """A loopback port that accepts connections."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    yield listener.getsockname()[1]
    listener.close()


@pytest.fixture
def closed_port():
    return free_port()
