"""Every figure issue 8 asks for, in one run, each beside a reference worker measured in the same run.

The reference is the worker of git revision REV (default f025a4a, the last commit before the timing,
CPU, memory and pickup work), extracted with `git archive` and run with the same interpreter; the
harness (targets, enqueueing, reading results) is this tree's for both. A Go worker cannot be built on
this machine (no Go toolchain), so the old worker is the baseline.

  1. fidelity    `http` checks against a target answering after exactly 100 ms, at 128 and 32 in flight:
                 ping_ms - 100 at p50/p90/p99/max (target: p99 <= 5 ms at 128, <= 3 ms at 32);
  2. throughput  `http` checks against a fast local target (the web form's config), concurrency 128,
                 worker and reference alternating: checks/s and worker CPU ms per check (target: below
                 0.31 ms, the lowest this worker measured when the issue was filed);
  3. idle RSS    the whole process tree 10 s after start: the installed worker (console script), the
                 binary when built, the reference (target: <= 32 MB);
  4. pickup      enqueue -> dequeue at idle, median and max, and the Redis commands per second an idle
                 worker sends (target: median <= 50 ms, no more than 14.9 commands/s).

    python bench/report.py [--reference REV] [--checks 3000] [--tasks 20000] [--runs 3] [--rounds 30]
        [--binary dist/peekaping-worker] [--skip fidelity,throughput,memory,pickup]

Takes about 6 minutes with the defaults. Needs redis-server on PATH and git.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, PrivateRedis, drain, payload  # noqa: E402

import bench_http  # noqa: E402
import fidelity  # noqa: E402
import pickup  # noqa: E402
import startup  # noqa: E402

TARGETS = {"p99_128": 5, "p99_32": 3, "cpu_ms": 0.31, "idle_mb": 32.0, "pickup_ms": 50.0, "idle_cmds": 14.9}


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def p99_excess(pings: list[int]) -> int:
    excess = sorted(p - 100 for p in pings)
    return excess[min(len(excess) - 1, int(0.99 * len(excess)))]


def section_fidelity(trees: dict[str, Path], checks: int) -> list[str]:
    target = fidelity.start(["--serve-http", str(port := fidelity.free_port())])
    config = {"url": f"http://127.0.0.1:{port}/", "method": "GET", "accepted_statuscodes": ["2XX"],
              "max_redirects": 10, "authMethod": "none"}
    redis = PrivateRedis()
    lines = [f"1. fidelity: {checks} http checks per row, target answers after 100 ms; ping_ms - 100 (ms)",
             f"   {'':<10} {'in flight':>9}   p50  p90  p99  max   checks/s"]
    try:
        for concurrency, limit in ((128, TARGETS["p99_128"]), (32, TARGETS["p99_32"])):
            for label, root in trees.items():
                pings, rate = fidelity.run(redis, "http", config, checks, concurrency, False, root)
                mark = f"   p99 <= {limit}: {verdict(p99_excess(pings) <= limit)}" if label == "this tree" else ""
                lines.append(f"   {label:<10} {concurrency:9d}  {fidelity.quantiles(pings)}   {rate:7.0f}{mark}")
                print(lines[-1], flush=True)
    finally:
        redis.close()
        target.terminate()
        target.wait()
    return lines


def section_throughput(reference: str, tasks: int, runs: int) -> list[str]:
    """Each worker runs from a byte-compiled copy (bench_http.worker_copy): with PYTHONDONTWRITEBYTECODE
    set, a worker run from the tree would compile its executors inside the measured window."""
    copies = {"this tree": bench_http.worker_copy(None), "reference": bench_http.worker_copy(reference)}
    target, port = bench_http.start_target()
    config = bench_http.form_config(f"http://127.0.0.1:{port}/")
    redis = PrivateRedis()
    per: dict[str, list[tuple[float, float]]] = {label: [] for label in copies}
    lines = [f"2. throughput: {tasks} http checks per run, concurrency 128, {runs} alternated runs",
             f"   {'':<10} {'checks/s':>9} {'CPU ms/check':>13}"]
    try:
        for _ in range(runs):
            for label, (command, _) in copies.items():
                figures = drain(redis, [(f"m{i}", payload(f"m{i}", "http", config)) for i in range(tasks)], 128,
                                command)
                per[label].append((figures.per_second, figures.worker_cpu / figures.checks * 1000))
                lines.append(f"   {label:<10} {per[label][-1][0]:9.0f} {per[label][-1][1]:13.3f}")
                print(lines[-1], flush=True)
    finally:
        redis.close()
        target.terminate()
        target.wait()
        for _, folder in copies.values():
            shutil.rmtree(folder, ignore_errors=True)
    for label, rows in per.items():
        cpu = statistics.median(r[1] for r in rows)
        mark = f"   below {TARGETS['cpu_ms']}: {verdict(cpu < TARGETS['cpu_ms'])}" if label == "this tree" else ""
        lines.append(f"   {label:<10} median {statistics.median(r[0] for r in rows):6.0f} checks/s, {cpu:.3f} CPU ms"
                     f"/check{mark}")
    return lines


def section_memory(commands: dict[str, list[str]]) -> list[str]:
    lines = ["3. idle memory: RSS (PSS) of the whole process tree, 10 s after start"]
    for label, cmd in commands.items():
        rss, pss, _ = startup.idle_memory(cmd, 10.0)
        mark = "" if label == "reference" else f"   <= {TARGETS['idle_mb']:g} MB: {verdict(rss / 1e6 <= TARGETS['idle_mb'])}"
        lines.append(f"   {label:<10} {rss / 1e6:5.1f} MB ({pss / 1e6:5.1f} MB){mark}")
        print(lines[-1], flush=True)
    return lines


def section_pickup(trees: dict[str, Path], rounds: int, idle: float) -> list[str]:
    import redis as syncredis

    lines = [f"4. pickup at idle: queue healthcheck:5, {rounds} single tasks at random moments; MONITOR for {idle:g} s"]
    server = PrivateRedis()
    try:
        for label, root in trees.items():
            syncredis.Redis.from_url(server.url).flushdb()
            sent, _, _, to_dequeue, _ = pickup.measure(server, "healthcheck:5", True, idle, rounds, root=root)
            median = statistics.median(to_dequeue)
            mark = (f"   median <= {TARGETS['pickup_ms']:g} ms: {verdict(median <= TARGETS['pickup_ms'])}, "
                    f"<= {TARGETS['idle_cmds']} commands/s: {verdict(sent <= TARGETS['idle_cmds'])}"
                    if label == "this tree" else "")
            lines.append(f"   {label:<10} median {median:6.1f} ms  max {max(to_dequeue):7.1f} ms  "
                         f"idle {sent:5.2f} commands/s{mark}")
            print(lines[-1], flush=True)
    finally:
        server.close()
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", default="f025a4a", metavar="REV")
    parser.add_argument("--checks", type=int, default=3000, help="fidelity checks per row")
    parser.add_argument("--tasks", type=int, default=20000, help="throughput checks per run")
    parser.add_argument("--runs", type=int, default=3, help="alternated throughput runs")
    parser.add_argument("--rounds", type=int, default=30, help="pickup rounds")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of MONITOR for idle commands/s")
    parser.add_argument("--binary", default=str(ROOT / "dist" / "peekaping-worker"))
    parser.add_argument("--skip", default="", help="comma-separated sections to leave out")
    args = parser.parse_args()
    if not shutil.which("redis-server"):
        raise SystemExit("redis-server is not on PATH")
    skip = set(filter(None, args.skip.split(",")))
    ref_cmd, ref_folder = startup.reference_command(args.reference, sys.executable)
    trees = {"this tree": ROOT, "reference": Path(ref_folder)}
    print(f"reference: git {args.reference}; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}", flush=True)
    report: list[str] = []
    try:
        if "fidelity" not in skip:
            report += section_fidelity(trees, args.checks)
        if "throughput" not in skip:
            report += section_throughput(args.reference, args.tasks, args.runs)
        if "memory" not in skip:
            commands = {"installed": startup.installed_command()}
            if os.path.exists(args.binary):
                commands["binary"] = [os.path.abspath(args.binary)]
            commands["reference"] = ref_cmd
            report += section_memory(commands)
        if "pickup" not in skip:
            report += section_pickup(trees, args.rounds, args.idle)
    finally:
        shutil.rmtree(ref_folder, ignore_errors=True)
    print("\n" + "\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
