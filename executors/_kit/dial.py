"""Connections of the HTTP client (executors/_kit/http1.py): dialling, proxies, TLS, and timestamped reads.

A plain connection (http, directly or through a plain proxy) is our own socket read with recvmsg, so
every read carries the kernel's receive timestamp (executors/_kit/timing.py); a connection that may carry
TLS runs on an asyncio transport whose protocol stamps each `data_received`. Either way `Conn.stamps`
says when each byte arrived, and the handshake's completion comes from `_timing.connect`. Failures
raise `GoError` in Go's words.

Other clients use it too: `DirectDialer` (dial, handshake) for redis, `Dialer.dial_unix` for docker.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from executors._kit import poll as _poll, timing as _timing, tls as _tls
from executors._kit.gotext import is_domain_name, join_host_port, os_error_text, resolver_suffix

if TYPE_CHECKING:
    from executors._kit.http1 import URL, Timings

LINE_LIMIT = 64 * 1024  # one header line; also caps what a stream buffers ahead (2x) before pausing
READ_CHUNK = 64 * 1024


class GoError(Exception):
    """A failure worded as Go's net/http words it; str(exc) is the text after `<Op> "<url>": `."""


def _is_ip(host: str) -> bool:
    if len(host) > 255:  # longer than any address text: not cached (the cache holds short keys only)
        return False
    return _is_ip_cached(host)


@functools.lru_cache(maxsize=4096)
def _is_ip_cached(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------------
# Proxies: http, https, socks5/socks5h as Go; socks4 done as SOCKS4 rather than Go's SOCKS5

@dataclass(frozen=True, slots=True)
class Proxy:
    kind: str  # http, https, socks4, socks5
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @property
    def address(self) -> str:
        return join_host_port(self.host, self.port)

    def basic(self) -> str | None:
        if self.username is None:
            return None
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return "Basic " + token


def proxy_from_task(p: dict | None) -> Proxy | None:
    """The task's proxy object as the executor uses it; None for none or an unknown protocol."""
    if not p:
        return None
    protocol = p.get("protocol") or "http"
    kind = {"http": "http", "https": "https", "socks": "socks5", "socks5": "socks5", "socks5h": "socks5",
            "socks4": "socks4"}.get(protocol)
    if kind is None:
        return None  # Go ignores an unknown protocol: direct connection
    user, password = p.get("username") or "", p.get("password") or ""
    with_auth = bool(p.get("auth")) and bool(user) and (bool(password) or kind == "socks4")
    return Proxy(kind, p.get("host") or "", int(p.get("port") or 0),
                 user if with_auth else None, password if with_auth else None)


_SOCKS5_REPLIES = {1: "general SOCKS server failure", 2: "connection not allowed by ruleset",
                   3: "network unreachable", 4: "host unreachable", 5: "connection refused", 6: "TTL expired",
                   7: "command not supported", 8: "address type not supported"}
_SOCKS4_REPLIES = {0x5B: "request rejected or failed",
                   0x5C: "request rejected because SOCKS server cannot connect to identd on the client",
                   0x5D: "request rejected because the client program and identd report different user-ids"}


# --------------------------------------------------------------------------------------------------
# Connections

@dataclass(slots=True)
class TLSState:
    """The TLS session with one peer, enough to build `tls_info` afterwards."""
    host: str
    settings: _tls.TLSSettings
    chain: list[bytes]
    verified: bool  # the handshake verified the chain (verify on and it succeeded)

    def info(self) -> dict:
        chain, valid = self.chain, self.verified
        if not self.verified and not self.settings.verify:
            checked = _tls.verify_chain(self.chain, self.host, self.settings.ca_pem)
            if checked is not None:
                chain, valid = checked, True
        return _tls.tls_info(chain, valid)


class Conn:
    __slots__ = ("reader", "writer", "key", "tls", "reusable", "absolute_form", "proxy_auth", "stamps", "early",
                 "early_ns")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: tuple,
                 stamps: _timing.Stamps | None = None) -> None:
        self.reader, self.writer, self.key = reader, writer, key
        self.stamps = stamps or _timing.Stamps()  # when each received byte arrived
        self.early = 0  # bytes of the first request already sent by the dial, the moment it connected
        self.early_ns = 0  # when they were sent
        self.tls: TLSState | None = None
        self.reusable = True
        self.absolute_form = False  # plain http through an http(s) proxy
        self.proxy_auth: str | None = None

    def consumed(self) -> int:
        """The stream offset the reader has parsed up to (bytes received minus bytes still buffered)."""
        return self.stamps.fed - len(self.reader._buffer)  # type: ignore[attr-defined]

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:
            pass

    def addresses(self) -> str:
        try:
            local = self.writer.get_extra_info("sockname")
            peer = self.writer.get_extra_info("peername")
            return f"{join_host_port(local[0], local[1])}->{join_host_port(peer[0], peer[1])}"
        except Exception:
            return "?"


class UnixConn(Conn):
    """A connection to a Unix socket (Dialer.dial_unix)."""
    __slots__ = ("path",)

    def addresses(self) -> str:
        return f"@->{self.path}"  # Go's local->remote for an unnamed Unix socket


# --------------------------------------------------------------------------------------------------
# Streams: the reader side is always an asyncio.StreamReader; who feeds it stamps what arrived

class _StampedProtocol(asyncio.StreamReaderProtocol):
    """A StreamReaderProtocol that notes when each piece of data arrived, before the reader sees it."""

    def __init__(self, reader: asyncio.StreamReader, stamps: _timing.Stamps) -> None:
        super().__init__(reader)
        self._stamps = stamps

    def data_received(self, data: bytes) -> None:
        self._stamps.mark(len(data), _timing.now_ns())
        super().data_received(data)


class _SocketStream:
    """A plain socket read with recvmsg on readability, so each read carries its kernel receive stamp.

    It feeds an asyncio.StreamReader (which pauses it past 2x LINE_LIMIT buffered) and offers the
    StreamWriter methods the client uses (write, drain, close, get_extra_info). TLS never runs on it.
    Readiness comes from the executors' epoll set (executors/_kit/poll.py), not one loop watcher per socket.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, reader: asyncio.StreamReader,
                 stamps: _timing.Stamps, peer: tuple) -> None:
        self._loop, self._sock, self._fd = loop, sock, sock.fileno()
        self._poll = _poll.poller(loop)
        self._reader, self._stamps = reader, stamps
        self._kernel = _timing.rx_stamps_on(sock)
        self._out = bytearray()
        self._drained: asyncio.Future | None = None
        self._closed = self._writing = False
        self._reading = True
        self._peer = peer  # the address dialled: a reset socket no longer answers getpeername()
        reader.set_transport(self)  # type: ignore[arg-type]  # for pause_reading / resume_reading
        self._poll.watch(self._fd, _poll.IN, self._event)

    def _update(self) -> None:
        events = (_poll.IN if self._reading else 0) | (_poll.OUT if self._writing else 0)
        if events and not self._closed:
            self._poll.watch(self._fd, events, self._event)
        else:
            self._poll.forget(self._fd)

    def _event(self, events: int) -> None:
        if self._writing and events & ~_poll.IN:  # writable, or an error the send will report
            self._writable()
        if self._reading and events & ~_poll.OUT:  # readable, or an error/hang-up the read will report
            self._readable()

    # reading
    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._update()

    def resume_reading(self) -> None:
        if not self._reading and not self._closed:
            self._reading = True
            self._update()

    def _readable(self) -> None:
        try:
            data, ancillary, _, _ = self._sock.recvmsg(READ_CHUNK, _timing.ANCILLARY if self._kernel else 0)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.pause_reading()
            self._reader.set_exception(exc)
            return
        if not data:
            self.pause_reading()
            self._reader.feed_eof()
            return
        self._stamps.mark(len(data), (_timing.rx_stamp(ancillary) if self._kernel else 0) or _timing.now_ns())
        self._reader.feed_data(data)

    # writing
    def write(self, data: bytes) -> None:
        if self._closed:
            raise RuntimeError("write on a closed connection")
        if not self._out:
            try:
                sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
            self._writing = True
            self._update()
        self._out += data

    def _writable(self) -> None:
        try:
            sent = self._sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._finish_drain(exc)
            return
        del self._out[:sent]
        if not self._out:
            self._finish_drain(None)

    def _finish_drain(self, exc: Exception | None) -> None:
        self._writing = False
        self._update()
        if exc is not None:
            self._out.clear()
            self._reader.set_exception(exc)
        waiter, self._drained = self._drained, None
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    async def drain(self) -> None:
        if self._out:
            if self._drained is None:
                self._drained = self._loop.create_future()
            await self._drained

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._reading = self._writing = False
        self._poll.closing(self._fd)
        self._sock.close()
        self._reader = None  # type: ignore[assignment]  # no reader <-> stream cycle: both go with their
        # last reference instead of waiting for a garbage collection

    def is_closing(self) -> bool:
        return self._closed

    def get_extra_info(self, name: str, default: object = None) -> object:
        if name == "peername":
            return self._peer
        if name == "sockname":
            try:
                return self._sock.getsockname()
            except OSError:
                return default
        if name == "socket":
            return self._sock
        return default


# --------------------------------------------------------------------------------------------------
# Dialling (the connection half of Session)

class Dialer:
    """Opens the connections of one check: direct, through an http(s) proxy or SOCKS, with TLS."""

    proxy: Proxy | None
    timings: "Timings"
    failed_tls: TLSState | None
    tls_settings: _tls.TLSSettings
    _open: list[Conn]

    @property
    def ctx(self) -> ssl.SSLContext:
        raise NotImplementedError

    async def _connect_tunnel(self, conn: Conn, url: "URL") -> None:
        raise NotImplementedError

    async def _connect(self, url: "URL", key: tuple, early: bytes = b"") -> Conn:
        """A connection for `url`; `early` (a plain direct request's head) is sent as soon as it connects."""
        proxy = self.proxy
        plain = url.scheme == "http" and (proxy is None or proxy.kind != "https")  # no TLS on this connection
        if proxy is None:
            conn = self._track(await self.dial(url.host, url.port, key, plain, early if plain else b""))
        elif proxy.kind in ("http", "https"):
            try:
                conn = self._track(await self.dial(proxy.host, proxy.port, key, plain))
                if proxy.kind == "https":
                    await self.handshake(conn, proxy.host, target=False)
            except GoError as exc:
                raise GoError(f"proxyconnect tcp: {exc}") from None
            if url.scheme == "http":
                conn.absolute_form = True
                conn.proxy_auth = proxy.basic()
                return conn
            await self._connect_tunnel(conn, url)
        else:
            where = f"{proxy.kind if proxy.kind == 'socks4' else 'socks'} connect tcp {proxy.address}->{url.hostport}"
            try:
                conn = self._track(await self.dial(proxy.host, proxy.port, key, plain))
            except GoError as exc:
                raise GoError(f"{where}: {exc}") from None
            started = _timing.now_ns()
            try:
                if proxy.kind == "socks4":
                    await self._socks4(conn, url)
                else:
                    await self._socks5(conn, url)
            except asyncio.IncompleteReadError:
                raise GoError(f"{where}: unexpected EOF") from None
            except OSError as exc:
                raise GoError(f"{where}: {os_error_text(exc)}") from None
            except GoError as exc:
                raise GoError(f"{where}: {exc}") from None
            finally:
                self.timings.connect += (conn.stamps.through(conn.consumed()) - started) / 1e9
        if url.scheme == "https":
            await self.handshake(conn, url.host, target=True)
        return conn

    def _track(self, conn: Conn) -> Conn:
        self._open.append(conn)
        return conn

    async def dial(self, host: str, port: int, key: tuple, plain: bool, early: bytes = b"") -> Conn:
        """A TCP connection to host:port: resolve, then try each address in turn; GoError in Go's dial
        words. `plain`: no TLS will run on it (read with recvmsg, kernel receive stamps); `early` is
        sent the moment it connects (`conn.early` says how much went)."""
        if not 0 < port < 65536:
            raise GoError(f"dial tcp: address {port}: invalid port")
        loop = asyncio.get_running_loop()
        if _is_ip(host):
            addresses = [host]
        else:
            if not is_domain_name(host):  # Go's resolver refuses such names without asking DNS
                raise GoError(f"dial tcp: lookup {host}: no such host")
            started = _timing.now_ns()
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                reason = "no such host" if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)) \
                    else "server misbehaving"
                raise GoError(f"dial tcp: lookup {host}{resolver_suffix()}: {reason}") from None
            finally:
                self.timings.dns += (_timing.now_ns() - started) / 1e9
            addresses = list(dict.fromkeys(info[4][0] for info in infos))
        first: GoError | None = None
        for address in addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            started = _timing.now_ns()
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                done, sent, sent_ns = await _timing.connect(loop, sock, (address, port), early)
            except BaseException as exc:
                sock.close()
                if not isinstance(exc, OSError):
                    raise
                self.timings.connect += (_timing.now_ns() - started) / 1e9
                first = first or GoError(f"dial tcp {join_host_port(address, port)}: connect: {os_error_text(exc)}")
                continue
            self.timings.connect += (done - started) / 1e9
            if plain:
                stamps = _timing.Stamps()
                reader = asyncio.StreamReader(limit=LINE_LIMIT, loop=loop)
                conn = Conn(reader, _SocketStream(loop, sock, reader, stamps, (address, port)), key, stamps)
            else:
                conn = await _transport(loop, sock, key)
            conn.early, conn.early_ns = sent, sent_ns
            return conn
        raise first or GoError(f"dial tcp: lookup {host}: no such host")

    async def handshake(self, conn: Conn, host: str, target: bool) -> None:
        """TLS over `conn` with `self.ctx`; GoError in Go's words. `target`: the check's server (its chain
        is kept for tls_info), not a proxy."""
        started = _timing.now_ns()
        try:
            await conn.writer.start_tls(self.ctx, server_hostname=host or None)
        except ssl.SSLCertVerificationError as exc:
            chain = getattr(exc, "peer_chain", None) or []
            if target:
                self.failed_tls = TLSState(host, self.tls_settings, chain, False)
            raise GoError(_tls.verify_error_text(exc, host)) from None
        except ssl.SSLError as exc:
            raise GoError(_tls.tls_error_text(exc, host)) from None
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            if isinstance(exc, ConnectionResetError):
                raise GoError(f"read tcp {conn.addresses()}: read: connection reset by peer") from None
            raise GoError("EOF") from None
        except OSError as exc:
            raise GoError(f"read tcp {conn.addresses()}: read: {os_error_text(exc)}") from None
        finally:
            self.timings.tls += (_timing.now_ns() - started) / 1e9
        if target:
            ssl_object = conn.writer.get_extra_info("ssl_object")
            verified = self.tls_settings.verify
            conn.tls = TLSState(host, self.tls_settings, _tls.chain_der(ssl_object, verified) if ssl_object else [],
                                verified)

    async def dial_unix(self, path: str, key: tuple) -> Conn:
        """A connection to the Unix socket at `path` (a leading @ names an abstract socket, as in Go),
        read like a plain TCP connection; GoError in Go's dial words."""
        address = "\0" + path[1:] if path.startswith("@") else path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        started = _timing.now_ns()
        try:
            error = sock.connect_ex(address)  # a Unix connect completes or fails at once
        except (OSError, ValueError) as exc:
            error = exc.errno if isinstance(exc, OSError) and exc.errno else 22
        self.timings.connect += (_timing.now_ns() - started) / 1e9
        if error:
            sock.close()
            raise GoError(f"dial unix {path}: connect: {os_error_text(OSError(error, ''))}")
        loop = asyncio.get_running_loop()
        stamps = _timing.Stamps()
        reader = asyncio.StreamReader(limit=LINE_LIMIT, loop=loop)
        conn = UnixConn(reader, _SocketStream(loop, sock, reader, stamps, path), key, stamps)
        conn.path = path
        return conn


    async def _socks5(self, conn: Conn, url: URL) -> None:
        reader, writer = conn.reader, conn.writer
        proxy = self.proxy
        assert proxy is not None
        writer.write(b"\x05\x02\x00\x02" if proxy.username is not None else b"\x05\x01\x00")
        version, method = await reader.readexactly(2)
        if version != 5:
            raise GoError(f"unexpected protocol version {version}")
        if method == 0x02 and proxy.username is not None:
            user, password = proxy.username.encode()[:255], (proxy.password or "").encode()[:255]
            writer.write(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)
            _, status = await reader.readexactly(2)
            if status != 0:
                raise GoError("username/password authentication failed")
        elif method == 0xFF:
            raise GoError("no acceptable authentication methods")
        elif method != 0:
            raise GoError(f"unsupported authentication method {method}")
        host = url.host
        try:
            ip = ipaddress.ip_address(host)
            address = (b"\x01" if ip.version == 4 else b"\x04") + ip.packed
        except ValueError:
            name = host.encode("idna")
            if len(name) > 255:
                raise GoError("FQDN too long") from None
            address = b"\x03" + bytes([len(name)]) + name  # the proxy resolves the name (socks5h, as Go)
        writer.write(b"\x05\x01\x00" + address + url.port.to_bytes(2, "big"))
        version, reply, _, kind = await reader.readexactly(4)
        if version != 5:
            raise GoError(f"unexpected protocol version {version}")
        if reply != 0:
            raise GoError("unknown error " + _SOCKS5_REPLIES.get(reply, f"unknown code: {reply}"))
        if kind == 1:
            await reader.readexactly(6)
        elif kind == 4:
            await reader.readexactly(18)
        elif kind == 3:
            size = (await reader.readexactly(1))[0]
            await reader.readexactly(size + 2)
        else:
            raise GoError(f"unknown address type {kind}")

    async def _socks4(self, conn: Conn, url: URL) -> None:
        """SOCKS4 proper: IPv4 only, the client resolves the name, the user name goes as USERID."""
        host = url.host
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            if not is_domain_name(host):
                raise GoError(f"lookup {host}: no such host")
            started = _timing.now_ns()
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, url.port, family=socket.AF_INET,
                                                                      type=socket.SOCK_STREAM)
            except socket.gaierror:
                raise GoError(f"lookup {host}{resolver_suffix()}: no such host") from None
            finally:
                self.timings.dns += (_timing.now_ns() - started) / 1e9
            ip = ipaddress.ip_address(infos[0][4][0])
        if ip.version != 4:
            raise GoError(f"socks4 cannot reach IPv6 address {ip}")
        user = (self.proxy.username or "").encode() if self.proxy else b""
        conn.writer.write(b"\x04\x01" + url.port.to_bytes(2, "big") + ip.packed + user + b"\x00")
        reply = await conn.reader.readexactly(8)
        if reply[0] != 0:
            raise GoError(f"unexpected reply version {reply[0]}")
        if reply[1] != 0x5A:
            raise GoError(_SOCKS4_REPLIES.get(reply[1], f"unknown code: {reply[1]}"))


class DirectDialer(Dialer):
    """The dialer for a client of another protocol: direct connections (no proxy) with Go's dial and TLS
    texts and timestamped reads; `timings` (attributes dns, connect, tls, in seconds) is added to,
    `context` is what `handshake` uses."""

    def __init__(self, timings: object, context: ssl.SSLContext | None = None) -> None:
        self.proxy, self.timings, self.failed_tls, self._open = None, timings, None, []  # type: ignore[assignment]
        self.tls_settings = _tls.TLSSettings()
        self._context = context

    @property
    def ctx(self) -> ssl.SSLContext:
        if self._context is None:
            raise RuntimeError("DirectDialer without a TLS context")
        return self._context


async def _transport(loop: asyncio.AbstractEventLoop, sock: socket.socket, key: tuple) -> Conn:
    """A Conn over a connected socket on an asyncio transport (TLS may start on it)."""
    stamps = _timing.Stamps()
    reader = asyncio.StreamReader(limit=LINE_LIMIT, loop=loop)
    protocol = _StampedProtocol(reader, stamps)
    try:
        transport, _ = await loop.create_connection(lambda: protocol, sock=sock)
    except BaseException:
        sock.close()
        raise
    return Conn(reader, asyncio.StreamWriter(transport, protocol, reader, loop), key, stamps)
