"""Network namespaces for the ping tests, and the two programs the tests run inside them.

`Lab` builds, as root with `ip netns`:

* `client`: loopback up, net.ipv4.ping_group_range widened to every group (unprivileged ICMP
  sockets allowed), a veth to `peer` (10.231.0.1/24, fd00:231::1/64), routes through `peer` to
  networks it has no way to;
* `peer`: the other end of the veth; its kernel ignores echo requests (icmp_echo_ignore_all, both
  families) and `respond` (below) answers instead, for the ANSWERING addresses, each after its own
  delay; the SILENT addresses never answer; UNREACHABLE networks are `unreachable` routes there, so
  the peer's kernel answers with ICMP errors;
* `plain`: loopback only, every sysctl at its default (ping_group_range "1 0": no unprivileged ICMP).

`python tests/netns_peers.py respond <addresses.json> <log>`: an ICMP echo responder on raw sockets
bound to each address. Before each real reply to an ANSWERING address it sends two look-alike
replies (a wrong identifier from the right address, the right identifier and sequence from another
address), for the SILENT_DECOYED addresses only those; PLAIN addresses get just the reply. Every
request it sees is logged as a JSON line.
`python tests/netns_peers.py run`: runs the ping checks given as JSON on stdin concurrently in this
namespace and prints their results as JSON.
"""

from __future__ import annotations

import heapq
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

V4_NET, V6_NET = "10.231.0.", "fd00:231::"
CLIENT_V4, CLIENT_V6 = V4_NET + "1", V6_NET + "1"
ROUTER_V4, ROUTER_V6 = V4_NET + "2", V6_NET + "2"
# 16 answering addresses (8 per family), each with its own reply delay in seconds
ANSWERING = {**{f"{V4_NET}{10 + i}": 0.01 * (2 * i) for i in range(8)},
             **{f"{V6_NET}{10 + i:x}": 0.01 * (2 * i + 1) for i in range(8)}}
PLAIN = [V4_NET + "50", V6_NET + "50"]  # answered at once, without look-alikes (for the ping program)
SILENT = [V4_NET + "100", V6_NET + "100"]  # owned by the peer, never answered
SILENT_DECOYED = [V4_NET + "101", V6_NET + "101"]  # never answered, but look-alike replies come
UNREACHABLE_V6, PROHIBITED_V6 = "fd00:232::9", "fd00:233::9"  # `unreachable` and `prohibit` routes in the peer
# The peer's kernel sends at most 5 errors for IPv4 `unreachable`/`prohibit` routes in a burst to one
# source address (net.ipv4.route.error_burst, not per namespace): each strategy's IPv4 targets are
# routed from a client address of their own.
STRATEGY_INDEX = {"datagram": 1, "raw": 2, "command": 3}


def unreachable_v4(strategy: str) -> str:
    return f"10.232.{STRATEGY_INDEX[strategy]}.9"


def prohibited_v4(strategy: str) -> str:
    return f"10.233.{STRATEGY_INDEX[strategy]}.9"


def missing_tools() -> str:
    """Why the namespace tests cannot run here, or ''."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, raw sockets)"
    for tool in ("ip", "ping", "setpriv"):
        if shutil.which(tool) is None:
            return f"needs `{tool}` (Debian: iproute2, iputils-ping, util-linux)"
    return ""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _sysctl(namespace: str, values: dict[str, str]) -> None:
    script = "".join(f"echo '{value}' > /proc/sys/{key.replace('.', '/')}\n" for key, value in values.items())
    subprocess.run(["ip", "netns", "exec", namespace, "sh", "-ec", script], check=True, capture_output=True, text=True)


class Lab:
    def __init__(self) -> None:
        tag = f"pwping{os.getpid()}"
        self.client, self.peer, self.plain = f"{tag}c", f"{tag}p", f"{tag}x"
        self.dir = Path(tempfile.mkdtemp(prefix="pw-ping-"))
        self.log = self.dir / "requests.jsonl"
        self.responder: subprocess.Popen | None = None

    def start(self) -> None:
        try:
            self._build()
        except BaseException:
            self.cleanup()
            raise

    def _build(self) -> None:
        for ns in (self.client, self.peer, self.plain):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", "c0", "netns", self.client, "type", "veth", "peer", "name", "p0", "netns", self.peer)
        _ip("-n", self.client, "link", "set", "c0", "up")
        _ip("-n", self.peer, "link", "set", "p0", "up")
        _ip("-n", self.client, "addr", "add", CLIENT_V4 + "/24", "dev", "c0")
        _ip("-n", self.client, "addr", "add", CLIENT_V6 + "/64", "dev", "c0", "nodad")
        for address in [ROUTER_V4, ROUTER_V6, *ANSWERING, *PLAIN, *SILENT, *SILENT_DECOYED]:
            prefix = "/64" if ":" in address else "/24"
            _ip("-n", self.peer, "addr", "add", address + prefix, "dev", "p0", *(["nodad"] if ":" in address else []))
        for network, kind in (("10.232.0.0/16", "unreachable"), ("10.233.0.0/16", "prohibit"),
                              ("fd00:232::/64", "unreachable"), ("fd00:233::/64", "prohibit")):
            _ip("-n", self.peer, "route", "add", kind, network)
        for network in ("fd00:232::/64", "fd00:233::/64"):
            _ip("-n", self.client, "route", "add", network, "via", ROUTER_V6)
        for index in STRATEGY_INDEX.values():
            source = f"{V4_NET}{200 + index}"
            _ip("-n", self.client, "addr", "add", source + "/32", "dev", "c0")
            for network in (f"10.232.{index}.0/24", f"10.233.{index}.0/24"):
                _ip("-n", self.client, "route", "add", network, "via", ROUTER_V4, "src", source)
        _sysctl(self.client, {"net.ipv4.ping_group_range": "0 2147483647"})
        _sysctl(self.peer, {"net.ipv4.icmp_echo_ignore_all": "1", "net.ipv6.icmp.echo_ignore_all": "1",
                            "net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1",
                            "net.ipv4.icmp_ratelimit": "0", "net.ipv6.icmp.ratelimit": "0"})
        spec = {"answering": ANSWERING, "plain": PLAIN, "decoyed": SILENT_DECOYED}
        self.responder = subprocess.Popen(
            ["ip", "netns", "exec", self.peer, sys.executable, __file__, "respond", json.dumps(spec), str(self.log)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.responder.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"responder did not start: {line}{self.responder.stderr.read()}")

    def requests(self) -> list[dict]:
        """Every echo request the responder saw so far (dst, src, id, seq, payload hex)."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.endswith("}")]

    def run(self, namespace: str, jobs: list[dict], mode: str, timeout: float = 1.0, loop: str = "uvloop",
            user: int | None = None) -> dict:
        """Run ping checks (configs) concurrently inside `namespace` with PEEKAPING_PING_MODE=mode."""
        argv = ["ip", "netns", "exec", namespace]
        python, script = sys.executable, __file__
        if user is not None:
            argv += ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
            python, script = self._readable_copy()
            loop = "asyncio"  # the system interpreter has no uvloop
        argv += [python, script, "run"]
        request = json.dumps({"jobs": jobs, "timeout": timeout, "loop": loop})
        env = dict(os.environ, PEEKAPING_PING_MODE=mode, PYTHONDONTWRITEBYTECODE="1")
        proc = subprocess.run(argv, input=request, capture_output=True, text=True, env=env, timeout=60)
        if proc.returncode != 0:
            raise AssertionError(f"runner failed ({proc.returncode}): {proc.stderr}")
        return json.loads(proc.stdout)

    def _readable_copy(self) -> tuple[str, str]:
        """(interpreter, runner) another user can reach: the checkout and its virtualenv may sit in a
        folder only root can enter (a CI clone), so the runner and the executors package are copied to
        a world-readable folder and run by the system's Python (the ping executor needs only the
        standard library)."""
        staged = self.dir / "src"
        if not staged.exists():
            shutil.copytree(ROOT / "executors", staged / "executors",
                            ignore=shutil.ignore_patterns("__pycache__"))
            (staged / "tests").mkdir()
            shutil.copy(__file__, staged / "tests" / "netns_peers.py")  # ROOT is the runner's folder's parent
            for folder in (self.dir, *[Path(d) for d, _, _ in os.walk(staged)]):
                folder.chmod(0o755)
            for path in staged.rglob("*.py"):
                path.chmod(0o644)
        python = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.path.exists(p)),
                      sys.executable)
        return python, str(staged / "tests" / "netns_peers.py")

    def cleanup(self) -> None:
        from conftest import stop_process  # not at the top: this file also runs alone, as a copy, in a namespace

        stop_process(self.responder, 5)
        for ns in (self.client, self.peer, self.plain):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# `run`: the checks, inside a namespace

def _run_checks() -> None:
    import asyncio

    sys.path.insert(0, str(ROOT))
    from executors import Monitor
    from executors import ping

    request = json.load(sys.stdin)
    timeout = request["timeout"]

    async def one(config: dict) -> dict:
        monitor = Monitor(id="netns", type="ping", timeout=int(timeout + 0.999), config=json.dumps(config))
        began = time.monotonic()
        result = await ping.check(monitor, None, timeout)
        return {"config": config, "status": result.status, "message": result.message, "ping_ms": result.ping_ms,
                "start_ns": result.start_ns, "end_ns": result.end_ns, "timings": result.timings,
                "elapsed": time.monotonic() - began}

    async def main() -> dict:
        try:
            chosen = ping.strategy()
        except ValueError as exc:
            chosen = f"error: {exc}"
        results = await asyncio.gather(*(one(config) for config in request["jobs"]))
        return {"strategy": chosen, "results": results}

    if request.get("loop") == "uvloop":
        import uvloop
        out = uvloop.run(main())
    else:
        out = asyncio.run(main())
    json.dump(out, sys.stdout)


# --------------------------------------------------------------------------------------------------
# `respond`: the ICMP echo responder, inside the peer namespace

def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _reply(six: bool, ident: int, seq: int, data: bytes) -> bytes:
    kind = 129 if six else 0
    body = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + data
    if six:
        return body  # the kernel fills the ICMPv6 checksum
    return struct.pack("!BBHHH", kind, 0, _checksum(body), ident, seq) + data


def _respond(spec: dict, log_path: str) -> None:
    answering: dict[str, float] = {**spec["answering"], **{address: 0.0 for address in spec["plain"]}}
    decoyed: list[str] = spec["decoyed"]
    sockets: dict[int, tuple[socket.socket, str]] = {}
    by_address: dict[str, socket.socket] = {}
    for address in [*answering, *decoyed]:
        six = ":" in address
        sock = socket.socket(socket.AF_INET6 if six else socket.AF_INET, socket.SOCK_RAW,
                             socket.IPPROTO_ICMPV6 if six else socket.IPPROTO_ICMP)
        sock.bind((address, 0))
        sock.setblocking(False)
        sockets[sock.fileno()] = (sock, address)
        by_address[address] = sock
    neighbours = {family: [a for a in spec["answering"] if (":" in a) == family] for family in (False, True)}
    poller = select.epoll()
    for fd in sockets:
        poller.register(fd, select.EPOLLIN)
    due: list[tuple[float, int, socket.socket, bytes, str]] = []
    counter = 0
    log = open(log_path, "a", buffering=1)
    print("ready", flush=True)
    while True:
        wait = max(0.0, due[0][0] - time.monotonic()) if due else 1.0
        for fd, _ in poller.poll(wait):
            sock, address = sockets[fd]
            six = ":" in address
            while True:
                try:
                    packet, source = sock.recvfrom(70000)
                except BlockingIOError:
                    break
                icmp = packet if six else packet[(packet[0] & 0x0F) * 4:]
                if len(icmp) < 8 or icmp[0] != (128 if six else 8):
                    continue
                arrived = time.monotonic()
                ident, seq = struct.unpack_from("!HH", icmp, 4)
                data = icmp[8:]
                log.write(json.dumps({"dst": address, "src": source[0], "id": ident, "seq": seq,
                                      "payload": data.hex()}) + "\n")
                client = source[0]
                others = [a for a in neighbours[six] if a != address]
                target = (client, 0, 0, 0) if six else (client, 0)
                if address not in spec["plain"]:
                    sock.sendto(_reply(six, ident ^ 0x5A5A, seq, data), target)  # wrong identifier, right host
                    by_address[others[seq % len(others)]].sendto(_reply(six, ident, seq, data), target)  # wrong host
                if address in answering:
                    counter += 1
                    heapq.heappush(due, (arrived + answering[address], counter, sock, _reply(six, ident, seq, data),
                                         client))
        now = time.monotonic()
        while due and due[0][0] <= now:
            _, _, sock, reply, client = heapq.heappop(due)
            sock.sendto(reply, (client, 0, 0, 0) if sock.family == socket.AF_INET6 else (client, 0))


if __name__ == "__main__":
    if sys.argv[1] == "run":
        _run_checks()
    elif sys.argv[1] == "respond":
        _respond(json.loads(sys.argv[2]), sys.argv[3])
