"""Go encoding/json semantics for decoding configs and payloads into a "struct": strict fields,
Go's type names and error texts, number literals kept as written."""

from __future__ import annotations

import functools
import itertools
import json
import math
import operator
import re
import sys
from typing import Any

from executors import ConfigError

_GO_TYPES = {str: "string", int: "int", float: "float64", bool: "bool", list: "[]string", dict: "map"}
GO_INT_MIN, GO_INT_MAX = -(1 << 63), (1 << 63) - 1  # Go's int is 64-bit on the platforms Peekaping ships
MAX_DEPTH = 10000  # encoding/json's maxNestingDepth


class GoNumber(float):
    """A JSON number that keeps its literal text, as Go's error messages quote it (`number 1e999`).

    Every JSON number with a fraction or exponent decodes to this, and so does an integer literal
    outside Go's int range; the float value is what Go's ParseFloat gives (inf when out of range).
    """
    __slots__ = ("literal",)

    def __new__(cls, literal: str) -> "GoNumber":
        number = super().__new__(cls, literal)
        number.literal = literal
        return number


def _parse_int(literal: str) -> int | GoNumber:
    if len(literal) <= 18:  # always within int64
        return int(literal)
    if len(literal) <= 20:
        value = int(literal)
        if GO_INT_MIN <= value <= GO_INT_MAX:
            return value
    return GoNumber(literal)  # also avoids int()'s 4,300-digit limit (ValueError)


def _literal(number: int | float) -> str:
    return number.literal if isinstance(number, GoNumber) else repr(number)


def _json_kind(value: Any, numeric_target: bool = False) -> str:
    """The `Value` part of Go's UnmarshalTypeError: a number shows its literal only when the target is
    numeric (the literal did not fit), as in encoding/json's literalStore."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return f"number {_literal(value)}" if numeric_target else "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), "value")


_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # `\uD800`-`\uDFFF` in JSON text


def _may_hold_surrogates(text: str) -> bool:
    """Whether decoding `text` can give lone surrogates: it has a surrogate escape, or a surrogate
    code point already (argv bytes that were not UTF-8 arrive as surrogateescape code points)."""
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        return True
    return not text.isascii() and _SURROGATE.search(text) is not None


def clean_text(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD, as Go does with invalid UTF-8: the result
    always encodes as UTF-8. Returns `text` itself when it is already clean."""
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


def _clean_value(value: Any) -> Any:
    """Replace lone surrogates in every string and key of a decoded JSON value (iteratively: values
    may be nested 10,000 deep). Lists are changed in place, dicts are rebuilt for their keys."""
    if type(value) is str:
        return clean_text(value)
    if type(value) is dict:
        value = {clean_text(k): v for k, v in value.items()}
    elif type(value) is not list:
        return value
    pending = [value]
    while pending:
        container = pending.pop()
        pairs = enumerate(container) if type(container) is list else container.items()
        for key, item in pairs:
            kind = type(item)
            if kind is str:
                if _SURROGATE.search(item):
                    container[key] = _SURROGATE.sub("\ufffd", item)
            elif kind is dict:
                item = container[key] = {clean_text(k): v for k, v in item.items()}
                pending.append(item)
            elif kind is list:
                pending.append(item)
    return value


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
        try:  # a surrogateescape code point stands for the byte Go saw
            first = ch.encode("utf-8", "surrogateescape")[0]
        except UnicodeEncodeError:
            first = ch.encode("utf-8", "surrogatepass")[0]
        return f"'\\x{first:02x}'"
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


def string_map(text: str) -> dict[str, str]:
    """json.Unmarshal into map[string]string (a monitor's `headers`); ValueError with Go's text."""
    try:
        value = _clean_value(json.loads(text, parse_constant=reject_json_constant))
    except RecursionError:
        raise ValueError("exceeded max depth") from None
    except json.JSONDecodeError as exc:
        if exc.doc in ("NaN", "Infinity", "-Infinity"):  # Python accepts these words, Go does not
            start = text.find(exc.doc)
            raise ValueError(f"invalid character {go_char(text[start])} looking for beginning of value") from None
        raise ValueError(go_json_error(text, exc)) from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"json: cannot unmarshal {_json_kind(value)} into Go value of type map[string]string")
    out: dict[str, str] = {}
    for key, item in value.items():
        if item is None:
            out[key] = ""
        elif isinstance(item, str):
            out[key] = item
        else:
            raise ValueError(f"json: cannot unmarshal {_json_kind(item)} into Go value of type string")
    return out


_DECODER = json.JSONDecoder(parse_constant=reject_json_constant, parse_float=GoNumber, parse_int=_parse_int)


def _raw_decode(text: str) -> Any:
    """The first JSON value of `text`, with Go's limit on nesting instead of Python's recursion limit."""
    try:
        return _DECODER.raw_decode(text)[0]
    except RecursionError:
        pass
    opener = _too_deep(text)
    if opener:
        raise ValueError(f"invalid character {go_char(opener)} exceeded max depth")
    # Nested deeper than Python's recursion limit allows but within Go's: decode with a higher limit.
    # The C scanner needs about 0.5 KiB of stack per level; 10,000 levels fit the 8 MiB main stack.
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(old + MAX_DEPTH + 100)
    try:
        return _DECODER.raw_decode(text)[0]
    finally:
        sys.setrecursionlimit(old)


_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _too_deep(text: str) -> str:
    """The opener ('[' or '{') at which Go's scanner stops with "exceeded max depth", or ''."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return ""
    brackets = "".join(filter(_DEPTH_STEP.__contains__, _STRING.sub("", text)))
    depths = itertools.accumulate(map(_DEPTH_STEP.__getitem__, brackets))
    index = next(itertools.compress(itertools.count(), map(operator.lt, itertools.repeat(MAX_DEPTH), depths)), None)
    return "" if index is None else brackets[index]


def decode_json(text: str) -> Any:
    """The first JSON value of `text` as Go's encoding/json reads it into an `any`: lone surrogates
    become U+FFFD, nesting deeper than 10,000 levels is an error; ValueError in Go's words.
    Numbers with a fraction or exponent, and integers beyond int64, are GoNumber (a float)."""
    stripped = text.lstrip(" \t\r\n")
    if not stripped:
        raise ValueError("unexpected end of JSON input")
    return _decode_value(stripped)


def _decode_value(text: str) -> Any:
    """Decode `text` (not empty, no leading white space); ValueError in encoding/json's words."""
    try:
        value = _raw_decode(text)
    except json.JSONDecodeError as exc:
        if exc.doc in ("NaN", "Infinity"):
            raise ValueError(f"invalid character {go_char(exc.doc[0])} looking for beginning of value") from None
        if exc.doc == "-Infinity":
            raise ValueError("invalid character 'I' in numeric literal") from None
        raise ValueError(go_json_error(text, exc)) from None
    return _clean_value(value) if _may_hold_surrogates(text) else value


def decode_struct(document: str | bytes | Any, schema: dict[str, type], struct: str, *, strict: bool,
                  parsed: bool = False) -> dict[str, Any]:
    """Decode a JSON object the way Go's encoding/json fills a struct.

    Keys match case-insensitively (an exact match wins), `null` leaves the zero value, only the first
    JSON value of the text is read, and with `strict` an unknown key is an error (DisallowUnknownFields).
    Lone surrogates (escaped or not) become U+FFFD, numbers must fit the field's Go type (int is
    64-bit), and nesting deeper than 10,000 levels is an error, all as in Go.
    With `parsed`, `document` is a value this function already produced (so it is clean).
    Raises ValueError with a Go-shaped message.
    """
    if parsed:
        value = document
    else:
        text = document.decode("utf-8", "replace") if isinstance(document, (bytes, bytearray)) else document
        text = text.lstrip(" \t\r\n")
        if not text:
            raise ValueError("EOF")
        value = _decode_value(text)
    zeros, lists, folded = _layout(tuple(schema.items()))
    out: dict[str, Any] = zeros.copy()
    for name in lists:
        out[name] = []
    if value is None:
        return out
    if not isinstance(value, dict):
        raise ValueError(f"json: cannot unmarshal {_json_kind(value)} into Go value of type {struct}")
    where = struct.rsplit(".", 1)[-1]  # Go names the struct without its package here
    for key, item in value.items():
        kind = schema.get(key)
        name = key
        if kind is None:
            name = folded.get(key.lower())
            if name is None:
                if strict:
                    raise ValueError(f'json: unknown field "{key}"')
                continue
            kind = schema[name]
        if item is None:
            continue
        # the exact type is kept as it is (str, bool, int within int64, object); the rest is converted
        out[name] = item if type(item) is kind and kind is not list else _convert(item, kind, f"{where}.{name}")
    return out


@functools.lru_cache(maxsize=256)
def _layout(fields: tuple[tuple[str, type], ...]) -> tuple[dict[str, Any], tuple[str, ...], dict[str, str]]:
    """A schema's zero values (in field order; list fields get a new list per decode), its list fields,
    and its names by lower-cased name."""
    zeros = {name: _zero(kind) for name, kind in fields}
    return zeros, tuple(name for name, kind in fields if kind is list), {name.lower(): name for name, _ in fields}


def _zero(kind: type) -> Any:
    return {str: "", int: 0, float: 0.0, bool: False, list: [], dict: None}[kind]


def _convert(item: Any, kind: type, where: str) -> Any:
    """`item` as Go stores it in a field of `kind`; ValueError with Go's UnmarshalTypeError text."""
    actual = type(item)
    if kind is str and actual is str or kind is bool and actual is bool or kind is dict and actual is dict:
        return item
    if kind is int and actual is int:
        return item  # within int64: larger literals decode as GoNumber
    if kind is float and (actual is int or actual is GoNumber and math.isfinite(item)):
        return float(item)
    if kind is list and actual is list:
        for element in item:
            if element is not None and type(element) is not str:
                raise ValueError(f"json: cannot unmarshal {_json_kind(element)} into Go struct field {where} "
                                 f"of type string")
        return ["" if x is None else x for x in item]
    raise ValueError(f"json: cannot unmarshal {_json_kind(item, kind in (int, float))} into Go struct field "
                     f"{where} of type {_GO_TYPES[kind]}")


def decode_config(config: str, schema: dict[str, type], struct: str) -> dict[str, Any]:
    """Strict config decoding; failures raise ConfigError('failed to parse config: ...')."""
    try:
        return decode_struct(config, schema, struct, strict=True)
    except ValueError as exc:
        raise ConfigError(f"failed to parse config: {exc}") from None
