"""`websocket`: open a WebSocket (HTTP/1.1 upgrade answered by 101), optionally send a text and look
for a keyword in the first message received, then close; UP when the upgrade, the exchange and the
close handshake all pass. Peekaping's Go worker has no such executor: the config is ours, modelled
on Uptime Kuma's `websocket-upgrade` monitor (url, subprotocol, ignore TLS errors, accepted close
codes) plus the `headers` of the http executor and a send/keyword exchange.

The connection is the HTTP executor's (executors/_kit: dialing, HTTP CONNECT / SOCKS proxies, TLS
with Go's x509 texts, `tls_info`, timestamps taken at the I/O); the upgrade request goes out through
its HTTP/1.1 client, so a non-101 answer is read like any HTTP response (HTTP/1.0 included). The
WebSocket half is `websockets`' sans-I/O ClientProtocol: it validates the 101 (Sec-WebSocket-Accept,
Upgrade, Connection, subprotocol, extensions) and does the framing (masking, fragments, ping/pong,
the close handshake). A ws:// URL through an HTTP proxy is tunnelled with CONNECT, as browsers do:
a forwarding proxy would not pass the upgrade on.

ping_ms runs from just before dialling to the arrival of the 101 head, or of the first message when
a keyword is checked. The close handshake is not part of it (its time is in timings["close"]).
"""

from __future__ import annotations

import asyncio
import base64
import re
import time

from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.exceptions import InvalidHandshake, PayloadTooBig
from websockets.frames import Opcode
from websockets.http11 import Response as HandshakeResponse
from websockets.protocol import CLOSED, OPEN
from websockets.uri import WebSocketURI

from executors import DOWN, UP, VERSION, Monitor, Result, instant
from executors._kit import limits as _limits, tls as _tls
from executors._kit.dial import READ_CHUNK, Conn, TLSState
from executors._kit.gojson import decode_config, string_map
from executors._kit.gotext import canonical_key, join_host_port
from executors._kit.http1 import (GoError, Proxy, Session, Timings, URL, check_target, go_quote, parse_url,
                                  proxy_from_task, redact)

SCHEMA = {  # WebSocketConfig: ours (Peekaping has none); decoding and `peekaping-worker types` read it
    "url": str, "headers": str, "subprotocol": str, "ignore_tls_errors": bool, "accepted_close_codes": list,
    "send": str, "keyword": str, "invert_keyword": bool,
}
FIELDS = {  # field -> what it means (for `peekaping-worker types`)
    "url": "ws:// or wss:// URL to open (user:password@ in it is sent as Basic authorization)",
    "headers": 'extra request headers as JSON object text, e.g. {"Origin": "https://app.example"} (as http)',
    "subprotocol": "subprotocols to offer, comma-separated; the server must accept one of them",
    "ignore_tls_errors": "wss: do not verify the server certificate (tls_info still tells whether it verifies)",
    "accepted_close_codes": 'close codes that count as UP, e.g. ["1000", "4000-4099"]; empty: ["1000"]',
    "send": "text message sent once the connection is open",
    "keyword": "text the first message received must contain (case-sensitive); empty: no message awaited",
    "invert_keyword": "the first message must NOT contain the keyword",
}
SUMMARY = ("open a WebSocket (upgrade to 101), optionally send a text and check the first message for a keyword, "
           "then close; UP when all of it passes and the close code is accepted")
EXAMPLES = {"websocket": ({"url": "wss://echo.example.com/", "send": "ping", "keyword": "ping"}, "UP",
                          "when the upgrade succeeds and the echoed message contains the keyword")}

USER_AGENT = f"peekaping/{VERSION}"
DEFAULT_CLOSE_CODES = ((1000, 1000),)
CLOSE_NAMES = {  # IANA's names of the registered close codes
    1000: "Normal Closure", 1001: "Going Away", 1002: "Protocol Error", 1003: "Unsupported Data",
    1005: "No Status Received", 1006: "Abnormal Closure", 1007: "Invalid Frame Payload Data",
    1008: "Policy Violation", 1009: "Message Too Big", 1010: "Mandatory Extension", 1011: "Internal Error",
    1012: "Service Restart", 1013: "Try Again Later", 1014: "Bad Gateway", 1015: "TLS Handshake",
    3000: "Unauthorized", 3003: "Forbidden", 3008: "Timeout",
}
HEADERS_TIMEOUT = "context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
EXCERPT = 100  # bytes of the first message quoted in a keyword failure
# Set by the worker on every request; `Sec-WebSocket-Extensions` is dropped: no extension is spoken here.
_PROTOCOL_HEADERS = ("upgrade", "connection", "sec-websocket-key", "sec-websocket-version",
                     "sec-websocket-extensions", "sec-websocket-protocol", "host")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CODE_RANGE = re.compile(r"\s*(\d{1,5})\s*(?:-\s*(\d{1,5})\s*)?\Z")


async def check(monitor: Monitor, proxy: dict | None, budget: float) -> Result:
    plan = _plan(monitor.config)
    if isinstance(plan, str):
        return instant(DOWN, plan)
    return await _Check(plan, proxy_from_task(proxy)).run(budget)


class _Plan:
    """What a config asks for, decided before any I/O."""
    __slots__ = ("cfg", "url", "secure", "header", "offer", "close_codes", "send", "keyword", "tls")

    def __init__(self, cfg: dict, url: URL, secure: bool, header: dict[str, str], offer: list[str],
                 close_codes: tuple[tuple[int, int], ...]) -> None:
        self.cfg, self.url, self.secure, self.header, self.offer = cfg, url, secure, header, offer
        self.close_codes = close_codes
        self.send = cfg["send"].encode("utf-8", "surrogateescape") if cfg["send"] else None
        self.keyword = cfg["keyword"].encode("utf-8", "surrogateescape") if cfg["keyword"] else None
        self.tls = _tls.TLSSettings(verify=not cfg["ignore_tls_errors"])


def _plan(config: str) -> _Plan | str:
    """The plan, or the DOWN message of a config that cannot be checked. ConfigError propagates."""
    cfg = decode_config(config, SCHEMA, "WebSocketConfig")
    raw = cfg["url"]
    scheme, sep, _ = raw.partition("://")
    if not sep or scheme.lower() not in ("ws", "wss"):
        return f"invalid WebSocket URL {go_quote(redact(raw))}: scheme must be ws or wss"
    secure = scheme.lower() == "wss"
    as_http = ("https" if secure else "http") + raw[len(scheme):]
    try:
        url = parse_url(as_http)
    except GoError as exc:  # Go's url.Parse texts, naming the URL as it was given
        return str(exc).replace(go_quote(redact(as_http)), go_quote(redact(raw)))
    if not url.host:
        return f"invalid WebSocket URL {go_quote(redact(raw))}: missing host"
    try:
        check_target(url)
    except GoError as exc:
        return f"WebSocket upgrade failed: {exc}"
    header = {"User-Agent": USER_AGENT}
    offered_in_headers = ""
    if cfg["headers"]:
        try:  # the http executor's rules for `headers`
            custom = string_map(cfg["headers"])
        except ValueError as exc:
            return f"invalid headers json: {exc}"
        for name, value in custom.items():
            if name.lower() == "sec-websocket-protocol":
                offered_in_headers = value
            elif name.lower() not in _PROTOCOL_HEADERS:
                header[canonical_key(name)] = value
    for name, value in header.items():
        if not _TOKEN.match(name):
            return f"net/http: invalid header field name {go_quote(name)}"
        if _BAD_VALUE.search(value):
            return f"net/http: invalid header field value for {go_quote(name)}"
    if url.user is not None and "Authorization" not in header:
        user = f"{url.user[0]}:{url.user[1]}".encode("utf-8", "surrogateescape")
        header["Authorization"] = "Basic " + base64.b64encode(user).decode()
    offer = [p for p in re.split(r"[\s,]+", cfg["subprotocol"] or offered_in_headers) if p]
    if offer:
        value = ", ".join(offer)
        if not all(_TOKEN.match(p) for p in offer):
            return f"invalid subprotocol list {go_quote(value)}: each must be an HTTP token"
        header["Sec-WebSocket-Protocol"] = value
    header.update({"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"})
    return _Plan(cfg, url, secure, header, offer, _close_codes(cfg["accepted_close_codes"]))


def _close_codes(entries: list[str]) -> tuple[tuple[int, int], ...]:
    """`"1000"` or `"4000-4099"` entries as ranges; unreadable entries are ignored (as the http executor
    ignores unknown status classes); none at all means 1000."""
    ranges = []
    for entry in entries:
        m = _CODE_RANGE.match(entry)
        if m:
            low = int(m.group(1))
            ranges.append((low, int(m.group(2) or low)))
    return tuple(ranges) or DEFAULT_CLOSE_CODES


def close_text(code: int) -> str:
    name = CLOSE_NAMES.get(code)
    return f"{code} ({name})" if name else str(code)


def _excerpt(data: bytes) -> str:
    text = data[:EXCERPT].decode("utf-8", "replace")
    return go_quote(text + ("..." if len(data) > EXCERPT else ""))


# --------------------------------------------------------------------------------------------------
# The connection: the HTTP executor's session, tunnelling ws:// through HTTP proxies

class _Session(Session):
    """Notes the phase a check is in (for timeout texts) and tunnels every target through an HTTP proxy."""

    phase = "connect"
    dialing = ""
    via_proxy = False

    async def _connect(self, url: URL, key: tuple, early: bytes = b"") -> Conn:
        proxy = self.proxy
        if proxy is not None and proxy.kind in ("http", "https") and url.scheme == "http":
            try:
                conn = self._track(await self.dial(proxy.host, proxy.port, key, proxy.kind == "http"))
                if proxy.kind == "https":
                    await self.handshake(conn, proxy.host, target=False)
            except GoError as exc:
                raise GoError(f"proxyconnect tcp: {exc}") from None
            await self._connect_tunnel(conn, url)
        else:
            conn = await super()._connect(url, key, early)
        self.phase = "upgrade"
        return conn

    async def dial(self, host: str, port: int, key: tuple, plain: bool, early: bytes = b"") -> Conn:
        self.phase, self.dialing = "connect", join_host_port(host, port)
        self.via_proxy = self.proxy is not None and (host, port) == (self.proxy.host, self.proxy.port)
        return await super().dial(host, port, key, plain, early)

    async def handshake(self, conn: Conn, host: str, target: bool) -> None:
        self.phase = "tls"
        await super().handshake(conn, host, target)
        self.phase = "proxy" if not target else "upgrade"

    async def _connect_tunnel(self, conn: Conn, url: URL) -> None:
        self.phase = "proxy"
        await super()._connect_tunnel(conn, url)

    async def _socks5(self, conn: Conn, url: URL) -> None:
        self.phase = "proxy"
        await super()._socks5(conn, url)

    async def _socks4(self, conn: Conn, url: URL) -> None:
        self.phase = "proxy"
        await super()._socks4(conn, url)


# --------------------------------------------------------------------------------------------------
# One check

class _Check:
    def __init__(self, plan: _Plan, proxy: Proxy | None) -> None:
        self.plan = plan
        self.timings = Timings()
        self.session = _Session(plan.tls, proxy, self.timings, USER_AGENT)
        url = plan.url
        self.session.dialing = proxy.address if proxy is not None else join_host_port(url.host, url.port)
        self.ws = ClientProtocol(WebSocketURI(plan.secure, url.host, url.port, url.target, ""),
                                 subprotocols=plan.offer or None, state=OPEN,
                                 max_size=max(1, _limits.max_body_bytes()))
        self.conn: Conn | None = None
        self.tls: TLSState | None = None
        self.events: list = []
        self.start_ns = self.end_ns = 0
        self.marks: dict[str, int] = {}  # phase -> unix ns it started (exchange, close)
        self.extra: dict[str, float] = {}
        self.keyword_note = ""
        self.status_text = "101 Switching Protocols"  # as the server words it, once it answered

    async def run(self, budget: float) -> Result:
        self.start_ns = time.time_ns()
        try:
            async with asyncio.timeout(max(budget, 0.001)):
                return await self._run()
        except TimeoutError:
            return self._timed_out()
        finally:
            await self.session.aclose()

    # --- the upgrade -------------------------------------------------------------------------------
    async def _run(self) -> Result:
        plan, session = self.plan, self.session
        header = dict(plan.header)
        header["Sec-WebSocket-Key"] = self.ws.key
        try:
            resp = await session.round_trip("GET", plan.url, header, None, False)
        except GoError as exc:
            self.end_ns = time.time_ns()
            self.tls = session.failed_tls
            return self._result(DOWN, f"WebSocket upgrade failed: {exc}")
        self.end_ns = resp.head_ns
        self.conn = resp.conn
        self.tls = resp.conn.tls
        self.extra["handshake"] = self.timings.ttfb
        self.timings.ttfb = 0.0
        if resp.status != 101:
            return self._result(DOWN, f"WebSocket upgrade failed: server answered {resp.status_text}, "
                                      "not 101 Switching Protocols")
        reason = resp.status_text.partition(" ")[2]
        try:
            self.ws.process_response(HandshakeResponse(101, reason, Headers(resp.headers)))
        except InvalidHandshake as exc:
            return self._result(DOWN, f"WebSocket upgrade failed: {exc}")
        if plan.offer and self.ws.subprotocol is None:
            return self._result(DOWN, "WebSocket upgrade failed: the server accepted none of the subprotocols "
                                      f"offered ({', '.join(plan.offer)})")
        session.phase = "exchange"
        self.status_text = resp.status_text
        return await self._exchange()

    # --- after the upgrade: send, first message, close ---------------------------------------------
    async def _exchange(self) -> Result:
        plan, ws = self.plan, self.ws
        if plan.send is not None or plan.keyword is not None:
            self.marks["exchange"] = time.time_ns()
        if plan.send is not None:
            ws.send_text(plan.send)
            await self._flush()
        if plan.keyword is not None:
            message = await self._first_message()
            if message is None:
                return await self._closed_before_message()
            found = plan.keyword in message
            keyword = plan.cfg["keyword"]
            if found == plan.cfg["invert_keyword"]:
                await self._say_goodbye()
                where = "found in first message (expected absent)" if found else "not found in first message"
                return self._result(DOWN, f"Keyword check failed: keyword '{keyword}' {where}: {_excerpt(message)}")
            self.keyword_note = f", keyword '{keyword}' {'found in' if found else 'absent from'} first message"
        self.session.phase = "close"
        self.marks["close"] = time.time_ns()
        if ws.state is OPEN:
            ws.send_close(1000)
            await self._flush()
        while ws.close_rcvd is None and not ws.reader.eof and ws.parser_exc is None:
            await self._receive()
            self.events.clear()  # messages after ours are not judged
        self._stop("close")
        if ws.parser_exc is not None:
            return self._protocol_error()
        if ws.close_rcvd is None:
            return self._judge_close(1006, "connection closed without a close frame")
        return self._judge_close(ws.close_rcvd.code, ws.close_rcvd.reason)

    def _judge_close(self, code: int, reason: str) -> Result:
        detail = f": {reason}" if reason else ""
        if not any(low <= code <= high for low, high in self.plan.close_codes):
            return self._result(DOWN, f"WebSocket closed with {close_text(code)}{detail}")
        subprotocol = f", subprotocol '{self.ws.subprotocol}'" if self.ws.subprotocol else ""
        return self._result(UP, f"WebSocket upgrade successful: {self.status_text}"
                                f"{subprotocol}{self.keyword_note}, closed with {close_text(code)}")

    async def _first_message(self) -> bytes | None:
        """The first data message (fragments joined), or None when the connection closed before one."""
        parts: list[bytes] = []
        while True:
            while self.events:
                frame = self.events.pop(0)
                if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                    parts = [frame.data]
                elif frame.opcode is Opcode.CONT and parts:
                    parts.append(frame.data)
                elif frame.opcode is Opcode.CLOSE:
                    return None
                else:
                    continue
                if frame.fin:
                    assert self.conn is not None
                    self.end_ns = self.conn.stamps.through(self.conn.consumed())
                    self._stop("exchange", self.end_ns)
                    return b"".join(parts)
            if self.ws.reader.eof or self.ws.parser_exc is not None or self.ws.state is CLOSED:
                return None
            await self._receive()

    async def _closed_before_message(self) -> Result:
        ws = self.ws
        self.end_ns = time.time_ns()
        self._stop("exchange")
        if ws.parser_exc is not None:
            return self._protocol_error()
        if ws.close_rcvd is None:
            return self._result(DOWN, "Keyword check failed: connection closed without a close frame before the "
                                      "first message")
        reason = f": {ws.close_rcvd.reason}" if ws.close_rcvd.reason else ""
        return self._result(DOWN, f"Keyword check failed: connection closed with {close_text(ws.close_rcvd.code)} "
                                  f"before the first message{reason}")

    def _protocol_error(self) -> Result:
        exc = self.ws.parser_exc
        limit = " (HTTP_MAX_BODY_BYTES)" if isinstance(exc, PayloadTooBig) else ""
        return self._result(DOWN, f"WebSocket protocol error: {exc}{limit}")

    async def _say_goodbye(self) -> None:
        """Send a close frame without waiting for the answer: the verdict is already known."""
        if self.ws.state is OPEN:
            self.ws.send_close(1000)
            await self._flush()

    async def _receive(self) -> None:
        """Read once, hand the bytes to the protocol, send what it answers (pongs, the close echo)."""
        assert self.conn is not None
        try:
            data = await self.conn.reader.read(READ_CHUNK)
        except OSError:  # reset, TLS failure: the connection ended without a close frame
            data = b""
        if data:
            self.ws.receive_data(data)
        else:
            self.ws.receive_eof()
        self.events.extend(self.ws.events_received())
        await self._flush()

    async def _flush(self) -> None:
        assert self.conn is not None
        chunks = [c for c in self.ws.data_to_send() if c]  # b"" is the protocol's end of stream: we close later
        if not chunks:
            return
        writer = self.conn.writer
        try:
            writer.write(b"".join(chunks))
            await writer.drain()
        except (OSError, RuntimeError):
            pass  # the peer is gone: reading will tell

    # --- results -----------------------------------------------------------------------------------
    def _stop(self, phase: str, at: int = 0) -> None:
        started = self.marks.pop(phase, 0)
        if started:
            self.extra[phase] = max(0, (at or time.time_ns()) - started) / 1e9

    def _result(self, status: int, message: str) -> Result:
        timings = {k: v for k, v in self.timings.as_ms().items() if k in ("dns", "connect", "tls")}
        timings.update({k: round(v * 1000, 3) for k, v in self.extra.items()})
        info = self.tls.info() if self.plan.secure and self.tls is not None else None
        return Result(status, message, self.start_ns, self.end_ns or time.time_ns(), info, timings)

    def _timed_out(self) -> Result:
        now = time.time_ns()
        phase = self.session.phase
        for open_phase in list(self.marks):
            self._stop(open_phase, now)
        if phase == "close":  # upgrade and exchange passed: ping_ms keeps their end
            return self._judge_close(1006, "no close frame received: context deadline exceeded")
        self.end_ns = now
        if phase == "exchange":
            return self._result(DOWN, "Keyword check failed: no message received: context deadline exceeded")
        if phase == "connect":
            where = "proxyconnect tcp: " if self.session.via_proxy else ""
            return self._result(DOWN, f"WebSocket upgrade failed: {where}dial tcp {self.session.dialing}: i/o timeout")
        if phase == "tls":
            return self._result(DOWN, "WebSocket upgrade failed: net/http: TLS handshake timeout")
        if phase == "proxy":
            return self._result(DOWN, f"WebSocket upgrade failed: proxy {self.session.dialing}: context deadline "
                                      "exceeded")
        return self._result(DOWN, f"WebSocket upgrade failed: {HEADERS_TIMEOUT}")
