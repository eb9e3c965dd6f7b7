"""`mongodb`: run one database command (default `{"ping": 1}`) and judge the reply as Peekaping's Go
worker does: `ok` must be 1, then an optional dotted path into the reply and an expected value.

Go's visible quirks are kept: numbers in the command go out as doubles, a user without `authSource`
authenticates against `admin`, the query string is re-encoded sorted, values print with Go's `%v`.
Its defect is not: the command's keys go out in the order written (Go's driver refuses multi-key map
commands), so `{"find": "c", "filter": {...}}` works.

pymongo's asyncio client does the talking, one client per check, closed before `check` returns.
ping_ms runs from just after the config is decoded to the command's reply (SRV lookup, server
selection, connection, TLS and authentication included; closing the client is not), as in Go.
Phases: `resolve` (mongodb+srv), `select`, `connect` (TCP, TLS, handshake, authentication), `query`.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import time
import warnings
from urllib.parse import quote_plus, unquote_to_bytes

import pymongo
from bson.binary import Binary
from bson.code import Code
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.datetime_ms import DatetimeMS
from bson.dbref import DBRef
from bson.errors import BSONError
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp
from pymongo import common, monitoring
from pymongo.errors import ConfigurationError, OperationFailure, PyMongoError, ServerSelectionTimeoutError

from executors import DOWN, UP, Monitor, Result
from executors._kit.gojson import decode_config, decode_json, go_char, reject_json_constant
from executors._kit.gotext import join_host_port, os_error_text, resolver_suffix

SCHEMA = {"connectionString": str, "command": str, "jsonPath": str, "expectedValue": str}  # Go's MongoDBConfig
FIELDS = {
    "connectionString": "mongodb:// or mongodb+srv:// URI naming the database the command runs on, e.g. "
                        "mongodb://user:pass@host:27017/admin (a user without authSource authenticates in admin)",
    "command": "the command as JSON object text, command name first (keys keep their order); numbers are sent "
               "as doubles; empty = {\"ping\": 1}",
    "jsonPath": "dotted path into the reply ($ = all of it, $.version, repl.primary; \\. escapes a dot); "
                "empty = only ok is checked",
    "expectedValue": "value expected at jsonPath, equal as text or as numbers (1, 1.0 and \"1\" match 1)",
}
SUMMARY = "run one database command on a MongoDB server; UP when it answers ok: 1 (and the value at jsonPath matches)"
EXAMPLES = {"mongodb": ({"connectionString": "mongodb://127.0.0.1:27017/admin", "command": "{\"ping\": 1}",
                         "jsonPath": "$.ok", "expectedValue": "1"}, "UP",
                        "when a MongoDB server listens on 127.0.0.1:27017")}

# Dates as integer milliseconds (Go's primitive.DateTime prints so); undecodable text replaced, not fatal.
_REPLY_CODEC = CodecOptions(datetime_conversion=DatetimeConversion.DATETIME_MS, unicode_decode_error_handler="replace")
_URI_WORDS = "failed to connect to MongoDB: error parsing uri: "
_COMMAND_WORDS = "failed to execute MongoDB command: "


async def check(monitor: Monitor, proxy: dict | None, budget: float) -> Result:
    cfg = decode_config(monitor.config, SCHEMA, "MongoDBConfig")
    start = time.time_ns()
    deadline = time.monotonic() + max(budget, 0.0)
    command = {"ping": 1}  # Go's bson.M{"ping": 1}, an int32; a new dict each time, as pymongo adds lsid to it
    if cfg["command"]:
        try:
            command = parse_command(cfg["command"])
        except ValueError as exc:
            return Result(DOWN, f"invalid MongoDB command JSON: {exc}", start, time.time_ns())
    probe = _Probe(next(iter(command), ""))
    try:
        reply = await _run(cfg["connectionString"], command, monitor.timeout, deadline, probe)
    except _Failure as exc:
        message = f"MongoDB command failed: {exc.words}{_redact(exc.driver_text, cfg['connectionString'])}"
        return Result(DOWN, message, start, probe.end_ns or time.time_ns(), timings=probe.timings)
    status, message = judge(reply, cfg["jsonPath"], cfg["expectedValue"])
    return Result(status, message, start, probe.end_ns or time.time_ns(), timings=probe.timings)


def judge(reply: dict, path: str, expected: str) -> tuple[int, str]:
    """The Go executor's verdict on a command reply."""
    if "ok" not in reply or not loose_equal(reply["ok"], 1):
        return DOWN, "MongoDB command failed"
    if not path:
        return UP, "Command executed successfully"
    try:
        value = evaluate_path(reply, path)
    except LookupError as exc:
        return DOWN, f"JSON path evaluation failed: {exc.args[0]}"
    if value is None:
        return DOWN, "Queried value not found"
    if expected:
        if loose_equal(value, expected):
            return UP, "Command executed successfully and expected value was found"
        return DOWN, f"Query executed, but value is not equal to expected value, value was: [{go_value(value)}]"
    return UP, "Command executed successfully and the jsonata expression produces a result"


# --------------------------------------------------------------------------------------------------
# The command: JSON object text, read as Go's json.Unmarshal into a bson.M reads it

_END_FINDER = json.JSONDecoder(parse_constant=reject_json_constant)


def parse_command(text: str) -> dict:
    """The command document: keys in the order written, every number a float. ValueError in Go's words."""
    value = decode_json(text)  # Go's syntax errors, depth limit and U+FFFD for lone surrogates
    stripped = text.lstrip(" \t\r\n")
    try:
        end = _END_FINDER.raw_decode(stripped)[1]
    except RecursionError:  # deeper than Python's stack allows: decode_json read it all, so it is the end
        end = len(stripped)
    rest = stripped[end:].lstrip(" \t\r\n")
    if rest:  # json.Unmarshal refuses anything after the value
        raise ValueError(f"invalid character {go_char(rest[0])} after top-level value")
    if value is None:
        return {}
    if not isinstance(value, dict):
        kind = "bool" if isinstance(value, bool) else {str: "string", list: "array"}.get(type(value), "number")
        raise ValueError(f"json: cannot unmarshal {kind} into Go value of type primitive.M")
    return _as_doubles(value)


def _as_doubles(value):
    """JSON numbers as Go's interface{} holds them: float64 (an out-of-range literal is Go's error)."""
    if isinstance(value, dict):
        return {key: _as_doubles(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_doubles(item) for item in value]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if math.isinf(float(value)):
        raise ValueError(f"json: cannot unmarshal number {getattr(value, 'literal', value)} into Go value of "
                         "type float64")
    return float(value)


# --------------------------------------------------------------------------------------------------
# The reply: path, comparison and Go's %v of what the Go driver decodes (bson.M, primitive.A, ...)

def evaluate_path(document: dict, path: str):
    """Descend through embedded documents along a dotted path; LookupError with Go's text."""
    if path in ("", "$"):
        return document
    current = document
    for key in _split_path(path.removeprefix("$").removeprefix(".")):
        if isinstance(current, DBRef):  # pymongo's reading of {$ref, $id}; Go sees a plain document
            current = dict(current.as_doc())
        if not isinstance(current, dict):
            raise LookupError(f"cannot access field '{key}' on non-object type")
        if key not in current:
            raise LookupError(f"field '{key}' not found")
        current = current[key]
    return current


def _split_path(path: str) -> list[str]:
    """Split on dots; a backslash takes the next character as is; empty segments are dropped."""
    parts, current, escaped = [], "", False
    for ch in path:
        if escaped or ch not in "\\.":
            current, escaped = current + ch, False
        elif ch == "\\":
            escaped = True
        else:
            parts.append(current)
            current = ""
    return [part for part in [*parts, current] if part]


def loose_equal(actual, expected) -> bool:
    """Go's isValueEqual: the same string, the same %v text, or equal as ParseFloat numbers."""
    if type(actual) is str and type(expected) is str and actual == expected:
        return True
    actual_text, expected_text = go_value(actual), go_value(expected)
    if actual_text == expected_text:
        return True
    a, b = _parse_float(actual_text), _parse_float(expected_text)
    return a is not None and b is not None and a == b


_GO_FLOAT = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
                       r"|(0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)[pP][+-]?\d+)"
                       r"|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?|[nN][aA][nN])\Z")


def _parse_float(text: str) -> float | None:
    """strconv.ParseFloat(text, 64); None where Go gives an error (syntax, or out of range)."""
    match = _GO_FLOAT.match(text)
    if not match:
        return None
    try:
        value = float.fromhex(text) if match.group(1) else float(text)
    except OverflowError:
        return None
    return None if math.isinf(value) and "n" not in text.lower() else value


def _go_float(value: float) -> str:
    """Go's %v of a float64: shortest round-trip digits, exponent form below 1e-4 and from 1e+06."""
    if math.isnan(value) or math.isinf(value):
        return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    mantissa, _, exponent = repr(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    point = int(exponent or 0) + len(whole) - (len(whole + fraction) - len(digits))  # digits before the point
    digits, sign = digits.rstrip("0") or "0", "-" if value < 0 else ""
    if not -4 <= point - 1 < 6:
        tail = f".{digits[1:]}" if len(digits) > 1 else ""
        return f"{sign}{digits[0]}{tail}e{'-' if point < 1 else '+'}{abs(point - 1):02d}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return f"{sign}{digits[:point]}.{digits[point:]}"


_REGEX_FLAGS = ((re.IGNORECASE, "i"), (re.LOCALE, "l"), (re.MULTILINE, "m"), (re.DOTALL, "s"), (re.UNICODE, "u"),
                (re.VERBOSE, "x"))


def go_value(value) -> str:
    """Go's %v of a value the Go driver decoded from BSON into a bson.M."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, Code):
        if value.scope is None:
            return str.__str__(value)
        return f'{{"code": "{str.__str__(value)}", "scope": {go_value(dict(value.scope))}}}'
    if isinstance(value, str):
        return value
    if isinstance(value, DBRef):
        value = dict(value.as_doc())
    if isinstance(value, dict):
        return "map[" + " ".join(f"{key}:{go_value(value[key])}" for key in sorted(value)) + "]"
    if isinstance(value, list):
        return "[" + " ".join(go_value(item) for item in value) + "]"
    if isinstance(value, ObjectId):
        return f'ObjectID("{value}")'
    if isinstance(value, DatetimeMS):
        return str(int(value))
    if isinstance(value, Timestamp):
        return f"{{{value.time} {value.inc}}}"
    if isinstance(value, (bytes, Binary)):
        subtype = value.subtype if isinstance(value, Binary) else 0
        return f"{{{subtype} [{' '.join(str(b) for b in bytes(value))}]}}"
    if isinstance(value, Regex):
        pattern = value.pattern.decode("utf-8", "replace") if isinstance(value.pattern, bytes) else value.pattern
        options = "".join(letter for flag, letter in _REGEX_FLAGS if value.flags & flag)
        return f'{{"pattern": "{pattern}", "options": "{options}"}}'
    if type(value).__name__ in ("MinKey", "MaxKey"):
        return "{}"
    return str(value)  # Decimal128


# --------------------------------------------------------------------------------------------------
# Running the command

class _Failure(Exception):
    """After `MongoDB command failed: `: the Go executor's words, then a driver's or server's text."""

    def __init__(self, words: str, driver_text: str = "") -> None:
        super().__init__(words, driver_text)
        self.words, self.driver_text = words, driver_text


class _Probe(monitoring.CommandListener, monitoring.ConnectionPoolListener):
    """pymongo's monitoring events of one client: phase timings and the moment the reply arrived."""

    def __init__(self, command_name: str) -> None:
        self.command_name = command_name  # events of other commands (endSessions at close) are not ours
        self.timings: dict[str, float] = {}
        self.end_ns = 0
        self.command_started = False
        self.since = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.timings[phase] = round((now - self.since) * 1000, 3)
        self.since = now

    def started(self, event) -> None:
        self.command_started = self.command_started or event.command_name == self.command_name

    def succeeded(self, event) -> None:
        if event.command_name == self.command_name and not self.end_ns:
            self.end_ns = time.time_ns()
            self.timings["query"] = event.duration_micros / 1000

    failed = succeeded

    def connection_check_out_started(self, event) -> None:
        if "select" not in self.timings:
            self.lap("select")

    def connection_checked_out(self, event) -> None:
        if "connect" not in self.timings and event.duration is not None:
            self.timings["connect"] = round(event.duration * 1000, 3)

    def _ignore(self, event) -> None:
        pass

    pool_created = pool_ready = pool_cleared = pool_closed = connection_created = connection_ready = _ignore
    connection_closed = connection_check_out_failed = connection_checked_in = _ignore


async def _run(target: str, command: dict, timeout: int, deadline: float, probe: _Probe) -> dict:
    """Go's runMongoDBCommand: enhance the URI, connect, find the database, run the command."""
    url, query = _enhance(target)
    close_reserve = min(0.25, max(deadline - time.monotonic(), 0.0) * 0.1)
    work_deadline = deadline - close_reserve
    try:  # the URI's own limit, when lower than the budget, ends server selection first
        selection_limit = float(_option(query, "serverSelectionTimeoutMS")) / 1000
    except ValueError:
        selection_limit = 0.0
    remaining = max(work_deadline - time.monotonic(), 0.001)
    client = _client(url, query, probe, min(float(timeout), remaining),
                     min(remaining, selection_limit) if selection_limit > 0 else remaining)
    selection_word = "server selection timeout" if 0 < selection_limit < remaining else "context deadline exceeded"
    srv_pending = url.scheme == "mongodb+srv"
    try:
        async with asyncio.timeout(max(work_deadline - time.monotonic(), 0.0)):
            if srv_pending:
                probe.since = time.perf_counter()
                await client.aconnect()  # the SRV and TXT lookups, which Go's driver does while parsing the URI
                probe.lap("resolve")
                srv_pending = False
            database = url.path.removeprefix("/").split("?", 1)[0]
            if not database:
                raise _Failure("failed to extract database name: database name not found in connection string")
            if not command:  # pymongo cannot send an empty document (Go sends it and the server refuses it)
                raise _Failure(_COMMAND_WORDS + "the command document is empty")
            probe.since = time.perf_counter()
            return await client[database].command(command, codec_options=_REPLY_CODEC)
    except TimeoutError:
        if srv_pending:
            raise _Failure(_URI_WORDS, _srv_error(url, None)) from None
        if probe.command_started:
            raise _Failure(_COMMAND_WORDS, "context deadline exceeded") from None
        raise _Failure(_COMMAND_WORDS, _selection_error(client, selection_word)) from None
    except ConfigurationError as exc:
        raise _Failure(*((_URI_WORDS, _srv_error(url, exc)) if srv_pending else (_COMMAND_WORDS, _clean(exc)))) \
            from None
    except ServerSelectionTimeoutError:
        raise _Failure(_COMMAND_WORDS, _selection_error(client, selection_word)) from None
    except OperationFailure as exc:
        if probe.command_started:
            raise _Failure(_COMMAND_WORDS, _server_error(exc)) from None
        mechanism = _option(query, "authMechanism") or "SCRAM-SHA-256"  # Go's choice for MongoDB 4.0 and later
        raise _Failure(_COMMAND_WORDS + "connection() error occurred during connection handshake: auth error: "
                       f'unable to authenticate using mechanism "{mechanism}": ', _server_error(exc)) from None
    except (PyMongoError, BSONError, OSError, ValueError, TypeError) as exc:  # bad database names and keys too
        raise _Failure(_COMMAND_WORDS, _clean(exc)) from None
    finally:
        await _close(client, deadline)


def _enhance(target: str) -> tuple[GoURL, dict[bytes, list[bytes]]]:
    """Go's enhanceConnectionString (authSource=admin for a user without one) and the checks that Go's
    driver then makes of the enhanced string before connecting."""
    try:
        url = GoURL.parse(target)
    except ValueError as exc:
        raise _Failure(f"failed to enhance connection string: invalid connection string format: {exc}") from None
    query = url.query_values()
    if url.username and not query.get(b"authSource", [b""])[0]:
        query[b"authSource"] = [b"admin"]
    if url.scheme not in ("mongodb", "mongodb+srv") or not url.has_authority:
        raise _Failure(_URI_WORDS + 'scheme must be "mongodb" or "mongodb+srv"')
    if not url.raw_path and query:
        raise _Failure(_URI_WORDS + "must have a / before the query ?")
    return url, query


def _client(url: GoURL, query: dict, probe: _Probe, socket_timeout: float, selection: float):
    """An AsyncMongoClient for one check: timeouts set as Go sets them, the credentials given apart from
    the URI (so no driver text can echo them), polling monitors (no streaming or RTT connections)."""
    encoded = "&".join(f"{quote_plus(key)}={quote_plus(value)}" for key in sorted(query) for value in query[key])
    socket_ms = max(socket_timeout, 0.001) * 1000
    options = {"connectTimeoutMS": socket_ms, "socketTimeoutMS": socket_ms, "serverMonitoringMode": "poll",
               "serverSelectionTimeoutMS": max(selection, 0.001) * 1000, "event_listeners": [probe]}
    if url.username is not None:
        options["username"] = url.username
        if url.password is not None:
            options["password"] = url.password
    try:
        for key, values in query.items():  # a known option's bad value is an error, as in Go
            name = key.decode("utf-8", "replace")
            validator = common.URI_OPTIONS_VALIDATOR_MAP.get(name.lower())
            if validator:
                validator(name, values[-1].decode("utf-8", "replace"))
        with warnings.catch_warnings():  # unknown options are ignored, as Go's driver does
            warnings.simplefilter("ignore")
            return pymongo.AsyncMongoClient(f"{url.scheme}://{url.raw_host}/?{encoded}", **options)
    except (PyMongoError, ValueError, TypeError) as exc:
        raise _Failure(_URI_WORDS, _clean(exc)) from None
    except OSError as exc:  # a TLS file that cannot be read (Go's driver loads them in ApplyURI too)
        raise _Failure("failed to connect to MongoDB: ", f"open {exc.filename}: {os_error_text(exc)}") from None


async def _close(client, deadline: float) -> None:
    """Close the client: endSessions within what is left of the budget, then pools and monitors."""
    try:
        async with asyncio.timeout(max(deadline - time.monotonic(), 0.05)):
            await client.close()
    except BaseException as exc:
        # The sessions left the client before endSessions was sent, so a second close only closes
        # sockets and stops monitor tasks, without a network round trip.
        cancelled = isinstance(exc, asyncio.CancelledError)
        try:
            async with asyncio.timeout(1.0):
                await client.close()
        except asyncio.CancelledError:
            cancelled = True
        except BaseException:  # noqa: BLE001 (nothing is left to do for a client that will not close)
            pass
        if cancelled:
            raise asyncio.CancelledError from None


def _option(query: dict, name: str) -> str:
    """The last value of a URI option (names ignore case, as in the drivers), or ''."""
    found = [values[-1] for key, values in query.items() if key.lower() == name.lower().encode()]
    return found[-1].decode("utf-8", "replace") if found else ""


# --------------------------------------------------------------------------------------------------
# Error texts in the Go driver's shape

def _server_error(exc: OperationFailure) -> str:
    """Go's CommandError: `(CodeName) message`."""
    details = exc.details or {}
    message = details.get("errmsg") or _clean(exc)
    return f"({details['codeName']}) {message}" if details.get("codeName") else message


def _selection_error(client, reason: str) -> str:
    """`server selection error: <reason>, current topology: { Type: ..., Servers: [{ Addr: ..., ... }, ] }`."""
    description = client.topology_description
    servers = ""
    for server in description.server_descriptions().values():
        host, port = server.address
        kind = "RSMember" if server.server_type_name == "RSOther" else server.server_type_name
        text = f"Addr: {join_host_port(host, port)}, Type: {kind}"
        if server.round_trip_time is not None:
            text += f", Average RTT: {int(server.round_trip_time * 1e9)}"
        if server.error is not None:
            text += f", Last error: {_dial_error(server.error, host, port)}"
        servers += "{ " + text + " }, "
    return f"server selection error: {reason}, current topology: {{ Type: {description.topology_type_name}, " \
           f"Servers: [{servers}] }}"


def _dial_error(exc: BaseException, host: str, port: int) -> str:
    """A monitor's connection error as Go's dialer words it (pymongo keeps only the text of the cause)."""
    address = join_host_port(host, port)
    text = _clean(exc).removeprefix(f"{host}:{port}: ")
    errno = re.match(r"\[Errno (-?\d+)\]", text)
    if type(exc).__name__ == "NetworkTimeout" or text.endswith("timed out"):
        return f"dial tcp {address}: i/o timeout"
    if errno and int(errno.group(1)) < 0:  # getaddrinfo's EAI_* codes
        return f"dial tcp: lookup {host}{resolver_suffix()}: no such host"
    if errno:
        return f"dial tcp {address}: connect: {os.strerror(int(errno.group(1))).lower()}"
    verify = re.search(r"certificate verify failed: (.*?)(?: \(_ssl\.c:\d+\))?$", text)
    if verify:  # OpenSSL's reasons for an unknown issuer are one reason in crypto/x509
        reason = verify.group(1)
        if "issuer" in reason or "self-signed" in reason or "self signed" in reason:
            reason = "certificate signed by unknown authority"
        return f"tls: failed to verify certificate: x509: {reason}"
    return text


def _srv_error(url: GoURL, exc: BaseException | None) -> str:
    """The SRV lookup's failure as Go's driver reports it (None: it ran out of time)."""
    import dns.asyncresolver
    import dns.resolver

    cause = exc.__cause__ if exc is not None else None
    try:
        resolver = dns.asyncresolver.get_default_resolver()
        server = f" on {join_host_port(str(resolver.nameservers[0]), resolver.port)}"
    except Exception:  # no resolv.conf
        server = ""
    if exc is None or isinstance(cause, dns.resolver.LifetimeTimeout):
        reason = "i/o timeout"
    elif isinstance(cause, (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer)):
        reason = "no such host"
    elif isinstance(cause, dns.resolver.NoNameservers):
        reason = "server misbehaving"
    else:
        return _clean(exc)
    return ("see https://pkg.go.dev/go.mongodb.org/mongo-driver/mongo#hdr-Potential_DNS_Issues: "
            f"lookup _mongodb._tcp.{url.host_name}{server}: {reason}")


def _clean(exc: BaseException) -> str:
    """A pymongo error's text without its timeout footnote and raw reply."""
    return re.sub(r" \(configured timeouts: [^)]*\)", "", str(exc)).split(", full error:", 1)[0]


# --------------------------------------------------------------------------------------------------
# Secrets: the password and secret-looking options of the connection string never reach a result

_SECRET_OPTION = re.compile(r"password|secret|token|key", re.IGNORECASE)
_OPTION_PAIR = re.compile(r"([?&;])([^=&;#]*)=([^&;#]*)")  # separator, name, value
_USERINFO = re.compile(r"[^:/?#]*://(.*)@", re.DOTALL)  # up to the last @: a password may hold / ? # @


def _redact(text: str, target: str) -> str:
    """`text` with every form of the connection string's secrets replaced by xxxxx."""
    found = set()
    url = GoURL()
    try:
        url._parse(target)
        found.update((url.raw_password, url.password or ""))
    except ValueError:
        userinfo = _USERINFO.match(target)
        if userinfo and ":" in userinfo[1]:
            found.add(userinfo[1].split(":", 1)[1])
    for match in _OPTION_PAIR.finditer(target):
        if _SECRET_OPTION.search(match[2]):
            found.add(match[3])
    for secret in list(found):
        found.add(unquote_to_bytes(secret.replace("+", " ")).decode("utf-8", "replace"))
    for secret in sorted(filter(None, found), key=len, reverse=True):
        text = text.replace(secret, "xxxxx")
    return text


def _redact_url(raw: str) -> str:
    """`raw` with its password and the values of secret-looking options replaced by xxxxx."""
    userinfo = _USERINFO.match(raw)
    if userinfo and ":" in userinfo[1]:
        raw = f"{raw[:userinfo.start(1)]}{userinfo[1].split(':', 1)[0]}:xxxxx{raw[userinfo.end(1):]}"
    return _OPTION_PAIR.sub(lambda m: f"{m[1]}{m[2]}=xxxxx" if _SECRET_OPTION.search(m[2]) else m[0], raw)


# --------------------------------------------------------------------------------------------------
# Go's net/url, as far as the Go executor leans on it

_USERINFO_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._:~!$&'()*+,;=%")
_HOST_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~!$&'()*+,;=:[]<>\"%")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


class GoURL:
    """url.Parse's reading of a connection string: scheme, user info, host, path and raw query."""

    scheme = raw_host = host_name = raw_path = path = raw_query = raw_password = ""
    username: str | None = None
    password: str | None = None
    has_authority = False

    @classmethod
    def parse(cls, raw: str) -> GoURL:
        """ValueError with Go's `parse "<url>": <reason>`, the password masked (Go prints it)."""
        url = cls()
        try:
            url._parse(raw)
        except ValueError as exc:
            raise ValueError(f"parse {_go_quote(_redact_url(raw))}: {exc}") from None
        return url

    def _parse(self, raw: str) -> None:
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in raw):
            raise ValueError("net/url: invalid control character in URL")
        rest = raw.split("#", 1)[0]
        if rest.startswith(":"):
            raise ValueError("missing protocol scheme")
        scheme = re.match(r"([A-Za-z][A-Za-z0-9+.\-]*):", rest)
        if scheme:
            self.scheme, rest = scheme[1].lower(), rest[scheme.end():]
        if rest.endswith("?") and rest.count("?") == 1:
            rest = rest[:-1]
        else:
            rest, _, self.raw_query = rest.partition("?")
        if not rest.startswith("/"):
            if self.scheme:
                return  # opaque: no user, no host, no path
            if ":" in rest.split("/", 1)[0]:
                raise ValueError("first path segment in URL cannot contain colon")
        if rest.startswith("//") and (self.scheme or not rest.startswith("///")):
            self.has_authority = True
            authority, slash, path = rest[2:].partition("/")
            rest = slash + path
            self._parse_authority(authority)
        self.raw_path, self.path = rest, _unescape(rest)

    def _parse_authority(self, authority: str) -> None:
        userinfo, at, host = authority.rpartition("@")
        self.raw_host = host
        if host.startswith("["):
            if "]" not in host:
                raise ValueError("missing ']' in host")
            port = host[host.rfind("]") + 1:]
        else:
            port = host[host.rfind(":"):] if ":" in host else ""
        if port and not re.fullmatch(r":[0-9]*", port):
            raise ValueError(f"invalid port {_go_quote(port)} after host")
        for ch in host:
            if ch.isascii() and ch not in _HOST_OK:
                raise ValueError(f"invalid character {_go_quote(ch)} in host name")
        _unescape(host)
        self.host_name = host if host.startswith("[") else host.split(",", 1)[0].rsplit(":", 1)[0]
        if not at:
            return
        if not all(ch in _USERINFO_OK for ch in userinfo):
            raise ValueError("net/url: invalid userinfo")
        user, colon, password = userinfo.partition(":")
        self.username = _unescape(user)
        if colon:
            self.raw_password, self.password = password, _unescape(password)

    def query_values(self) -> dict[bytes, list[bytes]]:
        """url.Values from the raw query as Go's ParseQuery reads it (bad pairs are dropped)."""
        values: dict[bytes, list[bytes]] = {}
        for pair in self.raw_query.split("&"):
            key, _, value = pair.partition("=")
            if pair and ";" not in pair and not _BAD_ESCAPE.search(pair):
                values.setdefault(unquote_to_bytes(key.replace("+", " ")), []).append(
                    unquote_to_bytes(value.replace("+", " ")))
        return values


def _unescape(text: str) -> str:
    bad = _BAD_ESCAPE.search(text)
    if bad:
        raise ValueError(f"invalid URL escape {_go_quote(text[bad.start():bad.start() + 3])}")
    return unquote_to_bytes(text).decode("utf-8", "replace")


def _go_quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)
