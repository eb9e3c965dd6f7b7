"""`sqlserver`: log in to Microsoft SQL Server over TDS, run one query, report its column and row counts.

The connection string is checked as Peekaping checks it, then means what go-mssqldb v0.12.3 makes of it
(encrypt, TrustServerCertificate, certificate, hostnameincertificate, server\\instance via SQL Browser,
connection/dial timeout, packet size, app name, workstation id, ApplicationIntent, failover partner,
routing). python-tds speaks TDS; it blocks, so each session runs in a thread of its own on a socket this
module dialled (dial errors in Go's words), wrapped in `Wire` (executors/_kit/tds.py), which adds what
python-tds lacks: go-mssqldb's encryption negotiation with TLS-in-TDS on the standard ssl module, the
check's deadline on every read and write, receive timestamps, and an abort for the event loop: at the
budget the check is DOWN, the socket is shut down (a read blocked in the thread returns at once), the
thread closes it and its result is dropped.

ping_ms runs from just after the config is decoded to the kernel's receive time of the query's final
DONE token. Phases: resolve (names), browser (named instances), connect, prelogin, tls, login, query.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import threading
import time
from dataclasses import dataclass

from pytds import tds_base
from pytds.login import SpnegoAuth
from pytds.row_strategies import tuple_row_strategy
from pytds.tds_socket import _TdsSocket

from executors import DOWN, UP, Monitor, Result
from executors._kit import gourl, timing as _timing
from executors._kit.gojson import decode_config
from executors._kit.gotext import (
    is_domain_name,
    join_host_port,
    os_error_text,
    resolver_suffix,
)
from executors._kit.http1 import go_quote
from executors._kit.tds import DISABLED, ENC_NOT_SUP, OFF, REQUIRED, GoError, Wire

SCHEMA = {"database_connection_string": str, "database_query": str}  # Go's SQLServerConfig
FIELDS = {
    "database_connection_string": "Server=host[,port];Database=db;User Id=user;Password=pw[;key=value...] "
                                  "or sqlserver://user:pw@host[:port]/db (also mssql://)",
    "database_query": "query to run; blank = SELECT 1; must start with SELECT, SHOW, DESCRIBE, DESC, EXPLAIN, "
                      "WITH or VALUES",
}
SUMMARY = "log in to SQL Server over TDS and run one query; UP with its column and row counts"
EXAMPLES = {"sqlserver": ({"database_connection_string": "Server=localhost,1433;Database=master;User Id=sa;"
                                                         "Password=password;Encrypt=false;TrustServerCertificate=true",
                           "database_query": "SELECT 1"}, "UP", "when SQL Server on localhost:1433 accepts the login")}

BROWSER_PORT = 1434  # SQL Server Browser (named instances)
QUERY_PREFIXES = ("SELECT", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "WITH", "VALUES")
BAD_QUERY = "query validation failed: query must start with one of: " + ", ".join(QUERY_PREFIXES)
_GRACE = 0.05  # the thread's own deadline fires first; the event loop waits this much longer, then aborts
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
            "\u2028\u2029\u202f\u205f\u3000"  # unicode.IsSpace (str.strip() also drops \x1c-\x1f)


class _Down(Exception):
    """The check is DOWN; str(exc) is the whole message."""


# ==================================================================================================
# Connection string: Peekaping's checks, then go-mssqldb's reading

def _fold(word: str) -> str:
    """A literal as Go's (?i) matches it: case-insensitive with Unicode simple folding (s~ſ, k~K)."""
    extra = {"s": "\u017f", "k": "\u212a"}
    return "".join(f"[{c.upper()}{c.lower()}{extra.get(c.lower(), '')}]" if c.isalpha() else re.escape(c)
                   for c in word)


_ADO = re.compile(_fold("Server=") + "([^;,]+)(,[0-9]+)?;" + _fold("Database=") + "[^;]+;" + _fold("User Id=")
                  + "[^;]+;" + _fold("Password=") + "[^;]*;?.*")
# Peekaping's key normalisation, as far as it changes what go-mssqldb (which lower-cases keys) sees
_PEEKAPING_KEYS = {"server": "Server", "database": "Database", "user id": "User Id", "password": "Password",
                   "encrypt": "Encrypt", "trustservercertificate": "TrustServerCertificate",
                   "connection timeout": "Connection Timeout", "timeout": "Connection Timeout"}
_ADO_SYNONYMS = {"application name": "app name", "data source": "server", "address": "server",
                 "network address": "server", "addr": "server", "user": "user id", "uid": "user id",
                 "initial catalog": "database"}
_FORMAT = ("invalid connection string format. Expected: Server=hostname,port;Database=database;User Id=username;"
           "Password=password;...")


def _trim(text: str) -> str:
    return text.strip(_GO_SPACE)


def _lower(text: str) -> str:
    return text.replace("\u0130", "i").lower()  # Go maps İ to i; Python to i + U+0307


def _atoi(text: str) -> int | None:
    """strconv.Atoi: optional sign, ASCII digits, int64."""
    value = int(text) if re.fullmatch(r"[+-]?[0-9]+", text) else None
    return value if value is not None and -(1 << 63) <= value < (1 << 63) else None


def _mask(text: str, password: str) -> str:
    """The password out of a text built from a server's words or connection-string values (passwords
    shorter than 4 characters are left: masking "sa" would garble every other word)."""
    return text.replace(password, "xxxxx") if len(password) >= 4 else text


def validate(conn_str: str) -> list[tuple[str, str]]:
    """Peekaping's checks; the key/value pairs handed to the driver, or _Down with Go's message."""
    try:
        if conn_str == "":
            raise _Down("connection string cannot be empty")
        if _ADO.fullmatch(conn_str):
            _check_ado(conn_str)
            return [(part.partition("=")[0], part.partition("=")[2]) for part in conn_str.split(";") if part]
        if conn_str.startswith(("sqlserver://", "mssql://")):
            return _url_pairs(conn_str)
        raise _Down(_FORMAT)
    except _Down as exc:
        raise _Down(f"connection string validation failed: {exc}") from None


def _check_ado(conn_str: str) -> None:
    params: dict[str, str] = {}
    for part in map(_trim, conn_str.split(";")):
        if part.find("=") > 0:
            key, _, value = part.partition("=")
            params[_PEEKAPING_KEYS.get(_lower(_trim(key)), _trim(key))] = _trim(value)
    for key in ("Server", "Database", "User Id"):
        if not params.get(key):
            raise _Down(f"{key} parameter is required")
    params = {k: v if k == "Password" else _mask(v, params.get("Password", "")) for k, v in params.items()}
    server = params["Server"].split(",")
    if len(server) > 2:
        raise _Down("invalid Server format. Expected: hostname or hostname,port")
    if len(server) == 2 and not 0 < (_atoi(server[1]) or 0) <= 65535:
        raise _Down(f"invalid port number: {server[1]}")
    for key in ("Encrypt", "TrustServerCertificate"):
        if params.get(key) and _lower(params[key]) not in ("true", "false", "yes", "no"):
            raise _Down(f"invalid {key} value: {params[key]}. Expected: true or false")
    timeout = params.get("Connection Timeout", "")
    seconds = _atoi(timeout) if timeout else 0
    if seconds is None or seconds < 0:
        raise _Down(f"invalid Connection Timeout value: {timeout}. Expected: positive integer")


def _url_pairs(raw: str) -> list[tuple[str, str]]:
    """Peekaping's legacy URL checks (on Go's url.Parse) and its conversion to ADO keys."""
    try:
        url = gourl.parse(raw)
    except gourl.URLError as exc:  # Go prints the raw URL; the password is replaced as URL.Redacted does
        raise _Down(f"invalid connection string format: {exc.message()}") from None
    if url.scheme not in ("sqlserver", "mssql"):
        raise _Down(f"invalid scheme: {url.scheme}, expected sqlserver:// or mssql://")
    hostname, port = url.hostname_port()
    if not hostname:
        raise _Down("connection string must include host")
    if not url.user:
        raise _Down("connection string must include username")
    query = gourl.query_values(url.query)
    database, path = query.get("database", ""), url.path
    if path in ("", "/") and not database:
        raise _Down("connection string must include database name (in path or ?database= parameter)")
    if port == "0":
        raise _Down("invalid port: 0")
    port = port or "1433"
    params = {"Server": hostname if port == "1433" else f"{hostname},{port}", "User Id": url.user}
    params.update({"Password": url.password} if url.password else {})
    params.update({"Database": database or path[1:]} if database or path[1:] else {})
    for key, value in query.items():
        params.setdefault(_PEEKAPING_KEYS.get(_lower(key), key), value)
    return list(params.items())


@dataclass
class Settings:
    """What go-mssqldb's msdsn.Parse reads from a connection string."""
    host: str
    instance: str
    port: int
    database: str
    user: str
    password: str
    packet_size: int
    conn_timeout: float  # seconds per read or write; 0 = none
    dial_timeout: float
    encryption: int
    verify: bool
    ca_pem: str | None  # `certificate`: trust anchors instead of the system roots
    server_name: str  # the name the certificate must carry
    name_given: bool  # hostnameincertificate was set (routing keeps it)
    app_name: str
    workstation: str
    readonly: bool
    failover: tuple[str, int]  # failoverpartner (empty: none), failoverport


def driver_params(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """go-mssqldb's splitConnectionString over the pairs: lower-case keys, synonyms, `server` ports."""
    params: dict[str, str] = {}
    for name, value in pairs:
        name, value = _trim(_lower(name)), _trim(value)
        if name:
            name = _ADO_SYNONYMS.get(name, name)
            if name == "server":
                value = value.removeprefix("tcp:")
                if len(value.split(",")) == 2 and value.split(",")[1]:
                    value, params["port"] = value.split(",")
            params[name] = value
    return params


def _parse_uint(text: str, base: int, bits: int, what: str) -> int:
    """strconv.ParseUint; GoError `<what>: strconv.ParseUint: ...` on failure."""
    digits, radix = text.replace("_", "") if base == 0 else text, base or 10
    if base == 0 and len(digits) > 1 and digits[0] == "0":
        radix, digits = {"x": (16, digits[2:]), "o": (8, digits[2:]), "b": (2, digits[2:])}.get(
            digits[1].lower(), (8, digits[1:]))
    try:
        if not digits or not digits.isascii() or not digits.isalnum() or "_" in text and base != 0:
            raise ValueError
        value = int(digits, radix)
    except ValueError:
        raise GoError(f"{what}: strconv.ParseUint: parsing {go_quote(text)}: invalid syntax") from None
    if value >> bits:
        raise GoError(f"{what}: strconv.ParseUint: parsing {go_quote(text)}: value out of range")
    return value


def _parse_bool(text: str, what: str) -> bool:
    if text in ("1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False"):
        return text in ("1", "t", "T", "TRUE", "true", "True")
    raise GoError(f"{what}: strconv.ParseBool: parsing {go_quote(text)}: invalid syntax")


# key -> (base, bits, error text) of go-mssqldb's unsigned settings, in the order it reads them
_UINTS = {"log": (10, 64, "invalid log parameter '{}'"), "port": (10, 16, "invalid tcp port '{}'"),
          "packet size": (0, 16, "invalid packet size '{}'"),
          "connection timeout": (10, 64, "invalid connection timeout '{}'"),
          "dial timeout": (10, 64, "invalid dial timeout '{}'"), "keepalive": (10, 64, "invalid keepAlive value '{}'")}


def settings(p: dict[str, str]) -> Settings:
    """msdsn.Parse, in its order; GoError with its texts (Go reports them when it first connects)."""
    n = {key: _parse_uint(p[key], base, bits, what.format(p[key])) for key, (base, bits, what) in _UINTS.items()
         if key in p}
    host, _, instance = p.get("server", "").partition("\\")
    host = "localhost" if host in (".", "") or host.upper() == "(LOCAL)" else host
    encryption, verify = OFF, "encrypt" in p  # encrypt absent: the certificate is trusted
    if "encrypt" in p and p["encrypt"].upper() == "DISABLE":
        encryption = DISABLED
    elif "encrypt" in p and _parse_bool(p["encrypt"], f"invalid encrypt '{p['encrypt']}'"):
        encryption = REQUIRED
    if "trustservercertificate" in p:
        trust = p["trustservercertificate"]
        verify = not _parse_bool(trust, f"invalid trust server certificate '{trust}'")
    ca_pem, path = None, p.get("certificate", "")
    if encryption != DISABLED and path:
        try:
            with open(path, "rb") as fh:
                ca_pem = fh.read().decode("ascii", "replace")
        except OSError as exc:
            op = "read" if isinstance(exc, IsADirectoryError) else "open"
            raise GoError(f"failed to setup TLS: cannot read certificate {go_quote(path)}: {op} {path}: "
                          f"{os_error_text(exc)}") from None
    readonly = p.get("applicationintent") == "ReadOnly"
    if readonly and not p.get("database"):
        raise GoError("database must be specified when ApplicationIntent is ReadOnly")
    failover_port = 0
    if "failoverport" in p:
        failover_port = _parse_uint(p["failoverport"], 0, 16, f"invalid failover port '{p['failoverport']}'")
    if "disableretry" in p:
        _parse_bool(p["disableretry"], f"invalid disableRetry '{p['disableretry']}'")
    return Settings(host, instance.upper(), n.get("port", 0), p.get("database", ""), p.get("user id", ""),
                    p.get("password", ""), min(max(n.get("packet size", 4096), 512), 32767),
                    n.get("connection timeout", 0), n.get("dial timeout", 0) or 15, encryption, verify, ca_pem,
                    p.get("hostnameincertificate", host), "hostnameincertificate" in p, p.get("app name", "go-mssqldb"),
                    p.get("workstation id", socket.gethostname()), readonly, (p.get("failoverpartner", ""), failover_port))


# ==================================================================================================
# The check

async def check(monitor: Monitor, proxy: dict | None, budget: float) -> Result:
    cfg = decode_config(monitor.config, SCHEMA, "SQLServerConfig")
    start = time.time_ns()
    deadline = time.monotonic() + max(budget, 0.001)
    query, timings = cfg["database_query"], {}
    try:
        params = driver_params(validate(cfg["database_connection_string"]))
        query = query if _trim(query) else "SELECT 1"
        try:
            s = settings(params)
        except GoError as exc:
            raise _Down(f"connection failed: {_mask(str(exc), params.get('password', ''))}") from None
        bad_query = not _trim(query).upper().startswith(QUERY_PREFIXES)
        try:
            columns, rows, end = await _attempt(s, s.host, s.port, query, bad_query, deadline, timings)
        except _Down as exc:  # go-mssqldb tries the partner when connecting (not the query) failed
            if not s.failover[0] or not str(exc).startswith("connection failed: "):
                raise
            host, port = s.failover
            columns, rows, end = await _attempt(s, host, port or s.port, query, bad_query, deadline, timings)
    except _Down as exc:
        return Result(DOWN, str(exc), start, time.time_ns(), timings=timings)
    ping = max(0, (end - start) // 1_000_000)
    return Result(UP, f"Query successful, ping: {ping}ms, columns: {columns}, rows: {rows}", start, end,
                  timings=timings)


async def _attempt(s: Settings, host: str, port: int, query: str, bad_query: bool, deadline: float,
                   timings: dict[str, float]) -> tuple[int, int, int]:
    """One server (go-mssqldb's connect): instance lookup, dial, session; a routing answer loops back."""
    dial_deadline = min(deadline, time.monotonic() + s.dial_timeout)
    if s.instance:
        port = await _instance_port(host, s.instance, dial_deadline, timings)
    server_name = s.server_name
    while True:
        sock = await _dial(host, port or 1433, dial_deadline, timings)
        wire = Wire(sock, deadline, timings, server_name, encryption=s.encryption, verify=s.verify,
                    ca_pem=s.ca_pem, op_timeout=s.conn_timeout)
        outcome = await _in_thread(wire, _session, wire, s, host, query, bad_query)
        if outcome[0] != "route":
            return outcome[1:]
        host, port = outcome[1].partition("\\")[0], outcome[2]
        server_name = server_name if s.name_given else host
        dial_deadline = min(deadline, time.monotonic() + s.dial_timeout)


async def _in_thread(wire: Wire, fn, *args) -> tuple:
    """fn(*args) in a thread of its own; at the deadline the wire is aborted and the check is DOWN."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def deliver(ok: bool, value) -> None:
        if not done.done():
            done.set_result(value) if ok else done.set_exception(value)

    def run() -> None:
        try:
            ok, value = True, fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the coroutine, which re-raises it
            ok, value = False, exc
        finally:
            wire.release()
        try:
            loop.call_soon_threadsafe(deliver, ok, value)
        except RuntimeError:  # the loop is gone: nobody waits for this result
            pass

    threading.Thread(target=run, name="sqlserver-check", daemon=True).start()
    try:
        async with asyncio.timeout(max(wire.deadline - time.monotonic(), 0.0) + _GRACE):
            return await done
    except TimeoutError:
        raise _Down(f"{wire.stage}context deadline exceeded") from None
    finally:
        wire.abort()


# ==================================================================================================
# Name resolution, SQL Browser, dialling (on the event loop, in Go's words)

async def _resolve(host: str, port: int, deadline: float, timings: dict[str, float]) -> list[tuple]:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return [(family, (host, port) if family == socket.AF_INET else (host, port, 0, 0))]
        except OSError:
            continue
    if not is_domain_name(host):
        raise _Down(f"connection failed: lookup {host}: no such host")
    began = time.perf_counter()
    try:
        async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except TimeoutError:
        raise _Down(f"connection failed: lookup {host}{resolver_suffix()}: i/o timeout") from None
    except (OSError, UnicodeError):
        raise _Down(f"connection failed: lookup {host}{resolver_suffix()}: no such host") from None
    finally:
        timings["resolve"] = round((time.perf_counter() - began) * 1000, 3)
    return [(family, address) for family, _, _, _, address in infos]


async def _instance_port(host: str, instance: str, deadline: float, timings: dict[str, float]) -> int:
    """Ask SQL Server Browser for a named instance's TCP port, as go-mssqldb's getInstances."""
    loop = asyncio.get_running_loop()
    family, address = (await _resolve(host, BROWSER_PORT, deadline, timings))[0]
    failed = f"connection failed: unable to get instances from Sql Server Browser on host {host}: read udp "
    began, route = time.perf_counter(), f"{host}:{BROWSER_PORT}"
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        try:
            sock.connect(address)
            route = f"{join_host_port(*sock.getsockname()[:2])}->{join_host_port(address[0], BROWSER_PORT)}"
            await loop.sock_sendall(sock, b"\x03")  # CLNT_UCAST_EX: list every instance
            async with asyncio.timeout(max(min(deadline - time.monotonic(), 5.0), 0.001)):
                answer = await loop.sock_recv(sock, 16 * 1024 - 1)
        except TimeoutError:
            raise _Down(f"{failed}{route}: i/o timeout") from None
        except OSError as exc:
            raise _Down(f"{failed}{route}: read: {os_error_text(exc)}") from None
        finally:
            timings["browser"] = round((time.perf_counter() - began) * 1000, 3)
    instances: dict[str, dict[str, str]] = {}  # go-mssqldb's parseInstances
    current: dict[str, str] = {}
    name, value_next = "", False
    for token in answer[3:].decode("latin-1").split(";") if len(answer) > 3 and answer[0] == 5 else ():
        if value_next:
            current[name], value_next = token, False
        elif token:
            name, value_next = token, True
        elif not current:
            break
        else:
            instances[current.get("InstanceName", "").upper()], current = current, {}
    tcp = instances.get(instance, {}).get("tcp")
    if tcp is None:
        raise _Down(f"connection failed: no instance matching '{instance}' returned from host '{host}'")
    try:
        return _parse_uint(tcp, 0, 16, f"invalid tcp port returned from Sql Server Browser '{tcp}'")
    except GoError as exc:
        raise _Down(f"connection failed: {exc}") from None


async def _dial(host: str, port: int, deadline: float, timings: dict[str, float]) -> socket.socket:
    """Dial every address at once (go-mssqldb does, for AlwaysOn listeners); the first to connect wins."""
    targets = await _resolve(host, port, deadline, timings)
    loop = asyncio.get_running_loop()
    began = time.perf_counter()

    async def one(family: int, address: tuple) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await _timing.connect(loop, sock, address)
            return sock
        except OSError as exc:
            sock.close()
            raise GoError(f"dial tcp {join_host_port(address[0], port)}: connect: {os_error_text(exc)}") from None
        except BaseException:
            sock.close()
            raise

    def losing(task: asyncio.Task) -> None:  # a connection nobody took is closed; errors are read
        if not task.cancelled() and task.exception() is None and task.result() is not winner:
            task.result().close()

    tasks = [asyncio.ensure_future(one(*target)) for target in targets]
    winner: socket.socket | None = None
    error = f"dial tcp {join_host_port(targets[-1][1][0], port)}: i/o timeout"
    try:
        async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
            for next_done in asyncio.as_completed(tasks):
                try:
                    winner = await next_done
                except GoError as exc:
                    error = str(exc)
                    continue
                timings["connect"] = round((time.perf_counter() - began) * 1000, 3)
                return winner
    except TimeoutError:
        pass
    finally:
        for task in tasks:
            task.add_done_callback(losing)
            task.cancel()
    raise _Down(f"connection failed: unable to open tcp connection with host '{host}:{port}': {error}")


# ==================================================================================================
# The session, in its thread

def _session(wire: Wire, s: Settings, host: str, query: str, bad_query: bool) -> tuple:
    """Log in and run the query; ("route", server, port) or ("ok", columns, rows, end_ns); _Down otherwise."""
    login = tds_base._TdsLogin()
    login.client_host_name, login.library, login.app_name = s.workstation[:128], "go-mssqldb", s.app_name
    login.user_name, login.password, login.database = s.user, s.password, s.database
    login.server_name = f"{host}\\{s.instance}" if s.instance else host
    login.instance_name, login.blocksize, login.readonly = s.instance, s.packet_size, s.readonly
    login.client_lcid, login.pid, login.bytes_to_unicode = 1033, os.getpid(), True
    login.option_flag2, login.enc_flag = tds_base.TDS_ODBC_ON, ENC_NOT_SUP  # TLS is the wire's business
    if "\\" in s.user:  # go-mssqldb logs DOMAIN\user in with NTLM
        login.auth = SpnegoAuth(s.user, s.password, hostname=host, service="MSSQLSvc", protocol="ntlm")
    tds = _TdsSocket(sock=wire, login=login, row_strategy=tuple_row_strategy, autocommit=True)
    session = tds.main_session
    try:
        route = tds.login()
        wire.mark("login")
        if route is not None:
            return "route", route["server"], route["port"]
        if bad_query:
            raise _Down(BAD_QUERY)
        wire.stage = "query execution failed: "
        session.execute(query, None)
        columns = len(session.res_info.columns) if session.res_info else 0
        wire.stage, rows = "error iterating rows: ", 0
        while session.res_info and session.fetchone() is not None:
            rows += 1
        wire.mark("query")
        return "ok", columns, rows, wire.last_rx
    except _Down:
        raise
    except GoError as exc:
        raise _Down(wire.stage + str(exc)) from None
    except tds_base.ClosedConnectionError:
        raise _Down(wire.stage + "EOF") from None
    except tds_base.DatabaseError:  # go-mssqldb reports the last ERROR token
        errors = [m["message"] for m in session.messages if m["marker"] == tds_base.TDS_ERROR_TOKEN]
        text = _mask(errors[-1], s.password) if errors else "Request failed but didn't provide reason"
        raise _Down(f"{wire.stage}mssql: {'login error: ' if wire.stage.startswith('conn') else ''}{text}") from None
    except Exception as exc:  # noqa: BLE001 - python-tds found the stream malformed, or refused a value
        raise _Down(f"{wire.stage}Invalid TDS stream: {_mask(str(exc), s.password)}") from None
