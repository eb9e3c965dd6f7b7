"""`mysql` against real servers (tests/mysql_peers.py): the shared MariaDB on 127.0.0.1:3306 with a user
created here, and a private mariadbd with TLS from a test CA. Go's messages (`Error 1045 (28000): ...`),
row counts, every `tls=` mode, the DSN options that are honoured and the ones only checked, silent and
refusing peers ending within the timeout, connections closed after every check, passwords kept out of
results and logs, and 100 tasks through Redis at concurrency 64."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
import socket
import time
import warnings

import pytest

import healthcheck
from executors import DOWN, UP, Monitor
from executors._kit import ed25519
from executors._kit.gotext import go_parse_duration
from conftest import require
from helpers import assert_no_secret, cycled, one_result_each, run_through_worker, sockets_to, wait_until
from mysql_peers import (ED_PASSWORD, PASSWORD, PrivateMariaDB, SharedUser, missing_private_reason,
                         missing_shared_reason, shared_row_count)

MARGIN = 0.5  # seconds a check may run past its monitor timeout before a test calls it late
UP_TEXT = re.compile(r"^Query successful, ping: (\d+)ms, Rows: (\d+)$")
PING = "MySQL query failed: failed to ping MySQL database: "
QUERY = "MySQL query failed: failed to execute query: "
OPEN = "MySQL query failed: failed to open MySQL connection: "
ON_TLS = ("SELECT 1 FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher' "
          "AND VARIABLE_VALUE <> ''")  # one row over TLS, none without



@pytest.fixture(scope="module")
def shared():
    require(missing_shared_reason())
    user = SharedUser()
    yield user
    user.drop()


@pytest.fixture(scope="module")
def private():
    require(missing_private_reason())
    server = PrivateMariaDB()
    try:
        server.start()
        yield server
    finally:
        server.stop()


async def run(connection_string: str, query: str = "", timeout: int = 3):
    """The check through the handler's own path (registry, budget); (result, seconds)."""
    monitor = Monitor(id="m", name="mysql", type="mysql", timeout=timeout,
                      config=json.dumps({"connection_string": connection_string, "query": query}))
    started = time.monotonic()
    result = await healthcheck.run_check(monitor, None, timeout - healthcheck.check_margin(timeout))
    return result, time.monotonic() - started


def rows_of(result) -> int:
    match = UP_TEXT.match(result.message)
    assert result.status == UP and match, result.message
    assert int(match.group(1)) == result.ping_ms
    return int(match.group(2))


# --------------------------------------------------------------------------------------------------
# Queries and Go's messages

async def test_blank_query_runs_select_1_and_reports_phase_timings(shared):
    for query in ("", "   \t\n"):
        result, _ = await run(shared.url(), query)
        assert rows_of(result) == 1
    assert {"connect", "auth", "ping", "query"} <= set(result.timings) and "tls" not in result.timings
    assert all(value >= 0 for value in result.timings.values())
    assert sum(result.timings.values()) <= (result.end_ns - result.start_ns) / 1e6 + 0.01


@pytest.mark.parametrize("query, rows", [
    ("SELECT seq FROM seq_1_to_1234", 1234),
    ("select 1 from dual where 1 = 0", 0),
    ("  Show DATABASES LIKE 'test'", 1),
    ("DESCRIBE mysql.db", None),
    ("EXPLAIN SELECT 1", 1),
    ("SELECT REPEAT('x', 100000) FROM seq_1_to_7", 7),  # rows larger than one read
])
async def test_row_count_is_the_number_of_rows_returned(shared, query, rows):
    result, _ = await run("mysql://root@127.0.0.1:3306/test", query)
    assert rows_of(result) == (shared_row_count(query) if rows is None else rows)


async def test_a_row_of_more_than_16_mib_is_one_row(private):
    result, _ = await run(private.url(), "SELECT REPEAT('x', 17000000), 1 UNION ALL SELECT 'y', 2", timeout=10)
    assert rows_of(result) == 2


async def test_wrong_password_gives_gos_error_text_and_never_the_password(shared):
    result, _ = await run(shared.url(password="not-the-pw-4e1"))
    assert result.status == DOWN
    assert result.message.startswith(f"{PING}Error 1045 (28000): Access denied for user '{shared.name}'@")
    assert "not-the-pw-4e1" not in result.message


async def test_unknown_database(shared):
    result, _ = await run("mysql://root@127.0.0.1:3306/no_such_db_5d2")
    assert (result.status, result.message) == (DOWN, f"{PING}Error 1049 (42000): Unknown database 'no_such_db_5d2'")


@pytest.mark.parametrize("query, message", [
    ("SELECT * FROM no_such_table", f"{QUERY}Error 1146 (42S02): Table 'test.no_such_table' doesn't exist"),
    ("SELECT 1; SELECT 2", f"{QUERY}Error 1064 (42000): You have an error in your SQL syntax; "),  # one statement
    ("SELECT IF(seq < 50, seq, (SELECT seq FROM seq_1_to_3)) FROM seq_1_to_100",
     "MySQL query failed: error while iterating rows: Error 1242 (21000): Subquery returns more than 1 row"),
])
async def test_bad_queries(shared, query, message):
    result, _ = await run(shared.url(), query)
    assert result.status == DOWN and result.message.startswith(message), result.message


async def test_multi_statements_only_when_the_dsn_asks(shared):
    result, _ = await run(shared.url(multiStatements="true"), "SELECT 1 UNION SELECT 2; SELECT 3")
    assert rows_of(result) == 2  # the first result's rows, as Go's rows.Next


@pytest.mark.parametrize("connection_string, message", [
    ("", "connection string cannot be empty"),
    ("postgres://user:password@localhost:5432/testdb", "connection string must use mysql:// scheme, got: postgres"),
    ("not-a-valid-url", "connection string must use mysql:// scheme, got: "),
    ("mysql://user:password@/testdb", "connection string must include host"),
    ("mysql://user:password@:3306/testdb", "connection string must include host"),
    ("mysql://localhost:3306/testdb", "connection string must include username"),
    ("mysql://:password@localhost:3306/testdb", "connection string must include username"),
    ("mysql://user:password@localhost:3306/", "connection string must include database name"),
    ("mysql://user:password@localhost:3306", "connection string must include database name"),
    ("mysql://user:password@localhost:0/testdb", "invalid port: 0"),
    ("mysql://user:s3cret-pw@localhost:port/testdb", 'invalid connection string format: parse '
     '"mysql://user:***@localhost:port/testdb": invalid port ":port" after host'),
    ("://nothing", 'invalid connection string format: parse "://nothing": missing protocol scheme'),
])
async def test_connection_string_validation_messages(connection_string, message):
    result, _ = await run(connection_string)
    assert (result.status, result.message) == (DOWN, f"connection string validation failed: {message}")


@pytest.mark.parametrize("query", ["DELETE FROM t", "DROP TABLE users", "INSERT INTO t VALUES (1)", "UPDATE t SET a=1"])
async def test_write_queries_are_refused_without_connecting(query):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    try:
        result, _ = await run(f"mysql://u:pw@127.0.0.1:{listener.getsockname()[1]}/db", query)
        assert (result.status, result.message) == (DOWN, "query validation failed: only SELECT, SHOW, DESCRIBE, and "
                                                         "EXPLAIN statements are allowed for monitoring queries")
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    finally:
        listener.close()


@pytest.mark.parametrize("params, message", [
    ("timeout=5", 'time: missing unit in duration "5"'),
    ("readTimeout=1x", 'time: unknown unit "x" in duration "1x"'),
    ("writeTimeout=.s", 'time: invalid duration ".s"'),
    ("tls=maybe", "invalid value / unknown config name: maybe"),
    ("parseTime=yes", "invalid bool value: yes"),
    ("serverPubKey=k1", "invalid value / unknown server pub key name: k1"),
    ("loc=Nowhere%2FCity", "unknown time zone Nowhere/City"),
    ("maxAllowedPacket=big", 'strconv.Atoi: parsing "big": invalid syntax'),
    ("my_var=%zz", 'invalid URL escape "%zz"'),
    ("interpolateParams=true&collation=sjis_bin",
     "invalid DSN: interpolateParams can not be used with unsafe collations"),
])
async def test_dsn_options_are_checked_as_go_checks_them(params, message):
    result, _ = await run(f"mysql://u:pw@127.0.0.1:9/db?{params}")
    assert (result.status, result.message) == (DOWN, OPEN + message)


@pytest.mark.parametrize("text, ns", [("0", 0), ("1.5s", 1_500_000_000), ("1h2m3s", 3_723_000_000_000),
                                      ("-300ms", -300_000_000), ("2µs", 2_000), (".5m", 30_000_000_000), ("+7ns", 7)])
def test_durations_read_as_go_reads_them(text, ns):
    assert go_parse_duration(text) == ns


def test_ed25519_signature_is_the_standard_one_for_32_byte_secrets():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    for seed in (bytes(32), bytes(range(32)), b"\xff" * 32):
        message = b"32-byte-scramble-from-the-server"
        assert ed25519.sign(seed, message) == Ed25519PrivateKey.from_private_bytes(seed).sign(message)


async def test_unknown_dsn_options_are_not_sent_to_the_server(shared):
    # Go's driver would send `SET wait_timeout=7, no_such_variable=1` and fail on the unknown variable
    result, _ = await run(shared.url(wait_timeout="7", no_such_variable="1"),
                          "SELECT 1 FROM DUAL WHERE @@SESSION.wait_timeout = 7")
    assert rows_of(result) == 0


@pytest.mark.parametrize("params, query, rows", [
    ({"charset": "latin1"}, "SELECT 1 FROM DUAL WHERE @@character_set_client = 'latin1'", 1),
    ({"charset": "nope,latin1"}, "SELECT 1 FROM DUAL WHERE @@character_set_results = 'latin1'", 1),
    ({"collation": "utf8mb4_unicode_ci"}, "SELECT 1 FROM DUAL WHERE @@collation_connection = 'utf8mb4_unicode_ci'", 1),
    ({"charset": "utf8mb4", "collation": "utf8mb4_bin"},
     "SELECT 1 FROM DUAL WHERE @@collation_connection = 'utf8mb4_bin'", 1),
])
async def test_charset_and_collation_are_honoured(shared, params, query, rows):
    result, _ = await run(shared.url(**params), query)
    assert rows_of(result) == rows


async def test_unknown_charset_is_the_servers_error(shared):
    result, _ = await run(shared.url(charset="nope"))
    assert (result.status, result.message) == (DOWN, f"{PING}Error 1115 (42000): Unknown character set: 'nope'")


# --------------------------------------------------------------------------------------------------
# TLS and auth plugins (private server: TLS with a test CA; certificate for `localhost` only)

@pytest.mark.parametrize("params, rows", [({}, 0), ({"tls": "false"}, 0), ({"tls": "skip-verify"}, 1),
                                          ({"tls": "preferred"}, 1), ({"tls": "SKIP-VERIFY"}, 1), ({"tls": "0"}, 0)])
async def test_tls_modes_that_do_not_verify(private, params, rows):
    result, _ = await run(private.url(**params), ON_TLS)
    assert rows_of(result) == rows
    assert ("tls" in result.timings) == bool(rows)


async def test_tls_true_verifies_the_chain_and_the_host_name(private, monkeypatch):
    result, _ = await run(private.url(host="localhost", tls="true"), ON_TLS)
    assert (result.status, result.message) == (
        DOWN, f"{PING}tls: failed to verify certificate: x509: certificate signed by unknown authority")
    monkeypatch.setenv("SSL_CERT_FILE", private.ca_file)  # the test CA as the system's roots (Go honours it too)
    result, _ = await run(private.url(host="localhost", tls="true"), ON_TLS)
    assert rows_of(result) == 1
    result, _ = await run(private.url(host="127.0.0.1", tls="1"), ON_TLS)
    assert (result.status, result.message) == (DOWN, f"{PING}tls: failed to verify certificate: x509: cannot validate "
                                                     "certificate for 127.0.0.1 because it doesn't contain any IP SANs")


async def test_a_user_that_requires_ssl(private):
    result, _ = await run(private.url("sslonly"), ON_TLS)
    assert result.message.startswith(f"{PING}Error 1045 (28000): Access denied for user 'sslonly'@")
    result, _ = await run(private.url("sslonly", tls="skip-verify"), ON_TLS)
    assert rows_of(result) == 1


async def test_tls_against_a_server_without_tls(shared):
    result, _ = await run(shared.url(tls="true"))
    assert (result.status, result.message) == (DOWN, f"{PING}TLS requested but server does not support TLS")
    for params in ({"tls": "preferred"}, {"tls": "skip-verify", "allowFallbackToPlaintext": "true"}):
        result, _ = await run(shared.url(**params), ON_TLS)
        assert rows_of(result) == 0


async def test_mariadb_ed25519_user_with_a_non_ascii_password(private):
    result, _ = await run(private.url("eduser", ED_PASSWORD, tls="skip-verify"), "SELECT id FROM items")
    assert rows_of(result) == 3
    result, _ = await run(private.url("eduser", "wrong-ed-pw"))
    assert result.message.startswith(f"{PING}Error 1045 (28000): Access denied for user 'eduser'@")


async def test_allow_native_passwords_false_refuses_a_native_password_user(private):
    result, _ = await run(private.url(allowNativePasswords="false"))
    assert (result.status, result.message) == (DOWN, f"{PING}this user requires mysql native password authentication")


# --------------------------------------------------------------------------------------------------
# Peers that refuse, never answer or talk nonsense

async def test_silent_port_ends_down_within_the_timeout(open_port):
    result, elapsed = await run(f"mysql://u:pw@127.0.0.1:{open_port}/db", timeout=2)
    assert (result.status, result.message) == (DOWN, f"{PING}context deadline exceeded")
    assert elapsed <= 2 + MARGIN


async def test_read_timeout_of_the_dsn_on_a_silent_port(open_port):
    result, elapsed = await run(f"mysql://u:pw@127.0.0.1:{open_port}/db?readTimeout=300ms", timeout=5)
    assert (result.status, result.message) == (DOWN, f"{PING}invalid connection")
    assert elapsed <= 5 + MARGIN


@pytest.mark.parametrize("params, timeout", [("?timeout=300ms", 5), ("", 2)])
async def test_a_connect_that_hangs_is_a_dial_timeout(hanging_port, params, timeout):
    result, elapsed = await run(f"mysql://u:pw@127.0.0.1:{hanging_port}/db{params}", timeout=timeout)
    assert (result.status, result.message) == (DOWN, f"{PING}dial tcp 127.0.0.1:{hanging_port}: i/o timeout")
    assert elapsed <= timeout + MARGIN


async def test_refused_and_unresolvable(closed_port):
    result, _ = await run(f"mysql://u:pw@127.0.0.1:{closed_port}/db")
    assert result.message == f"{PING}dial tcp 127.0.0.1:{closed_port}: connect: connection refused"
    result, _ = await run("mysql://u:pw@nohost.invalid:3306/db")
    assert result.message.startswith(f"{PING}dial tcp: lookup nohost.invalid") and result.message.endswith(
        ": no such host")


@pytest.mark.parametrize("greeting, message", [
    (b"", "invalid connection"),  # accepts and closes
    (b"SSH-2.0-OpenSSH_9.2p1\r\n", "commands out of sync. You can't run this command now"),
    (b"\x05\x00\x00\x00\x0a\x35\x2e\x35\x00", "malformed packet"),  # a greeting cut short
    (b"\x17\x00\x00\x00\xff\x10\x04Too many connections", "Error 1040: Too many connections"),
])
async def test_peers_that_do_not_speak_mysql(greeting, message):
    async def serve(reader, writer):
        writer.write(greeting)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        result, _ = await run(f"mysql://u:pw@127.0.0.1:{server.sockets[0].getsockname()[1]}/db")
    finally:
        server.close()
    assert (result.status, result.message) == (DOWN, PING + message)



async def test_no_connection_outlives_its_check(private, open_port, hanging_port):
    before = sockets_to(private.port, open_port, hanging_port)  # hanging_port's own fillers
    targets = [(private.url(), "SELECT 1"), (private.url(tls="skip-verify"), "SELECT 1"),
               (private.url(), "SELECT * FROM nothing"), (private.url(password="wrong-pw-x"), ""),
               (f"mysql://u:pw@127.0.0.1:{open_port}/db", ""), (f"mysql://u:pw@127.0.0.1:{hanging_port}/db", "")]
    gc.collect()  # earlier garbage (the server start-up's failed attempts) is not this test's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)  # "unclosed transport": left for the GC to close
        results = await asyncio.gather(*(run(url, query, timeout=1) for url, query in targets * 3))
        assert sockets_to(private.port, open_port, hanging_port) == before
        gc.collect()
    assert [r.status for r, _ in results[:2]] == [UP, UP]
    assert not [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]

    async def nobody_left() -> bool:
        return not private.sql("SELECT 1 FROM information_schema.PROCESSLIST WHERE USER = 'plain'")
    await wait_until(nobody_left, 5)


# --------------------------------------------------------------------------------------------------
# 100 checks through Redis and the real handler at concurrency 64

async def test_100_tasks_at_concurrency_64_give_one_result_each(shared, private, redis, caplog):
    caplog.set_level(logging.DEBUG)
    cases = [
        ({"connection_string": shared.url(), "query": "SELECT seq FROM seq_1_to_5"}, UP, "Rows: 5"),
        ({"connection_string": shared.url(password="wrong-" + PASSWORD)}, DOWN,
         f"{PING}Error 1045 (28000): Access denied for user '{shared.name}'@"),
        ({"connection_string": shared.url(), "query": "SELECT nope"}, DOWN,
         f"{QUERY}Error 1054 (42S22): Unknown column 'nope' in 'SELECT'"),
        ({"connection_string": private.url(tls="skip-verify"), "query": ON_TLS}, UP, "Rows: 1"),
        ({"connection_string": private.url("eduser", ED_PASSWORD), "query": "SELECT id FROM items"}, UP, "Rows: 3"),
    ]
    payloads, expected = cycled("mysql", cases, "m")
    seen = one_result_each(await run_through_worker(redis, payloads))
    assert sorted(seen) == sorted(expected)
    for monitor_id, (status, text) in expected.items():
        body = seen[monitor_id]
        assert body["monitor_type"] == "mysql"
        assert body["status"] == status, (monitor_id, body["message"])
        assert (body["message"].endswith(text) if status == UP else body["message"].startswith(text)), body["message"]
    assert_no_secret((PASSWORD, ED_PASSWORD), seen.values(), caplog)  # only in the config echoed back
