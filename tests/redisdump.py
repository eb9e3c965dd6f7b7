"""Dump a Redis database in the shape of the Go-recorded fixtures, and compare the two."""

from __future__ import annotations

import json
import re
from typing import Any

from asynq_protocol import ServerInfo, TaskMessage, WorkerInfo

_SERVER_KEY = re.compile(r"^asynq:(servers|workers):\{.*\}$")
_DAY_KEY = re.compile(r":(processed|failed):\d{4}-\d{2}-\d{2}$")


def key_pattern(key: str) -> str:
    key = _SERVER_KEY.sub(r"asynq:\1:{<host>:<pid>:<server_id>}", key)
    return _DAY_KEY.sub(r":\1:<yyyy-mm-dd>", key)


def _proto(message_class: type, data: bytes) -> dict:
    msg = message_class()
    msg.ParseFromString(data)
    out: dict[str, Any] = {}
    for f in msg.DESCRIPTOR.fields:
        value = getattr(msg, f.name)
        if f.name == "headers":
            continue
        if f.message_type is not None and f.message_type.full_name == "google.protobuf.Timestamp":
            value = {"seconds": value.seconds, "nanos": value.nanos}
        elif f.name == "queues":
            value = dict(value)
        elif isinstance(value, bytes):
            value = {"utf8": value.decode("utf-8", "replace")}
        out[f.name] = value
    return out


def _value(key: str, field: str | None, data: bytes) -> dict:
    if key.startswith("asynq:servers:"):
        return {"decoded": _proto(ServerInfo, data)}
    if key.startswith("asynq:workers:"):
        return {"decoded": _proto(WorkerInfo, data)}
    if field == "msg":
        return {"decoded": _proto(TaskMessage, data)}
    return {"utf8": data.decode("utf-8", "replace")}


async def dump(redis: Any) -> dict[str, dict]:
    """Every key: pattern -> {type, ttl_ms, value} in the fixture's structure."""
    out: dict[str, dict] = {}
    for raw in sorted(await redis.keys("*")):
        key = raw.decode()
        kind = (await redis.type(raw)).decode()
        if kind == "string":
            value: Any = _value(key, None, await redis.get(raw))
        elif kind == "hash":
            value = {k.decode(): _value(key, k.decode(), v) for k, v in (await redis.hgetall(raw)).items()}
        elif kind == "zset":
            value = [{"member": m.decode(), "score": int(s)} for m, s in await redis.zrange(raw, 0, -1, withscores=True)]
        elif kind == "list":
            value = [v.decode() for v in await redis.lrange(raw, 0, -1)]
        elif kind == "set":
            value = sorted(v.decode() for v in await redis.smembers(raw))
        else:
            value = None
        out[key_pattern(key)] = {"key": key, "type": kind, "ttl_ms": await redis.pttl(raw), "value": value}
    return out


def _flatten(value: Any, path: str, out: dict) -> None:
    if isinstance(value, dict):
        if "decoded" in value:  # protobuf: compare decoded fields only, never the bytes
            _flatten(value["decoded"], path + ".decoded", out)
            return
        if "utf8" in value and ("base64" in value or len(value) == 1):
            out[path + ".utf8"] = value["utf8"]
            return
        for k, v in value.items():
            if k in ("rfc3339", "json", "len", "base64", "proto", "wire_fields"):
                continue
            _flatten(v, f"{path}.{k}", out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _flatten(v, f"{path}[{i}]", out)
    else:
        out[path] = value


def _variable(path: str, patterns: list[str]) -> bool:
    for p in patterns:
        rx = "^" + re.escape(p).replace(r"\[\*\]", r"\[\d+\]") + r"($|[.\[])"
        if re.match(rx, path):
            return True
    return False


def compare(fixture_keys: list[dict], ours: dict[str, dict], *, ignore: tuple[str, ...] = ()) -> list[str]:
    """Differences between a fixture step's keys and our dump (empty list: they match)."""
    problems: list[str] = []
    theirs = {k["key_pattern"]: k for k in fixture_keys}
    only_theirs = sorted(set(theirs) - set(ours))
    only_ours = sorted(set(ours) - set(theirs))
    if only_theirs:
        problems.append(f"missing keys: {only_theirs}")
    if only_ours:
        problems.append(f"extra keys: {only_ours}")
    for pattern in sorted(set(theirs) & set(ours)):
        t, o = theirs[pattern], ours[pattern]
        if t["type"] != o["type"]:
            problems.append(f"{pattern}: type {o['type']} != {t['type']}")
            continue
        if (t["ttl_ms"] > 0) != (o["ttl_ms"] > 0):
            problems.append(f"{pattern}: ttl {o['ttl_ms']} vs fixture {t['ttl_ms']}")
        elif t["ttl_ms"] > 0 and "ttl_ms" not in t["variable"] and abs(t["ttl_ms"] - o["ttl_ms"]) > 3000:
            problems.append(f"{pattern}: ttl {o['ttl_ms']} vs fixture {t['ttl_ms']}")
        flat_t: dict = {}
        flat_o: dict = {}
        _flatten(t["value"], "value", flat_t)
        _flatten(o["value"], "value", flat_o)
        skip = list(t["variable"]) + list(ignore)
        flat_t = {k: v for k, v in flat_t.items() if not _variable(k, skip)}
        flat_o = {k: v for k, v in flat_o.items() if not _variable(k, skip)}
        for path in sorted(set(flat_t) | set(flat_o)):
            if flat_t.get(path, "<absent>") != flat_o.get(path, "<absent>"):
                problems.append(f"{pattern} {path}: ours {flat_o.get(path, '<absent>')!r} "
                                f"!= fixture {flat_t.get(path, '<absent>')!r}")
    return problems


def load_fixture(path: Any) -> dict:
    with open(path) as fh:
        return json.load(fh)
