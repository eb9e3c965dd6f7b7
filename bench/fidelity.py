"""Timing fidelity under load: how far `ping_ms` strays from a target's fixed 100 ms answer time.

  * http: N `http` checks through the worker (subprocess, private redis-server) against a target process
          that answers every request exactly 100 ms after reading it (uvloop, its own process, so the
          worker's loop adds nothing to the target's timing);
  * tcp:  N `tcp` checks against an address routed into a TUN device whose reader (a process of its own)
          answers each SYN with a SYN-ACK 100 ms later and any later segment with a RST: a delayed
          handshake, not a delayed accept (netem, the simpler way, is not in this kernel). Needs root
          and `ip`; skipped otherwise.

Each configuration runs with the worker's timing as built (`kernel/callback`) and, as the reference in
the same run, with PEEKAPING_COARSE_TIMING=1 (clock read when the check's coroutine resumes, as before),
alternating, `--runs` times. Printed: p50/p90/p99/max of ping_ms - 100 per run.
Usage: python bench/fidelity.py [--checks 3000] [--concurrency 128 32] [--runs 3] [--types http tcp]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, PrivateRedis, drain, free_port, payload  # noqa: E402

DELAY = 0.100
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
TUN, HOST_IP, NS_IP = "pwfid0", "10.213.77.1", "10.213.77.2"  # the TUN device, its address, the target


# --------------------------------------------------------------------------------------------------
# Targets

class Sender:
    """A thread that runs each action at its deadline (unix ns), and notes how late it ran.

    Deadlines are kept here, off any event loop, so the target's own answer time is exact to tens of
    microseconds; `stats` reports the lateness so a run can show how exact it was.
    """

    def __init__(self) -> None:
        import heapq
        import threading

        try:  # a target stands for another machine: it should not wait for a CPU behind the worker
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        except (OSError, AttributeError):
            pass

        self._heap: list = []
        self._push, self._pop = heapq.heappush, heapq.heappop
        self._cond = threading.Condition()
        self._seq = 0
        self.late: list[int] = []
        threading.Thread(target=self._run, daemon=True).start()

    def at(self, deadline_ns: int, action, *args) -> None:
        with self._cond:
            self._seq += 1
            self._push(self._heap, (deadline_ns, self._seq, action, args))
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.time_ns():
                    self._cond.wait((self._heap[0][0] - time.time_ns()) / 1e9 if self._heap else None)
                deadline, _, action, args = self._pop(self._heap)
            try:
                action(*args)
            except OSError:
                pass
            if deadline:
                self.late.append(time.time_ns() - deadline)

    def stats(self) -> str:
        late, self.late = sorted(self.late), []
        if not late:
            return "no answers"
        q = lambda f: late[min(len(late) - 1, int(f * len(late)))] / 1e6  # noqa: E731
        return f"{q(0.5):.2f} {q(0.9):.2f} {q(0.99):.2f} {late[-1] / 1e6:.2f}"


def _serve_forever(selector, sender: Sender) -> None:
    """Say `ready`, then run the callbacks of `selector` forever; stdin is the control channel: each line
    asks for the lateness figures since the last line, and its end ends the process."""
    import selectors

    def asked() -> None:
        if not sys.stdin.readline():
            os._exit(0)
        print(sender.stats(), flush=True)

    selector.register(sys.stdin, selectors.EVENT_READ, asked)
    print("ready", flush=True)
    while True:
        for key, _ in selector.select():
            key.data()


def serve_http(port: int) -> None:
    """Answer each request head DELAY seconds after its last byte arrived (the kernel's stamp)."""
    import selectors
    import socket

    sys.path.insert(0, str(ROOT))
    from executors._kit.timing import ANCILLARY, SO_TIMESTAMPNS, rx_stamp

    sender = Sender()
    selector = selectors.DefaultSelector()
    listener = socket.create_server(("127.0.0.1", port), backlog=4096)
    listener.setblocking(False)
    buffers: dict[socket.socket, bytes] = {}

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                return
            conn.setblocking(False)
            conn.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            buffers[conn] = b""
            selector.register(conn, selectors.EVENT_READ, lambda c=conn: readable(c))

    def readable(conn: socket.socket) -> None:
        try:
            data, ancillary, _, _ = conn.recvmsg(65536, ANCILLARY)
        except BlockingIOError:
            return
        except OSError:
            data, ancillary = b"", []
        if not data:  # only the sender thread closes sockets, after any answer still due
            selector.unregister(conn)
            del buffers[conn]
            sender.at(0, conn.close)
            return
        arrived = rx_stamp(ancillary) or time.time_ns()
        buf = buffers[conn] + data
        while b"\r\n\r\n" in buf:
            _, _, buf = buf.partition(b"\r\n\r\n")
            sender.at(arrived + int(DELAY * 1e9), conn.send, RESPONSE)
        buffers[conn] = buf

    selector.register(listener, selectors.EVENT_READ, accept)
    _serve_forever(selector, sender)


def serve_tcp() -> None:
    """A TUN device for NS_IP/30: SYN -> SYN-ACK DELAY after it was read; FIN or data -> RST."""
    import fcntl
    import selectors
    import struct

    sys.path.insert(0, str(ROOT))
    from executors._kit.icmp import checksum  # the Internet checksum (RFC 1071), for IP and TCP headers

    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", TUN.encode(), 0x0001 | 0x1000))  # TUNSETIFF, IFF_TUN|IFF_NO_PI
    for step in (["ip", "addr", "add", f"{HOST_IP}/30", "dev", TUN], ["ip", "link", "set", TUN, "up"]):
        subprocess.run(step, check=True)

    def segment(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int, options: bytes) -> bytes:
        offset = (20 + len(options)) // 4
        tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, offset << 4, flags, 65535, 0, 0) + options
        pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
        tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src, dst)
        ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
        return ip + tcp

    sender = Sender()

    def readable() -> None:
        while True:
            try:
                packet = os.read(fd, 65535)
            except BlockingIOError:
                return
            arrived = time.time_ns()
            if len(packet) < 40 or packet[0] >> 4 != 4 or packet[9] != 6:
                continue
            ihl = (packet[0] & 0x0F) * 4
            src, dst = packet[12:16], packet[16:20]
            sport, dport, seq, ack, off, flags = struct.unpack_from("!HHIIBB", packet, ihl)
            payload = len(packet) - ihl - (off >> 4) * 4
            if flags & 0x02 and not flags & 0x10:  # SYN
                answer = segment(dst, src, dport, sport, 1000, (seq + 1) & 0xFFFFFFFF, 0x12, b"\x02\x04\x05\xb4")
                sender.at(arrived + int(DELAY * 1e9), os.write, fd, answer)
            elif flags & 0x01 or payload > 0:  # FIN or data: reset
                os.write(fd, segment(dst, src, dport, sport, ack, 0, 0x04, b""))

    selector = selectors.DefaultSelector()
    selector.register(fd, selectors.EVENT_READ, readable)
    _serve_forever(selector, sender)


def start(args: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    return proc


def tun_possible() -> bool:
    return os.geteuid() == 0 and bool(shutil.which("ip")) and os.path.exists("/dev/net/tun")


# --------------------------------------------------------------------------------------------------
# One drain and its ping figures

async def _pings(url: str) -> list[int]:
    import redis.asyncio as aioredis

    import asynq_protocol as aq

    redis = aioredis.Redis.from_url(url)
    out = []
    try:
        for raw in await redis.lrange("asynq:{ingester}:pending", 0, -1):
            msg = aq.decode_task("ingester", raw, await redis.hget(f"asynq:{{ingester}}:t:{raw.decode()}", "msg"))
            body = json.loads(msg.payload)
            if body["status"] != 1:
                raise RuntimeError(f"check not UP: {body['message']}")
            out.append(body["ping_ms"])
    finally:
        await redis.aclose()
    return out


def run(redis: PrivateRedis, kind: str, config: dict, n: int, concurrency: int, coarse: bool,
        root: Path) -> tuple[list[int], float]:
    saved = os.environ.get("PEEKAPING_COARSE_TIMING")
    os.environ["PEEKAPING_COARSE_TIMING"] = "1" if coarse else ""
    try:
        figures = drain(redis, [(f"m{i}", payload(f"m{i}", kind, config)) for i in range(n)], concurrency,
                        [sys.executable, str(root / "worker.py")])
    finally:
        if saved is None:
            os.environ.pop("PEEKAPING_COARSE_TIMING", None)
        else:
            os.environ["PEEKAPING_COARSE_TIMING"] = saved
    return asyncio.run(_pings(redis.url)), figures.per_second


def lateness(target: subprocess.Popen) -> str:
    """The target's own lateness (p50 p90 p99 max) over the answers since it was last asked."""
    assert target.stdin is not None and target.stdout is not None
    target.stdin.write(b"\n")
    target.stdin.flush()
    return target.stdout.readline().decode().strip()


def quantiles(pings: list[int]) -> str:
    excess = sorted(p - int(DELAY * 1000) for p in pings)

    def q(f: float) -> int:
        return excess[min(len(excess) - 1, int(f * len(excess)))]
    return f"{q(0.50):4d} {q(0.90):4d} {q(0.99):4d} {excess[-1]:4d}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checks", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[128, 32])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--types", nargs="+", default=["http", "tcp"])
    parser.add_argument("--no-reference", action="store_true", help="skip the coarse-timing reference rows")
    parser.add_argument("--root", type=Path, default=ROOT, help="the worker tree to run (default: this one)")
    parser.add_argument("--serve-http", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-tcp", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_http:
        return serve_http(args.serve_http)
    if args.serve_tcp:
        return serve_tcp()

    targets: dict[str, tuple[dict, subprocess.Popen]] = {}
    procs: list[subprocess.Popen] = []
    print(f"{args.checks} checks per row, target answers after {DELAY * 1000:.0f} ms, {os.cpu_count()} CPUs; "
          "figures: ping_ms - 100, p50 p90 p99 max (ms); ping_ms is whole ms, rounded down as Go's", flush=True)
    try:
        if "http" in args.types:
            port = free_port()
            procs.append(start(["--serve-http", str(port)]))
            targets["http"] = ({"url": f"http://127.0.0.1:{port}/", "method": "GET", "accepted_statuscodes": ["2XX"],
                                "max_redirects": 10, "authMethod": "none"}, procs[-1])
        if "tcp" in args.types:
            if tun_possible():
                procs.append(start(["--serve-tcp"]))
                targets["tcp"] = ({"host": NS_IP, "port": 7777}, procs[-1])
            else:
                print("tcp: skipped (needs root, ip and /dev/net/tun)")
        redis = PrivateRedis()
        try:
            for kind, (config, target) in targets.items():
                for concurrency in args.concurrency:
                    for i in range(args.runs):
                        modes = [False] if args.no_reference else [False, True]
                        for coarse in modes:
                            pings, rate = run(redis, kind, config, args.checks, concurrency, coarse, args.root)
                            label = "coarse (reference)" if coarse else "as built"
                            print(f"{kind:<5} {concurrency:4d} in flight  run {i + 1}  {label:<19} "
                                  f"{quantiles(pings)}   ({rate:5.0f} checks/s; target late by "
                                  f"{lateness(target)} ms)", flush=True)
        finally:
            redis.close()
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
