"""Check executors: one module per monitor type, each exposing `async def check(monitor, proxy, budget)`.

`check` returns a `Result` (or None when there is nothing to report, as `push` does for a fresh beat)
and must finish within `budget` seconds. A config the executor cannot decode raises `ConfigError`;
the caller turns that into the DOWN result Go reports.
"""

from __future__ import annotations

import functools
import json
import re
import time
from datetime import datetime, timezone
from dataclasses import dataclass, field
from typing import Any

VERSION = "0.1.0"  # the worker's version, also sent in User-Agent headers

DOWN, UP, PENDING, MAINTENANCE = 0, 1, 2, 3


@dataclass(slots=True)
class Monitor:
    """The monitor fields of a health-check payload that executors may read."""
    id: str = ""
    name: str = ""
    type: str = ""
    interval: int = 0
    timeout: int = 0
    max_retries: int = 0
    retry_interval: int = 0
    resend_interval: int = 0
    config: str = ""
    last_heartbeat: dict | None = None


@dataclass(slots=True)
class Result:
    status: int
    message: str
    start_ns: int
    end_ns: int
    tls_info: dict | None = None
    timings: dict[str, float] = field(default_factory=dict)  # phase -> milliseconds (extension)

    @property
    def ping_ms(self) -> int:
        return max(0, (self.end_ns - self.start_ns) // 1_000_000)


def instant(status: int, message: str) -> Result:
    """A result decided without touching the target: start and end are the same clock read."""
    now = time.time_ns()
    return Result(status, message, now, now)


class ConfigError(Exception):
    """The monitor config cannot be decoded; str(exc) is the full message for the DOWN result."""


# --------------------------------------------------------------------------------------------------
# Go encoding/json semantics for decoding configs and payloads into a "struct".

_GO_TYPES = {str: "string", int: "int", float: "float64", bool: "bool", list: "[]string", dict: "map"}


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return f"number {value}" if not isinstance(value, float) or value != int(value) else "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), "value")


_RUNE_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
                 "\\": "\\\\"}


def reject_json_constant(name: str) -> None:
    """Python's json accepts NaN and Infinity; Go's does not."""
    raise json.JSONDecodeError("Expecting value", name, 0)


def go_char(ch: str) -> str:
    """A character as Go's %q prints a rune inside its JSON syntax errors."""
    if ch == "'":
        return "'\\''"
    if ch == '"':
        return "'\"'"
    if not ch.isascii():
        return f"'\\x{ch.encode('utf-8', 'surrogateescape')[0]:02x}'"
    if ch in _RUNE_ESCAPES:
        return f"'{_RUNE_ESCAPES[ch]}'"
    return f"'{ch}'" if ch.isprintable() else f"'\\x{ord(ch):02x}'"


def _innermost(text: str, pos: int) -> str:
    stack, in_string, escaped = [], False, False
    for ch in text[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append(ch)
        elif ch in "}]" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def go_json_error(text: str, exc: ValueError) -> str:
    """encoding/json's syntax error text for what Python's decoder reported."""
    if not isinstance(exc, json.JSONDecodeError):
        return str(exc)
    msg, pos = exc.msg, exc.pos
    if msg.startswith("Unterminated string") or pos >= len(text):
        return "unexpected end of JSON input"
    c = go_char(text[pos])
    if msg == "Expecting value":
        return f"invalid character {c} looking for beginning of value"
    if msg.startswith("Expecting property name"):
        return f"invalid character {c} looking for beginning of object key string"
    if msg == "Expecting ':' delimiter":
        return f"invalid character {c} after object key"
    if msg == "Expecting ',' delimiter":
        where = "object key:value pair" if _innermost(text, pos) == "{" else "array element"
        return f"invalid character {c} after {where}"
    if msg == "Extra data":
        return f"invalid character {c} after top-level value"
    if msg.startswith("Invalid control character"):
        return f"invalid character {c} in string literal"
    if msg.startswith("Invalid \\escape") or msg.startswith("Invalid \\u"):
        return f"invalid character {c} in string escape code"
    return msg


_DECODER = json.JSONDecoder(parse_constant=reject_json_constant)


def decode_struct(document: str | bytes | Any, schema: dict[str, type], struct: str, *, strict: bool,
                  parsed: bool = False) -> dict[str, Any]:
    """Decode a JSON object the way Go's encoding/json fills a struct.

    Keys match case-insensitively (an exact match wins), `null` leaves the zero value, only the first
    JSON value of the text is read, and with `strict` an unknown key is an error (DisallowUnknownFields).
    Raises ValueError with a Go-shaped message.
    """
    if parsed:
        value = document
    else:
        text = document.decode("utf-8", "replace") if isinstance(document, (bytes, bytearray)) else document
        text = text.lstrip(" \t\r\n")
        if not text:
            raise ValueError("EOF")
        try:
            value, _ = _DECODER.raw_decode(text)
        except json.JSONDecodeError as exc:
            if exc.doc in ("NaN", "Infinity"):
                raise ValueError(f"invalid character {go_char(exc.doc[0])} looking for beginning of value") from None
            if exc.doc == "-Infinity":
                raise ValueError("invalid character 'I' in numeric literal") from None
            raise ValueError(go_json_error(text, exc)) from None
    out: dict[str, Any] = {name: _zero(kind) for name, kind in schema.items()}
    if value is None:
        return out
    if not isinstance(value, dict):
        raise ValueError(f"json: cannot unmarshal {_json_kind(value).split()[0]} into Go value of type {struct}")
    folded = _folded(tuple(schema))
    for key, item in value.items():
        name = key if key in schema else folded.get(key.lower())
        if name is None:
            if strict:
                raise ValueError(f'json: unknown field "{key}"')
            continue
        if item is None:
            continue
        out[name] = _convert(item, schema[name], f"{struct}.{name}")
    return out


@functools.lru_cache(maxsize=256)
def _folded(names: tuple[str, ...]) -> dict[str, str]:
    return {name.lower(): name for name in names}


def _zero(kind: type) -> Any:
    return {str: "", int: 0, float: 0.0, bool: False, list: [], dict: None}[kind]


_ACCEPTS = {
    str: lambda v: type(v) is str,
    int: lambda v: type(v) is int,
    float: lambda v: type(v) in (int, float),
    bool: lambda v: type(v) is bool,
    list: lambda v: type(v) is list and all(type(x) is str or x is None for x in v),
    dict: lambda v: type(v) is dict,
}


def _convert(item: Any, kind: type, where: str) -> Any:
    if not _ACCEPTS[kind](item):
        raise ValueError(f"json: cannot unmarshal {_json_kind(item)} into Go struct field {where} "
                         f"of type {_GO_TYPES[kind]}")
    if kind is list:
        return ["" if x is None else x for x in item]
    if kind is float:
        return float(item)
    return item


def decode_config(config: str, schema: dict[str, type], struct: str) -> dict[str, Any]:
    """Strict config decoding; failures raise ConfigError('failed to parse config: ...')."""
    try:
        return decode_struct(config, schema, struct, strict=True)
    except ValueError as exc:
        raise ConfigError(f"failed to parse config: {exc}") from None


# --------------------------------------------------------------------------------------------------
# Go time.Time JSON form: RFC 3339 with up to nine fraction digits, trailing zeros dropped.

_RFC3339 = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$")


def parse_rfc3339(text: str) -> float:
    """Unix seconds of an RFC 3339 time with 0-9 fraction digits and any offset."""
    m = _RFC3339.match(text)
    if not m:
        raise ValueError(f'parsing time "{text}" as RFC 3339: cannot parse')
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    base = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc).timestamp()
    frac = int((m.group(7) or "0").ljust(9, "0")) / 1e9
    zone = m.group(8)
    offset = 0 if zone in ("Z", "z") else (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60) * (1 if zone[0] == "+" else -1)
    return base + frac - offset


def format_rfc3339(unix_ns: int) -> str:
    """Go's time.Time MarshalJSON form for a UTC instant: `2025-06-01T12:00:00.1301234Z`."""
    seconds, frac = divmod(unix_ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"
