"""`sqlserver`: log in to Microsoft SQL Server over TDS, run one query, report its column and row counts.

The connection string is checked as Peekaping checks it, then means what go-mssqldb v0.12.3 makes of it
(encrypt, TrustServerCertificate, certificate, hostnameincertificate, server\\instance via SQL Browser,
connection/dial timeout, packet size, app name, workstation id, ApplicationIntent, failover partner,
routing). python-tds speaks TDS; it blocks, so each session runs in a thread of its own on a socket this
module dialled (dial errors in Go's words), wrapped in `_Wire`, which adds what python-tds lacks:
go-mssqldb's encryption negotiation with TLS-in-TDS on the standard ssl module, the check's deadline on
every read and write, receive timestamps, and an abort for the event loop: at the budget the check is
DOWN, the socket is shut down (a read blocked in the thread returns at once), the thread closes it and
its result is dropped.

ping_ms runs from just after the config is decoded to the kernel's receive time of the query's final
DONE token. Phases: resolve (names), browser (named instances), connect, prelogin, tls, login, query.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass

from pytds import tds_base
from pytds.login import SpnegoAuth
from pytds.row_strategies import tuple_row_strategy
from pytds.tds_socket import _TdsSocket

from executors import DOWN, UP, Monitor, Result
from executors._kit import timing as _timing
from executors._kit import tls as _tls
from executors._kit.gojson import decode_config
from executors._kit.gotext import (
    is_domain_name,
    join_host_port,
    os_error_text,
    resolver_suffix,
)
from executors._kit.http1 import go_quote

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
_OFF, _REQUIRED, _DISABLED = 0, 1, 3  # go-mssqldb's Encryption settings
_ENC_OFF, _ENC_ON, _ENC_NOT_SUP = 0, 1, 2  # PRELOGIN ENCRYPTION values
_PRELOGIN, _LOGIN7 = 0x12, 0x10


class _Down(Exception):
    """The check is DOWN; str(exc) is the whole message."""


class _GoError(Exception):
    """A driver-level failure in go-mssqldb's words (the caller adds the Peekaping prefix)."""


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
        url = _go_url(raw)
    except ValueError as exc:  # Go prints the raw URL; the password is replaced as URL.Redacted does
        head, sep, rest = raw.partition("://")
        userinfo = re.split(r"[/?#]", rest, maxsplit=1)[0].rpartition("@")[0]
        if ":" in userinfo:
            raw = f"{head}{sep}{userinfo.partition(':')[0]}:xxxxx{rest[len(userinfo):]}"
        raise _Down(f"invalid connection string format: parse {go_quote(raw)}: {exc}") from None
    if url["scheme"] not in ("sqlserver", "mssql"):
        raise _Down(f"invalid scheme: {url['scheme']}, expected sqlserver:// or mssql://")
    if not url["hostname"]:
        raise _Down("connection string must include host")
    if not url["user"]:
        raise _Down("connection string must include username")
    database, path = url["query"].get("database", [""])[0], url["path"]
    if path in ("", "/") and not database:
        raise _Down("connection string must include database name (in path or ?database= parameter)")
    if url["port"] == "0":
        raise _Down("invalid port: 0")
    port = url["port"] or "1433"
    params = {"Server": url["hostname"] if port == "1433" else f"{url['hostname']},{port}", "User Id": url["user"]}
    params.update({"Password": url["password"]} if url["password"] else {})
    params.update({"Database": database or path[1:]} if database or path[1:] else {})
    for key, values in url["query"].items():
        params.setdefault(_PEEKAPING_KEYS.get(_lower(key), key), values[0])
    return list(params.items())


_USERINFO_OK = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._:~!$&'()*+,;=%@")
_HOST_OK = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~!$&'()*+,;=:[]<>\"")


def _go_url(raw: str) -> dict:
    """The parts of Go's url.Parse (and URL.Hostname/Port/Query) the legacy form needs; ValueError with
    Go's texts."""
    base, _, fragment = raw.partition("#")
    if any(ord(c) < 0x20 or c == "\x7f" for c in base):
        raise ValueError("net/url: invalid control character in URL")
    scheme, _, rest = base.partition(":")
    rest, _, query = (rest[:-1], "", "") if rest.endswith("?") and rest.count("?") == 1 else rest.partition("?")
    authority, slash, path = rest[2:].partition("/")  # rest starts with // (the caller checked the prefix)
    at = authority.rfind("@")
    host = authority[at + 1:]
    port_at = host.rfind("]") + 1 if host.startswith("[") else host.rfind(":")
    if host.startswith("[") and not port_at:
        raise ValueError("missing ']' in host")
    if port_at >= 0 and not _valid_port(host[port_at:]):
        raise ValueError(f"invalid port {go_quote(host[port_at:])} after host")
    host = _unescape(host, host_mode=True)
    user = password = None
    if at >= 0:
        if not _USERINFO_OK.issuperset(authority[:at]):
            raise ValueError("net/url: invalid userinfo")
        user, colon, password = authority[:at].partition(":")
        user, password = _unescape(user), _unescape(password) if colon else ""
    path = _unescape(slash + path)
    _unescape(fragment)
    hostname, port = host, ""
    if ":" in host and _valid_port(host[host.rfind(":"):]):
        hostname, port = host[:host.rfind(":")], host[host.rfind(":") + 1:]
    if hostname.startswith("[") and hostname.endswith("]"):
        hostname = hostname[1:-1]
    values: dict[str, list[str]] = {}
    for pair in query.split("&"):  # url.ParseQuery: bad pairs are dropped
        key, _, value = pair.partition("=")
        try:
            if pair and ";" not in pair:
                values.setdefault(_unescape(key, query=True), []).append(_unescape(value, query=True))
        except ValueError:
            continue
    return {"scheme": scheme.lower(), "hostname": hostname, "port": port, "user": user, "password": password,
            "path": path, "query": values}


def _valid_port(colon_port: str) -> bool:
    return colon_port == "" or colon_port[0] == ":" and all("0" <= c <= "9" for c in colon_port[1:])


def _unescape(text: str, host_mode: bool = False, query: bool = False) -> str:
    out, i = bytearray(), 0
    while i < len(text):
        c = text[i]
        if c == "%":
            code = text[i + 1:i + 3]
            if len(code) < 2 or not all(h in "0123456789abcdefABCDEF" for h in code) or (
                    host_mode and int(code[0], 16) < 8 and code != "25"):
                raise ValueError(f"invalid URL escape {go_quote(text[i:i + 3])}")
            out.append(int(code, 16))
            i += 3
            continue
        if host_mode and ord(c) < 0x80 and c not in _HOST_OK:
            raise ValueError(f"invalid character {go_quote(c)} in host name")
        out += b" " if query and c == "+" else c.encode("utf-8", "surrogatepass")
        i += 1
    return out.decode("utf-8", "replace")


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
    """strconv.ParseUint; _GoError `<what>: strconv.ParseUint: ...` on failure."""
    digits, radix = text.replace("_", "") if base == 0 else text, base or 10
    if base == 0 and len(digits) > 1 and digits[0] == "0":
        radix, digits = {"x": (16, digits[2:]), "o": (8, digits[2:]), "b": (2, digits[2:])}.get(
            digits[1].lower(), (8, digits[1:]))
    try:
        if not digits or not digits.isascii() or not digits.isalnum() or "_" in text and base != 0:
            raise ValueError
        value = int(digits, radix)
    except ValueError:
        raise _GoError(f"{what}: strconv.ParseUint: parsing {go_quote(text)}: invalid syntax") from None
    if value >> bits:
        raise _GoError(f"{what}: strconv.ParseUint: parsing {go_quote(text)}: value out of range")
    return value


def _parse_bool(text: str, what: str) -> bool:
    if text in ("1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False"):
        return text in ("1", "t", "T", "TRUE", "true", "True")
    raise _GoError(f"{what}: strconv.ParseBool: parsing {go_quote(text)}: invalid syntax")


# key -> (base, bits, error text) of go-mssqldb's unsigned settings, in the order it reads them
_UINTS = {"log": (10, 64, "invalid log parameter '{}'"), "port": (10, 16, "invalid tcp port '{}'"),
          "packet size": (0, 16, "invalid packet size '{}'"),
          "connection timeout": (10, 64, "invalid connection timeout '{}'"),
          "dial timeout": (10, 64, "invalid dial timeout '{}'"), "keepalive": (10, 64, "invalid keepAlive value '{}'")}


def settings(p: dict[str, str]) -> Settings:
    """msdsn.Parse, in its order; _GoError with its texts (Go reports them when it first connects)."""
    n = {key: _parse_uint(p[key], base, bits, what.format(p[key])) for key, (base, bits, what) in _UINTS.items()
         if key in p}
    host, _, instance = p.get("server", "").partition("\\")
    host = "localhost" if host in (".", "") or host.upper() == "(LOCAL)" else host
    encryption, verify = _OFF, "encrypt" in p  # encrypt absent: the certificate is trusted
    if "encrypt" in p and p["encrypt"].upper() == "DISABLE":
        encryption = _DISABLED
    elif "encrypt" in p and _parse_bool(p["encrypt"], f"invalid encrypt '{p['encrypt']}'"):
        encryption = _REQUIRED
    if "trustservercertificate" in p:
        trust = p["trustservercertificate"]
        verify = not _parse_bool(trust, f"invalid trust server certificate '{trust}'")
    ca_pem, path = None, p.get("certificate", "")
    if encryption != _DISABLED and path:
        try:
            with open(path, "rb") as fh:
                ca_pem = fh.read().decode("ascii", "replace")
        except OSError as exc:
            op = "read" if isinstance(exc, IsADirectoryError) else "open"
            raise _GoError(f"failed to setup TLS: cannot read certificate {go_quote(path)}: {op} {path}: "
                           f"{os_error_text(exc)}") from None
    readonly = p.get("applicationintent") == "ReadOnly"
    if readonly and not p.get("database"):
        raise _GoError("database must be specified when ApplicationIntent is ReadOnly")
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
        except _GoError as exc:
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
        wire = _Wire(sock, deadline, timings, server_name, encryption=s.encryption, verify=s.verify,
                     ca_pem=s.ca_pem, op_timeout=s.conn_timeout)
        outcome = await _in_thread(wire, _session, wire, s, host, query, bad_query)
        if outcome[0] != "route":
            return outcome[1:]
        host, port = outcome[1].partition("\\")[0], outcome[2]
        server_name = server_name if s.name_given else host
        dial_deadline = min(deadline, time.monotonic() + s.dial_timeout)


async def _in_thread(wire: _Wire, fn, *args) -> tuple:
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
    except _GoError as exc:
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
            raise _GoError(f"dial tcp {join_host_port(address[0], port)}: connect: {os_error_text(exc)}") from None
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
                except _GoError as exc:
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

def _session(wire: _Wire, s: Settings, host: str, query: str, bad_query: bool) -> tuple:
    """Log in and run the query; ("route", server, port) or ("ok", columns, rows, end_ns); _Down otherwise."""
    login = tds_base._TdsLogin()
    login.client_host_name, login.library, login.app_name = s.workstation[:128], "go-mssqldb", s.app_name
    login.user_name, login.password, login.database = s.user, s.password, s.database
    login.server_name = f"{host}\\{s.instance}" if s.instance else host
    login.instance_name, login.blocksize, login.readonly = s.instance, s.packet_size, s.readonly
    login.client_lcid, login.pid, login.bytes_to_unicode = 1033, os.getpid(), True
    login.option_flag2, login.enc_flag = tds_base.TDS_ODBC_ON, _ENC_NOT_SUP  # TLS is the wire's business
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
    except _GoError as exc:
        raise _Down(wire.stage + str(exc)) from None
    except tds_base.ClosedConnectionError:
        raise _Down(wire.stage + "EOF") from None
    except tds_base.DatabaseError:  # go-mssqldb reports the last ERROR token
        errors = [m["message"] for m in session.messages if m["marker"] == tds_base.TDS_ERROR_TOKEN]
        text = _mask(errors[-1], s.password) if errors else "Request failed but didn't provide reason"
        raise _Down(f"{wire.stage}mssql: {'login error: ' if wire.stage.startswith('conn') else ''}{text}") from None
    except Exception as exc:  # noqa: BLE001 - python-tds found the stream malformed, or refused a value
        raise _Down(f"{wire.stage}Invalid TDS stream: {_mask(str(exc), s.password)}") from None


_contexts: dict[tuple, ssl.SSLContext] = {}
_contexts_lock = threading.Lock()


def _tls_context(verify: bool, ca_pem: str | None) -> ssl.SSLContext:
    """Client contexts, built once per (verify, trust anchors): building one takes ~20 ms of CPU."""
    key = (verify, hashlib.sha256(ca_pem.encode()).digest() if ca_pem is not None else
           (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")))
    with _contexts_lock:
        if key in _contexts:
            return _contexts[key]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # Go's client default
    if not verify:
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    elif ca_pem is None:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:  # x509.CertPool.AppendCertsFromPEM: what does not parse is skipped
        for block in re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", ca_pem, re.DOTALL):
            try:
                ctx.load_verify_locations(cadata=block)
            except ssl.SSLError:
                pass
    ctx.sslobject_class = _tls._CapturingSSLObject  # keeps the peer chain for Go's x509 error texts
    with _contexts_lock:
        if len(_contexts) >= 32:
            _contexts.clear()
        _contexts[key] = ctx
    return ctx


def _packets(kind: int, data: bytes, size: int = 4096) -> bytes:
    """`data` as TDS packets of at most `size` bytes, the last marked end-of-message."""
    chunks = [data[i:i + size - 8] for i in range(0, len(data), size - 8)] or [b""]
    return b"".join(bytes((kind, int(n == len(chunks)))) + (len(chunk) + 8).to_bytes(2, "big")
                    + bytes((0, 0, n % 256, 0)) + chunk for n, chunk in enumerate(chunks, 1))


def _prelogin_option(payload: bytes | bytearray, token: int) -> int | None:
    """Offset of a PRELOGIN option's value in the payload (None when absent)."""
    i = 0
    while i + 5 <= len(payload) and payload[i] != 0xFF:
        if payload[i] == token:
            offset, length = int.from_bytes(payload[i + 1:i + 3], "big"), int.from_bytes(payload[i + 3:i + 5], "big")
            return offset if length >= 1 and offset < len(payload) else None
        i += 5
    return None


class _Wire:
    """The socket python-tds talks to (see the module docstring). Used by the session thread, except
    `abort`, which the event loop calls."""

    def __init__(self, sock: socket.socket, deadline: float, timings: dict[str, float], server_name: str, *,
                 encryption: int, verify: bool, ca_pem: str | None, op_timeout: float) -> None:
        self.sock, self.deadline, self.timings, self.began = sock, deadline, timings, time.perf_counter()
        self.server_name, self.encryption, self.verify, self.ca_pem = server_name, encryption, verify, ca_pem
        self.op_timeout = op_timeout  # go-mssqldb's `connection timeout`: seconds per read or write, 0 = none
        self.stage = "connection failed: "  # the message prefix of a failure now
        self.state = "prelogin"  # -> "negotiate" (PRELOGIN sent) -> "login" (reply handed over)
        self.pending = b""
        self.tls: ssl.SSLObject | None = None
        self.tls_login_only = False
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.lock = threading.Lock()
        self.aborted = self.closed = False
        self.stamped = _timing.rx_stamps_on(sock)
        self.last_rx = time.time_ns()
        try:
            self.route = f"{join_host_port(*sock.getsockname()[:2])}->{join_host_port(*sock.getpeername()[:2])}"
        except OSError:
            self.route = "?"

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self.timings[phase] = round((now - self.began) * 1000, 3)
        self.began = now

    def abort(self) -> None:
        """From the event loop: end the connection now; a read blocked in the thread returns at once."""
        with self.lock:
            self.aborted = True
            if not self.closed:
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def release(self) -> None:
        """From the thread, when the session is over: close the socket."""
        with self.lock:
            self.closed = True
            self.sock.close()

    # -- python-tds's transport interface
    def gettimeout(self) -> float | None:
        return None

    def settimeout(self, timeout: float | None) -> None:
        pass  # every read and write has the check's deadline

    def close(self) -> None:
        pass  # release() closes when the thread is done

    def sendall(self, data: bytes | bytearray, flags: int = 0) -> None:
        data = bytearray(data)
        if self.state == "prelogin" and data[:1] == bytes((_PRELOGIN,)):
            offset = _prelogin_option(data[8:], 1)  # ENCRYPTION: go-mssqldb's value, not python-tds's
            if offset is not None:
                data[8 + offset] = {_OFF: _ENC_OFF, _REQUIRED: _ENC_ON, _DISABLED: _ENC_NOT_SUP}[self.encryption]
            self.state = "negotiate"
        if self.tls is None:
            return self._send(data)
        self.tls.write(data)
        self._send(self.outgoing.read())
        if self.tls_login_only and data[0] == _LOGIN7 and data[1] & 1:
            self.tls = None  # ENCRYPT_OFF: only the login travels encrypted

    def recv_into(self, buffer, size: int = 0, flags: int = 0) -> int:
        size = size or len(buffer)
        if self.state == "negotiate":
            self.pending, self.state = self._negotiate(), "login"
        if self.pending:
            data, self.pending = self.pending[:size], self.pending[size:]
        else:
            data = self._tls_read(size) if self.tls is not None else self._recv(size)
        buffer[:len(data)] = data
        return len(data)

    def recv(self, size: int, flags: int = 0) -> bytes:
        buffer = bytearray(size)
        return bytes(buffer[:self.recv_into(buffer, size)])

    # -- encryption, as go-mssqldb negotiates it
    def _negotiate(self) -> bytes:
        """Read the server's PRELOGIN reply and run TLS if it asks for it; python-tds gets the reply with
        ENCRYPT_NOT_SUP, so that it never tries TLS itself."""
        payload = self._read_message()
        offset = _prelogin_option(payload, 1)
        if offset is None:
            raise _GoError("encrypt negotiation failed")
        reply = payload[offset]
        if self.encryption == _REQUIRED and reply in (_ENC_NOT_SUP, _ENC_OFF):
            raise _GoError("server does not support encryption")
        self.mark("prelogin")
        if reply != _ENC_NOT_SUP:
            self._handshake()
            self.tls_login_only = reply == _ENC_OFF
            self.mark("tls")
        payload[offset] = _ENC_NOT_SUP
        return _packets(0x04, bytes(payload), 1 << 16)

    def _handshake(self) -> None:
        """TLS with the handshake carried in PRELOGIN packets, records bare on the wire afterwards."""
        verify = self.verify or self.encryption == _DISABLED  # disabled, yet the server insists: Go verifies
        if verify and not self.server_name:
            raise _GoError("TLS Handshake failed: tls: either ServerName or InsecureSkipVerify must be specified "
                           "in the tls.Config")
        ctx = _tls_context(verify, self.ca_pem if self.encryption != _DISABLED else None)
        tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=self.server_name or None)
        try:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    if self.outgoing.pending:
                        self._send(_packets(_PRELOGIN, self.outgoing.read()))
                    self.incoming.write(self._read_message())
            if self.outgoing.pending:
                self._send(_packets(_PRELOGIN, self.outgoing.read()))
        except (ssl.SSLError, ssl.CertificateError) as exc:
            if self.outgoing.pending:  # the alert, so the server learns why
                try:
                    self._send(_packets(_PRELOGIN, self.outgoing.read()))
                except _GoError:
                    pass
            raise _GoError("TLS Handshake failed: " + _tls.tls_error_text(exc, self.server_name)) from None
        except _GoError as exc:
            raise _GoError(f"TLS Handshake failed: {exc}") from None
        self.tls = tls

    def _tls_read(self, size: int) -> bytes:
        while True:
            try:
                return self.tls.read(size)
            except ssl.SSLWantReadError:
                data = self._recv(1 << 16)
                if not data:
                    return b""
                self.incoming.write(data)
            except ssl.SSLZeroReturnError:
                return b""
            except ssl.SSLError as exc:
                raise _GoError(_tls.tls_error_text(exc, self.server_name)) from None

    def _read_message(self) -> bytearray:
        """One whole TDS message (all its packets) from the socket; the payload."""
        payload = bytearray()
        while True:
            head = self._read_exact(8)
            length = int.from_bytes(head[2:4], "big")
            if length < 8:
                raise _GoError("invalid packet size, it is shorter than header size")
            payload += self._read_exact(length - 8)
            if head[1] & 1:
                return payload

    def _read_exact(self, size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            data = self._recv(size - len(out))
            if not data:
                raise _GoError("unexpected EOF" if out else "EOF")
            out += data
        return bytes(out)

    # -- the socket, bounded by the deadline and the per-operation limit
    def _timeout(self, op: str) -> float:
        left = self.deadline - time.monotonic()
        if self.aborted or left <= 0:
            raise _GoError(f"{op} tcp {self.route}: i/o timeout")
        return min(left, self.op_timeout) if self.op_timeout else left

    def _send(self, data: bytes | bytearray) -> None:
        self.sock.settimeout(self._timeout("write"))
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise _GoError(f"write tcp {self.route}: i/o timeout") from None
        except OSError as exc:
            raise _GoError(f"write tcp {self.route}: write: {os_error_text(exc)}") from None

    def _recv(self, size: int) -> bytes:
        self.sock.settimeout(self._timeout("read"))
        try:
            if self.stamped:
                data, ancillary, _, _ = self.sock.recvmsg(size, _timing.ANCILLARY)
                stamp = _timing.rx_stamp(ancillary)
            else:
                data, stamp = self.sock.recv(size), 0
        except TimeoutError:
            raise _GoError(f"read tcp {self.route}: i/o timeout") from None
        except OSError as exc:
            raise _GoError(f"read tcp {self.route}: read: {os_error_text(exc)}") from None
        if self.aborted:
            raise _GoError(f"read tcp {self.route}: i/o timeout")
        self.last_rx = stamp or time.time_ns()
        return data
