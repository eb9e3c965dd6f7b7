"""`postgres` executor against real servers: the shared PostgreSQL on 127.0.0.1:5432 (trust, no TLS)
and a private cluster started once for this module (SCRAM passwords, TLS with a test CA whose server
certificate names only `localhost`, client-certificate and peer logins; see pg_peers.py). Covers Go's
messages, libpq's sslmode meanings, deadlines on silent peers, no leaked connections, and 100 tasks
through the real worker and Redis at concurrency 64 without a password in any log line or result."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import struct
import threading
import time

import pytest
import uvloop

import healthcheck
from executors import DOWN, UP, Monitor
from conftest import require, skip_or_fail
from helpers import assert_no_secret, connections_to, healthcheck_payload, one_result_each, run_through_worker
from pg_peers import PASSWORD, Cluster, missing_reason

SHARED = "postgres://root@127.0.0.1:5432/test"  # the machine's server: trust, ssl off
WRONG_PASSWORD = "pw-Wrong-52e8d1"
NO_ROOT = ("no root certificate file is set: either provide the file with sslrootcert, use the system's trusted "
           "roots with sslrootcert=system, or change sslmode to disable server certificate verification")
UNKNOWN_CA = "connection failed: tls: failed to verify certificate: x509: certificate signed by unknown authority"


@pytest.fixture(scope="module")
def cluster():
    require(missing_reason())
    server = Cluster()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def shared():
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
    except OSError:
        skip_or_fail("no PostgreSQL listens on 127.0.0.1:5432")
    return SHARED


async def run(url: str, query: str = "", timeout: int = 5):
    """One check through the worker's registry and hard cap, as the worker runs it."""
    config = json.dumps({"database_connection_string": url, "database_query": query})
    monitor = Monitor(id="m1", name="pg test", type="postgres", interval=60, timeout=timeout, config=config)
    return await healthcheck.run_check(monitor, None, float(timeout))


async def left_open(port: int) -> list:
    """This process's connections to a port once the loop has run the closes already scheduled
    (asyncio closes a transport's socket on the loop iteration after close())."""
    for _ in range(3):
        await asyncio.sleep(0)
    return connections_to(port)


def assert_up(result) -> None:
    assert (result.status, result.message) == (UP, f"Query successful, ping: {result.ping_ms}ms"), result.message


# --------------------------------------------------------------------------------------------------
# UP, and Go's messages for what goes wrong

async def test_up_on_the_shared_server_with_gos_message_and_phase_timings(shared):
    r = await run(shared, "SELECT datname FROM pg_database")
    assert_up(r)
    assert {"connect", "auth", "query"} <= set(r.timings) and "tls" not in r.timings
    assert r.ping_ms >= int(r.timings["query"])


@pytest.mark.parametrize("query", ["SELECT 1 WHERE false", "SELECT 1; SELECT 2", "   ", "values (1), (2)",
                                   "WITH x AS (SELECT 1) SELECT * FROM x", "show server_version",
                                   "  explain select 1"])
async def test_zero_rows_several_statements_and_every_allowed_verb_are_up(shared, query):
    assert_up(await run(shared, query))


async def test_password_login_is_up_with_a_query(cluster):
    assert_up(await run(cluster.url(), "SELECT current_user"))


async def test_application_name_reaches_the_server(cluster):
    """The query divides by zero unless the session carries the name (and the role) it should."""
    query = "SELECT 1/(current_setting('application_name') = 'pw-check' AND current_user = 'monitor')::int"
    assert_up(await run(cluster.url(application_name="pw-check"), query))
    r = await run(cluster.url(application_name="other"), query)
    assert (r.status, r.message) == (DOWN, "Query failed: ERROR #22012 division by zero")


async def test_query_parameters_override_the_urls_parts_as_in_go(cluster):
    url = (f"postgres://other:{WRONG_PASSWORD}@127.0.0.1:1/nodb?user=monitor&password={PASSWORD}"
           f"&port={cluster.port}&dbname=postgres")
    assert_up(await run(url))


@pytest.mark.parametrize("case,message", [
    ("wrong password", 'connection failed: FATAL #28P01 password authentication failed for user "monitor"'),
    ("no password", 'connection failed: FATAL #28P01 password authentication failed for user "monitor"'),
    ("unknown user", 'connection failed: FATAL #28P01 password authentication failed for user "ghost"'),
    ("unknown database", 'connection failed: FATAL #3D000 database "nope" does not exist'),
    ("bad query", 'Query failed: ERROR #42P01 relation "nope" does not exist'),
    ("syntax", 'Query failed: ERROR #42601 syntax error at or near "WHERE"'),
    ("runtime", "Query failed: ERROR #22012 division by zero"),
    ("not allowed", "query validation failed: only SELECT, SHOW, DESCRIBE, EXPLAIN, WITH, and VALUES statements "
                    "are allowed for monitoring queries"),
])
async def test_failures_are_down_in_gos_words(cluster, case, message):
    url, query = {
        "wrong password": (cluster.url(password=WRONG_PASSWORD), ""),
        "no password": (cluster.url(password=None), ""),  # tried (trust/peer/cert logins need none), not refused
        "unknown user": (cluster.url(user="ghost"), ""),
        "unknown database": (cluster.url(database="nope"), ""),
        "bad query": (cluster.url(), "SELECT * FROM nope"),
        "syntax": (cluster.url(), "SELECT FROM WHERE"),
        "runtime": (cluster.url(), "SELECT 1/(random() * 0)::int"),
        "not allowed": (cluster.url(), "DROP TABLE x"),
    }[case]
    r = await run(url, query)
    assert (r.status, r.message) == (DOWN, message)
    assert PASSWORD not in r.message and WRONG_PASSWORD not in r.message


async def test_the_query_rule_is_checked_only_once_connected_as_in_go():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    r = await run(f"postgres://u:{PASSWORD}@127.0.0.1:{port}/db", "DROP TABLE x")
    assert (r.status, r.message) == (DOWN, f"connection failed: dial tcp 127.0.0.1:{port}: connect: connection refused")


@pytest.mark.parametrize("url,message", [
    ("", "connection string validation failed: connection string cannot be empty"),
    ("mysql://u:p@h/db", "connection string validation failed: connection string must use one of "
                         "[postgres postgresql] schemes, got: mysql"),
    ("postgres:///db", "connection string validation failed: connection string must include host"),
    ("postgres://h/db", "connection string validation failed: connection string must include username"),
    ("postgres://:x@h/db", "connection string validation failed: connection string must include username"),
    ("postgres://u@h/", "connection string validation failed: connection string must include database name"),
    ("postgres://u@h:0/db", "connection string validation failed: invalid port: 0"),
    (f"postgres://u:{PASSWORD}@h:12x/db", 'connection string validation failed: invalid connection string format: '
                                          'parse "postgres://u:***@h:12x/db": invalid port ":12x" after host'),
    (f"postgres://u:{PASSWORD}@bad host/db", 'connection string validation failed: invalid connection string '
                                             'format: parse "postgres://u:***@bad host/db": invalid character " " '
                                             'in host name'),
    ("postgres://u@h/db?sslmode=on", 'failed to parse connection string: invalid sslmode value: "on"'),
    ("postgres://u@h/db?sslmode=require&sslrootcert=system", 'failed to parse connection string: weak sslmode '
     '"require" may not be used with sslrootcert=system (use "verify-full")'),
    ("postgres://u@h/db?port=5x", 'failed to parse connection string: invalid integer value "5x" for connection '
                                  'option "port"'),
])
async def test_connection_string_problems_are_down_before_any_connection(url, message):
    r = await run(url)
    assert (r.status, r.message) == (DOWN, message)
    assert r.timings == {}


@pytest.mark.parametrize("config,message", [
    ('{"database_connection_string": 5}', "failed to parse config: json: cannot unmarshal number into Go struct "
                                          "field PostgresConfig.database_connection_string of type string"),
    ('{"database_connection_string": "x", "foo": 1}', 'failed to parse config: json: unknown field "foo"'),
])
async def test_config_decoding_is_strict_as_in_go(config, message):
    monitor = Monitor(id="m1", type="postgres", timeout=2, config=config)
    r = await healthcheck.run_check(monitor, None, 2.0)
    assert (r.status, r.message) == (DOWN, message)


# --------------------------------------------------------------------------------------------------
# sslmode as libpq means it. pg_hba.conf lets `sslonly` in over TLS only and `nossl` without TLS only.

def _refused(user: str, how: str) -> str:
    return (f'connection failed: FATAL #28000 pg_hba.conf rejects connection for host "127.0.0.1", user "{user}", '
            f'database "postgres", {how}')


ABSENT = "/nonexistent/ca.pem"
TLS_CASES = {  # id: cluster -> (url, status, message when DOWN, whether the connection that worked used TLS)
    "absent=disable": lambda c: (c.url("sslonly"), DOWN, _refused("sslonly", "no encryption"), None),
    "disable": lambda c: (c.url("nossl", sslmode="disable"), UP, None, False),
    "disable refused": lambda c: (c.url("sslonly", sslmode="disable"), DOWN, _refused("sslonly", "no encryption"),
                                  None),
    "allow plaintext": lambda c: (c.url("nossl", sslmode="allow"), UP, None, False),
    "allow then TLS": lambda c: (c.url("sslonly", sslmode="allow"), UP, None, True),
    "prefer TLS": lambda c: (c.url("sslonly", sslmode="prefer"), UP, None, True),
    "prefer then plaintext": lambda c: (c.url("nossl", sslmode="prefer"), UP, None, None),
    "prefer, no TLS on server": lambda c: (SHARED + "?sslmode=prefer", UP, None, False),
    "prefer, unverifiable": lambda c: (c.url(sslmode="prefer", sslrootcert=c.other_ca_file), UP, None, None),
    "require": lambda c: (c.url("sslonly", sslmode="require"), UP, None, True),
    "require unverified": lambda c: (c.url("sslonly", host="localhost", sslmode="require"), UP, None, True),
    "require refused": lambda c: (c.url("nossl", sslmode="require"), DOWN, _refused("nossl", "SSL encryption"), None),
    "require, no TLS on server": lambda c: (SHARED + "?sslmode=require", DOWN,
                                            "connection failed: pgdriver: SSL is not enabled on the server", None),
    "require with a root file": lambda c: (c.url("sslonly", sslmode="require", sslrootcert=c.other_ca_file), DOWN,
                                           UNKNOWN_CA, None),
    "require, root file absent": lambda c: (c.url("sslonly", sslmode="require", sslrootcert=ABSENT), UP, None, True),
    "verify-ca": lambda c: (c.url("sslonly", sslmode="verify-ca", sslrootcert=c.ca_file), UP, None, True),
    "verify-ca wrong CA": lambda c: (c.url("sslonly", sslmode="verify-ca", sslrootcert=c.other_ca_file), DOWN,
                                     UNKNOWN_CA, None),
    "verify-ca no root": lambda c: (c.url("sslonly", sslmode="verify-ca"), DOWN, f"connection failed: {NO_ROOT}",
                                    None),
    "verify-ca root absent": lambda c: (c.url("sslonly", sslmode="verify-ca", sslrootcert=ABSENT), DOWN,
                                        f'connection failed: root certificate file "{ABSENT}" does not exist'
                                        + NO_ROOT.partition(" is set")[2], None),
    "verify-full right name": lambda c: (c.url("sslonly", host="localhost", sslmode="verify-full",
                                               sslrootcert=c.ca_file), UP, None, True),
    "verify-full wrong name": lambda c: (c.url("sslonly", sslmode="verify-full", sslrootcert=c.ca_file), DOWN,
                                         "connection failed: tls: failed to verify certificate: x509: cannot validate "
                                         "certificate for 127.0.0.1 because it doesn't contain any IP SANs", None),
    "system roots": lambda c: (c.url("sslonly", host="localhost", sslrootcert="system"), DOWN, UNKNOWN_CA, None),
}


@pytest.mark.parametrize("case", list(TLS_CASES))
async def test_sslmode_has_libpqs_meaning(cluster, shared, case):
    url, status, message, used_tls = TLS_CASES[case](cluster)
    r = await run(url)
    if status == UP:
        assert_up(r)
    else:
        assert (r.status, r.message) == (DOWN, message)
    if used_tls is not None:
        assert ("tls" in r.timings) == used_tls, r.timings


async def test_client_certificate_login(cluster):
    url = cluster.url("certuser", password=None, sslmode="verify-full", host="localhost",
                      sslrootcert=cluster.ca_file, sslcert=cluster.client_cert, sslkey=cluster.client_key)
    assert_up(await run(url))
    r = await run(cluster.url("certuser", password=None, sslmode="require"))
    assert (r.status, r.message) == (DOWN, "connection failed: FATAL #28000 connection requires a valid client "
                                           "certificate")


async def test_unix_socket_logins_peer_and_trust(cluster, shared):
    assert_up(await run(f"postgres://root@localhost/postgres?host={cluster.sockets}&port={cluster.port}"))
    if os.path.exists("/var/run/postgresql/.s.PGSQL.5432"):
        assert_up(await run("postgres://root@localhost/test?host=/var/run/postgresql&sslmode=require"))
    r = await run("postgres://root@localhost/test?host=/nonexistent")
    assert (r.status, r.message) == (DOWN, "connection failed: dial unix /nonexistent/.s.PGSQL.5432: connect: no "
                                           "such file or directory")


async def test_system_roots_are_the_ones_openssl_is_pointed_at(cluster, monkeypatch):
    """sslrootcert=system: the system's roots (SSL_CERT_FILE here plays the system bundle), and verify-full."""
    url = cluster.url("sslonly", host="localhost", sslrootcert="system")
    monkeypatch.setenv("SSL_CERT_FILE", cluster.ca_file)
    assert_up(await run(url))
    monkeypatch.setenv("SSL_CERT_FILE", cluster.other_ca_file)
    assert (await run(url)).message == UNKNOWN_CA


# --------------------------------------------------------------------------------------------------
# Deadlines, and no connection outlives its check

@pytest.mark.parametrize("sslmode", ["disable", "require"])
async def test_a_port_that_accepts_and_never_answers_is_down_within_the_timeout(open_port, sslmode):
    began = time.monotonic()
    r = await run(f"postgres://u:{PASSWORD}@127.0.0.1:{open_port}/db?sslmode={sslmode}", timeout=1)
    assert time.monotonic() - began < 1.5
    assert r.status == DOWN
    assert re.fullmatch(rf"connection failed: read tcp 127\.0\.0\.1:\d+->127\.0\.0\.1:{open_port}: i/o timeout",
                        r.message), r.message
    assert await left_open(open_port) == []


async def test_a_port_that_drops_the_handshake_is_down_within_the_timeout(hanging_port):
    began = time.monotonic()
    r = await run(f"postgres://u@127.0.0.1:{hanging_port}/db", timeout=1)
    assert time.monotonic() - began < 1.5
    assert (r.status, r.message) == (DOWN, f"connection failed: dial tcp 127.0.0.1:{hanging_port}: i/o timeout")


async def test_a_slow_query_is_down_within_the_timeout_and_its_connection_is_gone(cluster):
    began = time.monotonic()
    r = await run(cluster.url(), "SELECT pg_sleep(5)", timeout=1)
    assert time.monotonic() - began < 1.5
    assert r.status == DOWN
    assert re.fullmatch(rf"Query failed: read tcp 127\.0\.0\.1:\d+->127\.0\.0\.1:{cluster.port}: i/o timeout",
                        r.message), r.message
    assert await left_open(cluster.port) == []


@pytest.mark.parametrize("reset", [False, True], ids=["close", "reset"])
async def test_a_server_that_hangs_up_is_down_in_gos_words(reset):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]

    def serve() -> None:  # reads the startup message, then closes (FIN) or aborts (RST)
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(1024)
            if reset:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        r = await run(f"postgres://u@127.0.0.1:{port}/db")
    finally:
        listener.close()
    assert r.status == DOWN
    if reset:
        assert re.fullmatch(rf"connection failed: read tcp 127\.0\.0\.1:\d+->127\.0\.0\.1:{port}: read: connection "
                            rf"reset by peer", r.message), r.message
    else:
        assert r.message == "connection failed: EOF"


def test_checks_on_uvloop_as_in_the_worker(cluster, open_port):
    async def checks():
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        return [await run(cluster.url("sslonly", host="localhost", sslmode="verify-full",
                                      sslrootcert=cluster.ca_file), "SELECT 1"),
                await run(cluster.url("sslonly", sslmode="verify-full", sslrootcert=cluster.ca_file)),
                await run(cluster.url("nossl", sslmode="prefer")),
                await run(f"postgres://u@127.0.0.1:{open_port}/db", timeout=1)]

    verified, wrong_name, fallback, silent = uvloop.run(checks())
    assert_up(verified)
    assert_up(fallback)
    assert wrong_name.message.endswith("because it doesn't contain any IP SANs")
    assert silent.status == DOWN and silent.message.endswith(": i/o timeout")
    assert connections_to(cluster.port) == [] and connections_to(open_port) == []


# --------------------------------------------------------------------------------------------------
# 100 checks through Redis and the real handler at concurrency 64

async def test_100_tasks_at_concurrency_64_give_one_result_each_and_no_password_anywhere(cluster, shared, redis,
                                                                                           caplog):
    caplog.set_level(logging.DEBUG)
    payloads, expected = [], {}
    for i in range(100):
        if i % 4 == 0:
            url, want = cluster.url(password=WRONG_PASSWORD), (DOWN, "connection failed: FATAL #28P01 password "
                                                                     'authentication failed for user "monitor"')
        elif i % 8 == 1:  # a few on the shared server, which other suites use too
            url, want = shared, (UP, None)
        elif i % 4 == 2:
            url, want = cluster.url("sslonly", sslmode="require"), (UP, None)
        else:
            url, want = cluster.url(), (UP, None)
        config = {"database_connection_string": url, "database_query": "SELECT 1"}
        payloads.append(healthcheck_payload("postgres", config, monitor_id=f"m{i}", timeout=10))
        expected[f"m{i}"] = want
    seen = one_result_each(await run_through_worker(redis, payloads, timeout=60))
    assert set(seen) == set(expected)
    for monitor_id, (status, message) in expected.items():
        body = seen[monitor_id]
        assert body["monitor_type"] == "postgres"
        assert body["status"] == status, body["message"]
        assert body["message"] == (message or f"Query successful, ping: {body['ping_ms']}ms")
    assert_no_secret((PASSWORD, WRONG_PASSWORD), seen.values(), caplog)  # the config is echoed as Go does
    assert await left_open(cluster.port) == [] and await left_open(5432) == []
