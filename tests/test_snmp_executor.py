"""`snmp` against a private net-snmp agent (tests/snmp_peers.py): Go's value texts and messages for
v1 and v2c, every comparison operator, noSuchObject/noSuchInstance/noSuchName, SNMPv3 at every
security level and with every protocol, wrong credentials and silent agents ending DOWN within the
timeout, passphrases kept out of results, and 100 tasks through Redis at concurrency 64."""

from __future__ import annotations

import asyncio
import json
import os
import re
import struct
import time

import pytest

import healthcheck
from executors import DOWN, UP, Monitor
from executors._kit import snmp_values as ber
from helpers import INGEST_KEYS, assert_no_secret, healthcheck_payload, one_result_each, run_through_worker
from snmp_peers import BASE, COMMUNITY, SYS_CONTACT, USERS, VALUES, SilentPort, agent, v3_community

SYS_DESCR, SYS_OBJECT_ID, SYS_UPTIME, SYS_CONTACT_OID = (f"1.3.6.1.2.1.1.{n}.0" for n in (1, 2, 3, 4))
SYS_SERVICES = "1.3.6.1.2.1.1.7.0"
IP_AD_ENT_ADDR = "1.3.6.1.2.1.4.20.1.1.127.0.0.1"  # ipAdEntAddr of 127.0.0.1: an IpAddress
IF_HC_IN_OCTETS = "1.3.6.1.2.1.31.1.1.1.6.1"  # ifHCInOctets of interface 1 (lo): a Counter64
SNMP_IN_PKTS = "1.3.6.1.2.1.11.1.0"  # a Counter32 that keeps counting
MARGIN = 0.3  # seconds a check may run past its budget before a test calls it late



@pytest.fixture(scope="module")
def port() -> int:
    return agent().port


def config(port: int, oid: str, version: str = "v2c", community: str = COMMUNITY, host: str = "127.0.0.1",
           **extra) -> dict:
    return {"host": host, "port": port, "community": community, "snmp_version": version, "oid": oid, **extra}


async def run(cfg: dict | str, timeout: int = 2, max_retries: int = 0):
    """The check through the handler's own path (registry, budget, config errors); (result, seconds, budget)."""
    monitor = Monitor(id="m", name="snmp", type="snmp", timeout=timeout, max_retries=max_retries,
                      config=cfg if isinstance(cfg, str) else json.dumps(cfg))
    budget = timeout - healthcheck.check_margin(timeout)
    started = time.monotonic()
    result = await healthcheck.run_check(monitor, None, budget)
    return result, time.monotonic() - started, budget


def received(value: str) -> str:
    return f"SNMP query successful, received value: {value}"


# --------------------------------------------------------------------------------------------------
# v1 and v2c: Go's value text per type

FIXED = [(oid, text) for oid, (_, _, text) in VALUES.items()] + [
    (SYS_CONTACT_OID, SYS_CONTACT), (SYS_SERVICES, "72"), (SYS_OBJECT_ID, ".1.3.6.1.4.1.8072.3.2.10"),
    (IP_AD_ENT_ADDR, "127.0.0.1"), (SYS_DESCR, " ".join(os.uname())),
]


@pytest.mark.parametrize("version", ["v1", "v2c"])
@pytest.mark.parametrize("oid,text", FIXED)
async def test_value_text_per_type(port, version, oid, text):
    result, _, _ = await run(config(port, oid, version))
    assert (result.status, result.message) == (UP, received(text))
    assert set(result.timings) == {"query"} and result.timings["query"] >= 0
    assert 0 <= result.ping_ms < 1000 and result.start_ns <= result.end_ns


@pytest.mark.parametrize("version,oid", [("v1", SYS_UPTIME), ("v2c", SYS_UPTIME), ("v1", SNMP_IN_PKTS),
                                         ("v2c", IF_HC_IN_OCTETS)])
async def test_counters_and_timeticks_are_decimal(port, version, oid):
    result, _, _ = await run(config(port, oid, version))
    assert result.status == UP and re.fullmatch(r"SNMP query successful, received value: \d+", result.message)


async def test_ipv6_agent_and_unknown_version_as_v2c(port):
    result, _, _ = await run(config(port, SYS_CONTACT_OID, "v2", host="::1"))
    assert (result.status, result.message) == (UP, received(SYS_CONTACT))


# --------------------------------------------------------------------------------------------------
# Conditions: eq ne as text; lt gt le ge as numbers when both sides are numbers, else text equality

INT42, MINUS7, TEXT105, ABC, GAUGE = (f"{BASE}.{n}.0" for n in (1, 2, 7, 8, 4))
CONDITIONS = [
    (INT42, "eq", "42", UP), (INT42, "eq", "42.0", DOWN), (INT42, "ne", "43", UP), (INT42, "ne", "42", DOWN),
    (INT42, "lt", "100", UP), (INT42, "lt", "5", DOWN), (INT42, "gt", "5", UP), (INT42, "gt", "100", DOWN),
    (INT42, "le", "42", UP), (INT42, "le", "41.5", DOWN), (MINUS7, "ge", "-7", UP), (MINUS7, "ge", "0", DOWN),
    (TEXT105, "gt", "10", UP), (TEXT105, "lt", "1e1", DOWN), (GAUGE, "ge", "3e9", UP), (INT42, "lt", "0x1p6", UP),
    (ABC, "lt", "def", DOWN), (ABC, "le", "abc", UP), (INT42, "gt", "abc", DOWN), (INT42, "ge", "42abc", DOWN),
    (ABC, "", "abc", UP), (ABC, "zz", "abc", UP), (ABC, "zz", "abd", DOWN),
]


@pytest.mark.parametrize("oid,operator,expected,status", CONDITIONS)
async def test_each_operator(port, oid, operator, expected, status):
    value = VALUES[oid][2]
    cfg = config(port, oid, json_path="$", json_path_operator=operator, expected_value=expected)
    result, _, _ = await run(cfg)
    verb = "passes" if status == UP else "does not pass"
    message = f"SNMP condition {verb} (comparing {value} {operator} {expected})"
    assert (result.status, result.message) == (status, message)


@pytest.mark.parametrize("json_path,expected", [("$", ""), ("", "43")])
async def test_no_comparison_without_json_path_or_expected_value(port, json_path, expected):
    cfg = config(port, INT42, json_path=json_path, json_path_operator="eq", expected_value=expected)
    result, _, _ = await run(cfg)
    assert (result.status, result.message) == (UP, received("42"))


# --------------------------------------------------------------------------------------------------
# Missing objects

@pytest.mark.parametrize("version,oid,message", [
    ("v2c", "1.3.6.1.2.1.1.99.0", "The SNMP query returned that no object exists for OID 1.3.6.1.2.1.1.99.0"),
    ("v2c", "1.3.6.1.2.1.1.4.1", "The SNMP query returned that no instance exists for OID 1.3.6.1.2.1.1.4.1"),
    ("v1", "1.3.6.1.2.1.1.99.0", "The SNMP query returned that no object exists for OID 1.3.6.1.2.1.1.99.0"),
    ("v1", "1.3.6.1.2.1.1.4.1", "The SNMP query returned that no object exists for OID 1.3.6.1.2.1.1.4.1"),
    ("v3", "1.3.6.1.2.1.1.99.0", "The SNMP query returned that no object exists for OID 1.3.6.1.2.1.1.99.0"),
])
async def test_no_such_object_instance_and_name(port, version, oid, message):
    community = v3_community("privuser") if version == "v3" else COMMUNITY
    result, _, _ = await run(config(port, oid, version, community))
    assert (result.status, result.message) == (DOWN, message)


# --------------------------------------------------------------------------------------------------
# SNMPv3

@pytest.mark.parametrize("user", list(USERS))
async def test_v3_every_security_level_and_protocol(port, user):
    result, _, _ = await run(config(port, SYS_CONTACT_OID, "v3", v3_community(user)))
    assert (result.status, result.message) == (UP, received(SYS_CONTACT)), user
    assert set(result.timings) == {"discovery", "query"}


async def test_v3_protocol_names_ignore_case_and_dashes(port):
    community = v3_community("sha224aes192", auth="sha224", priv="aes_192")
    result, _, _ = await run(config(port, INT42, "v3", community, json_path="$", json_path_operator="ge",
                                    expected_value="40"))
    assert (result.status, result.message) == (UP, "SNMP condition passes (comparing 42 ge 40)")


WRONG = [
    ("privuser", dict(auth_pass="not-the-auth-pass"), "SNMP GET failed: wrong digest (check the authentication "
                                                      "protocol and passphrase)"),
    ("authuser", dict(auth="SHA-512"), "SNMP GET failed: wrong digest (check the authentication protocol and "
                                       "passphrase)"),
    ("privuser", dict(user="nobody"), "SNMP GET failed: unknown username (the agent has no such SNMPv3 user)"),
    ("authuser", dict(priv="AES", priv_pass="some-priv-pass"),
     "SNMP GET failed: unknown security level (the agent does not accept this user at this level)"),
    ("privuser", dict(priv_pass="not-the-priv-pass"),
     "SNMP GET failed: request timeout (after 1 retries): the agent answered engine discovery but not the "
     "encrypted request (check the privacy protocol and passphrase)"),
    ("md5des", dict(priv="AES"), "SNMP GET failed: decryption error (check the privacy protocol and passphrase)"),
]


@pytest.mark.parametrize("user,changes,message", WRONG)
async def test_v3_wrong_credentials_end_down_within_the_timeout(port, user, changes, message):
    community = v3_community(user, **changes)
    result, took, budget = await run(config(port, SYS_CONTACT_OID, "v3", community), timeout=1, max_retries=1)
    assert (result.status, result.message) == (DOWN, message)
    assert took < budget + MARGIN
    for secret in (*changes.values(), *USERS[user][1::2]):
        if len(secret) > 3:
            assert secret not in result.message


@pytest.mark.parametrize("community,message", [
    ("u:SHA-256", "found 2 fields"), ("u:SHA:a:AES:b:c", "found 6 fields"),
    ("u:s3cret-pass:SHA-256", "field 2 is not an authentication protocol (MD5, SHA, SHA-224, SHA-256, SHA-384, "
                              "SHA-512)"),
    ("u:SHA:s3cret-pass:s3cret-priv:AES", "field 4 is not a privacy protocol (DES, AES, AES-192, AES-256, "
                                          "AES-192-C, AES-256-C)"),
    ("u:SHA:", "the authentication passphrase (field 3) is empty"),
    ("u:SHA:s3cret-pass:AES:", "the privacy passphrase (field 5) is empty"),
])
async def test_v3_community_syntax_errors_name_fields_never_values(port, community, message):
    result, _, _ = await run(config(port, SYS_CONTACT_OID, "v3", community))
    assert result.status == DOWN
    assert result.message.startswith("SNMP connection failed: invalid SNMPv3 community: ") and message in result.message
    assert "s3cret" not in result.message and result.start_ns <= result.end_ns


# --------------------------------------------------------------------------------------------------
# Agents that do not answer, or refuse

@pytest.mark.parametrize("version", ["v1", "v2c"])
async def test_wrong_community_ends_down_within_the_timeout(port, version):
    result, took, budget = await run(config(port, SYS_CONTACT_OID, version, "not-public"), timeout=1, max_retries=3)
    assert (result.status, result.message) == (DOWN, "SNMP GET failed: request timeout (after 1 retries)")
    assert took < budget + MARGIN and result.ping_ms <= budget * 1000 + 50


@pytest.mark.parametrize("version,timeout,attempts", [("v2c", 2, 6), ("v1", 1, 2), ("v3", 2, 6)])
async def test_silent_port_with_five_retries_ends_down_within_the_timeout(version, timeout, attempts):
    silent = SilentPort()
    try:
        community = v3_community("privuser") if version == "v3" else COMMUNITY
        result, took, budget = await run(config(silent.port, SYS_CONTACT_OID, version, community),
                                         timeout=timeout, max_retries=5)
        assert (result.status, result.message) == (DOWN, f"SNMP GET failed: request timeout (after {attempts - 1} "
                                                         "retries)")
        assert took < budget + MARGIN
        assert silent.received() == attempts  # Go's max_retries resends, shortened to fit the budget
    finally:
        silent.close()


async def test_closed_port_is_refused_at_once():
    from conftest import free_port

    closed = free_port()
    result, took, _ = await run(config(closed, SYS_CONTACT_OID), timeout=2, max_retries=2)
    assert result.status == DOWN and took < 0.5
    assert re.fullmatch(rf"SNMP GET failed: read udp 127\.0\.0\.1:\d+->127\.0\.0\.1:{closed}: read: connection refused",
                        result.message)


async def test_port_zero_means_161():
    try:
        listener = SilentPort(port=161)  # root (as in CI) may bind it: then the request must arrive there
    except OSError:
        listener = None
    try:
        result, _, _ = await run(config(0, SYS_CONTACT_OID), timeout=1)
        if listener is not None:
            assert result.message == "SNMP GET failed: request timeout (after 0 retries)"
            assert listener.received() == 1
        else:  # 161 taken or not ours to bind: whatever answers, the request went to port 161
            assert "->127.0.0.1:161: " in result.message or result.status == UP or "timeout" in result.message
    finally:
        if listener is not None:
            listener.close()


# --------------------------------------------------------------------------------------------------
# Config and host errors

@pytest.mark.parametrize("cfg,message", [
    ('{"port": 70000}', "failed to parse config: json: cannot unmarshal number 70000 into Go struct field "
                        "SnmpConfig.port of type uint16"),
    ('{"port": -1}', "failed to parse config: json: cannot unmarshal number -1 into Go struct field "
                     "SnmpConfig.port of type uint16"),
    ('{"port": "161"}', "failed to parse config: json: cannot unmarshal string into Go struct field "
                        "SnmpConfig.port of type uint16"),
    ('{"host": "127.0.0.1", "version": "v2c"}', 'failed to parse config: json: unknown field "version"'),
    ("", "failed to parse config: EOF"),
])
async def test_config_errors_in_go_words(cfg, message):
    result, _, _ = await run(cfg)
    assert (result.status, result.message) == (DOWN, message) and result.start_ns == result.end_ns


@pytest.mark.parametrize("oid", ["abc", "", "1", "7.1.2", "1.3.6.1.99999999999"])
async def test_bad_oid_is_a_marshal_error(port, oid):
    result, _, _ = await run(config(port, oid))
    assert result.status == DOWN
    assert result.message in ("SNMP GET failed: marshal: unable to marshal OID: Invalid object identifier",
                              "SNMP GET failed: marshal: unable to marshal OID: Value out of range")


@pytest.mark.parametrize("host", ["nohost.invalid", "bad host"])
async def test_unresolvable_host(port, host):
    result, took, budget = await run(config(port, SYS_CONTACT_OID, host=host), timeout=2)
    assert result.status == DOWN and took < budget + MARGIN
    assert result.message.startswith(f"SNMP connection failed: error establishing connection to host: dial udp: "
                                     f"lookup {host}")
    assert result.message.endswith(("no such host", "i/o timeout"))


# --------------------------------------------------------------------------------------------------
# Value texts of types net-snmp does not serve (the decoder itself, no agent)

@pytest.mark.parametrize("tag,content,text", [
    (ber.NULL, b"", "<nil>"), (ber.END_OF_MIB_VIEW, b"", "<nil>"), (0x45, b"\x01", "<nil>"),
    (ber.UINTEGER32, b"\xff", "4294967295"), (ber.COUNTER64, b"\x00\xff\xff\xff\xff\xff\xff\xff\xff",
                                              "18446744073709551615"),
    (ber.IP_ADDRESS, b"", "<nil>"), (ber.IP_ADDRESS, bytes(15) + b"\x01", "::1"),
    (ber.IP_ADDRESS, bytes(10) + b"\xff\xff\x0a\x00\x00\x01", "10.0.0.1"),
    (ber.OPAQUE, b"\x9f\x78\x04" + struct.pack(">f", 1.5), "1.5"),
    (ber.OPAQUE, b"\x9f\x79\x08" + struct.pack(">d", 1234567.0), "1.234567e+06"),
    (ber.OPAQUE, b"\x9f\x78\x04" + struct.pack(">f", 0.1), "0.1"),
    (ber.OPAQUE, b"\x01\x02", "[1 2]"), (ber.OCTET_STRING, b"caf\xc3\xa9 \xff", "café \udcff"),
])
def test_value_texts_of_other_types(tag, content, text):
    assert ber.value_text(tag, content) == text


def test_ip_address_of_another_length_is_gosnmps_error():
    with pytest.raises(ValueError, match="got ipaddress len 3, expected 4 or 16"):
        ber.value_text(ber.IP_ADDRESS, b"\x01\x02\x03")


@pytest.mark.parametrize("text,value", [("1", 1.0), ("-2.5e3", -2500.0), (".5", 0.5), ("5.", 5.0), ("Inf", None),
                                        ("0x1p-2", 0.25), ("1e400", None), ("1_000", None), (" 1", None),
                                        ("+nan", None), ("", None)])
def test_numbers_parse_as_go_parsefloat(text, value):
    parsed = ber.parse_go_float(text)
    if text == "Inf":
        assert parsed == float("inf")
    else:
        assert parsed == value


# --------------------------------------------------------------------------------------------------
# Through Redis

def mixed_case(i: int, port: int) -> tuple[dict, int, str]:
    """(config, expected status, expected message) for task number i."""
    kind = i % 5
    if kind == 0:
        return config(port, SYS_CONTACT_OID, "v2c"), UP, received(SYS_CONTACT)
    if kind == 1:
        return config(port, INT42, "v1", json_path="$", json_path_operator="gt", expected_value=str(i)), \
            (UP if 42 > i else DOWN), f"SNMP condition {'passes' if 42 > i else 'does not pass'} (comparing 42 gt {i})"
    if kind == 2:
        user = list(USERS)[i % len(USERS)]
        return config(port, SYS_CONTACT_OID, "v3", v3_community(user)), UP, received(SYS_CONTACT)
    if kind == 3:
        return config(port, "1.3.6.1.2.1.1.99.0", "v2c"), DOWN, \
            "The SNMP query returned that no object exists for OID 1.3.6.1.2.1.1.99.0"
    return config(port, SYS_CONTACT_OID, "v3", v3_community("privuser", auth_pass="wrong-pass-1")), DOWN, \
        "SNMP GET failed: wrong digest (check the authentication protocol and passphrase)"


async def test_100_tasks_through_redis_at_concurrency_64(redis, port):
    cases = {f"snmp-{i}": mixed_case(i, port) for i in range(100)}
    bodies = await run_through_worker(redis, [healthcheck_payload("snmp", cfg, monitor_id=monitor_id, timeout=5)
                                              for monitor_id, (cfg, _, _) in cases.items()])
    for body in bodies:
        assert list(body) == INGEST_KEYS and body["monitor_type"] == "snmp"
    results = one_result_each(bodies)
    assert sorted(results) == sorted(cases)
    for monitor_id, (_, status, message) in cases.items():
        body = results[monitor_id]
        assert (body["status"], body["message"]) == (status, message), monitor_id
    assert_no_secret(["wrong-pass-1"], bodies)



def test_silent_port_counts_datagrams():
    """The SilentPort helper counts what arrives (the retry test depends on it)."""
    silent = SilentPort()
    try:
        import socket

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(3):
                s.sendto(b"x", ("127.0.0.1", silent.port))
        time.sleep(0.05)
        assert silent.received() == 3
    finally:
        silent.close()


async def test_every_check_forgets_its_socket(port):
    """UP, refused, timed out, v3 refused: none leaves its socket watched by the loop's shared poller."""
    from conftest import free_port
    from executors._kit import poll

    silent = SilentPort()
    try:
        await asyncio.gather(run(config(port, SYS_CONTACT_OID)), run(config(free_port(), SYS_CONTACT_OID)),
                             run(config(silent.port, SYS_CONTACT_OID), timeout=1),
                             run(config(port, SYS_CONTACT_OID, "v3", v3_community("privuser", user="nobody"))))
    finally:
        silent.close()
    watcher = poll.poller(asyncio.get_running_loop())
    assert not getattr(watcher, "_handlers", getattr(watcher, "_events", None))
