"""`redis`: PING a Redis server over redis:// or rediss:// (TLS), as Peekaping's go-redis v9 client does.

Each check opens its own connection and closes it before returning. The set-up is go-redis's:
`HELLO 3 [AUTH user password]`; after an error reply to HELLO (Redis < 6, NOAUTH) `AUTH` when there is
a password; `SELECT db` for a database other than 0; then `PING`, whose raw reply is the UP text.
Errors go-redis deems transient (EOF, refused or reset connections, LOADING ...) are retried as it
does (3 times, 8-512 ms backoff) within the budget. Texts are go-redis's; the budget running out
reads as Go's context deadline: `dial tcp host:port: i/o timeout` while connecting, else `context
deadline exceeded`.

ping_ms runs from after the connection-string checks to the arrival of PING's reply (kernel receive
stamp on a plain connection, the transport callback's clock under TLS). timings: dns, connect, tls,
auth (the HELLO/AUTH/SELECT exchange, also without a password) and ping, summed over retries.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import re
import ssl
import time
from dataclasses import dataclass, field
from urllib.parse import unquote

from executors import DOWN, UP, Monitor, Result, instant
from executors._kit import dial as _dial, gourl, limits as _limits, timing as _timing, tls as _tls
from executors._kit.gojson import decode_config
from executors._kit.gotext import go_quote_bytes, join_host_port, os_error_text

SCHEMA = {"databaseConnectionString": str, "ignoreTls": bool, "caCert": str, "clientCert": str,
          "clientKey": str}  # Go's RedisConfig
FIELDS = {
    "databaseConnectionString": "redis://[user:password@]host[:port][/db] or rediss://... for TLS",
    "ignoreTls": "rediss: skip certificate verification (caCert and the client certificate are then not used)",
    "caCert": "rediss: CA certificates (PEM) the server is verified against, instead of the system's",
    "clientCert": "rediss: client certificate (PEM), with clientKey",
    "clientKey": "rediss: client private key (PEM), with clientCert",
}
SUMMARY = "connect (TLS for rediss://), authenticate, select the database and PING; UP with PING's reply"
EXAMPLES = {"redis": ({"databaseConnectionString": "redis://127.0.0.1:6379"}, "UP",
                      "when a Redis server without a password listens on 127.0.0.1:6379")}

MAX_RETRIES = 3  # go-redis Options.MaxRetries default
MIN_BACKOFF, MAX_BACKOFF = 0.008, 0.512  # go-redis MinRetryBackoff / MaxRetryBackoff defaults
RETRIED = ("LOADING ", "READONLY ", "MASTERDOWN ", "CLUSTERDOWN ", "TRYAGAIN ")  # error replies go-redis retries
MAX_BULK = 1 << 20  # a longer string in a reply is refused (go-redis reads any length)
MAX_ITEMS = 1 << 16  # RESP elements in one check's replies
MAX_DEPTH = 32
URL_MASK = "xxxxx"  # the password in a URL, as Go's url.URL.Redacted() shows it
TEXT_MASK = "***"  # the password inside a server's text
NIL = "redis: nil"


async def check(monitor: Monitor, proxy: dict | None, budget: float) -> Result:
    cfg = decode_config(monitor.config, SCHEMA, "RedisConfig")
    try:
        url = validate(cfg["databaseConnectionString"])
    except ValueError as exc:
        return instant(DOWN, f"connection string validation failed: {exc}")
    start = time.time_ns()
    try:
        options = client_options(url)
    except ValueError as exc:
        return Result(DOWN, f"invalid Redis connection string: {exc}", start, time.time_ns())
    context = None
    if url.scheme == "rediss":
        try:
            context = _tls_context(cfg)
        except ValueError as exc:
            return Result(DOWN, f"TLS configuration failed: {exc}", start, time.time_ns())
    probe = _Probe(options, context)
    try:
        async with asyncio.timeout(max(budget, 0.001)):
            reply = await probe.run()
    except _Failure as exc:
        return probe.result(exc.timeout, str(exc), start)
    except TimeoutError:
        dialling = f"dial tcp {join_host_port(options.host, options.port)}: i/o timeout"
        return probe.result(True, dialling if probe.dialling else "context deadline exceeded", start)
    finally:
        probe.close(abort=True)  # no-op after a good exchange, which closed it gracefully
    return Result(UP, f"Redis ping successful: {options.mask(reply)}", start, probe.end_ns, timings=probe.ms())


# --------------------------------------------------------------------------------------------------
# The connection string: Peekaping's checks on Go's url.Parse result, then go-redis ParseURL

_FORMAT = re.compile(r"(rediss?://)([^@]*@)?(\[[^\]]+\]|[^:/]+)(:\d{1,5})?(/[0-9]*)?", re.ASCII)
_QUERY_IGNORED = {"protocol", "client_name", "max_retries", "min_retry_backoff", "max_retry_backoff",
                  "dial_timeout", "read_timeout", "write_timeout", "pool_fifo", "pool_size", "pool_timeout",
                  "min_idle_conns", "max_idle_conns", "max_active_conns", "conn_max_idle_time", "idle_timeout",
                  "conn_max_lifetime", "max_conn_age", "skip_verify"}  # go-redis options accepted, not used


def validate(text: str) -> gourl.URL:
    """Peekaping's validateRedisConnectionString: ValueError with its text."""
    if text == "":
        raise ValueError("connection string is required")
    if not _FORMAT.fullmatch(text):
        raise ValueError("invalid connection string format. Expected: redis://[user:password@]host[:port][/db] "
                         "or rediss://[user:password@]host[:port][/db]")
    try:
        url = gourl.parse(text, errors="surrogateescape")
    except gourl.URLError as exc:  # Go quotes the escape; a piece of a password is not shown here
        hidden = f"invalid URL escape {go_quote_bytes(URL_MASK)}" if exc.part == "password" else None
        raise ValueError(f"invalid URL format: {exc.message(URL_MASK, hidden)}") from None
    if url.scheme not in ("redis", "rediss"):
        raise ValueError(f"invalid protocol '{url.scheme}'. Use 'redis://' for non-TLS or 'rediss://' for TLS")
    hostname, port = url.hostname_port()
    if hostname == "":
        raise ValueError("invalid hostname: hostname is required")
    if len(_utf8(hostname)) > 253:
        raise ValueError("invalid hostname: hostname too long (max 253 characters)")
    if not _valid_hostname(hostname):
        raise ValueError("invalid hostname: hostname contains invalid characters")
    if port and (number := _atoi(port)) is None:
        raise ValueError("invalid port: port must be a number")
    if port and not 1 <= number <= 65535:
        raise ValueError(f"invalid port: port must be between 1 and 65535, got {number}")
    db = url.path.removeprefix("/")
    if db and (number := _atoi(db)) is None:
        raise ValueError("invalid database number: database number must be a number")
    if db and number < 0:
        raise ValueError(f"invalid database number: database number must be 0 or positive, got {number}")
    user, password = url.user or "", url.password or ""
    for problem, what in ((len(_utf8(user)) > 255, "username too long (max 255 characters)"),
                          (":" in user, "username cannot contain ':' character"),
                          (len(_utf8(password)) > 255, "password too long (max 255 characters)"),
                          ("@" in password, "password cannot contain '@' character")):
        if problem:
            raise ValueError(f"invalid authentication: {what}")
    at = text.find("@")
    if at > 0 and text[text.find("://") + 3:at].count(":") > 1:
        raise ValueError("invalid authentication format: invalid authentication format: username cannot contain "
                         "':' character")
    return url


def _utf8(text: str) -> bytes:
    """The bytes of a Go string: URL escapes that are not UTF-8 were kept as surrogates."""
    return text.encode("utf-8", "surrogateescape")


def _atoi(text: str) -> int | None:
    """strconv.Atoi: optional sign, ASCII digits, within int64."""
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        return None
    number = int(text)
    return number if -(1 << 63) <= number < (1 << 63) else None


def _valid_hostname(host: str) -> bool:
    if ":" in host:  # an IPv6 literal: net.ParseIP accepts it and it is not IPv4-mapped
        if "%" in host:
            return False
        try:
            return ipaddress.IPv6Address(host.strip("[]") if host.startswith("[") and host.endswith("]")
                                         else host).ipv4_mapped is None
        except ValueError:
            return False
    return all(label and label[0] != "-" and label[-1] != "-" and all(c.isascii() and (c.isalnum() or c == "-")
                                                                      for c in label) for label in host.split("."))


@dataclass(slots=True)
class Options:
    """go-redis Options, the fields a check uses."""
    host: str
    port: int
    user: str = ""
    password: str = ""
    db: int = 0

    def mask(self, text: str) -> str:
        """A server's text with the password masked (a password under 3 characters is not searched for)."""
        return text.replace(self.password, TEXT_MASK) if len(self.password) >= 3 else text


def client_options(url: gourl.URL) -> Options:
    """go-redis ParseURL; ValueError in its words."""
    host, port = url.hostname_port()  # go-redis keeps the brackets of an IPv6 host without a port (then fails)
    options = Options(host or "localhost", int(port or 6379), url.user or "", url.password or "")
    segments = [s for s in url.path.split("/") if s]
    if len(segments) > 1:
        raise ValueError(f"redis: invalid URL path: {url.path}")
    if segments and (db := _atoi(segments[0])) is None:
        raise ValueError(f"redis: invalid database number: {go_quote_bytes(segments[0])}")
    options.db = db if segments else 0
    values: dict[str, str] = {}  # url.Values, the last value of each key (what go-redis reads)
    for pair in url.query.split("&"):
        key, _, value = pair.partition("=")
        try:
            if pair and ";" not in pair:
                values[unquote(key.replace("+", " "), errors="strict")] = unquote(value.replace("+", " "),
                                                                                 errors="strict")
        except UnicodeDecodeError:
            pass
    if (value := values.pop("db", "")) and (db := _atoi(value)) is None:
        raise ValueError(f"redis: invalid database number: strconv.Atoi: parsing {go_quote_bytes(value)}: "
                         "invalid syntax")
    options.db = db if value else options.db
    if unknown := sorted(set(values) - _QUERY_IGNORED):
        raise ValueError(f"redis: unexpected option: {', '.join(unknown)}")
    return options


# --------------------------------------------------------------------------------------------------
# TLS: Peekaping's configureTLS (a fresh tls.Config: TLS 1.2+, no ALPN)

_contexts = _limits.BoundedCache(max_bytes=16 << 20, max_entries=64, max_item=4 << 20)


def _tls_context(cfg: dict) -> ssl.SSLContext:
    """ValueError in Peekaping's words for a bad CA or client pair; the checks and the context are cached
    by content (a context costs ~30 ms of CPU to build)."""
    verify = not cfg["ignoreTls"]
    ca, cert, key = ((cfg[name] or None) if verify else None for name in ("caCert", "clientCert", "clientKey"))
    settings = _tls.TLSSettings(verify, ca, cert, key)
    cache_key = _tls.settings_key(settings)
    ctx = _contexts.get(cache_key)
    if ctx is not None:
        return ctx
    if ca is not None and not _tls.has_ca_cert(ca):
        raise ValueError("failed to load CA certificate: failed to parse CA certificate")
    if (cert is None) != (key is None):
        raise ValueError("failed to load client certificate: both client certificate and key must be provided")
    if cert is not None and key is not None:
        try:
            _tls.check_client_pair(cert, key)
        except ValueError as exc:
            raise ValueError(f"failed to load client certificate: failed to load client certificate: {exc}") from None
    ctx = _tls.client_context(settings, alpn=None)  # its SSLObject lets a name mismatch list the cert's names
    _contexts.put(cache_key, ctx, 2 * sum(len(p) for p in (ca, cert, key) if p) + (64 << 10))
    return ctx


# --------------------------------------------------------------------------------------------------
# The exchange

class _Failure(Exception):
    """A failure in go-redis's words; `retry` as its shouldRetry says, `timeout` as net.Error.Timeout()."""

    def __init__(self, text: str, retry: bool = False, timeout: bool = False) -> None:
        super().__init__(text)
        self.retry, self.timeout = retry, timeout


class _ErrorReply(Exception):
    """An error reply or a nil (go-redis proto.RedisError); str() is its text."""


class _Phases:
    """Seconds per phase; the kit's dialer adds to dns, connect and tls."""
    __slots__ = ("dns", "connect", "tls", "auth", "ping")

    def __init__(self) -> None:
        self.dns = self.connect = self.tls = self.auth = self.ping = 0.0


@dataclass(slots=True)
class _Probe:
    options: Options
    context: ssl.SSLContext | None
    phases: _Phases = field(default_factory=_Phases)
    conn: _dial.Conn | None = None
    dialling: bool = False  # the budget running out now is a dial timeout
    address: str = "?"  # local->remote of the connection, for read and write errors
    end_ns: int = 0
    items: int = 0

    async def run(self) -> str:
        """PING's reply, after go-redis's retries; _Failure otherwise."""
        attempt = 0
        while True:
            try:
                return await self._attempt()
            except _Failure as exc:
                if not exc.retry or attempt >= MAX_RETRIES:
                    raise
            except _ErrorReply as exc:
                text = str(exc)
                if not (text == "ERR max number of clients reached" or text.startswith(RETRIED)) \
                        or attempt >= MAX_RETRIES:
                    raise _Failure(text) from None
            finally:
                self.close(abort=True)
            attempt += 1
            self.dialling = False
            await asyncio.sleep(min(MIN_BACKOFF + random.random() * MIN_BACKOFF * (1 << attempt), MAX_BACKOFF))

    async def _attempt(self) -> str:
        options, context = self.options, self.context
        self.items = 0
        auth = ["AUTH", options.user or "default", options.password] if options.password else []
        first = _pack("HELLO", 3, *auth)
        dialer = _dial.DirectDialer(self.phases, context)  # Go's dial and TLS texts, timestamped reads
        self.dialling = True
        try:  # on a plain connection HELLO leaves the moment the handshake completes
            self.conn = conn = await dialer.dial(options.host, options.port, (), context is None,
                                                 first if context is None else b"")
        except _dial.GoError as exc:
            raise _Failure(str(exc), retry=True, timeout=str(exc).endswith("connection timed out")) from None
        except OSError as exc:  # no socket to be had (EMFILE, ...)
            raise _Failure(f"dial tcp {join_host_port(options.host, options.port)}: socket: "
                           f"{os_error_text(exc)}", retry=True) from None
        self.dialling, self.address = False, conn.addresses()
        if context is not None:
            try:
                await dialer.handshake(conn, options.host, target=False)
            except _dial.GoError as exc:  # go-redis retries EOF and resets, not certificate errors
                raise _Failure(str(exc), retry=str(exc) == "EOF" or str(exc).startswith("read tcp")) from None
        started = conn.early_ns if conn.early else _timing.now_ns()
        await self._send(first[conn.early:])
        try:
            await self._hello_reply()
        except _ErrorReply:  # no HELLO (Redis < 6) or not allowed yet: RESP2, then AUTH if there is a password
            if options.password:
                await self._send(_pack("AUTH", options.user, options.password) if options.user
                                 else _pack("AUTH", options.password))
                await self._string()
        if options.db > 0:
            await self._send(_pack("SELECT", options.db))
            await self._string()
        self.phases.auth += (conn.stamps.through(conn.consumed()) - started) / 1e9
        conn.stamps.restart()
        started = _timing.now_ns()
        await self._send(_pack("PING"))
        reply = await self._string()
        self.end_ns = conn.stamps.through(conn.consumed())
        self.phases.ping += (self.end_ns - started) / 1e9
        self.close(abort=False)
        return reply

    def close(self, abort: bool) -> None:
        """Close the connection: gracefully after a good exchange, else at once (a graceful TLS close
        waits for the peer's close_notify, which a silent peer never sends)."""
        conn, self.conn = self.conn, None
        transport = getattr(conn.writer, "transport", None) if conn is not None else None
        if abort and transport is not None:
            transport.abort()
        elif conn is not None:
            conn.close()

    def result(self, timeout: bool, text: str, start: int) -> Result:
        prefix = "Redis connection timeout" if timeout else "Redis ping failed"
        return Result(DOWN, f"{prefix}: {self.options.mask(text)}", start, time.time_ns(), timings=self.ms())

    def ms(self) -> dict[str, float]:
        return {name: round(getattr(self.phases, name) * 1000, 3) for name in _Phases.__slots__
                if getattr(self.phases, name)}

    # RESP, as go-redis's proto.Reader reads it

    async def _send(self, data: bytes) -> None:
        assert self.conn is not None
        try:
            if data:
                self.conn.writer.write(data)
            await self.conn.writer.drain()
        except OSError as exc:
            raise self._io_failure(exc, "write") from None

    def _io_failure(self, exc: OSError, op: str) -> _Failure:
        if isinstance(exc, ssl.SSLError):
            return _Failure(_tls.tls_error_text(exc, self.options.host))
        text = os_error_text(exc)
        return _Failure(f"{op} tcp {self.address}: {op}: {text}", retry=True, timeout=text == "connection timed out")

    async def _read(self, size: int = 0) -> bytes:
        """One line without its CRLF (go-redis readLine), or `size` bytes."""
        assert self.conn is not None
        try:
            if size:
                return await self.conn.reader.readexactly(size)
            line = await self.conn.reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            raise _Failure("unexpected EOF" if size and exc.partial else "EOF", retry=True) from None
        except asyncio.LimitOverrunError:
            raise _Failure(f"redis: reply line longer than {_dial.LINE_LIMIT} bytes") from None
        except OSError as exc:
            raise self._io_failure(exc, "read") from None
        if len(line) <= 2 or line[-2:] != b"\r\n":
            raise _Failure(f"redis: invalid reply: {go_quote_bytes(line)}")
        self.items += 1
        if self.items > MAX_ITEMS:
            raise _Failure(f"redis: replies of more than {MAX_ITEMS} elements")
        return line[:-2]

    async def _read_line(self) -> bytes:
        """go-redis ReadLine: error replies and nils raise _ErrorReply, attributes are skipped."""
        while True:
            line = await self._read()
            kind = line[:1]
            if kind == b"-":
                raise _ErrorReply(line[1:].decode("utf-8", "replace"))
            if kind == b"_" or line in (b"$-1", b"*-1"):
                raise _ErrorReply(NIL)
            if kind == b"!":
                raise _ErrorReply(await self._bulk(line))
            if kind != b"|":
                return line
            await self._skip(line, 1)

    def _length(self, line: bytes) -> int:
        """go-redis replyLen."""
        number = _atoi(line[1:].decode("ascii", "replace"))
        if number is None:
            raise _Failure(f"strconv.Atoi: parsing {go_quote_bytes(line[1:])}: invalid syntax")
        if number < -1:
            raise _Failure(f"redis: invalid reply: {go_quote_bytes(line)}")
        if number == -1 and line[:1] in b"$=!*~>%|":
            raise _ErrorReply(NIL)
        return number

    async def _bulk(self, line: bytes) -> str:
        size = self._length(line)
        if size > MAX_BULK:
            raise _Failure(f"redis: reply string of {size} bytes is longer than {MAX_BULK}")
        return (await self._read(size + 2))[:size].decode("utf-8", "replace")

    async def _string(self) -> str:
        """go-redis ReadString: the reply of PING, SELECT, AUTH and a map key."""
        line = await self._read_line()
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b":", b","):
            return rest.decode("utf-8", "replace")
        if kind == b"$":
            return await self._bulk(line)
        if kind == b"#" and rest in (b"t", b"f"):
            return "true" if rest == b"t" else "false"
        if kind == b"(" and re.fullmatch(rb"[+-]?[0-9]+", rest):
            return str(int(rest))
        if kind in (b"#", b"("):
            raise _Failure(f"redis: can't parse {'bool' if kind == b'#' else 'bigInt'} reply: {go_quote_bytes(line)}")
        if kind == b"=":
            text = await self._bulk(line)
            if len(text) < 4 or text[3] != ":":
                raise _Failure(f"redis: can't parse verbatim string reply: {go_quote_bytes(line)}")
            return text[4:]
        raise _Failure(f"redis: can't parse reply={go_quote_bytes(line, 100)} reading string")

    async def _hello_reply(self) -> None:
        """HELLO's reply read as go-redis's MapStringInterfaceCmd reads it, the values discarded."""
        line = await self._read_line()
        kind = line[:1]
        if kind == b"%":
            pairs = self._length(line)
        elif kind in (b"*", b"~", b">"):
            if (count := self._length(line)) % 2:
                raise _Failure(f"redis: the length of the array must be a multiple of 2, got: {count}")
            pairs = count // 2
        else:
            raise _Failure(f"redis: can't parse map reply: {go_quote_bytes(line, 100)}")
        for _ in range(pairs):
            await self._string()
            await self._value(1)

    async def _value(self, depth: int) -> None:
        """go-redis ReadReply, the value discarded; error replies and nils inside are values."""
        try:
            await self._skip(await self._read_line(), depth)
        except _ErrorReply:
            pass

    async def _skip(self, line: bytes, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise _Failure(f"redis: reply nested more than {MAX_DEPTH} levels deep")
        kind = line[:1]
        if kind in (b"$", b"="):
            await self._bulk(line)
        elif kind in (b"*", b"~", b">", b"%", b"|"):
            for _ in range(self._length(line) * (2 if kind in (b"%", b"|") else 1)):
                await self._value(depth + 1)
        elif kind not in (b"+", b":", b",", b"#", b"("):
            raise _Failure(f"redis: can't parse {go_quote_bytes(line, 100)}")


def _pack(*args: object) -> bytes:
    """A command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _utf8(str(arg))
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)
