"""Smoke test of a built worker (the PyInstaller binary, the zipapp, or any command that runs the worker).

    python scripts/smoke_binary.py dist/peekaping-worker
    python scripts/smoke_binary.py "python3 dist/peekaping-worker.pyz"

Run by scripts/smoke-binary.sh with an interpreter that has the project's runtime dependencies
(redis, protobuf): this script enqueues and reads tasks with the project's own `asynq_protocol`.
Needs redis-server on PATH; the https check also needs the openssl command (skipped without it).
Everything it talks to is on loopback: a listener of its own, a private redis-server on a free port.
Exits non-zero, naming the step, when anything is wrong: a missing hidden import shows up as a
traceback from `check TYPE`, a missing data file (certifi's cacert.pem) in the bundle listing or in
the https check, a broken worker loop as a missing or wrong ingest task.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SCALE = float(os.environ.get("SMOKE_TIMEOUT_SCALE", "1"))  # raise under emulation (qemu)
STEP_TIMEOUT = 60 * SCALE
INGEST_TIMEOUT = 30 * SCALE


class Failure(Exception):
    pass


COUNTS = {"passed": 0, "skipped": 0}


def say(text: str) -> None:
    print(f"smoke: {text}", flush=True)


def ok(text: str) -> None:
    COUNTS["passed"] += 1
    say(f"ok    {text}")


def skip(text: str) -> None:
    COUNTS["skipped"] += 1
    say(f"skip  {text}")


# --------------------------------------------------------------------------------------------------
# Helpers shared with bench/startup.py

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env() -> dict[str, str]:
    """The environment for the worker under test: none of the caller's worker settings leak in."""
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("REDIS_", "QUEUE_", "PEEKAPING_", "SSL_CERT_"))
            and k not in ("MODE", "LOG_LEVEL", "TZ", "SERVICE_NAME")}
    keep["LOG_LEVEL"] = "info"
    return keep


class PrivateRedis:
    """A redis-server on a free loopback port that keeps nothing on disk."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise Failure("redis-server is not installed (apt-get install redis-server)")
        self.dir = tempfile.mkdtemp(prefix="pw-smoke-redis-")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--logfile", os.path.join(self.dir, "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10 * SCALE
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        self.close()
        raise Failure("private redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process and its descendants (a one-file binary's worker is the bootloader's child)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as fh:
                    children.setdefault(int(fh.read().rsplit(")", 1)[1].split()[1]), []).append(int(name))
            except OSError:
                continue
    pids, todo = [], [proc.pid]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += children.get(pid, [])
    for pid in reversed(pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def rfc3339_now() -> str:
    """`scheduled_at` as the producer writes it: UTC, millisecond precision, trailing zeros dropped."""
    now = datetime.now(timezone.utc)
    text = now.strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{now.microsecond // 1000:03d}".rstrip("0")
    return f"{text}.{frac}Z" if frac else f"{text}Z"


def healthcheck_payload(monitor_id: str, monitor_type: str, config: dict) -> bytes:
    """A `monitor:healthcheck` payload as the Go producer encodes it (spec §2.2 key order)."""
    return json.dumps({
        "monitor_id": monitor_id, "monitor_name": f"smoke {monitor_type}", "monitor_type": monitor_type,
        "interval": 60, "timeout": 16, "max_retries": 0, "retry_interval": 60, "resend_interval": 0,
        "config": json.dumps(config, separators=(",", ":")), "scheduled_at": rfc3339_now(),
        "is_under_maintenance": False, "check_cert_expiry": False,
    }, separators=(",", ":")).encode()


async def enqueue_healthcheck(redis_url: str, monitor_id: str, payload: bytes) -> None:
    """Enqueue with the options of the Go producer (spec §2.1), through the project's own client."""
    import redis.asyncio as aioredis
    from asynq_protocol import Broker, Client

    client = aioredis.Redis.from_url(redis_url, protocol=2)
    try:
        await Client(Broker(client)).enqueue("monitor:healthcheck", payload, queue="healthcheck", max_retry=0,
                                             timeout=16, retention=0, unique_ttl=120,
                                             task_id=f"healthcheck:{monitor_id}")
    finally:
        await client.aclose()


def command(binary: str) -> list[str]:
    """The binary as an argv prefix: a path, or a quoted command line such as 'python3 x.pyz'."""
    if os.path.exists(binary):
        return [os.path.abspath(binary)]
    return [os.path.abspath(part) if os.path.isfile(part) else part for part in shlex.split(binary)]


def executor_types_in_source() -> list[str]:
    """Types that worker.EXECUTORS (this source tree) maps to a module, read without importing."""
    with open(os.path.join(ROOT, "worker.py"), encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == "EXECUTORS":
            return sorted(t for t, path in ast.literal_eval(node.value).items() if path)
    raise Failure("worker.py has no EXECUTORS table")


def executor_modules_in_source() -> list[str]:
    found = []
    for folder, dirs, files in os.walk(os.path.join(ROOT, "executors")):
        dirs[:] = [d for d in dirs if os.path.exists(os.path.join(folder, d, "__init__.py"))]
        rel = os.path.relpath(folder, ROOT).replace(os.sep, ".")
        found += [rel if f == "__init__.py" else f"{rel}.{f[:-3]}" for f in files if f.endswith(".py")]
    return sorted(found)


# --------------------------------------------------------------------------------------------------
# Steps

def run(argv: list[str], timeout: float = STEP_TIMEOUT, cwd: str | None = None,
        extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                              env={**clean_env(), **(extra_env or {})}, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise Failure(f"{shlex.join(argv)} did not finish within {timeout:g} s") from None


def step_version(cmd: list[str]) -> list[str]:
    out = run(cmd + ["--version"])
    if out.returncode != 0:
        raise Failure(f"--version exited {out.returncode}: {out.stderr.strip()}")
    lines = out.stdout.strip().splitlines()
    m = re.fullmatch(r"peekaping-worker (\S+) \(Python (\d+\.\d+\.\d+)\S*\)", lines[0] if lines else "")
    if not m:
        raise Failure(f"--version: unexpected first line {lines[:1]}")
    listed = next((ln.split(":", 1)[1] for ln in lines if ln.startswith("executors:")), None)
    if listed is None:
        raise Failure(f"--version lists no executors: {out.stdout!r}")
    types = sorted(t.strip() for t in listed.split(",") if t.strip())
    expected = executor_types_in_source()
    if types != expected:
        raise Failure(f"--version lists executors {types}, this source tree has {expected}: stale binary?")
    if run(cmd + ["--help"]).returncode != 0:
        raise Failure("--help failed")
    ok(f"--version: {m.group(1)}, Python {m.group(2)}, executors: {', '.join(types)}")
    return types


def archive_listing(binary: str) -> list[str] | None:
    """Every entry of a PyInstaller binary or zipapp (modules as dotted names, data files as paths),
    or None when it cannot be read here."""
    import zipfile

    target = next((p for p in reversed(command(binary)) if os.path.isfile(p)), binary)
    if zipfile.is_zipfile(target):
        names = []
        for name in zipfile.ZipFile(target).namelist():
            if name.endswith(".py"):
                module = name[:-3].replace("/", ".")
                names.append(module[: -len(".__init__")] if module.endswith(".__init__") else module)
            elif not name.endswith(".pyc"):
                names.append(name)
        return names
    viewer = shutil.which("pyi-archive_viewer", path=os.path.dirname(sys.executable)) or shutil.which(
        "pyi-archive_viewer")
    if viewer is None or not os.path.isfile(binary):
        return None
    out = subprocess.run([viewer, "-l", "-r", "-b", binary], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        if "not a PyInstaller" in out.stderr or "archive" in out.stderr.lower():
            return None
        raise Failure(f"pyi-archive_viewer failed: {out.stderr.strip()[-500:]}")
    return [ln.strip() for ln in out.stdout.splitlines() if ln.strip() and not ln.startswith(("Contents", "Options"))]


def step_bundle(binary: str) -> None:
    names = archive_listing(binary)
    if names is None:
        skip("bundle listing (not a PyInstaller binary, or pyi-archive_viewer is not installed here)")
        return
    have = set(names)
    missing = [m for m in ["worker", "healthcheck", "asynq_protocol", "asynq_scripts", "pending_watch", "settings", "redis_checks", "cli", "router", "sites_rules", "metrics", "doctor", "housekeeping", "redis_wire"] + executor_modules_in_source() if m not in have]
    if missing:
        raise Failure(f"modules missing from the bundle: {missing} (hidden imports in build.spec?)")
    pyinstaller = "PYZ.pyz" in have or any(n.startswith("pyimod") for n in names)
    if (pyinstaller or any(n.startswith("certifi") for n in names)) and "certifi/cacert.pem" not in have:
        raise Failure("the CA bundle certifi/cacert.pem is missing from the bundle")
    if pyinstaller and "rth_ca_roots" not in have:
        raise Failure("the runtime hook rth_ca_roots (trust roots) is missing from the bundle")
    unwanted = sorted({n.split(".")[0] for n in names if n.split(".")[0] in (
        "tkinter", "unittest", "pytest", "_pytest", "pydoc", "setuptools", "pip", "lib2to3", "sqlite3")})
    if unwanted:
        raise Failure(f"excluded modules are in the bundle: {unwanted} (was the build environment clean?)")
    extras = "; certifi/cacert.pem present" if "certifi/cacert.pem" in have else ""
    ok(f"bundle: {len(names)} entries, every executor module present{extras}")


def step_import_executors(cmd: list[str], types: list[str], workdir: str) -> None:
    """`check TYPE <bad json>` imports the executor (and its module-level dependencies), then fails on
    the config: exit 2 and a message, never a traceback."""
    for t in types:
        out = run(cmd + ["check", t, "{", "--timeout", "5"], cwd=workdir)
        text = out.stdout + out.stderr
        if "Traceback" in text or "No module named" in text or out.returncode not in (0, 1, 2):
            raise Failure(f"check {t} (bad config) exited {out.returncode}:\n{text.strip()[-3000:]}")
    ok(f"every executor imports in the bundle: {', '.join(types)}")


def step_check_tcp(cmd: list[str], workdir: str) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    try:
        out = run(cmd + ["check", "tcp", json.dumps({"host": "127.0.0.1", "port": port})], cwd=workdir)
    finally:
        listener.close()
    if out.returncode != 0 or f"TCP port {port} is open" not in out.stdout:
        raise Failure(f"check tcp (open port) exited {out.returncode}: {out.stdout.strip()} {out.stderr.strip()}")
    closed = free_port()
    out2 = run(cmd + ["check", "tcp", json.dumps({"host": "127.0.0.1", "port": closed})], cwd=workdir)
    if out2.returncode != 1 or "connection refused" not in out2.stdout:
        raise Failure(f"check tcp (closed port) exited {out2.returncode}: {out2.stdout.strip()} {out2.stderr.strip()}")
    ok(f"check tcp: {out.stdout.strip()}")


# Each executor's library code paths in the bundle (drivers import parts of themselves lazily, which
# PyInstaller's analysis can miss): a check against a closed port must end DOWN with the Go-style text.
REFUSED_CHECKS = {
    "dns": ({"host": "example.com", "resolver_server": "127.0.0.1", "port": "{port}", "resolve_type": "A"},
            "DNS lookup failed: lookup example.com on 127.0.0.1:{port}"),
    "snmp": ({"host": "127.0.0.1", "port": "{port}", "community": "u:SHA-256:passphrase1:AES:passphrase2",
              "snmp_version": "v3", "oid": "1.3.6.1.2.1.1.1.0"}, "SNMP GET failed: "),
    "grpc-keyword": ({"grpcUrl": "127.0.0.1:{port}", "grpcServiceName": "Health", "grpcMethod": "check",
                      "grpcBody": "{}"}, "gRPC call failed: UNAVAILABLE: dial tcp 127.0.0.1:{port}"),
    "websocket": ({"url": "ws://127.0.0.1:{port}/"}, "WebSocket upgrade failed: dial tcp 127.0.0.1:{port}"),
    "postgres": ({"database_connection_string": "postgres://u:pw@127.0.0.1:{port}/db", "database_query": ""},
                 "connection failed: "),
    "mysql": ({"connection_string": "mysql://u:pw@127.0.0.1:{port}/db", "query": ""}, "MySQL query failed: "),
    "sqlserver": ({"database_connection_string": "Server=127.0.0.1,{port};Database=d;User Id=sa;Password=pw;",
                   "database_query": ""}, "connection failed: "),
    "mongodb": ({"connectionString": "mongodb://127.0.0.1:{port}/admin", "command": ""}, "MongoDB command failed"),
    "redis": ({"databaseConnectionString": "redis://127.0.0.1:{port}"}, "Redis ping failed: "),
    "mqtt": ({"hostname": "127.0.0.1", "port": "{port}", "topic": "t", "check_type": "json-query",
              "json_path": "a", "expected_value": "1"}, "MQTT connection failed: "),
    "rabbitmq": ({"nodes": ["http://127.0.0.1:{port}"], "username": "u", "password": "p"},
                 "All RabbitMQ nodes failed"),
    "kafka-producer": ({"brokers": ["127.0.0.1:{port}"], "topic": "t", "message": "m"},
                       "Failed to create Kafka producer: "),
}


def step_refused_checks(cmd: list[str], workdir: str) -> None:
    closed = free_port()
    done = []
    for monitor_type, (config, expected) in REFUSED_CHECKS.items():
        text = json.dumps(config).replace('"{port}"', str(closed)).replace("{port}", str(closed))
        out = run(cmd + ["check", monitor_type, text, "--timeout", "3"], cwd=workdir)
        want = expected.replace("{port}", str(closed))
        if out.returncode != 1 or not out.stdout.startswith("DOWN") or want not in out.stdout:
            raise Failure(f"check {monitor_type} (closed port) exited {out.returncode}: {out.stdout.strip()} "
                          f"{out.stderr.strip()[-500:]}")
        done.append(monitor_type)
    ok(f"checks against a closed port end DOWN with the expected text: {', '.join(done)}")


def serve_text(body: bytes, cert: str | None = None, key: str | None = None):
    """A threaded HTTP server on a free loopback port, serving from a daemon thread, that answers every GET
    with `body` as text/plain; HTTPS with `cert` and `key`. Stop it with shutdown() and server_close()."""
    import http.server
    import ssl

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if cert is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def make_test_pki(openssl: str, workdir: str) -> tuple[str, str, str]:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it: (ca.pem, cert.pem, key.pem)."""
    path = lambda name: os.path.join(workdir, name)  # noqa: E731
    with open(path("leaf.ext"), "w") as fh:
        fh.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                 "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    steps = [
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", path("ca.key"), "-out", path("ca.pem"),
         "-days", "2", "-subj", "/CN=peekaping smoke CA"],
        [openssl, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", path("key.pem"), "-out", path("leaf.csr"),
         "-subj", "/CN=127.0.0.1"],
        [openssl, "x509", "-req", "-in", path("leaf.csr"), "-CA", path("ca.pem"), "-CAkey", path("ca.key"),
         "-CAcreateserial", "-out", path("cert.pem"), "-days", "2", "-extfile", path("leaf.ext")],
    ]
    for argv in steps:
        made = subprocess.run(argv, capture_output=True, timeout=120)
        if made.returncode != 0:
            raise Failure(f"openssl could not make the test certificates: {made.stderr.decode()[-300:]}")
    return path("ca.pem"), path("cert.pem"), path("key.pem")


def _http_config(url: str, ignore_tls: bool) -> str:
    return json.dumps({"url": url, "method": "GET", "headers": "", "encoding": "", "body": "",
                       "accepted_statuscodes": ["2XX"], "max_redirects": 0, "ignore_tls_errors": ignore_tls,
                       "authMethod": "none"})


def step_check_http(cmd: list[str], types: list[str], workdir: str) -> None:
    """Plain http against a local server; https against a local self-signed one, which must fail
    certificate verification (so the CA bundle was found and loaded) and pass with ignore_tls_errors."""
    if "http" not in types:
        skip("check http (no http executor in this build)")
        return
    servers = []
    try:
        plain = serve_text(b"peekaping smoke ok")
        servers.append(plain)
        url = f"http://127.0.0.1:{plain.server_address[1]}/"
        out = run(cmd + ["check", "http", _http_config(url, False), "--timeout", "10"], cwd=workdir)
        if out.returncode != 0:
            raise Failure(f"check http {url} exited {out.returncode}: {out.stdout.strip()} {out.stderr.strip()}")
        ok(f"check http: {out.stdout.strip()}")

        openssl = shutil.which("openssl")
        if openssl is None:
            skip("check https (no openssl command to make test certificates)")
            return
        ca, cert, key = make_test_pki(openssl, workdir)
        tls = serve_text(b"peekaping smoke ok", cert, key)
        servers.append(tls)
        url = f"https://127.0.0.1:{tls.server_address[1]}/"
        # 1. the system roots (or the bundled ones) do not know the test CA: a verification failure,
        #    not a missing file or a crash
        out = run(cmd + ["check", "http", _http_config(url, False), "--timeout", "10"], cwd=workdir)
        text = out.stdout + out.stderr
        if (out.returncode != 1 or "certificate" not in text.lower() or "no such file" in text.lower()
                or "Traceback" in text):
            raise Failure(f"check https (unknown CA, verified) should fail certificate verification; exited "
                          f"{out.returncode}: {text.strip()[-1500:]}")
        # 2. trusting the test CA through SSL_CERT_FILE (as Go and OpenSSL do): the check passes
        out2 = run(cmd + ["check", "http", _http_config(url, False), "--timeout", "10"], cwd=workdir,
                   extra_env={"SSL_CERT_FILE": ca})
        if out2.returncode != 0:
            raise Failure(f"check https with SSL_CERT_FILE=<test CA> exited {out2.returncode}: {out2.stdout.strip()} "
                          f"{out2.stderr.strip()}")
        # 3. ignore_tls_errors
        out3 = run(cmd + ["check", "http", _http_config(url, True), "--timeout", "10"], cwd=workdir)
        if out3.returncode != 0:
            raise Failure(f"check https (ignore_tls_errors) exited {out3.returncode}: {out3.stdout.strip()} "
                          f"{out3.stderr.strip()}")
        ok(f"check https: unknown CA -> {out.stdout.strip()[:110]}; SSL_CERT_FILE=test CA -> "
           f"{out2.stdout.strip()}; ignore_tls_errors -> {out3.stdout.strip()}")
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()


async def _wait_for_ingest(redis_url: str, timeout: float, proc: subprocess.Popen) -> tuple[list[bytes], dict]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url, protocol=2)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ids = await client.lrange("asynq:{ingester}:pending", 0, -1)
            if ids:
                tasks = {}
                for tid in ids:
                    tasks[tid.decode()] = await client.hget(f"asynq:{{ingester}}:t:{tid.decode()}", "msg")
                return ids, tasks
            if proc.poll() is not None:
                raise Failure(f"the worker exited ({proc.returncode}) before producing an ingest task")
            await asyncio.sleep(0.05)
        return [], {}
    finally:
        await client.aclose()


async def _server_state(redis_url: str) -> dict[str, list[str]]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url, protocol=2)
    try:
        state = {
            "asynq:servers (zset)": [m.decode() for m in await client.zrange("asynq:servers", 0, -1)],
            "asynq:workers (zset)": [m.decode() for m in await client.zrange("asynq:workers", 0, -1)],
            "server keys": [k.decode() async for k in client.scan_iter("asynq:servers:*")],
            "worker keys": [k.decode() async for k in client.scan_iter("asynq:workers:*")],
            "healthcheck pending": [m.decode() for m in await client.lrange("asynq:{healthcheck}:pending", 0, -1)],
            "healthcheck active": [m.decode() for m in await client.lrange("asynq:{healthcheck}:active", 0, -1)],
            "healthcheck archived": [m.decode() for m in await client.zrange("asynq:{healthcheck}:archived", 0, -1)],
        }
        return state
    finally:
        await client.aclose()


def step_worker(cmd: list[str], workdir: str) -> None:
    from asynq_protocol import TaskMessage

    redis = PrivateRedis()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    log_path = os.path.join(workdir, "worker.log")
    proc = None
    try:
        monitor_id = uuid.uuid4().hex[:24]
        payload = healthcheck_payload(monitor_id, "tcp", {"host": "127.0.0.1", "port": port})
        asyncio.run(enqueue_healthcheck(redis.url, monitor_id, payload))
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd + ["--redis-url", redis.url, "--concurrency", "4", "--shutdown-timeout", "5"],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=clean_env(), cwd=workdir)
        ids, tasks = asyncio.run(_wait_for_ingest(redis.url, INGEST_TIMEOUT, proc))
        if not ids:
            raise Failure(f"no task in asynq:{{ingester}}:pending within {INGEST_TIMEOUT:g} s")
        if len(ids) != 1:
            raise Failure(f"expected one ingest task, found {len(ids)}: {ids}")
        tid, raw = next(iter(tasks.items()))
        if raw is None:
            raise Failure(f"ingest task {tid} has no message hash")
        msg = TaskMessage.FromString(raw)
        body = json.loads(msg.payload)
        want = f"TCP port {port} is open"
        problems = []
        if msg.type != "monitor:ingest" or msg.queue != "ingester":
            problems.append(f"type/queue {msg.type}/{msg.queue}")
        if (msg.retry, msg.timeout, msg.retention) != (3, 120, 3600):
            problems.append(f"retry/timeout/retention {msg.retry}/{msg.timeout}/{msg.retention}")
        if not msg.id.startswith(f"ingest:{monitor_id}:"):
            problems.append(f"task id {msg.id}")
        if body.get("status") != 1 or body.get("message") != want:
            problems.append(f"status/message {body.get('status')!r}/{body.get('message')!r}")
        if body.get("monitor_id") != monitor_id or body.get("monitor_type") != "tcp":
            problems.append(f"monitor {body.get('monitor_id')}/{body.get('monitor_type')}")
        if problems:
            raise Failure(f"ingest task is wrong: {'; '.join(problems)}; payload {body}")
        ok(f"worker: healthcheck task processed, ingest task {msg.id}: status 1, {body['message']!r}, "
            f"ping {body.get('ping_ms')} ms")

        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(30 * SCALE)
        except subprocess.TimeoutExpired:
            kill_tree(proc)
            raise Failure("worker did not exit within 30 s of SIGTERM") from None
        if rc != 0:
            raise Failure(f"worker exited {rc} after SIGTERM")
        state = asyncio.run(_server_state(redis.url))
        left = {k: v for k, v in state.items() if v}
        if left:
            raise Failure(f"left in Redis after shutdown: {left}")
        ok("worker: SIGTERM -> exit 0, server and worker keys removed, healthcheck task gone")
    except Failure:
        if proc is not None and proc.poll() is None:
            kill_tree(proc)
        with open(log_path, errors="replace") as fh:
            sys.stderr.write("---- worker log ----\n" + fh.read()[-6000:] + "---- end of worker log ----\n")
        raise
    finally:
        listener.close()
        redis.close()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    binary = argv[0]
    cmd = command(binary)
    if len(cmd) == 1 and not os.access(cmd[0], os.X_OK):
        print(f"smoke: FAIL {binary} is not an executable file", file=sys.stderr)
        return 1
    workdir = tempfile.mkdtemp(prefix="pw-smoke-")
    started = time.monotonic()
    say(f"testing {binary}")
    try:
        types = step_version(cmd)
        step_bundle(binary)
        step_import_executors(cmd, types, workdir)
        step_check_tcp(cmd, workdir)
        step_refused_checks(cmd, workdir)
        step_check_http(cmd, types, workdir)
        step_worker(cmd, workdir)
    except Failure as exc:
        print(f"smoke: FAIL {exc}", file=sys.stderr, flush=True)
        print(f"smoke: {COUNTS['passed']} passed, 1 failed", flush=True)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    say(f"all checks passed in {time.monotonic() - started:.1f} s")
    # the plain closing line CI logs are read for
    skipped = f", {COUNTS['skipped']} skipped" if COUNTS["skipped"] else ""
    print(f"smoke: {COUNTS['passed']} passed, 0 failed{skipped}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
