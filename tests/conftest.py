"""Shared test fixtures: private redis-server instances, a hanging TCP target, Redis dumps; and what every
peer module starts its servers with (a free port, waiting until a program is ready, stopping it, and
"skip with the reason, but fail under CI=true" when a program or module is missing).

The peer modules import this file as `conftest` (it is light: no worker code); pytest's own import of it
is the same module.
"""

from __future__ import annotations

import importlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

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


# --------------------------------------------------------------------------------------------------
# What the tests need: skip without it, except under CI=true, where every peer must run

def skip_or_fail(reason: str, *, module: bool = False) -> NoReturn:
    """Skip the test (the whole test module with `module`) for `reason`; under CI=true fail instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"required under CI: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=module)


def require(reason: str | None, *, module: bool = False) -> None:
    """skip_or_fail(reason) when there is one (the answer of a peer module's `missing_reason()`)."""
    if reason:
        skip_or_fail(reason, module=module)


def require_program(name: str, package: str) -> str:
    """The path of the program `name`; skip_or_fail naming the Debian `package` when it is not on PATH."""
    path = shutil.which(name)
    if path is None:
        skip_or_fail(f"{name} is not installed (apt-get install {package})")
    return path


def require_modules(*names: str, install: str) -> None:
    """For a test module's top: skip it (fail under CI=true) when one of the Python modules `names` does
    not import; `install` says how to get it."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            skip_or_fail(f"{name} is not installed ({install}): {exc}", module=True)


# --------------------------------------------------------------------------------------------------
# Peer processes: ready, stopped

def wait_ready(ready: Callable[[], bool], what: str, timeout: float = 10.0, *, proc: subprocess.Popen | None = None,
               log: Callable[[], str] = lambda: "", error: type[Exception] = RuntimeError,
               interval: float = 0.05) -> None:
    """Poll `ready()` (an OSError counts as "not yet") until it is true. Raise `error` naming `what`, with
    `log()`, when `proc` exits first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise error(f"{what} exited with {proc.returncode}: {log()}")
        try:
            if ready():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise error(f"{what} was not ready within {timeout:g} s: {log()}")
        time.sleep(interval)


def accepts(port: int, host: str = "127.0.0.1") -> bool:
    """True when (host, port) accepts a TCP connection (OSError when it does not)."""
    socket.create_connection((host, port), timeout=0.2).close()
    return True


def wait_for_port(port: int, what: str, timeout: float = 10.0, *, host: str = "127.0.0.1",
                  proc: subprocess.Popen | None = None, log: Callable[[], str] = lambda: "") -> None:
    """Wait until (host, port) accepts TCP connections; RuntimeError when `proc` exits first or time runs out."""
    wait_ready(lambda: accepts(port, host), what, timeout, proc=proc, log=log)


def stop_process(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """Terminate `proc` and reap it; kill it when it has not ended within `timeout` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


# --------------------------------------------------------------------------------------------------
# Peer servers in threads

class TcpPeer:
    """A loopback TCP listener whose thread hands each connection to `serve(conn)`, in a thread of its own,
    for a subclass to answer. `close` sets `stopped` (for `serve` loops to end), shuts the listener down
    (which wakes the blocked accept) and closes it, and shuts down the connections still open (`serve`
    closes its connection itself)."""

    def __init__(self, backlog: int = 64) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=backlog)
        self.port = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name=f"{type(self).__name__}-{self.port}").start()

    @property
    def connections(self) -> int:
        """How many connections were accepted so far."""
        return len(self.conns)

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stopped.set()
        for sock in (self.listener, *self.conns):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.listener.close()


# --------------------------------------------------------------------------------------------------
# Fixtures

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
        wait_ready(self._pong, "redis-server", 10, proc=self.proc)

    def _pong(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def redis_server():
    require_program("redis-server", "redis-server")
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
