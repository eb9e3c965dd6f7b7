"""`grpc-keyword` (alias `grpc`): one real gRPC call, judged by its answer and the keyword rules.

Go's worker answers mock responses instead of calling (a Health monitor is UP with no server at all);
this port calls for real:

* the Health service (`Health`, `grpc.health.v1.Health`, or any service of a `grpcProtobuf` whose
  package is `grpc.health.v1`, with method check/watch) calls `grpc.health.v1.Health/Check` with the
  `service` of `grpcBody`: SERVING is UP, every other status DOWN;
* any other unary method takes its request and response types from the server's reflection when it
  offers it, else from the `grpcProtobuf` text (executors/_kit/proto_text.py); the request is
  `grpcBody` as protobuf JSON, the answer is rendered as protobuf JSON and Go's keyword rules and
  message formats apply to that text.

The client is grpclib (pure Python HTTP/2 on the event loop: +0.6 MB in the binary against grpcio's
+7 MB, +2.5 MB of memory against +13 MB and eight threads). The connection is dialled here, so errors
use Go's dial and x509 texts, `tls_info` has the HTTP executor's shape and each phase is timed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pb2, json_format, message_factory
from grpclib.client import Channel, Handler
from grpclib.const import Cardinality, Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from grpclib.protocol import H2Protocol

from executors import DOWN, UP, ConfigError, Monitor, Result, instant
from executors._kit import limits as _limits, proto_text as _proto_text, timing as _timing, tls as _tls
from executors._kit.gotext import is_domain_name, join_host_port, os_error_text, resolver_suffix
from executors._kit.gojson import decode_config, go_json_error
from executors._kit.grpc_target import Target, parse_target

SCHEMA = {"grpcUrl": str, "grpcProtobuf": str, "grpcServiceName": str, "grpcMethod": str, "grpcEnableTls": bool,
          "grpcBody": str, "keyword": str, "invertKeyword": bool}  # Go's GRPCConfig
FIELDS = {
    "grpcUrl": "target host:port (also dns:///host:port, ipv4:, ipv6:, unix:/path); no port means 443",
    "grpcProtobuf": ".proto text of the service; used when the server offers no reflection",
    "grpcServiceName": "service, e.g. Health or demo.v1.Shop (the proto's package is prefixed when missing)",
    "grpcMethod": "unary method, e.g. check; matched case-insensitively when there is no exact match",
    "grpcEnableTls": "TLS, verified against the system roots (server name from the target)",
    "grpcBody": 'request as protobuf JSON, e.g. {"service": ""}; unknown keys are ignored',
    "keyword": "text the JSON answer must contain, when not empty",
    "invertKeyword": "the answer must not contain keyword",
}
SUMMARY = ("one real unary gRPC call (grpc.health.v1 Check for Health); UP when it succeeds and the keyword "
           "rule passes")
_HEALTH_EXAMPLE = {"grpcUrl": "localhost:50051", "grpcServiceName": "Health", "grpcMethod": "check",
                   "grpcProtobuf": 'syntax = "proto3";', "grpcBody": '{"service": ""}'}
EXAMPLES = {
    "grpc-keyword": (_HEALTH_EXAMPLE, "UP", "when the gRPC server on localhost:50051 reports SERVING"),
    "grpc": (_HEALTH_EXAMPLE, "UP", "when the gRPC server on localhost:50051 reports SERVING"),
}

MAX_MESSAGE = 4 << 20  # grpc-go's default limit on a received message
MAX_REFLECTED_FILES = 200
HEALTH_PACKAGE = "grpc.health.v1"
_REFLECTION_SERVICES = ("grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection")


# --------------------------------------------------------------------------------------------------
# The messages this client speaks itself (health, reflection), in a private pool

_BUILTIN = _proto_text.client_pool(HEALTH_PACKAGE, _REFLECTION_SERVICES)


def _class(name: str) -> Any:
    return message_factory.GetMessageClass(_BUILTIN.FindMessageTypeByName(name))


HealthRequest = _class("grpc.health.v1.HealthCheckRequest")
HealthResponse = _class("grpc.health.v1.HealthCheckResponse")
_REFLECTION = {service: (_class(service.rsplit(".", 1)[0] + ".ServerReflectionRequest"),
                         _class(service.rsplit(".", 1)[0] + ".ServerReflectionResponse"))
               for service in _REFLECTION_SERVICES}
SERVING = 1


# --------------------------------------------------------------------------------------------------
# The check

class _Failure(Exception):
    """A DOWN result; str(exc) is its whole message, `status` the gRPC status name when there is one."""

    def __init__(self, message: str, status: str = "") -> None:
        super().__init__(message)
        self.status = status


def _rpc_failure(status: str, detail: str | None) -> _Failure:
    return _Failure(f"gRPC call failed: {status}: {detail}" if detail else f"gRPC call failed: {status}", status)


def _mapped(exc: BaseException) -> _Failure | None:
    """A grpclib or socket exception of a call as the DOWN result it gives; None for others."""
    if isinstance(exc, _Failure):
        return exc
    if isinstance(exc, GRPCError):
        return _rpc_failure(exc.status.name, exc.message)
    if isinstance(exc, StreamTerminatedError):  # grpclib's reasons: Connection lost, Protocol error, ...
        reason = str(exc).lower()
        return _rpc_failure("UNAVAILABLE", "the server closed the connection" if reason == "connection lost" else
                            "the server does not speak HTTP/2 (protocol error)" if reason == "protocol error" else
                            f"connection closed: {reason or 'reset'}")
    if isinstance(exc, ProtocolError):
        return _rpc_failure("INTERNAL", str(exc))
    if isinstance(exc, OSError) and not isinstance(exc, TimeoutError):
        return _rpc_failure("UNAVAILABLE", os_error_text(exc))
    if isinstance(exc, (AssertionError, ValueError)):  # grpclib's short-read assertion, protobuf's decode error
        return _rpc_failure("INTERNAL", f"grpc: failed to unmarshal the response: {exc}")
    return None


@dataclass
class _Check:
    """One check's connection state, phase timings and TLS session."""
    target: Target
    tls: bool
    phase: str = "dial"
    seconds: dict[str, float] = field(default_factory=dict)
    tls_chain: list[bytes] | None = None
    tls_valid: bool = False
    protocol: Any = None

    def add(self, phase: str, started_ns: int) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + (time.time_ns() - started_ns) / 1e9

    def timings(self) -> dict[str, float]:
        return {phase: round(seconds * 1000, 3) for phase, seconds in self.seconds.items()}

    def tls_info(self) -> dict | None:
        return None if self.tls_chain is None else _tls.tls_info(self.tls_chain, self.tls_valid)


async def check(monitor: Monitor, proxy: dict | None, budget: float) -> Result:
    try:
        cfg = decode_config(monitor.config, SCHEMA, "GRPCConfig")
    except ConfigError as exc:
        raise ConfigError(f"invalid config: {exc}") from None
    try:
        target = parse_target(cfg["grpcUrl"])
    except ValueError as exc:
        return instant(DOWN, f"failed to create gRPC client: {exc}")
    state = _Check(target, cfg["grpcEnableTls"])
    start = time.time_ns()
    channel = _Channel(state)
    try:
        async with asyncio.timeout(max(budget, 0.001)):
            text, health_failure = await _call(channel, state, cfg, time.monotonic() + max(budget, 0.001))
    except _Failure as exc:
        return Result(DOWN, str(exc), start, time.time_ns(), state.tls_info(), state.timings())
    except TimeoutError:
        return Result(DOWN, _timeout_text(state), start, time.time_ns(), state.tls_info(), state.timings())
    finally:
        channel.close()
    end = time.time_ns()
    stamp = getattr(state.protocol, "last_rx_ns", 0)
    if start <= stamp <= end:
        end = stamp  # when the answer's last bytes arrived, not when this coroutine resumed
    status, message = _judge(text, health_failure, cfg["keyword"], cfg["invertKeyword"])
    return Result(status, message, start, end, state.tls_info(), state.timings())


def _judge(text: str, health_failure: str | None, keyword: str, invert: bool) -> tuple[int, str]:
    """Go's keyword rules and messages on the answer's JSON text (a health status other than SERVING is
    DOWN whatever the keyword)."""
    if health_failure is not None:
        return DOWN, health_failure
    display = _display(text)
    if not keyword:
        return UP, f"gRPC call successful: {display}"
    found = keyword in text
    if found != invert:
        return UP, f"{display}, keyword [{keyword}] {'is' if found else 'not'} found"
    return DOWN, f"but keyword [{keyword}] is {'present' if found else 'not'} in [{display}]"


def _display(text: str) -> str:
    """Go's cut: over 50 bytes, the first 47 bytes and `...`."""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= 50:
        return text
    return raw[:47].decode("utf-8", "replace") + "..."


def _timeout_text(state: _Check) -> str:
    if state.phase == "dial":
        target = state.target
        where = f"unix {target.path}" if target.path else f"tcp {join_host_port(target.host, target.port)}"
        return f"gRPC call failed: DEADLINE_EXCEEDED: dial {where}: i/o timeout"
    if state.phase == "tls":
        return "gRPC call failed: DEADLINE_EXCEEDED: authentication handshake failed: context deadline exceeded"
    if state.phase == "proto":
        return "gRPC call failed: DEADLINE_EXCEEDED: context deadline exceeded while reading grpcProtobuf"
    return "gRPC call failed: DEADLINE_EXCEEDED: context deadline exceeded"


def _is_health(cfg: dict) -> bool:
    if cfg["grpcMethod"].lower() not in ("check", "watch"):
        return False
    service = cfg["grpcServiceName"]
    return (service in ("Health", f"{HEALTH_PACKAGE}.Health")
            or _proto_text.package_of(cfg["grpcProtobuf"]) == HEALTH_PACKAGE)


async def _call(channel: _Channel, state: _Check, cfg: dict, deadline: float) -> tuple[str, str | None]:
    """The answer's JSON text, and the health failure message when the service is not SERVING."""
    if _is_health(cfg):
        request = _request(HealthRequest, cfg["grpcBody"], _BUILTIN)
        try:
            reply = await _unary(channel, state, f"/{HEALTH_PACKAGE}.Health/Check", request, HealthResponse, deadline)
        except _Failure as exc:
            if exc.status == "NOT_FOUND":
                raise _Failure(f'gRPC health check failed: SERVICE_UNKNOWN: the server does not know service '
                               f'"{request.service}"') from None
            raise
        text = _render(reply, _BUILTIN)
        if reply.status != SERVING:
            value = HealthResponse.DESCRIPTOR.fields_by_name["status"].enum_type.values_by_number.get(reply.status)
            return text, f"gRPC health check failed: {value.name if value else reply.status}"
        return text, None
    pool, method = await _resolve(channel, state, cfg, deadline)
    if method.client_streaming or method.server_streaming:
        raise _Failure(f"Error in send gRPC: method {method.full_name} streams; only unary methods can be checked")
    request_class = message_factory.GetMessageClass(method.input_type)
    reply_class = message_factory.GetMessageClass(method.output_type)
    request = _request(request_class, cfg["grpcBody"], pool)
    reply = await _unary(channel, state, f"/{method.containing_service.full_name}/{method.name}", request,
                         reply_class, deadline)
    return _render(reply, pool), None


def _request(cls: Any, body: str, pool: Any) -> Any:
    """`grpcBody` as protobuf JSON; keys the request type does not have are ignored (as Go's fallback does)."""
    message = cls()
    if not body.strip():
        return message
    failed = "Error in send gRPC: failed to unmarshal request body: "
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise _Failure(failed + go_json_error(body, exc)) from None
    if not isinstance(value, dict):
        kind = {list: "array", str: "string", bool: "bool", type(None): "null"}.get(type(value), "number")
        raise _Failure(f"{failed}a JSON object is needed, not {kind}")
    try:
        json_format.ParseDict(value, message, ignore_unknown_fields=True, descriptor_pool=pool, max_recursion_depth=64)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise _Failure(f"{failed}{exc}") from None
    return message


def _render(message: Any, pool: Any) -> str:
    """Protobuf JSON (field json names, enum names, int64 as strings), spaced as Go's mock answers."""
    try:
        data = json_format.MessageToDict(message, descriptor_pool=pool)
    except Exception as exc:  # an Any of an unknown type, and the like
        raise _Failure(f"Error in send gRPC: cannot render the response as JSON: {exc}") from None
    return json.dumps(data, ensure_ascii=False)


# --------------------------------------------------------------------------------------------------
# Types: server reflection first, then the grpcProtobuf text

async def _resolve(channel: _Channel, state: _Check, cfg: dict, deadline: float) -> tuple[Any, Any]:
    service, method = cfg["grpcServiceName"], cfg["grpcMethod"]
    package = _proto_text.package_of(cfg["grpcProtobuf"])
    names = [service] if "." in service or not package else [f"{package}.{service}", service]
    reflected, why = await _reflect(channel, state, names, deadline)
    if reflected is not None:
        return reflected[0], _method(reflected[1], method)
    state.phase = "proto"
    try:
        schema = await _proto_text.load_once(cfg["grpcProtobuf"])
    except _proto_text.ProtoError as exc:
        raise _Failure(f"Error in send gRPC: cannot read grpcProtobuf ({why}): {exc}") from None
    for name in names:
        try:
            return schema.pool, _method(schema.pool.FindServiceByName(name), method)
        except KeyError:
            continue
    raise _Failure(f"Error in send gRPC: service {names[0]} is not defined in grpcProtobuf ({why})")


def _method(service: Any, name: str) -> Any:
    found = service.methods_by_name.get(name)
    if found is None:
        folded = [m for m in service.methods if m.name.lower() == name.lower()]
        if len(folded) != 1:
            known = ", ".join(m.name for m in service.methods) or "none"
            raise _Failure(f"Error in send gRPC: service {service.full_name} has no method {name} (it has: {known})")
        found = folded[0]
    return found


_reflected = _limits.BoundedCache(max_bytes=16 << 20, max_entries=64)


async def _reflect(channel: _Channel, state: _Check, names: list[str],
                   deadline: float) -> tuple[tuple[Any, Any] | None, str]:
    """(pool, service) from server reflection, or None and why not."""
    for reflection in _REFLECTION_SERVICES:
        state.phase = "reflection"
        started = time.time_ns()
        try:
            files, full_name = await _reflection_files(channel, reflection, names, deadline)
        except TimeoutError:
            raise
        except Exception as exc:
            failure = _mapped(exc)
            if failure is None:
                raise
            if failure.status == "UNIMPLEMENTED":
                continue  # not this version of the reflection service
            if failure.status in ("UNAVAILABLE", "DEADLINE_EXCEEDED", ""):
                raise failure from None  # the connection itself failed: so would the call
            if failure.status == "NOT_FOUND":
                return None, f"the server's reflection does not know service {names[0]}"
            return None, f"the server's reflection failed: {str(failure).removeprefix('gRPC call failed: ')}"
        finally:
            state.add("reflection", started)
        key = hashlib.sha256(b"".join(hashlib.sha256(files[n]).digest() for n in sorted(files))).hexdigest()
        pool = _reflected.get(key)
        if pool is None:
            try:
                pool = _proto_text.pool_from_files(files)
            except Exception as exc:
                return None, f"the descriptors from the server's reflection do not load: {exc}"
            _reflected.put(key, pool, 4 * sum(len(b) for b in files.values()) + (64 << 10))
        try:
            return (pool, pool.FindServiceByName(full_name)), ""
        except KeyError:
            return None, f"the server's reflection does not know service {full_name}"
    return None, "the server offers no reflection"


async def _reflection_files(channel: _Channel, service: str, names: list[str],
                            deadline: float) -> tuple[dict[str, bytes], str]:
    """Serialized FileDescriptorProtos of the file defining the service and of what it imports."""
    request_class, reply_class = _REFLECTION[service]
    files: dict[str, bytes] = {}
    async with channel.request(f"/{service}/ServerReflectionInfo", Cardinality.STREAM_STREAM, request_class,
                               reply_class, timeout=_remaining(deadline)) as stream:
        asked = 0

        async def ask(**what: str) -> Any:
            nonlocal asked
            await stream.send_message(request_class(**what))
            asked += 1
            reply = await _receive(stream, reply_class, first=asked == 1)
            if reply is None:
                raise _rpc_failure("INTERNAL", "reflection stream ended without an answer")
            return reply

        def refused(reply: Any) -> None:
            if reply.WhichOneof("message_response") == "error_response":
                code = reply.error_response.error_code
                name = Status(code).name if code in {s.value for s in Status} else str(code)
                raise _rpc_failure(name, reply.error_response.error_message)

        candidates = names
        if len(names) == 1 and "." not in names[0]:  # a bare name and no package: ask what is served
            reply = await ask(list_services="")
            refused(reply)
            listed = [s.name for s in reply.list_services_response.service]
            candidates = [n for n in listed if n == names[0] or n.endswith("." + names[0])][:1] or names
        for full_name in candidates:
            reply = await ask(file_containing_symbol=full_name)
            if reply.WhichOneof("message_response") != "error_response":
                break
        refused(reply)
        wanted: list[str] = []
        while True:
            for blob in reply.file_descriptor_response.file_descriptor_proto:
                fdp = descriptor_pb2.FileDescriptorProto.FromString(blob)  # DecodeError is a ValueError
                files.setdefault(fdp.name, blob)
                wanted += fdp.dependency
            wanted = [d for d in dict.fromkeys(wanted) if d not in files and not _proto_text.is_well_known(d)]
            if not wanted or len(files) >= MAX_REFLECTED_FILES:
                break
            reply = await ask(file_by_filename=wanted.pop(0))
            refused(reply)
        await stream.end()
        await stream.recv_trailing_metadata()
    return files, full_name


# --------------------------------------------------------------------------------------------------
# Calls

def _remaining(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.001)


async def _unary(channel: _Channel, state: _Check, path: str, request: Any, reply_class: Any,
                 deadline: float) -> Any:
    started = 0
    try:
        async with channel.request(path, Cardinality.UNARY_UNARY, type(request), reply_class,
                                   timeout=_remaining(deadline)) as stream:
            await stream.send_request()  # connects first: the call phase starts once the connection is up
            state.phase, started = "call", time.time_ns()
            await stream.send_message(request, end=True)
            reply = await _receive(stream, reply_class)
            await stream.recv_trailing_metadata()
    except TimeoutError:
        raise
    except Exception as exc:
        failure = _mapped(exc)
        if failure is None:
            raise
        raise failure from None
    finally:
        if started:
            state.add("call", started)
    if reply is None:
        raise _rpc_failure("INTERNAL", "server closed the stream without sending a response")
    return reply


async def _receive(stream: Any, reply_class: Any, first: bool = True) -> Any:
    """One response message, refused when it is larger than MAX_MESSAGE (grpclib would take any size).

    Uses grpclib's stream internals (`_wrapper` ends the read when the connection drops); the
    dependency's version range pins them.
    """
    if first:
        await stream.recv_initial_metadata()
    with stream._wrapper:
        head = await stream._stream.recv_data(5)
        if not head:
            return None
        if len(head) < 5:
            raise ProtocolError("truncated message header")
        length = int.from_bytes(head[1:5], "big")
        if head[0]:
            raise GRPCError(Status.INTERNAL, "grpc: compressed response although no compression was offered")
        if length > MAX_MESSAGE:
            raise GRPCError(Status.RESOURCE_EXHAUSTED,
                            f"grpc: received message larger than max ({length} vs. {MAX_MESSAGE})")
        body = await stream._stream.recv_data(length) if length else b""
    return reply_class.FromString(body)


# --------------------------------------------------------------------------------------------------
# Connection: dial, TLS (the target's syntax: executors/_kit/grpc_target.py)

class _StampedProtocol(H2Protocol):
    """grpclib's HTTP/2 protocol, noting when bytes last arrived (the end of `ping_ms`)."""
    last_rx_ns = 0
    transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.last_rx_ns = time.time_ns()
        super().data_received(data)


class _Channel(Channel):
    """A grpclib channel whose connection is dialled by `_connect` (Go's texts, timings, tls_info)."""

    def __init__(self, state: _Check) -> None:
        # TLS: the system roots (SSL_CERT_FILE / SSL_CERT_DIR honoured, as by Go), ALPN h2
        context = _tls.client_context(_tls.TLSSettings(), alpn=("h2",)) if state.tls else None
        super().__init__(state.target.host, state.target.port, ssl=context, codec=ProtoCodec())
        self._authority = state.target.authority
        self._check = state

    def _protocol_factory(self) -> H2Protocol:
        return _StampedProtocol(Handler(), self._config, self._h2_config)

    async def _create_connection(self) -> H2Protocol:
        self._check.protocol = await _connect(self._check, self._protocol_factory, self._ssl)
        return self._check.protocol

    def close(self) -> None:
        transport = getattr(self._check.protocol, "transport", None)
        super().close()
        if transport is not None:  # at once: a TLS close would wait up to 30 s for the peer's close_notify
            transport.abort()


_HANDSHAKE = "authentication handshake failed: "  # grpc-go's words for a failed TLS handshake


async def _connect(state: _Check, factory: Any, context: ssl.SSLContext | None) -> H2Protocol:
    loop = asyncio.get_running_loop()
    target = state.target
    sock = await _dial(loop, state)
    state.phase = "tls" if context is not None else "connect"
    started = time.time_ns()
    try:
        transport, protocol = await loop.create_connection(
            factory, sock=sock, ssl=context, server_hostname=target.host if context is not None else None,
            ssl_handshake_timeout=3600 if context is not None else None)
    except ssl.SSLCertVerificationError as exc:  # the chain is reported all the same, as by the http executor
        sock.close()
        state.tls_chain, state.tls_valid = getattr(exc, "peer_chain", None) or [], False
        raise _rpc_failure("UNAVAILABLE", f"{_HANDSHAKE}{_tls.verify_error_text(exc, target.host)}") from None
    except ssl.SSLError as exc:
        sock.close()
        raise _rpc_failure("UNAVAILABLE", f"{_HANDSHAKE}{_tls.tls_error_text(exc, target.host)}") from None
    except OSError as exc:
        sock.close()
        detail = "EOF" if isinstance(exc, (ConnectionAbortedError, BrokenPipeError)) else os_error_text(exc)
        raise _rpc_failure("UNAVAILABLE", f"{_HANDSHAKE}{detail}" if context else detail) from None
    finally:
        if context is not None:
            state.add("tls", started)
    if context is not None:
        ssl_object = transport.get_extra_info("ssl_object")
        state.tls_chain, state.tls_valid = (_tls.chain_der(ssl_object, verified=True) if ssl_object else []), True
    state.phase = "call"
    return protocol


async def _dial(loop: asyncio.AbstractEventLoop, state: _Check) -> socket.socket:
    """A connected socket; _Failure in Go's dial words (UNAVAILABLE, as gRPC reports them)."""
    target = state.target
    if target.path is not None:
        addresses: list[tuple[int, Any]] = [(socket.AF_UNIX, target.path)]
    else:
        addresses = await _resolve_host(loop, state)
    first: str | None = None
    for family, address in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        started = time.time_ns()
        try:
            if family != socket.AF_UNIX:  # HEADERS and DATA frames go out at once, not after an ACK
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await _timing.connect(loop, sock, address)
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, OSError):
                raise
            where = f"unix {address}" if family == socket.AF_UNIX else f"tcp {join_host_port(address[0], target.port)}"
            first = first or f"dial {where}: connect: {os_error_text(exc)}"
            continue
        finally:
            state.add("connect", started)
        return sock
    raise _rpc_failure("UNAVAILABLE", first or f"dial tcp: lookup {target.host}: no such host")


async def _resolve_host(loop: asyncio.AbstractEventLoop, state: _Check) -> list[tuple[int, Any]]:
    host, port = state.target.host, state.target.port
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return [(family, (host, port) if family == socket.AF_INET else (host, port, 0, 0))]
    if not is_domain_name(host):  # Go refuses such names without asking DNS
        raise _rpc_failure("UNAVAILABLE", f"dial tcp: lookup {host}: no such host")
    started = time.time_ns()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise _rpc_failure("UNAVAILABLE", f"dial tcp: lookup {host}{resolver_suffix()}: no such host") from None
    finally:
        state.add("dns", started)
    return list(dict.fromkeys((info[0], info[4]) for info in infos))
