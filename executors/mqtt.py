"""`mqtt`: connect to a broker, subscribe to a topic filter and judge the first message that arrives, as
Peekaping's Go worker (paho.mqtt.golang) does: MQTT 3.1.1 falling back to 3.1 when refused, client id
`peekaping_` + 8 hex digits, clean session, keep-alive 60 s, QoS 0, retained messages count; `mqtts://`
is TLS verified against the system roots (SSL_CERT_FILE / SSL_CERT_DIR honoured), `mqtt://` plain.

Decisions (issue 12): a wildcard filter (`sensors/+/temp`, `sensors/#`) matches the concrete topics of
the messages it brings, and the message names that concrete topic (Go compared topics as strings, so
wildcards never matched); every failure carries one `MQTT connection failed:` prefix (Go doubled it for
connect errors); connecting, subscribing and waiting all fit in the monitor timeout T, waiting at most
Go's 0.8 x T after the subscription and saying Go's `timeout, message not received within <T>`.
JSONata (`json-query`) runs on jsonata-python; its result prints with Go's %v (numbers as float64).

The MQTT client is this module's own (CONNECT, SUBSCRIBE, PUBLISH reception, PINGREQ, DISCONNECT) on the
kit's dialer, which gives Go's dial and x509 texts and the phase timings; aiomqtt (paho-mqtt) was measured
and not taken (see the README). ping_ms runs from just after the config is decoded to the arrival of the
message judged (connection, TLS, CONNACK and SUBACK included; the DISCONNECT after it is not).
timings: dns, connect, tls, auth (CONNECT to CONNACK), subscribe (SUBSCRIBE to SUBACK), receive.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import ssl
import time
from dataclasses import dataclass, field

from jsonata import Jsonata
from jsonata.utils import Utils as _JsonataUtils

from executors import DOWN, UP, Monitor, Result
from executors._kit import dial as _dial, gourl, limits as _limits, tls as _tls
from executors._kit.gofmt import go_json_value
from executors._kit.gojson import GoNumber, decode_config, decode_json, go_char
from executors._kit.gotext import go_duration, join_host_port, os_error_text

SCHEMA = {"hostname": str, "port": int, "topic": str, "username": str, "password": str, "check_type": str,
          "success_keyword": str, "json_path": str, "expected_value": str}  # Go's MQTTConfig
FIELDS = {
    "hostname": "broker host name or IP; mqtts://host for TLS (system roots), mqtt://host or no scheme for plain",
    "port": "broker port, 1-65535 (1883 plain, 8883 TLS by convention)",
    "topic": "topic filter to subscribe to; + and # wildcards match the topics of the messages received",
    "username": "sent when not empty",
    "password": "sent when not empty (and a username is set)",
    "check_type": "none (any non-empty message is UP), keyword or json-query; empty = none",
    "success_keyword": "keyword: text the message must contain (case-sensitive)",
    "json_path": "json-query: JSONata expression evaluated on the message's JSON",
    "expected_value": "json-query: the expression's result, as Go prints it (%v), must equal this text",
}
SUMMARY = ("subscribe to a topic on an MQTT broker and wait for the first message (retained ones count); UP when "
           "one arrives within the timeout and passes the keyword or JSONata check")
EXAMPLES = {"mqtt": ({"hostname": "127.0.0.1", "port": 1883, "topic": "sensors/+/temp", "check_type": "none"}, "UP",
                     ("when the broker on 127.0.0.1:1883 holds a retained message on a matching topic, or one is "
                      "published within 0.8 x the timeout"))}

DEFAULT_TIMEOUT = 20  # seconds, when the monitor's timeout is 0
WAIT_SHARE = 0.8  # of the timeout, waited for a message after subscribing
KEEPALIVE = 60  # seconds, in CONNECT; a PINGREQ goes out this often while waiting
PREFIX = "MQTT connection failed: "
NO_RESULT = "no results found"  # jsonata-go's ErrUndefined

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, SUBSCRIBE, SUBACK, PINGREQ, DISCONNECT = 1, 2, 3, 4, 5, 8, 9, 12, 14
CONNACK_ERRORS = {1: "unacceptable protocol version", 2: "identifier rejected", 3: "server Unavailable",
                  4: "bad user name or password", 5: "not Authorized"}  # paho's packets.ConnErrors


async def check(monitor: Monitor, proxy: dict | None, budget: float) -> Result:
    cfg = decode_config(monitor.config, SCHEMA, "MQTTConfig")
    start = time.time_ns()
    check_type = cfg["check_type"] or "none"
    timeout_s = monitor.timeout or DEFAULT_TIMEOUT
    session = _Session(cfg, timeout_s)
    try:
        topic, payload, end = await session.receive(budget)
    except _Failure as exc:
        return Result(DOWN, PREFIX + str(exc), start, time.time_ns(), timings=session.ms())
    finally:
        session.close()

    def result(status: int, message: str) -> Result:
        return Result(status, message, start, end, timings=session.ms())

    text = payload.decode("utf-8", "replace")
    if check_type == "none":
        return result(UP, f"Topic: {topic}; Message received") if payload else \
            result(DOWN, f"Topic: {topic}; No message received")
    if check_type == "keyword":
        keyword = cfg["success_keyword"]
        if not keyword.strip():
            return result(DOWN, "Success keyword is empty or invalid")
        if payload and keyword.encode("utf-8", "surrogatepass") in payload:
            return result(UP, f"Topic: {topic}; Message: {text}")
        return result(DOWN, f"Message Mismatch - Topic: {topic}; Message: {text}")
    if check_type == "json-query":
        if not cfg["json_path"].strip():
            return result(DOWN, "JSON path is empty or invalid")
        if not cfg["expected_value"].strip():
            return result(DOWN, "Expected value is empty or invalid")
        try:
            async with asyncio.timeout(max(session.left(), 0.001)):
                status, message = await _limits.offload(json_query, text, cfg["json_path"], cfg["expected_value"])
        except TimeoutError:
            status, message = DOWN, "JSONata evaluation failed: evaluation did not finish within the monitor timeout"
        return result(status, message)
    return result(DOWN, "Unknown MQTT Check Type")


# --------------------------------------------------------------------------------------------------
# json-query: Go's json.Unmarshal into an `any`, jsonata-go's Eval, fmt's %v of the result

def json_query(text: str, expression: str, expected: str) -> tuple[int, str]:
    """(status, message) of the json-query step; pure, so `_limits.offload` may run it twice."""
    try:
        data = _unmarshal(text)
    except ValueError as exc:
        return DOWN, f"Failed to parse JSON message: {exc}"
    try:
        compiled = Jsonata(expression)
    except Exception as exc:  # jsonata-python raises JException, and plain errors on some inputs
        return DOWN, f"Invalid JSONata expression: {_jsonata_text(exc)}"
    guard = _Guard()
    frame = compiled.create_frame()
    frame.set_evaluate_entry_callback(guard.enter)
    compiled.set_output_convert_nulls(False)  # JSON null stays distinct from "no result"
    try:
        value = compiled.evaluate(data, frame)
    except RecursionError:
        return DOWN, "JSONata evaluation failed: expression nested too deeply"
    except Exception as exc:
        if guard.abandoned:  # the check timed out, or the work moves off the loop: not an evaluation error
            raise _limits.Abandoned from None
        return DOWN, f"JSONata evaluation failed: {_jsonata_text(exc)}"
    if value is None or value is _JsonataUtils.NULL_VALUE:
        # jsonata-go reads a JSON null in the data as no value, so a path to one finds nothing
        return DOWN, f"JSONata evaluation failed: {NO_RESULT}"
    shown = go_json_value(_plain(value))
    if shown == expected:
        return UP, "Message received, expected value is found"
    return DOWN, f"Message received but value is not equal to expected value, value was: [{shown}]"


class _Guard:
    """The evaluation hook where long evaluations stop: the check timed out, or the work moves off the loop."""
    __slots__ = ("abandoned",)

    def __init__(self) -> None:
        self.abandoned = False

    def enter(self, *_: object) -> None:
        try:
            _limits.checkpoint()
        except _limits.Abandoned:
            self.abandoned = True  # jsonata-python wraps some errors in its own: remember ours
            raise


def _jsonata_text(exc: BaseException) -> str:
    if isinstance(exc, ZeroDivisionError):
        return 'result of the "/" operator is out of range'  # jsonata-go's words
    return str(exc) or type(exc).__name__


def _unmarshal(text: str):
    """json.Unmarshal into an `any`: Go's error texts, nothing but white space after the value, numbers
    that do not fit a float64 refused; ints stay ints (jsonata-python indexes arrays with them)."""
    value = decode_json(text)  # the first value, with encoding/json's texts
    stripped = text.strip(" \t\r\n")
    try:
        _, end = json.JSONDecoder().raw_decode(stripped)
    except (ValueError, RecursionError):  # decode_json read it: only the depth limit differs
        end = len(stripped)
    trailing = stripped[end:].lstrip(" \t\r\n")
    if trailing:
        raise ValueError(f"invalid character {go_char(trailing[0])} after top-level value")
    return _numbers(value)


def _numbers(value):
    """GoNumber (fractions, exponents, integers beyond int64) to float, refusing what float64 cannot hold."""
    if isinstance(value, GoNumber):
        if value in (float("inf"), float("-inf")):
            raise ValueError(f"json: cannot unmarshal number {value.literal} into Go value of type float64")
        return float(value)
    if isinstance(value, dict):
        return {key: _numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_numbers(item) for item in value]
    return value


def _plain(value):
    """A jsonata-python result as plain JSON values: its null marker is None, a function prints as Go
    prints a lambda's pointer (no two runs alike there either)."""
    if value is _JsonataUtils.NULL_VALUE or value is None:
        return None
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, (str, int, float)):
        return value
    return "&{lambda}"


# --------------------------------------------------------------------------------------------------
# The broker's address: Go builds `<hostname with scheme>:<port>` and paho parses it with url.Parse

@dataclass(slots=True)
class Broker:
    tls: bool
    host: str  # without brackets
    port: int
    username: str | None = None  # from user info in `hostname`, which paho prefers to the config's
    password: str | None = None

    @property
    def address(self) -> str:
        return join_host_port(self.host, self.port)


class _Failure(Exception):
    """The text after `MQTT connection failed: `."""


def broker_address(hostname: str, port: int) -> Broker:
    """The broker paho would dial; _Failure in its words where it would not (a URL that url.Parse refuses
    leaves paho with no broker at all). A bare IPv6 address is bracketed (Go fails on it: too many colons)."""
    tls = hostname.startswith("mqtts://")
    rest = hostname[len("mqtts://"):] if tls else hostname.removeprefix("mqtt://")
    try:
        rest = f"[{ipaddress.IPv6Address(rest)}]"
    except ValueError:
        pass
    try:
        url = gourl.parse(f"{'mqtts' if tls else 'mqtt'}://{rest}:{port}", errors="surrogateescape")
    except gourl.URLError:
        raise _Failure("no servers defined to connect to") from None
    hostport = url.host  # what paho hands net.Dial; its SplitHostPort errors follow
    if hostport.startswith("["):
        host, _, port_text = hostport[1:].partition("]")
        port_text = port_text[1:]
    elif hostport.count(":") > 1:
        raise _Failure(f"network Error : dial tcp: address {hostport}: too many colons in address")
    elif ":" not in hostport:
        raise _Failure(f"network Error : dial tcp: address {hostport}: missing port in address")
    else:
        host, _, port_text = hostport.partition(":")
    number = int(port_text or 0)
    if not 0 < number < 65536:
        raise _Failure(f"network Error : dial tcp: address {port_text}: invalid port")
    return Broker(tls, host, number, url.user, url.password)


# --------------------------------------------------------------------------------------------------
# The session: connect, subscribe, wait for the first matching message

def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching (`+` one level, `#` the rest, `$` topics only by explicit filters); paho
    strips `$share/<group>/` and `$queue/` from a filter before routing."""
    if topic_filter.startswith("$share/"):
        topic_filter = "/".join(topic_filter.split("/")[2:])
    elif topic_filter.startswith("$queue/"):
        topic_filter = topic_filter[len("$queue/"):]
    if topic_filter == topic:
        return True
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    wanted, levels = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(wanted):
        if level == "#":
            return True
        if i >= len(levels) or level not in ("+", levels[i]):
            return False
    return len(wanted) == len(levels)


def filter_error(topic_filter: str) -> str | None:
    """paho's validateTopicAndQos."""
    if not topic_filter:
        return "invalid Topic; empty string"
    levels = topic_filter.split("/")
    if "#" in levels[:-1]:
        return "invalid Topic; multi-level wildcard must be last level"
    return None


class _Phases:
    """Seconds per phase; the kit's dialer adds to dns, connect and tls."""
    __slots__ = ("dns", "connect", "tls", "auth", "subscribe", "receive")

    def __init__(self) -> None:
        self.dns = self.connect = self.tls = self.auth = self.subscribe = self.receive = 0.0


@dataclass(slots=True)
class _Session:
    cfg: dict
    timeout_s: int
    phases: _Phases = field(default_factory=_Phases)
    conn: _dial.Conn | None = None
    connected: bool = False  # CONNACK accepted: DISCONNECT is due
    phase: str = "dial"
    deadline: float = 0.0  # loop time the whole check must end by
    address: str = "?"  # local->remote, for read and write errors
    broker: Broker | None = None
    pending: list = field(default_factory=list)  # (flags, body, arrival) of PUBLISH packets before the SUBACK

    def left(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()

    async def receive(self, budget: float) -> tuple[str, bytes, int]:
        """(topic, payload, unix ns it arrived) of the first message matching the filter; _Failure otherwise."""
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + max(budget, 0.0)
        try:
            async with asyncio.timeout_at(self.deadline):
                self.broker = broker_address(self.cfg["hostname"], self.cfg["port"])
                await self._connect(4)
                self.phase = "subscribe"
                await self._subscribe()
                self.phase = "wait"
                async with asyncio.timeout_at(min(self.deadline, loop.time() + WAIT_SHARE * self.timeout_s)):
                    return await self._first_message()
        except TimeoutError:
            raise _Failure(self._timeout_text()) from None

    def _timeout_text(self) -> str:
        """What Go reports when its own timeout of this phase expires."""
        if self.phase == "dial":
            address = self.broker.address if self.broker else "?"
            return f"network Error : dial tcp {address}: i/o timeout"
        if self.phase == "tls":
            return "network Error : context deadline exceeded"
        if self.phase == "connack":
            return f"network Error : read tcp {self.address}: i/o timeout"
        if self.phase == "subscribe":
            return "MQTT subscription failed: context deadline exceeded"
        return f"timeout, message not received within {go_duration(self.timeout_s * 1_000_000_000)}"

    async def _connect(self, version: int) -> None:
        """Dial, TLS, CONNECT/CONNACK; on a refusal (or a broken exchange) once more with MQTT 3.1, as paho does."""
        broker, cfg = self.broker, self.cfg
        assert broker is not None
        username = broker.username if broker.username is not None else cfg["username"]
        password = broker.password if broker.password is not None else cfg["password"]
        packet = _connect_packet(version, "peekaping_" + os.urandom(4).hex(), username, password)
        # Go's default tls.Config: TLS 1.2+, the system roots (SSL_CERT_FILE / SSL_CERT_DIR honoured), no ALPN
        dialer = _dial.DirectDialer(self.phases, _tls.client_context(_tls.TLSSettings(), alpn=None)
                                    if broker.tls else None)
        self.phase = "dial"
        try:
            self.conn = conn = await dialer.dial(broker.host, broker.port, (), not broker.tls,
                                                  b"" if broker.tls else packet)
        except _dial.GoError as exc:
            raise _Failure(f"network Error : {exc}") from None
        except OSError as exc:  # no socket to be had (EMFILE, ...)
            raise _Failure(f"network Error : dial tcp {broker.address}: socket: {os_error_text(exc)}") from None
        self.address = conn.addresses()
        if broker.tls:
            self.phase = "tls"
            try:
                await dialer.handshake(conn, broker.host, target=False)
            except _dial.GoError as exc:
                raise _Failure(f"network Error : {exc}") from None
        self.phase = "connack"
        started = conn.early_ns if conn.early else time.time_ns()
        try:
            await self._send(packet[conn.early:])
            self._quick_ack()
            kind, _, body = await self._packet()
            if kind != CONNACK:
                raise _Failure("non-CONNACK first packet received")
            code = body[1] if len(body) >= 2 else 255
        except _Failure as exc:
            code, error = -1, str(exc)
        finally:
            self.phases.auth += (conn.stamps.through(conn.consumed()) - started) / 1e9
        if code == 0:
            self.connected = True
            return
        self.close()
        if version == 4:
            return await self._connect(3)
        if code < 0:
            raise _Failure(f"network Error : {error}")
        raise _Failure(CONNACK_ERRORS.get(code, f"connection refused (CONNACK return code {code})"))

    async def _subscribe(self) -> None:
        problem = filter_error(self.cfg["topic"])
        if problem:
            raise _Failure(f"MQTT subscription failed: {problem}")
        try:
            topic = _string(self.cfg["topic"], "invalid Topic;")
        except _Failure as exc:
            raise _Failure(f"MQTT subscription failed: {exc}") from None
        started = time.time_ns()
        await self._send(_packet(SUBSCRIBE, b"\x00\x01" + topic + b"\x00", flags=2))  # packet id 1, QoS 0
        self._quick_ack()
        while True:  # a retained message may come before the SUBACK
            kind, flags, body = await self._packet()
            if kind == SUBACK and body[:2] == b"\x00\x01":
                break
            if kind == PUBLISH:
                self.pending.append((flags, body, self._arrival()))
        self.phases.subscribe += (self._arrival() - started) / 1e9
        if body[2:3] == b"\x80":
            raise _Failure("MQTT subscription failed: the broker refused the subscription (SUBACK return code 0x80)")

    async def _first_message(self) -> tuple[str, bytes, int]:
        started = time.time_ns()
        pinger = asyncio.create_task(self._keepalive())
        try:
            while True:
                if self.pending:
                    flags, body, arrived = self.pending.pop(0)
                else:
                    kind, flags, body = await self._packet()
                    if kind != PUBLISH:
                        continue
                    arrived = self._arrival()
                topic, payload = await self._publish(flags, body)
                if topic_matches(self.cfg["topic"], topic):
                    self.phases.receive += max(arrived - started, 0) / 1e9
                    return topic, payload, arrived
        finally:
            pinger.cancel()

    async def _publish(self, flags: int, body: bytes) -> tuple[str, bytes]:
        """Topic and payload of a PUBLISH; QoS 1 and 2 are acknowledged (the broker may ignore our QoS 0)."""
        size = int.from_bytes(body[:2], "big")
        topic = body[2:2 + size].decode("utf-8", "replace")
        rest = body[2 + size:]
        qos = (flags >> 1) & 3
        if qos:
            await self._send(_packet(PUBACK if qos == 1 else PUBREC, rest[:2]))
            rest = rest[2:]
        return topic, rest[:_limits.max_body_bytes()]

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE)
            try:
                await self._send(_packet(PINGREQ, b""))
            except _Failure:
                return

    # the wire

    def _arrival(self) -> int:
        assert self.conn is not None
        return self.conn.stamps.through(self.conn.consumed())

    def _quick_ack(self) -> None:
        """Acknowledge what comes next at once: a broker with Nagle's algorithm on (Mosquitto's default) holds
        a reply back while earlier bytes are unacknowledged (a retained message behind the SUBACK, the CONNACK
        behind TLS session tickets), and the kernel's delayed ACK would add ~40 ms to such checks."""
        sock = self.conn.writer.get_extra_info("socket") if self.conn is not None else None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except (AttributeError, OSError):  # not Linux, or no socket at hand
            pass

    async def _send(self, data: bytes) -> None:
        assert self.conn is not None
        try:
            if data:
                self.conn.writer.write(data)
            await self.conn.writer.drain()
        except (OSError, RuntimeError) as exc:
            raise self._io_failure(exc, "write") from None

    def _io_failure(self, exc: BaseException, op: str) -> _Failure:
        lost = "connection lost: " if self.connected else ""
        if isinstance(exc, ssl.SSLError):
            return _Failure(lost + _tls.tls_error_text(exc, self.broker.host if self.broker else ""))
        if isinstance(exc, OSError):
            return _Failure(f"{lost}{op} tcp {self.address}: {op}: {os_error_text(exc)}")
        return _Failure(f"{lost}use of closed network connection")

    async def _packet(self) -> tuple[int, int, bytes]:
        """(type, flags, body) of the next packet; a body past the cap (plus room for a topic) is cut there."""
        assert self.conn is not None
        reader, lost = self.conn.reader, "connection lost: " if self.connected else ""
        first = b""
        try:
            first = await reader.readexactly(1)
            length, shift = 0, 0
            for _ in range(4):
                byte = (await reader.readexactly(1))[0]
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            else:
                raise _Failure(f"{lost}malformed packet: remaining length longer than 4 bytes")
            keep = _limits.max_body_bytes() + 65540
            body = await reader.readexactly(min(length, keep))
            left = length - len(body)
            while left > 0:  # the part of a huge PUBLISH nobody reads: drop it as it comes
                left -= len(await reader.readexactly(min(left, 1 << 16)))
        except asyncio.IncompleteReadError:
            raise _Failure(lost + ("unexpected EOF" if first else "EOF")) from None
        except OSError as exc:
            raise self._io_failure(exc, "read") from None
        return first[0] >> 4, first[0] & 0x0F, body

    def close(self) -> None:
        """DISCONNECT when connected (written at once: it is two bytes), then close without waiting."""
        conn, self.conn = self.conn, None
        if conn is None:
            return
        if self.connected:
            self.connected = False
            try:
                conn.writer.write(_packet(DISCONNECT, b""))
            except Exception:
                pass
        transport = getattr(conn.writer, "transport", None)
        if transport is not None:
            transport.abort()  # a TLS close would wait for the broker's close_notify
        else:
            conn.close()

    def ms(self) -> dict[str, float]:
        return {name: round(getattr(self.phases, name) * 1000, 3) for name in _Phases.__slots__
                if getattr(self.phases, name)}


def _packet(kind: int, body: bytes, flags: int = 0) -> bytes:
    """A packet: fixed header (type << 4 | flags), remaining length as a varint, body."""
    head, length = bytearray([(kind << 4) | flags]), len(body)
    while True:
        byte, length = length & 0x7F, length >> 7
        head.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(head) + body


def _string(text: str, what: str) -> bytes:
    """An MQTT UTF-8 string: two bytes of length, then the bytes."""
    data = text.encode("utf-8", "surrogateescape")
    if len(data) > 0xFFFF:
        raise _Failure(f"{what} longer than 65535 bytes")
    return len(data).to_bytes(2, "big") + data


def _connect_packet(version: int, client_id: str, username: str, password: str) -> bytes:
    """CONNECT as paho writes it: clean session, keep-alive, the password only with a user name."""
    name = b"\x00\x04MQTT" if version == 4 else b"\x00\x06MQIsdp"
    flags = 0x02 | (0x80 if username else 0) | (0x40 if username and password else 0)
    body = name + bytes([version, flags]) + KEEPALIVE.to_bytes(2, "big") + _string(client_id, "client id")
    if username:
        body += _string(username, "username")
        if password:
            body += _string(password, "password")
    return _packet(CONNECT, body)
