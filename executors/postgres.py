"""`postgres`: log in to PostgreSQL and run the monitoring query; UP with the time both took.

asyncpg speaks the protocol (asyncio-native; +3.0 MB in the one-file binary against psycopg[binary]'s
+4.3 MB, which also brings a second OpenSSL). What decides the result or its text stays here:

* the connection string is read as Go's url.Parse reads it, and validated with Go's texts;
* `sslmode` has libpq's meaning (`_tls_plan`): a mode is a list of attempts, TLS or not, run here,
  because asyncpg's own `prefer`/`allow` read PG* environment variables and ~/.postgresql files,
  which a monitor's result must not depend on;
* the socket is dialled here: asyncpg gets a stand-in for the event loop (`_Loop`) whose
  create_connection dials with Go's error texts and the kernel's handshake time, and whose start_tls
  times the handshake; a certificate that fails is reported in Go's x509 words.

The query goes out with the simple-query protocol, as Go's driver sends a query without arguments:
one round trip, several statements allowed, rows read and dropped. ping_ms runs from just after the
config is decoded to the moment the query's answer was read (connection, TLS and login included), as
in Go; the connection is closed after. Result.timings: dns, connect (TCP), tls (SSLRequest and
handshake), auth (startup to ReadyForQuery), query; summed over both attempts of allow/prefer.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
from dataclasses import dataclass, field

import asyncpg

from executors import DOWN, UP, Monitor, Result
from executors._kit import gourl, timing as _timing
from executors._kit import tls as _tls
from executors._kit.gojson import decode_config
from executors._kit.gotext import is_domain_name, join_host_port, os_error_text, resolver_suffix
from executors._kit.http1 import go_quote

SCHEMA = {"database_connection_string": str, "database_query": str}  # Go's PostgresConfig
FIELDS = {
    "database_connection_string": "postgres://user[:password]@host[:port]/database[?params]; params with "
                                  "libpq's meaning: sslmode (absent: disable), sslrootcert (file or "
                                  "`system`), sslcert, sslkey, sslpassword, host (a /directory: Unix "
                                  "socket), port, user, password, dbname, application_name",
    "database_query": "SELECT/SHOW/DESCRIBE/EXPLAIN/WITH/VALUES statement to run; empty: SELECT 1",
}
SUMMARY = "log in to PostgreSQL and run the query; UP when it runs without an error"
EXAMPLES = {"postgres": ({"database_connection_string": "postgres://postgres@127.0.0.1:5432/postgres",
                          "database_query": "SELECT 1"}, "UP",
                         "when PostgreSQL on 127.0.0.1:5432 lets user postgres in (trust) and runs SELECT 1")}

SCHEMES = ("postgres", "postgresql")
ALLOWED_QUERIES = ("select", "show", "describe", "explain", "desc", "with", "values")
QUERY_RULE = "only SELECT, SHOW, DESCRIBE, EXPLAIN, WITH, and VALUES statements are allowed for monitoring queries"
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
NO_SSL = "pgdriver: SSL is not enabled on the server"  # Go's text when TLS is required and refused
MASK = "***"  # what a password shows as in a message
CLOSE_GRACE = 1.0  # seconds at most for a polite Terminate after the result is known


async def check(monitor: Monitor, proxy: dict | None, budget: float) -> Result:
    cfg = decode_config(monitor.config, SCHEMA, "PostgresConfig")
    start = time.time_ns()
    raw = cfg["database_connection_string"]
    secrets = _secrets(raw)
    try:
        url = _validate(raw)
        target = _target(url)
        plan = _tls_plan(target)
    except _ParseError as exc:
        return Result(DOWN, _mask(str(exc), secrets), start, time.time_ns())
    run = _Run(target, start, budget)
    try:
        message, status, end = await run.check(cfg["database_query"], plan)
    finally:
        run.close_now()
    return Result(status, _mask(message, secrets), start, end, timings=run.timings_ms())


# --------------------------------------------------------------------------------------------------
# The connection string: Go's url.Parse, the validation of Peekaping's API, then libpq's parameters

class _ParseError(Exception):
    """The complete DOWN message for a connection string that cannot be used."""


def _validate(raw: str) -> gourl.URL:
    """Go's url.Parse, then ValidateConnectionString's rules, in Go's words."""
    def fail(reason: str) -> _ParseError:
        return _ParseError(f"connection string validation failed: {reason}")
    if raw == "":
        raise fail("connection string cannot be empty")
    try:
        url = gourl.parse(raw)
    except gourl.URLError as exc:
        raise fail(f"invalid connection string format: {exc.message(MASK)}") from None
    if url.scheme not in SCHEMES:
        raise fail(f"connection string must use one of [{' '.join(SCHEMES)}] schemes, got: {url.scheme}")
    hostname, port = url.hostname_port()
    if not url.host or not hostname:
        raise fail("connection string must include host")
    if not url.user:
        raise fail("connection string must include username")
    if url.path in ("", "/"):
        raise fail("connection string must include database name")
    if port == "0":
        raise fail("invalid port: 0")
    return url


@dataclass(slots=True)
class _Target:
    host: str  # name, IP address, or a directory (Unix socket)
    port: int
    user: str
    password: str
    database: str
    params: dict[str, str] = field(default_factory=dict)  # the URL's query parameters


def _target(url: gourl.URL) -> _Target:
    """Where and as whom to connect: the URL's parts, overridden by query parameters of the same name."""
    hostname, port = url.hostname_port()
    params = gourl.query_values(url.query)
    host = params.get("host") or hostname
    port = params.get("port") or port or "5432"
    if not port.isdigit():
        raise _ParseError(f'failed to parse connection string: invalid integer value "{port}" for connection '
                          f'option "port"')
    return _Target(host, int(port), params.get("user", url.user or ""), params.get("password", url.password or ""),
                   params.get("dbname", url.path[1:] if url.path.startswith("/") else url.path), params)


def _secrets(raw: str) -> list[str]:
    """Every form in which the string's passwords could show up in a text, longest first."""
    found: set[str] = set()
    _, _, authority = raw.partition("//")
    userinfo = authority.partition("/")[0].rpartition("@")[0]
    if ":" in userinfo:
        found.add(userinfo.partition(":")[2])
    query = raw.partition("?")[2].partition("#")[0]
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key in ("password", "sslpassword"):
            found.add(value)
    for value in list(found):
        try:
            found.add(gourl.unescape(value, plus=True))
            found.add(gourl.unescape(value))
        except ValueError:
            pass
    return sorted((s for s in found if len(s) >= 3), key=len, reverse=True)


def _mask(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


# --------------------------------------------------------------------------------------------------
# sslmode, as libpq means it

@dataclass(slots=True)
class _Plan:
    attempts: tuple[bool, ...]  # TLS or not, in order; the second attempt only after a refusal
    context: ssl.SSLContext | None = None
    error: str | None = None  # the mode cannot connect at all (missing root certificate)


def _tls_plan(target: _Target) -> _Plan:
    """libpq's sslmode: `disable` plaintext; `allow` plaintext, TLS when the server refuses that;
    `prefer` TLS, plaintext when the server has no TLS, the handshake fails or it refuses the login;
    `require` TLS only; `verify-ca` TLS with the chain verified against sslrootcert; `verify-full`
    also the host name. When sslrootcert names an existing file, the chain is verified in every mode
    (libpq does so), and `system` means the system's roots and verify-full. An absent sslmode is
    `disable`, as in Go (libpq's default would be `prefer`). TLS never runs over a Unix socket."""
    params = target.params
    root = params.get("sslrootcert", "")
    mode = params.get("sslmode") or ("verify-full" if root == "system" else "disable")
    if mode not in SSL_MODES:
        raise _ParseError(f"failed to parse connection string: invalid sslmode value: {go_quote(mode)}")
    if root == "system" and mode != "verify-full":
        raise _ParseError(f'failed to parse connection string: weak sslmode "{mode}" may not be used with '
                          f'sslrootcert=system (use "verify-full")')
    if mode == "disable" or target.host.startswith("/"):
        return _Plan((False,))
    attempts = {"allow": (False, True), "prefer": (True, False)}.get(mode, (True,))
    try:
        return _Plan(attempts, _context(mode, root, params))
    except _RootMissing as exc:
        return _Plan(attempts, None, str(exc))
    except OSError as exc:  # ssl.SSLError included
        return _Plan(attempts, None, _file_error_text(exc))


class _RootMissing(Exception):
    pass


_contexts: dict[tuple, ssl.SSLContext] = {}


def _context(mode: str, root: str, params: dict[str, str]) -> ssl.SSLContext:
    """The client context for a mode and the files it names; cached while the files are unchanged."""
    verify_root = root and (root == "system" or os.path.exists(root))
    if mode.startswith("verify") and not verify_root:
        place = f'root certificate file "{root}" does not exist' if root else "no root certificate file is set"
        raise _RootMissing(f"{place}: either provide the file with sslrootcert, use the system's trusted roots "
                           f"with sslrootcert=system, or change sslmode to disable server certificate "
                           f"verification")
    system = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")) if root == "system" else None
    key = (mode == "verify-full", _stamp(root) if verify_root else None, system, _stamp(params.get("sslcert", "")),
           _stamp(params.get("sslkey", "")), params.get("sslpassword", ""))
    ctx = _contexts.get(key)
    if ctx is None:
        if len(_contexts) >= 64:
            _contexts.clear()
        ctx = _contexts[key] = _new_context(mode == "verify-full", root if verify_root else "", params)
    return ctx


def _stamp(path: str) -> tuple:
    """A file's identity and version (a context is rebuilt when a certificate file changes)."""
    try:
        st = os.stat(path) if path and path != "system" else None
    except OSError:
        st = None
    return (path, st.st_mtime_ns, st.st_size, st.st_ino) if st else (path,)


def _new_context(check_host: bool, root: str, params: dict[str, str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.sslobject_class = _tls.CapturingSSLObject  # keeps the chain of a failed verification, for Go's x509 texts
    ctx.check_hostname = check_host
    ctx.verify_mode = ssl.CERT_REQUIRED if root else ssl.CERT_NONE
    if root == "system":
        ctx.load_default_certs()
    elif root:
        ctx.load_verify_locations(cafile=root)
    cert = params.get("sslcert", "")
    if cert and os.path.exists(cert):  # libpq goes on without a client certificate when the file is absent
        password = params.get("sslpassword", "")
        ctx.load_cert_chain(cert, params.get("sslkey") or None, password=lambda: password)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # libpq's default ssl_min_protocol_version
    return ctx


def _file_error_text(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"could not load TLS files: {(exc.reason or str(exc)).lower().replace('_', ' ')}"
    return f'could not read file "{exc.filename}": {os_error_text(exc)}'  # exists() passed, then open failed



# --------------------------------------------------------------------------------------------------
# One check

class _Failure(Exception):
    """A connection attempt failed; `retry` when the mode allows the other kind of attempt."""

    def __init__(self, text: str, retry: bool = False) -> None:
        super().__init__(text)
        self.retry = retry


class _Run:
    """One check: its attempts, its deadline, its timings, and the connection it must not leak."""

    def __init__(self, target: _Target, start: int, budget: float) -> None:
        self.target = target
        self.start = start
        self.deadline = time.monotonic() + max(budget, 0.001)
        self.conn: asyncpg.Connection | None = None
        self.loop: _Loop | None = None
        self.ns = {"dns": 0, "connect": 0, "tls": 0, "auth": 0, "query": 0}

    async def check(self, query: str, plan: _Plan) -> tuple[str, int, int]:
        try:
            async with asyncio.timeout(max(self.deadline - time.monotonic(), 0.001)):
                await self._connect(plan)
        except _Failure as exc:
            return f"connection failed: {exc}", DOWN, time.time_ns()
        except TimeoutError:
            return f"connection failed: {self._timeout_text()}", DOWN, time.time_ns()
        try:
            return await self._query(query)
        finally:
            await self._close()

    async def _query(self, query: str) -> tuple[str, int, int]:
        """Go checks the query only once connected, then runs it (rows are read and dropped)."""
        if query.strip():
            if not query.strip().lower().startswith(ALLOWED_QUERIES):
                return f"query validation failed: {QUERY_RULE}", DOWN, time.time_ns()
        else:
            query = "SELECT 1"
        began = time.time_ns()
        try:
            async with asyncio.timeout(max(self.deadline - time.monotonic(), 0.001)):
                await self.conn.execute(query)
        except TimeoutError:
            return f"Query failed: {self._timeout_text()}", DOWN, time.time_ns()
        except Exception as exc:  # the server's error, or the connection's
            return f"Query failed: {self._error_text(exc)}", DOWN, time.time_ns()
        finally:
            self.ns["query"] += time.time_ns() - began
        end = time.time_ns()
        return f"Query successful, ping: {(end - self.start) // 1_000_000}ms", UP, end

    async def _connect(self, plan: _Plan) -> None:
        for number, tls in enumerate(plan.attempts):
            if tls and plan.context is None:
                raise _Failure(plan.error or "no TLS context")
            last = number == len(plan.attempts) - 1
            try:
                self.conn = await self._attempt(plan, tls)
                return
            except _Failure as exc:
                if last or not exc.retry:
                    raise

    async def _attempt(self, plan: _Plan, tls: bool) -> asyncpg.Connection:
        target = self.target
        self.loop = loop = _Loop(asyncio.get_running_loop(), target, self.ns)
        retry_refusal = len(plan.attempts) > 1  # prefer and allow try the other way after a refused login
        try:
            conn = await asyncpg.connect(
                host=target.host, port=target.port, user=target.user, password=target.password,
                database=target.database, ssl=plan.context if tls else False, direct_tls=False,
                loop=loop, timeout=max(self.deadline - time.monotonic(), 0.001) + 1, statement_cache_size=0,
                target_session_attrs="any", server_settings=_server_settings(target.params))
        except asyncpg.ConnectionDoesNotExistError as exc:  # the server hung up (asyncpg's own error)
            raise _Failure(self._error_text(exc), retry=tls and retry_refusal) from None
        except asyncpg.PostgresError as exc:
            raise _Failure(_server_error_text(exc), retry=retry_refusal and _refused_login(exc)) from None
        except _DialError as exc:
            raise _Failure(str(exc)) from None
        except ssl.SSLError as exc:
            raise _Failure(_tls.tls_error_text(exc, target.host), retry=tls and retry_refusal) from None
        except ConnectionError as exc:
            if "rejected SSL upgrade" in str(exc):
                raise _Failure(NO_SSL, retry=retry_refusal) from None
            raise _Failure(self._error_text(exc), retry=tls and retry_refusal) from None
        except (OSError, asyncpg.InterfaceError) as exc:
            raise _Failure(self._error_text(exc)) from None
        loop.authenticated()
        return conn

    def _error_text(self, exc: BaseException) -> str:
        """A driver or socket error in Go's words where Go's driver has them."""
        if isinstance(exc, asyncpg.ConnectionDoesNotExistError):  # asyncpg's, with the socket's error as cause
            exc = exc.__cause__ if isinstance(exc.__cause__, OSError) else EOFError()
        if isinstance(exc, asyncpg.PostgresError):
            return _server_error_text(exc)
        if isinstance(exc, ssl.SSLError):
            return _tls.tls_error_text(exc, self.target.host)
        if isinstance(exc, (EOFError, ConnectionResetError, BrokenPipeError)):
            return self.loop.io_text(exc) if self.loop else "EOF"
        return str(exc) or type(exc).__name__

    def _timeout_text(self) -> str:
        return self.loop.timeout_text() if self.loop else "context deadline exceeded"

    async def _close(self) -> None:
        """Terminate politely (a server logs a dropped connection), but never past the budget."""
        conn, self.conn = self.conn, None
        if conn is None:
            return
        grace = min(CLOSE_GRACE, self.deadline - time.monotonic())
        try:
            if grace > 0:
                await conn.close(timeout=grace)
        except Exception:
            pass
        finally:
            conn.terminate()

    def close_now(self) -> None:
        """The connection goes with the check, however it ended (cancellation included)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.terminate()

    def timings_ms(self) -> dict[str, float]:
        return {name: round(ns / 1e6, 3) for name, ns in self.ns.items() if ns}


def _server_settings(params: dict[str, str]) -> dict[str, str] | None:
    name = params.get("application_name")
    return {"application_name": name} if name else None


def _server_error_text(exc: asyncpg.PostgresError) -> str:
    """The server's ErrorResponse as Go's driver prints it: `FATAL #28P01 password authentication failed ...`."""
    severity = getattr(exc, "severity", None) or getattr(exc, "severity_en", None) or "ERROR"
    message = getattr(exc, "message", None) or (exc.args[0] if exc.args else "")
    return f"{severity} #{exc.sqlstate} {message}"


def _refused_login(exc: asyncpg.PostgresError) -> bool:
    """An error before the login completed (pg_hba.conf, password), after which libpq's allow/prefer
    try the other kind of connection."""
    return (exc.sqlstate or "").startswith("28")


# --------------------------------------------------------------------------------------------------
# The socket: dialled here, handed to asyncpg through a stand-in for the event loop

class _DialError(OSError):
    pass


class _Loop:
    """The running loop as asyncpg sees it while it connects; create_connection and start_tls are ours.

    Everything else is the real loop's, and the stand-in compares and hashes equal to it (asyncio
    keys the current task by loop).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, target: _Target, ns: dict[str, int]) -> None:
        self._loop = loop
        self._target = target
        self._ns = ns
        self._phase = "dial"
        self._mark = 0
        self._kind, self._local, self._remote = "tcp", "", join_host_port(target.host, target.port)

    def __getattr__(self, name: str):
        return getattr(self._loop, name)

    def __eq__(self, other: object) -> bool:
        return other is self or other is self._loop

    def __hash__(self) -> int:
        return hash(self._loop)

    async def create_connection(self, factory, host=None, port=None, **_):
        sock = await self._dial(host, port)
        try:
            transport, protocol = await self._loop.create_connection(factory, sock=sock)
        except BaseException:
            sock.close()
            raise
        self._phase, self._mark = "read", time.time_ns()
        return transport, protocol

    async def create_unix_connection(self, factory, path=None, **_):
        began = time.time_ns()
        self._kind, self._remote, self._local = "unix", path, "@"
        try:
            transport, protocol = await self._loop.create_unix_connection(factory, path)
        except OSError as exc:
            raise _DialError(f"dial unix {path}: connect: {os_error_text(exc)}") from None
        self._phase, self._mark = "read", time.time_ns()
        self._ns["connect"] += self._mark - began
        return transport, protocol

    async def start_tls(self, transport, protocol, context, *, server_hostname=None, **kwargs):
        self._phase = "tls"
        try:
            return await self._loop.start_tls(transport, protocol, context, server_hostname=self._target.host,
                                              **kwargs)
        finally:
            now = time.time_ns()
            self._ns["tls"] += now - self._mark
            self._phase, self._mark = "read", now

    def authenticated(self) -> None:
        self._ns["auth"] += time.time_ns() - self._mark

    async def _dial(self, host: str, port: int) -> socket.socket:
        """Resolve, then try each address in turn; the first failure in Go's words when none connects."""
        loop = self._loop
        if not 0 <= port <= 65535:
            raise _DialError(f"dial tcp: address {port}: invalid port")
        infos = _literal_address(host, port)
        if infos is None:
            if not is_domain_name(host):
                raise _DialError(f"dial tcp: lookup {host}: no such host")
            began = time.time_ns()
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError):
                raise _DialError(f"dial tcp: lookup {host}{resolver_suffix()}: no such host") from None
            finally:
                self._ns["dns"] += time.time_ns() - began
        first: _DialError | None = None
        for family, kind, proto, _, address in infos:
            self._remote = join_host_port(address[0], port)
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                began = time.time_ns()
                done = (await _timing.connect(loop, sock, address))[0]
                self._ns["connect"] += done - began
                self._local = join_host_port(*sock.getsockname()[:2])
                return sock
            except OSError as exc:
                sock.close()
                first = first or _DialError(f"dial tcp {self._remote}: connect: {os_error_text(exc)}")
            except BaseException:
                sock.close()
                raise
        raise first or _DialError(f"dial tcp: lookup {host}: no such host")

    def timeout_text(self) -> str:
        """What Go's driver says when the deadline passes in this phase."""
        if self._phase == "dial":
            return f"dial {self._kind} {self._remote}: i/o timeout"
        return f"read {self._kind} {self._local}->{self._remote}: i/o timeout"

    def io_text(self, exc: BaseException) -> str:
        if isinstance(exc, (ConnectionResetError, BrokenPipeError)) and exc.errno:
            verb = "write" if isinstance(exc, BrokenPipeError) else "read"
            return f"{verb} {self._kind} {self._local}->{self._remote}: {verb}: {os_error_text(exc)}"
        return "EOF"


def _literal_address(host: str, port: int) -> list | None:
    """getaddrinfo's answer for an IP literal (no resolver involved); None for a name."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError, ValueError):
        return None
