"""`mongodb` against SecantusDB (tests/mongo_peers.py; no real mongod can be installed here): the web
form's default config, jsonPath and expectedValue with Go's %v texts and loose equality, the command's
key order and doubles, authentication and authSource=admin, ok: 0 replies, bad command JSON, URI
errors with passwords masked, a silent port within the timeout, mongodb+srv through a private DNS
server, TLS, no connection outliving its check, and 100 tasks through Redis at concurrency 64."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time

import pytest
import trustme

from conftest import free_port, require_modules

require_modules("pymongo", install="pip install '.[databases]'")

import healthcheck  # noqa: E402
import worker  # noqa: E402
from executors._kit.redact import masked_config  # noqa: E402
from executors import DOWN, UP, Monitor, mongodb  # noqa: E402
from helpers import (INGEST_KEYS, assert_no_secret, connections_to, healthcheck_payload,  # noqa: E402
                     one_result_each, run_through_worker)
from mongo_peers import PASSWORDS, USERS, Secantus, SrvDns  # noqa: E402

MARGIN = 0.5  # seconds a check may run past its monitor timeout before a test calls it late
ALICE_PW, BOB_PW = USERS["alice"][0], USERS["bob"][0]
FAILED = "MongoDB command failed: failed to execute MongoDB command: "



@pytest.fixture(scope="module", autouse=True)
def registered():
    """Route `mongodb` tasks to the executor while worker.EXECUTORS does not yet."""
    old = worker.EXECUTORS.get("mongodb")
    if old is None:
        worker.EXECUTORS["mongodb"] = "executors.mongodb"
    yield
    worker.EXECUTORS["mongodb"] = old


@pytest.fixture(scope="module")
def server():
    peer = Secantus()
    try:
        peer.start()
        yield peer
    finally:
        peer.cleanup()


def uri(server, userinfo: str = "", path: str = "/test", query: str = "") -> str:
    return f"mongodb://{userinfo + '@' if userinfo else ''}127.0.0.1:{server.port}{path}{query}"


def config(connection: str, command: str = '{"ping": 1}', json_path: str = "", expected: str = "") -> dict:
    return {"connectionString": connection, "command": command, "jsonPath": json_path, "expectedValue": expected}


async def run(cfg: dict | str, timeout: int = 3):
    """The check through the handler's own path (registry, budget, config errors); (result, seconds)."""
    monitor = Monitor(id="m", name="mongo", type="mongodb", timeout=timeout,
                      config=cfg if isinstance(cfg, str) else json.dumps(cfg))
    started = time.monotonic()
    result = await healthcheck.run_check(monitor, None, timeout - healthcheck.check_margin(timeout))
    return result, time.monotonic() - started


def alice(server, **extra) -> str:
    return uri(server, f"alice:{ALICE_PW}", **extra)


# --------------------------------------------------------------------------------------------------
# UP paths, the web form's defaults and the Go tests' config

async def test_default_web_form_config_is_up(server):
    """The web form's document with only host:port changed; its user `username` is in admin."""
    cfg = {"connectionString": f"mongodb://username:password@127.0.0.1:{server.port}/database",
           "command": "{\"ping\": 1}", "jsonPath": "$", "expectedValue": ""}
    result, _ = await run(cfg)
    assert (result.status, result.message) == \
        (UP, "Command executed successfully and the jsonata expression produces a result")
    assert set(result.timings) == {"select", "connect", "query"}
    assert result.start_ns < result.end_ns


async def test_go_test_config_ok_is_1(server):
    result, _ = await run(config(uri(server), '{"ping": 1}', "$.ok", "1"))
    assert (result.status, result.message) == (UP, "Command executed successfully and expected value was found")


async def test_empty_command_pings_and_empty_path_checks_only_ok(server):
    result, _ = await run(config(uri(server), ""))
    assert (result.status, result.message) == (UP, "Command executed successfully")


async def test_build_info_version_mismatch_shows_the_server_version(server):
    import pymongo

    with pymongo.MongoClient("127.0.0.1", server.port) as client:
        version = client.admin.command("buildInfo")["version"]
    result, _ = await run(config(uri(server), '{"buildInfo": 1}', "$.version", "0"))
    assert (result.status, result.message) == \
        (DOWN, f"Query executed, but value is not equal to expected value, value was: [{version}]")
    result, _ = await run(config(uri(server), '{"buildInfo": 1}', "$.version", version))
    assert result.status == UP


# --------------------------------------------------------------------------------------------------
# jsonPath and expectedValue on a reply: findAndModify returns the stored document under `value`

FIND = '{"findAndModify": "values", "query": {"_id": "types"}, "update": {"$set": {"seen": true}}}'


@pytest.mark.parametrize("path, shown", [
    ("$.value.int32", "1"), ("value.int64", "1"), ("$.value.double", "1"), ("$.value.text", "1"),
    ("$.value.big", "1.5e+06"), ("$.value.small", "1e-05"), ("$.value.flag", "true"),
    ("$.value.list", "[1 a map[k:2.5]]"), ("$.value.doc", "map[a:map[c:deep] b:2]"), ("$..value.doc.a.c", "deep"),
    ("$.value.oid", 'ObjectID("65a1b2c3d4e5f60718293a4b")'), ("$.value.when", "1704164645678"),
    ("$.value.ts", "{1700000000 7}"), ("$.value.bin", "{0 [1 2 255]}"),
    ("$.value.uuid", "{4 [" + " ".join(["0"] * 16) + "]}"), ("$.value.dec", "12.50"),
    ("$.value.re", '{"pattern": "^a.c$", "options": "im"}'), ("$.lastErrorObject.updatedExisting", "true"),
])
async def test_values_print_as_go_prints_them(server, path, shown):
    result, _ = await run(config(alice(server), FIND, path, "no such value"))
    assert (result.status, result.message) == \
        (DOWN, f"Query executed, but value is not equal to expected value, value was: [{shown}]")


@pytest.mark.parametrize("path, expected", [
    ("$.value.int32", "1"), ("$.value.int32", "1.0"), ("$.value.double", "1"), ("$.value.text", "1"),
    ("$.value.int64", "1e0"), ("$.value.big", "1500000"), ("$.value.flag", "true"), ("$.ok", "1"),
    ("$.value.doc.a.c", "deep"),
])
async def test_loose_equality(server, path, expected):
    result, _ = await run(config(alice(server), FIND, path, expected))
    assert (result.status, result.message) == (UP, "Command executed successfully and expected value was found")


@pytest.mark.parametrize("path, message", [
    ("$.nope", "JSON path evaluation failed: field 'nope' not found"),
    ("$.value.doc.zz", "JSON path evaluation failed: field 'zz' not found"),
    ("$.value.list.0", "JSON path evaluation failed: cannot access field '0' on non-object type"),
    ("$.value.text.length", "JSON path evaluation failed: cannot access field 'length' on non-object type"),
    ("$.value.nothing", "Queried value not found"),
])
async def test_path_failures(server, path, message):
    result, _ = await run(config(alice(server), FIND, path, "1"))
    assert (result.status, result.message) == (DOWN, message)


async def test_path_without_expected_value_only_needs_a_value(server):
    result, _ = await run(config(alice(server), FIND, "$.value.doc"))
    assert (result.status, result.message) == \
        (UP, "Command executed successfully and the jsonata expression produces a result")


# --------------------------------------------------------------------------------------------------
# The same rules on documents built here (no server)

@pytest.mark.parametrize("value, text", [
    (1.0, "1"), (1.5, "1.5"), (123456.0, "123456"), (1e6, "1e+06"), (1234567.0, "1.234567e+06"), (0.0001, "0.0001"),
    (0.00001, "1e-05"), (-2.5e-7, "-2.5e-07"), (1e21, "1e+21"), (-0.0, "-0"), (float("nan"), "NaN"),
    (float("inf"), "+Inf"), (None, "<nil>"), (False, "false"), ({"z": [1, None], "a": {}}, "map[a:map[] z:[1 <nil>]]"),
])
def test_go_value_texts(value, text):
    assert mongodb.go_value(value) == text


def test_go_value_of_other_bson_types():
    from bson import Code, DBRef, MaxKey, MinKey, ObjectId

    assert mongodb.go_value(Code("f()")) == "f()"
    assert mongodb.go_value(Code("f(x)", {"x": 1})) == '{"code": "f(x)", "scope": map[x:1]}'
    assert mongodb.go_value([MinKey(), MaxKey()]) == "[{} {}]"
    ref = DBRef("c", ObjectId("65a1b2c3d4e5f60718293a4b"), "d")
    assert mongodb.go_value(ref) == 'map[$db:d $id:ObjectID("65a1b2c3d4e5f60718293a4b") $ref:c]'
    assert mongodb.evaluate_path({"r": ref}, "$.r.$db") == "d"


@pytest.mark.parametrize("reply, path, expected, verdict", [
    ({"ok": True}, "", "", (DOWN, "MongoDB command failed")),
    ({"value": 1}, "", "", (DOWN, "MongoDB command failed")),
    ({"ok": "1"}, "", "", (UP, "Command executed successfully")),
    ({"ok": 1, "a.b": {"c": 2}}, "a\\.b.c", "2", (UP, "Command executed successfully and expected value was found")),
    ({"ok": 1, "a": {"b": 2}}, "$..a..b.", "2.0", (UP, "Command executed successfully and expected value was found")),
    ({"ok": 1, "a": [1]}, "$.a", "[1]", (UP, "Command executed successfully and expected value was found")),
    ({"ok": 1, "a": "x"}, "$.a", "0x1p0", (DOWN, "Query executed, but value is not equal to expected value, value "
                                                 "was: [x]")),
    ({"ok": 1, "n": 16.0}, "$.n", "0x1p4", (UP, "Command executed successfully and expected value was found")),
    ({"ok": 1, "n": 1e400}, "$.n", "1e400", (DOWN, "Query executed, but value is not equal to expected value, value "
                                                   "was: [+Inf]")),
])
def test_judge(reply, path, expected, verdict):
    assert mongodb.judge(reply, path, expected) == verdict


def test_command_keeps_key_order_and_makes_numbers_doubles():
    command = mongodb.parse_command('{"find": "c", "filter": {"n": 1, "m": [2, {"k": -3}]}, "limit": 1, "x": true}')
    assert list(command) == ["find", "filter", "limit", "x"]
    assert command == {"find": "c", "filter": {"n": 1.0, "m": [2.0, {"k": -3.0}]}, "limit": 1.0, "x": True}
    assert type(command["limit"]) is float and type(command["filter"]["m"][1]["k"]) is float


def test_enhanced_query_is_sorted_with_auth_source_and_go_drops_bad_pairs():
    url, query = mongodb._enhance("mongodb://u:p%40ss@h1:1,h2:2/db?w=1&replicaSet=rs;x=1&appName=a%zz&b=%2B+")
    assert (url.username, url.password, url.raw_host, url.path) == ("u", "p@ss", "h1:1,h2:2", "/db")
    assert sorted(query) == [b"authSource", b"b", b"w"] and query[b"b"] == [b"+ "]
    _, query = mongodb._enhance("mongodb://u:p@h/db?authSource=test")
    assert query == {b"authSource": [b"test"]}


# --------------------------------------------------------------------------------------------------
# The command: key order kept, numbers as doubles, bad JSON

async def test_command_keys_keep_their_order(server):
    result, _ = await run(config(alice(server), '{"find": "values", "filter": {"_id": "types"}}', "$.ok", "1"))
    assert result.status == UP, result.message
    result, _ = await run(config(alice(server), '{"filter": {"_id": "types"}, "find": "values"}', "$.ok", "1"))
    assert (result.status, result.message) == (DOWN, FAILED + "(CommandNotFound) no such command: 'filter'")


async def test_numbers_in_the_command_are_sent_as_doubles(server):
    insert = '{"insert": "numbers", "documents": [{"_id": "n", "v": 1}]}'
    result, _ = await run(config(alice(server), insert, "$.n", "1"))
    assert result.status == UP, result.message
    count = '{"count": "numbers", "query": {"_id": "n", "v": {"$type": "%s"}}}'
    result, _ = await run(config(alice(server), count % "double", "$.n", "1"))
    assert result.status == UP, result.message
    result, _ = await run(config(alice(server), count % "int", "$.n", "0"))
    assert result.status == UP, result.message


@pytest.mark.parametrize("command, error", [
    ("invalid json", "invalid character 'i' looking for beginning of value"),
    ('{"ping": 1', "unexpected end of JSON input"),
    ('{"ping": 1} x', "invalid character 'x' after top-level value"),
    ("[1]", "json: cannot unmarshal array into Go value of type primitive.M"),
    ('"ping"', "json: cannot unmarshal string into Go value of type primitive.M"),
    ('{"ping": 1e400}', "json: cannot unmarshal number 1e400 into Go value of type float64"),
    ("{'ping': 1}", "invalid character '\\'' looking for beginning of object key string"),
])
async def test_bad_command_json(server, command, error):
    result, _ = await run(config(uri(server), command))
    assert (result.status, result.message) == (DOWN, f"invalid MongoDB command JSON: {error}")
    assert result.start_ns <= result.end_ns and not result.timings  # nothing was sent


@pytest.mark.parametrize("document, message", [
    ("", "failed to parse config: EOF"),
    ("{", "failed to parse config: unexpected end of JSON input"),
    ('{"connectionString": "mongodb://h/db", "foo": 1}', 'failed to parse config: json: unknown field "foo"'),
    ('{"command": {"ping": 1}}', "failed to parse config: json: cannot unmarshal object into Go struct field "
                                 "MongoDBConfig.command of type string"),
])
async def test_config_errors(document, message):
    result, _ = await run(document)
    assert (result.status, result.message, result.start_ns) == (DOWN, message, result.end_ns)


async def test_command_the_driver_cannot_encode(server):
    result, _ = await run(config(uri(server), '{"ping": 1, "a\\u0000b": 1}'))
    assert (result.status, result.message) == (DOWN, FAILED + "Invalid document: Key names must not contain the "
                                                          "NULL byte")


async def test_empty_command_document(server):
    for command in ("{}", "null"):
        result, _ = await run(config(uri(server), command))
        assert (result.status, result.message) == (DOWN, FAILED + "the command document is empty")


# --------------------------------------------------------------------------------------------------
# Authentication and ok: 0 replies

async def test_wrong_password_is_an_auth_error_without_the_password(server):
    result, _ = await run(config(uri(server, "alice:Wrong-pw-5e6f7a")))
    assert result.status == DOWN
    assert result.message == (FAILED + "connection() error occurred during connection handshake: auth error: "
                              'unable to authenticate using mechanism "SCRAM-SHA-256": (AuthenticationFailed) '
                              "authentication failed")
    assert "Wrong-pw-5e6f7a" not in result.message


async def test_user_without_auth_source_authenticates_against_admin(server):
    assert (await run(config(uri(server, f"alice:{ALICE_PW}"), '{"serverStatus": 1}')))[0].status == UP
    result, _ = await run(config(uri(server, f"bob:{BOB_PW}")))  # bob is defined in `test`, not in admin
    assert result.status == DOWN and "(AuthenticationFailed)" in result.message
    result, _ = await run(config(uri(server, f"bob:{BOB_PW}", query="?authSource=test")))
    assert result.status == UP, result.message


@pytest.mark.parametrize("command, error", [
    ('{"serverStatus": 1}', "(Unauthorized) command serverStatus requires authentication"),
    ('{"noSuchCommand": 1}', "(CommandNotFound) no such command: 'noSuchCommand'"),
])
async def test_ok_0_replies(server, command, error):
    result, _ = await run(config(uri(server), command, "$.ok", "1"))
    assert (result.status, result.message) == (DOWN, FAILED + error)
    assert result.timings.get("query", -1) >= 0


# --------------------------------------------------------------------------------------------------
# Connection strings

@pytest.mark.parametrize("connection, message", [
    ("mongodb://127.0.0.1:{port}", "failed to extract database name: database name not found in connection string"),
    ("mongodb://127.0.0.1:{port}/?connectTimeoutMS=9",
     "failed to extract database name: database name not found in connection string"),
    ("mongodb://alice:{pw}@127.0.0.1:{port}", "failed to connect to MongoDB: error parsing uri: must have a / before "
     "the query ?"),
    ("http://127.0.0.1:{port}/test", 'failed to connect to MongoDB: error parsing uri: scheme must be "mongodb" or '
     '"mongodb+srv"'),
    ("localhost:{port}/test", 'failed to connect to MongoDB: error parsing uri: scheme must be "mongodb" or '
     '"mongodb+srv"'),
    ("127.0.0.1:{port}/test", 'failed to enhance connection string: invalid connection string format: parse '
     '"127.0.0.1:{port}/test": first path segment in URL cannot contain colon'),
    ("mongodb://alice:p@ss-{pw}@127.0.0.1:{port}/test", 'failed to enhance connection string: invalid connection '
     'string format: parse "mongodb://alice:xxxxx@127.0.0.1:{port}/test": net/url: invalid userinfo'),
    ("mongodb://alice:pa/ss-{pw}@127.0.0.1:{port}/test", 'failed to enhance connection string: invalid connection '
     'string format: parse "mongodb://alice:xxxxx@127.0.0.1:{port}/test": invalid port ":pa" after host'),
    ("mongodb://bad host:{port}/test", "failed to enhance connection string: invalid connection string format: "
     'parse "mongodb://bad host:{port}/test": invalid character " " in host name'),
])
async def test_connection_string_errors(server, connection, message):
    connection = connection.format(port=server.port, pw=ALICE_PW)
    result, _ = await run(config(connection))
    assert (result.status, result.message) == (DOWN, "MongoDB command failed: " + message.format(port=server.port))
    assert ALICE_PW not in result.message and not result.timings  # nothing was sent


async def test_driver_option_errors_are_uri_errors(server):
    result, _ = await run(config(uri(server, query="?tlsCertificateKeyFilePassword=Key-pw-1a2b&maxPoolSize=-3")))
    assert result.status == DOWN
    assert result.message.startswith("MongoDB command failed: failed to connect to MongoDB: error parsing uri: ")
    assert "Key-pw-1a2b" not in result.message


async def test_tls_file_that_cannot_be_read(server):
    result, _ = await run(config(uri(server, query="?tls=true&tlsCAFile=/nonexistent/ca.pem")))
    assert (result.status, result.message) == (DOWN, "MongoDB command failed: failed to connect to MongoDB: open "
                                               "/nonexistent/ca.pem: no such file or directory")


async def test_database_names_the_driver_refuses(server):
    result, _ = await run(config(uri(server, path="/a.b")))
    assert (result.status, result.message) == (DOWN, FAILED + "database names cannot contain the character '.'")


# --------------------------------------------------------------------------------------------------
# Targets that refuse or never answer

async def test_silent_port_ends_down_within_the_timeout(open_port):
    result, seconds = await run(config(f"mongodb://127.0.0.1:{open_port}/test"), timeout=2)
    assert result.status == DOWN and seconds < 2 + MARGIN
    assert result.message == (FAILED + "server selection error: context deadline exceeded, current topology: "
                              f"{{ Type: Unknown, Servers: [{{ Addr: 127.0.0.1:{open_port}, Type: Unknown }}, ] }}")


async def test_refused_port_names_the_dial_error():
    port = free_port()
    result, seconds = await run(config(f"mongodb://127.0.0.1:{port}/test"), timeout=2)
    assert result.status == DOWN and seconds < 2 + MARGIN
    assert result.message.startswith(FAILED + "server selection error: context deadline exceeded")
    assert f"Last error: dial tcp 127.0.0.1:{port}: connect: connection refused" in result.message


async def test_command_that_never_returns_ends_down_within_the_timeout(server):
    """The server answers the handshake, then holds the reply to dbStats (a failCommand fail point)."""
    import pymongo

    with pymongo.MongoClient(alice(server, query="?authSource=admin")) as admin:
        admin.admin.command({"configureFailPoint": "failCommand", "mode": "alwaysOn",
                             "data": {"failCommands": ["dbStats"], "blockConnection": True, "blockTimeMS": 8000}})
        try:
            admins = {c.laddr for c in connections_to(server.port)}
            result, seconds = await run(config(alice(server), '{"dbStats": 1}'), timeout=2)
            await asyncio.sleep(0.05)
            assert {c.laddr for c in connections_to(server.port)} == admins  # the check's are all closed
        finally:
            admin.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    assert (result.status, result.message) == (DOWN, FAILED + "context deadline exceeded")
    assert seconds < 2 + MARGIN and {"select", "connect", "query"} <= set(result.timings)


async def test_lower_server_selection_timeout_of_the_uri_ends_selection_first():
    port = free_port()
    result, seconds = await run(config(f"mongodb://127.0.0.1:{port}/test?serverSelectionTimeoutMS=300"), timeout=3)
    assert result.message.startswith(FAILED + "server selection error: server selection timeout")
    assert seconds < 3 + MARGIN


# --------------------------------------------------------------------------------------------------
# mongodb+srv through a private DNS server

@pytest.fixture
def srv_dns(server):
    """SRV and TXT records for `cluster.0.0.1`: its SRV target is the name `127.0.0.1.` (it shares the
    parent labels `0.0.1`, as drivers require, and needs no resolver to connect)."""
    import dns.asyncresolver

    dns_server = SrvDns({("_mongodb._tcp.cluster.0.0.1", "SRV"): [f"0 0 {server.port} 127.0.0.1."],
                         ("cluster.0.0.1", "TXT"): ['"authSource=admin"']})
    old = dns.asyncresolver.default_resolver
    dns.asyncresolver.default_resolver = dns_server.resolver()
    yield dns_server
    dns.asyncresolver.default_resolver = old
    dns_server.close()


async def test_srv_connection_string_is_up(srv_dns):
    result, _ = await run(config(f"mongodb+srv://alice:{ALICE_PW}@cluster.0.0.1/test?tls=false", '{"serverStatus": 1}',
                                 "$.ok", "1"))
    assert (result.status, result.message) == (UP, "Command executed successfully and expected value was found")
    assert "resolve" in result.timings
    assert "_mongodb._tcp.cluster.0.0.1. SRV" in srv_dns.queries


async def test_srv_lookup_failure(srv_dns):
    result, seconds = await run(config("mongodb+srv://cluster.invalid/test"))
    assert (result.status, result.message) == (DOWN, "MongoDB command failed: failed to connect to MongoDB: error "
                                               "parsing uri: see https://pkg.go.dev/go.mongodb.org/mongo-driver/mongo"
                                               "#hdr-Potential_DNS_Issues: lookup _mongodb._tcp.cluster.invalid on "
                                               f"127.0.0.1:{srv_dns.port}: no such host")
    assert seconds < 3 + MARGIN and "_mongodb._tcp.cluster.invalid. SRV" in srv_dns.queries


async def test_srv_lookup_without_answer_ends_within_the_timeout():
    import dns.asyncresolver

    silent = SrvDns({}, silent=True)
    old = dns.asyncresolver.default_resolver
    dns.asyncresolver.default_resolver = silent.resolver()
    try:
        result, seconds = await run(config("mongodb+srv://cluster.0.0.1/test"), timeout=2)
    finally:
        dns.asyncresolver.default_resolver = old
        silent.close()
    assert result.status == DOWN and seconds < 2 + MARGIN
    assert result.message.endswith(f"lookup _mongodb._tcp.cluster.0.0.1 on 127.0.0.1:{silent.port}: i/o timeout")


# --------------------------------------------------------------------------------------------------
# TLS

@pytest.fixture(scope="module")
def tls_server():
    """A server with a certificate from a test CA; the key lives in the server's directory, removed after."""
    peer = Secantus(auth=False)
    try:
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        files = [os.path.join(peer.dir, name) for name in ("cert.pem", "key.pem", "ca.pem")]
        leaf.cert_chain_pems[0].write_to_path(files[0])
        leaf.private_key_pem.write_to_path(files[1])
        ca.cert_pem.write_to_path(files[2])
        peer.tls = (files[0], files[1])
        peer.start()
        yield peer, files[2]
    finally:
        peer.cleanup()


async def test_tls_verified_with_the_ca(tls_server):
    peer, ca_file = tls_server
    result, _ = await run(config(f"mongodb://127.0.0.1:{peer.port}/test?tls=true&tlsCAFile={ca_file}"))
    assert (result.status, result.message) == (UP, "Command executed successfully")


async def test_tls_unknown_authority_and_insecure(tls_server):
    peer, _ = tls_server
    result, _ = await run(config(f"mongodb://127.0.0.1:{peer.port}/test?tls=true"), timeout=2)
    assert result.status == DOWN
    assert "Last error: tls: failed to verify certificate: x509: certificate signed by unknown authority" \
        in result.message
    result, _ = await run(config(f"mongodb://127.0.0.1:{peer.port}/test?tls=true&tlsInsecure=true"))
    assert result.status == UP, result.message


# --------------------------------------------------------------------------------------------------
# Nothing outlives a check

async def test_no_connection_or_task_outlives_its_check(server, open_port):
    tasks_before = len(asyncio.all_tasks())
    earlier = {c.laddr for c in connections_to(server.port)}  # an earlier test's sync client may still be closing
    checks = [config(alice(server), FIND, "$.ok", "1"), config(uri(server, "alice:Wrong-pw-0")),
              config(uri(server), '{"serverStatus": 1}'), config(f"mongodb://127.0.0.1:{open_port}/test")]
    results = await asyncio.gather(*(run(cfg, timeout=2) for cfg in checks))
    assert [r.status for r, _ in results] == [UP, DOWN, DOWN, DOWN]
    # A check cancelled while it waits for a server (worker shutdown) closes its client too.
    pending = asyncio.create_task(run(config(f"mongodb://127.0.0.1:{open_port}/test"), timeout=3))
    await asyncio.sleep(0.3)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    await asyncio.sleep(0.05)
    assert {c.laddr for c in connections_to(server.port)} <= earlier and connections_to(open_port) == []
    assert len(asyncio.all_tasks()) == tasks_before


# --------------------------------------------------------------------------------------------------
# 100 tasks through Redis

def mixed_case(i: int, server, silent_port: int) -> tuple[dict, int, str, int]:
    """(config, status, message, timeout) of task i."""
    kind = i % 6
    if kind == 0:
        return config(alice(server), FIND, "$.value.doc.a.c", "deep"), UP, \
            "Command executed successfully and expected value was found", 5
    if kind == 1:
        return config(uri(server, f"bob:{BOB_PW}", query="?authSource=test")), UP, "Command executed successfully", 5
    if kind == 2:
        return config(uri(server, f"bob:{BOB_PW}x", query="?authSource=test")), DOWN, \
            (FAILED + "connection() error occurred during connection handshake: auth error: unable to authenticate "
             'using mechanism "SCRAM-SHA-256": (AuthenticationFailed) authentication failed'), 5
    if kind == 3:
        return config(uri(server), '{"serverStatus": 1}'), DOWN, \
            FAILED + "(Unauthorized) command serverStatus requires authentication", 5
    if kind == 4:
        return config(uri(server, f"alice:{ALICE_PW}", path="")), DOWN, \
            "MongoDB command failed: failed to connect to MongoDB: error parsing uri: must have a / before the query " \
            "?", 5
    return config(f"mongodb://alice:{ALICE_PW}@127.0.0.1:{silent_port}/test"), DOWN, \
        (FAILED + "server selection error: context deadline exceeded, current topology: { Type: Unknown, Servers: "
         f"[{{ Addr: 127.0.0.1:{silent_port}, Type: Unknown }}, ] }}"), 2


async def test_100_tasks_through_redis_at_concurrency_64(redis, server, open_port, caplog):
    caplog.set_level(logging.DEBUG)
    cases = {f"mongo-{i}": mixed_case(i, server, open_port) for i in range(100)}
    payloads = [healthcheck_payload("mongodb", cfg, monitor_id=monitor_id, timeout=timeout)
                for monitor_id, (cfg, _, _, timeout) in cases.items()]
    bodies = await run_through_worker(redis, payloads, timeout=60)
    for body in bodies:
        assert list(body) == INGEST_KEYS and body["monitor_type"] == "mongodb"
    results = one_result_each(bodies)
    assert sorted(results) == sorted(cases)
    for monitor_id, (cfg, status, message, _) in cases.items():
        body = results[monitor_id]
        assert (body["status"], body["message"]) == (status, message), monitor_id
        assert body["monitor_config"] == masked_config(json.dumps(cfg))  # the task's config, secrets masked
    assert_no_secret(PASSWORDS, bodies, caplog, logged=True)  # pymongo's own debug logging was on
