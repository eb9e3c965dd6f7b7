"""GJSON modifiers (`@pretty`, `@ugly`, `@reverse`, `@this`, `@valid`, `@flatten`, `@join`, `@keys`,
`@values`, `@tostr`, `@fromstr`, `@group`, `@dig`) with gjson v1.18's semantics; `_gjson` imports this
module last, and each modifier registers itself in `_gjson._MODIFIERS`.
"""

from __future__ import annotations

import json as _json

from executors._kit.gjson import (_MODIFIERS, _WS, JSON, NUMBER, STRING, TRUE, Result, _elements, _string, _valid,
                              get, parse)
from executors._kit.limits import checkpoint

def _ugly(text: str) -> str:
    out = []
    i, n = 0, len(text)
    steps = 0
    while i < n:
        steps += 1
        if not steps & 4095:
            checkpoint()
        ch = text[i]
        if ch == '"':
            end = _string(text, i + 1)[0]
            out.append(text[i:end])
            i = end
            continue
        if ch not in _WS:
            out.append(ch)
        i += 1
    return "".join(out)


def _mod_reverse(doc: str, arg: str) -> str:
    kind, items = _elements(doc)
    if kind == "[":
        return "[" + ",".join(v.raw for _, v in reversed(items)) + "]"
    if kind == "{":
        return "{" + ",".join(k.raw + ":" + v.raw for k, v in reversed(items)) + "}"  # type: ignore[union-attr]
    return doc


def _mod_this(doc: str, arg: str) -> str:
    return doc


def _mod_valid(doc: str, arg: str) -> str:
    return doc if _valid(doc) else ""


def _unwrap(raw: str) -> str:
    raw = raw.strip(_WS)
    if len(raw) >= 2 and raw[0] in "[{":
        raw = raw[1:-1]
    return raw.strip(_WS)


def _arg_bool(arg: str, name: str) -> bool:
    if not arg:
        return False
    return get(arg, name).type == TRUE


def _mod_flatten(doc: str, arg: str) -> str:
    kind, items = _elements(doc)
    if kind != "[":
        return doc
    deep = _arg_bool(arg, "deep")
    parts = []
    for _, value in items:
        raw = value.raw
        if value.type == JSON and raw.startswith("["):
            raw = _unwrap(_mod_flatten(raw, arg) if deep else raw)
        raw = raw.strip(_WS)
        if raw:
            parts.append(raw)
    return "[" + ",".join(parts) + "]"


def _mod_join(doc: str, arg: str) -> str:
    kind, items = _elements(doc)
    if kind != "[":
        return doc
    preserve = _arg_bool(arg, "preserve")
    if preserve:
        parts = []
        for _, value in items:
            if value.type == JSON and value.raw.startswith("{"):
                inner = _unwrap(value.raw)
                if inner:
                    parts.append(inner)
        return "{" + ",".join(parts) + "}"
    order: list[str] = []
    seen: dict[str, tuple[str, str]] = {}
    for _, value in items:
        okind, members = _elements(value.raw) if value.type == JSON else ("", [])
        if okind != "{":
            continue
        for key, member in members:
            assert key is not None
            if key.str not in seen:
                order.append(key.str)
            seen[key.str] = (seen.get(key.str, (key.raw, ""))[0], member.raw)
    return "{" + ",".join(seen[k][0] + ":" + seen[k][1] for k in order) + "}"


def _mod_keys(doc: str, arg: str) -> str:
    res = parse(doc)
    if not res.exists():
        return "[]"
    kind, items = _elements(doc)
    if kind == "{":
        return "[" + ",".join(k.raw for k, _ in items) + "]"  # type: ignore[union-attr]
    if kind == "[":
        return "[" + ",".join("null" for _ in items) + "]"
    return "[null]"


def _mod_values(doc: str, arg: str) -> str:
    res = parse(doc)
    if not res.exists():
        return "[]"
    kind, items = _elements(doc)
    if kind == "[":
        return doc
    if kind == "{":
        return "[" + ",".join(v.raw for _, v in items) + "]"
    return "[" + res.raw + "]"


def _mod_tostr(doc: str, arg: str) -> str:
    return _json.dumps(doc, ensure_ascii=False)


def _mod_fromstr(doc: str, arg: str) -> str:
    if not _valid(doc):
        return ""
    return parse(doc).string()


def _mod_group(doc: str, arg: str) -> str:
    kind, members = _elements(doc)
    if kind != "{":
        return ""
    rows: list[list[str]] = []
    for key, value in members:
        akind, elems = _elements(value.raw) if value.type == JSON else ("", [])
        if akind != "[":
            continue
        for idx, (_, elem) in enumerate(elems):
            while len(rows) <= idx:
                rows.append([])
            rows[idx].append(key.raw + ":" + elem.raw)  # type: ignore[union-attr]
    return "[" + ",".join("{" + ",".join(r) + "}" for r in rows) + "]"


def _mod_dig(doc: str, arg: str) -> str:
    found: list[str] = []

    def walk(raw: str) -> None:
        res = get(raw, arg)
        if res.exists():
            found.append(res.raw or res.string())
        kind, items = _elements(raw)
        for _, value in items:
            if value.type == JSON:
                walk(value.raw)

    walk(doc)
    return "[" + ",".join(found) + "]"


def _mod_pretty(doc: str, arg: str) -> str:
    sort_keys = _arg_bool(arg, "sortKeys")
    indent = get(arg, "indent").str if arg and get(arg, "indent").type == STRING else "  "
    prefix = get(arg, "prefix").str if arg and get(arg, "prefix").type == STRING else ""
    width_res = get(arg, "width") if arg else Result()
    width = int(width_res.num) if width_res.type == NUMBER else 80

    def single(res: Result) -> str:
        kind, items = _elements(res.raw) if res.type == JSON else ("", [])
        if kind == "[":
            return "[" + ",".join(single(v) for _, v in items) + "]"
        if kind == "{":
            if sort_keys:
                items = sorted(items, key=lambda kv: kv[0].str)  # type: ignore[union-attr]
            return "{" + ", ".join(k.raw + ": " + single(v) for k, v in items) + "}"  # type: ignore[union-attr]
        return res.raw if res.type != JSON else _ugly(res.raw)

    def block(res: Result, depth: int) -> str:
        kind, items = _elements(res.raw) if res.type == JSON else ("", [])
        if kind == "":
            return res.raw
        if not items:
            return "[]" if kind == "[" else "{}"
        pad = prefix + indent * (depth + 1)
        if kind == "[":
            flat = single(res)
            if len(prefix + indent * depth) + len(flat) <= width:
                return flat
            body = [pad + block(v, depth + 1) for _, v in items]
            return "[\n" + ",\n".join(body) + "\n" + prefix + indent * depth + "]"
        if sort_keys:
            items = sorted(items, key=lambda kv: kv[0].str)  # type: ignore[union-attr]
        body = [pad + k.raw + ": " + block(v, depth + 1) for k, v in items]  # type: ignore[union-attr]
        return "{\n" + ",\n".join(body) + "\n" + prefix + indent * depth + "}"

    res = parse(doc)
    if res.type != JSON:
        return doc
    return prefix + block(res, 0) + "\n"


def _mod_ugly(doc: str, arg: str) -> str:
    return _ugly(doc)


_MODIFIERS.update({
    "pretty": _mod_pretty, "ugly": _mod_ugly, "reverse": _mod_reverse, "this": _mod_this, "flatten": _mod_flatten,
    "join": _mod_join, "valid": _mod_valid, "keys": _mod_keys, "values": _mod_values, "tostr": _mod_tostr,
    "fromstr": _mod_fromstr, "group": _mod_group, "dig": _mod_dig,
})
