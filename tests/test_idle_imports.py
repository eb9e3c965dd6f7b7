"""What an idle worker has imported, read from a real worker process (no mocking).

An idle worker's memory is mostly the modules it has imported (issue 8: idle RSS <= 32 MB), so these
pin the lazy imports the figure relies on: executors, their TLS/crypto stack and ctypes load on the
first task that needs them; redis-py's package-metadata reader (email, zipfile, csv, tempfile) and
argparse's terminal sizing (shutil, bz2, lzma) never load. `ssl` itself is imported by asyncio and
uvloop at import time, so it is not in the list; `cryptography` (the package's two-line __init__, which
redis-py probes) is allowed, its x509/hazmat modules are not.

The worker runs under a small wrapper: a daemon thread that writes `sorted(sys.modules)` to a file when
a trigger file appears, then `worker.main()` as the installed entry point calls it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import asynq_protocol as aq
from conftest import ROOT
from helpers import enqueue_healthcheck, healthcheck_payload, wait_until

WRAPPER = r"""
import os, sys, threading, time
trigger, out = sys.argv[1], sys.argv[2]
sys.argv = ["peekaping-worker"] + sys.argv[3:]

def report():
    while True:
        time.sleep(0.02)
        if os.path.exists(trigger):
            os.unlink(trigger)
            while True:
                try:
                    names = sorted(sys.modules)
                    break
                except RuntimeError:  # changed size during iteration
                    continue
            with open(out + ".tmp", "w") as fh:
                fh.write("\n".join(names))
            os.rename(out + ".tmp", out)

threading.Thread(target=report, daemon=True).start()
import worker
sys.exit(worker.main())
"""

# Never loaded by an idle worker (a name covers its submodules).
IDLE_FORBIDDEN = [
    "executors.tcp", "executors.http", "executors.push", "executors._kit.http1", "executors._kit.tls",
    "executors._kit.oauth", "executors._kit.gjson", "executors._kit.limits", "executors._kit.dial",
    "cryptography.x509", "cryptography.hazmat", "spnego", "ctypes", "email", "zipfile", "csv", "tempfile",
    "shutil", "bz2", "lzma", "http.client", "urllib.request",
    "executors.ping", "executors.dns", "executors.snmp", "executors.websocket", "executors.docker",
    "executors.grpc_keyword", "executors._kit.icmp", "executors._kit.snmp_values", "dns", "websockets",
    "executors.postgres", "executors.mysql", "executors.mongodb", "executors.sqlserver", "executors.redis",
    "executors._kit.gourl", "executors._kit.tds", "executors._kit.mysql_dsn", "executors._kit.ed25519",
    "executors._kit.grpc_target", "prometheus_client",
    "asyncpg", "aiomysql", "pymysql", "pytds", "pymongo", "bson", "grpclib", "h2",
]
# Still not loaded after a tcp check: the http family and its TLS/crypto stack.
TCP_FORBIDDEN = ["executors.http", "executors._kit.http1", "executors._kit.tls", "executors._kit.oauth",
                 "executors._kit.gjson", "cryptography.x509", "cryptography.hazmat", "spnego", "email", "http.client"]


def _loaded(modules: list[str], forbidden: list[str]) -> list[str]:
    return sorted({m for m in modules for f in forbidden if m == f or m.startswith(f + ".")})


async def _modules(trigger: str, out: str, proc: subprocess.Popen) -> list[str]:
    if os.path.exists(out):
        os.unlink(out)
    open(trigger, "w").close()

    async def written() -> bool:
        assert proc.poll() is None, f"worker exited: {proc.communicate()[1][-2000:]}"
        return os.path.exists(out)

    await wait_until(written, 10)
    with open(out) as fh:
        return fh.read().split("\n")


async def test_idle_worker_has_not_imported_executors_tls_or_metadata(redis, redis_server, open_port, tmp_path):
    trigger, out = str(tmp_path / "trigger"), str(tmp_path / "modules")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    env.update(MODE="prod", LOG_LEVEL="info")
    proc = subprocess.Popen([sys.executable, "-c", WRAPPER, trigger, out, "--redis-url", redis_server.url],
                            cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        async def registered() -> bool:
            assert proc.poll() is None, f"worker exited: {proc.communicate()[1][-2000:]}"
            return bool(await redis.exists("asynq:servers"))

        await wait_until(registered, 20)
        await asyncio.sleep(1.5)  # a heartbeat and a few idle dequeues
        idle = await _modules(trigger, out, proc)
        assert "worker" in idle and "asynq_protocol" in idle and "redis.asyncio" in idle
        assert _loaded(idle, IDLE_FORBIDDEN) == [], "an idle worker imported these"

        broker = aq.Broker(redis)
        try:
            await enqueue_healthcheck(aq.Client(broker), healthcheck_payload("tcp", {"host": "127.0.0.1",
                                                                                    "port": open_port}))
        finally:
            await broker.close()

        async def result() -> bool:
            assert proc.poll() is None, f"worker exited: {proc.communicate()[1][-2000:]}"
            return bool(await redis.exists("asynq:{ingester}:pending"))

        await wait_until(result, 20)
        after_tcp = await _modules(trigger, out, proc)
        assert "executors.tcp" in after_tcp
        assert _loaded(after_tcp, TCP_FORBIDDEN) == [], "a tcp check imported these"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
