"""The `sqlserver` executor against TDS servers started here (tests/tds_server.py, written from the MS-TDS
specification: no real SQL Server can run on this machine), so python-tds's real PRELOGIN, TLS-in-TDS,
LOGIN7 and SQLBatch exchanges are exercised: every connection-string check of Peekaping, go-mssqldb's
encryption semantics (encrypt absent/false/true/disable x server without TLS / offering / requiring it,
TrustServerCertificate, certificate, hostnameincertificate), login and query failures, named instances,
routing, failover, silent peers, cancellation, and 100 tasks through a private Redis at concurrency 64.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time

import pytest
from conftest import require_modules

require_modules("pytds", "trustme", install="pip install '.[databases,test]'")

from helpers import assert_no_secret, cycled, one_result_each, run_through_worker, wait_until
from http_peers import certs
from tds_server import CLOSE, HANG, BrowserServer, Error, Rows, TDSServer, wait_closed

import healthcheck
import worker
from executors._kit.redact import masked_config
from executors import DOWN, UP, Monitor, sqlserver
from executors._kit import tds

PASSWORD = "Tds-Secret-7731"  # must never appear in a result or a log line
MARGIN = 0.5  # a check must end within its timeout plus this
UP_TEXT = re.compile(r"^Query successful, ping: (\d+)ms, columns: (\d+), rows: (\d+)$")
QUERIES = {
    "SELECT 1": [Rows([("", "int")], [(1,)])],
    "SELECT name, database_id FROM sys.databases": [
        Rows([("name", "nvarchar"), ("database_id", "int")], [("master", 1), ("tempdb", 2), (None, None)])],
    "SELECT 1; SELECT 2, 3": [Rows([("", "int")], [(1,)]), Rows([("", "int"), ("", "int")], [(2, 3), (2, 3)])],
    "SELECT @x = 1": [],
    "select * from missing": [Error(208, "Invalid object name 'missing'.")],
    "SELECT 1/0": [Rows([("", "int")], [(1,)]), Error(8134, "Divide by zero error encountered.")],
    "SELECT two_errors": [Error(50000, "first error"), Error(50001, "second error")],
    f"SELECT '{PASSWORD}'": [Error(50000, f"server echoes {PASSWORD}")],
    "SELECT hang": HANG,
    "SELECT close": CLOSE,
}


@pytest.fixture(scope="module", autouse=True)
def registered():
    """The registry names the module once the lead wires it in; until then the tests do."""
    before = worker.EXECUTORS.get("sqlserver")
    worker.EXECUTORS["sqlserver"] = "executors.sqlserver"
    yield
    worker.EXECUTORS["sqlserver"] = before


@pytest.fixture(scope="module")
def servers():
    c = certs()
    made = {
        "plain": TDSServer(users={"sa": PASSWORD, "DOM\\bob": PASSWORD}, queries=QUERIES),
        "offer": TDSServer(encryption="off", tls=c.server_context(c.leaf), users={"sa": PASSWORD}, queries=QUERIES),
        "require": TDSServer(encryption="req", tls=c.server_context(c.leaf), users={"sa": PASSWORD}, queries=QUERIES),
        "no-option": TDSServer(prelogin_encryption=False, users={"sa": PASSWORD}, queries=QUERIES),
    }
    made["router"] = TDSServer(users={"sa": PASSWORD}, route_to=("127.0.0.1", made["plain"].port))
    yield made
    for server in made.values():
        server.close()


def ado(server: TDSServer, extra: str = "", host: str = "127.0.0.1", password: str = PASSWORD) -> str:
    return f"Server={host},{server.port};Database=master;User Id=sa;Password={password}{extra}"


async def run(conn_str: str, query: str = "SELECT 1", timeout: float = 3.0):
    """One check through the worker's registry and hard cap, as the worker runs it."""
    config = json.dumps({"database_connection_string": conn_str, "database_query": query})
    monitor = Monitor(id="m1", name="mssql", type="sqlserver", interval=60, timeout=int(timeout), config=config)
    return await healthcheck.run_check(monitor, None, timeout)


def up_counts(result) -> tuple[int, int]:
    match = UP_TEXT.match(result.message)
    assert result.status == UP and match, result.message
    assert int(match.group(1)) == result.ping_ms
    return int(match.group(2)), int(match.group(3))


def last_session(server: TDSServer) -> dict:
    return server.sessions[-1]


# --- connection-string checks (Peekaping's texts) -----------------------------------------------------

VALIDATION = "connection string validation failed: "
FORMAT = ("invalid connection string format. Expected: Server=hostname,port;Database=database;User Id=username;"
          "Password=password;...")
BASE = "Server=localhost;Database=master;User Id=sa;Password=pw"


@pytest.mark.parametrize("conn_str, reason", [
    ("", "connection string cannot be empty"),
    ("mysql://user:password@localhost:3306/testdb", FORMAT),
    ("Database=master;Server=localhost;User Id=sa;Password=pw", FORMAT),  # keys out of order
    ("Server=localhost;Database=master;Password=pw;User Id=sa", FORMAT),
    ("Server=a,b,c;Database=master;User Id=sa;Password=pw", FORMAT),
    ("Server=localhost,99999;Database=master;User Id=sa;Password=pw", "invalid port number: 99999"),
    ("Server=localhost,0;Database=master;User Id=sa;Password=pw", "invalid port number: 0"),
    (BASE + ";Server= ", "Server parameter is required"),
    (BASE + ";database=", "Database parameter is required"),
    (BASE + ";USER ID=", "User Id parameter is required"),
    (BASE + ";Server=h,1,2", "invalid Server format. Expected: hostname or hostname,port"),
    (BASE + ";Server=h,x", "invalid port number: x"),
    (BASE + ";Encrypt=maybe", "invalid Encrypt value: maybe. Expected: true or false"),
    (BASE + ";TrustServerCertificate=sure", "invalid TrustServerCertificate value: sure. Expected: true or false"),
    (BASE + ";Connection Timeout=-5", "invalid Connection Timeout value: -5. Expected: positive integer"),
    (BASE + ";timeout=soon", "invalid Connection Timeout value: soon. Expected: positive integer"),
    ("sqlserver://localhost/master", "connection string must include username"),
    ("sqlserver://:pw@localhost/master", "connection string must include username"),
    ("mssql://sa:pw@/master", "connection string must include host"),
    ("sqlserver://sa:pw@localhost", "connection string must include database name (in path or ?database= parameter)"),
    ("sqlserver://sa:pw@localhost/?app=x", ("connection string must include database name (in path or ?database= "
                                           "parameter)")),
    ("sqlserver://sa:pw@localhost:0/master", "invalid port: 0"),
    ("sqlserver://sa:pw@local host/master", ('invalid connection string format: parse "sqlserver://sa:xxxxx@local '
                                            'host/master": invalid character " " in host name')),
    ("sqlserver://sa:pw@localhost:14x/master", ('invalid connection string format: parse "sqlserver://sa:xxxxx@'
                                               'localhost:14x/master": invalid port ":14x" after host')),
    ("sqlserver://sa:pw@localhost/%zz", ('invalid connection string format: parse "sqlserver://sa:xxxxx@'
                                        'localhost/%zz": invalid URL escape "%zz"')),
])
async def test_connection_string_checks_give_peekapings_texts(conn_str, reason):
    r = await run(conn_str)
    assert (r.status, r.message) == (DOWN, VALIDATION + reason)
    assert r.start_ns <= r.end_ns and r.ping_ms < 100


@pytest.mark.parametrize("config, message", [
    ('{"database_connection_string": "x", "port": 1}', 'failed to parse config: json: unknown field "port"'),
    ('{"database_query": 1}', ("failed to parse config: json: cannot unmarshal number into Go struct field "
                              "SQLServerConfig.database_query of type string")),
])
async def test_config_is_decoded_strictly(config, message):
    monitor = Monitor(id="m1", name="mssql", type="sqlserver", interval=60, timeout=3, config=config)
    r = await healthcheck.run_check(monitor, None, 3.0)
    assert (r.status, r.message, r.start_ns) == (DOWN, message, r.end_ns)


async def test_url_parse_errors_never_show_the_password():
    r = await run(f"sqlserver://sa:{PASSWORD} x@localhost/master")  # a space makes the userinfo invalid
    assert r.message == (VALIDATION + 'invalid connection string format: parse "sqlserver://sa:xxxxx@localhost/master"'
                                      ": net/url: invalid userinfo")
    assert PASSWORD not in r.message


async def test_keys_match_case_insensitively_and_further_keys_may_follow(servers):
    r = await run(f"server=127.0.0.1,{servers['plain'].port};DATABASE=test;user id=sa;PASSWORD={PASSWORD};"
                  "App Name=edge-probe;Packet Size=8192")
    assert up_counts(r) == (1, 1)
    login = last_session(servers["plain"])["login"]
    assert (login["user"], login["password"], login["database"]) == ("sa", PASSWORD, "test")
    assert login["app"] == "edge-probe" and login["packet_size"] == 8192
    assert login["tds_version"] == 0x74000004


async def test_legacy_url_is_accepted_and_converted(servers):
    port = servers["plain"].port
    r = await run(f"sqlserver://sa:{PASSWORD}@127.0.0.1:{port}?database=test")
    assert up_counts(r) == (1, 1)
    login = last_session(servers["plain"])["login"]
    assert (login["user"], login["password"], login["database"], login["app"]) == ("sa", PASSWORD, "test", "go-mssqldb")
    # database in the path, mssql://, escapes in the userinfo
    escaped = PASSWORD.replace("-", "%2D")
    assert up_counts(await run(f"mssql://sa:{escaped}@127.0.0.1:{port}/master")) == (1, 1)
    assert last_session(servers["plain"])["login"]["password"] == PASSWORD


async def test_values_peekaping_accepts_but_go_mssqldb_refuses_fail_when_connecting(servers):
    r = await run(ado(servers["plain"], ";Encrypt=yes"))
    assert (r.status, r.message) == (DOWN, ("connection failed: invalid encrypt 'yes': strconv.ParseBool: parsing "
                                           '"yes": invalid syntax'))
    r = await run(ado(servers["plain"], ";Connection Timeout=+5"))
    assert r.message == ("connection failed: invalid connection timeout '+5': strconv.ParseUint: parsing \"+5\": "
                         "invalid syntax")
    r = await run(ado(servers["plain"], ";Certificate=/nonexistent/ca.pem"))
    assert r.message == ('connection failed: failed to setup TLS: cannot read certificate "/nonexistent/ca.pem": '
                         "open /nonexistent/ca.pem: no such file or directory")


# --- queries ------------------------------------------------------------------------------------------

async def test_select_1_is_up_with_counts_and_phase_timings(servers):
    r = await run(ado(servers["plain"]))
    assert up_counts(r) == (1, 1)
    assert {"connect", "prelogin", "login", "query"} <= set(r.timings) and "tls" not in r.timings
    assert last_session(servers["plain"])["batches"] == ["SELECT 1"]


async def test_blank_query_runs_select_1_and_rows_of_the_first_result_set_are_counted(servers):
    assert up_counts(await run(ado(servers["plain"]), query="  ")) == (1, 1)
    assert last_session(servers["plain"])["batches"] == ["SELECT 1"]
    assert up_counts(await run(ado(servers["plain"]), "SELECT name, database_id FROM sys.databases")) == (2, 3)
    assert up_counts(await run(ado(servers["plain"]), "SELECT 1; SELECT 2, 3")) == (1, 1)
    assert up_counts(await run(ado(servers["plain"]), "SELECT @x = 1")) == (0, 0)


async def test_query_not_starting_with_a_read_keyword_is_refused_after_connecting(servers):
    r = await run(ado(servers["plain"]), "UPDATE t SET a=1")
    assert (r.status, r.message) == (DOWN, ("query validation failed: query must start with one of: SELECT, SHOW, "
                                           "DESCRIBE, DESC, EXPLAIN, WITH, VALUES"))
    session = last_session(servers["plain"])
    assert session["login_ok"] and session["batches"] == []  # logged in, nothing sent
    r = await run(f"Server=127.0.0.1,1;Database=master;User Id=sa;Password={PASSWORD}", "UPDATE t SET a=1")
    assert r.message.startswith("connection failed: ")  # the connection comes first, as in Go


async def test_server_errors_are_reported_in_go_mssqldb_words(servers):
    r = await run(ado(servers["plain"]), "select * from missing")
    assert (r.status, r.message) == (DOWN, "query execution failed: mssql: Invalid object name 'missing'.")
    r = await run(ado(servers["plain"]), "SELECT two_errors")
    assert r.message == "query execution failed: mssql: second error"  # the last error, as go-mssqldb
    r = await run(ado(servers["plain"]), "SELECT 1/0")
    assert r.message == "error iterating rows: mssql: Divide by zero error encountered."
    r = await run(ado(servers["plain"]), "SELECT close")
    assert r.message == "query execution failed: EOF"


async def test_login_failures(servers):
    r = await run(ado(servers["plain"], password="wrong-password"))
    assert (r.status, r.message) == (DOWN, "connection failed: mssql: login error: Login failed for user 'sa'.")
    r = await run(f"Server=127.0.0.1,{servers['plain'].port};Database=nosuchdb;User Id=sa;Password={PASSWORD}")
    assert r.message == "connection failed: mssql: login error: Login failed for user 'sa'."
    assert last_session(servers["plain"])["login"]["database"] == "nosuchdb"


async def test_domain_user_logs_in_with_ntlm_as_go_mssqldb(servers):
    r = await run(f"Server=127.0.0.1,{servers['plain'].port};Database=master;User Id=DOM\\bob;Password={PASSWORD}")
    assert r.message == ("connection failed: mssql: login error: Login failed. The login is from an untrusted domain "
                         "and cannot be used with Integrated authentication.")
    login = last_session(servers["plain"])["login"]
    assert login["sspi"].startswith(b"NTLMSSP\x00\x01") and login["user"] == "" and login["password"] == ""


async def test_passwords_are_masked_in_server_texts(servers):
    r = await run(ado(servers["plain"]), f"SELECT '{PASSWORD}'")
    assert r.message == "query execution failed: mssql: server echoes xxxxx"


async def test_read_only_intent_is_sent(servers):
    assert up_counts(await run(ado(servers["plain"], ";ApplicationIntent=ReadOnly"))) == (1, 1)
    assert last_session(servers["plain"])["login"]["readonly"] is True


# --- encryption as go-mssqldb negotiates it ------------------------------------------------------------

UNKNOWN_CA = "connection failed: TLS Handshake failed: tls: failed to verify certificate: x509: certificate signed " \
             "by unknown authority"


@pytest.mark.parametrize("server, extra, outcome, tls", [
    # encrypt absent: TLS for the login when offered, the certificate not verified
    ("offer", "", UP, "login"),
    ("require", "", UP, "full"),
    ("plain", "", UP, None),
    # false: the same negotiation, but verified unless TrustServerCertificate
    ("offer", ";Encrypt=false", UNKNOWN_CA, None),
    ("offer", ";Encrypt=false;TrustServerCertificate=true", UP, "login"),
    ("plain", ";Encrypt=false", UP, None),
    # true: everything encrypted, verified against the system roots, `certificate`, or not at all
    ("offer", ";Encrypt=true", UNKNOWN_CA, None),
    ("require", ";Encrypt=true;TrustServerCertificate=true", UP, "full"),
    ("offer", ";Encrypt=true;Certificate={ca}", UP, "full"),
    ("offer", ";Encrypt=true;Certificate={ca};HostNameInCertificate=wrong.example",
     ("connection failed: TLS Handshake failed: tls: failed to verify certificate: x509: certificate is valid for "
     "localhost, not wrong.example"), None),
    ("plain", ";Encrypt=true;TrustServerCertificate=true", "connection failed: server does not support encryption",
     None),
    ("no-option", "", "connection failed: encrypt negotiation failed", None),
])
async def test_encryption_matrix(servers, server, extra, outcome, tls):
    target = servers[server]
    r = await run(ado(target, extra.format(ca=certs().ca_file), host="localhost"))
    if outcome == UP:
        assert up_counts(r) == (1, 1)
        assert ("tls" in r.timings) == (tls is not None)
    else:
        assert (r.status, r.message) == (DOWN, outcome)
    session = last_session(target)
    assert session["tls"] == tls
    if outcome == UP:
        assert session["login"]["password"] == PASSWORD and session["batches"] == ["SELECT 1"]


async def test_encrypt_disable_in_a_url(servers):
    port = servers["offer"].port
    r = await run(f"sqlserver://sa:{PASSWORD}@localhost:{port}/master?encrypt=disable")
    assert up_counts(r) == (1, 1)
    assert (last_session(servers["offer"])["client_encryption"], last_session(servers["offer"])["tls"]) == (2, None)
    # a server that insists gets TLS anyway, verified against the system roots (go-mssqldb v0.12.3)
    r = await run(f"sqlserver://sa:{PASSWORD}@localhost:{servers['require'].port}/master?encrypt=disable")
    assert r.message == UNKNOWN_CA


async def test_system_roots_come_from_ssl_cert_file(servers, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", certs().ca_file)
    assert up_counts(await run(ado(servers["require"], ";Encrypt=true", host="localhost"))) == (1, 1)
    r = await run(ado(servers["require"], ";Encrypt=true", host="127.0.0.1"))  # the leaf has the IP SAN too
    assert r.status == UP


# --- named instances, routing, failover ---------------------------------------------------------------

async def test_named_instance_port_comes_from_sql_browser(servers, monkeypatch):
    browser = BrowserServer("SQLEXPRESS", servers["plain"].port)
    monkeypatch.setattr(sqlserver, "BROWSER_PORT", browser.port)
    try:
        r = await run(f"Server=127.0.0.1\\sqlexpress;Database=master;User Id=sa;Password={PASSWORD}")
        assert up_counts(r) == (1, 1) and "browser" in r.timings
        session = last_session(servers["plain"])
        assert session["instance"] == "SQLEXPRESS" and session["login"]["server"] == "127.0.0.1\\SQLEXPRESS"
        r = await run(f"Server=127.0.0.1\\OTHER;Database=master;User Id=sa;Password={PASSWORD}")
        assert r.message == "connection failed: no instance matching 'OTHER' returned from host '127.0.0.1'"
    finally:
        browser.close()
    r = await run(f"Server=127.0.0.1\\SQLEXPRESS;Database=master;User Id=sa;Password={PASSWORD}")
    assert re.fullmatch(r"connection failed: unable to get instances from Sql Server Browser on host 127\.0\.0\.1: "
                        r"read udp 127\.0\.0\.1:\d+->127\.0\.0\.1:\d+: read: connection refused", r.message), r.message


async def test_routing_is_followed(servers):
    before = len(servers["plain"].sessions)
    assert up_counts(await run(ado(servers["router"]))) == (1, 1)
    assert last_session(servers["router"])["login_ok"] and last_session(servers["router"])["batches"] == []
    assert len(servers["plain"].sessions) == before + 1 and last_session(servers["plain"])["batches"] == ["SELECT 1"]


async def test_failover_partner_is_tried_when_the_server_fails(servers, closed_port):
    r = await run(f"Server=127.0.0.1,{closed_port};Database=master;User Id=sa;Password={PASSWORD};"
                  f"FailoverPartner=127.0.0.1;FailoverPort={servers['plain'].port}")
    assert up_counts(r) == (1, 1)


# --- unreachable, silent, cancelled -------------------------------------------------------------------

async def test_refused_port_and_unknown_host_in_go_words(closed_port):
    r = await run(f"Server=127.0.0.1,{closed_port};Database=master;User Id=sa;Password={PASSWORD}")
    assert (r.status, r.message) == (DOWN, (f"connection failed: unable to open tcp connection with host "
                                           f"'127.0.0.1:{closed_port}': dial tcp 127.0.0.1:{closed_port}: connect: "
                                           "connection refused"))
    r = await run(f"Server=nohost.invalid;Database=master;User Id=sa;Password={PASSWORD}")
    assert r.message.startswith("connection failed: lookup nohost.invalid") and r.message.endswith(": no such host")


@pytest.mark.parametrize("where", ["accepts-never-answers", "syn-dropped", "query-never-answered",
                                   "connection-timeout"])
async def test_silence_ends_down_within_the_timeout(where, servers, open_port, hanging_port):
    timeout, query, extra = 2.0, "SELECT 1", ""
    conn_str = {"accepts-never-answers": f"Server=127.0.0.1,{open_port};Database=master;User Id=sa;Password=x1234",
                "syn-dropped": f"Server=127.0.0.1,{hanging_port};Database=master;User Id=sa;Password=x1234"}.get(where)
    if conn_str is None:
        query = "SELECT hang"
        extra = ";Connection Timeout=1" if where == "connection-timeout" else ""
        conn_str = ado(servers["plain"], extra)
    began = time.monotonic()
    r = await run(conn_str, query, timeout=timeout)
    elapsed = time.monotonic() - began
    assert r.status == DOWN and elapsed < timeout + MARGIN, (elapsed, r.message)
    expected = {"accepts-never-answers": r"connection failed: read tcp 127\.0\.0\.1:\d+->127\.0\.0\.1:\d+: i/o timeout",
                "syn-dropped": rf"connection failed: unable to open tcp connection with host '127\.0\.0\.1:{hanging_port}'"
                               rf": dial tcp 127\.0\.0\.1:{hanging_port}: i/o timeout",
                "query-never-answered": r"query execution failed: read tcp [\d.:]+->[\d.:]+: i/o timeout",
                "connection-timeout": r"query execution failed: read tcp [\d.:]+->[\d.:]+: i/o timeout"}[where]
    assert re.fullmatch(expected, r.message), r.message
    if where == "connection-timeout":  # go-mssqldb's per-read limit ends it before the monitor timeout
        assert elapsed < 1.0 + MARGIN
    if where.startswith(("query", "connection")):
        assert wait_closed(servers["plain"], 1.0)


async def test_a_cancelled_check_closes_its_connection_at_once(servers):
    task = asyncio.ensure_future(run(ado(servers["plain"]), "SELECT hang", timeout=10))
    await wait_until(lambda: _async(bool(servers["plain"].open_connections())), timeout=5)
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(wait_closed, servers["plain"], 1.0)


async def _async(value):
    return value


async def test_a_thread_blocked_past_the_budget_does_not_hold_the_result(servers, monkeypatch):
    """Without the wire's own deadlines (reads block for good), the event loop still ends the check at the
    budget and shuts the connection, which unblocks the thread."""
    monkeypatch.setattr(tds.Wire, "_timeout", lambda self, op: None)
    began = time.monotonic()
    r = await run(ado(servers["plain"]), "SELECT hang", timeout=1.0)
    assert time.monotonic() - began < 1.0 + MARGIN
    assert (r.status, r.message) == (DOWN, "query execution failed: context deadline exceeded")
    assert await asyncio.to_thread(wait_closed, servers["plain"], 1.0)


async def test_no_connection_outlives_its_check(servers):
    await asyncio.gather(*(run(ado(servers[name]), q) for name in ("plain", "offer", "require")
                           for q in ("SELECT 1", "select * from missing", "SELECT 1/0")))
    for name in ("plain", "offer", "require"):
        assert await asyncio.to_thread(wait_closed, servers[name], 2.0), name


# --- through the worker ---------------------------------------------------------------------------------


async def test_100_tasks_through_redis_at_concurrency_64_give_one_strict_result_each(redis, servers, closed_port,
                                                                                     caplog):
    caplog.set_level(logging.DEBUG)
    cases = [({"database_connection_string": ado(servers["plain"]), "database_query": "SELECT 1"}, UP),
             ({"database_connection_string": ado(servers["require"], host="localhost"), "database_query": ""}, UP),
             ({"database_connection_string": ado(servers["offer"], ";Encrypt=true;TrustServerCertificate=true"),
               "database_query": "SELECT name, database_id FROM sys.databases"}, UP),
             ({"database_connection_string": ado(servers["plain"], password=PASSWORD + "-wrong"),
               "database_query": "SELECT 1"}, DOWN),
             ({"database_connection_string": ado(servers["plain"]), "database_query": "select * from missing"}, DOWN),
             ({"database_connection_string": f"sqlserver://sa:{PASSWORD}@127.0.0.1:{closed_port}/master",
               "database_query": "SELECT 1"}, DOWN)]
    payloads, expected = cycled("sqlserver", cases, "mssql-")
    seen = one_result_each(await run_through_worker(redis, payloads, go_strict=True))
    for body in seen.values():
        assert body["monitor_type"] == "sqlserver" and body["message"]
        # monitor_config is the task's config with its secrets masked
        assert body["monitor_config"] in [masked_config(json.dumps(c)) for c, _ in cases]
        if body["status"] == UP:
            assert UP_TEXT.match(body["message"]), body["message"]
    assert {monitor_id: body["status"] for monitor_id, body in seen.items()} == expected
    assert_no_secret([PASSWORD], seen.values(), caplog)  # nothing the worker adds has the password
    for name in ("plain", "offer", "require"):
        assert await asyncio.to_thread(wait_closed, servers[name], 2.0), name
