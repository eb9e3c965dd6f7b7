"""Runs the worker against a private Redis, enqueues health checks like Peekaping's producer, prints results.

What it shows: tasks go in through `healthcheck`, the worker runs them, and `monitor:ingest` tasks with
Peekaping's result payload appear in the `ingester` queue, where the Go ingester would pick them up.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import PrivateRedis, payload  # noqa: E402


def local_web_server() -> int:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Hello(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"status":"ok","version":"1.2.3"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


def local_listener() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    threading.Thread(target=lambda: [sock.accept()[0].close() for _ in iter(int, 1)], daemon=True).start()
    return sock.getsockname()[1]


async def main() -> int:
    import redis.asyncio as aioredis

    import asynq_protocol as aq

    redis_server = PrivateRedis()
    print(f"redis-server on {redis_server.url}")
    worker = subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--redis-url", redis_server.url,
                               "--concurrency", "32"], env=dict(os.environ, MODE="dev"))
    redis = aioredis.Redis.from_url(redis_server.url, protocol=2)
    client = aq.Client(aq.Broker(redis))
    try:
        port, web = local_listener(), local_web_server()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = s.getsockname()[1]
        checks = [
            ("web-frontend", payload("web-frontend", "tcp", {"host": "127.0.0.1", "port": port})),
            ("old-backend", payload("old-backend", "tcp", {"host": "127.0.0.1", "port": closed})),
            ("status-api", payload("status-api", "http-json-query", {
                "url": f"http://127.0.0.1:{web}/health", "method": "GET", "encoding": "json",
                "accepted_statuscodes": ["2XX"], "json_query": "status", "json_condition": "==",
                "expected_value": "ok"})),
            ("cron-push", payload("cron-push", "push", {"pushToken": "abc"})),
            ("maintained-db", payload("maintained-db", "tcp", {"host": "db.internal", "port": 5432}, maintenance=True)),
        ]
        for monitor_id, body in checks:
            await client.enqueue("monitor:healthcheck", body, queue="healthcheck", max_retry=0, timeout=16,
                                 retention=0, unique_ttl=120, task_id=f"healthcheck:{monitor_id}")
        print(f"enqueued {len(checks)} monitor:healthcheck tasks into asynq:{{healthcheck}}")
        deadline = time.time() + 30
        while await redis.llen("asynq:{ingester}:pending") < len(checks) and time.time() < deadline:
            await asyncio.sleep(0.1)
        ids = await redis.lrange("asynq:{ingester}:pending", 0, -1)
        print(f"\n{len(ids)} monitor:ingest tasks in asynq:{{ingester}}:")
        for raw in reversed(ids):
            msg = aq.TaskMessage()
            msg.ParseFromString(await redis.hget(aq.task_key("ingester", raw.decode()), "msg"))
            result = json.loads(msg.payload)
            print(f"  {msg.id}\n    status={result['status']} ping_ms={result['ping_ms']} message={result['message']!r}")
        return 0 if len(ids) == len(checks) else 1
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        await client.broker.close()
        await redis.aclose()
        redis_server.close()


if __name__ == "__main__":
    if shutil.which("redis-server") is None:
        print("demo: redis-server is not installed (Debian/Ubuntu: apt-get install redis-server); "
              "the demo starts a private one on a free port", file=sys.stderr)
        sys.exit(2)
    sys.exit(asyncio.run(main()))
