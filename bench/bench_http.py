"""HTTP pipeline benchmark: producer-style `http` tasks -> worker subprocess -> results in `ingester`.

  * e2e:    N `http` tasks (the web form's default config) against a fast local HTTP target, drained by
            the worker (`--concurrency C`, MODE=prod LOG_LEVEL=error, its modules byte-compiled as an
            installed worker's are), timed until every result is in `asynq:{ingester}:pending`;
            reports checks/s, worker CPU s per 1,000 checks (= CPU ms per check), peak RSS;
            `--reference REV` alternates these drains with git revision REV's worker, `--runs` times
            each, in the same run (this machine is noisy: compare within a run, not across runs);
  * floor:  the same Redis work without a check (monitors under maintenance), for scale;
  * engine: the executor alone in this process on uvloop (no Redis), C checks in flight;
  * --compare adds the same engine run through aiohttp (a session per check) and httpx over the
    httpx-aiohttp transport (a client per check, shared SSL context), when those are installed;
  * --https runs the engine figures against a TLS target (a new handshake per check, verified).

Every check opens a fresh connection, as the Go worker does.
Usage: python bench/bench_http.py [--tasks 20000] [--concurrency 128] [--engine-only] [--compare] [--https]
                                  [--runs 1] [--reference REV]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, PrivateRedis, drain, free_port, payload  # noqa: E402

RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: 13\r\n\r\n"
            b"Hello, world!")


# --------------------------------------------------------------------------------------------------
# The target: a minimal keep-alive HTTP/1.1 responder on uvloop, in its own process

def serve(port: int, cert: str | None) -> None:
    import ssl

    import uvloop

    class Responder(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport, self.buf = transport, b""

        def data_received(self, data):
            self.buf += data
            while b"\r\n\r\n" in self.buf:
                _, _, self.buf = self.buf.partition(b"\r\n\r\n")
                self.transport.write(RESPONSE)

    async def main():
        ctx = None
        if cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert)
        await asyncio.get_running_loop().create_server(Responder, "127.0.0.1", port, backlog=4096, ssl=ctx)
        print("ready", flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


def start_target(cert: str | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port)] + (["--cert", cert] if cert else []),
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    return proc, port


def make_pki(tmp: Path) -> tuple[str, str]:
    """(CA file, server key+chain file) for a verified HTTPS target on 127.0.0.1."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False).sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    ca_file, server_file = tmp / "ca.pem", tmp / "server.pem"
    ca_file.write_bytes(ca.public_bytes(pem))
    server_file.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
                            + leaf.public_bytes(pem) + ca.public_bytes(pem))
    return str(ca_file), str(server_file)


def form_config(url: str) -> dict:
    """What the web form stores for a new HTTP monitor (spec 7, row `http` F)."""
    return {"url": url, "method": "GET", "headers": '{ "Content-Type": "application/json" }', "encoding": "json",
            "body": "", "accepted_statuscodes": ["2XX"], "max_redirects": 10, "ignore_tls_errors": False,
            "authMethod": "none", "check_cert_expiry": False}


def worker_copy(rev: str | None) -> tuple[list[str], str]:
    """(command, folder): the worker's modules (this tree's, or git revision `rev`'s) copied to a temporary
    folder and byte-compiled, run as the console script runs it. Without .pyc files (PYTHONDONTWRITEBYTECODE)
    the first task of a drain would pay for compiling the executors."""
    folder = tempfile.mkdtemp(prefix="pw-bench-worker-")
    if rev is None:
        for name in os.listdir(ROOT):
            if name.endswith(".py"):
                shutil.copy(ROOT / name, folder)
        shutil.copytree(ROOT / "executors", Path(folder) / "executors", ignore=shutil.ignore_patterns("__pycache__"))
    else:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", folder], stdout=subprocess.DEVNULL, check=False)
    entry = f"import sys; sys.path.insert(0, {folder!r}); from worker import main; sys.exit(main())"
    return [sys.executable, "-c", entry], folder


def e2e_runs(url: str, tasks: int, concurrency: int, runs: int, reference: str | None) -> list[str]:
    """Drains of this tree's worker, alternated with `reference`'s when given; a line per drain and a summary."""
    workers = [("this tree", *worker_copy(None))]
    if reference:
        workers.append((f"git {reference}", *worker_copy(reference)))
    lines, figures = [], {label: [] for label, _, _ in workers}
    redis = PrivateRedis()
    try:
        for run in range(runs):
            for label, cmd, _ in (workers if run % 2 == 0 else workers[::-1]):
                checks = [(f"m{i}", payload(f"m{i}", "http", form_config(url))) for i in range(tasks)]
                fig = drain(redis, checks, concurrency, cmd)
                figures[label].append(fig)
                lines.append(fig.line(f"e2e http, {label}"[:28]))
        floor = drain(redis, [(f"m{i}", payload(f"m{i}", "http", {}, maintenance=True)) for i in range(tasks)],
                      concurrency, workers[0][1])
        lines.append(floor.line("floor (no check, same Redis)"))
    finally:
        redis.close()
        for _, _, folder in workers:
            shutil.rmtree(folder, ignore_errors=True)
    if runs > 1 or reference:
        for label, figs in figures.items():
            cpu = sorted(f.worker_cpu / f.checks * 1000 for f in figs)
            rate = sorted(f.per_second for f in figs)
            lines.append(f"{label}: {rate[0]:,.0f}-{rate[-1]:,.0f} checks/s, worker CPU {cpu[0]:.3f}-{cpu[-1]:.3f} "
                         f"ms per check (median {cpu[len(cpu) // 2]:.3f}), {len(figs)} drains")
    return lines


# --------------------------------------------------------------------------------------------------
# Engine-only runs (this process, uvloop)

async def _ours(url: str):
    from executors import Monitor
    from executors import http as executor

    text = json.dumps(form_config(url))

    async def one(i: int) -> bool:
        r = await executor.check(Monitor(id=str(i), type="http", timeout=16, config=text), None, 16.0)
        return r.status == 1
    return one


async def _aiohttp(url: str):
    import ssl

    import aiohttp

    ctx = ssl.create_default_context()

    async def one(i: int) -> bool:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, ssl=ctx)) as s:
            async with s.get(url) as r:
                await r.read()
                return r.status == 200
    return one


async def _httpx_aiohttp(url: str):
    import ssl

    import httpx_aiohttp

    ctx = ssl.create_default_context()

    async def one(i: int) -> bool:
        async with httpx_aiohttp.HttpxAiohttpClient(verify=ctx) as c:
            r = await c.get(url)
            return r.status_code == 200
    return one


def engine(kind: str, url: str, n: int, concurrency: int) -> str:
    import uvloop

    async def main() -> str:
        one = await {"ours": _ours, "aiohttp": _aiohttp, "httpx+httpx-aiohttp": _httpx_aiohttp}[kind](url)
        gate = asyncio.Semaphore(concurrency)

        async def guarded(i: int) -> bool:
            async with gate:
                return await one(i)

        await asyncio.gather(*(guarded(i) for i in range(min(n, 500))))  # warm up: imports, contexts
        started, cpu = time.perf_counter(), time.process_time()
        ok = await asyncio.gather(*(guarded(i) for i in range(n)))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        assert all(ok), f"{ok.count(False)} checks failed"
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return (f"{'engine ' + kind:<28} {n / elapsed:9.0f} checks/s   {cpu / n * 1000:6.2f} CPU s/1000"
                f"   peak RSS {rss:5.1f} MB")

    return uvloop.run(main())


def engine_in_subprocess(kind: str, url: str, n: int, concurrency: int, env: dict) -> str:
    """Each engine in a fresh process, so imports and peak RSS do not mix."""
    out = subprocess.run([sys.executable, __file__, "--engine-run", kind, "--url", url, "--tasks", str(n),
                          "--concurrency", str(concurrency)], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        return f"{'engine ' + kind:<28} skipped: {out.stderr.strip().splitlines()[-1] if out.stderr else '?'}"
    return out.stdout.strip()


# --------------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--engine-only", action="store_true", help="skip the Redis pipeline runs")
    parser.add_argument("--compare", action="store_true", help="also time aiohttp and httpx+httpx-aiohttp")
    parser.add_argument("--https", action="store_true", help="engine runs against a verified TLS target")
    parser.add_argument("--runs", type=int, default=1, help="e2e drains per worker (alternated with --reference)")
    parser.add_argument("--reference", metavar="REV", help="also drain with git revision REV's worker (baseline)")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cert", help=argparse.SUPPRESS)
    parser.add_argument("--engine-run", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve, args.cert)
    if args.engine_run:
        print(engine(args.engine_run, args.url, args.tasks, args.concurrency))
        return

    env = dict(os.environ)
    cert = None
    if args.https:
        ca, cert = make_pki(Path(tempfile.mkdtemp(prefix="pw-bench-pki-")))
        env["SSL_CERT_FILE"] = ca
    target, port = start_target(cert)
    url = f"{'https' if args.https else 'http'}://127.0.0.1:{port}/"
    lines = [f"{args.tasks} checks, concurrency {args.concurrency}, {os.cpu_count()} CPUs, target {url} "
             "(fresh connection per check)"]
    try:
        if not args.engine_only and not args.https:
            lines += e2e_runs(url, args.tasks, args.concurrency, max(1, args.runs), args.reference)
        kinds = ["ours"] + (["aiohttp", "httpx+httpx-aiohttp"] if args.compare else [])
        for kind in kinds:
            lines.append(engine_in_subprocess(kind, url, args.tasks, args.concurrency, env))
    finally:
        target.terminate()
        target.wait()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
