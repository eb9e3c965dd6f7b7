"""`redis` against private redis-server instances (tests/redis_exec_peers.py): requirepass, ACL users,
database index, TLS verified / unverified / wrong CA / wrong name, client certificates; a scripted RESP
server for Redis 5's unknown HELLO, a password echoed back, HTTP, EOF and LOADING (retried as go-redis
does); silent and blackholed ports ending DOWN within the timeout; the connection-string checks with
Go's texts; one connection per check, none left open; 100 tasks through Redis at concurrency 64."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import time

import pytest

import healthcheck
from executors._kit.redact import masked_config
from executors import DOWN, UP, Monitor
from conftest import free_port, require_program
from helpers import assert_no_secret, healthcheck_payload, one_result_each, run_through_worker
from redis_exec_peers import (ALICE, ALICE_PASSWORD, ALL_PASSWORDS, CAROL, CAROL_PASSWORD, PASSWORD,
                              SCRIPTED_PASSWORD, Pki, RedisPeer, ScriptedServer, _pack)

PONG = "Redis ping successful: PONG"
WRONGPASS = "Redis ping failed: WRONGPASS invalid username-password pair or user is disabled."
NOAUTH = "Redis ping failed: NOAUTH Authentication required."
UNKNOWN_CA = "Redis ping failed: tls: failed to verify certificate: x509: certificate signed by unknown authority"
VALIDATION = "connection string validation failed: "
FORMAT = ("invalid connection string format. Expected: redis://[user:password@]host[:port][/db] or "
          "rediss://[user:password@]host[:port][/db]")
MARGIN = 0.5  # seconds a check may end after its timeout


@pytest.fixture(scope="module")
def pki():
    require_program("redis-server", "redis-server")
    p = Pki.create()
    yield p
    p.remove()


@pytest.fixture(scope="module")
def server(pki):
    """requirepass, users alice and carol (no SELECT), TLS without client certificates."""
    peer = RedisPeer(pki, password=PASSWORD, acl_user=True)
    yield peer
    peer.stop()


@pytest.fixture(scope="module")
def mtls(pki):
    """No password; its TLS port requires a client certificate from the test CA."""
    peer = RedisPeer(pki, client_certs="yes")
    yield peer
    peer.stop()


def cs(url: str, **fields) -> dict:
    return {"databaseConnectionString": url, **fields}


async def run(config: dict | str, timeout: int = 3):
    """One check as the worker runs it (registry, hard cap, config errors)."""
    text = config if isinstance(config, str) else json.dumps(config)
    monitor = Monitor(id="m1", name="redis test", type="redis", interval=60, timeout=timeout, config=text)
    return await healthcheck.run_check(monitor, None, float(timeout))


# --------------------------------------------------------------------------------------------------
# Plain connections

@pytest.mark.parametrize("url", [
    "redis://:{pw}@127.0.0.1:{port}", "redis://default:{pw}@127.0.0.1:{port}/0",
    "redis://{alice}:{alice_pw}@localhost:{port}/3", "redis://{carol}:{carol_pw}@127.0.0.1:{port}",
])
async def test_up_with_password_and_acl_users(server, url):
    url = url.format(pw=PASSWORD, port=server.port, alice=ALICE, alice_pw=ALICE_PASSWORD, carol=CAROL,
                     carol_pw=CAROL_PASSWORD)
    result = await run(cs(url))
    assert (result.status, result.message) == (UP, PONG)
    assert result.start_ns < result.end_ns <= time.time_ns()
    assert {"connect", "auth", "ping"} <= set(result.timings) and all(v > 0 for v in result.timings.values())


async def test_up_without_password_and_over_ipv6(mtls):
    assert (await run(cs(f"redis://127.0.0.1:{mtls.port}"))).message == PONG
    try:
        socket.create_connection(("::1", mtls.port), timeout=1).close()
    except OSError:
        pytest.skip("no IPv6 loopback here (the peer listens on ::1 when it can)")
    assert (await run(cs(f"redis://[::1]:{mtls.port}"))).message == PONG


@pytest.mark.parametrize("url, message", [
    ("redis://:wrong-password@127.0.0.1:{port}", WRONGPASS),
    ("redis://bob:{alice_pw}@127.0.0.1:{port}", WRONGPASS),  # no such user
    ("redis://{alice}:wrong-password@127.0.0.1:{port}", WRONGPASS),
    ("redis://127.0.0.1:{port}", NOAUTH),
    ("redis://{alice}@127.0.0.1:{port}/3", NOAUTH),  # a user name without a password does not authenticate
    ("redis://:{pw}@127.0.0.1:{port}/99", "Redis ping failed: ERR DB index is out of range"),
    # SELECT is sent for a database other than 0 only, as go-redis does
    ("redis://{carol}:{carol_pw}@127.0.0.1:{port}/3",
     "Redis ping failed: NOPERM this user has no permissions to run the 'select' command"),
])
async def test_down_messages_of_the_server(server, url, message):
    url = url.format(pw=PASSWORD, port=server.port, alice=ALICE, alice_pw=ALICE_PASSWORD, carol=CAROL,
                     carol_pw=CAROL_PASSWORD)
    result = await run(cs(url))
    assert (result.status, result.message) == (DOWN, message)
    assert not any(p in result.message for p in ALL_PASSWORDS)


async def test_refused_port_is_retried_then_down_in_go_words():
    port = free_port()
    result = await run(cs(f"redis://127.0.0.1:{port}"))
    assert (result.status, result.message) == (DOWN, f"Redis ping failed: dial tcp 127.0.0.1:{port}: connect: "
                                                      "connection refused")


# --------------------------------------------------------------------------------------------------
# TLS

async def test_tls_verified_against_the_ca_cert(server, pki):
    result = await run(cs(f"rediss://:{PASSWORD}@localhost:{server.tls_port}", caCert=pki.ca_pem))
    assert (result.status, result.message) == (UP, PONG)
    assert result.timings["tls"] > 0


async def test_tls_checks(server, pki, monkeypatch):
    url = f"rediss://:{PASSWORD}@localhost:{server.tls_port}"
    assert (await run(cs(url))).message == UNKNOWN_CA  # system roots by default
    assert (await run(cs(url, caCert=pki.other_ca_pem))).message == UNKNOWN_CA
    assert (await run(cs(url, ignoreTls=True))).message == PONG
    assert (await run(cs(url, ignoreTls=True, caCert=pki.other_ca_pem))).message == PONG  # caCert not used then
    ip_url = f"rediss://:{PASSWORD}@127.0.0.1:{server.tls_port}"  # the certificate names localhost only
    assert (await run(cs(ip_url, caCert=pki.ca_pem))).message == (
        "Redis ping failed: tls: failed to verify certificate: x509: cannot validate certificate for 127.0.0.1 "
        "because it doesn't contain any IP SANs")
    assert (await run(cs(ip_url, ignoreTls=True))).message == PONG
    monkeypatch.setenv("SSL_CERT_FILE", pki.ca_file)  # the test CA as the system's roots
    assert (await run(cs(url))).message == PONG


async def test_tls_client_certificates(mtls, pki):
    url = f"rediss://localhost:{mtls.tls_port}"
    pair = {"clientCert": pki.client_cert_pem, "clientKey": pki.client_key_pem}
    assert (await run(cs(url, caCert=pki.ca_pem, **pair))).message == PONG
    # TLS 1.3: the server refuses after the client's handshake is done; its alert races the client's HELLO,
    # and a reset can discard the alert (Go's client sees the same race)
    reset = r"read tcp 127\.0\.0\.1:\d+->127\.0\.0\.1:\d+: read: connection reset by peer"
    refused = re.compile(rf"Redis ping failed: (remote error: tls: certificate required|{reset})")
    assert refused.fullmatch((await run(cs(url, caCert=pki.ca_pem))).message)
    stranger = {"clientCert": pki.other_client_cert_pem, "clientKey": pki.other_client_key_pem}
    assert re.fullmatch(rf"Redis ping failed: (remote error: tls: unknown certificate authority|{reset})",
                        (await run(cs(url, caCert=pki.ca_pem, **stranger))).message)
    # ignoreTls drops the client certificate too (Go's configureTLS)
    assert refused.fullmatch((await run(cs(url, ignoreTls=True, **pair))).message)


async def test_tls_configuration_errors_and_redis_scheme_ignores_tls_fields(mtls, pki):
    url = f"rediss://localhost:{mtls.tls_port}"
    cases = [
        (cs(url, caCert="not a certificate"), "failed to load CA certificate: failed to parse CA certificate"),
        (cs(url, clientCert=pki.client_cert_pem), "failed to load client certificate: both client certificate and "
                                                  "key must be provided"),
        (cs(url, clientKey=pki.client_key_pem), "failed to load client certificate: both client certificate and "
                                                "key must be provided"),
        (cs(url, clientCert=pki.client_cert_pem, clientKey=pki.other_client_key_pem),
         "failed to load client certificate: failed to load client certificate: tls: private key does not match "
         "public key"),
    ]
    for config, message in cases:
        result = await run(config)
        assert (result.status, result.message) == (DOWN, "TLS configuration failed: " + message)
    garbage = cs(f"redis://localhost:{mtls.port}", caCert="x", clientCert="y", ignoreTls=False)
    assert (await run(garbage)).message == PONG


# --------------------------------------------------------------------------------------------------
# Silent and blackholed targets end within the timeout

@pytest.mark.parametrize("scheme", ["redis", "rediss"])
async def test_port_that_accepts_and_never_answers(open_port, scheme):
    started = time.monotonic()
    result = await run(cs(f"{scheme}://:{PASSWORD}@127.0.0.1:{open_port}"), timeout=1)
    assert time.monotonic() - started < 1 + MARGIN
    assert (result.status, result.message) == (DOWN, "Redis connection timeout: context deadline exceeded")


async def test_port_that_drops_the_handshake(hanging_port):
    started = time.monotonic()
    result = await run(cs(f"redis://127.0.0.1:{hanging_port}"), timeout=1)
    assert time.monotonic() - started < 1 + MARGIN
    assert (result.status, result.message) == (DOWN, f"Redis connection timeout: dial tcp 127.0.0.1:{hanging_port}: "
                                                      "i/o timeout")


# --------------------------------------------------------------------------------------------------
# Replies only a scripted server gives

HELLO_MAP = b"%1\r\n$6\r\nserver\r\n$5\r\nredis\r\n"
UNKNOWN_HELLO = (b"-ERR unknown command 'HELLO', with args beginning with: '3' 'AUTH' 'default' '"
                 + SCRIPTED_PASSWORD.encode() + b"' \r\n")


async def scripted(script: list, url: str = "redis://:{pw}@127.0.0.1:{port}"):
    peer = ScriptedServer(script)
    try:
        result = await run(cs(url.format(pw=SCRIPTED_PASSWORD, port=peer.port)))
    finally:
        peer.close()
    return result, peer


async def test_server_without_hello_gets_auth_then_ping():
    result, peer = await scripted([UNKNOWN_HELLO, b"+OK\r\n", b"+PONG\r\n"])
    assert (result.status, result.message) == (UP, PONG)
    assert peer.received == [_pack("HELLO", "3", "AUTH", "default", SCRIPTED_PASSWORD),
                             _pack("AUTH", SCRIPTED_PASSWORD), _pack("PING")]
    result, peer = await scripted([UNKNOWN_HELLO, b"+OK\r\n", b"+OK\r\n", b"+PONG\r\n"],
                                  "redis://bob:{pw}@127.0.0.1:{port}/2")
    assert result.message == PONG
    assert peer.received[1:] == [_pack("AUTH", "bob", SCRIPTED_PASSWORD), _pack("SELECT", "2"), _pack("PING")]


async def test_password_echoed_by_a_server_is_masked():
    echo = b"-ERR invalid password '" + SCRIPTED_PASSWORD.encode() + b"'\r\n"
    result, _ = await scripted([UNKNOWN_HELLO, echo])
    assert (result.status, result.message) == (DOWN, "Redis ping failed: ERR invalid password '***'")


async def test_ping_reply_is_the_up_text_and_protocol_errors_are_go_redis_texts():
    result, _ = await scripted([HELLO_MAP, b"$11\r\nHELLO THERE\r\n"])
    assert (result.status, result.message) == (UP, "Redis ping successful: HELLO THERE")
    result, peer = await scripted([b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", None])
    assert result.message == 'Redis ping failed: redis: can\'t parse map reply: "HTTP/1.1 400 Bad Request"'
    assert peer.connections == 1  # not retried
    result, _ = await scripted([HELLO_MAP, b"PONG\n"])
    assert result.message == 'Redis ping failed: redis: invalid reply: "PONG\\n"'


async def test_transient_failures_are_retried_three_times():
    result, peer = await scripted([None])  # closes at once: EOF
    assert (result.status, result.message, peer.connections) == (DOWN, "Redis ping failed: EOF", 4)
    loading = b"-LOADING Redis is loading the dataset in memory\r\n"
    result, peer = await scripted([HELLO_MAP, loading])
    assert (result.message, peer.connections) == (
        "Redis ping failed: LOADING Redis is loading the dataset in memory", 4)


# --------------------------------------------------------------------------------------------------
# The connection string

@pytest.mark.parametrize("text, message", [
    ("", "connection string is required"),
    ("invalid-connection-string", FORMAT),
    ("http://localhost:6379", FORMAT),
    ("redis://localhost:6379/abc", FORMAT),
    ("redis://localhost:99999", "invalid port: port must be between 1 and 65535, got 99999"),
    ("redis://localhost:0", "invalid port: port must be between 1 and 65535, got 0"),
    ("redis://ho_st:6379", "invalid hostname: hostname contains invalid characters"),
    ("redis://-host", "invalid hostname: hostname contains invalid characters"),
    ("redis://[::ffff:127.0.0.1]:6379", "invalid hostname: hostname contains invalid characters"),
    ("redis://" + "a." * 127 + "a", "invalid hostname: hostname too long (max 253 characters)"),
    ("redis://localhost/99999999999999999999", "invalid database number: database number must be a number"),
    ("redis://" + "u" * 256 + "@localhost", "invalid authentication: username too long (max 255 characters)"),
    ("redis://us%3Aer:pw@localhost", "invalid authentication: username cannot contain ':' character"),
    ("redis://u:p@ss@localhost", "invalid authentication: password cannot contain '@' character"),
    ("redis://a:b:c@localhost", "invalid authentication format: invalid authentication format: username cannot "
                                "contain ':' character"),
    ("redis://ho st:6379", 'invalid URL format: parse "redis://ho st:6379": invalid character " " in host name'),
    (f"redis://u:{PASSWORD}@ho st", 'invalid URL format: parse "redis://u:xxxxx@ho st": invalid character " " in '
                                    'host name'),
    (f"redis://u:{PASSWORD}%zz@localhost", 'invalid URL format: parse "redis://u:xxxxx@localhost": invalid URL '
                                           'escape "xxxxx"'),
    ("redis://u%zz:pw@localhost", 'invalid URL format: parse "redis://u%zz:xxxxx@localhost": invalid URL escape '
                                  '"%zz"'),
])
async def test_connection_string_checks(text, message):
    result = await run(cs(text))
    assert (result.status, result.message) == (DOWN, VALIDATION + message)
    assert result.start_ns == result.end_ns
    assert PASSWORD not in result.message


async def test_query_options_and_config_decoding():
    assert (await run(cs("redis://localhost?foo=1&bar=2"))).message == \
        "invalid Redis connection string: redis: unexpected option: bar, foo"
    assert (await run(cs("redis://localhost?db=x"))).message == \
        'invalid Redis connection string: redis: invalid database number: strconv.Atoi: parsing "x": invalid syntax'
    assert (await run({"databaseConnectionString": 5})).message == (
        "failed to parse config: json: cannot unmarshal number into Go struct field "
        "RedisConfig.databaseConnectionString of type string")
    assert (await run({"databaseConnectionString": "redis://x", "foo": 1})).message == \
        'failed to parse config: json: unknown field "foo"'
    assert (await run("")).message == "failed to parse config: EOF"


# --------------------------------------------------------------------------------------------------
# One connection per check, none left open

async def test_each_check_opens_its_own_connection_and_closes_it(server, open_port):
    from executors._kit import poll

    before = server.info("total_connections_received")
    configs = [cs(f"redis://:{PASSWORD}@127.0.0.1:{server.port}"), cs(f"redis://:x-wrong@127.0.0.1:{server.port}"),
               cs(f"redis://127.0.0.1:{server.port}"), cs(f"redis://:{PASSWORD}@127.0.0.1:{server.port}/99"),
               cs(f"rediss://:{PASSWORD}@127.0.0.1:{server.tls_port}", ignoreTls=True)]
    results = await asyncio.gather(*(run(c) for c in configs), run(cs(f"redis://127.0.0.1:{open_port}"), 1),
                                   run(cs(f"rediss://127.0.0.1:{open_port}"), 1))
    assert [r.status for r in results] == [UP, DOWN, DOWN, DOWN, UP, DOWN, DOWN]
    assert server.info("total_connections_received") - before == len(configs) + 1  # + the INFO connection
    deadline = time.time() + 3
    while server.info("connected_clients") != 1 and time.time() < deadline:  # only the INFO connection
        await asyncio.sleep(0.05)
    assert server.info("connected_clients") == 1
    watcher = poll.poller(asyncio.get_running_loop())
    assert not getattr(watcher, "_handlers", getattr(watcher, "_events", None))


# --------------------------------------------------------------------------------------------------
# Through the worker

def mixed_case(i: int, server, pki) -> tuple[dict, int, str]:
    kind = i % 6
    if kind == 0:
        return cs(f"redis://:{PASSWORD}@127.0.0.1:{server.port}"), UP, PONG
    if kind == 1:
        return cs(f"redis://{ALICE}:{ALICE_PASSWORD}@localhost:{server.port}/3"), UP, PONG
    if kind == 2:
        return cs(f"redis://{ALICE}:{PASSWORD}@127.0.0.1:{server.port}"), DOWN, WRONGPASS
    if kind == 3:
        return cs(f"redis://127.0.0.1:{server.port}/2"), DOWN, NOAUTH
    if kind == 4:
        return cs(f"rediss://:{PASSWORD}@localhost:{server.tls_port}", caCert=pki.ca_pem), UP, PONG
    return cs(f"redis://:{PASSWORD}@127.0.0.1:{server.port}/{16 + i}"), DOWN, \
        "Redis ping failed: ERR DB index is out of range"


async def test_100_tasks_through_redis_at_concurrency_64(redis, server, pki, caplog):
    caplog.set_level(logging.DEBUG)
    cases = {f"redis-{i}": mixed_case(i, server, pki) for i in range(100)}
    bodies = await run_through_worker(redis, [healthcheck_payload("redis", config, monitor_id=monitor_id, timeout=5)
                                              for monitor_id, (config, _, _) in cases.items()])
    results = one_result_each(bodies)
    assert sorted(results) == sorted(cases)
    for monitor_id, (config, status, message) in cases.items():
        body = results[monitor_id]
        assert body["monitor_type"] == "redis" and {"status", "message", "ping_ms", "start_time"} <= set(body)
        assert (body["status"], body["message"]) == (status, message), monitor_id
        # the task's own config comes back in monitor_config, secrets masked
        assert body["monitor_config"] == masked_config(json.dumps(config))
    assert_no_secret(ALL_PASSWORDS, bodies, caplog, logged=True)
    deadline = time.time() + 3
    while server.info("connected_clients") != 1 and time.time() < deadline:
        await asyncio.sleep(0.05)
    assert server.info("connected_clients") == 1
