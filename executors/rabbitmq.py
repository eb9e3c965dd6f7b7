"""`rabbitmq`: ask each node's management API for its alarms health check, in order; UP on the first 200.

The request is Go's: `GET <node>/api/health/checks/alarms/` with Basic auth and `Accept:
application/json`, TLS verified against the system roots (SSL_CERT_FILE / SSL_CERT_DIR honoured),
HTTP_PROXY / HTTPS_PROXY / NO_PROXY honoured as Go's ProxyFromEnvironment does (loopback targets are
never proxied), the monitor's proxy not used. It runs on the project's HTTP/1.1 client
(executors/_kit/http1.py): one GET per node needs nothing more, and the client brings Go's error texts,
bounded reads and I/O timestamps.

Time: the check ends within its budget. Each node gets a fair share of what is left: the time left
divided by the number of nodes still to ask (this one included), so a node that accepts and never
answers costs at most its share, a node that fails fast hands its unused share on, and the last node
gets all that is left. A node that runs out of its share fails with Go's `context deadline exceeded`.

ping_ms runs from just before the first node is asked to the arrival of the last byte of the response
that decided the result (or the moment the last node failed). Phase timings (dns, connect, tls, ttfb,
transfer) are summed over the nodes asked.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ipaddress
import json
import os
import posixpath
import re
import ssl
import time
from urllib.parse import unquote, urlsplit

from executors import DOWN, UP, VERSION, Monitor, Result
from executors._kit import tls as _tls
from executors._kit.gojson import clean_text, decode_config, reject_json_constant
from executors._kit.gotext import os_error_text
from executors._kit.http1 import URL, GoError, Proxy, Session, Timings, check_target, go_quote, parse_url, redact

SCHEMA = {"nodes": list, "username": str, "password": str}  # Go's RabbitMQConfig
FIELDS = {  # field -> what it means (for `peekaping-worker types`)
    "nodes": "management API base URLs, asked in order until one is healthy, e.g. [\"https://node1:15672\"]",
    "username": "management API user (Basic auth)",
    "password": "management API password (Basic auth)",
}
SUMMARY = ("ask each node's management API (/api/health/checks/alarms/) in order; UP on the first node "
           "without alarms, DOWN with the last node's error when none is healthy")
EXAMPLES = {"rabbitmq": ({"nodes": ["http://127.0.0.1:15672"], "username": "guest", "password": "guest"}, "UP",
                         "when the management API on 127.0.0.1:15672 reports no alarms")}

HEALTH_PATH = "api/health/checks/alarms/"
USER_AGENT = f"peekaping/{VERSION}"
REASON_BODY_MAX = 1 << 20  # of a 503 body, this much is parsed for `reason`; the rest is read and dropped
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_BARE_USERINFO = re.compile(r"(?<![^\s\"])([^\s\"/?#@:]*:)(?!//)[^\s\"/?#@]*@")  # user:pw@ not after scheme://


async def check(monitor: Monitor, proxy: dict | None, budget: float) -> Result:
    """Go's RabbitMQExecutor.Execute. The monitor's proxy is not used (as in Go)."""
    cfg = decode_config(monitor.config, SCHEMA, "RabbitMQConfig")
    return await _Probe(cfg, monitor.timeout).run(budget)


# --------------------------------------------------------------------------------------------------
# The health URL of a node: Go's url.JoinPath(node + "/", "api/health/checks/alarms/")

def health_url(node: str) -> str:
    """The URL asked for `node`; ValueError with the node error Go records when it cannot be built."""
    base = node if node.endswith("/") else node + "/"
    try:
        parse_url(base)  # url.Parse's errors
        _colon_check(base)
    except GoError as exc:
        raise ValueError(f"invalid URL construction for node {hide_password(node)}: {hide_password(str(exc))}") from None
    rest, hash_mark, fragment = base.partition("#")
    rest, question, query = rest.partition("?")
    scheme = _SCHEME.match(rest)
    prefix = scheme.group(0) if scheme else ""
    after = rest[len(prefix):]
    if prefix and not after.startswith("/"):
        return base  # an opaque URL (`host:15672/` reads as scheme `host`): JoinPath leaves it as it is
    authority = after.startswith("//")
    if authority:
        end = after.find("/", 2)
        end = len(after) if end < 0 else end
        prefix, after = prefix + after[:end], after[end:]
    path = _join(after)
    if authority and not path.startswith("/"):
        path = "/" + path
    return prefix + path + question + query + hash_mark + fragment


def hide_password(text: str) -> str:
    """`text` with the password of a URL's user info replaced by *** (Go's stripPassword), also where Go
    would print it: in parse errors and URLs without `//` (`user:pw@host:15672`)."""
    return _BARE_USERINFO.sub(r"\1***@", redact(text))


def _colon_check(base: str) -> None:
    """url.Parse refuses a scheme-less URL whose first path segment holds a colon (`127.0.0.1:15672/`)."""
    if _SCHEME.match(base) or base.startswith("/"):
        return
    if ":" in base.split("/", 1)[0]:
        raise GoError(f"parse {go_quote(base)}: first path segment in URL cannot contain colon")


def _join(path: str) -> str:
    """path.Join(path, HEALTH_PATH) as URL.JoinPath does it: cleaned, relative stays relative, the
    trailing slash kept."""
    if path.startswith("/"):
        joined = _clean(path + "/" + HEALTH_PATH)
    else:
        joined = _clean("/" + path + "/" + HEALTH_PATH)[1:]
    return joined if joined.endswith("/") else joined + "/"


def _clean(path: str) -> str:
    """Go's path.Clean of an absolute path (Python keeps a leading `//`, Go does not)."""
    cleaned = posixpath.normpath(path)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


# --------------------------------------------------------------------------------------------------
# Go's ProxyFromEnvironment (golang.org/x/net/http/httpproxy)

def env_proxy(url: URL) -> Proxy | None:
    """The proxy Go's default transport would use for `url`, from the environment (read per check)."""
    names = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy")
    rules = _proxy_rules(tuple(os.environ.get(name) for name in names))
    proxy = rules[1] if url.scheme == "https" else rules[0] if url.scheme == "http" else None
    if proxy is None or not _use_proxy(rules[2], url.host.lower(), url.port):
        return None
    return proxy


@functools.lru_cache(maxsize=8)
def _proxy_rules(values: tuple) -> tuple[Proxy | None, Proxy | None, tuple]:
    http_value, https_value, no_value = values[0] or values[1], values[2] or values[3], values[4] or values[5]
    return _parse_proxy(http_value or ""), _parse_proxy(https_value or ""), _no_proxy_rules(no_value or "")


def _parse_proxy(value: str) -> Proxy | None:
    """A proxy setting as Go reads it: `host:port` means http://host:port; a bad value is ignored."""
    if not value:
        return None
    for raw in (value, "http://" + value):
        try:
            parts = urlsplit(raw)
            port = parts.port
        except ValueError:
            continue
        if not parts.scheme or not parts.hostname:
            continue
        scheme = parts.scheme.lower()
        kind = {"https": "https", "socks5": "socks5", "socks5h": "socks5"}.get(scheme, "http")
        default = {"https": 443, "socks5": 1080}.get(kind, 80)
        user = unquote(parts.username) if parts.username is not None else None
        password = unquote(parts.password or "") if user is not None else None
        return Proxy(kind, parts.hostname, port or default, user, password)
    return None


def _no_proxy_rules(value: str) -> tuple:
    """NO_PROXY as httpproxy parses it: `*`, IPs and CIDRs, domains (with subdomains), each with a port."""
    rules: list[tuple] = []
    for item in value.split(","):
        item = item.strip().lower()
        if not item:
            continue
        if item == "*":
            return (("all",),)
        if "/" in item:
            try:
                rules.append(("cidr", ipaddress.ip_network(item, strict=False)))
                continue
            except ValueError:
                pass
        host, port = item, ""
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
        elif item.count(":") == 1:
            host, _, port = item.partition(":")
        if not host:
            continue
        try:
            rules.append(("ip", ipaddress.ip_address(host), port))
            continue
        except ValueError:
            pass
        if host.startswith("*."):
            host = host[1:]
        exact = not host.startswith(".")
        rules.append(("domain", host if not exact else "." + host, port, exact))
    return tuple(rules)


def _use_proxy(rules: tuple, host: str, port: int) -> bool:
    if host == "localhost":
        return False
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None and ip.is_loopback:
        return False
    for rule in rules:
        kind = rule[0]
        if kind == "all":
            return False
        if kind == "cidr" and ip is not None and ip.version == rule[1].version and ip in rule[1]:
            return False
        if kind == "ip" and ip is not None and ip == rule[1] and rule[2] in ("", str(port)):
            return False
        if kind == "domain" and rule[2] in ("", str(port)) and (
                host.endswith(rule[1]) or (rule[3] and host == rule[1][1:])):
            return False
    return True


# --------------------------------------------------------------------------------------------------
# One check

class _Probe:
    def __init__(self, cfg: dict, timeout: int) -> None:
        self.nodes: list[str] = cfg["nodes"]
        self.timeout = timeout
        self.timings = Timings()
        credentials = f"{cfg['username']}:{cfg['password']}".encode("utf-8", "surrogateescape")
        self.header = {"User-Agent": USER_AGENT, "Accept": "application/json",
                       "Authorization": "Basic " + base64.b64encode(credentials).decode()}
        self.start_ns = 0

    async def run(self, budget: float) -> Result:
        self.start_ns = time.time_ns()
        deadline = time.monotonic() + max(budget, 0.0)
        targets: list[str | ValueError] = []
        for node in self.nodes:
            try:
                targets.append(health_url(node))
            except ValueError as exc:
                targets.append(exc)
        to_ask = sum(1 for target in targets if isinstance(target, str))
        last_error, end_ns = "", 0
        for target in targets:
            left = deadline - time.monotonic()
            if left <= 0:
                return self._result(DOWN, f"Health check timed out after {self.timeout}s")
            if isinstance(target, ValueError):
                last_error = str(target)
                continue
            share = left / to_ask  # this node's fair share; what it leaves unused goes to the next ones
            to_ask -= 1
            healthy, last_error, end_ns = await self._ask(target, share)
            if healthy:
                return self._result(UP, "OK", end_ns)
        return self._result(DOWN, f"All RabbitMQ nodes failed: {last_error}" if last_error
                            else "All RabbitMQ nodes failed", end_ns)

    async def _ask(self, target: str, share: float) -> tuple[bool, str, int]:
        """One node: (healthy, node error, when the deciding byte arrived or the failure was seen)."""
        try:
            url = parse_url(target)
        except GoError as exc:
            return False, f"failed to create request: {hide_password(str(exc))}", time.time_ns()
        session = Session(_tls.TLSSettings(), env_proxy(url), self.timings, USER_AGENT)
        reading, reason = False, None
        try:
            async with asyncio.timeout(share):
                check_target(url)
                resp = await session.round_trip("GET", url, self.header, None, True)
                reading = True
                keep = REASON_BODY_MAX if resp.status == 503 else 0
                inflate = (resp.header("Content-Encoding") or "").lower() == "gzip"
                body = await resp.read_body(keep, inflate, self.timings)
                end_ns = resp.conn.stamps.through(resp.conn.consumed())
                if resp.status == 503:  # megabytes of JSON would stall every other check on the loop
                    reason = await asyncio.to_thread(_reason, body) if len(body) > 256 * 1024 else _reason(body)
        except TimeoutError:
            cause = "context deadline exceeded"
        except GoError as exc:
            cause = str(exc)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            cause = os_error_text(exc) if isinstance(exc, OSError) else "unexpected EOF"
        else:
            return (*_verdict(resp.status, reason), end_ns)
        finally:
            await session.aclose()
        if reading:
            return False, f"failed to read response: {cause}", time.time_ns()
        return False, f"request failed: Get {go_quote(hide_password(url.text))}: {cause}", time.time_ns()

    def _result(self, status: int, message: str, end_ns: int = 0) -> Result:
        end_ns = max(end_ns or time.time_ns(), self.start_ns)
        return Result(status, message, self.start_ns, end_ns, timings=self.timings.as_ms())


def _verdict(status: int, reason: str | None) -> tuple[bool, str]:
    """(healthy, node error) of a response, as Go's checkNode judges it; `reason` that of a 503 body."""
    if status == 200:
        return True, ""
    if status == 503:
        return False, f"RabbitMQ health check failed: {reason if reason is not None else 'service unavailable'}"
    return False, f"unexpected status code: {status}"


def _reason(body: bytes | bytearray) -> str | None:
    """The string `reason` of a JSON object body (json.Unmarshal into map[string]interface{}), else None."""
    try:
        document = json.loads(bytes(body).decode("utf-8", "replace"), parse_constant=reject_json_constant)
    except (ValueError, RecursionError):
        return None
    reason = document.get("reason") if isinstance(document, dict) else None
    return clean_text(reason) if isinstance(reason, str) else None
