"""`ping` (alias `icmp`): one ICMP echo request; UP when its own reply comes back.

Strategies, tried in this order (PEEKAPING_PING_MODE=auto|datagram|raw|command forces one):
an unprivileged ICMP datagram socket (Linux net.ipv4.ping_group_range), a raw ICMP socket (root or
CAP_NET_RAW), then the system `ping` program, as the Go worker falls back to it. IPv4 and IPv6 in
each; a name is resolved by the system resolver and its first IPv4 address is used (the first IPv6
address when it has none), then the address is pinged, so every strategy pings the same address.

ping_ms and the RTT in the message measure the echo itself: from just before the request is sent
to the kernel's arrival stamp of the reply (sockets), or the RTT the ping program prints (when it
prints none, for payloads under 16 bytes, the program's run time). Resolving is not part of it;
it is reported as the `resolve` phase.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import socket
import time

from executors import DOWN, UP, Monitor, Result
from executors._kit import icmp
from executors._kit.gojson import decode_config
from executors._kit.gotext import go_duration, is_domain_name, resolver_suffix

SCHEMA = {"host": str, "packet_size": int}  # Go's PingConfig; decoding and `peekaping-worker types` read it
FIELDS = {  # field -> what it means (for `peekaping-worker types`)
    "host": "host name, IPv4 or IPv6 address to ping (a name's first IPv4 address, else its first IPv6 one)",
    "packet_size": "ICMP payload bytes: `Peekaping` then zeros; 0 or absent means 32 (at most 65507, IPv6 65527)",
}
SUMMARY = "send one ICMP echo request; UP when its reply comes back (message gives the round-trip time)"
EXAMPLES = {
    "ping": ({"host": "127.0.0.1", "packet_size": 32}, "UP", "(loopback answers)"),
    "icmp": ({"host": "::1"}, "UP", "(loopback answers, over IPv6)"),
}

MODES = ("auto", "datagram", "raw", "command")
MODE_VARIABLE = "PEEKAPING_PING_MODE"
DEFAULT_SIZE = 32
KILL_MARGIN = 0.05  # seconds kept to stop the ping program when the budget runs out


def mode() -> str:
    """The strategy PEEKAPING_PING_MODE asks for; ValueError naming the variable when it is not one."""
    value = os.environ.get(MODE_VARIABLE, "").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"{MODE_VARIABLE}={os.environ.get(MODE_VARIABLE)!r} is not one of {', '.join(MODES)}")
    return value


def strategy() -> str:
    """The strategy this host uses for an IPv4 target: datagram, raw, command, or none (nothing works).

    ValueError when PEEKAPING_PING_MODE is set to something else than a strategy or auto.
    """
    wanted = mode()
    if wanted != "auto":
        return wanted
    for kind in (icmp.DATAGRAM, icmp.RAW):
        if icmp.can_open(socket.AF_INET, kind):
            return kind
    return "command" if _find_program("ping") else "none"


async def check(monitor: Monitor, proxy: dict | None, budget: float) -> Result:
    cfg = decode_config(monitor.config, SCHEMA, "PingConfig")
    host, size = cfg["host"], cfg["packet_size"] or DEFAULT_SIZE
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(budget, 0.001)
    start = time.time_ns()
    try:
        wanted = mode()
    except ValueError as exc:
        return Result(DOWN, f"Ping failed: {exc}", start, start)
    if size < 0:
        return Result(DOWN, f"Ping failed: invalid packet size {size}: must be 0-65507", start, start)
    try:
        async with asyncio.timeout_at(deadline):
            family, sockaddr = await _resolve(loop, host)
    except _Failed as exc:
        return _lookup_failed(str(exc), start)
    except TimeoutError:
        return _lookup_failed(f"lookup {host}{resolver_suffix()}: i/o timeout", start)
    resolved = time.time_ns()
    if size > icmp.MAX_PAYLOAD[family]:
        return _down(f"packet size {size} is too large: an IPv{4 if family == socket.AF_INET else 6} echo "
                     f"request carries at most {icmp.MAX_PAYLOAD[family]} bytes", start, resolved, resolved, resolved)
    try:
        sent, arrived = await _echo(loop, wanted, family, sockaddr, size, deadline)
    except _Failed as exc:
        return _down(str(exc), start, resolved, exc.sent or resolved, exc.end or time.time_ns())
    except icmp.NoReply as exc:
        return _down("no response received", start, resolved, exc.sent or resolved, time.time_ns())
    except TimeoutError:
        return _down("no response received", start, resolved, resolved, time.time_ns())
    return Result(UP, f"Ping successful, RTT: {go_duration(arrived - sent)}", sent, arrived,
                  timings={"resolve": _ms(resolved - start), "echo": _ms(arrived - sent)})


class _Failed(Exception):
    """A reason for the DOWN message, with the clock reads that bound the failed echo when known."""

    def __init__(self, reason: str, sent: int = 0, end: int = 0) -> None:
        super().__init__(reason)
        self.sent, self.end = sent, end


def _lookup_failed(reason: str, start: int) -> Result:
    end = time.time_ns()
    return Result(DOWN, f"Ping failed: {reason}", start, end, timings={"resolve": _ms(end - start), "echo": 0.0})


def _down(reason: str, start: int, resolved: int, sent: int, end: int) -> Result:
    """DOWN `Ping failed: <reason>`; ping_ms spans the failed echo, from its request to `end`."""
    return Result(DOWN, f"Ping failed: {reason}", sent, end,
                  timings={"resolve": _ms(resolved - start), "echo": _ms(end - sent)})


def _ms(ns: int) -> float:
    return round(max(ns, 0) / 1e6, 3)


# --------------------------------------------------------------------------------------------------
# Resolving

async def _resolve(loop: asyncio.AbstractEventLoop, host: str) -> tuple[int, tuple]:
    """(family, socket address) to ping: an IP literal as is, a name's first IPv4 address, else its
    first IPv6 one, from the system resolver. _Failed in Go's words."""
    if not host:
        raise _Failed("no host to ping: the config's host is empty")
    literal = _literal(host)
    if literal is not None:
        return literal
    if not is_domain_name(host):  # Go answers this without asking DNS
        raise _Failed(f"lookup {host}: no such host")
    try:
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:
            raise _Failed(f"lookup {host}{resolver_suffix()}: temporary failure in name resolution") from None
        raise _Failed(f"lookup {host}{resolver_suffix()}: no such host") from None
    except (UnicodeError, ValueError, OSError):
        raise _Failed(f"lookup {host}{resolver_suffix()}: no such host") from None
    for wanted in (socket.AF_INET, socket.AF_INET6):
        for family, _, _, _, sockaddr in infos:
            if family == wanted:
                return _unmapped(family, sockaddr)
    raise _Failed(f"lookup {host}{resolver_suffix()}: no such host")


def _literal(host: str) -> tuple[int, tuple] | None:
    """(family, socket address) of an IPv4 or IPv6 literal (`fe80::1%eth0` included), else None."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if address.version == 4:
        return socket.AF_INET, (host, 0)
    if "%" not in host:
        return _unmapped(socket.AF_INET6, (host, 0, 0, 0))
    try:  # the zone (interface) name becomes a scope id
        family, _, _, _, sockaddr = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM,
                                                       flags=socket.AI_NUMERICHOST)[0]
    except (socket.gaierror, UnicodeError, ValueError):
        raise _Failed(f"invalid address {host}: unknown zone") from None
    return _unmapped(family, sockaddr)


def _unmapped(family: int, sockaddr: tuple) -> tuple[int, tuple]:
    """An IPv4-mapped IPv6 address (::ffff:192.0.2.1) is pinged over IPv4, where it answers."""
    if family == socket.AF_INET6:
        mapped = ipaddress.IPv6Address(sockaddr[0].split("%", 1)[0]).ipv4_mapped
        if mapped is not None:
            return socket.AF_INET, (str(mapped), 0)
    return family, (sockaddr[0], 0) if family == socket.AF_INET else (sockaddr[0], 0, sockaddr[2], sockaddr[3])


# --------------------------------------------------------------------------------------------------
# The echo, by strategy

async def _echo(loop: asyncio.AbstractEventLoop, wanted: str, family: int, sockaddr: tuple, size: int,
                deadline: float) -> tuple[int, int]:
    """(sent, arrived) unix ns of one echo; _Failed with the reason, TimeoutError when nothing answered."""
    if wanted != "command":
        refusal = ""
        for kind in (icmp.DATAGRAM, icmp.RAW) if wanted == "auto" else (wanted,):
            try:
                channel = icmp.channel(loop, family, kind)
            except icmp.Unavailable as exc:
                refusal = str(exc)
                continue
            try:
                return await channel.echo(sockaddr, icmp.payload_of(size), deadline - loop.time())
            except icmp.IcmpError as exc:
                raise _Failed(str(exc), sent=exc.sent, end=time.time_ns()) from None
        if wanted != "auto":
            raise _Failed(refusal)
    return await _command(loop, sockaddr[0], size, deadline)


_RTT = re.compile(rb"time[=<]\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|us|\xc2\xb5s|usec)?\b")
_FROM = re.compile(rb"^From (\S+?):? .*?icmp_seq=\d+ (.+)$", re.M)
_REPLY_FROM = re.compile(rb"bytes from ([0-9A-Fa-f.:]+?)(?:%\S+)?:? (?:\(|icmp_seq|seq)")
_NO_REPLY = (b"100% packet loss", b"100% loss", b"Request timed out", b"Destination host unreachable")
_REPLIED = (b"bytes from", b"Reply from", b"packets transmitted")
_UNITS = {b"s": 1_000_000_000, b"ms": 1_000_000, b"us": 1_000, b"usec": 1_000, b"\xc2\xb5s": 1_000}


async def _command(loop: asyncio.AbstractEventLoop, address: str, size: int, deadline: float) -> tuple[int, int]:
    """Run `ping -c 1 -s <size> -W <seconds> <address>` (Go's command) within the deadline.

    -W takes whole seconds (busybox accepts nothing else), so the program is stopped when the budget
    runs out first; that is "no response".
    """
    program = _find_program("ping")
    if program is None:
        raise _Failed('ping command failed: exec: "ping": executable file not found in $PATH')
    wait = max(1, int(deadline - loop.time() + 0.999))
    argv = [program, "-c", "1", "-s", str(size), "-W", str(wait), address]
    env = dict(os.environ, LC_ALL="C")  # English output, which is parsed
    began = time.time_ns()
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE, env=env)
    except OSError as exc:
        raise _Failed(f"ping command failed: fork/exec {program}: {os.strerror(exc.errno or 0).lower()}") from None
    try:
        async with asyncio.timeout_at(deadline - KILL_MARGIN):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise icmp.NoReply(began) from None
    except asyncio.CancelledError:  # the worker is stopping: leave no ping program behind
        proc.kill()
        raise
    ended = time.time_ns()
    code = proc.returncode
    if code != 0:
        raise _Failed(_command_failure(code, out, err), sent=began, end=ended)
    if any(marker in out for marker in _NO_REPLY):
        raise icmp.NoReply(began)
    source = _REPLY_FROM.search(out)
    if source and _same_address(source.group(1), address) is False:
        raise _Failed(f"the reply came from {source.group(1).decode()}, not from {address}", sent=began, end=ended)
    match = _RTT.search(out)
    if match:  # the program's own measure of the echo, placed at the end of its run
        rtt = round(float(match.group(1)) * _UNITS.get(match.group(2) or b"ms", 1_000_000))
        return ended - rtt, ended
    if any(marker in out for marker in _REPLIED):
        return began, ended  # no RTT printed (payload under 16 bytes): the program's run time, as Go
    text = out.decode("utf-8", "replace").strip()
    raise _Failed(f"unable to determine ping result from output: {text}", sent=began, end=ended)


def _same_address(text: bytes, address: str) -> bool | None:
    """Whether the ping program's `bytes from <text>` names `address`; None when it cannot tell."""
    try:
        return icmp.packed(text.decode()) == icmp.packed(address)
    except (OSError, ValueError, UnicodeError):
        return None


def _command_failure(code: int, out: bytes, err: bytes) -> str:
    """The reason behind a non-zero exit: the error the program reported, else no response."""
    if code < 0:
        return f"ping command failed: signal: {_signal_name(-code)}"
    reported = _FROM.search(out)
    if reported:  # `From 192.0.2.1 icmp_seq=1 Destination Host Unreachable`
        return f"{reported.group(2).decode('utf-8', 'replace').strip().lower()} " \
               f"(reported by {reported.group(1).decode('utf-8', 'replace')})"
    if code == 1 and not err.strip():  # iputils and busybox: no reply before -W ran out
        return "no response received"
    lines = err.decode("utf-8", "replace").strip().splitlines()
    return f"ping command failed: exit status {code}" + (f": {lines[-1]}" if lines else "")


def _signal_name(number: int) -> str:
    import signal

    try:
        return {signal.SIGKILL: "killed", signal.SIGTERM: "terminated"}.get(number) or signal.Signals(number).name
    except ValueError:
        return str(number)


def _find_program(name: str) -> str | None:
    """`name` on PATH (shutil.which without importing shutil at start-up, where strategy() runs)."""
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(folder or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None
