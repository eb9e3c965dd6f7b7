"""Router tests' plumbing: workers and routers as processes, payloads with monitor names, local targets
on several loopback addresses (so host rules can tell them apart), and reading the results."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import ROOT
from helpers import enqueue_healthcheck, healthcheck_payload, ingest_tasks

import asynq_protocol as aq

WORKER = [sys.executable, str(ROOT / "worker.py")]


class Proc:
    """A worker or router process whose stderr (JSON log lines) goes to a file."""

    def __init__(self, args: list[str], log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
        env.update(MODE="prod", LOG_LEVEL="info")
        self.log = log
        with open(log, "w") as fh:
            self.proc = subprocess.Popen([*WORKER, *args], env=env, stdout=subprocess.DEVNULL, stderr=fh, cwd=ROOT)

    def lines(self) -> list[dict]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"msg": line})
        return out

    def logged(self, msg: str, **fields) -> bool:
        return any(line.get("msg") == msg and all(line.get(k) == v for k, v in fields.items()) for line in self.lines())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"process did not exit within {timeout} s:\n{self.log.read_text()[-3000:]}")


def named_payload(monitor_type: str, config: dict, monitor_id: str, name: str | None = None, **extra) -> bytes:
    """A producer payload (helpers.healthcheck_payload) with the monitor name given."""
    body = json.loads(healthcheck_payload(monitor_type, config, monitor_id=monitor_id, **extra))
    if name is not None:
        body["monitor_name"] = name
    return json.dumps(body, separators=(",", ":")).encode()


async def produce(client: aq.Client, monitor_type: str, config: dict, monitor_id: str, name: str | None = None,
                  timeout: int = 16, queue: str = "healthcheck") -> None:
    """Enqueue as Peekaping's producer does (into `queue`: a site queue stands for a task forwarded earlier)."""
    payload = named_payload(monitor_type, config, monitor_id, name, timeout=timeout)
    if queue == "healthcheck":
        await enqueue_healthcheck(client, payload, monitor_id=monitor_id, timeout=timeout)
    else:
        await client.enqueue("monitor:healthcheck", payload, queue=queue, max_retry=0, timeout=timeout, retention=0,
                             unique_ttl=120, task_id=f"healthcheck:{monitor_id}")


async def results(redis) -> dict[str, list[dict]]:
    """monitor id -> its ingest results (decoded payloads), from the ingester queue."""
    out: dict[str, list[dict]] = {}
    for _, body in await ingest_tasks(redis):
        out.setdefault(body["monitor_id"], []).append(body)
    return out


class Targets:
    """TCP listeners that accept and close on 127.0.0.1 and 127.0.0.3, an HTTP server on 127.0.0.2."""

    def __init__(self) -> None:
        self.sockets = []
        self.tcp: dict[str, int] = {}
        for address in ("127.0.0.1", "127.0.0.3"):
            sock = socket.socket()
            sock.bind((address, 0))
            sock.listen(256)
            self.tcp[address] = sock.getsockname()[1]
            self.sockets.append(sock)
            threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

        class Ok(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Ok)
        self.http.daemon_threads = True
        self.http_url = f"http://127.0.0.2:{self.http.server_address[1]}/"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    @staticmethod
    def _accept(sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.http.shutdown()
        self.http.server_close()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s")
