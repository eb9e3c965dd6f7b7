"""GJSON path evaluation with the semantics of github.com/tidwall/gjson v1.18 (what the Go worker uses).

Like gjson it walks the raw JSON text instead of decoding it: results keep their raw text (an
object's result is its text as it appears in the body, an integer literal compares by its digits),
values are skipped without building them, and a malformed document still answers for the parts
that can be walked. Supported: keys, `*`/`?` wildcards, `\\` escapes, array indexes, `#` counts,
`#.path`, `#(query)` and `#(query)#` with == != < <= > >= % !% and the `~` boolish form, nested
queries, `.` vs `|`, modifiers (@this @reverse @ugly @pretty @valid @flatten @join @keys @values
@tostr @fromstr @group @dig, with arguments), multipaths `[a,b]` / `{a,"k":b}`, literals `!true`,
and JSON Lines (`..`).
"""

from __future__ import annotations

import json as _json
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Callable

from executors._kit.limits import checkpoint  # every loop over the document stops here when the work is abandoned

NULL, FALSE, NUMBER, STRING, TRUE, JSON = range(6)


@dataclass(slots=True)
class Result:
    type: int = NULL
    raw: str = ""
    str: str = ""
    num: float = 0.0

    def exists(self) -> bool:
        return self.type != NULL or self.raw != ""

    def string(self) -> str:
        """gjson's Result.String(): how `http-json-query` sees a value."""
        t = self.type
        if t == STRING:
            return self.str
        if t == NUMBER:
            raw = self.raw
            if raw:
                digits = raw[1:] if raw[0] == "-" else raw
                if digits.isdigit() and digits.isascii():
                    return raw
            return format_float(self.num)
        if t == TRUE:
            return "true"
        if t == FALSE:
            return "false"
        if t == JSON:
            return self.raw
        return ""

    def get(self, path: str) -> "Result":
        return get(self.raw, path)


# --------------------------------------------------------------------------------------------------
# Go number helpers (shared with the JSON-query comparisons)

_GO_FLOAT = re.compile(
    r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
    r"|0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)[pP][+-]?\d+"
    r"|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?|[nN][aA][nN])\Z")


def go_parse_float(text: str) -> tuple[float, bool]:
    """strconv.ParseFloat(text, 64): (value, ok). Out of range gives (±Inf, False), as Go's ErrRange."""
    if not _GO_FLOAT.match(text):
        return 0.0, False
    body = text.lstrip("+-")
    try:
        if body[:2] in ("0x", "0X"):
            value = float.fromhex(body)
            value = -value if text.startswith("-") else value
        else:
            value = float(text)
    except (ValueError, OverflowError):
        return (-math.inf if text.startswith("-") else math.inf), False
    if math.isinf(value) and body.lower() not in ("inf", "infinity"):
        return value, False
    return value, True


def format_float(value: float) -> str:
    """strconv.FormatFloat(value, 'f', -1, 64): shortest digits, never an exponent."""
    if value != value:
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = repr(value)
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


# --------------------------------------------------------------------------------------------------
# Raw JSON scanning

_STR_BODY = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_STRUCT = re.compile(r'["{}\[\]]')
_NUMBER_END = re.compile(r"[\x00- ,\]}]")
_KEY_OR_END = re.compile(r'["}]')
_VALUE_START = re.compile(r'["{\[\-0-9tfn]')
_ELEM_START = re.compile(r'["{\[\-0-9tfn\]]')
_LITERAL_END = re.compile(r"[^a-z]")
_WS = " \t\r\n"


def _string(s: str, i: int) -> tuple[int, str, bool, bool]:
    """Scan a string whose opening quote is at i-1: (end, raw with quotes, has escapes, terminated)."""
    m = _STR_BODY.match(s, i)
    if m is None:
        return len(s), s[i - 1:], "\\" in s[i:], False
    end = m.end()
    return end, s[i - 1:end], "\\" in s[i:end], True


def _squash(s: str, i: int) -> tuple[int, str]:
    """Skip the object or array that starts at i: (end, raw)."""
    depth = 0
    pos = i
    n = len(s)
    steps = 0
    while pos < n:
        steps += 1
        if not steps & 1023:
            checkpoint()
        m = _STRUCT.search(s, pos)
        if m is None:
            break
        ch = s[m.start()]
        if ch == '"':
            sm = _STR_BODY.match(s, m.end())
            if sm is None:
                break
            pos = sm.end()
            continue
        pos = m.end()
        if ch in "{[":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return pos, s[i:pos]
    return n, s[i:]


def _number(s: str, i: int) -> tuple[int, str]:
    m = _NUMBER_END.search(s, i + 1)
    end = m.start() if m else len(s)
    return end, s[i:end]


def _literal(s: str, i: int) -> tuple[int, str]:
    m = _LITERAL_END.search(s, i + 1)
    end = m.start() if m else len(s)
    return end, s[i:end]


def _unescape(raw_inner: str) -> str:
    try:
        return _json.loads('"' + raw_inner + '"')
    except ValueError:
        out = []  # lenient, like gjson: keep what cannot be decoded
        i = 0
        while i < len(raw_inner):
            ch = raw_inner[i]
            if ch == "\\" and i + 1 < len(raw_inner):
                nxt = raw_inner[i + 1]
                simple = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
                if nxt in simple:
                    out.append(simple[nxt])
                    i += 2
                    continue
                if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", raw_inner[i + 2:i + 6] or ""):
                    out.append(chr(int(raw_inner[i + 2:i + 6], 16)))
                    i += 6
                    continue
                i += 1
                continue
            out.append(ch)
            i += 1
        return "".join(out)


def _value_at(s: str, i: int) -> tuple[int, Result]:
    """Parse the value starting at i (no leading whitespace): (end, result)."""
    ch = s[i]
    if ch == '"':
        end, raw, esc, _ = _string(s, i + 1)
        inner = raw[1:-1] if raw.endswith('"') and len(raw) > 1 else raw[1:]
        return end, Result(STRING, raw, _unescape(inner) if esc else inner)
    if ch in "{[":
        end, raw = _squash(s, i)
        return end, Result(JSON, raw)
    if ch == "-" or ch.isdigit():
        end, raw = _number(s, i)
        return end, Result(NUMBER, raw, num=go_parse_float(raw)[0])
    end, raw = _literal(s, i)
    return end, Result(TRUE if ch == "t" else FALSE if ch == "f" else NULL, raw)


def parse(text: str) -> Result:
    """gjson.Parse: the first value of a document (an object or array takes the rest of the text)."""
    m = _NOT_SPACE.search(text)
    if m is None:
        return Result()
    i = m.start()
    ch = text[i]
    if ch in "{[":
        return Result(JSON, text[i:])
    if ch == "-" or ch.isdigit() or ch in '"tfn':
        return _value_at(text, i)[1]
    return Result()


_NOT_SPACE = re.compile(r"[^\x00- ]")
_OPENING = re.compile(r"[{\[]")


def _elements(raw: str) -> tuple[str, list[tuple[Result | None, Result]]]:
    """Members of an object ('{', [(key, value)]) or elements of an array ('[', [(None, value)])."""
    doc = raw.lstrip(_WS)
    if not doc or doc[0] not in "{[":
        return "", []
    kind, out = doc[0], []
    i, n = 1, len(doc)
    while i < n:
        checkpoint()
        key = None
        if kind == "{":
            m = _KEY_OR_END.search(doc, i)
            if m is None or doc[m.start()] == "}":
                break
            i, kraw, esc, ok = _string(doc, m.end())
            if not ok:
                break
            key = Result(STRING, kraw, _unescape(kraw[1:-1]) if esc else kraw[1:-1])
        m = (_VALUE_START if kind == "{" else _ELEM_START).search(doc, i)
        if m is None or doc[m.start()] in "]}":
            break
        i, value = _value_at(doc, m.start())
        out.append((key, value))
    return kind, out


# --------------------------------------------------------------------------------------------------
# Paths

@dataclass(slots=True)
class _Ctx:
    json: str
    value: Result = field(default_factory=Result)
    pipe: str = ""
    piped: bool = False


_MODIFIERS: dict[str, Callable[[str, str], str]] = {}


def _is_dot_piper(rest: str) -> bool:
    """After a `.`, a known modifier or a multipath starts a new pipe rather than a key."""
    if not rest:
        return False
    if rest[0] == "@":
        i = 1
        while i < len(rest) and rest[i] not in ".|:":
            i += 1
        return rest[1:i] in _MODIFIERS
    return rest[0] in "[{"


@dataclass(slots=True)
class _ObjPath:
    part: str = ""
    path: str = ""
    pipe: str = ""
    piped: bool = False
    wild: bool = False
    more: bool = False


def _object_path(path: str) -> _ObjPath:
    r = _ObjPath()
    part: list[str] = []
    i, n = 0, len(path)
    while i < n:
        ch = path[i]
        if ch == "|":
            r.part, r.pipe, r.piped = "".join(part), path[i + 1:], True
            return r
        if ch == ".":
            r.part = "".join(part)
            if i < n - 1 and _is_dot_piper(path[i + 1:]):
                r.pipe, r.piped = path[i + 1:], True
            else:
                r.path, r.more = path[i + 1:], True
            return r
        if ch == "\\":
            if i + 1 < n:
                part.append(path[i + 1])
            i += 2
            continue
        if ch in "*?":
            r.wild = True
        part.append(ch)
        i += 1
    r.part = "".join(part)
    return r


def wildcard_match(text: str, pattern: str) -> bool:
    """tidwall/match: `*` any run of characters, `?` exactly one."""
    if "*" not in pattern and "?" not in pattern:
        return text == pattern
    rx = _PATTERNS.get(pattern)
    if rx is None:
        rx = re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern) + r"\Z",
                        re.S)
        if len(_PATTERNS) > 256:
            _PATTERNS.clear()
        _PATTERNS[pattern] = rx
    return rx.match(text) is not None


_PATTERNS: dict[str, re.Pattern] = {}


def _parse_object(c: _Ctx, i: int, path: str) -> tuple[int, bool]:
    s = c.json
    n = len(s)
    rp = _object_path(path)
    if not rp.more and rp.piped:
        c.pipe, c.piped = rp.pipe, True
    while i < n:
        checkpoint()
        m = _KEY_OR_END.search(s, i)
        if m is None:
            return n, False
        if s[m.start()] == "}":
            return m.end(), False
        i, kraw, esc, ok = _string(s, m.end())
        if not ok:
            return i, False
        key = _unescape(kraw[1:-1]) if esc else kraw[1:-1]
        pmatch = wildcard_match(key, rp.part) if rp.wild else key == rp.part
        hit = pmatch and not rp.more
        m = _VALUE_START.search(s, i)
        if m is None:
            return n, False
        i = m.start()
        ch = s[i]
        if ch in "{[" and pmatch and not hit:
            i, hit = (_parse_object if ch == "{" else _parse_array)(c, i + 1, rp.path)
            if hit:
                return i, True
            continue
        i, value = _value_at(s, i)
        if hit:
            c.value = value
            return i, True
    return i, False


@dataclass(slots=True)
class _ArrPath:
    part: str = ""
    path: str = ""
    pipe: str = ""
    piped: bool = False
    more: bool = False
    alogok: bool = False
    arrch: bool = False
    alogkey: str = ""
    query_on: bool = False
    query_path: str = ""
    query_op: str = ""
    query_value: str = ""
    query_all: bool = False


def _matching_close(path: str, i: int, open_ch: str, close_ch: str) -> int:
    """Index of the bracket closing the one at i (quotes and escapes respected); len(path) if none."""
    depth = 0
    n = len(path)
    while i < n:
        ch = path[i]
        if ch == "\\":
            i += 2
            continue
        if ch == '"':
            i += 1
            while i < n and path[i] != '"':
                i += 2 if path[i] == "\\" else 1
        elif ch == open_ch:
            depth += 1
        elif ch == close_ch:
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return n


def _parse_query(inner: str) -> tuple[str, str, str]:
    """`path op value` inside #(...): the path may hold nested queries; `==` means `=`."""
    i, n = 0, len(inner)
    while i < n and inner[i] <= " ":
        i += 1
    start = i
    while i < n:
        ch = inner[i]
        if ch in "([":
            i = _matching_close(inner, i, ch, ")" if ch == "(" else "]") + 1
            continue
        if ch == "\\":
            i += 2
            continue
        if ch <= " " or ch in "!=<>%":
            break
        i += 1
    qpath = inner[start:i]
    while i < n and inner[i] <= " ":
        i += 1
    op = ""
    if i < n:
        two = inner[i:i + 2]
        if two in ("==", "!=", "<=", ">=", "!%"):
            op, i = ("=" if two == "==" else two), i + 2
        elif inner[i] in "=<>%":
            op, i = inner[i], i + 1
        elif inner[i] == "!":
            op, i = "!", i + 1
    value = inner[i:].strip(" \t\r\n")
    return qpath, op, value


def _array_path(path: str) -> _ArrPath:
    r = _ArrPath()
    n = len(path)
    if path.startswith("#"):
        r.arrch = True
        if n > 1 and path[1] == ".":
            r.alogok, r.alogkey = True, path[2:]
            r.part, r.path, r.more = "#", path[2:], True
            return r
        if n > 1 and path[1] in "([":
            close = _matching_close(path, 1, path[1], ")" if path[1] == "(" else "]")
            r.query_on = True
            r.query_path, r.query_op, r.query_value = _parse_query(path[2:close])
            j = close + 1
            if j < n and path[j] == "#":
                r.query_all = True
                j += 1
            while j < n and path[j] not in ".|":
                j += 1
            r.part = path[:j]
            if j < n:
                if path[j] == "|":
                    r.pipe, r.piped = path[j + 1:], True
                else:
                    r.path, r.more = path[j + 1:], True
            return r
    for i, ch in enumerate(path):
        if ch == "|":
            r.part, r.pipe, r.piped = path[:i], path[i + 1:], True
            return r
        if ch == ".":
            r.part = path[:i]
            if not r.arrch and i < n - 1 and _is_dot_piper(path[i + 1:]):
                r.pipe, r.piped = path[i + 1:], True
            else:
                r.path, r.more = path[i + 1:], True
            return r
        if ch == "#":
            r.arrch = True
    r.part = path
    return r


def _boolish(value: Result) -> bool:
    if value.type == TRUE:
        return True
    if value.type == STRING:
        return value.str in ("1", "t", "T", "TRUE", "true", "True")
    if value.type == NUMBER:
        return value.num != 0
    return False


def _query_matches(rp: _ArrPath, value: Result) -> bool:
    rpv = rp.query_value
    if rpv.startswith("~"):
        kind = rpv[1:]
        verdict: bool | None = {"*": value.exists(), "null": value.type == NULL and value.exists(),
                                "true": _boolish(value), "false": not _boolish(value)}.get(kind)
        if verdict is None:
            return False
        rpv, value = "true", Result(TRUE if verdict else FALSE, "true" if verdict else "false")
    if not value.exists():
        return False
    op = rp.query_op
    if op == "":
        return True
    if len(rpv) >= 2 and rpv[0] == '"' and rpv[-1] == '"':
        rpv = _unescape(rpv[1:-1])
    t = value.type
    if t == STRING:
        s = value.str
        return {"=": s == rpv, "!=": s != rpv, "<": s < rpv, "<=": s <= rpv, ">": s > rpv, ">=": s >= rpv,
                "%": wildcard_match(s, rpv), "!%": not wildcard_match(s, rpv)}.get(op, False)
    if t == NUMBER:
        x, y = value.num, go_parse_float(rpv)[0]
        return {"=": x == y, "!=": x != y, "<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y}.get(op, False)
    if t == TRUE:
        return {"=": rpv == "true", "!=": rpv != "true", ">": rpv == "false", ">=": True}.get(op, False)
    if t == FALSE:
        return {"=": rpv == "false", "!=": rpv != "false", "<": rpv == "true", "<=": True}.get(op, False)
    return False


def _split_pipe(path: str) -> tuple[str, str, bool]:
    """Split `a.b|c` at the first pipe that is not inside a #(...) selector."""
    if "|" not in path:
        return path, "", False
    i, n = 0, len(path)
    while i < n:
        ch = path[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "." and i + 1 < n and path[i + 1] == "#" and i + 2 < n and path[i + 2] in "([":
            i = _matching_close(path, i + 2, path[i + 2], ")" if path[i + 2] == "(" else "]") + 1
            continue
        if ch == "|":
            return path[:i], path[i + 1:], True
        i += 1
    return path, "", False


def _parse_array(c: _Ctx, i: int, path: str) -> tuple[int, bool]:
    s = c.json
    n = len(s)
    rp = _array_path(path)
    partidx = -1
    if not rp.arrch and rp.part.isdigit() and rp.part.isascii():
        partidx = int(rp.part)
    if not rp.more and rp.piped:
        c.pipe, c.piped = rp.pipe, True
    multires: list[str] | None = None
    values: list[int] = []
    h = 0
    while True:
        checkpoint()
        pmatch = not rp.arrch and partidx == h
        hit = pmatch and not rp.more
        h += 1
        m = _ELEM_START.search(s, i)
        if m is None or s[m.start()] == "]":
            i = n if m is None else m.start()
            break
        i = m.start()
        if rp.alogok:
            values.append(i)
        ch = s[i]
        if ch in "{[" and pmatch and not hit:
            i, hit = (_parse_object if ch == "{" else _parse_array)(c, i + 1, rp.path)
            if hit:
                return i, True
            continue
        i, value = _value_at(s, i)
        if rp.query_on:
            if rp.query_all and multires is None:
                multires = []
            if value.type == JSON:
                res = get(value.raw, rp.query_path)
            elif rp.query_path:
                continue
            else:
                res = value
            if not _query_matches(rp, res):
                continue
            if rp.more:
                left, right, ok = _split_pipe(rp.path)
                if ok:
                    rp.path, c.pipe, c.piped = left, right, True
                res = get(value.raw, rp.path)
            else:
                res = value
            if rp.query_all:
                raw = res.raw or res.string()
                if raw:
                    multires.append(raw)  # type: ignore[union-attr]
            else:
                c.value = res
                return i, True
        elif hit:
            c.value = value
            return i, True
    # end of the array
    if rp.arrch and rp.part == "#":
        if rp.alogok:
            left, right, ok = _split_pipe(rp.alogkey)
            if ok:
                rp.alogkey, c.pipe, c.piped = left, right, True
            raws = []
            for start in values:
                res = get(_value_at(s, start)[1].raw, rp.alogkey)
                if res.exists():
                    raws.append(res.raw or res.string())
            c.value = Result(JSON, "[" + ",".join(raws) + "]")
            return i + 1, True
        c.value = Result(NUMBER, "", num=float(h - 1))
        return i + 1, True
    if not c.value.exists():
        if multires:
            c.value = Result(JSON, "[" + ",".join(multires) + "]")
        elif rp.query_all:
            c.value = Result(JSON, "[]")
    return i + 1, False


# --------------------------------------------------------------------------------------------------
# Get

def get(doc: str, path: str) -> Result:
    """gjson.Get(doc, path)."""
    if len(path) > 1:
        if path[0] in "@!":
            done = _exec_modifier(doc, path) if path[0] == "@" else _exec_static(path)
            if done is not None:
                rest, out = done
                if rest and rest[0] in ".|":
                    return get(out, rest[1:])
                return parse(out)
        if path[0] in "[{":
            multi = _multipath(doc, path)
            if multi is not None:
                return multi
    checkpoint()
    c = _Ctx(doc)
    if path.startswith(".."):
        _parse_array(c, 0, path[2:])
    else:
        m = _OPENING.search(doc)
        if m is not None:
            (_parse_object if m.group() == "{" else _parse_array)(c, m.end(), path)
    if c.piped:
        return get(c.value.raw, c.pipe)
    return c.value


def _selectors(path: str) -> tuple[list[tuple[str, str]], str] | None:
    """Split `[a,b]` / `{a,"k":b}` into (name, path) items and the text after the closing bracket."""
    open_ch = path[0]
    close_ch = "]" if open_ch == "[" else "}"
    items: list[tuple[str, str]] = []
    depth, i, n = 1, 1, len(path)
    start, name = 1, ""
    while i < n:
        ch = path[i]
        if ch == "\\":
            i += 2
            continue
        if ch == '"':
            j = i + 1
            while j < n and path[j] != '"':
                j += 2 if path[j] == "\\" else 1
            if depth == 1 and open_ch == "{" and i == start and j + 1 < n and path[j + 1] == ":":
                name = path[i:j + 1]
                start = j + 2
            i = j + 1
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                if ch != close_ch:
                    return None
                items.append((name, path[start:i]))
                return items, path[i + 1:]
        elif ch == "," and depth == 1:
            items.append((name, path[start:i]))
            start, name = i + 1, ""
        i += 1
    return None


def _name_of_last(path: str) -> str:
    for i in range(len(path) - 1, -1, -1):
        if path[i] in "|." and not (i > 0 and path[i - 1] == "\\"):
            return path[i + 1:]
    return path


def _simple_name(name: str) -> bool:
    return all(ch >= " " and ch not in "[]{}()#|!" for ch in name)


def _multipath(doc: str, path: str) -> Result | None:
    split = _selectors(path)
    if split is None:
        return None
    items, rest = split
    if rest and rest[0] not in ".|":
        return None
    kind = path[0]
    parts = []
    for name, sub in items:
        res = get(doc, sub)
        if not res.exists():
            continue
        raw = res.raw
        if not raw:
            raw = res.string() or "null"
        if kind == "{":
            if name:
                key = name if _valid(name) else _json.dumps(name, ensure_ascii=False)
            else:
                last = _name_of_last(sub)
                key = _json.dumps(last if _simple_name(last) else "_", ensure_ascii=False)
            parts.append(key + ":" + raw)
        else:
            parts.append(raw)
    out = Result(JSON, ("{" if kind == "{" else "[") + ",".join(parts) + ("}" if kind == "{" else "]"))
    if rest:
        return get(out.raw, rest[1:])
    return out


def _exec_static(path: str) -> tuple[str, str] | None:
    """A literal `!value`: (rest of path, JSON text)."""
    body = path[1:]
    if not body:
        return None
    ch = body[0]
    if ch in "{[":
        end, raw = _squash(body, 0)
    elif ch == '"':
        end, raw, _, ok = _string(body, 1)
        if not ok:
            return None
    elif ch == "-" or ch.isdigit():
        end, raw = _number(body, 0)
        end = len(raw)
        for k, c2 in enumerate(raw):
            if c2 in ".|":
                end, raw = k, raw[:k]
                break
    else:
        m = re.match(r"[a-zA-Z]+", body)
        if not m or m.group(0) not in ("true", "false", "null", "NaN", "Inf"):
            return None
        end, raw = m.end(), m.group(0)
    return body[end:], raw


def _exec_modifier(doc: str, path: str) -> tuple[str, str] | None:
    i, n = 1, len(path)
    while i < n and path[i] not in ".|:":
        i += 1
    name, rest = path[1:i], path[i:]
    fn = _MODIFIERS.get(name)
    if fn is None:
        return None
    arg = ""
    if rest.startswith(":") and len(rest) > 1:
        rest = rest[1:]
        if rest[0] in '{["' and parse(rest).exists():
            end = _squash(rest, 0)[0] if rest[0] in "{[" else _string(rest, 1)[0]
            arg, rest = rest[:end], rest[end:]
        else:
            k = 0
            while k < len(rest) and rest[k] not in "|.":
                if rest[k] in "{[(":
                    k = _matching_close(rest, k, rest[k], {"{": "}", "[": "]", "(": ")"}[rest[k]])
                k += 1
            arg, rest = rest[:k], rest[k:]
    elif rest.startswith(":"):
        rest = ""
    return rest, fn(doc, arg)


def _valid(text: str) -> bool:
    try:
        _json.loads(text, parse_constant=_reject)
        return True
    except ValueError:
        return False


def _reject(name: str) -> None:
    raise ValueError(name)


# The modifiers (@pretty, @join, ...) live in their own module and register themselves in _MODIFIERS.
from executors._kit import gjson_modifiers as _gjson_modifiers  # noqa: E402,F401  (imported for its registrations)
