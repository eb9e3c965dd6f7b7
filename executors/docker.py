"""`docker`: inspect one container through the Docker Engine API; UP while it runs (and is healthy).

The daemon is reached over its Unix socket (`connection_type` socket) or TCP (`tcp`, optionally TLS
with the client pair and CA given as PEM text; the pair is loaded from an anonymous in-memory file,
so no key is ever written to disk). The exchange is the Go client's (github.com/docker/docker/client
v28.3, which the Go worker uses): `GET /_ping` to negotiate the API version (the lower of the
daemon's and 1.51), then `GET /v<version>/containers/<id>/json`. It runs on the project's HTTP/1.1
client (executors/_kit/http1.py) and its Unix-socket dial (Dialer.dial_unix): the Docker SDK would add
requests, urllib3 and four more packages (~4.5 MB installed, ~20 MB RSS, ~100 ms import) and block a
thread per check, for two GET requests.

Failures are worded as the Go client words them (`Cannot connect to the Docker daemon at ...`,
`error during connect: Get "...": ...`, `Error response from daemon: No such container: ...`) with
the Go worker's prefixes and TLS hints. One addition to Go: an exited container's message gives its
exit code. Phase timings: connect (with any name lookup), tls, call (the ping and inspect exchanges).
"""

from __future__ import annotations

import asyncio
import posixpath
import re
import ssl
import time
from http import HTTPStatus
from urllib.parse import urlsplit

from executors import DOWN, PENDING, UP, VERSION, ConfigError, Monitor, Result, instant
from executors._kit import timing as _timing
from executors._kit import tls as _tls
from executors._kit.dial import Conn
from executors._kit.gojson import decode_config, decode_json
from executors._kit.gotext import os_error_text
from executors._kit.http1 import URL, GoError, Session, Timings, go_quote, parse_url

SCHEMA = {  # Go's DockerConfig; decoding and `peekaping-worker types` read it
    "container_id": str, "connection_type": str, "docker_daemon": str, "tls_enabled": bool,
    "tls_cert": str, "tls_key": str, "tls_ca": str, "tls_verify": bool,
}
FIELDS = {  # field -> what it means (for `peekaping-worker types`)
    "container_id": "container name or ID",
    "connection_type": "socket or tcp",
    "docker_daemon": "socket: path of the daemon's Unix socket, e.g. /var/run/docker.sock; "
                     "tcp: daemon URL, e.g. tcp://host:2376",
    "tls_enabled": "tcp only: talk TLS (https) to the daemon",
    "tls_cert": "tcp+TLS: client certificate (PEM), with tls_key",
    "tls_key": "tcp+TLS: client private key (PEM), with tls_cert",
    "tls_ca": "tcp+TLS: CA certificates (PEM) the daemon is verified against, instead of the system's",
    "tls_verify": "tcp+TLS: verify the daemon's certificate; false skips verification",
}
SUMMARY = ("inspect one container through the Docker Engine API; UP while it runs (its health check, "
           "if it has one, healthy), PENDING while the health check is starting")
EXAMPLES = {"docker": ({"container_id": "web", "connection_type": "socket", "docker_daemon": "/var/run/docker.sock"},
                       "UP", "when container `web` is running (and healthy, if it has a health check)")}

API_VERSION = "1.51"  # the Go client's own (v28.3); a ping answering lower lowers it, as the Go client does
DUMMY_HOST = "api.moby.localhost"  # the Host header the Go client sends over a Unix socket
UNIX_PATH_MAX = 108  # sun_path: the Go client refuses longer socket paths
ERROR_BODY_MAX = 1 << 20  # the Go client reads at most this much of an error response
INSPECT_BODY_MAX = 4 << 20  # an inspect document is a few KiB; beyond this the check is DOWN
USER_AGENT = f"peekaping/{VERSION}"
HINTS = (  # first match wins; appended to `container inspect error: ...` as the Go worker does
    ("certificate relies on legacy Common Name field",
     ("\n\nHint: The Docker daemon's TLS certificate uses legacy Common Name instead of Subject Alternative Names. "
      "Try setting 'Verify TLS' to false, or update your Docker daemon with a proper certificate that includes SANs")),
    ("x509: certificate signed by unknown authority",
     "\n\nHint: The Docker daemon's certificate is not trusted. Provide a CA certificate or set 'Verify TLS' to false"),
    ("tls: failed to verify certificate",
     "\n\nHint: TLS certificate verification failed. Check your certificates or set 'Verify TLS' to false for testing"),
)
_VERSION_TEXT = re.compile(r"^\d{1,9}(\.\d{1,9}){0,3}$")


async def check(monitor: Monitor, proxy: dict | None, budget: float) -> Result:
    """Go's DockerExecutor.Execute: config, client, TLS, inspect, state. The proxy is not used."""
    try:
        cfg = decode_config(monitor.config, SCHEMA, "DockerConfig")
    except ConfigError as exc:
        raise ConfigError(f"invalid config: {exc}") from None
    kind = cfg["connection_type"]
    if kind == "socket":
        host, tls = "unix://" + cfg["docker_daemon"], None
    elif kind == "tcp":
        host, tls = cfg["docker_daemon"], None
        if cfg["tls_enabled"]:
            try:
                tls = _tls_settings(cfg)
            except ValueError as exc:
                return instant(DOWN, f"TLS configuration error: {exc}")
    else:
        return instant(DOWN, f"unknown docker connection type: {kind}")
    try:
        daemon = _Daemon.parse(host, tls)
    except ValueError as exc:
        return instant(DOWN, f"docker client error: {exc}")
    container = cfg["container_id"].strip()  # the Go client trims the ID and refuses an empty one
    if not container:
        return instant(DOWN, "container inspect error: invalid container name or ID: value is empty")
    return await _Inspection(daemon, container).run(budget)


def _tls_settings(cfg: dict) -> _tls.TLSSettings:
    """Go's createTLSConfig, in its order; ValueError with its texts."""
    cert, key, ca = cfg["tls_cert"], cfg["tls_key"], cfg["tls_ca"]
    if cert or key:
        if not cert or not key:
            raise ValueError("both certificate and key must be provided for client authentication")
        try:
            _tls.check_client_pair(cert, key)
        except ValueError as exc:
            raise ValueError(f"failed to load client certificate: {exc}") from None
    if ca and not _tls.has_ca_cert(ca):
        raise ValueError("failed to parse CA certificate")
    settings = _tls.TLSSettings(verify=cfg["tls_verify"], ca_pem=ca or None, cert_pem=cert or None,
                                key_pem=key or None)
    if cert:
        try:
            _tls.client_context(settings)  # built (and cached) now: OpenSSL may refuse what Go accepts
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ValueError(f"failed to load client certificate: tls: {getattr(exc, 'reason', None) or exc}") from None
    return settings


# --------------------------------------------------------------------------------------------------
# The daemon's address, as the Go client's WithHost reads it

class _Daemon:
    __slots__ = ("addr", "base_path", "host", "scheme", "shown_host", "tls", "unix_path")

    def __init__(self, host: str, scheme: str, addr: str, unix_path: str | None, base_path: str,
                 tls: _tls.TLSSettings | None) -> None:
        self.host = host  # as configured: `Cannot connect to the Docker daemon at <host>`
        self.scheme, self.addr, self.unix_path, self.base_path, self.tls = scheme, addr, unix_path, base_path, tls
        self.shown_host = _escape(addr, _HOST_SAFE)  # the URL host in Go's error texts

    @classmethod
    def parse(cls, host: str, tls: _tls.TLSSettings | None) -> _Daemon:
        """client.ParseHostURL and sockets.ConfigureTransport; ValueError with their texts."""
        proto, sep, addr = host.partition("://")
        if not sep or not addr:
            raise ValueError(f"unable to parse docker host `{host}`")
        base_path, unix_path = "", None
        if proto == "tcp":
            try:
                parse_url("tcp://" + addr)  # Go's url.Parse, for its error texts
            except GoError as exc:
                raise ValueError(str(exc)) from None
            parts = urlsplit("tcp://" + addr)
            addr, base_path = parts.netloc.rpartition("@")[2], parts.path
        elif proto == "unix":
            if len(addr.encode("utf-8", "surrogateescape")) > UNIX_PATH_MAX:
                raise ValueError(f"unix socket path {go_quote(addr)} is too long")
            if tls is None:  # with TLS the Go worker's own transport dials TCP, whatever the host says
                unix_path = addr
        elif proto == "npipe":
            raise ValueError("protocol not available")  # Windows named pipes
        return cls(host, "https" if tls is not None else "http", addr, unix_path, base_path, tls)

    def url(self, path: str, version: str | None = None) -> URL:
        """The request URL of an API path (versioned when `version` is given), as the Go client builds it."""
        joined = self.base_path + (f"/v{version}" if version else "") + path
        target = _escape(_clean(joined), _PATH_SAFE)
        text = f"{self.scheme}://{self.shown_host}{target}"
        if self.unix_path is not None:
            return URL("http", DUMMY_HOST, 80, DUMMY_HOST, target, text, None, text)
        try:
            where = parse_url(f"{self.scheme}://{self.addr}/")
        except GoError:
            where = None
        if where is None or not where.host:  # e.g. a socket path dialled over TCP: fails at dial time, as in Go
            return URL(self.scheme, self.addr, 443 if self.tls else 80, self.addr, target, text, None, text)
        return URL(self.scheme, where.host, where.port, where.hostport, target, text, None, text)


_HOST_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~!$&'()*+,;=:[]<>\"")
_PATH_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~$&+,/:;=@")


def _escape(text: str, safe: frozenset) -> str:
    """Go's url escaping (host or path mode): every byte outside `safe` as %XX."""
    if all(ch in safe for ch in text):
        return text
    return "".join(chr(b) if chr(b) in safe else f"%{b:02X}" for b in text.encode("utf-8", "surrogateescape"))


def _clean(path: str) -> str:
    """Go's path.Clean of an absolute path (path.Join cleans what it joins)."""
    cleaned = posixpath.normpath(path)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


# --------------------------------------------------------------------------------------------------
# Connections: the HTTP/1.1 session, with a Unix-socket dial

class _DockerSession(Session):
    """A Session whose connections go to the daemon's Unix socket when there is one."""

    def __init__(self, daemon: _Daemon, timings: Timings) -> None:
        super().__init__(daemon.tls or _tls.TLSSettings(), None, timings, USER_AGENT)
        self.unix_path = daemon.unix_path

    async def dial(self, host: str, port: int, key: tuple, plain: bool, early: bytes = b"") -> Conn:
        if self.unix_path is None:
            return await super().dial(host, port, key, plain, early)
        return await self.dial_unix(self.unix_path, key)  # `early` is not sent: the exchange writes the request


# --------------------------------------------------------------------------------------------------
# One check

class _Inspection:
    def __init__(self, daemon: _Daemon, container: str) -> None:
        self.daemon, self.container = daemon, container
        self.timings = Timings()
        self.exchanges = 0.0  # seconds spent in round trips, connecting and TLS included
        self.version = API_VERSION
        self.start_ns = 0

    def inspect_url(self) -> URL:
        return self.daemon.url(f"/containers/{self.container}/json", self.version)

    async def run(self, budget: float) -> Result:
        session = _DockerSession(self.daemon, self.timings)
        self.start_ns = time.time_ns()
        try:
            async with asyncio.timeout(max(budget, 0.0)):
                return await self._run(session)
        except TimeoutError:  # Go's client returns the context's error as is
            return self._down(f"Get {go_quote(self.inspect_url().text)}: context deadline exceeded")
        except GoError as exc:
            return self._down(self._connect_error(str(exc)))
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            text = os_error_text(exc) if isinstance(exc, OSError) else "unexpected EOF"
            return self._down(self._connect_error(text))
        finally:
            await session.aclose()

    async def _run(self, session: _DockerSession) -> Result:
        status, _, headers, _, _ = await self._get(session, self.daemon.url("/_ping"), 4096)
        if 200 <= status < 400:  # negotiation (Go's negotiateAPIVersionPing): the lower version wins
            offered = headers.get("api-version") or "1.24"
            if _VERSION_TEXT.match(offered) and _older(offered, self.version):
                self.version = offered
        url = self.inspect_url()
        status, status_text, headers, body, end_ns = await self._get(session, url, INSPECT_BODY_MAX + 1)
        if not 200 <= status < 400:
            return self._down(_daemon_error(status, status_text, headers, body, url.text, self.version), end_ns)
        if len(body) > INSPECT_BODY_MAX:
            return self._down(f"inspect response longer than {INSPECT_BODY_MAX} bytes", end_ns)
        try:
            document = await _decode(body)
            state = _state(document)
        except ValueError as exc:
            return self._down(str(exc), end_ns)
        status_code, message = judge(state)
        return self._result(status_code, message, end_ns)

    async def _get(self, session: _DockerSession, url: URL, keep: int) -> tuple[int, str, dict, bytes, int]:
        """One GET: status code and line, lower-cased headers, body (its first `keep` bytes), and when
        the last byte read arrived."""
        started = _timing.now_ns()
        try:
            resp = await session.round_trip("GET", url, {"User-Agent": USER_AGENT}, None, False)
            body = await resp.read_body(keep, False)
            end_ns = resp.conn.stamps.through(resp.conn.consumed())
            session.release(resp)
        finally:
            self.exchanges += (_timing.now_ns() - started) / 1e9
        headers = {name.lower(): value for name, value in resp.headers}
        return resp.status, resp.status_text, headers, bytes(body), end_ns

    def _connect_error(self, cause: str) -> str:
        """The Go client's doRequest wording of a failed exchange; `cause` is net/http's error text."""
        daemon = self.daemon
        failed = f"Get {go_quote(self.inspect_url().text)}: {cause}"
        if daemon.scheme != "https" and "malformed HTTP response" in cause:
            return f"{failed}.\n* Are you trying to connect to a TLS-enabled daemon without TLS?"
        if daemon.scheme == "https" and ("bad certificate" in cause or "handshake failure" in cause):
            return ("the server probably has client authentication (--tlsverify) enabled; check your TLS client "
                    f"certification settings: {failed}")
        if cause.endswith(": permission denied") and cause.startswith("dial "):
            return f"permission denied while trying to connect to the Docker daemon socket at {daemon.host}: {failed}"
        if "connection refused" in cause or "dial unix" in cause or cause.endswith("i/o timeout"):
            return f"Cannot connect to the Docker daemon at {daemon.host}. Is the docker daemon running?"
        return f"error during connect: {failed}"

    def _down(self, error: str, end_ns: int = 0) -> Result:
        for marker, hint in HINTS:
            if marker in error:
                error += hint
                break
        return self._result(DOWN, f"container inspect error: {error}", end_ns)

    def _result(self, status: int, message: str, end_ns: int = 0) -> Result:
        end_ns = end_ns or time.time_ns()
        t = self.timings
        setup = t.dns + t.connect + t.tls
        timings = {"connect": round((t.dns + t.connect) * 1000, 3), "tls": round(t.tls * 1000, 3),
                   "call": round(max(0.0, self.exchanges - setup) * 1000, 3)}
        return Result(status, message, self.start_ns, max(end_ns, self.start_ns), timings=timings)


def _older(a: str, b: str) -> bool:
    """Go's versions.LessThan of two dotted API versions."""
    left, right = [int(p) for p in a.split(".")], [int(p) for p in b.split(".")]
    size = max(len(left), len(right))
    return left + [0] * (size - len(left)) < right + [0] * (size - len(right))


def _daemon_error(status: int, status_text: str, headers: dict, body: bytes, url_text: str, version: str) -> str:
    """The Go client's checkResponseErr for a status outside 200-399; `status_text` is the status line's
    code and reason (Go's resp.Status)."""
    if len(body) >= ERROR_BODY_MAX:
        return (f"request returned {status_text} with a message (> {ERROR_BODY_MAX} bytes) for API route and "
                f"version {url_text}, check if the server supports the requested API version")
    if not body:
        return (f"request returned {status_text} for API route and version {url_text}, check if the server "
                "supports the requested API version")
    text = body.decode("utf-8", "replace")
    if headers.get("content-type") == "application/json" and _older("1.23", version):
        try:
            document = decode_json(text)
        except ValueError as exc:
            return f"Error reading JSON: {exc}"
        message = document.get("message") if isinstance(document, dict) else None
        if message is not None and not isinstance(message, str):
            return ("Error reading JSON: json: cannot unmarshal "
                    f"{_kind(message)} into Go struct field ErrorResponse.message of type string")
        if not message:
            return f"Error response from daemon: API returned a {status} ({_phrase(status)}) but provided no error-message"
        return f"Error response from daemon: {message.strip()}"
    return f"Error response from daemon: {text.strip()}"


def _phrase(status: int) -> str:
    """Go's http.StatusText."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


async def _decode(body: bytes) -> object:
    """The inspect document as Go's json.Decoder reads it (the first value; nothing at all is EOF)."""
    text = body.decode("utf-8", "replace")
    if not text.strip(" \t\r\n"):
        raise ValueError("EOF")
    if len(body) > 256 * 1024:  # decoding megabytes would stall every other check on the loop
        return await asyncio.to_thread(decode_json, text)
    return decode_json(text)


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), "value")


def _member(obj: dict, name: str, kind: type, where: str, go_type: str) -> object:
    """A member as encoding/json fills a struct field: exact name first, else any case; null is absent."""
    value = obj.get(name)
    if value is None and name not in obj:
        folded = name.lower()
        value = next((v for k, v in obj.items() if k.lower() == folded), None)
    if value is not None and not (isinstance(value, kind) and (kind is not int or not isinstance(value, bool))):
        raise ValueError(f"json: cannot unmarshal {_kind(value)} into Go struct field {where} of type {go_type}")
    return value


def _state(document: object) -> dict | None:
    """The fields of `State` the verdict reads, typed as the Go structs type them; None when absent."""
    if document is None:
        return None
    if not isinstance(document, dict):
        raise ValueError(f"json: cannot unmarshal {_kind(document)} into Go value of type container.InspectResponse")
    state = _member(document, "State", dict, "InspectResponse.State", "container.State")
    if state is None:
        return None
    health = _member(state, "Health", dict, "InspectResponse.State.Health", "container.Health")
    code = _member(state, "ExitCode", int, "InspectResponse.State.ExitCode", "int")
    return {
        "Status": _member(state, "Status", str, "InspectResponse.State.Status", "string") or "",
        "Running": bool(_member(state, "Running", bool, "InspectResponse.State.Running", "bool")),
        "ExitCode": int(code or 0),
        "Health": None if health is None else
        _member(health, "Status", str, "InspectResponse.State.Health.Status", "string") or "",
    }


def judge(state: dict | None) -> tuple[int, str]:
    """Go's verdict on a container state: (status, message). `Health` is the health status or None."""
    if state is not None and state["Running"]:
        health = state["Health"]
        if health is not None and health != "healthy":
            if health == "starting":
                return PENDING, health
            if health == "unhealthy":
                return DOWN, f"container is unhealthy: {health}"
            return DOWN, f"container health status: {health}"
        return UP, health if health is not None else state["Status"]
    if state is None:
        return DOWN, "container state is nil"
    if state["Status"] == "exited":  # beyond Go: how it ended
        return DOWN, f"container state is exited (exit code {state['ExitCode']})"
    return DOWN, f"container state is {state['Status']}"
