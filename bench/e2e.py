"""End-to-end worker benchmark: producer-style tasks -> worker -> results in the ingester queue.

Runs two drains in one process against one private redis-server:
  * tcp:   every task is a TCP check against a local listener (accept, close);
  * floor: the same Redis work with no check (monitors under maintenance: dequeue, result enqueue, done).
Usage: python bench/e2e.py [--tasks 20000] [--concurrency 128]
"""

from __future__ import annotations

import argparse
import os
import socket
import threading

from common import PrivateRedis, drain, payload


def listener() -> int:
    """A local TCP target that accepts and closes as fast as the kernel lets it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)

    def serve() -> None:
        while True:
            conn, _ = sock.accept()
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=128)
    args = parser.parse_args()
    port = listener()
    redis = PrivateRedis()
    try:
        tcp = drain(redis, [(f"m{i}", payload(f"m{i}", "tcp", {"host": "127.0.0.1", "port": port}))
                            for i in range(args.tasks)], args.concurrency)
        floor = drain(redis, [(f"m{i}", payload(f"m{i}", "tcp", {}, maintenance=True)) for i in range(args.tasks)],
                      args.concurrency)
    finally:
        redis.close()
    print(f"{args.tasks} tasks, concurrency {args.concurrency}, {os.cpu_count()} CPUs")
    print(tcp.line("tcp checks"))
    print(floor.line("floor (no check, same Redis)"))
    print(f"tcp / floor throughput: {tcp.per_second / floor.per_second:.2f}")


if __name__ == "__main__":
    main()
