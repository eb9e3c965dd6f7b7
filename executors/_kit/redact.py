"""Secrets masked out of a monitor's config before the worker writes it back in a result.

The ingest task carries the task's config as `monitor_config`. Peekaping's ingester does not read it,
and a result sits in Redis for an hour after it is ingested, so passwords, passphrases, tokens and keys
are replaced with `xxxxx` there (Go's `URL.Redacted` mask): values of secret-named fields, the password
of every `scheme://user:password@host` URL and every `Password=...;` pair of a connection string. A
config with nothing to mask is returned unchanged, byte for byte.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

MASK = "xxxxx"
# Field names that hold a secret: password, passwd, pass, secret, token, community (SNMP), a key
# (`tls_key`, `clientKey`, `key`) but not `keyword` or `key_path`-like names.
_SECRET_FIELD = re.compile(r"(?i)(pass(word|wd)?|secret|token|community|credentials?)$|(^|_)key$|"
                           r"(client|private|tls|api|access|sasl)_?key$|^(pass(word)?|secret|token)")
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/?#@:\s]*:)(?P<password>[^/?#@\s]*)(?=@)")
_PAIR_PASSWORD = re.compile(r"(?i)(?P<head>(?:^|;)\s*(?:password|pwd)\s*=\s*)(?P<password>[^;]*)")
_QUERY_PASSWORD = re.compile(r"(?i)(?P<head>[?&](?:password|sslpassword)=)(?P<password>[^&#]*)")
# A cheap first look: a config without any of these cannot hold a secret this module would mask.
_HINT = re.compile(r"(?i)pass|pwd|secret|token|community|key|credential|@")


def masked_config(config: str) -> str:
    """`config` with its secrets replaced by `xxxxx` (the same string when there are none)."""
    if not config or not _HINT.search(config):
        return config
    return _masked(config)


@functools.lru_cache(maxsize=1024)  # the same monitors come back every interval
def _masked(config: str) -> str:
    try:
        document = json.loads(config)
    except (ValueError, RecursionError):
        return _mask_text(config)  # not JSON: mask what a connection string would show
    masked, changed = _walk(document, "")
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
    for pattern in (_URL_PASSWORD, _PAIR_PASSWORD, _QUERY_PASSWORD):
        text = pattern.sub(lambda m: m["head"] + (MASK if m["password"] else ""), text)
    return text
