"""`tcp`: connect to host:port and close at once; UP when the handshake completes."""

from __future__ import annotations

import asyncio
import os
import socket
import time

from executors import DOWN, UP, Monitor, Result, decode_config, is_domain_name

SCHEMA = {"host": str, "port": int}  # Go's TCPConfig; decoding and `peekaping-worker types` read it
FIELDS = {  # field -> what it means (for `peekaping-worker types`)
    "host": "host name or IPv4 address to connect to",
    "port": "TCP port, 1-65535",
}
SUMMARY = "open a TCP connection to host:port and close it at once; UP when the handshake completes"
EXAMPLES = {"tcp": ({"host": "127.0.0.1", "port": 6379}, "UP", "when something listens on 127.0.0.1:6379")}


async def check(monitor: Monitor, proxy: dict | None, budget: float) -> Result:
    cfg = decode_config(monitor.config, SCHEMA, "TCPConfig")
    host, port = cfg["host"], cfg["port"]
    start = time.time_ns()
    try:
        async with asyncio.timeout(max(budget, 0.001)):
            await _dial(host, port)
    except _DialError as exc:
        return Result(DOWN, f"TCP connection failed: {exc}", start, time.time_ns())
    except (asyncio.TimeoutError, TimeoutError):
        return Result(DOWN, f"TCP connection failed: dial tcp {_join(host, port)}: i/o timeout", start,
                      time.time_ns())
    return Result(UP, f"TCP port {port} is open", start, time.time_ns())


class _DialError(Exception):
    pass


async def _dial(host: str, port: int) -> None:
    """Resolve, then try each address in turn (as Go's dialer does); raise _DialError in Go's words."""
    loop = asyncio.get_running_loop()
    if not 0 <= port <= 65535:
        raise _DialError(f"dial tcp: address {port}: invalid port")
    infos = _literal_address(host, port)
    if infos is None:  # a name: resolve it (in a thread, as the system resolver blocks)
        # Go answers this without asking DNS (after /etc/hosts, which is not consulted here for such names)
        if host and not is_domain_name(host):
            raise _DialError(f"dial tcp: lookup {host}: no such host")
        try:
            infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            raise _DialError(f"dial tcp: lookup {host}{_resolver_suffix()}: no such host") from None
    last: Exception | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
            return
        except OSError as exc:
            text = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            last = _DialError(f"dial tcp {_join(address[0], port)}: connect: {text}")
        finally:
            sock.close()
    raise last or _DialError(f"dial tcp: lookup {host}: no such host")


def _literal_address(host: str, port: int) -> list | None:
    """getaddrinfo's answer for an IP literal, computed without the resolver thread pool."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        address = (host, port) if family == socket.AF_INET else (host, port, 0, 0)
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", address)]
    return None


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _resolver_suffix() -> str:
    """Go names the DNS server in lookup errors (` on 127.0.0.11:53`); so do we, when we know it."""
    try:
        with open("/etc/resolv.conf") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    return f" on {_join(parts[1], 53)}"
    except OSError:
        pass
    return ""

