"""Secrets masked out of a monitor's config before the worker writes it back in a result.

The ingest task carries the task's config as `monitor_config`. Peekaping's ingester does not read it,
and a result sits in Redis for an hour after it is ingested, so passwords, passphrases, tokens and keys
are replaced with `xxxxx` there (Go's `URL.Redacted` mask): values of secret-named fields, the password
of every `scheme://user:password@host` URL and every `Password=...;` pair of a connection string. A
config with nothing to mask is returned unchanged, byte for byte.
"""

from __future__ import annotations

import json
import re
from typing import Any

from executors._kit.limits import BoundedCache

MASK = "xxxxx"
# Field names that hold a secret: password, passwd, pass, secret, token, community (SNMP), a key
# (`tls_key`, `clientKey`, `key`) but not `keyword` or `key_path`-like names.
_SECRET_FIELD = re.compile(r"(?i)(pass(word|wd)?|secret|token|community|credentials?)$|(^|_)key$|"
                           r"(client|private|tls|api|access|sasl)_?key$|^(pass(word)?|secret|token)")
# Linear on hostile text: a scheme starts only where no scheme character precedes it, and is at most 32
# characters long.
_URL_PASSWORD = re.compile(r"(?<![A-Za-z0-9+.-])(?P<head>[A-Za-z][A-Za-z0-9+.-]{0,31}://[^/?#@:\s]*:)"
                           r"(?P<password>[^/?#@\s]*)(?=@)")
_PAIR_PASSWORD = re.compile(r"(?i)(?P<head>(?:^|;)\s*(?:password|pwd)\s*=\s*)(?P<password>[^;]*)")
_QUERY_PASSWORD = re.compile(r"(?i)(?P<head>[?&](?:password|sslpassword)=)(?P<password>[^&#]*)")
# A cheap first look: a config without any of these cannot hold a secret this module would mask.
_HINT = re.compile(r"(?i)pass|pwd|secret|token|community|key|credential|@")


# The same monitors come back every interval; configs over 16 KiB are masked afresh each time (a burst of
# large distinct configs must not stay in memory).
_cache = BoundedCache(max_bytes=4 << 20, max_entries=1024, max_item=48 << 10)
_CACHED_UP_TO = 16 << 10


_HINTS = ("pass", "Pass", "PASS", "pwd", "Pwd", "PWD", "secret", "Secret", "SECRET", "token", "Token", "TOKEN",
          "community", "Community", "key", "Key", "KEY", "credential", "Credential", "@")


def masked_config(config: str) -> str:
    """`config` with its secrets replaced by `xxxxx` (the same string when there are none)."""
    if not config:
        return config
    if len(config) > _PARSED_UP_TO:
        return _masked_large(config)
    if not _HINT.search(config):
        return config
    if len(config) > _CACHED_UP_TO:
        return _masked(config)
    found = _cache.get(config)
    if found is None:
        found = _masked(config)
        _cache.put(config, found, 2 * len(config) + (len(found) if found is not config else 0) + 200)
    return found


def _masked_large(config: str) -> str:
    """A config of megabytes, masked as text without copying it unless there is a secret: a JSON parse,
    a lower-cased copy or a rebuilt string per check would churn the heap (and hold the event loop)."""
    if not any(hint in config for hint in _HINTS):
        return config
    spans = [m.span("value") for m in _FIELD_TEXT.finditer(config)
             if m.end("value") > m.start("value") and _SECRET_FIELD.search(m["name"])]
    if spans:
        parts, at = [], 0
        for start, end in spans:
            parts += [config[at:start], MASK]
            at = end
        parts.append(config[at:])
        config = "".join(parts)
    if ("@" in config and "://" in config) or "assword" in config or "ASSWORD" in config or "wd=" in config \
            or "WD=" in config:
        config = _mask_text(config)
    return config


# A config this large is masked as text (a JSON parse and re-encode of megabytes would hold the event loop).
_PARSED_UP_TO = 64 << 10
_FIELD_TEXT = re.compile(r'"(?P<name>[A-Za-z0-9_]{1,64})"\s*:\s*"(?P<value>[^"\\]*(?:\\.[^"\\]*)*)"')


def _masked(config: str) -> str:
    try:
        document = json.loads(config)
        masked, changed = _walk(document, "")
    except (ValueError, RecursionError):
        return _mask_text(config)  # not JSON (or nested past the recursion limit): mask it as text
    if not changed:
        return config
    return json.dumps(masked, ensure_ascii=False, separators=(",", ":"))


def _walk(value: Any, field: str) -> tuple[Any, bool]:
    if isinstance(value, str):
        if value and _SECRET_FIELD.search(field):
            return MASK, True
        text = _mask_text(value)
        return text, text != value
    if isinstance(value, dict):
        out, changed = {}, False
        for key, item in value.items():
            out[key], hit = _walk(item, key)
            changed |= hit
        return out, changed
    if isinstance(value, list):
        items = [_walk(item, field) for item in value]
        return [item for item, _ in items], any(hit for _, hit in items)
    return value, False


def _mask_text(text: str) -> str:
    if "@" in text and "://" in text:
        text = _URL_PASSWORD.sub(_masked_match, text)
    if "=" in text:
        lowered = text.lower()
        if "password" in lowered or "pwd" in lowered:
            text = _PAIR_PASSWORD.sub(_masked_match, text)
            text = _QUERY_PASSWORD.sub(_masked_match, text)
    return text


def _masked_match(m: re.Match) -> str:
    return m["head"] + (MASK if m["password"] else "")
