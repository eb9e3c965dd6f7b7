"""`mqtt` against real brokers: the shared Mosquitto on 127.0.0.1:1883 (anonymous), a private Mosquitto
(tests/mqtt_peers.py: password file, ACL, TLS listener with a test CA, connection log) and a scripted
broker for what Mosquitto never does (refusing MQTT 3.1.1, no SUBACK, SUBACK 0x80, QoS 1, dropped
connections). Each check type UP and DOWN with exact messages, wildcard filters, retained and live
messages, wrong passwords, TLS trusted through SSL_CERT_FILE or not, the wait ending within the timeout,
Go's %v of JSONata results (expected texts produced by jsonata-go v1.5.4 with Go's fmt), 100 tasks
through Redis at concurrency 64."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import time
import uuid

import pytest

import healthcheck
from executors._kit.redact import masked_config
from executors import DOWN, UP, Monitor
from executors import mqtt
from executors._kit.gofmt import go_float64, go_json_value
from conftest import free_port, require_program, skip_or_fail
from helpers import assert_no_secret, healthcheck_payload, one_result_each, run_through_worker, wait_until
from mqtt_peers import ALL_PASSWORDS, PASSWORD, USER, Mosquitto, Repeater, ScriptedBroker, publish

SHARED_PORT = 1883
MARGIN = 0.5  # seconds a check may end after its timeout
LOGIN = {"username": USER, "password": PASSWORD}


@pytest.fixture(scope="module")
def broker():
    for tool in ("mosquitto", "mosquitto_passwd"):
        require_program(tool, "mosquitto")
    peer = Mosquitto()
    yield peer
    peer.stop()


_RETAINED: list[str] = []  # topics given a retained message on the shared broker, cleared at the end


@pytest.fixture(scope="module")
def shared():
    try:
        socket.create_connection(("127.0.0.1", SHARED_PORT), timeout=1).close()
    except OSError:
        skip_or_fail("no Mosquitto listens on 127.0.0.1:1883")
    yield SHARED_PORT
    for topic in _RETAINED:
        publish(SHARED_PORT, topic, b"", retain=True)  # an empty retained message removes it


def retain(port: int, topic: str, payload: str) -> None:
    publish(port, topic, payload, retain=True)
    if port == SHARED_PORT:
        _RETAINED.append(topic)


@pytest.fixture
def scripted(request):
    peer = ScriptedBroker(request.param)
    yield peer
    peer.stop()


def unique(name: str = "t") -> str:
    """A topic no other test (or test run) uses on the shared broker."""
    return f"pw-test/{uuid.uuid4().hex}/{name}"


def cfg(port: int, topic: str, hostname: str = "127.0.0.1", **fields) -> dict:
    return {"hostname": hostname, "port": port, "topic": topic, **fields}


async def run(config: dict | str, timeout: int = 2):
    """One check as the worker runs it (registry, hard cap, config errors)."""
    text = config if isinstance(config, str) else json.dumps(config)
    monitor = Monitor(id="m1", name="mqtt test", type="mqtt", interval=60, timeout=timeout, config=text)
    return await healthcheck.run_check(monitor, None, float(timeout))


async def logged(broker, *lines: str) -> None:
    """Mosquitto writes its log as it goes: wait (a little) until every line is there."""
    async def present() -> bool:
        log = broker.log()
        return all(line in log for line in lines)
    await wait_until(present, 5)


async def timed(config: dict, timeout: int = 2):
    started = time.monotonic()
    result = await run(config, timeout)
    return result, time.monotonic() - started


# --------------------------------------------------------------------------------------------------
# Go's texts without a broker

def test_go_float64_prints_as_go():
    cases = {1.0: "1", 1.5: "1.5", 123456.0: "123456", 1e6: "1e+06", 1.5e6: "1.5e+06", 1234567.0: "1.234567e+06",
             0.0001: "0.0001", 0.00001: "1e-05", 0.1 + 0.2: "0.30000000000000004", -0.0: "-0", 1e21: "1e+21",
             12345678901234567890.0: "1.2345678901234567e+19", 5e-324: "5e-324", -2.5: "-2.5", 999999.0: "999999"}
    assert {value: go_float64(value) for value in cases} == cases


def test_go_json_value_prints_slices_maps_and_nil_as_go():
    value = [1, "x", None, True, {"b": 2, "a": [], "c": None}, 1000000, 2.5]
    assert go_json_value(value) == "[1 x <nil> true map[a:[] b:2 c:<nil>] 1e+06 2.5]"


# (expression, message payload, what the Go worker reports): run through jsonata-go v1.5.4 and Go's fmt
JSONATA_GO = [
    ("status", '{"status":"ok","count":1000000}', "[ok]"),
    ("count", '{"count":1000000}', "[1e+06]"),
    ("count", '{"count":1500000}', "[1.5e+06]"),
    ("count", '{"count":1234567}', "[1.234567e+06]"),
    ("count", '{"count":123456}', "[123456]"),
    ("v", '{"v":0.00001}', "[1e-05]"),
    ("v", '{"v":false}', "[false]"),
    ("arr", '{"arr":[1,"x",null,true,{"b":2,"a":[]}]}', "[[1 x <nil> true map[a:[] b:2]]]"),
    ("obj", '{"obj":{"b":2,"a":"x","c":null}}', "[map[a:x b:2 c:<nil>]]"),
    ("arr[-1]", '{"arr":[5,6,7]}', "[7]"),
    ("arr.a", '{"arr":[{"a":1},{"a":2}]}', "[[1 2]]"),
    ("arr[a>1].a", '{"arr":[{"a":1},{"a":2}]}', "[2]"),
    ("$sum(arr)", '{"arr":[1,2,3.5]}', "[6.5]"),
    ("$string(v)", '{"v":1000000}', "[1000000]"),
    ('v = "ok" ? "good" : "bad"', '{"v":"ok"}', "[good]"),
    ("$length(v)", '{"v":"héllo"}', "[5]"),
    ("$", "[1,2]", "[[1 2]]"),
    ("a", '{"a":12345678901234567890}', "[1.2345678901234567e+19]"),
    ("missing", '{"a":1}', "JSONata evaluation failed: no results found"),
    ("n", '{"n":null}', "JSONata evaluation failed: no results found"),
    ("arr[0]", '{"arr":[]}', "JSONata evaluation failed: no results found"),
    ("1/0", "{}", 'JSONata evaluation failed: result of the "/" operator is out of range'),
    ("a", '{"a":1} x', "Failed to parse JSON message: invalid character 'x' after top-level value"),
    ("a", "", "Failed to parse JSON message: unexpected end of JSON input"),
    ("a", "[1,", "Failed to parse JSON message: unexpected end of JSON input"),
    ("a", '{"a":1e400}', "Failed to parse JSON message: json: cannot unmarshal number 1e400 into Go value of type float64"),
]


@pytest.mark.parametrize("expression,payload,go", JSONATA_GO)
def test_json_query_reports_what_jsonata_go_reports(expression, payload, go):
    status, message = mqtt.json_query(payload, expression, "\x00never")
    assert status == DOWN
    if go.startswith("["):
        go = f"Message received but value is not equal to expected value, value was: {go}"
    assert message == go


def test_json_query_up_and_library_errors():
    assert mqtt.json_query('{"count":1000000}', "count", "1e+06") == (UP, "Message received, expected value is found")
    status, message = mqtt.json_query("{}", "(", "x")
    assert status == DOWN and message.startswith("Invalid JSONata expression: ")
    status, message = mqtt.json_query('{"status":"x"}', "status + 1", "x")
    assert status == DOWN and message.startswith("JSONata evaluation failed: ") and "+" in message


@pytest.mark.parametrize("topic_filter,topic,matches", [
    ("sensors/+/temp", "sensors/a/temp", True), ("sensors/#", "sensors/a/temp", True), ("sensors/#", "sensors", True),
    ("#", "sensors/a/temp", True), ("+/+", "a/b", True), ("sensors/+", "sensors/a/temp", False),
    ("sensors/+/temp", "sensors/a/hum", False), ("a/b", "a/b", True), ("a/b", "a/c", False), ("+", "/a", False),
    ("#", "$SYS/broker", False), ("$SYS/#", "$SYS/broker", True), ("$share/g/sensors/+", "sensors/a", True),
])
def test_topic_filters_match_concrete_topics(topic_filter, topic, matches):
    assert mqtt.topic_matches(topic_filter, topic) is matches


def test_broker_addresses_as_paho_reads_them():
    b = mqtt.broker_address("mqtts://broker.example", 8883)
    assert (b.tls, b.host, b.port, b.username) == (True, "broker.example", 8883, None)
    b = mqtt.broker_address("mqtt://u:p%40ss@[::1]", 1883)
    assert (b.tls, b.host, b.port, b.username, b.password) == (False, "::1", 1883, "u", "p@ss")
    assert mqtt.broker_address("::1", 1883).host == "::1"  # bare IPv6: bracketed (Go: too many colons)
    for hostname, port, text in [
        ("host/path", 1883, "network Error : dial tcp: address host: missing port in address"),
        ("127.0.0.1", 70000, "network Error : dial tcp: address 70000: invalid port"),
        ("127.0.0.1", -5, "no servers defined to connect to"),
        ("bad host", 1883, "no servers defined to connect to"),
    ]:
        with pytest.raises(mqtt._Failure) as info:
            mqtt.broker_address(hostname, port)
        assert str(info.value) == text


async def test_config_errors_are_go_decode_errors():
    assert (await run("")).message == "failed to parse config: EOF"
    assert (await run('{"foo": 1}')).message == 'failed to parse config: json: unknown field "foo"'
    assert (await run('{"port": "1883"}')).message == \
        "failed to parse config: json: cannot unmarshal string into Go struct field MQTTConfig.port of type int"


# --------------------------------------------------------------------------------------------------
# The shared broker (anonymous)

async def test_none_is_up_on_a_retained_message(shared):
    topic = unique("retained")
    retain(shared, topic, "21.5")
    result, elapsed = await timed(cfg(shared, topic, check_type="none"))
    assert (result.status, result.message) == (UP, f"Topic: {topic}; Message received")
    assert {"connect", "auth", "subscribe"} <= set(result.timings) and result.ping_ms <= elapsed * 1000
    result = await run(cfg(shared, topic))  # check_type empty = none
    assert (result.status, result.message) == (UP, f"Topic: {topic}; Message received")


async def test_none_is_up_on_a_live_message_and_down_on_an_empty_one(shared):
    topic = unique("live")
    with Repeater(shared, topic, "alive"):
        result = await run(cfg(shared, topic, check_type="none"))
    assert (result.status, result.message) == (UP, f"Topic: {topic}; Message received")
    with Repeater(shared, topic, b""):
        result = await run(cfg(shared, topic, check_type="none"))
    assert (result.status, result.message) == (DOWN, f"Topic: {topic}; No message received")


async def test_keyword(shared):
    topic = unique("keyword")
    retain(shared, topic, "state=running; load=0.3")
    result = await run(cfg(shared, topic, check_type="keyword", success_keyword="running"))
    assert (result.status, result.message) == (UP, f"Topic: {topic}; Message: state=running; load=0.3")
    result = await run(cfg(shared, topic, check_type="keyword", success_keyword="Running"))  # case-sensitive
    assert (result.status, result.message) == (DOWN, f"Message Mismatch - Topic: {topic}; Message: state=running; "
                                                     "load=0.3")
    result = await run(cfg(shared, topic, check_type="keyword", success_keyword="  "))
    assert (result.status, result.message) == (DOWN, "Success keyword is empty or invalid")


async def test_json_query(shared):
    topic = unique("json")
    retain(shared, topic, '{"status":"ok","count":1000000}')
    cases = [
        ({"json_path": "status", "expected_value": "ok"}, UP, "Message received, expected value is found"),
        ({"json_path": "count", "expected_value": "1000000"}, DOWN,
         "Message received but value is not equal to expected value, value was: [1e+06]"),
        ({"json_path": "absent", "expected_value": "x"}, DOWN, "JSONata evaluation failed: no results found"),
        ({"json_path": " ", "expected_value": "x"}, DOWN, "JSON path is empty or invalid"),
        ({"json_path": "status", "expected_value": ""}, DOWN, "Expected value is empty or invalid"),
    ]
    for fields, status, message in cases:
        result = await run(cfg(shared, topic, check_type="json-query", **fields))
        assert (result.status, result.message) == (status, message), fields
    result = await run(cfg(shared, topic, check_type="json-query", json_path="$count(", expected_value="1"))
    assert result.status == DOWN and result.message.startswith("Invalid JSONata expression: ")
    text_topic = unique("text")
    retain(shared, text_topic, "hello")
    result = await run(cfg(shared, text_topic, check_type="json-query", json_path="a", expected_value="1"))
    assert (result.status, result.message) == \
        (DOWN, "Failed to parse JSON message: invalid character 'h' looking for beginning of value")
    result = await run(cfg(shared, text_topic, check_type="ping"))
    assert (result.status, result.message) == (DOWN, "Unknown MQTT Check Type")


async def test_no_message_is_down_within_the_timeout(shared):
    result, elapsed = await timed(cfg(shared, unique("silent")), timeout=2)
    assert (result.status, result.message) == (DOWN, "MQTT connection failed: timeout, message not received within 2s")
    assert elapsed <= 2 + MARGIN


async def test_invalid_filters_fail_the_subscription(shared):
    result = await run(cfg(shared, ""))
    assert result.message == "MQTT connection failed: MQTT subscription failed: invalid Topic; empty string"
    result = await run(cfg(shared, "a/#/b"))
    assert result.message == ("MQTT connection failed: MQTT subscription failed: invalid Topic; multi-level wildcard "
                              "must be last level")


async def test_unreachable_brokers_are_down_with_go_dial_texts(closed_port, hanging_port, open_port):
    result = await run(cfg(closed_port, "t"))
    assert result.message == \
        f"MQTT connection failed: network Error : dial tcp 127.0.0.1:{closed_port}: connect: connection refused"
    result, elapsed = await timed(cfg(hanging_port, "t"), timeout=1)
    assert result.message == f"MQTT connection failed: network Error : dial tcp 127.0.0.1:{hanging_port}: i/o timeout"
    assert elapsed <= 1 + MARGIN
    result, elapsed = await timed(cfg(open_port, "t"), timeout=1)  # accepts, never answers CONNECT
    assert re.fullmatch(rf"MQTT connection failed: network Error : read tcp 127\.0\.0\.1:\d+->127\.0\.0\.1:{open_port}: "
                        r"i/o timeout", result.message), result.message
    assert elapsed <= 1 + MARGIN


# --------------------------------------------------------------------------------------------------
# The private broker: passwords, wildcards, TLS, what it logs

async def test_wildcard_filters_match_and_name_the_concrete_topic(broker):
    publish(broker.port, "sensors/a/temp", '{"celsius": 21.5}', retain=True, user=USER, password=PASSWORD)
    for topic_filter in ("sensors/+/temp", "sensors/#"):
        result = await run(cfg(broker.port, topic_filter, **LOGIN))
        assert (result.status, result.message) == (UP, "Topic: sensors/a/temp; Message received"), topic_filter
    result = await run(cfg(broker.port, "sensors/+/temp", check_type="json-query", json_path="celsius",
                           expected_value="21.5", **LOGIN))
    assert (result.status, result.message) == (UP, "Message received, expected value is found")


async def test_passwords(broker):
    publish(broker.port, "auth/check", "ok", retain=True, user=USER, password=PASSWORD)
    result = await run(cfg(broker.port, "auth/check", **LOGIN))
    assert (result.status, result.message) == (UP, "Topic: auth/check; Message received")
    result = await run(cfg(broker.port, "auth/check", username=USER, password="wrong-" + PASSWORD))
    assert (result.status, result.message) == (DOWN, "MQTT connection failed: not Authorized")
    result = await run(cfg(broker.port, "auth/check"))
    assert (result.status, result.message) == (DOWN, "MQTT connection failed: not Authorized")
    result = await run(cfg(broker.port, "auth/check", hostname=f"mqtt://{USER}:{PASSWORD}@127.0.0.1"))
    assert (result.status, result.message) == (UP, "Topic: auth/check; Message received")


async def test_client_id_clean_session_keepalive_and_disconnect_as_go(broker):
    await run(cfg(broker.anon_port, "log/check"), timeout=1)
    log = broker.log()
    ids = re.findall(rf"on port {broker.anon_port}\.\n\d+: New client connected from 127\.0\.0\.1:\d+ as "
                     r"(peekaping_[0-9a-f]{8}) \(p2, c1, k60\)\.", log)  # MQTT 3.1.1, clean session, keep-alive 60 s
    assert len(ids) == 1, log[-2000:]
    await logged(broker, f"Received DISCONNECT from {ids[0]}\n", f"Client {ids[0]} disconnected.\n")


async def test_a_pingreq_keeps_a_long_wait_alive(broker, monkeypatch):
    monkeypatch.setattr(mqtt, "KEEPALIVE", 1)  # the broker drops a client silent for 1.5 keep-alives
    result, elapsed = await timed(cfg(broker.anon_port, "keepalive/silent"), timeout=3)
    assert result.message == "MQTT connection failed: timeout, message not received within 3s"
    assert elapsed <= 3 + MARGIN
    client = re.findall(r"as (peekaping_[0-9a-f]{8}) \(p2, c1, k1\)", broker.log())[-1]
    assert f"Received PINGREQ from {client}" in broker.log()


async def test_tls_trusted_through_ssl_cert_file_and_untrusted(broker, monkeypatch):
    publish(broker.port, "tls/check", "over tls", retain=True, user=USER, password=PASSWORD)
    config = cfg(broker.tls_port, "tls/check", hostname="mqtts://localhost", **LOGIN)
    monkeypatch.setenv("SSL_CERT_FILE", broker.ca_file)
    result = await run(config)
    assert (result.status, result.message) == (UP, "Topic: tls/check; Message received")
    assert result.timings.get("tls", 0) > 0
    result = await run(cfg(broker.tls_port, "tls/check", hostname="mqtts://127.0.0.1", **LOGIN))
    assert result.message == ("MQTT connection failed: network Error : tls: failed to verify certificate: x509: cannot "
                              "validate certificate for 127.0.0.1 because it doesn't contain any IP SANs")
    monkeypatch.setenv("SSL_CERT_FILE", broker.other_ca_file)
    result = await run(config)
    assert (result.status, result.message) == (DOWN, "MQTT connection failed: network Error : tls: failed to verify "
                                                     "certificate: x509: certificate signed by unknown authority")
    result = await run(cfg(broker.tls_port, "tls/check", **LOGIN), timeout=1)  # plain MQTT to the TLS port
    assert result.status == DOWN and result.message.startswith("MQTT connection failed: network Error : ")


# --------------------------------------------------------------------------------------------------
# The scripted broker

@pytest.mark.parametrize("scripted", ["v31-only"], indirect=True)
async def test_a_broker_refusing_mqtt_311_is_asked_again_with_31(scripted):
    result = await run(cfg(scripted.port, "t/x"))
    assert (result.status, result.message) == (UP, "Topic: t/x; Message received")
    assert scripted.connects == [4, 3]


@pytest.mark.parametrize("scripted", ["qos1"], indirect=True)
async def test_a_qos1_delivery_is_acknowledged(scripted):
    result = await run(cfg(scripted.port, "t/x", check_type="keyword", success_keyword="QoS 1"))
    assert (result.status, result.message) == (UP, "Topic: t/x; Message: delivered at QoS 1")
    await wait_until(lambda: asyncio.sleep(0, bool(scripted.pubacks)), 2)
    assert scripted.pubacks == [b"\x00\x07"]


@pytest.mark.parametrize("scripted,message,connects", [
    ("suback-refused", "MQTT subscription failed: the broker refused the subscription (SUBACK return code 0x80)", [4]),
    ("drop", "connection lost: EOF", [4]),
    ("eof", "network Error : EOF", [4, 3]),
    ("not-connack", "network Error : non-CONNACK first packet received", [4, 3]),
], indirect=["scripted"])
async def test_broken_exchanges(scripted, message, connects):
    result = await run(cfg(scripted.port, "t/x"))
    assert (result.status, result.message) == (DOWN, "MQTT connection failed: " + message)
    assert scripted.connects == connects


@pytest.mark.parametrize("scripted,message", [
    ("no-suback", "MQTT subscription failed: context deadline exceeded"),
    ("other-topic", "timeout, message not received within 1s"),
], indirect=["scripted"])
async def test_silences_end_within_the_timeout_and_leave_nothing_running(scripted, message):
    result, elapsed = await timed(cfg(scripted.port, "t/x"), timeout=1)
    assert (result.status, result.message) == (DOWN, "MQTT connection failed: " + message)
    assert elapsed <= 1 + MARGIN
    await asyncio.sleep(0)  # a cancelled keep-alive task ends at the next turn of the loop
    assert [task for task in asyncio.all_tasks() if task is not asyncio.current_task()] == []


# --------------------------------------------------------------------------------------------------
# Through the worker

def mixed_case(i: int, shared: int, broker, closed_port: int, topics: dict) -> tuple[dict, int, str]:
    kind = i % 6
    if kind == 0:
        return cfg(shared, topics["plain"]), UP, f"Topic: {topics['plain']}; Message received"
    if kind == 1:
        return cfg(broker.port, "fleet/+/state", check_type="keyword", success_keyword="online", **LOGIN), UP, \
            "Topic: fleet/7/state; Message: online"
    if kind == 2:
        return cfg(broker.port, "fleet/#", username=USER, password=PASSWORD + "-x"), DOWN, \
            "MQTT connection failed: not Authorized"
    if kind == 3:
        return cfg(shared, topics["json"], check_type="json-query", json_path="count", expected_value="1e+06"), UP, \
            "Message received, expected value is found"
    if kind == 4:
        return cfg(closed_port, "t"), DOWN, \
            f"MQTT connection failed: network Error : dial tcp 127.0.0.1:{closed_port}: connect: connection refused"
    return cfg(broker.port, f"fleet/{i}/never", **LOGIN), DOWN, \
        "MQTT connection failed: timeout, message not received within 2s"


async def test_100_tasks_through_redis_at_concurrency_64(redis, shared, broker, caplog):
    caplog.set_level(logging.DEBUG)
    topics = {"plain": unique("plain"), "json": unique("json")}
    retain(shared, topics["plain"], "up")
    retain(shared, topics["json"], '{"count": 1000000}')
    publish(broker.port, "fleet/7/state", "online", retain=True, user=USER, password=PASSWORD)
    closed_port = free_port()
    clients_before = len(re.findall(r"New client connected .* as peekaping_", broker.log()))
    cases = {f"mqtt-{i}": mixed_case(i, shared, broker, closed_port, topics) for i in range(100)}
    bodies = await run_through_worker(redis, [healthcheck_payload("mqtt", config, monitor_id=monitor_id, timeout=2)
                                              for monitor_id, (config, _, _) in cases.items()])
    results = one_result_each(bodies)
    assert sorted(results) == sorted(cases)
    for monitor_id, (config, status, message) in cases.items():
        body = results[monitor_id]
        assert body["monitor_type"] == "mqtt" and {"status", "message", "ping_ms", "start_time"} <= set(body)
        assert (body["status"], body["message"]) == (status, message), monitor_id
        # the task's own config comes back in monitor_config, secrets masked
        assert body["monitor_config"] == masked_config(json.dumps(config))
    assert_no_secret(ALL_PASSWORDS, bodies, caplog, logged=True)
    # every session the checks opened on the private broker ended with a DISCONNECT
    connected = re.findall(r"New client connected .* as (peekaping_[0-9a-f]{8})", broker.log())[clients_before:]
    assert len(connected) == 33
    await logged(broker, *(f"Client {c} disconnected.\n" for c in connected))
