"""ICMP echo over one shared socket per address family and kind, with replies matched to requests.

Two kinds of socket can send an echo request without the `ping` program:

* `datagram`: SOCK_DGRAM/IPPROTO_ICMP(V6), the unprivileged "ping socket" Linux allows to the groups
  in net.ipv4.ping_group_range (both families). The kernel writes the identifier (the socket's bound
  "port"), fills the checksum, and hands the socket only echo replies carrying that identifier; ICMP
  errors about its requests come through the error queue (IP_RECVERR).
* `raw`: SOCK_RAW, for root or CAP_NET_RAW. It sees every ICMP message the host receives, so the
  identifier is ours (random per socket) and a filter keeps only echo replies and errors.

Every check of a family shares that family's socket: a reply is handed to the request whose
sequence number, identifier and destination it carries (an error message: whose destination and
sequence it quotes), so concurrent pings to different hosts each see their own reply, and a reply
from another host, or to another process, is ignored. One socket per family also means one wakeup
per packet however many checks are in flight (a raw socket per check would get a copy of every reply
meant for the others). Receive times are the kernel's arrival stamps (SO_TIMESTAMPNS).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
import time
import weakref

DATAGRAM, RAW = "datagram", "raw"
ECHO_REQUEST = {socket.AF_INET: 8, socket.AF_INET6: 128}
ECHO_REPLY = {socket.AF_INET: 0, socket.AF_INET6: 129}
PROTOCOL = {socket.AF_INET: socket.IPPROTO_ICMP, socket.AF_INET6: socket.IPPROTO_ICMPV6}
MAX_PAYLOAD = {socket.AF_INET: 65507, socket.AF_INET6: 65527}  # 65535 minus the IP (v4 only) and ICMP headers

# Linux constants the socket module does not export
IP_RECVERR, IPV6_RECVERR = 11, 25
SOL_RAW, ICMP_FILTER, ICMP6_FILTER = 255, 1, 1
SO_RCVBUFFORCE, SO_SNDBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33), getattr(socket, "SO_SNDBUFFORCE", 32)
SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6 = 2, 3
SOCKET_BUFFER = 4 << 20  # room for a burst of requests and replies of many concurrent checks
READ_SIZE = 65536 + 64  # the largest IPv4 datagram, header included
READS_PER_WAKEUP = 1024  # the socket stays readable when more are queued; the poller calls again

_HEADER = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence
_ERR = struct.Struct("=IBBBBII")  # struct sock_extended_err


class Unavailable(Exception):
    """The socket cannot be opened here (permission, kernel); str() says why, for the DOWN message."""


def open_socket(family: int, kind: str) -> socket.socket:
    """A non-blocking ICMP socket of `kind`; Unavailable with the reason when the host refuses it."""
    proto = PROTOCOL[family]
    sock_type = socket.SOCK_DGRAM if kind == DATAGRAM else socket.SOCK_RAW
    try:
        sock = socket.socket(family, sock_type, proto)
    except OSError as exc:
        raise Unavailable(_refusal(family, kind, exc)) from None
    sock.setblocking(False)
    return sock


def _refusal(family: int, kind: str, exc: OSError) -> str:
    v6 = "v6" if family == socket.AF_INET6 else ""
    text = os.strerror(exc.errno).lower() if exc.errno else str(exc)
    if kind == DATAGRAM:
        what = f"cannot open an unprivileged ICMP{v6} socket: {text}"
        if exc.errno in (errno.EACCES, errno.EPERM):
            what += f" (net.ipv4.ping_group_range is {_group_range()}, group {os.getegid()} is not in it)"
        return what
    what = f"cannot open a raw ICMP{v6} socket: {text}"
    if exc.errno in (errno.EACCES, errno.EPERM):
        what += " (needs root or CAP_NET_RAW)"
    return what


def _group_range() -> str:
    try:
        with open("/proc/sys/net/ipv4/ping_group_range") as fh:
            return '"' + " ".join(fh.read().split()) + '"'
    except OSError:
        return "unreadable"


def can_open(family: int, kind: str) -> bool:
    try:
        open_socket(family, kind).close()
    except Unavailable:
        return False
    return True


def payload_of(size: int) -> bytes:
    """`size` bytes: the ASCII text `Peekaping`, then zeros (cut short when size < 9), as Go sends."""
    return b"Peekaping"[:size].ljust(size, b"\0")


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(family: int, ident: int, seq: int, payload: bytes) -> bytes:
    kind = ECHO_REQUEST[family]
    if family == socket.AF_INET6:  # the kernel computes the ICMPv6 checksum (it covers a pseudo-header)
        return _HEADER.pack(kind, 0, 0, ident, seq) + payload
    body = _HEADER.pack(kind, 0, 0, ident, seq) + payload
    return _HEADER.pack(kind, 0, checksum(body), ident, seq) + payload


def packed(address: str) -> bytes:
    """The binary form of an IP address text (a `%zone` suffix ignored)."""
    address = address.split("%", 1)[0]
    return socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)


# --------------------------------------------------------------------------------------------------
# Reasons given by ICMP error messages, in the words of iputils' ping (lower case)

_V4_UNREACHABLE = {0: "destination net unreachable", 1: "destination host unreachable",
                   2: "destination protocol unreachable", 3: "destination port unreachable",
                   4: "frag needed and df set", 5: "source route failed", 6: "destination net unknown",
                   7: "destination host unknown", 8: "source host isolated", 9: "destination net prohibited",
                   10: "destination host prohibited", 11: "destination net unreachable for type of service",
                   12: "destination host unreachable for type of service", 13: "packet filtered",
                   14: "precedence violation", 15: "precedence cutoff"}
_V6_UNREACHABLE = {0: "no route", 1: "administratively prohibited", 2: "beyond scope of source address",
                   3: "address unreachable", 4: "port unreachable", 5: "source address failed ingress/egress policy",
                   6: "reject route to destination"}


def error_reason(family: int, kind: int, code: int, info: int, reporter: str) -> str:
    """The text of an ICMP error message about our request, naming the host that sent it."""
    if family == socket.AF_INET:
        if kind == 3:
            text = _V4_UNREACHABLE.get(code, f"dest unreachable, bad code: {code}")
            if code == 4:
                text += f" (mtu = {info})"
        elif kind == 11:
            text = "time to live exceeded" if code == 0 else "frag reassembly time exceeded"
        elif kind == 12:
            text = "parameter problem"
        else:
            text = f"icmp error type {kind}, code {code}"
    else:
        if kind == 1:
            text = "destination unreachable: " + _V6_UNREACHABLE.get(code, f"unknown code {code}")
        elif kind == 2:
            text = f"packet too big: mtu={info}"
        elif kind == 3:
            text = "time exceeded: " + ("hop limit" if code == 0 else "defragmentation failure")
        elif kind == 4:
            text = "parameter problem"
        else:
            text = f"icmpv6 error type {kind}, code {code}"
    return f"{text} (reported by {reporter})" if reporter else text


class IcmpError(Exception):
    """Sending failed or an ICMP error answered the request; str() is the reason for the DOWN message,
    `sent` when the request left (unix ns; 0 when it did not)."""

    def __init__(self, reason: str, sent: int = 0) -> None:
        super().__init__(reason)
        self.sent = sent


class NoReply(TimeoutError):
    """Nothing answered the request in time; `sent` is when it left (unix ns)."""

    def __init__(self, sent: int) -> None:
        super().__init__("no response received")
        self.sent = sent


# --------------------------------------------------------------------------------------------------

class Channel:
    """One ICMP socket of a family and kind, shared by every check on one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, family: int, kind: str) -> None:
        from executors._kit import poll as _poll
        from executors._kit import timing as _timing  # here, not at import: strategy() is asked at start-up

        self._timing = _timing
        self.family, self.kind = family, kind
        self.sock = sock = open_socket(family, kind)
        try:
            if kind == DATAGRAM:
                sock.bind(("0.0.0.0", 0) if family == socket.AF_INET else ("::", 0))
                self.ident = sock.getsockname()[1]  # the kernel writes this identifier into each request
                if family == socket.AF_INET:
                    sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
                else:
                    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
            else:
                self.ident = int.from_bytes(os.urandom(2), "big")
                _filter_replies_and_errors(sock, family)
            _big_buffers(sock)
        except OSError as exc:
            sock.close()
            raise Unavailable(f"cannot set up the ICMP socket: {os.strerror(exc.errno or 0).lower()}") from None
        _timing.rx_stamps_on(sock)
        self._seq = int.from_bytes(os.urandom(2), "big")
        self._waiting: dict[int, tuple[bytes, asyncio.Future]] = {}
        self._loop = loop
        self._poll = _poll.poller(loop)
        self._poll.watch(sock.fileno(), _poll.IN, self._ready)

    async def echo(self, sockaddr: tuple, payload: bytes, timeout: float) -> tuple[int, int]:
        """Send one echo request and wait up to `timeout` s for its reply.

        Returns (unix ns read just before sending, unix ns the reply arrived). IcmpError when sending
        fails or an ICMP error answers; NoReply when nothing answers in time.
        """
        seq = self._next_seq()
        waiter = self._loop.create_future()
        self._waiting[seq] = (packed(sockaddr[0]), waiter)
        packet = echo_request(self.family, self.ident, seq, payload)
        started = time.time_ns()
        sent = 0
        try:
            try:
                async with asyncio.timeout(timeout):
                    sent = self._send(packet, sockaddr)
                    while not sent:  # the send buffer is full (a burst of large requests): try again soon
                        await asyncio.sleep(0.001)
                        sent = self._send(packet, sockaddr)
                    arrived, error = await waiter
            except TimeoutError:
                raise NoReply(sent or started) from None
        finally:
            if self._waiting.get(seq, (None, None))[1] is waiter:
                del self._waiting[seq]
        if error:
            raise IcmpError(error, sent)
        return sent, max(arrived, sent)

    def _send(self, packet: bytes, sockaddr: tuple) -> int:
        """sendto(); the unix ns read just before the datagram left, 0 when the send buffer is full.
        IcmpError when it cannot leave.

        An ICMP error about an earlier request leaves its errno pending on the socket, and the kernel
        fails the next send on the socket with it (sk_err), whoever sends: that send is tried again
        once, as reporting the pending error cleared it. A real failure fails twice.
        """
        for attempt in (1, 2):
            sent = time.time_ns()
            try:
                self.sock.sendto(packet, sockaddr)
                return sent
            except (BlockingIOError, InterruptedError):
                return 0
            except OSError as exc:
                if attempt == 2:
                    raise IcmpError(f"send echo request to {sockaddr[0]}: {_errno_text(exc)}") from None
        return 0

    def _next_seq(self) -> int:
        for _ in range(65536):
            self._seq = (self._seq + 1) & 0xFFFF
            if self._seq not in self._waiting:
                return self._seq
        raise IcmpError("65536 echo requests in flight on one socket")

    # ----------------------------------------------------------------------------------------------

    def _ready(self, events: int) -> None:
        """Poller callback: hand every queued reply (and, for datagram sockets, error) to its waiter."""
        recvmsg, stamp = self.sock.recvmsg, self._timing.rx_stamp
        for _ in range(READS_PER_WAKEUP):
            try:
                data, ancdata, _, address = recvmsg(READ_SIZE, self._timing.ANCILLARY)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # a pending socket error (an ICMP error's errno): its details are in the error queue
                continue
            self._packet(data, address[0], stamp(ancdata) or time.time_ns())
        if self.kind == DATAGRAM:
            self._drain_errors()

    def _packet(self, data: bytes, source: str, arrived: int) -> None:
        family = self.family
        if family == socket.AF_INET and self.kind == RAW:
            data = data[(data[0] & 0x0F) * 4:] if data else b""  # a raw IPv4 socket keeps the IP header
        if len(data) < 8:
            return
        kind, code, _, ident, seq = _HEADER.unpack_from(data)
        if kind == ECHO_REPLY[family]:
            if ident == self.ident:
                self._settle(seq, _packed_or_none(source), arrived, "")
            return
        if self.kind == RAW:  # an error message quoting one of our requests
            quoted = _quoted_request(family, data[8:])
            if quoted and quoted[1] == self.ident:
                destination, _, quoted_seq = quoted
                info = struct.unpack_from("!I", data, 4)[0] if family == socket.AF_INET6 else \
                    struct.unpack_from("!H", data, 6)[0]
                self._settle(quoted_seq, destination, arrived, error_reason(family, kind, code, info, source))

    def _drain_errors(self) -> None:
        """Read the error queue: ICMP errors about this socket's requests (IP_RECVERR)."""
        level = socket.IPPROTO_IP if self.family == socket.AF_INET else socket.IPPROTO_IPV6
        wanted = IP_RECVERR if self.family == socket.AF_INET else IPV6_RECVERR
        for _ in range(READS_PER_WAKEUP):
            try:
                data, ancdata, _, address = self.sock.recvmsg(READ_SIZE, 512, socket.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            arrived = time.time_ns()
            for cmsg_level, cmsg_type, blob in ancdata:
                if cmsg_level != level or cmsg_type != wanted or len(blob) < _ERR.size or len(data) < 8:
                    continue
                err_no, origin, kind, code, _, info, _ = _ERR.unpack_from(blob)
                seq = _HEADER.unpack_from(data)[4]  # the request as we sent it (identifier as the kernel wrote it)
                if origin in (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6):
                    reason = error_reason(self.family, kind, code, info, _offender(blob[_ERR.size:]))
                else:
                    reason = os.strerror(err_no).lower() if err_no else "local error"
                self._settle(seq, _packed_or_none(address[0]) if address else None, arrived, reason)

    def _settle(self, seq: int, destination: bytes | None, arrived: int, error: str) -> None:
        entry = self._waiting.get(seq)
        if entry is None or destination is None or entry[0] != destination:
            return  # not ours, or from another host than the one asked
        waiter = entry[1]
        if not waiter.done():
            waiter.set_result((arrived, error))

    def close(self) -> None:
        self._poll.forget(self.sock.fileno())
        self.sock.close()


def _filter_replies_and_errors(sock: socket.socket, family: int) -> None:
    """Keep only echo replies and error messages (a raw socket otherwise gets every ICMP message,
    our own echo requests to local addresses included)."""
    if family == socket.AF_INET:
        passed = (1 << 0) | (1 << 3) | (1 << 11) | (1 << 12)
        sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("I", ~passed & 0xFFFFFFFF))  # set bits are blocked
    else:
        words = [0xFFFFFFFF] * 8
        for kind in (1, 2, 3, 4, 129):
            words[kind >> 5] &= ~(1 << (kind & 31))
        sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("8I", *words))


def _big_buffers(sock: socket.socket) -> None:
    for forced, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, forced, SOCKET_BUFFER)  # beyond [rw]mem_max: needs CAP_NET_ADMIN
        except OSError:
            try:
                sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)  # capped at net.core.[rw]mem_max
            except OSError:
                pass


def _quoted_request(family: int, quoted: bytes) -> tuple[bytes, int, int] | None:
    """(destination, identifier, sequence) of the echo request an ICMP error message quotes."""
    if family == socket.AF_INET:
        if len(quoted) < 20 or quoted[9] != socket.IPPROTO_ICMP:
            return None
        header = (quoted[0] & 0x0F) * 4
        destination, icmp = quoted[16:20], quoted[header:header + 8]
    else:
        if len(quoted) < 48 or quoted[6] != socket.IPPROTO_ICMPV6:
            return None
        destination, icmp = quoted[24:40], quoted[40:48]
    if len(icmp) < 8 or icmp[0] != ECHO_REQUEST[family]:
        return None
    _, _, _, ident, seq = _HEADER.unpack(icmp)
    return destination, ident, seq


def _offender(blob: bytes) -> str:
    """The address in the sockaddr after a sock_extended_err (the host that sent the ICMP error)."""
    if len(blob) >= 8 and int.from_bytes(blob[:2], "little") == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, blob[4:8])
    if len(blob) >= 24 and int.from_bytes(blob[:2], "little") == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, blob[8:24])
    return ""


def _packed_or_none(address: str) -> bytes | None:
    try:
        return packed(address)
    except (OSError, ValueError):
        return None


def _errno_text(exc: OSError) -> str:
    return os.strerror(exc.errno).lower() if exc.errno else str(exc)


_channels: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict]" = weakref.WeakKeyDictionary()


def channel(loop: asyncio.AbstractEventLoop, family: int, kind: str) -> Channel:
    """The shared channel of `loop` for a family and kind, opened on first use (Unavailable if it cannot be)."""
    mine = _channels.setdefault(loop, {})
    found = mine.get((family, kind))
    if found is None:
        found = mine[(family, kind)] = Channel(loop, family, kind)
    return found
