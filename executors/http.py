"""`http`, `https`, `http-keyword`, `http-json-query`: one HTTP(S) exchange judged by status class,
keyword and GJSON query (spec 6.1), like a blackbox_exporter probe.

Every check gets its own client (its own connections, TLS settings, proxy and redirect policy), so
concurrent checks never see each other's settings (the Go worker's data race, spec 6.1.8, D3).
What is shared is immutable or keyed by every setting that matters: SSL contexts and OAuth2 tokens.
Statuses and messages are the Go worker's; library texts imitate Go's net/http (spec 5.6).
Decisions beyond the spec (issue 3): `tls_info` carries the whole chain (issuerCertificate nested),
`valid` tells whether the chain verifies even when `ignore_tls_errors` let the check go on, the
certificate is reported when verification fails, socks4 speaks SOCKS4, the proxy also carries the
OAuth2 token request, tokens are cached, and bodies are kept only up to HTTP_MAX_BODY_BYTES.
The bounds on what a target or a config may cost (body cap, gzip inflated only up to it, keyword and
JSON work through `_limits.offload`, caches bounded in bytes) live in executors/_kit/limits.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit, urlunsplit

from executors import DOWN, UP, VERSION, Monitor, Result, instant
from executors._kit.gojson import decode_config, go_json_error, reject_json_constant as _reject_constant
from executors._kit.gojson import string_map as _string_map  # also the websocket executor's `headers`
from executors._kit.gotext import canonical_key
from executors._kit import gjson as _gjson, limits as _limits, oauth as _oauth, tls as _tls
from executors._kit.http1 import (GoError, Proxy, Response, Session, Timings, TLSState, URL, check_target, go_quote,
                              parse_url, proxy_from_task, redact)

SCHEMA = {
    "url": str, "method": str, "headers": str, "encoding": str, "body": str, "accepted_statuscodes": list,
    "max_redirects": int, "ignore_tls_errors": bool, "check_cert_expiry": bool, "keyword": str,
    "invert_keyword": bool, "json_query": str, "json_condition": str, "expected_value": str, "authMethod": str,
    "basic_auth_user": str, "basic_auth_pass": str, "authDomain": str, "authWorkstation": str,
    "oauth_auth_method": str, "oauth_token_url": str, "oauth_client_id": str, "oauth_client_secret": str,
    "oauth_scopes": str, "tlsCert": str, "tlsKey": str, "tlsCa": str,
}
USER_AGENT = f"peekaping/{VERSION}"
CONTENT_TYPES = {"json": "application/json", "form": "application/x-www-form-urlencoded",
                 "xml": "application/xml", "text": "text/plain"}
STATUS_CLASSES = {"2XX": 2, "3XX": 3, "4XX": 4, "5XX": 5}  # the executor never matches 1XX
REDIRECTS = frozenset((301, 302, 303, 307, 308))
SENSITIVE = frozenset(("Authorization", "Www-Authenticate", "Cookie", "Cookie2"))
DEFAULT_MAX_BODY = _limits.DEFAULT_MAX_BODY
max_body_bytes = _limits.max_body_bytes  # HTTP_MAX_BODY_BYTES: how much of a body keyword and JSON checks see
BODY_TIMEOUT = ("Failed to read response body: context deadline exceeded "
                "(Client.Timeout or context cancellation while reading body)")

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


async def check(monitor: Monitor, proxy: dict | None, budget: float) -> Result:
    plan = _plan(monitor.config)
    _limits.trim_soon(len(monitor.config))
    if plan.error is not None:
        return instant(DOWN, plan.error)
    return await _Check(monitor.type, plan, proxy_from_task(proxy)).run(budget)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a config asks for, decided once per distinct config (a monitor sends the same one every
    interval): the decoded fields, the request, and any DOWN message known before sending."""
    cfg: dict
    error: str | None = None
    method: str = "GET"
    url: URL | None = None
    header: dict = field(default_factory=dict)  # copied per check, never modified
    body: bytes | None = None
    tls: _tls.TLSSettings = _tls.TLSSettings()
    ntlm: bool = False
    oauth: bool = False


# A plan holds about three copies of its config (the text as key, the decoded fields, the body bytes):
# bounded in bytes, and a config over ~85 KiB is planned per check rather than held.
_plans = _limits.BoundedCache(max_bytes=8 << 20, max_entries=2048, max_item=256 * 1024)


def _plan(config: str) -> _Plan:
    """The plan of a config, from the cache when it was seen recently."""
    return _plans.get_or_make(config, lambda: _make_plan(config), 3 * len(config) + 2048)


def _make_plan(config: str) -> _Plan:
    """Steps 1-5 and 7 of spec 6.1.2 up to sending. ConfigError propagates (and is not cached)."""
    cfg = decode_config(config, SCHEMA, "HTTPConfig")
    method = cfg["method"] or "GET"
    if not _TOKEN.match(method):
        return _Plan(cfg, f"net/http: invalid method {go_quote(method)}")
    try:
        url = parse_url(cfg["url"])
    except GoError as exc:
        return _Plan(cfg, str(exc))
    header = {"User-Agent": USER_AGENT, "Accept": "*/*"}
    if cfg["headers"]:
        try:
            custom = _string_map(cfg["headers"])
        except ValueError as exc:
            return _Plan(cfg, f"invalid headers json: {exc}")
        for name, value in custom.items():
            header[canonical_key(name)] = value
    content_type = CONTENT_TYPES.get(cfg["encoding"])
    if content_type:
        header["Content-Type"] = content_type
    auth = cfg["authMethod"]
    verify = not cfg["ignore_tls_errors"]
    tls = _tls.TLSSettings(verify=verify)
    ntlm = oauth = False
    if auth == "basic":
        header["Authorization"] = _basic(cfg["basic_auth_user"], cfg["basic_auth_pass"])
    elif auth == "ntlm":
        user = f"{cfg['authDomain']}\\{cfg['basic_auth_user']}" if cfg["authDomain"] else cfg["basic_auth_user"]
        header["Authorization"] = _basic(user, cfg["basic_auth_pass"])
        ntlm = True
    elif auth == "oauth2-cc":
        oauth = True
    elif auth == "mtls":
        try:
            _tls.check_client_pair(cfg["tlsCert"], cfg["tlsKey"])
        except ValueError as exc:
            return _Plan(cfg, f"invalid mTLS cert/key: {exc}")
        if not _tls.has_ca_cert(cfg["tlsCa"]):
            return _Plan(cfg, "invalid mTLS CA cert")
        tls = _tls.TLSSettings(verify, cfg["tlsCa"], cfg["tlsCert"], cfg["tlsKey"])
    body = cfg["body"].encode("utf-8", "surrogateescape") if cfg["body"] else None
    return _Plan(cfg, None, method, url, header, body, tls, ntlm, oauth)


# --------------------------------------------------------------------------------------------------
# Go's small renderings

def _op(method: str) -> str:
    """url.Error's Op: the method with everything after the first letter lower-cased (`Get`)."""
    return method[:1] + method[1:].lower() if method else "Get"


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode("utf-8", "surrogateescape")).decode()


def _referer(url: URL) -> str:
    """The previous URL without user info or fragment (Go's refererForURL)."""
    parts = urlsplit(url.raw)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _same_site(initial: str, dest: str) -> bool:
    """isDomainOrSubdomain(dest, initial): may Authorization follow a redirect to dest."""
    if dest == initial:
        return True
    if ":" in dest or "%" in dest:
        return False
    return dest.endswith("." + initial)


# --------------------------------------------------------------------------------------------------
# The client: Go's http.Client.Do (redirect policy) over one Session, plus the NTLM negotiator

class _Client:
    def __init__(self, session: Session, max_redirects: int | None, ntlm: bool = False) -> None:
        self.session = session
        self.max_redirects = max_redirects  # None: Go's default client (stops after 10)
        self.ntlm = ntlm
        self.last_tls: TLSState | None = None
        self.current: URL | None = None

    async def do(self, method: str, url: URL, header: dict[str, str], body: bytes | None
                 ) -> tuple[Response | None, str | None]:
        """(final response, None) or (None, Go's `<Op> "<url>": <cause>` error text)."""
        op = _op(method)
        reqs, strip = 0, False
        prev: URL | None = None
        cur_method, cur_url, cur_body = method, url, body
        while True:
            self.current = cur_url
            hdr = header
            if strip:
                hdr = {k: v for k, v in hdr.items() if k not in SENSITIVE}
            if prev is not None:
                hdr = dict(hdr)
                if not (prev.scheme == "https" and cur_url.scheme == "http") and "Referer" not in header:
                    hdr["Referer"] = _referer(prev)
            try:
                resp = await self._hop(cur_method, cur_url, hdr, cur_body)
            except GoError as exc:
                if self.session.failed_tls is not None:
                    self.last_tls = self.session.failed_tls
                return None, f"{op} {go_quote(cur_url.text)}: {exc}"
            reqs += 1
            if resp.conn.tls is not None:
                self.last_tls = resp.conn.tls
            self.session.failed_tls = None
            if resp.status not in REDIRECTS:
                return resp, None
            location = resp.header("Location")
            if not location:
                return resp, None
            try:
                try:
                    joined = urljoin(cur_url.raw, location)
                except ValueError:
                    joined = location  # unparsable: parse_url words the error
                nxt = parse_url(joined)
            except GoError as exc:
                await self._recycle(resp)
                return None, f"{op} {go_quote(cur_url.text)}: failed to parse Location header {go_quote(location)}: {exc}"
            if resp.status in (301, 302, 303):
                nxt_method = cur_method if cur_method in ("GET", "HEAD") else "GET"
                nxt_body = None
            else:
                nxt_method, nxt_body = cur_method, body
            problem = None
            if self.max_redirects is None:
                if reqs >= 10:
                    problem = "stopped after 10 redirects"
            elif self.max_redirects == 0:
                problem = "redirects disabled: max_redirects set to 0"
            elif reqs > self.max_redirects:
                problem = f"too many redirects: followed {reqs} redirects, maximum allowed is {self.max_redirects}"
            await self._recycle(resp)
            if problem:
                return None, f"{op} {go_quote(location)}: {problem}"
            if not strip and nxt.hostport != url.hostport and not _same_site(url.host, nxt.host):
                strip = True  # once the chain leaves the site, credentials stay behind (Go 1.24)
            prev, cur_method, cur_url, cur_body = cur_url, nxt_method, nxt, nxt_body

    async def _recycle(self, resp: Response, limit: int = 2048) -> None:
        await resp.discard(limit)
        self.session.release(resp)

    async def _hop(self, method: str, url: URL, header: dict[str, str], body: bytes | None) -> Response:
        """One request (Go's Client.send + Transport.RoundTrip checks), NTLM legs included."""
        check_target(url)
        for name, value in header.items():
            if not _TOKEN.match(name):
                raise GoError(f"net/http: invalid header field name {go_quote(name)}")
            if _BAD_VALUE.search(value):
                raise GoError(f"net/http: invalid header field value for {go_quote(name)}")
        if url.user is not None and "Authorization" not in header:
            header = {**header, "Authorization": _basic(*url.user)}
        gzip = method != "HEAD" and "Accept-Encoding" not in header and "Range" not in header
        if self.ntlm and header.get("Authorization", "").startswith("Basic "):
            resp = await self._ntlm(method, url, header, body, gzip)
        else:
            resp = await self.session.round_trip(method, url, header, body, gzip)
        resp.gzip = gzip and (resp.header("Content-Encoding") or "").lower() == "gzip"
        return resp

    async def _ntlm(self, method: str, url: URL, header: dict[str, str], body: bytes | None,
                    gzip: bool) -> Response:
        """go-ntlmssp's Negotiator: anonymous first, then Basic or the NTLM handshake on one connection."""
        rt = self.session.round_trip
        basic = header["Authorization"]
        hdr = {k: v for k, v in header.items() if k != "Authorization"}
        resp = await rt(method, url, hdr, body, gzip)
        if resp.status != 401:
            return resp
        offers = resp.header_values("Www-Authenticate")
        if not _offers(offers, "NTLM") and not _offers(offers, "Negotiate"):
            await self._recycle(resp, DEFAULT_MAX_BODY)
            hdr["Authorization"] = basic
            resp = await rt(method, url, hdr, body, gzip)
            if resp.status != 401:
                return resp
            offers = resp.header_values("Www-Authenticate")
        if not _offers(offers, "NTLM") and not _offers(offers, "Negotiate"):
            return resp
        await self._recycle(resp, DEFAULT_MAX_BODY)
        scheme = "NTLM" if _offers(offers, "NTLM") else "Negotiate"
        user, _, password = base64.b64decode(basic[6:]).decode("utf-8", "surrogateescape").partition(":")
        import spnego  # only NTLM monitors pay for importing it

        context = spnego.client(user, password, hostname="unspecified", service="HTTP", protocol="ntlm")
        hdr["Authorization"] = f"{scheme} {base64.b64encode(context.step()).decode()}"
        resp = await rt(method, url, hdr, body, gzip)
        offers = resp.header_values("Www-Authenticate")
        challenge = _challenge(offers)
        if not (_offers(offers, "NTLM") or _offers(offers, "Negotiate")) or not challenge:
            return resp  # negotiation failed: the client judges this response
        await self._recycle(resp, DEFAULT_MAX_BODY)
        try:
            answer = context.step(challenge)
        except Exception as exc:
            raise GoError(f"ntlm: {type(exc).__name__}") from None
        hdr["Authorization"] = f"{scheme} {base64.b64encode(answer or b'').decode()}"
        return await rt(method, url, hdr, body, gzip)


def _offers(values: list[str], scheme: str) -> bool:
    return any(v.startswith(scheme) for v in values)


def _challenge(values: list[str]) -> bytes | None:
    for value in values:
        if value.startswith(("NTLM", "Negotiate")):
            parts = value.split(" ")
            if len(parts) < 2:
                return None
            try:
                return base64.b64decode(parts[1], validate=True)
            except ValueError:
                raise GoError("illegal base64 data at input byte 0") from None
    return None


# --------------------------------------------------------------------------------------------------
# One check

class _Check:
    def __init__(self, monitor_type: str, plan: _Plan, proxy: Proxy | None) -> None:
        self.type = monitor_type
        self.plan = plan
        self.cfg = plan.cfg
        self.proxy = proxy
        self.timings = Timings()
        self.phase = "setup"
        self.start_ns = 0
        self.end_ns = 0
        self.op = _op(plan.method)
        self.client: _Client | None = None
        self.token_url_text = ""

    async def run(self, budget: float) -> Result:
        plan = self.plan
        assert plan.url is not None
        if plan.tls.cert_pem is not None:
            try:
                _tls.client_context(plan.tls)  # built (and cached) now so OpenSSL's refusal is a config error
            except Exception as exc:  # OpenSSL refused a pair that passed our checks
                return instant(DOWN, f"invalid mTLS cert/key: tls: {type(exc).__name__}")
        session = Session(plan.tls, self.proxy, self.timings, USER_AGENT)
        self.client = _Client(session, self.cfg["max_redirects"], plan.ntlm)
        try:
            async with asyncio.timeout(max(budget, 0.0)):
                return await self._run(plan.method, plan.url, dict(plan.header), plan.body, plan.oauth)
        except TimeoutError:
            return self._timed_out()
        finally:
            await session.aclose()

    async def _run(self, method: str, url: URL, header: dict[str, str], body: bytes | None, oauth: bool) -> Result:
        client = self.client
        assert client is not None
        token, fresh, key = "", False, ()
        if oauth:
            key = self._token_key()
            try:
                token, fresh = await self._bearer(key, header)
            except _oauth.TokenError as exc:
                return instant(DOWN, str(exc))
        self.phase = "request"
        self.start_ns = time.time_ns()
        resp, error = await client.do(method, url, header, body)
        if oauth and resp is not None and resp.status == 401 and not fresh:
            _oauth.invalidate(key, token)  # revoked or rotated before its time: fetch once more
            await client._recycle(resp)
            self.phase = "oauth"
            try:
                token, fresh = await self._bearer(key, header)
            except _oauth.TokenError as exc:
                return instant(DOWN, str(exc))
            self.phase = "request"
            client.last_tls = None
            self.start_ns = time.time_ns()
            resp, error = await client.do(method, url, header, body)
        # Go's end: the final response head received (the moment its last byte arrived), or the failure
        self.end_ns = resp.head_ns if resp is not None and error is None else time.time_ns()
        if error is not None or resp is None:
            return self._result(DOWN, error or "EOF")
        code = resp.status
        classes = {STATUS_CLASSES.get(c) for c in self.cfg["accepted_statuscodes"]}
        if code // 100 not in classes:
            return self._result(DOWN, f"HTTP request failed with status: {code}")
        keyword = self.cfg["keyword"]
        json_step = self.type == "http-json-query"
        self.phase = "body"
        try:
            data = await resp.read_body(max_body_bytes() if keyword or json_step else 0, resp.gzip, self.timings)
        except GoError as exc:
            return self._result(DOWN, f"Failed to read response body: {exc}")
        client.session.release(resp)
        _limits.trim_soon(len(data))
        if keyword:
            found = await _limits.offload(_contains, data, keyword.encode("utf-8", "surrogateescape"))
            if self.cfg["invert_keyword"] and found:
                return self._result(DOWN, f"Keyword check failed: keyword '{keyword}' found in response (expected absent)")
            if not self.cfg["invert_keyword"] and not found:
                return self._result(DOWN, f"Keyword check failed: keyword '{keyword}' not found in response")
        if json_step:
            q, c, v = self.cfg["json_query"], self.cfg["json_condition"], self.cfg["expected_value"]
            passed, problem = await _limits.offload(_json_step, data, q, c, v)
            if problem is not None:
                return self._result(DOWN, f"JSON query validation error: {problem}")
            if not passed:
                return self._result(DOWN, f"JSON query validation failed: query '{q}' with condition '{c or '=='}' "
                                          f"and expected value '{v}'")
        return self._result(UP, f"{code} - {resp.status_text}")

    def _result(self, status: int, message: str) -> Result:
        return Result(status, message, self.start_ns, self.end_ns, self._tls_info(), self.timings.as_ms())

    def _tls_info(self) -> dict | None:
        """Spec 4.4: only for `https://` URLs; from the last TLS round trip (or failed handshake)."""
        if not self.cfg["url"].startswith("https://") or self.client is None or self.client.last_tls is None:
            return None
        return self.client.last_tls.info()

    def _timed_out(self) -> Result:
        now = time.time_ns()
        if self.phase == "oauth":
            return instant(DOWN, f"failed to get oauth2 token: Post {go_quote(self.token_url_text)}: "
                                 "context deadline exceeded")
        if self.phase == "body":
            return self._result(DOWN, BODY_TIMEOUT)
        self.start_ns = self.start_ns or now
        self.end_ns = now
        current = self.client.current if self.client else None
        where = current.text if current is not None else redact(self.cfg["url"])
        return self._result(DOWN, f"{self.op} {go_quote(where)}: context deadline exceeded "
                                  "(Client.Timeout exceeded while awaiting headers)")

    # --- OAuth2 client credentials ------------------------------------------------------------------
    def _token_key(self) -> tuple:
        cfg = self.cfg
        self.phase = "oauth"
        self.token_url_text = redact(cfg["oauth_token_url"])
        return _oauth.cache_key(cfg["oauth_token_url"], cfg["oauth_client_id"], cfg["oauth_client_secret"],
                                cfg["oauth_scopes"], cfg["oauth_auth_method"], self.proxy)

    async def _bearer(self, key: tuple, header: dict[str, str]) -> tuple[str, bool]:
        """Put a (cached or fresh) token into `header`; returns (token, fetched just now)."""
        token, fresh = await _oauth.token(key, self._fetch_token)
        header["Authorization"] = "Bearer " + token
        return token, fresh

    async def _fetch_token(self) -> tuple[str, float]:
        """POST the client-credentials grant: through the monitor's proxy, always verifying TLS."""
        cfg = self.cfg
        try:
            url = parse_url(cfg["oauth_token_url"])
        except GoError as exc:
            raise _oauth.TokenError(f"failed to create oauth2 token request: {exc}") from None
        extra, body = _oauth.request_parts(cfg["oauth_client_id"], cfg["oauth_client_secret"], cfg["oauth_scopes"],
                                           cfg["oauth_auth_method"])
        header = {"User-Agent": USER_AGENT, "Accept": "*/*", **extra}
        session = Session(_tls.TLSSettings(verify=True), self.proxy, Timings(), USER_AGENT)
        try:
            resp, error = await _Client(session, None).do("POST", url, header, body)
            if error is not None or resp is None:
                raise _oauth.TokenError(f"failed to get oauth2 token: {error}")
            if not 200 <= resp.status < 300:
                raise _oauth.TokenError(f"oauth2 token endpoint returned status: {resp.status}")
            try:
                data = await resp.read_body(DEFAULT_MAX_BODY, resp.gzip)
            except GoError as exc:
                raise _oauth.TokenError(f"failed to parse oauth2 token response: {exc}") from None
            return await _limits.offload(_oauth.parse_response, resp.status, data, go_json_error)
        finally:
            await session.aclose()


# --------------------------------------------------------------------------------------------------
# JSON query (spec 6.1.7)

def _canonical(text: str) -> str | None:
    """Go's json.Unmarshal into interface{} then json.Marshal (keys sorted, numbers as float64)."""
    try:
        value = json.loads(text, parse_int=float, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _contains(data: bytearray, keyword: bytes) -> bool:
    return keyword in data  # one C search, linear in the body (which the cap bounds)


def _json_step(data: bytearray, query: str, cond: str, expected: str) -> tuple[bool, str | None]:
    """Decode and query a body: work whose cost a target decides, so it runs under `_limits.offload`."""
    return json_check(data.decode("utf-8", "surrogateescape"), query, cond, expected)


def json_check(body: str, query: str, cond: str, expected: str) -> tuple[bool, str | None]:
    """(passed, error text). Mirrors the Go executor's checkJSONQuery."""
    if not query and not expected and not cond:
        return True, None
    if not query:
        if expected:
            op = cond or "=="
            mine, theirs = _canonical(body), _canonical(expected)
            if mine is not None and theirs is not None:
                if op == "==":
                    return mine == theirs, None
                if op == "!=":
                    return mine != theirs, None
                return False, (f"unsupported condition '{cond}' for full JSON comparison: "
                               "only '==' and '!=' are supported")
            if op == "==":
                return body == expected, None
            if op == "!=":
                return body != expected, None
            return False, f"unsupported condition '{cond}' for non-JSON comparison: only '==' and '!=' are supported"
        actual = body
    else:
        result = _gjson.get(body, query)
        if not result.exists():
            return False, f"JSON query path not found: {query}"
        if not expected and not cond:
            return True, None
        actual = result.string()
    op = cond or "=="
    if op == "==":
        return actual == expected, None
    if op == "!=":
        return actual != expected, None
    if op in (">", "<", ">=", "<="):
        a, a_ok = _gjson.go_parse_float(actual)
        b, b_ok = _gjson.go_parse_float(expected)
        if not (a_ok and b_ok):
            a, b = actual.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")  # type: ignore[assignment]
        return {">": a > b, "<": a < b, ">=": a >= b, "<=": a <= b}[op], None
    return False, f"unsupported condition: {cond}"
