"""Clock reads as close to the I/O as Linux allows, so `ping_ms` is the target's time, not the loop's.

A check's end is not read when its coroutine resumes (that can be many milliseconds later on a busy
loop) but taken from the I/O itself:

* a TCP handshake ends at `start of connect() + the kernel's RTT sample of the handshake` (TCP_INFO
  `tcpi_rtt`: SYN sent to SYN-ACK processed, in microseconds, on the kernel's monotonic clock). When
  the kernel has no clean sample (a SYN was retransmitted) or on another platform: the time the
  writability callback ran;
* bytes received on a plain socket carry the kernel's receive timestamp of the last segment read
  (SO_TIMESTAMPNS through recvmsg, CLOCK_REALTIME); bytes received through an asyncio transport (TLS,
  proxies) are stamped when the protocol's `data_received` callback runs, before any coroutine resumes.

`Stamps` maps stream offsets to those timestamps, so a parser can ask when the byte that completed a
response head arrived. And `connect` sends a request's head from the callback that sees the socket
connected, so a busy loop does not hold the request back (the target would then answer later).
PEEKAPING_COARSE_TIMING=1 turns all of it off (clock read on resume, request sent on resume, as
before): the reference row of bench/fidelity.py.

Importing this module also freezes the objects alive so far out of the garbage collector's reach and
makes full collections rarer (executors are imported once start-up is done): a full collection over
the start-up heap is a loop stall that every in-flight check would otherwise feel.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import socket
import struct
import sys
import time

from executors._kit import poll as _poll

COARSE = bool(os.environ.get("PEEKAPING_COARSE_TIMING"))
LINUX = sys.platform.startswith("linux")
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux value; SCM_TIMESTAMPNS is the same number
ANCILLARY = socket.CMSG_SPACE(16) if hasattr(socket, "CMSG_SPACE") else 64  # one struct timespec
_TCP_INFO = getattr(socket, "TCP_INFO", 11)
_TCP_INFO_LEN = 104  # through tcpi_total_retrans
_TIMESPEC = struct.Struct("qq")
_RTT = struct.Struct("I")  # tcpi_rtt, microseconds, at offset 68
_RETRANS = struct.Struct("I")  # tcpi_total_retrans, at offset 100

now_ns = time.time_ns
_PENDING = frozenset((errno.EINPROGRESS, errno.EAGAIN, errno.EINTR))  # connect() under way


_holder: socket.socket | None = None


def rx_stamps_on(sock: socket.socket) -> bool:
    """Ask the kernel to stamp every segment this socket receives; False where it cannot.

    Linux stamps packets on arrival only while some socket asks for it, and switching that on is
    deferred to a work queue: a reply arriving right after the switch could go unstamped. So the
    first call also opens one UDP socket that asks for stamps and is kept open for the process's life.
    """
    global _holder
    if COARSE or not LINUX:
        return False
    try:
        if _holder is None:
            _holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            _holder.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        return True
    except OSError:
        return False


def rx_stamp(ancdata: list) -> int:
    """The receive timestamp (unix ns) in recvmsg's ancillary data; 0 when there is none."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanos = _TIMESPEC.unpack_from(data)
            return seconds * 1_000_000_000 + nanos
    return 0


def handshake_rtt_ns(sock: socket.socket) -> int | None:
    """The kernel's RTT sample of this connection's handshake, or None when it has no clean one.

    Right after connect() completes, the smoothed RTT is the one sample taken from the SYN-ACK. A
    retransmitted SYN makes that sample relative to the retry, so then there is no answer.
    """
    if not LINUX:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_LEN)
    except OSError:
        return None
    if len(info) < _TCP_INFO_LEN or _RETRANS.unpack_from(info, 100)[0]:
        return None
    rtt_us = _RTT.unpack_from(info, 68)[0]
    return rtt_us * 1000 if rtt_us else None


async def connect(loop: asyncio.AbstractEventLoop, sock: socket.socket, address: tuple,
                  first: bytes = b"") -> tuple[int, int, int]:
    """connect() a non-blocking socket and send `first` the moment it is connected, without waiting
    for a coroutine to resume (so a busy loop does not delay a request by a turn).

    Returns (unix ns the handshake completed, bytes of `first` sent, unix ns they were sent).
    OSError on failure. On loopback the handshake is usually done when connect() returns, and the
    data leaves at once; otherwise the writability callback sends it.
    """
    if COARSE:
        first = b""  # the reference: the request leaves when the coroutine resumes, as before
    started = now_ns()
    error = sock.connect_ex(address)  # an errno rather than an exception: this runs once per check
    if error == 0:
        done = now_ns()
        return done, _send(sock, first), done
    if error not in _PENDING:
        raise OSError(error, os.strerror(error))
    if first:
        before = now_ns()  # read before sending: the answer may come back before send() returns
        try:
            sent = sock.send(first)  # EAGAIN while the handshake is still under way
        except (BlockingIOError, InterruptedError):
            pass
        else:  # connected already (loopback completes the handshake inside connect())
            return before, sent, before
    fd = sock.fileno()
    waiter = loop.create_future()
    poll = _poll.poller(loop)

    def writable(_: int) -> None:
        poll.forget(fd)
        if waiter.done():
            return
        seen = now_ns()
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # reading it clears it
        sending = now_ns()
        sent = 0 if error else _send(sock, first)
        waiter.set_result((seen, error, sent, sending))

    poll.watch(fd, _poll.OUT, writable)
    try:
        seen, error, sent, sent_at = await waiter
    finally:
        poll.forget(fd)
    if error:
        raise OSError(error, os.strerror(error))
    return _handshake_end(sock, started, seen), sent, sent_at


def _send(sock: socket.socket, data: bytes) -> int:
    if not data:
        return 0
    try:
        return sock.send(data)
    except (BlockingIOError, InterruptedError):
        return 0
    except OSError:
        return 0  # the caller's own write reports it


def _handshake_end(sock: socket.socket, started: int, seen: int) -> int:
    """When the handshake completed: the kernel's SYN-ACK time if it has a clean sample, else `seen`."""
    if COARSE:
        return now_ns()
    rtt = handshake_rtt_ns(sock)
    if rtt is not None and started + rtt < seen:
        return started + rtt
    return seen


class Stamps:
    """When the bytes of one connection arrived: (end offset in the stream, unix ns) per read.

    Marks are kept from the last `restart` on (a request being sent), at most LIMIT of them; past that
    the last mark moves forward, which only matters for heads spread over more than LIMIT reads.
    """
    __slots__ = ("fed", "marks")
    LIMIT = 32

    def __init__(self) -> None:
        self.fed = 0
        self.marks: list[tuple[int, int]] = []

    def mark(self, size: int, ns: int) -> None:
        self.fed += size
        if len(self.marks) < self.LIMIT:
            self.marks.append((self.fed, ns))
        else:
            self.marks[-1] = (self.fed, ns)

    def restart(self) -> None:
        self.marks.clear()

    def first(self) -> int:
        """When the first byte since `restart` arrived (now when nothing did, or in coarse mode)."""
        if COARSE or not self.marks:
            return now_ns()
        return self.marks[0][1]

    def through(self, offset: int) -> int:
        """When the byte just before stream offset `offset` arrived (now when unknown, or coarse)."""
        if not COARSE:
            for end, ns in self.marks:
                if end >= offset:
                    return ns
        return now_ns()


def _tune_gc() -> None:
    if os.environ.get("PEEKAPING_NO_GC_TUNING"):
        return
    gc.freeze()  # what start-up allocated is never scanned again
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 50)  # full collections 5x rarer; young ones unchanged


_tune_gc()
