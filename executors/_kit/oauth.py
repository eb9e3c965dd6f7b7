"""OAuth2 client-credentials tokens for `authMethod: oauth2-cc`, cached until shortly before expiry.

Go fetches a token for every check; we keep it per (token URL, client id, secret, scopes, client
auth style, proxy) so a monitor checked every 20 s does not hit the token endpoint every 20 s. The
key is a digest of those fields (the secret is in it, so a monitor with a wrong secret never borrows
another monitor's token; no field of any size is held), and the cache is bounded in bytes of tokens.
Concurrent checks sharing a key wait for one fetch. A 401 answered to a cached token drops
it and the check fetches a new one (see executors.http).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Awaitable, Callable
from urllib.parse import urlencode

from executors._kit import limits as _limits

DEFAULT_LIFETIME = 300.0  # seconds, for a token response without expires_in
MAX_ENTRIES = 1024
MAX_BYTES = 4 << 20  # summed token lengths; an endpoint answering megabyte tokens is not cached


class TokenError(Exception):
    """str(exc) is the whole DOWN message, in the Go worker's words."""


@dataclass(slots=True)
class _Token:
    value: str
    expires: float  # time.monotonic()


_cache = _limits.BoundedCache(MAX_BYTES, MAX_ENTRIES, max_item=256 * 1024)
_inflight: dict[tuple, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}


def cache_key(token_url: str, client_id: str, secret: str, scopes: str, style: str, proxy: object) -> tuple:
    h = hashlib.sha256()
    for part in (token_url, client_id, secret, scopes, str(style == "client_secret_basic"), repr(proxy)):
        data = part.encode("utf-8", "surrogateescape")
        h.update(len(data).to_bytes(8, "big") + data)
    return (h.digest(),)


def request_parts(client_id: str, secret: str, scopes: str, style: str) -> tuple[dict[str, str], bytes]:
    """Extra headers and form body of the token request (url.Values.Encode: keys sorted)."""
    form = {"client_id": client_id, "client_secret": secret, "grant_type": "client_credentials"}
    if scopes:
        form["scope"] = scopes
    body = urlencode(sorted(form.items())).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if style == "client_secret_basic":
        headers["Authorization"] = "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return headers, body


def parse_response(status: int, body: bytes, go_json_error: Callable[[str, ValueError], str]) -> tuple[str, float]:
    """(access token, lifetime in seconds) from the endpoint's answer; TokenError otherwise."""
    if not 200 <= status < 300:
        raise TokenError(f"oauth2 token endpoint returned status: {status}")
    text = body.decode("utf-8", "replace").lstrip(" \t\r\n")
    if not text:
        raise TokenError("failed to parse oauth2 token response: EOF")
    try:
        value, _ = json.JSONDecoder(parse_constant=_reject).raw_decode(text)
    except ValueError as exc:
        raise TokenError(f"failed to parse oauth2 token response: {go_json_error(text, exc)}") from None
    if value is None:
        value = {}
    if not isinstance(value, dict):
        kind = {list: "array", str: "string", bool: "bool"}.get(type(value), "number")
        raise TokenError(f"failed to parse oauth2 token response: json: cannot unmarshal {kind} into Go value of "
                         "type struct { AccessToken string \"json:\\\"access_token\\\"\" }")
    token = value.get("access_token")
    if token is not None and not isinstance(token, str):
        kind = {list: "array", dict: "object", bool: "bool"}.get(type(token), "number")
        raise TokenError(f"failed to parse oauth2 token response: json: cannot unmarshal {kind} into Go struct "
                         "field .access_token of type string")
    if not token:
        raise TokenError("failed to parse oauth2 token response: %!w(<nil>)")
    lifetime = DEFAULT_LIFETIME
    expires_in = value.get("expires_in")
    if isinstance(expires_in, str) and expires_in.strip().isdigit():
        expires_in = int(expires_in)
    if isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool):
        lifetime = float(expires_in)
    return token, lifetime


def _reject(name: str) -> None:
    raise ValueError(f"invalid character '{name[0]}' looking for beginning of value")


def _expiry(lifetime: float) -> float:
    margin = min(60.0, lifetime * 0.1)  # refresh shortly before the server would refuse it
    return time.monotonic() + max(0.0, lifetime - margin)


def cached(key: tuple) -> str | None:
    entry = _cache.get(key)
    if entry is None:
        return None
    if entry.expires <= time.monotonic():
        _cache.pop(key)
        return None
    return entry.value


def invalidate(key: tuple, token: str) -> None:
    entry = _cache.get(key)
    if entry is not None and entry.value == token:
        _cache.pop(key)


async def token(key: tuple, fetch: Callable[[], Awaitable[tuple[str, float]]]) -> tuple[str, bool]:
    """(token, fetched now). One fetch per key at a time; the others wait for its outcome."""
    hit = cached(key)
    if hit is not None:
        return hit, False
    loop = asyncio.get_running_loop()
    running = _inflight.get(key)
    if running is not None and running[0] is loop and not running[1].done():
        value, _ = await asyncio.shield(running[1])
        return value, True
    future: asyncio.Future = loop.create_future()
    _inflight[key] = (loop, future)
    try:
        value, lifetime = await fetch()
    except BaseException as exc:
        if not future.done():
            future.set_exception(exc if isinstance(exc, Exception) else TokenError("token request cancelled"))
            future.exception()  # retrieved: waiters re-raise it, nobody else needs to
        raise
    finally:
        if _inflight.get(key, (None, None))[1] is future:
            _inflight.pop(key, None)
    if lifetime > 0:
        _cache.put(key, _Token(value, _expiry(lifetime)), len(value) + 256)
    if not future.done():
        future.set_result((value, lifetime))
    return value, True


def clear() -> None:
    """Forget every cached token (tests)."""
    _cache.clear()
    _inflight.clear()
