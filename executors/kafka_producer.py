"""`kafka-producer`: produce one message to a topic, acknowledged by every in-sync replica; UP with the
partition and offset the leader assigned.

What is sent and how failures read follow Go's sarama client as Peekaping configures it: bootstrap on
the first seed broker that answers (ApiVersions, SASL, Metadata; all seeds failing is `kafka: client
has run out of available brokers to talk to: ...`, rounds retried 3 times 250 ms apart), then, as the
send, Metadata for the topic with `allow_auto_topic_creation` as configured (unknown topics and absent
leaders retried 3 times 250 ms apart), a random partition that has a leader, and one Produce request
(acks -1) to that leader (retriable errors retried 3 times 100 ms apart). Unlike Go, the whole check
fits the monitor's budget (sarama waits up to 30 s per dial and read), each seed broker but the last
gets a fair share of the time left, and SCRAM-SHA-256/512 work (Peekaping's Go worker configured no
SCRAM client, so they always failed).

Connections are the worker's own (executors/_kit/dial.py: Go's dial and x509 texts, timestamped
reads); the protocol structs and the record-batch builder are aiokafka's; SASL (PLAIN, SCRAM) is here.

ping_ms runs from after the config checks to the arrival of the Produce response (kernel receive stamp
on a plain connection, the transport callback's clock under TLS). timings: dns, connect, tls, versions
(ApiVersions), auth (SASL), metadata and produce, summed over connections and retries.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import random
import secrets
import socket
import ssl
import struct
import time
from dataclasses import dataclass, field

from aiokafka.errors import IncompatibleBrokerVersion
from aiokafka.protocol.admin import ApiVersionRequest, SaslAuthenticateRequest, SaslHandShakeRequest
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from executors import DOWN, UP, ConfigError, Monitor, Result
from executors._kit import dial as _dial, limits as _limits, timing as _timing, tls as _tls
from executors._kit.gojson import decode_config, decode_struct
from executors._kit.gotext import join_host_port, os_error_text

SCHEMA = {"brokers": list, "topic": str, "message": str, "allow_auto_topic_creation": bool, "ssl": bool,
          "sasl_options": dict}  # Go's KafkaProducerConfig
SASL_SCHEMA = {"mechanism": str, "username": str, "password": str}  # Go's KafkaProducerSASLOptions
FIELDS = {
    "brokers": "seed brokers as host:port, tried in order until one answers",
    "topic": "topic the message is produced to",
    "message": "message value (no key); a random partition that has a leader is chosen",
    "allow_auto_topic_creation": "ask the broker to create an unknown topic (false: unknown topic is DOWN)",
    "ssl": "TLS, verified against the system roots (SSL_CERT_FILE / SSL_CERT_DIR honoured)",
    "sasl_options": 'object: mechanism ("", "None", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"), username, '
                    "password",
}
SUMMARY = "produce one message to a Kafka topic with acks from all in-sync replicas; UP with partition and offset"
EXAMPLES = {"kafka-producer": ({"brokers": ["127.0.0.1:9092"], "topic": "health", "message": "ping"}, "UP",
                               "when a Kafka broker on 127.0.0.1:9092 has the topic health")}

OUT_OF_BROKERS = "kafka: client has run out of available brokers to talk to"
ROUND_RETRIES = METADATA_RETRIES = 3  # sarama Metadata.Retry.Max
METADATA_BACKOFF = 0.25  # sarama Metadata.Retry.Backoff
PRODUCE_RETRIES, PRODUCE_BACKOFF = 3, 0.1  # sarama Producer.Retry.Max / Backoff
MAX_MESSAGE_BYTES = 1_000_000  # sarama Producer.MaxMessageBytes
RECORD_OVERHEAD = 36  # sarama's maximumRecordOverhead for record batches (v2)
MAX_RESPONSE = 8 << 20  # one broker response; a single-topic Metadata or a Produce answer is far smaller
MIN_ITERATIONS = 4096  # xdg-go/scram's minimum, as Kafka's
MAX_ITERATIONS = 1 << 16  # a hostile server cannot make the worker derive keys for minutes
MECHANISMS = {"PLAIN": None, "SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
RETRIABLE = frozenset({2, 3, 5, 6, 7, 19, 20, 56})  # produce errors sarama retries
KAFKA_ERRORS = {  # sarama's KError texts for the codes a producer can meet
    -1: "Unexpected (unknown?) server error",
    2: "Message contents does not match its CRC",
    3: "Request was for a topic or partition that does not exist on this broker",
    5: "In the middle of a leadership election, there is currently no leader for this partition and hence "
       "it is unavailable for writes",
    6: "Tried to send a message to a replica that is not the leader for some partition. Your metadata is out of date",
    7: "Request exceeded the user-specified time limit in the request",
    10: "Message was too large, server rejected it to avoid allocation error",
    17: "The request attempted to perform an operation on an invalid topic",
    19: "Messages are rejected since there are fewer in-sync replicas than required",
    20: "Messages are written to the log, but to fewer in-sync replicas than required",
    29: "The client is not authorized to access this topic",
    33: "The broker does not support the requested SASL mechanism",
    35: "The version of API is not supported",
    56: "Disk error when trying to access log file on the disk",
    58: "SASL Authentication failed",
    87: "This record has failed the validation on broker and hence will be rejected",
}


def kafka_error(code: int) -> str:
    """sarama's KError.Error() for a Kafka error code."""
    text = KAFKA_ERRORS.get(code)
    return f"kafka server: {text}" if text else f"Unknown error, how did this happen? Error code = {code}"


class _Failure(Exception):
    """A failure in sarama's words."""


class _Phases:
    """Seconds per phase; the kit's dialer adds to dns, connect and tls."""
    __slots__ = ("dns", "connect", "tls", "versions", "auth", "metadata", "produce")

    def __init__(self) -> None:
        self.dns = self.connect = self.tls = self.versions = self.auth = self.metadata = self.produce = 0.0

    def ms(self) -> dict[str, float]:
        return {name: round(getattr(self, name) * 1000, 3) for name in self.__slots__ if getattr(self, name)}


async def check(monitor: Monitor, proxy: dict | None, budget: float) -> Result:
    try:
        cfg = decode_config(monitor.config, SCHEMA, "KafkaProducerConfig")
    except ConfigError as exc:  # the nested struct's Go type, not a map
        raise ConfigError(str(exc).replace("sasl_options of type map",
                                           "sasl_options of type executor.KafkaProducerSASLOptions")) from None
    sasl = _decode_sasl(cfg["sasl_options"])
    start = time.time_ns()
    mechanism = sasl["mechanism"]
    use_sasl = mechanism not in ("", "None")
    if use_sasl and mechanism not in MECHANISMS:
        return Result(DOWN, f"unsupported SASL mechanism: {mechanism}", start, time.time_ns())
    problem = _configuration_problem(use_sasl, sasl, monitor.timeout, cfg["brokers"])
    if problem:
        return Result(DOWN, f"Failed to create Kafka producer: kafka: invalid configuration ({problem})", start,
                      time.time_ns())
    probe = _Probe(cfg, (mechanism, sasl["username"], sasl["password"]) if use_sasl else None, monitor,
                   time.monotonic() + max(budget, 0.001))
    try:
        async with asyncio.timeout(max(budget, 0.001)):
            partition, offset = await probe.run()
    except _Failure as exc:
        prefix = "Failed to send message" if probe.sending else "Failed to create Kafka producer"
        return Result(DOWN, f"{prefix}: {exc}", start, time.time_ns(), timings=probe.phases.ms())
    except TimeoutError:
        text = f"Message send timeout after {monitor.timeout}s" if probe.sending else \
            f"Failed to create Kafka producer: {_out_of_brokers(probe.errors + [probe.pending])}"
        return Result(DOWN, text, start, time.time_ns(), timings=probe.phases.ms())
    finally:
        probe.close()
    return Result(UP, f"Message sent successfully to topic '{cfg['topic']}' (partition: {partition}, offset: "
                      f"{offset})", start, probe.end_ns, timings=probe.phases.ms())


def _decode_sasl(value: dict | None) -> dict:
    """sasl_options as Go decodes the nested struct (strict, with its error texts)."""
    try:
        return decode_struct(value, SASL_SCHEMA, "KafkaProducerSASLOptions", strict=True, parsed=True)
    except ValueError as exc:
        text = str(exc).replace("Go struct field KafkaProducerSASLOptions.",
                                "Go struct field KafkaProducerSASLOptions.sasl_options.")
        raise ConfigError(f"failed to parse config: {text}") from None


def _configuration_problem(use_sasl: bool, sasl: dict, timeout: int, brokers: list[str]) -> str:
    """sarama's Config.Validate and NewClient checks that Peekaping's settings can fail, in its order."""
    if use_sasl and not sasl["username"]:
        return "Net.SASL.User must not be empty when SASL is enabled"
    if use_sasl and not sasl["password"]:
        return "Net.SASL.Password must not be empty when SASL is enabled"
    if timeout <= 0:
        return "Producer.Timeout must be > 0"
    if not brokers:
        return "You must provide at least one broker address"
    return ""


def _out_of_brokers(errors: list[str]) -> str:
    """sarama's Wrap(ErrOutOfBrokers, errs...): errors.Join puts one per line."""
    return f"{OUT_OF_BROKERS}: " + "\n".join(errors) if errors else OUT_OF_BROKERS


def split_host_port(address: str) -> tuple[str, int]:
    """Go's net.SplitHostPort and port lookup as net.Dial does them; _Failure with Go's dial text."""
    def fail(why: str) -> _Failure:
        return _Failure(f"dial tcp: address {address}: {why}")
    colon = address.rfind(":")
    if colon < 0:
        raise fail("missing port in address")
    if address.startswith("["):
        end = address.find("]")
        if end < 0:
            raise fail("missing ']' in address")
        if end + 1 == len(address):
            raise fail("missing port in address")
        if end + 1 != colon:
            raise fail("too many colons in address" if address[end + 1] == ":" else "missing port in address")
        host, rest_from = address[1:end], end + 1
    else:
        host, rest_from = address[:colon], 0
        if ":" in host:
            raise fail("too many colons in address")
    if "[" in address[1 if rest_from else 0:]:
        raise fail("unexpected '[' in address")
    if "]" in address[rest_from:]:
        raise fail("unexpected ']' in address")
    service = address[colon + 1:]
    if service == "":
        port = 0
    elif service.isdigit():
        port = int(service)
        if port > 65535:
            raise _Failure(f"dial tcp: address {service}: invalid port")
    else:
        try:
            port = socket.getservbyname(service, "tcp")
        except OSError:
            raise _Failure(f"dial tcp: lookup tcp/{service}: unknown port") from None
    return host or "127.0.0.1", port  # Go dials the local system for an empty host


# --------------------------------------------------------------------------------------------------
# One check

@dataclass(slots=True)
class _Probe:
    cfg: dict
    sasl: tuple[str, str, str] | None
    monitor: Monitor
    deadline: float  # time.monotonic() when the budget ends
    phases: _Phases = field(default_factory=_Phases)
    context: ssl.SSLContext | None = None
    links: list[_Link] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # this bootstrap round's failures, one per seed broker
    pending: str = ""  # what a seed broker's failure reads as if the time runs out now
    sending: bool = False  # past the producer's creation: failures are the send's
    end_ns: int = 0
    client_id: str = ""

    def __post_init__(self) -> None:
        self.client_id = f"peekaping-monitor-{self.monitor.id}"
        if self.cfg["ssl"]:
            # system roots (SSL_CERT_FILE / SSL_CERT_DIR honoured, as by Go), TLS 1.2+, the broker's host
            # name verified (sarama sets ServerName to the host of the broker address), no ALPN
            self.context = _tls.client_context(_tls.TLSSettings(), alpn=None)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    async def run(self) -> tuple[int, int]:
        seed = await self.bootstrap()
        self.sending = True
        value = self.cfg["message"].encode("utf-8", "surrogatepass")
        size = RECORD_OVERHEAD + len(value)
        if size > MAX_MESSAGE_BYTES:
            raise _Failure("kafka: invalid configuration (Attempt to produce message larger than configured "
                           f"Producer.MaxMessageBytes: {size} > {MAX_MESSAGE_BYTES})")
        partition, leader = await self.pick_partition(seed)
        retries = 0
        while True:
            try:
                link = seed if (leader == (seed.host, seed.port)) else await self.open_link(*leader)
                code, offset = await self.produce(link, partition, value)
                if code == 0:
                    return partition, offset
                failure = _Failure(kafka_error(code))
                if code not in RETRIABLE:
                    raise failure
            except _Connection as exc:  # the leader's connection failed: sarama retries these
                failure = _Failure(str(exc))
            if retries >= PRODUCE_RETRIES or self.remaining() <= PRODUCE_BACKOFF:
                raise failure
            retries += 1
            await asyncio.sleep(PRODUCE_BACKOFF)
            leader = await self.leader_of(seed, partition)

    async def bootstrap(self) -> _Link:
        """The first seed broker that completes ApiVersions, SASL and Metadata, in sarama's rounds."""
        seeds: list[tuple[str, int] | str] = []
        for address in self.cfg["brokers"]:
            try:
                seeds.append(split_host_port(address))
            except _Failure as exc:
                seeds.append(str(exc))
        for round_ in range(ROUND_RETRIES + 1):
            self.errors = []
            for index, seed in enumerate(seeds):
                if isinstance(seed, str):
                    self.errors.append(seed)
                    continue
                later = sum(1 for s in seeds[index + 1:] if not isinstance(s, str))
                link = _Link(self, *seed)
                self.links.append(link)
                try:  # every seed but the last gets a fair share of the time left
                    async with asyncio.timeout(self.remaining() / (later + 1) if later else None):
                        await link.open()
                        reply = await link.metadata([], False)
                except TimeoutError:
                    self.errors.append(self.pending)
                    link.close()
                    continue
                except _Failure as exc:
                    self.errors.append(str(exc))
                    link.close()
                    continue
                if reply.brokers:
                    return link
                link.close()  # a broker still starting answers without brokers: sarama moves on
            usable = any(not isinstance(seed, str) for seed in seeds)  # address errors do not change
            if round_ == ROUND_RETRIES or not usable or self.remaining() <= 2 * METADATA_BACKOFF:
                break  # a round is only worth starting with some time left after the back-off
            await asyncio.sleep(METADATA_BACKOFF)
        raise _Failure(_out_of_brokers(self.errors))

    async def pick_partition(self, seed: _Link) -> tuple[int, tuple[str, int]]:
        partitions = await self.writable(seed)
        return random.choice(partitions)  # no key: sarama's random partitioner over writable partitions

    async def leader_of(self, seed: _Link, partition: int) -> tuple[str, int]:
        for number, leader in await self.writable(seed):
            if number == partition:
                return leader
        raise _Failure(kafka_error(5))

    async def writable(self, seed: _Link) -> list[tuple[int, tuple[str, int]]]:
        """(partition, leader address) of the topic's partitions that have a leader, after sarama's retries."""
        topic, retries = self.cfg["topic"], 0
        while True:
            if seed.conn is None:  # it led the partition and its connection failed: sarama reconnects
                await seed.open()
            reply = await seed.metadata([topic], self.cfg["allow_auto_topic_creation"])
            brokers = {broker[0]: (broker[1], broker[2]) for broker in reply.brokers}
            found = [t for t in reply.topics if t[1] == topic]
            code = found[0][0] if found else 3
            writable = [(p[1], brokers[p[2]]) for p in (found[0][-1] if found else []) if p[2] in brokers]
            if code == 0 and writable:
                return writable
            code = code or 5  # partitions without a leader
            if code not in (3, 5) or retries >= METADATA_RETRIES or self.remaining() <= METADATA_BACKOFF:
                raise _Failure(kafka_error(code))
            retries += 1
            await asyncio.sleep(METADATA_BACKOFF)

    async def open_link(self, host: str, port: int) -> _Link:
        link = _Link(self, host, port)
        self.links.append(link)
        try:
            await link.open()
        except _Failure as exc:
            link.close()
            raise _Connection(str(exc)) from None
        return link

    async def produce(self, link: _Link, partition: int, value: bytes) -> tuple[int, int]:
        """(error code, base offset) of one record batch produced with acks from all in-sync replicas."""
        builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0, producer_id=-1,
                                            producer_epoch=-1, base_sequence=-1, batch_size=2 * MAX_MESSAGE_BYTES)
        builder.append(0, int(time.time() * 1000), None, value, [])
        # the broker waits for replicas at most the monitor timeout (as Go), and no longer than the budget
        wait_ms = max(1, min(self.monitor.timeout * 1000, int((self.remaining() - 0.05) * 1000)))
        request = ProduceRequest(None, -1, wait_ms, [(self.cfg["topic"], [(partition, bytes(builder.build()))])])
        try:
            reply, sent, done = await link.call(request)
        except _Failure as exc:
            link.close()
            raise _Connection(str(exc)) from None
        self.phases.produce += (done - sent) / 1e9
        self.end_ns = done
        for topic in reply.topics:
            for answer in topic[1]:
                if topic[0] == self.cfg["topic"] and answer[0] == partition:
                    return answer[1], answer[2]
        raise _Failure("kafka: response did not contain all the expected topic/partition blocks")

    async def authenticate(self, link: _Link) -> None:
        """SaslHandshake v1, then SaslAuthenticate rounds: PLAIN, or SCRAM (RFC 5802/7677)."""
        assert self.sasl is not None
        mechanism, user, password = self.sasl
        reply, _, _ = await link.call(SaslHandShakeRequest(mechanism))
        if reply.error_code:
            raise _Failure(kafka_error(reply.error_code))
        if mechanism == "PLAIN":  # sarama sends an empty authorization identity
            await link.sasl_step(b"\0" + user.encode("utf-8", "surrogatepass") + b"\0"
                                 + password.encode("utf-8", "surrogatepass"))
            return
        scram = ScramClient(mechanism, user, password)
        try:
            server_first = scram.read_server_first(await link.sasl_step(scram.first()))
            salted = await salted_password(scram.hash_name, password, *server_first[1:])
            scram.read_server_final(await link.sasl_step(scram.final(server_first, salted)))
        except ScramError as exc:
            raise _Failure(str(exc)) from None

    def close(self) -> None:
        for link in self.links:
            link.close()
        self.links.clear()


class _Connection(Exception):
    """A connection to a partition leader failed (sarama retries the produce)."""


class _Link:
    """One broker connection: dial, TLS, ApiVersions and SASL, then request/response calls."""
    __slots__ = ("probe", "host", "port", "conn", "versions", "correlation")

    def __init__(self, probe: _Probe, host: str, port: int) -> None:
        self.probe, self.host, self.port = probe, host, port
        self.conn: _dial.Conn | None = None
        self.versions: dict[int, tuple[int, int]] = {}
        self.correlation = 0

    async def open(self) -> None:
        probe, self.versions = self.probe, {}
        dialer = _dial.DirectDialer(probe.phases, probe.context)
        probe.pending = f"dial tcp {join_host_port(self.host, self.port)}: i/o timeout"
        try:
            self.conn = conn = await dialer.dial(self.host, self.port, (), probe.context is None)
        except _dial.GoError as exc:
            raise _Failure(str(exc)) from None
        except OSError as exc:  # no socket to be had (EMFILE, ...)
            raise _Failure(f"dial tcp {join_host_port(self.host, self.port)}: socket: {os_error_text(exc)}") from None
        probe.pending = f"read tcp {conn.addresses()}: i/o timeout"  # Go's read deadline text
        if probe.context is not None:
            try:
                await dialer.handshake(conn, self.host, target=False)
            except _dial.GoError as exc:
                raise _Failure(str(exc)) from None
        reply, sent, done = await self.call(ApiVersionRequest())
        probe.phases.versions += (done - sent) / 1e9
        if reply.error_code:
            raise _Failure(kafka_error(reply.error_code))
        self.versions = {key: (low, high) for key, low, high in reply.api_versions}
        if probe.sasl is not None:
            started = _timing.now_ns()
            try:
                await probe.authenticate(self)
            finally:
                probe.phases.auth += (max(conn.stamps.through(conn.consumed()), started) - started) / 1e9

    async def metadata(self, topics: list[str], auto_create: bool):
        reply, sent, done = await self.call(MetadataRequest(topics, auto_create))
        self.probe.phases.metadata += (done - sent) / 1e9
        return reply

    async def sasl_step(self, payload: bytes) -> bytes:
        reply, _, _ = await self.call(SaslAuthenticateRequest(payload))
        if reply.error_code:  # sarama wraps the broker's message into its error
            text = kafka_error(reply.error_code)
            raise _Failure(f"{text}: {reply.error_message}" if reply.error_message else text)
        return reply.sasl_auth_bytes or b""

    async def call(self, request):
        """(response, unix ns the request left, unix ns its response's last byte arrived)."""
        conn = self.conn
        if conn is None:
            raise _Failure("kafka: broker not connected")
        try:
            body = request.prepare(self.versions)
        except (IncompatibleBrokerVersion, NotImplementedError):
            raise _Failure(kafka_error(35)) from None
        self.correlation += 1
        message = body.build_request_header(correlation_id=self.correlation,
                                            client_id=self.probe.client_id).encode() + body.encode()
        conn.stamps.restart()
        sent = _timing.now_ns()
        try:
            conn.writer.write(struct.pack(">i", len(message)) + message)
            await conn.writer.drain()
        except OSError as exc:
            raise self._io_failure(exc, "write") from None
        frame = await self._frame()
        done = conn.stamps.through(conn.consumed())
        data = io.BytesIO(frame)
        try:
            header = body.parse_response_header(data)
            if header.correlation_id != self.correlation:
                raise _Failure("kafka: error decoding packet: correlation ID didn't match, wanted "
                               f"{self.correlation}, got {header.correlation_id}")
            return body.RESPONSE_TYPE.decode(data), sent, done
        except _Failure:
            raise
        except Exception:  # a truncated or malformed response
            raise _Failure("kafka: insufficient data to decode packet, more bytes expected") from None

    async def _frame(self) -> bytes:
        reader = self.conn.reader  # type: ignore[union-attr]
        try:
            size = int.from_bytes(await reader.readexactly(4), "big", signed=True)
            if not 4 <= size <= MAX_RESPONSE:
                raise _Failure(f"kafka: error decoding packet: message of length {size} too large or too small")
            return await reader.readexactly(size)
        except asyncio.IncompleteReadError as exc:
            raise _Failure("unexpected EOF" if exc.partial else "EOF") from None
        except OSError as exc:
            raise self._io_failure(exc, "read") from None

    def _io_failure(self, exc: OSError, op: str) -> _Failure:
        if isinstance(exc, ssl.SSLError):
            return _Failure(_tls.tls_error_text(exc, self.host))
        addresses = self.conn.addresses() if self.conn is not None else join_host_port(self.host, self.port)
        return _Failure(f"{op} tcp {addresses}: {op}: {os_error_text(exc)}")

    def close(self) -> None:
        conn, self.conn = self.conn, None
        transport = getattr(conn.writer, "transport", None) if conn is not None else None
        if transport is not None:
            transport.abort()  # nothing is left to say; a TLS close would wait for the peer
        elif conn is not None:
            conn.close()


# --------------------------------------------------------------------------------------------------
# SCRAM (RFC 5802, RFC 7677), without channel binding; errors worded as xdg-go/scram's

class ScramError(Exception):
    pass


class ScramClient:
    """The client side of one SCRAM exchange; the salted password is derived by the caller (cached)."""

    def __init__(self, mechanism: str, username: str, password: str, nonce: str | None = None) -> None:
        self.hash_name = MECHANISMS[mechanism]
        self.password = password
        self.nonce = nonce or base64.b64encode(secrets.token_bytes(24)).decode()
        name = username.replace("=", "=3D").replace(",", "=2C")
        self.first_bare = f"n={name},r={self.nonce}"
        self.server_signature = b""

    def first(self) -> bytes:
        return ("n,," + self.first_bare).encode("utf-8", "surrogatepass")

    def read_server_first(self, data: bytes) -> tuple[str, bytes, int]:
        """(server-first message, salt, iterations), checked."""
        text = data.decode("utf-8", "replace")
        if text.startswith("m="):
            raise ScramError("SCRAM message extensions are not supported")
        fields = text.split(",")
        if len(fields) < 3:
            raise ScramError("not enough fields in first server message")
        nonce = _field(fields[0], "r")
        salt = _base64_field(fields[1], "s")
        raw = _field(fields[2], "i")
        try:
            iterations = int(raw, 10)
        except ValueError:
            raise ScramError(f"error parsing field 'i': strconv.Atoi: parsing \"{raw}\": invalid syntax") from None
        if not nonce.startswith(self.nonce):
            raise ScramError("server nonce did not extend client nonce")
        if iterations < MIN_ITERATIONS:
            raise ScramError(f"server requested too few iterations ({iterations})")
        if iterations > MAX_ITERATIONS:
            raise ScramError(f"server requested too many iterations ({iterations})")
        return text, salt, iterations

    def final(self, server_first: tuple[str, bytes, int], salted: bytes) -> bytes:
        text = server_first[0]
        nonce = text.split(",", 1)[0][2:]
        without_proof = f"c=biws,r={nonce}"  # biws = base64("n,,")
        auth_message = f"{self.first_bare},{text},{without_proof}".encode("utf-8", "surrogatepass")
        client_key = hmac.digest(salted, b"Client Key", self.hash_name)
        stored_key = hashlib.new(self.hash_name, client_key).digest()
        signature = hmac.digest(stored_key, auth_message, self.hash_name)
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        server_key = hmac.digest(salted, b"Server Key", self.hash_name)
        self.server_signature = hmac.digest(server_key, auth_message, self.hash_name)
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def read_server_final(self, data: bytes) -> None:
        first = data.decode("utf-8", "replace").split(",", 1)[0]
        if first.startswith("v="):
            verifier = _base64_field(first, "v")
        else:
            raise ScramError(f"server error: {_field(first, 'e')}")
        if not hmac.compare_digest(verifier, self.server_signature):
            raise ScramError("server validation failed")


def _field(text: str, key: str) -> str:
    if not text.startswith(key + "="):
        raise ScramError(f"error parsing '{text}' for field '{key}'")
    return text[len(key) + 1:]


def _base64_field(text: str, key: str) -> bytes:
    try:
        return base64.b64decode(_field(text, key), validate=True)
    except ValueError:
        raise ScramError(f"illegal base64 data in field '{key}'") from None


_salted = _limits.BoundedCache(max_bytes=256 << 10, max_entries=1024)


async def salted_password(hash_name: str, password: str, salt: bytes, iterations: int) -> bytes:
    """PBKDF2 of the password (1-30 ms of CPU), off the loop and remembered per salt and iteration count:
    a broker keeps both per user, so later checks of the same monitor skip it."""
    secret = password.encode("utf-8", "surrogatepass")
    key = hashlib.sha256(b"\0".join((hash_name.encode(), secret, salt, str(iterations).encode()))).digest()
    found = _salted.get(key)
    if found is None:
        found = await asyncio.to_thread(hashlib.pbkdf2_hmac, hash_name, secret, salt, iterations)
        _salted.put(key, found, len(found) + 96)
    return found
