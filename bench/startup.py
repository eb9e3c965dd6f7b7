"""Start-up figures of the built worker: file size, `--version` time (cold and warm), time from process
start to first dequeue against a local Redis, idle memory after 10 s; then idle memory of the installed
worker too, and for both the memory after the first check of each executor family (tcp, http, https).

    build/venv-binary/bin/python bench/startup.py [dist/peekaping-worker] [--runs 5] [--strict]
        [--installed CMD | --no-installed] [--reference REV]

`--installed` defaults to `.venv/bin/peekaping-worker` (else `python worker.py` with this interpreter).
`--reference REV` also measures the worker of git revision REV (extracted with `git archive`, byte-compiled,
started as the console script starts it, with the installed worker's interpreter): a baseline measured in
the same run.
Memory is VmRSS summed over the whole process tree (a one-file binary is two processes: the bootloader
and the Python child), after `--idle` seconds; per family, 2 s after the check's result is in the
ingester queue. The https check runs against a local self-signed server with `ignore_tls_errors`
(needs the openssl command; skipped without it).

BINARY may also be a command line ("python3 dist/peekaping-worker.pyz"). Needs redis-server on PATH and
an interpreter with redis + protobuf (it enqueues through the project's asynq_protocol client): the
binary build's venv or the test venv will do. Everything runs on loopback against a private
redis-server on a free port.

Cold runs: the page cache is dropped before each (`sync; echo 3 > /proc/sys/vm/drop_caches`, root
only); where that is refused, the binary's own pages are evicted with posix_fadvise(DONTNEED) and the
output says so. A PyInstaller one-file binary unpacks itself into a fresh temporary folder on every
start, so every run, warm or cold, pays the unpacking.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, ROOT)

from smoke_binary import (PrivateRedis, clean_env, command, enqueue_healthcheck,  # noqa: E402
                          healthcheck_payload, kill_tree)

TARGETS = {"size": 40e6, "version_cold": 1.0, "first_dequeue": 1.5, "idle_rss": 32e6}
# Before issue 8's memory work (commit f025a4a, this machine): idle RSS of the whole process tree.
PREVIOUS = {"binary": "42.5 MB (f025a4a: 1.9 + 38.6 MiB; README said 42.1)",
            "installed": "39.1 MB (f025a4a, see --reference)"}
STOPS = {"clean": 0, "hung": 0}  # workers stopped with SIGTERM: exited within 30 s, or had to be killed


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
        STOPS["clean"] += 1
    except subprocess.TimeoutExpired:
        kill_tree(proc)  # the whole tree: a one-file binary's worker is the bootloader's child
        STOPS["hung"] += 1


def drop_caches(files: list[str]) -> str:
    """Make the next start cold; returns how."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return "page cache dropped"
    except OSError:
        for path in files:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        return "binary's pages evicted (fadvise)"


def time_version(cmd: list[str]) -> float:
    start = time.perf_counter()
    out = subprocess.run(cmd + ["--version"], capture_output=True, env=clean_env(), stdin=subprocess.DEVNULL)
    took = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"--version failed: {out.stderr.decode(errors='replace')}")
    return took


class Resp:
    """A bare RESP connection, so that polling costs the worker under test next to nothing."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.file = self.sock.makefile("rb")

    def llen(self, key: str) -> int:
        k = key.encode()
        self.sock.sendall(b"*2\r\n$4\r\nLLEN\r\n$%d\r\n%s\r\n" % (len(k), k))
        line = self.file.readline()
        if not line.startswith(b":"):
            raise RuntimeError(f"unexpected reply {line!r}")
        return int(line[1:])

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def tree_pids(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(name))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += children.get(pid, [])
    return pids


def memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes of one process."""
    rss = pss = 0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    except OSError:
        pss = rss
    return rss, pss


def first_dequeue(cmd: list[str], cold_files: list[str] | None) -> tuple[float, float, str]:
    """Seconds from Popen to the task leaving `pending`, and to its result in the ingester queue."""
    redis = PrivateRedis()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="pw-bench-")
    proc = None
    how = "warm"
    try:
        monitor_id = uuid.uuid4().hex[:24]
        asyncio.run(enqueue_healthcheck(redis.url, monitor_id,
                                        healthcheck_payload(monitor_id, "tcp", {"host": "127.0.0.1", "port": port})))
        poll = Resp(redis.port)
        if poll.llen("asynq:{healthcheck}:pending") != 1:
            raise SystemExit("the task was not pending before the start")
        if cold_files is not None:
            how = drop_caches(cold_files)
        start = time.perf_counter()
        proc = subprocess.Popen(cmd + ["--redis-url", redis.url], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=clean_env(), cwd=workdir)
        dequeued = result = None
        while time.perf_counter() - start < 30:
            now = time.perf_counter() - start
            if dequeued is None and poll.llen("asynq:{healthcheck}:pending") == 0:
                dequeued = now
            if dequeued is not None and poll.llen("asynq:{ingester}:pending") > 0:
                result = now
                break
            if proc.poll() is not None:
                raise SystemExit(f"the worker exited ({proc.returncode})")
            time.sleep(0.002)
        poll.close()
        if dequeued is None or result is None:
            raise SystemExit("the task was not processed within 30 s")
        return dequeued, result, how
    finally:
        if proc is not None:
            stop(proc)
        listener.close()
        redis.close()


def tree_memory(proc: subprocess.Popen) -> tuple[int, int, list[tuple[int, int]]]:
    if proc.poll() is not None:
        raise SystemExit(f"the worker exited ({proc.returncode})")
    each = [(pid, *memory(pid)) for pid in tree_pids(proc.pid)]
    return sum(m[1] for m in each), sum(m[2] for m in each), [(m[0], m[1]) for m in each]


def idle_memory(cmd: list[str], seconds: float) -> tuple[int, int, list[tuple[int, int]]]:
    return family_memory(cmd, seconds, families=False)["idle"]


class Targets:
    """Local check targets: a TCP listener, a plain HTTP server and (with openssl) a self-signed HTTPS one."""

    def __init__(self) -> None:
        import shutil

        from smoke_binary import make_test_pki, serve_text

        self.dir = tempfile.mkdtemp(prefix="pw-bench-pki-")
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.servers = [serve_text(b"peekaping bench ok")]
        self.https_url = None
        openssl = shutil.which("openssl")
        if openssl:
            _, cert, key = make_test_pki(openssl, self.dir)
            self.servers.append(serve_text(b"peekaping bench ok", cert, key))
            self.https_url = f"https://127.0.0.1:{self.servers[-1].server_address[1]}/"
        self.http_url = f"http://127.0.0.1:{self.servers[0].server_address[1]}/"

    def config(self, family: str) -> tuple[str, dict] | None:
        if family == "tcp":
            return "tcp", {"host": "127.0.0.1", "port": self.listener.getsockname()[1]}
        url = self.http_url if family == "http" else self.https_url
        if url is None:
            return None
        return "http", {"url": url, "method": "GET", "headers": "", "encoding": "", "body": "",
                        "accepted_statuscodes": ["2XX"], "max_redirects": 0, "ignore_tls_errors": True,
                        "authMethod": "none"}

    def close(self) -> None:
        import shutil

        for server in self.servers:
            server.shutdown()
            server.server_close()
        self.listener.close()
        shutil.rmtree(self.dir, ignore_errors=True)


FAMILIES = ("tcp", "http", "https")


def family_memory(cmd: list[str], seconds: float, families: bool = True, settle: float = 2.0,
                  env: dict[str, str] | None = None) -> dict[str, tuple[int, int, list[tuple[int, int]]] | None]:
    """Tree memory of one worker: idle after `seconds`, then `settle` s after the result of its first
    tcp, http and https check (each family's executor is imported on that first check)."""
    redis = PrivateRedis()
    targets = Targets() if families else None
    workdir = tempfile.mkdtemp(prefix="pw-bench-")
    proc = subprocess.Popen(cmd + ["--redis-url", redis.url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, env=env or clean_env(), cwd=workdir)
    out: dict[str, tuple[int, int, list[tuple[int, int]]] | None] = {}
    try:
        time.sleep(seconds)
        out["idle"] = tree_memory(proc)
        if targets is None:
            return out
        poll = Resp(redis.port)
        try:
            for family in FAMILIES:
                check = targets.config(family)
                if check is None:
                    out[family] = None
                    continue
                before = poll.llen("asynq:{ingester}:pending")
                monitor_id = uuid.uuid4().hex[:24]
                asyncio.run(enqueue_healthcheck(redis.url, monitor_id, healthcheck_payload(monitor_id, *check)))
                deadline = time.monotonic() + 30
                while poll.llen("asynq:{ingester}:pending") <= before:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"the {family} check gave no result within 30 s")
                    if proc.poll() is not None:
                        raise SystemExit(f"the worker exited ({proc.returncode})")
                    time.sleep(0.01)
                time.sleep(settle)
                out[family] = tree_memory(proc)
        finally:
            poll.close()
        return out
    finally:
        stop(proc)
        if targets is not None:
            targets.close()
        redis.close()


def installed_command() -> list[str]:
    script = os.path.join(ROOT, ".venv", "bin", "peekaping-worker")
    if os.path.exists(script):
        return [script]
    return [sys.executable, os.path.join(ROOT, "worker.py")]


def reference_command(rev: str, python: str) -> tuple[list[str], str]:
    """The worker of git revision `rev`, extracted into a temporary folder, run with `python`."""
    folder = tempfile.mkdtemp(prefix="pw-bench-ref-")
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    compile_sources(python, folder)
    # as the console script runs it (`from worker import main`): `python worker.py` would compile worker.py
    # from source at every start (~1 MB more RSS)
    entry = f"import sys; sys.path.insert(0, {folder!r}); sys.argv[0] = 'peekaping-worker'; " \
            "from worker import main; sys.exit(main())"
    return [os.path.abspath(python) if os.sep in python else python, "-c", entry], folder


def compile_sources(python: str, folder: str) -> None:
    """Byte-compile the project's modules, as `pip install` does: with PYTHONDONTWRITEBYTECODE set and no
    __pycache__, every start would compile them from source, which leaves ~1 MB more RSS behind."""
    names = [os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".py")]
    names.append(os.path.join(folder, "executors"))
    subprocess.run([python, "-m", "compileall", "-q", *names], stdout=subprocess.DEVNULL, check=False)


def print_families(label: str, figures: dict, reference: dict | None = None) -> None:
    idle = figures["idle"][0]
    parts = []
    for family in FAMILIES:
        fig = figures.get(family)
        if fig is None:
            parts.append(f"{family} skipped")
            continue
        ref = reference.get(family) if reference else None
        parts.append(f"{family} {fig[0] / 1e6:.1f} MB (+{(fig[0] - idle) / 1e6:.1f})"
                     + (f" [ref {ref[0] / 1e6:.1f}]" if ref else ""))
    print(f"  after first check  {label}: " + ", ".join(parts))


def python_of(cmd: list[str]) -> str:
    """The interpreter an installed-worker command runs with (its shebang, or the command itself)."""
    first = cmd[0]
    if first.endswith(".py") or "python" in os.path.basename(first):
        return first
    try:
        with open(first, "rb") as fh:
            line = fh.readline().decode()
        if line.startswith("#!"):
            return line[2:].split()[0]
    except OSError:
        pass
    return sys.executable


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB ({n / 1048576:.1f} MiB)"


def verdict(value: float, target: float) -> str:
    return "ok" if value <= target else "MISSED"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("binary", nargs="?", default=os.path.join(ROOT, "dist", "peekaping-worker"))
    parser.add_argument("--runs", type=int, default=5, help="warm runs per figure (default 5)")
    parser.add_argument("--cold-runs", type=int, default=3, help="cold runs per figure (default 3)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds before reading idle memory (default 10)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--installed", help="command of the installed worker (default .venv/bin/peekaping-worker)")
    parser.add_argument("--no-installed", action="store_true", help="measure the binary only")
    parser.add_argument("--reference", metavar="REV", help="also measure git revision REV's worker (baseline)")
    args = parser.parse_args()

    cmd = command(args.binary)
    files = [p for p in cmd if os.path.isfile(p)]
    size_file = files[-1] if files else None
    missed = []
    print(f"startup bench: {' '.join(cmd)}  ({os.uname().machine}, {os.cpu_count()} CPUs)")

    if size_file:
        size = os.path.getsize(size_file)
        missed += [] if size <= TARGETS["size"] else ["size"]
        print(f"  size               {size:,} bytes = {mb(size)}   target <= 40 MB: {verdict(size, TARGETS['size'])}")

    cold = []
    how = ""
    for _ in range(args.cold_runs):
        how = drop_caches(files)
        cold.append(time_version(cmd))
    warm = [time_version(cmd) for _ in range(args.runs)]
    v_cold = statistics.median(cold)
    missed += [] if v_cold <= TARGETS["version_cold"] else ["--version cold"]
    print(f"  --version cold     median {v_cold:.3f} s, max {max(cold):.3f} s of {len(cold)} ({how})"
          f"   target < 1.0 s: {verdict(v_cold, TARGETS['version_cold'])}")
    print(f"  --version warm     median {statistics.median(warm):.3f} s, min {min(warm):.3f} s of {len(warm)}")

    cold_dq = [first_dequeue(cmd, files) for _ in range(args.cold_runs)]
    warm_dq = [first_dequeue(cmd, None) for _ in range(args.runs)]
    dq_cold = statistics.median(d for d, _, _ in cold_dq)
    dq_warm = statistics.median(d for d, _, _ in warm_dq)
    missed += [] if dq_cold <= TARGETS["first_dequeue"] else ["first dequeue"]
    print(f"  first dequeue      cold median {dq_cold:.3f} s (max {max(d for d, _, _ in cold_dq):.3f}), "
          f"warm median {dq_warm:.3f} s   target < 1.5 s: {verdict(dq_cold, TARGETS['first_dequeue'])}")
    print(f"  first result       cold median {statistics.median(r for _, r, _ in cold_dq):.3f} s, "
          f"warm median {statistics.median(r for _, r, _ in warm_dq):.3f} s "
          f"(tcp executor imported, check run, ingest task written)")

    ref_figures = None
    ref_folder = None
    installed = None if args.no_installed else (shlex.split(args.installed) if args.installed else installed_command())
    if args.reference:
        ref_cmd, ref_folder = reference_command(args.reference, python_of(installed) if installed else sys.executable)
        ref_figures = family_memory(ref_cmd, args.idle)
    if installed:
        compile_sources(python_of(installed), ROOT)
    runs = [("binary", cmd)] + ([("installed", installed)] if installed else [])
    for label, run_cmd in runs:
        figures = family_memory(run_cmd, args.idle)
        rss, pss, each = figures["idle"]
        missed += [] if rss <= TARGETS["idle_rss"] else [f"idle RSS ({label})"]
        parts = " + ".join(f"{r / 1048576:.1f}" for _, r in each)
        print(f"  idle RSS ({args.idle:g} s)    {label}: {mb(rss)} for {len(each)} process(es) [{parts} MiB], "
              f"PSS {mb(pss)}   target <= 32 MB: {verdict(rss, TARGETS['idle_rss'])}   "
              f"before: {PREVIOUS[label]}" + (f"; {os.path.basename(run_cmd[0])}" + (" -c …" if "-c" in run_cmd else "")
                                              if label == "installed" else ""))
        print_families(label, figures, ref_figures)
    if ref_figures is not None:
        print(f"  reference          git {args.reference} (source, installed worker's interpreter): "
              f"idle {mb(ref_figures['idle'][0])}")
        print_families("reference", ref_figures)
        import shutil
        shutil.rmtree(ref_folder, ignore_errors=True)
    total = STOPS["clean"] + STOPS["hung"]
    print(f"  SIGTERM            {STOPS['clean']} of {total} workers exited within 30 s"
          + (f"; {STOPS['hung']} hung and were killed" if STOPS["hung"] else ""))
    missed += ["clean shutdown"] if STOPS["hung"] else []
    if missed:
        print(f"  missed: {', '.join(missed)}")
    return 1 if missed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
