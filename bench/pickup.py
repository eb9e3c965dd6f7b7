"""Pickup latency and Redis commands of an idle worker, with the 1 s poll (Go's) as the reference.

For each mode a worker process is started against a private redis-server and left idle; then:
  * commands/s: every command the idle worker sends over `--idle` seconds, read with MONITOR
    ("sent" = commands on its connections, "run" = those plus the commands inside its Lua scripts);
  * pickup: `--rounds` times, one task (a monitor under maintenance: no check) is enqueued into the
    empty healthcheck queue at a random moment; the time until its task hash says `active` (dequeued)
    and until its result is in the ingester queue.
Modes: `poll` (the wake-up disabled: the worker sleeps 0.5 s + U[0, 1 s) whenever every queue is empty,
as asynq does) and `wake` (the default worker).
Usage: python bench/pickup.py [--rounds 30] [--idle 20] [--queues healthcheck:5] [--modes poll,wake] [--paused low]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time

from common import ROOT, PrivateRedis, payload

# The worker as `peekaping-worker` runs it; `poll` turns the wake-up off first.
LAUNCH = ("import sys, worker; worker.Server.WAKE_ON_PUSH = {wake}; "
          "sys.argv[0] = 'peekaping-worker'; sys.exit(worker.main(sys.argv[1:]))")


def start(url: str, queues: str, wake: bool, root=ROOT) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    env.update(MODE="prod", LOG_LEVEL="error")
    return subprocess.Popen([sys.executable, "-c", LAUNCH.format(wake=wake), "--redis-url", url, "--queues", queues],
                            cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def count_commands(port: int, seconds: float) -> tuple[float, float, dict]:
    """(sent/s, run/s, {command: count}) of every client but this one, read with MONITOR."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"MONITOR\r\n")
    sock.settimeout(0.2)
    data, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            break
        data += chunk
    sock.close()
    sent = run = 0
    names: dict[str, int] = {}
    for line in data.split(b"\r\n")[1:]:  # the first line is MONITOR's +OK
        if not line.startswith(b"+") or b"] " not in line:
            continue
        where, command = line.split(b"] ", 1)
        name = command.split(b'"')[1].decode().lower()
        run += 1
        if b" lua" not in where:
            sent += 1
            names[name] = names.get(name, 0) + 1
    return sent / seconds, run / seconds, names


def pickup_rounds(url: str, rounds: int) -> tuple[list[float], list[float]]:
    """(enqueue-to-dequeue, enqueue-to-result) in ms for `rounds` single tasks enqueued at random moments."""
    return asyncio.run(_rounds(url, rounds))


async def _rounds(url: str, rounds: int) -> tuple[list[float], list[float]]:
    import redis as syncredis
    import redis.asyncio as aioredis

    import asynq_protocol as aq

    client = aioredis.Redis.from_url(url, protocol=2)
    broker = aq.Broker(client)
    await client.ping()  # the connection the enqueues use is open before the first one
    watcher_client = syncredis.Redis.from_url(url)
    to_dequeue, to_result = [], []
    for i in range(rounds):
        await asyncio.sleep(random.uniform(0.8, 2.2))  # a random phase against the worker's poll
        mid = f"pickup-{i}"
        key = aq.task_key("healthcheck", f"healthcheck:{mid}")
        results = watcher_client.llen("asynq:{ingester}:pending")
        stamps: dict[str, float] = {}

        def watch() -> None:  # reads on its own connection from before the enqueue until the result
            pipe = watcher_client.pipeline(transaction=False)
            deadline = time.perf_counter() + 10
            while time.perf_counter() < deadline:
                state, n = pipe.hget(key, "state").llen("asynq:{ingester}:pending").execute()
                now = time.perf_counter()
                if state == b"pending":
                    stamps["pending"] = now
                elif "dequeue" not in stamps and "pending" in stamps:  # active, or already done and deleted
                    stamps["dequeue"] = now
                if n > results:
                    stamps["result"] = now
                    return

        watcher = threading.Thread(target=watch)
        watcher.start()
        stamps["sent"] = time.perf_counter()
        await aq.Client(broker).enqueue("monitor:healthcheck", payload(mid, "tcp", {}, maintenance=True),
                                        queue="healthcheck", max_retry=0, timeout=16, retention=0, unique_ttl=120,
                                        task_id=f"healthcheck:{mid}")
        await asyncio.to_thread(watcher.join)
        if "result" not in stamps:
            raise RuntimeError(f"round {i}: no result within 10 s")
        stamps.setdefault("dequeue", stamps["result"])  # taken and done between two reads
        to_dequeue.append((stamps["dequeue"] - stamps["sent"]) * 1000)
        to_result.append((stamps["result"] - stamps["sent"]) * 1000)
    watcher_client.close()
    await broker.close()
    await client.aclose()
    return to_dequeue, to_result


def measure(server: PrivateRedis, queues: str, wake: bool, idle: float, rounds: int,
            root=ROOT) -> tuple[float, float, dict, list[float], list[float]]:
    """Start a worker (of the tree at `root`) on `server`, wait until it has registered and is past its
    start-up, then read its idle commands for `idle` seconds and time `rounds` pickups; stop it.
    (sent/s, run/s, {command: count}, enqueue-to-dequeue ms, enqueue-to-result ms)."""
    import redis as syncredis

    proc = start(server.url, queues, wake=wake, root=root)
    try:
        r = syncredis.Redis.from_url(server.url)
        while not r.zcard("asynq:servers"):
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode())
            time.sleep(0.05)
        time.sleep(3)  # past start-up and the first round of every periodic job
        sent, run, names = count_commands(server.port, idle)
        to_dequeue, to_result = pickup_rounds(server.url, rounds)
    finally:
        proc.terminate()
        proc.wait(30)
    return sent, run, names, to_dequeue, to_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of MONITOR per mode")
    parser.add_argument("--queues", default="healthcheck:5")
    parser.add_argument("--modes", default="poll,wake")
    parser.add_argument("--paused", default="", help="queues to pause before each worker starts (not healthcheck)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import redis as syncredis

    server = PrivateRedis()
    lines = []
    try:
        for mode in args.modes.split(","):
            syncredis.Redis.from_url(server.url).flushdb()
            for queue in filter(None, args.paused.split(",")):
                syncredis.Redis.from_url(server.url).set(f"asynq:{{{queue}}}:paused", 1)
            sent, run, names, to_dequeue, to_result = measure(server, args.queues, mode == "wake", args.idle,
                                                              args.rounds)
            top = ", ".join(f"{n} {c / args.idle:.2f}" for n, c in sorted(names.items(), key=lambda x: -x[1]))
            lines.append(f"{mode:<5} enqueue->dequeue median {statistics.median(to_dequeue):6.1f} ms  max "
                         f"{max(to_dequeue):6.1f} ms | enqueue->result median {statistics.median(to_result):6.1f} ms"
                         f"  max {max(to_result):6.1f} ms | idle: {sent:5.2f} commands/s sent, {run:5.2f}/s run"
                         f" with script-internal ones\n      sent per second: {top}")
    finally:
        server.close()
    print(f"queues {args.queues}{', paused ' + args.paused if args.paused else ''}, {args.rounds} rounds, {args.idle:g} s idle window, {os.cpu_count()} CPUs")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
