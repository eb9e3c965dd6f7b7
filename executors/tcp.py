"""`tcp`: connect to host:port and close at once; UP when the handshake completes.

ping_ms runs from just before resolving (an IP literal is not resolved) to the moment the handshake
completed: the kernel's SYN-ACK time when it has a clean sample, else the writability callback (see
executors/_kit/timing.py), never the moment this coroutine resumes.
"""

from __future__ import annotations

import asyncio
import socket
import time

from executors import DOWN, UP, Monitor, Result
from executors._kit import timing as _timing
from executors._kit.gojson import decode_config
from executors._kit.gotext import literal_address, is_domain_name, join_host_port, os_error_text, resolver_suffix

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
            connected = await _dial(host, port)
    except _DialError as exc:
        return Result(DOWN, f"TCP connection failed: {exc}", start, time.time_ns())
    except (asyncio.TimeoutError, TimeoutError):
        return Result(DOWN, f"TCP connection failed: dial tcp {join_host_port(host, port)}: i/o timeout", start,
                      time.time_ns())
    return Result(UP, f"TCP port {port} is open", start, connected)


class _DialError(Exception):
    pass


async def _dial(host: str, port: int) -> int:
    """Resolve, then try each address in turn (as Go's dialer does); the unix ns the handshake completed.
    _DialError in Go's words."""
    loop = asyncio.get_running_loop()
    if not 0 <= port <= 65535:
        raise _DialError(f"dial tcp: address {port}: invalid port")
    infos = literal_address(host, port)
    if infos is None:  # a name: resolve it (in a thread, as the system resolver blocks)
        # Go answers this without asking DNS (after /etc/hosts, which is not consulted here for such names)
        if host and not is_domain_name(host):
            raise _DialError(f"dial tcp: lookup {host}: no such host")
        try:
            infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            raise _DialError(f"dial tcp: lookup {host}{resolver_suffix()}: no such host") from None
    last: Exception | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            return (await _timing.connect(loop, sock, address))[0]
        except OSError as exc:
            last = _DialError(f"dial tcp {join_host_port(address[0], port)}: connect: {os_error_text(exc)}")
        finally:
            sock.close()
    raise last or _DialError(f"dial tcp: lookup {host}: no such host")
