"""HTTP/1.1 exchanges for the HTTP-family executors, on asyncio streams (uvloop when the worker runs it).

Why our own client and not httpx or aiohttp: a prober needs what those libraries hide. A fresh
connection per check (reused only inside the check, as NTLM's three legs require), phase timings
(DNS, connect, TLS, first byte, transfer), the TLS session of every connection kept for certificate
reporting (also when verification fails), every proxy kind incl. a TLS proxy and SOCKS4, bounded
reads, Go's redirect rules, and timestamps taken at the I/O rather than when a coroutine resumes
(`Response.head_ns`, see executors/_kit/timing.py). And it is measured 3x cheaper in CPU per check than
an aiohttp session per check (see README). Failures raise `GoError`, whose text imitates Go's net/http
so messages match the Go worker's; the executor adds the `<Op> "<url>": ` prefix.
This module holds URLs, requests and responses; executors/_kit/dial.py the connections.
"""

from __future__ import annotations

import asyncio
import ssl
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from executors._kit import limits as _limits, timing as _timing, tls as _tls
from executors._kit.gotext import os_error_text
from executors._kit.dial import (LINE_LIMIT, READ_CHUNK, Conn, Dialer, GoError, Proxy, TLSState, _is_ip,
                             join_host_port, proxy_from_task)

__all__ = ["GoError", "Proxy", "Response", "Session", "Timings", "TLSState", "URL", "check_target", "go_quote",
           "join_host_port", "parse_url", "proxy_from_task", "redact"]

HEAD_LIMIT = 256 * 1024  # status line plus headers of one response
SLURP = 2048  # Go drains this much of a redirect (or 401) body so the connection can be reused


@dataclass(slots=True)
class Timings:
    """Seconds spent per phase, summed over every connection and round trip of one check."""
    dns: float = 0.0
    connect: float = 0.0
    tls: float = 0.0
    ttfb: float = 0.0
    transfer: float = 0.0

    def as_ms(self) -> dict[str, float]:
        return {"dns": round(self.dns * 1000, 3), "connect": round(self.connect * 1000, 3),
                "tls": round(self.tls * 1000, 3), "ttfb": round(self.ttfb * 1000, 3),
                "transfer": round(self.transfer * 1000, 3)}


# --------------------------------------------------------------------------------------------------
# Go's quoting and URLs

def go_quote(text: str) -> str:
    """strconv.Quote: double quotes, backslash escapes, printable Unicode kept."""
    out = ['"']
    for ch in text:
        o = ord(ch)
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif ch in "\a\b\f\n\r\t\v":
            out.append({"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
                        "\v": "\\v"}[ch])
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif 0xD800 <= o <= 0xDFFF:
            out.append("\\ufffd")
        elif not ch.isprintable() and o > 0x7F:
            out.append(f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


_PATH_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@/%")
_QUERY_SAFE = _PATH_SAFE | frozenset(b"?")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _escape(text: str, safe: frozenset) -> str:
    raw = text.encode("utf-8", "surrogateescape")
    if all(b in safe for b in raw):
        return text
    return "".join(chr(b) if b in safe else f"%{b:02X}" for b in raw)


@dataclass(slots=True)
class URL:
    scheme: str  # lower case
    host: str  # without brackets; IDNA (ASCII) form
    port: int
    hostport: str  # Host header and CONNECT target: host[:port] as written
    target: str  # request-target in origin form
    text: str  # the URL as Go prints it in errors (password replaced by ***)
    user: tuple[str, str] | None = None
    raw: str = ""  # as given (may hold a password: never print it); base for relative redirects

    @property
    def absolute(self) -> str:
        return f"{self.scheme}://{self.hostport}{self.target}"


_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://[^/?#@]*?:)[^/?#@]*@")


def redact(raw: str) -> str:
    """The URL with the password of its userinfo replaced by ***, as Go's stripPassword does."""
    return _USERINFO.sub(r"\1***@", raw, count=1)


_urls = _limits.BoundedCache(max_bytes=4 << 20, max_entries=4096, max_item=64 * 1024)


def parse_url(raw: str) -> URL:
    """url.Parse plus the request-time checks of net/http; GoError with Go's text on failure.

    Cached: a monitor asks for the same URL every interval. The cache is bounded in bytes (a URL
    object holds ~4 copies of the text); URLs over 16 KiB are parsed per use instead. Callers must
    not modify the result.
    """
    return _urls.get_or_make(raw, lambda: _parse_url(raw), 4 * len(raw) + 512)


def _parse_url(raw: str) -> URL:
    shown = go_quote(redact(raw))
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise GoError(f"parse {shown}: net/url: invalid control character in URL")
    if raw.startswith(":"):
        raise GoError(f"parse {shown}: missing protocol scheme")
    try:
        parts = urlsplit(raw)
    except ValueError as exc:
        text = str(exc)
        if "IPv6" in text or "bracket" in text.lower():
            raise GoError(f"parse {shown}: missing ']' in host") from None
        raise GoError(f"parse {shown}: {text}") from None
    bad = _BAD_ESCAPE.search(parts.path)
    if bad:
        raise GoError(f"parse {shown}: invalid URL escape {go_quote(parts.path[bad.start():bad.start() + 3])}")
    scheme = parts.scheme.lower()
    netloc = parts.netloc
    userinfo, _, hostport = netloc.rpartition("@") if "@" in netloc else ("", "", netloc)
    user = None
    if userinfo:
        name, _, password = userinfo.partition(":")
        user = (unquote(name), unquote(password))
    host, port_text = hostport, ""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise GoError(f"parse {shown}: missing ']' in host")
        host, rest = hostport[1:end], hostport[end + 1:]
        if rest and not rest.startswith(":"):
            raise GoError(f"parse {shown}: invalid port {go_quote(rest)} after host")
        port_text = rest[1:]
    elif ":" in hostport:
        host, _, port_text = hostport.rpartition(":")
    if port_text and not port_text.isdigit():
        raise GoError(f"parse {shown}: invalid port {go_quote(':' + port_text)} after host")
    for ch in host:
        if ch in " <>\"`{}|\\^":
            raise GoError(f"parse {shown}: invalid character {go_quote(ch)} in host name")
    text = redact(raw)
    if "#" in text:
        text = text.split("#", 1)[0]
    if scheme not in ("http", "https"):
        return URL(scheme, host, 0, hostport, "", text, user, raw)
    try:
        ascii_host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        ascii_host = host
    port = int(port_text) if port_text else (443 if scheme == "https" else 80)
    path = _escape(parts.path, _PATH_SAFE) or "/"
    target = path + ("?" + _escape(parts.query, _QUERY_SAFE) if parts.query or raw.split("#")[0].endswith("?")
                     else "")
    hostport_ascii = hostport if host.isascii() else hostport.replace(host, ascii_host)
    return URL(scheme, ascii_host.lower() if not _is_ip(ascii_host) else ascii_host, port, hostport_ascii,
               target, text, user, raw)


def check_target(url: URL) -> None:
    """The transport's checks before dialling (Go: `unsupported protocol scheme`, `no Host`)."""
    if url.scheme not in ("http", "https"):
        raise GoError(f"unsupported protocol scheme {go_quote(url.scheme)}")
    if not url.host:
        raise GoError("http: no Host in request URL")
    if not 0 < url.port < 65536:
        raise GoError(f"dial tcp: address {url.port}: invalid port")


# --------------------------------------------------------------------------------------------------
# Responses

_NONE, _LENGTH, _CHUNKED, _CLOSE = 0, 1, 2, 3


class Response:
    """Status and headers of one response; the body is read (bounded) or discarded by the caller."""

    __slots__ = ("status", "status_text", "headers", "conn", "_mode", "_left", "_chunk_crlf", "done", "close",
                 "gzip", "head_ns")

    def __init__(self, status: int, status_text: str, headers: list[tuple[str, str]], conn: Conn,
                 head_ns: int = 0) -> None:
        self.status, self.status_text, self.headers, self.conn = status, status_text, headers, conn
        self.head_ns = head_ns or _timing.now_ns()  # unix ns when the byte ending the head arrived
        self._mode, self._left, self._chunk_crlf = _NONE, 0, False
        self.done = False
        self.close = False
        self.gzip = False  # we asked for gzip and got it: decode the body (Go's transparent gzip)

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None

    def header_values(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    async def _piece(self) -> bytes:
        """The next piece of raw (transfer-decoded) body; b"" at the end."""
        reader = self.conn.reader
        mode = self._mode
        try:
            if mode == _LENGTH:
                if self._left <= 0:
                    return b""
                data = await reader.read(min(self._left, READ_CHUNK))
                if not data:
                    raise GoError("unexpected EOF")
                self._left -= len(data)
                return data
            if mode == _CLOSE:
                return await reader.read(READ_CHUNK)
            if mode == _CHUNKED:
                while self._left == 0:
                    if self._chunk_crlf:
                        line = await reader.readuntil(b"\n")
                        if line not in (b"\r\n", b"\n"):
                            raise GoError("malformed chunked encoding")
                        self._chunk_crlf = False
                    line = await reader.readuntil(b"\n")
                    size_text = line.split(b";", 1)[0].strip()
                    try:
                        size = int(size_text, 16)
                        if size < 0 or size_text[:1] in (b"+", b"-") or b"_" in size_text:
                            raise ValueError
                    except ValueError:
                        raise GoError("invalid byte in chunk length") from None
                    if size == 0:
                        while True:  # trailers up to the blank line
                            trailer = await reader.readuntil(b"\n")
                            if trailer in (b"\r\n", b"\n"):
                                break
                        return b""
                    self._left = size
                data = await reader.read(min(self._left, READ_CHUNK))
                if not data:
                    raise GoError("unexpected EOF")
                self._left -= len(data)
                if self._left == 0:
                    self._chunk_crlf = True
                return data
            return b""
        except asyncio.IncompleteReadError:
            raise GoError("unexpected EOF") from None
        except asyncio.LimitOverrunError:
            raise GoError("http chunk length too large") from None
        except ssl.SSLError as exc:
            raise GoError(_tls.tls_error_text(exc, "")) from None
        except OSError as exc:
            raise GoError(f"read tcp {self.conn.addresses()}: read: {os_error_text(exc)}") from None

    async def read_body(self, keep: int, gzip: bool, timings: Timings | None = None) -> bytearray:
        """The body, of which at most `keep` (decoded) bytes are kept; the rest is read and dropped.

        Reading on to the end (as Go does) keeps Go's statuses: an endless or broken body is a read
        error, a long one is judged on its first `keep` bytes; memory stays bounded either way. gzip is
        inflated only up to the body cap (`_limits.Inflater`): compressed bytes past it are read raw.
        """
        out = bytearray()
        inflate = _limits.Inflater(max(keep, _limits.max_body_bytes())) if gzip else None
        try:
            while True:
                piece = await self._piece()
                if not piece:
                    break
                if inflate is not None:
                    inflate.feed(piece, out, keep)  # past the body cap: a no-op, the piece is dropped
                elif len(out) < keep:
                    out += piece[:keep - len(out)]
            if inflate is not None:
                inflate.finish()
            self.done = True
            return out  # not copied into bytes: at 1 MiB a copy would double the peak
        except _limits.InflateError as exc:
            raise GoError(str(exc)) from None
        finally:
            if timings is not None:  # from the end of the head to the body read finished (as HTTP probes do)
                timings.transfer += max(0, _timing.now_ns() - self.head_ns) / 1e9

    async def discard(self, limit: int = SLURP) -> None:
        """Drain up to `limit` bytes so the connection can serve the next request, as Go does."""
        if self.done:
            return
        read = 0
        try:
            while read <= limit:
                piece = await self._piece()
                if not piece:
                    self.done = True
                    return
                read += len(piece)
        except GoError:
            pass
        self.close = True


# --------------------------------------------------------------------------------------------------
# A session: the connections of one check

class Session(Dialer):
    """The client of one check: its TLS context, proxy and timings, and at most one idle connection."""

    def __init__(self, tls: _tls.TLSSettings, proxy: Proxy | None, timings: Timings, user_agent: str) -> None:
        self.tls_settings = tls
        self._ctx: ssl.SSLContext | None = None
        self.proxy = proxy
        self.timings = timings
        self.user_agent = user_agent
        self.idle: Conn | None = None
        self.failed_tls: TLSState | None = None  # a handshake that failed verification, for reporting
        self._open: list[Conn] = []

    @property
    def ctx(self) -> ssl.SSLContext:
        """Fetched on the first handshake: a plain-http check never loads a trust store."""
        if self._ctx is None:
            self._ctx = _tls.client_context(self.tls_settings)
        return self._ctx

    async def aclose(self) -> None:
        for conn in self._open:
            conn.close()
        self._open.clear()
        self.idle = None

    def release(self, resp: Response) -> None:
        conn = resp.conn
        if resp.done and not resp.close and conn.reusable:
            if self.idle is not None and self.idle is not conn:
                self.idle.close()
            self.idle = conn
        else:
            conn.close()

    # --- one round trip ----------------------------------------------------------------------------
    async def round_trip(self, method: str, url: URL, header: dict[str, str], body: bytes | None,
                         gzip: bool) -> Response:
        """Send one request and read the response head (1xx skipped). GoError on failure."""
        key = self._key(url)
        conn = self.idle if self.idle is not None and self.idle.key == key else None
        if conn is not None:
            self.idle = None
            try:
                return await self._exchange(conn, method, url, header, body, gzip, reused=True)
            except _StaleConnection:
                conn.close()
        early = b""
        if self.proxy is None and url.scheme == "http":  # the head can leave the moment the socket connects
            early = _request_bytes(method, url, header, body, gzip, False, None)
        conn = await self._connect(url, key, early)
        try:
            return await self._exchange(conn, method, url, header, body, gzip, reused=False, data=early or None)
        except _StaleConnection:
            conn.close()
            raise GoError("EOF") from None

    def _key(self, url: URL) -> tuple:
        if self.proxy is not None and self.proxy.kind in ("http", "https") and url.scheme == "http":
            return ("proxy", self.proxy.address)
        return (url.scheme, url.host, url.port)

    async def _exchange(self, conn: Conn, method: str, url: URL, header: dict[str, str], body: bytes | None,
                        gzip: bool, reused: bool, data: bytes | None = None) -> Response:
        if data is None:
            data = _request_bytes(method, url, header, body, gzip, conn.absolute_form, conn.proxy_auth)
        timings = self.timings
        if conn.early:  # the dial sent (part of) this head already
            data, sent, conn.early = data[conn.early:], conn.early_ns, 0
        else:
            conn.stamps.restart()
            sent = _timing.now_ns()
        try:
            if data:
                conn.writer.write(data)
            if body:
                conn.writer.write(body)  # not joined to the head: a large body is not copied once more
            if len(data) + len(body or b"") > 65536:
                await conn.writer.drain()
        except (OSError, RuntimeError) as exc:
            if reused:
                raise _StaleConnection() from None
            raise GoError(f"write tcp {conn.addresses()}: write: {os_error_text(exc) if isinstance(exc, OSError) else exc}")
        resp = await self._read_head(conn, reused, method)
        timings.ttfb += max(0, conn.stamps.first() - sent) / 1e9  # request written to first byte received
        self._framing(resp, method)
        return resp

    async def _read_head(self, conn: Conn, reused: bool, method: str) -> Response:
        reader = conn.reader
        for _ in range(6):  # skip up to five 1xx responses, as Go does
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                if not exc.partial:
                    if reused:
                        raise _StaleConnection() from None
                    raise GoError("EOF") from None
                raise GoError("unexpected EOF") from None
            except asyncio.LimitOverrunError:
                raise GoError(f"net/http: server response headers exceeded {HEAD_LIMIT} bytes; aborted") from None
            except ssl.SSLError as exc:
                raise GoError(_tls.tls_error_text(exc, "")) from None
            except OSError as exc:
                if reused:
                    raise _StaleConnection() from None
                raise GoError(f"read tcp {conn.addresses()}: read: {os_error_text(exc)}") from None
            status, text, minor = _status_line(line)
            headers = await _read_headers(reader, len(line))
            if 100 <= status < 200 and status != 101:
                continue
            resp = Response(status, text, headers, conn, conn.stamps.through(conn.consumed()))
            connection = (resp.header("Connection") or "").lower()
            if "close" in connection or (minor == 0 and "keep-alive" not in connection):
                conn.reusable = False
            return resp
        raise GoError("net/http: too many 1xx informational responses")

    def _framing(self, resp: Response, method: str) -> None:
        status = resp.status
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            resp._mode, resp.done = _NONE, True
            return
        te = resp.header("Transfer-Encoding")
        if te is not None:
            if te.strip().lower() != "chunked":
                raise GoError(f"unsupported transfer encoding: {go_quote(te)}")
            resp._mode = _CHUNKED
            return
        lengths = resp.header_values("Content-Length")
        if lengths:
            values = {v.strip() for v in lengths}
            if len(values) > 1:
                raise GoError("http: message cannot contain multiple Content-Length headers; got "
                              + "[" + " ".join(go_quote(v) for v in lengths) + "]")
            value = values.pop()
            if not value.isdigit():
                raise GoError(f"bad Content-Length {go_quote(value)}")
            resp._mode, resp._left = _LENGTH, int(value)
            if resp._left == 0:
                resp.done = True
            return
        resp._mode = _CLOSE
        resp.conn.reusable = False
    async def _connect_tunnel(self, conn: Conn, url: URL) -> None:
        lines = [f"CONNECT {url.hostport} HTTP/1.1", f"Host: {url.hostport}", f"User-Agent: {self.user_agent}"]
        auth = self.proxy.basic() if self.proxy else None
        if auth:
            lines.append(f"Proxy-Authorization: {auth}")
        started = _timing.now_ns()
        try:
            conn.stamps.restart()
            conn.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            try:
                line = await conn.reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                raise GoError("EOF") from None
            except asyncio.LimitOverrunError:
                raise GoError("malformed HTTP response") from None
            except OSError as exc:
                raise GoError(f"read tcp {conn.addresses()}: read: {os_error_text(exc)}") from None
            status, text, _ = _status_line(line)
            await _read_headers(conn.reader, len(line))
        finally:
            self.timings.connect += (conn.stamps.through(conn.consumed()) - started) / 1e9
        if status != 200:
            _, sep, reason = text.partition(" ")
            raise GoError(reason if sep else "unknown status code")

class _StaleConnection(Exception):
    """A reused connection was closed by the server before answering: retry on a fresh one (as Go)."""


_heads: dict[tuple, bytes] = {}  # recent request heads: a monitor sends the same one every interval
_HEADS_MAX, _HEAD_CACHED_MAX = 256, 2048  # entries; bytes of a head worth keeping


def _request_bytes(method: str, url: URL, header: dict[str, str], body: bytes | None, gzip: bool,
                   absolute_form: bool, proxy_auth: str | None) -> bytes:
    """The request line and headers (the body, if any, is written after them)."""
    key = (method, url.raw, tuple(header.items()), len(body) if body else 0, gzip, absolute_form, proxy_auth)
    data = _heads.get(key)
    if data is None:
        data = _render_head(method, url, header, body, gzip, absolute_form, proxy_auth)
        if len(data) <= _HEAD_CACHED_MAX:
            if len(_heads) >= _HEADS_MAX:
                _heads.clear()
            _heads[key] = data
    return data


def _render_head(method: str, url: URL, header: dict[str, str], body: bytes | None, gzip: bool,
                 absolute_form: bool, proxy_auth: str | None) -> bytes:
    target = url.absolute if absolute_form else url.target
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {url.hostport}\r\n"]
    ua = header.get("User-Agent")
    if ua:
        lines.append(f"User-Agent: {ua}\r\n")
    if body:
        lines.append(f"Content-Length: {len(body)}\r\n")
    elif method in ("POST", "PUT", "PATCH"):
        lines.append("Content-Length: 0\r\n")
    for name in sorted(header):
        if name in ("Host", "User-Agent", "Content-Length", "Transfer-Encoding", "Trailer"):
            continue
        lines.append(f"{name}: {header[name]}\r\n")
    if gzip:
        lines.append("Accept-Encoding: gzip\r\n")
    if absolute_form and proxy_auth and "Proxy-Authorization" not in header:
        lines.append(f"Proxy-Authorization: {proxy_auth}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


def _status_line(line: bytes) -> tuple[int, str, int]:
    """(code, Go's resp.Status, minor version) of a status line; GoError in Go's words."""
    text = line.rstrip(b"\r\n").decode("latin-1")
    proto, sep, status = text.partition(" ")
    if not sep:
        raise GoError(f"net/http: HTTP/1.x transport connection broken: malformed HTTP response {go_quote(text)}")
    status = status.lstrip(" ")
    code_text = status.split(" ", 1)[0]
    if len(code_text) != 3 or not code_text.isdigit():
        raise GoError(f"net/http: HTTP/1.x transport connection broken: malformed HTTP status code "
                      f"{go_quote(code_text)}")
    if proto == "HTTP/1.1":
        minor = 1
    elif proto == "HTTP/1.0":
        minor = 0
    elif proto.startswith("HTTP/1.") and proto[7:].isdigit():
        minor = int(proto[7:])
    else:
        raise GoError(f"net/http: HTTP/1.x transport connection broken: malformed HTTP version {go_quote(proto)}")
    return int(code_text), status, minor


async def _read_headers(reader: asyncio.StreamReader, used: int) -> list[tuple[str, str]]:
    """The header lines up to the blank line; `used` is what the status line took of HEAD_LIMIT."""
    headers: list[tuple[str, str]] = []
    buffered = reader._buffer  # type: ignore[attr-defined]
    end = _head_end(buffered)
    if 0 < end and used + end <= HEAD_LIMIT:  # the whole head is here: take it in one piece
        lines = (await reader.readexactly(end)).split(b"\n")
        for line in lines[:-2]:  # the last two: the blank line and what follows its \n (nothing)
            if len(line) > LINE_LIMIT:  # as readuntil's limit below
                raise GoError(f"net/http: server response headers exceeded {HEAD_LIMIT} bytes; aborted")
            _header_line(headers, line)
        return headers
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            raise GoError("unexpected EOF") from None
        except asyncio.LimitOverrunError:
            raise GoError(f"net/http: server response headers exceeded {HEAD_LIMIT} bytes; aborted") from None
        used += len(line)
        if used > HEAD_LIMIT:
            raise GoError(f"net/http: server response headers exceeded {HEAD_LIMIT} bytes; aborted")
        if line == b"\r\n" or line == b"\n":
            return headers
        _header_line(headers, line)


def _head_end(buffered: bytearray) -> int:
    """Where the blank line ending a head (without its status line) ends in `buffered`; -1 if not there."""
    if buffered[:1] == b"\n":
        return 1
    if buffered[:2] == b"\r\n":
        return 2
    crlf, lf = buffered.find(b"\n\r\n"), buffered.find(b"\n\n")
    if crlf < 0:
        return lf + 2 if lf >= 0 else -1
    return crlf + 3 if lf < 0 or crlf < lf else lf + 2


def _header_line(headers: list[tuple[str, str]], line: bytes) -> None:
    text = line.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
    if text[:1] in (" ", "\t") and headers:  # obsolete line folding
        name, value = headers[-1]
        headers[-1] = (name, value + " " + text.strip())
        return
    name, sep, value = text.partition(":")
    if not sep or not name or name != name.strip():
        raise GoError(f"net/http: HTTP/1.x transport connection broken: malformed MIME header line: {text}")
    headers.append((name, value.strip(" \t")))
