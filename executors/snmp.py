"""`snmp`: one SNMP GET of one OID over UDP; UP with the value's text, or by comparing it.

v1 and v2c send `community`. v3 uses the User-based Security Model with the parameters written into
`community` (Peekaping's API has no other fields for them):
    user                                            noAuthNoPriv
    user:AUTH:auth-passphrase                       authNoPriv
    user:AUTH:auth-passphrase:PRIV:priv-passphrase  authPriv
AUTH is MD5, SHA, SHA-224, SHA-256, SHA-384 or SHA-512; PRIV is DES, AES (AES-128), AES-192, AES-256
(key extension of draft-blumenthal-aes-usm, net-snmp's AES-192/AES-256) or AES-192-C, AES-256-C (the
draft-reeder extension that Cisco uses). Names ignore case and `-`. Inside a value, `%3A` stands for
`:` and `%25` for `%`. Passphrases never appear in results: errors name fields by position.

Attempts: `max_retries` resends after `timeout` seconds each, as in Go, but the whole check (v3 engine
discovery included) ends within its budget: when the attempts do not fit, each gets an equal share
of the budget, and when a share would fall under MIN_ATTEMPT there are fewer attempts.
ping_ms runs from before resolving the host (as Go's start) to the kernel's receive stamp of the
answer; the phases are `resolve` (names only), `discovery` (v3) and `query` (the GET itself).
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import itertools
import random
import re
import socket
import time
from dataclasses import dataclass, field

from executors import DOWN, UP, ConfigError, Monitor, Result
from executors._kit import poll as _poll
from executors._kit import snmp_values as ber
from executors._kit import timing as _timing
from executors._kit.gojson import decode_config
from executors._kit.gotext import is_domain_name, join_host_port, os_error_text, resolver_suffix

SCHEMA = {  # Go's SnmpConfig; decoding and `peekaping-worker types` read it
    "host": str, "port": int, "community": str, "snmp_version": str, "oid": str,
    "json_path": str, "json_path_operator": str, "expected_value": str,
}
FIELDS = {  # field -> what it means (for `peekaping-worker types`)
    "host": "agent host name, IPv4 or IPv6 address",
    "port": "agent UDP port, 0-65535 (Go uint16); 0 or absent means 161",
    "community": "v1/v2c community; v3: user, user:AUTH:authpass or user:AUTH:authpass:PRIV:privpass "
                 "(AUTH MD5 SHA SHA-224 SHA-256 SHA-384 SHA-512, PRIV DES AES AES-192 AES-256 AES-192-C "
                 "AES-256-C; %3A for a `:` inside a value)",
    "snmp_version": "v1, v2c or v3; anything else means v2c",
    "oid": "dotted OID to GET, e.g. 1.3.6.1.2.1.1.1.0 (sysDescr.0)",
    "json_path": "not evaluated; when empty, no comparison is made (the web form sends `$`)",
    "json_path_operator": "eq ne (text), lt gt le ge (numbers when both sides are numbers, else text equality)",
    "expected_value": "value to compare with; when empty, no comparison is made",
}
SUMMARY = "one SNMP GET (v1, v2c or v3) of one OID; UP with its value, or when it compares as configured"
EXAMPLES = {"snmp": ({"host": "127.0.0.1", "port": 161, "community": "public", "snmp_version": "v2c",
                      "oid": "1.3.6.1.2.1.1.1.0", "json_path": "$", "json_path_operator": "eq",
                      "expected_value": ""}, "UP", "when an agent on 127.0.0.1 answers community public")}

DEFAULT_PORT = 161
MIN_ATTEMPT = 0.25  # seconds: the shortest wait for an answer when the budget shortens attempts
MAX_RESYNCS = 2  # v3 resends after a notInTimeWindow/unknownEngineID report, beyond the attempts
VERSIONS = {"v1": 0, "v2c": 1, "v3": 3}
TIMEOUT = "timeout"  # the last attempt's outcome when no answer came

NO_OBJECT = "The SNMP query returned that no object exists for OID {}"
NO_INSTANCE = "The SNMP query returned that no instance exists for OID {}"


async def check(monitor: Monitor, proxy: dict | None, budget: float) -> Result:
    cfg = _decode(monitor.config)
    port, oid = cfg["port"] or DEFAULT_PORT, cfg["oid"]
    version = VERSIONS.get(cfg["snmp_version"], 1)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(budget, 0.0)
    attempts, per_attempt = plan(monitor, budget)
    start = _timing.now_ns()
    timings: dict[str, float] = {}
    try:
        usm = parse_usm(cfg["community"]) if version == 3 else None
        sock = await _open(loop, cfg["host"], port, deadline, timings)
    except _ConnectFailed as exc:
        return Result(DOWN, f"SNMP connection failed: {exc}", start, _timing.now_ns(), timings=timings)
    try:
        channel = _Channel(loop, sock)
        try:
            oid_content = ber.oid_bytes(oid)
        except ValueError as exc:
            raise _GetFailed(f"marshal: {exc}") from None
        exchange = _Exchange(loop, channel, attempts, per_attempt, deadline)
        if usm is None:
            pdu, end = await _get_community(exchange, version, cfg["community"].encode(), oid_content, timings)
        else:
            pdu, end = await _get_usm(exchange, usm, oid_content, timings)
    except _GetFailed as exc:
        return Result(DOWN, f"SNMP GET failed: {exc}", start, _timing.now_ns(), timings=timings)
    finally:
        _poll.poller(loop).forget(sock.fileno())
        sock.close()
    status, message = verdict(pdu, cfg)
    return Result(status, message, start, end, timings=timings)


def _decode(config: str) -> dict:
    """Strict decoding as Go's; `port` is a uint16 there, so Go's type name is in the message."""
    try:
        cfg = decode_config(config, SCHEMA, "SnmpConfig")
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("SnmpConfig.port of type int", "SnmpConfig.port of type uint16")) from None
    if not 0 <= cfg["port"] <= 0xFFFF:
        raise ConfigError(f"failed to parse config: json: cannot unmarshal number {cfg['port']} into Go struct "
                          "field SnmpConfig.port of type uint16")
    return cfg


def plan(monitor: Monitor, budget: float) -> tuple[int, float]:
    """(attempts, seconds each): Go's max_retries + 1 attempts of `timeout` seconds, fitted into `budget`."""
    attempts = max(monitor.max_retries, 0) + 1
    each = max(float(monitor.timeout), 0.0)
    budget = max(budget, 0.0)
    if attempts * each > budget:
        attempts = min(attempts, max(1, int(budget / MIN_ATTEMPT)))
        each = budget / attempts
    return attempts, each


def verdict(pdu: ber.Pdu, cfg: dict) -> tuple[int, str]:
    """Status and message for the agent's answer, in the Go worker's words."""
    oid = cfg["oid"]
    if pdu.error_status == ber.NO_SUCH_NAME:  # SNMPv1's way of saying noSuchObject/noSuchInstance
        return DOWN, NO_OBJECT.format(oid)
    if pdu.error_status:
        name = ber.ERROR_STATUS[pdu.error_status] if 0 < pdu.error_status < len(ber.ERROR_STATUS) else "unknown"
        return DOWN, (f"SNMP GET failed: the agent answered error-status {name} ({pdu.error_status}), "
                      f"error-index {pdu.error_index}")
    if not pdu.varbinds:
        return DOWN, f"No varbinds returned from SNMP session (OID: {oid})"
    _, tag, content = pdu.varbinds[0]
    if tag == ber.NO_SUCH_OBJECT:
        return DOWN, NO_OBJECT.format(oid)
    if tag == ber.NO_SUCH_INSTANCE:
        return DOWN, NO_INSTANCE.format(oid)
    try:
        value = ber.value_text(tag, content)
    except ValueError as exc:
        return DOWN, f"SNMP GET failed: {exc}"
    operator, expected = cfg["json_path_operator"], cfg["expected_value"]
    if not cfg["json_path"] or not expected:
        return UP, f"SNMP query successful, received value: {value}"
    if ber.condition_passes(value, operator, expected):
        return UP, f"SNMP condition passes (comparing {value} {operator} {expected})"
    return DOWN, f"SNMP condition does not pass (comparing {value} {operator} {expected})"


class _ConnectFailed(Exception):
    """Resolving the host or setting up the socket failed (Go: `SNMP connection failed: <err>`)."""


class _GetFailed(Exception):
    """The GET got no usable answer (Go: `SNMP GET failed: <err>`)."""


def _ms(ns: int) -> float:
    return round(max(ns, 0) / 1e6, 3)


# --------------------------------------------------------------------------------------------------
# Socket: resolve as Go's dialer does, one connected UDP socket (so ICMP errors reach it)

async def _open(loop: asyncio.AbstractEventLoop, host: str, port: int, deadline: float,
                timings: dict) -> socket.socket:
    prefix = "error establishing connection to host: "
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError, ValueError):
        infos = None
    if infos is None:  # a name: ask the system resolver (a thread), within the budget
        if host and not is_domain_name(host):  # Go answers this without asking DNS
            raise _ConnectFailed(f"{prefix}dial udp: lookup {host}: no such host")
        began = time.time_ns()
        try:
            async with asyncio.timeout_at(deadline):
                infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_DGRAM)
        except TimeoutError:
            raise _ConnectFailed(f"{prefix}dial udp: lookup {host}{resolver_suffix()}: i/o timeout") from None
        except (socket.gaierror, UnicodeError, ValueError):
            raise _ConnectFailed(f"{prefix}dial udp: lookup {host}{resolver_suffix()}: no such host") from None
        finally:
            timings["resolve"] = _ms(time.time_ns() - began)
    failure = f"{prefix}dial udp: lookup {host}: no such host"
    for family, kind, proto, _, address in infos:  # the first address that takes, as Go's dialSerial
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            failure = f"{prefix}dial udp {join_host_port(address[0], port)}: connect: {os_error_text(exc)}"
    raise _ConnectFailed(failure)


class _Channel:
    """Datagrams of one connected UDP socket, each with the kernel's receive stamp, read from the
    poller's callback (not when a coroutine resumes); a queued ICMP error is kept as `error`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self.loop, self.sock = loop, sock
        self.inbox: collections.deque[tuple[bytes, int]] = collections.deque()
        self.error: OSError | None = None
        self.waiter: asyncio.Future | None = None
        _timing.rx_stamps_on(sock)
        _poll.poller(loop).watch(sock.fileno(), _poll.IN, self._readable)
        local, remote = sock.getsockname(), sock.getpeername()
        self.name = f"udp {join_host_port(local[0], local[1])}->{join_host_port(remote[0], remote[1])}"

    def _readable(self, _: int) -> None:
        for _ in range(64):
            try:
                data, ancillary, _, _ = self.sock.recvmsg(65535, _timing.ANCILLARY)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # ECONNREFUSED and the like, from an ICMP error
                self.error = exc
                break
            self.inbox.append((data, _timing.rx_stamp(ancillary) or _timing.now_ns()))
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def send(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except OSError as exc:
            raise _SendError(f"write {self.name}: write: {os_error_text(exc)}") from None

    async def receive(self, until: float) -> tuple[bytes, int] | None:
        """The next datagram and its arrival (unix ns), None when `until` (loop time) passes first;
        _SendError (Go's read error text) when an ICMP error arrived instead."""
        while not self.inbox:
            if self.error is not None:
                error, self.error = self.error, None
                raise _SendError(f"read {self.name}: read: {os_error_text(error)}")
            if self.loop.time() >= until:
                return None
            self.waiter = self.loop.create_future()
            try:
                async with asyncio.timeout_at(until):
                    await self.waiter
            except TimeoutError:
                pass
        return self.inbox.popleft()


class _SendError(Exception):
    """A write or read error of the socket, in Go's words; the attempt ends at once."""


RESEND = object()  # an answer asking for the request again (v3 clock or engine ID resynchronised)


class _Exchange:
    """Send a request and wait for an answer `accept` takes, resending after each attempt's time."""

    def __init__(self, loop, channel: _Channel, attempts: int, per_attempt: float, deadline: float) -> None:
        self.loop, self.channel = loop, channel
        self.attempts, self.per_attempt, self.deadline = attempts, per_attempt, deadline
        self.first_sent = self.arrived = 0  # unix ns the last run's first request left, its answer came

    def elapsed_ms(self) -> float:
        """The last run, from its first request to its answer (or to now, when none came)."""
        return _ms((self.arrived or _timing.now_ns()) - self.first_sent) if self.first_sent else 0.0

    async def run(self, build, accept):
        """`build()` gives each attempt's bytes; `accept(data)` returns the answer, None to ignore the
        datagram or RESEND. Returns (answer, arrival ns); _GetFailed when none came in time."""
        outcome, made, allowed, resyncs = TIMEOUT, 0, self.attempts, 0
        self.first_sent = self.arrived = 0
        while made < allowed and (made == 0 or self.loop.time() < self.deadline):
            made += 1
            packet = build()
            sent = _timing.now_ns()
            self.first_sent = self.first_sent or sent
            until = min(self.loop.time() + self.per_attempt, self.deadline)
            try:
                self.channel.send(packet)
                while True:
                    got = await self.channel.receive(until)
                    if got is None:
                        outcome = TIMEOUT
                        break
                    answer = accept(got[0])
                    if answer is RESEND and resyncs < MAX_RESYNCS:
                        resyncs += 1
                        allowed += 1
                        outcome = TIMEOUT
                        break
                    if answer is not None and answer is not RESEND:
                        self.arrived = got[1]
                        return answer, got[1]
            except _SendError as exc:
                outcome = str(exc)
        if outcome == TIMEOUT:
            raise _GetFailed(f"request timeout (after {made - 1} retries)")
        raise _GetFailed(outcome)


async def _get_community(exchange: _Exchange, version: int, community: bytes, oid: bytes,
                         timings: dict) -> tuple[ber.Pdu, int]:
    sent_ids: set[int] = set()
    next_id = itertools.count(random.randrange(1, 1 << 31))

    def build() -> bytes:
        request_id = next(next_id) & 0x7FFFFFFF
        sent_ids.add(request_id)
        return ber.community_message(version, community, ber.get_pdu(request_id, oid))

    def accept(data: bytes) -> ber.Pdu | None:
        try:
            _, pdu = ber.parse_community_message(data)
        except ValueError:
            return None  # not an SNMP answer: keep waiting, as for a lost one
        return pdu if pdu.tag == ber.RESPONSE and pdu.request_id in sent_ids else None

    try:
        return await exchange.run(build, accept)
    finally:
        timings["query"] = exchange.elapsed_ms()


# --------------------------------------------------------------------------------------------------
# SNMPv3 User-based Security Model: engine discovery, then the signed (and encrypted) GET

@dataclass(frozen=True, slots=True)
class Usm:
    user: bytes
    auth: str = ""  # a key of AUTH, "" for noAuth
    auth_pass: bytes = field(default=b"", repr=False)
    priv: str = ""  # a key of PRIV, "" for noPriv
    priv_pass: bytes = field(default=b"", repr=False)


AUTH_NAMES = "MD5, SHA, SHA-224, SHA-256, SHA-384, SHA-512"
PRIV_NAMES = "DES, AES, AES-192, AES-256, AES-192-C, AES-256-C"
_ESCAPE = re.compile("%(3[aA]|25)")


def parse_usm(community: str) -> Usm:
    """The USM parameters written in `community`; _ConnectFailed naming the field, never its value."""
    fields = [_ESCAPE.sub(lambda m: ":" if m.group(1) != "25" else "%", part).encode()
              for part in community.split(":")]
    bad = "invalid SNMPv3 community: "
    if len(fields) not in (1, 3, 5):
        raise _ConnectFailed(f"{bad}expected user, user:AUTH:auth-passphrase or user:AUTH:auth-passphrase:PRIV:"
                             f"priv-passphrase, found {len(fields)} fields (write a `:` inside a value as %3A)")
    if len(fields) == 1:
        return Usm(fields[0])
    auth = _protocol(fields[1])
    if auth not in ber.AUTH:
        raise _ConnectFailed(f"{bad}field 2 is not an authentication protocol ({AUTH_NAMES})")
    if not fields[2]:
        raise _ConnectFailed(f"{bad}the authentication passphrase (field 3) is empty")
    if len(fields) == 3:
        return Usm(fields[0], auth, fields[2])
    priv = _protocol(fields[3])
    if priv not in ber.PRIV:
        raise _ConnectFailed(f"{bad}field 4 is not a privacy protocol ({PRIV_NAMES})")
    if not fields[4]:
        raise _ConnectFailed(f"{bad}the privacy passphrase (field 5) is empty")
    return Usm(fields[0], auth, fields[2], priv, fields[4])


def _protocol(name: bytes) -> str:
    return name.decode(errors="replace").upper().replace("-", "").replace("_", "")


@dataclass
class _Engine:
    """What the agent's engine told us: its ID, boots and time (with when we learnt the time)."""
    id: bytes = b""
    boots: int = 0
    time: int = 0
    learnt: float = 0.0

    def now(self) -> int:
        return self.time + int(time.monotonic() - self.learnt)


class _V3:
    """One v3 GET: builds signed (and encrypted) requests, checks and opens the answers."""

    def __init__(self, usm: Usm, oid: bytes | None) -> None:
        self.usm, self.oid, self.engine = usm, oid, _Engine()
        self.flags = 0x04 | (0x01 if usm.auth else 0) | (0x02 if usm.priv else 0)  # reportable, auth, priv
        self.msg_ids: set[int] = set()
        self.request_ids: set[int] = set()
        self.next_id = itertools.count(random.randrange(1, 1 << 31))
        self.auth_key = self.priv_key = b""

    def discovery(self) -> bytes:
        """A noAuthNoPriv request without user or varbind: the agent reports its engine ID, boots, time."""
        return self._message(0x04, b"", 0, 0, b"", None)

    def request(self) -> bytes:
        return self._message(self.flags, self.engine.id, self.engine.boots, self.engine.now(), self.usm.user, self.oid)

    def learn(self, engine_id: bytes, boots: int, engine_time: int) -> None:
        if engine_id != self.engine.id:
            hash_name = ber.AUTH[self.usm.auth][0] if self.usm.auth else ""
            if self.usm.auth:
                self.auth_key = ber.localized_key(self.usm.auth_pass, hash_name, engine_id)
            if self.usm.priv:
                _, size, extension = ber.PRIV[self.usm.priv]
                self.priv_key = ber.localized_key(self.usm.priv_pass, hash_name, engine_id, size, extension)
        self.engine = _Engine(engine_id, boots, engine_time, time.monotonic())

    def _message(self, flags: int, engine_id: bytes, boots: int, engine_time: int, user: bytes,
                 oid: bytes | None) -> bytes:
        msg_id = next(self.next_id) & 0x7FFFFFFF
        request_id = next(self.next_id) & 0x7FFFFFFF
        self.msg_ids.add(msg_id)
        self.request_ids.add(request_id)
        scoped = ber.sequence(ber.octets(engine_id), ber.octets(b""), ber.get_pdu(request_id, oid))
        salt = b""
        if flags & 0x02:
            scoped, salt = ber.encrypt(self.usm.priv, self.priv_key, boots, engine_time, scoped)
            scoped = ber.octets(scoped)
        digest = ber.AUTH[self.usm.auth][1] if flags & 0x01 else 0
        before = ber.octets(engine_id) + ber.integer(boots) + ber.integer(engine_time) + ber.octets(user)
        fields = before + ber.octets(bytes(digest)) + ber.octets(salt)
        security = ber.header(ber.SEQUENCE, len(fields)) + fields
        head = ber.integer(3) + ber.sequence(ber.integer(msg_id), ber.integer(65507), ber.octets(bytes((flags,))),
                                             ber.integer(3))
        wrapped = ber.header(ber.OCTET_STRING, len(security)) + security
        body = head + wrapped + scoped
        whole = bytearray(ber.header(ber.SEQUENCE, len(body)) + body)
        if digest:  # the HMAC replaces the zeros of msgAuthenticationParameters (a 2-byte TLV header)
            at = len(whole) - len(body) + len(head) + len(wrapped) - len(fields) + len(before) + 2
            whole[at:at + digest] = self._mac(bytes(whole))
        return bytes(whole)

    def _mac(self, whole: bytes) -> bytes:
        return ber.mac(self.usm.auth, self.auth_key, whole)

    def open(self, data: bytes) -> tuple[tuple[bytes, int, int], int, ber.Pdu] | None:
        """((engine ID, boots, time), message flags, PDU) of an answer to one of our messages; None for
        anything else: not SNMPv3, another message ID, a signature that does not verify, undecryptable."""
        try:
            _, start, end = ber.read_tlv(data, 0, len(data))
            parts = ber.children(data, start, end)
            if len(parts) != 4 or ber.int_at(data, parts[0]) != 3:
                return None
            header = ber.children(data, *ber.expect(parts[1], ber.SEQUENCE))
            if len(header) != 4 or ber.int_at(data, header[0]) not in self.msg_ids:
                return None
            flags = ber.octets_at(data, header[2])[:1]
            flags = flags[0] if flags else 0
            _, s_start, s_end = ber.read_tlv(data, *ber.expect(parts[2], ber.OCTET_STRING))
            security = ber.children(data, s_start, s_end)
            if len(security) != 6:
                return None
            engine = (ber.octets_at(data, security[0]), ber.int_at(data, security[1]), ber.int_at(data, security[2]))
            if flags & 0x01:
                if not self.auth_key:
                    return None
                mac_start, mac_end = ber.expect(security[4], ber.OCTET_STRING)
                zeroed = data[:mac_start] + bytes(mac_end - mac_start) + data[mac_end:]
                if not hmac.compare_digest(self._mac(zeroed), data[mac_start:mac_end]):
                    return None  # not signed with our key: not from the agent we asked
            scoped_element = parts[3]
            if flags & 0x02:
                if not self.priv_key:
                    return None
                plain = ber.decrypt(self.usm.priv, self.priv_key, engine[1], engine[2],
                                    ber.octets_at(data, security[5]), ber.octets_at(data, parts[3]))
                data, scoped_element = plain, ber.read_tlv(plain, 0, len(plain))
            scoped = ber.children(data, *ber.expect(scoped_element, ber.SEQUENCE))
            if len(scoped) != 3:
                return None
            return engine, flags, ber.parse_pdu(data, scoped[2])
        except ValueError:
            return None


# Report PDUs: the agent refused the request (RFC 3414 usmStats, RFC 3412 snmp MPD stats). Texts as
# gosnmp's errors, with what to check.
REPORTS = {
    ".1.3.6.1.6.3.15.1.1.1.0": "unknown security level (the agent does not accept this user at this level)",
    ".1.3.6.1.6.3.15.1.1.3.0": "unknown username (the agent has no such SNMPv3 user)",
    ".1.3.6.1.6.3.15.1.1.5.0": "wrong digest (check the authentication protocol and passphrase)",
    ".1.3.6.1.6.3.15.1.1.6.0": "decryption error (check the privacy protocol and passphrase)",
    ".1.3.6.1.6.3.11.2.1.1.0": "unknown security models",
    ".1.3.6.1.6.3.11.2.1.2.0": "invalid messages",
    ".1.3.6.1.6.3.11.2.1.3.0": "unknown pdu handlers",
}
NOT_IN_TIME_WINDOW, UNKNOWN_ENGINE_ID = ".1.3.6.1.6.3.15.1.1.2.0", ".1.3.6.1.6.3.15.1.1.4.0"


async def _get_usm(exchange: _Exchange, usm: Usm, oid: bytes, timings: dict) -> tuple[ber.Pdu, int]:
    v3 = _V3(usm, oid)

    def discovered(data: bytes):
        opened = v3.open(data)
        return opened[0] if opened is not None and opened[0][0] else None

    try:
        (engine_id, boots, engine_time), _ = await exchange.run(v3.discovery, discovered)
    finally:
        timings["discovery"] = exchange.elapsed_ms()
    v3.learn(engine_id, boots, engine_time)

    def answered(data: bytes):
        opened = v3.open(data)
        if opened is None:
            return None
        engine, flags, pdu = opened
        if pdu.tag == ber.RESPONSE:  # from the agent: signed when we sign, and to one of our requests
            authentic = flags & 0x01 or not v3.flags & 0x01
            return pdu if authentic and pdu.request_id in v3.request_ids else None
        oid_text = pdu.varbinds[0][0] if pdu.varbinds else ""
        if oid_text in (NOT_IN_TIME_WINDOW, UNKNOWN_ENGINE_ID) and engine[0]:
            v3.learn(*engine)
            return RESEND
        raise _GetFailed(REPORTS.get(oid_text, f"unknown report pdu {oid_text or '(no varbind)'}"))

    try:
        return await exchange.run(v3.request, answered)
    except _GetFailed as exc:
        if usm.priv and str(exc).startswith("request timeout"):  # net-snmp drops what it cannot decrypt
            raise _GetFailed(f"{exc}: the agent answered engine discovery but not the encrypted request "
                             "(check the privacy protocol and passphrase)") from None
        raise
    finally:
        timings["query"] = exchange.elapsed_ms()
