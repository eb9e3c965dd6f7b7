"""The `grpc-keyword` executor (alias `grpc`) against real grpcio servers started here (tests/grpc_peers.py):
the health service (SERVING, NOT_SERVING, UNKNOWN, unknown service), a custom unary service compiled by
protoc with reflection on one port and off on another, TLS with a test CA, a Unix socket, a closed port
and a listener that never answers; the .proto reader against protoc; 100 checks through Redis at
concurrency 64."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest
from conftest import free_port, require_modules

# the servers (grpcio, grpcio-health-checking, grpcio-reflection), protoc (grpcio-tools), the test CA
require_modules("grpc", "grpc_health", "grpc_reflection", "grpc_tools", "trustme", install="pip install '.[test]'")

import healthcheck  # noqa: E402
from executors import DOWN, UP, Monitor  # noqa: E402
from grpc_peers import SHOP, SHOP_PROTO, Peers, protoc_pool  # noqa: E402
from helpers import healthcheck_payload, one_result_each, run_through_worker  # noqa: E402

HEALTH_PROTO = ('syntax = "proto3";\npackage grpc.health.v1;\nservice Health {\n'
                '  rpc Check(HealthCheckRequest) returns (HealthCheckResponse);\n'
                '  rpc Watch(HealthCheckRequest) returns (stream HealthCheckResponse);\n}')  # the web form's default
ORDER = {"id": "o-1", "size": "LARGE", "sum": 12.5, "cash": True, "stock": {"a": "5"},
         "items": [{"sku": "a", "quantity": 2, "notes": [{"text": "fragile"}]}, {"sku": "b", "quantity": 3}]}
RECEIPT_HEAD = '{"orderId": "o-1", "size": "LARGE", "itemCount"...'  # the first 47 bytes and Go's "..."
SERVING = '{"status": "SERVING"}'


@pytest.fixture(scope="module")
def peers():
    servers = Peers().start()
    yield servers
    servers.stop()


@pytest.fixture
def trusted(peers, monkeypatch):
    """The test CA as the 'system' roots, as SSL_CERT_FILE does for Go and OpenSSL alike."""
    monkeypatch.setenv("SSL_CERT_FILE", peers.ca_file)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


def cfg(target: str | int, service: str = "Health", method: str = "check", body: str | dict = "",
        proto: str = 'syntax = "proto3";', **fields) -> dict:
    doc = {"grpcUrl": f"127.0.0.1:{target}" if isinstance(target, int) else target, "grpcProtobuf": proto,
           "grpcServiceName": service, "grpcMethod": method, "grpcEnableTls": False,
           "grpcBody": body if isinstance(body, str) else json.dumps(body), "keyword": "", "invertKeyword": False}
    doc.update(fields)
    return doc


async def run(config: dict | str, timeout: int = 3, monitor_type: str = "grpc-keyword"):
    """One check through the worker's registry and hard cap, as the worker runs it."""
    text = config if isinstance(config, str) else json.dumps(config)
    monitor = Monitor(id="m1", name="test", type=monitor_type, interval=60, timeout=timeout, config=text)
    return await healthcheck.run_check(monitor, None, timeout)


# --------------------------------------------------------------------------------------------------
# Health

@pytest.mark.parametrize("body, status, message", [
    ("", UP, f"gRPC call successful: {SERVING}"),
    ('{"service": ""}', UP, f"gRPC call successful: {SERVING}"),
    (json.dumps({"service": SHOP}), UP, f"gRPC call successful: {SERVING}"),
    ('{"service": "down"}', DOWN, "gRPC health check failed: NOT_SERVING"),
    ('{"service": "unsure"}', DOWN, "gRPC health check failed: UNKNOWN"),
    ('{"service": "nope"}', DOWN, 'gRPC health check failed: SERVICE_UNKNOWN: the server does not know service "nope"'),
])
async def test_health_check_status_of_whole_server_and_named_services(peers, body, status, message):
    r = await run(cfg(peers.plain_port, body=body))
    assert (r.status, r.message) == (status, message)
    assert set(r.timings) == {"connect", "call"} and r.tls_info is None


@pytest.mark.parametrize("service, method", [("grpc.health.v1.Health", "Check"), ("Health", "watch")])
async def test_health_by_full_name_and_watch_calls_check(peers, service, method):
    r = await run(cfg(peers.reflect_port, service, method, '{"service": "down"}'))
    assert (r.status, r.message) == (DOWN, "gRPC health check failed: NOT_SERVING")


async def test_default_web_form_config_is_up_against_a_serving_server_and_down_without_one(peers):
    form = {"grpcUrl": f"localhost:{peers.reflect_port}", "grpcProtobuf": HEALTH_PROTO, "grpcServiceName": "Health",
            "grpcMethod": "check", "grpcEnableTls": False, "grpcBody": '{\n  "key": "value"\n}', "keyword": "",
            "invertKeyword": False}
    r = await run(form)
    assert (r.status, r.message) == (UP, f"gRPC call successful: {SERVING}")
    assert set(r.timings) == {"dns", "connect", "call"}
    closed = free_port()
    started = time.monotonic()
    r = await run(dict(form, grpcUrl=f"localhost:{closed}"))
    assert r.status == DOWN and time.monotonic() - started < 3.5
    assert r.message.startswith("gRPC call failed: UNAVAILABLE: dial tcp ")  # ::1 or 127.0.0.1, as resolved
    assert r.message.endswith(f":{closed}: connect: connection refused")


async def test_go_test_suite_health_config_now_judges_the_real_answer(peers):
    """Go's tests expect `keyword [OK] is found` from a mock answer; the real answer has no OK in it."""
    go = {"grpcUrl": f"localhost:{peers.plain_port}", "grpcProtobuf": 'syntax = "proto3";', "grpcServiceName": "Health",
          "grpcMethod": "check", "grpcEnableTls": False, "grpcBody": '{"key": "value"}', "keyword": "OK",
          "invertKeyword": False}
    r = await run(go, monitor_type="grpc")
    assert (r.status, r.message) == (DOWN, f"but keyword [OK] is not in [{SERVING}]")


@pytest.mark.parametrize("keyword, invert, status, message", [
    ("SERVING", False, UP, f"{SERVING}, keyword [SERVING] is found"),
    ("FAIL", False, DOWN, f"but keyword [FAIL] is not in [{SERVING}]"),
    ("FAIL", True, UP, f"{SERVING}, keyword [FAIL] not found"),
    ("SERVING", True, DOWN, f"but keyword [SERVING] is present in [{SERVING}]"),
])
async def test_keyword_found_absent_and_inverted_on_the_health_answer(peers, keyword, invert, status, message):
    r = await run(cfg(peers.plain_port, keyword=keyword, invertKeyword=invert))
    assert (r.status, r.message) == (status, message)


async def test_not_serving_stays_down_whatever_the_keyword(peers):
    r = await run(cfg(peers.plain_port, body='{"service": "down"}', keyword="NOT_SERVING"))
    assert (r.status, r.message) == (DOWN, "gRPC health check failed: NOT_SERVING")


async def test_unix_socket_and_resolver_schemes(peers):
    r = await run(cfg(f"unix:{peers.unix_path}"))
    assert (r.status, r.message) == (UP, f"gRPC call successful: {SERVING}")
    r = await run(cfg(f"dns:///localhost:{peers.plain_port}", body='{"service": "down"}'))
    assert (r.status, r.message) == (DOWN, "gRPC health check failed: NOT_SERVING")
    assert "dns" in r.timings


# --------------------------------------------------------------------------------------------------
# A custom unary service: reflection, or the .proto text

async def test_custom_method_with_types_from_reflection(peers):
    r = await run(cfg(peers.reflect_port, "Shop", "Place", ORDER))  # the proto text is only `syntax = "proto3";`
    assert (r.status, r.message) == (UP, f"gRPC call successful: {RECEIPT_HEAD}")
    assert set(r.timings) == {"connect", "reflection", "call"}


async def test_custom_method_with_types_from_the_proto_text_when_reflection_is_off(peers):
    r = await run(cfg(peers.plain_port, "Shop", "Place", ORDER, proto=SHOP_PROTO))
    assert (r.status, r.message) == (UP, f"gRPC call successful: {RECEIPT_HEAD}")
    r = await run(cfg(peers.plain_port, f"{SHOP}", "ping", "", proto=SHOP_PROTO))  # full name, method by case
    assert (r.status, r.message) == (UP, 'gRPC call successful: {"message": "pong"}')


@pytest.mark.parametrize("port", ["reflect_port", "plain_port"])
@pytest.mark.parametrize("keyword, invert, status, message", [
    ("fragile", False, UP, f"{RECEIPT_HEAD}, keyword [fragile] is found"),  # nested repeated message, in the echo
    ('"sum": 12.5', False, UP, f'{RECEIPT_HEAD}, keyword ["sum": 12.5] is found'),  # json_name
    ('"skus": ["a", "b"]', False, UP, f'{RECEIPT_HEAD}, keyword ["skus": ["a", "b"]] is found'),
    ("SMALL", False, DOWN, f"but keyword [SMALL] is not in [{RECEIPT_HEAD}]"),
    ("SMALL", True, UP, f"{RECEIPT_HEAD}, keyword [SMALL] not found"),
    ('"size": "LARGE"', True, DOWN, f'but keyword ["size": "LARGE"] is present in [{RECEIPT_HEAD}]'),
])
async def test_keyword_rules_on_the_real_answer(peers, port, keyword, invert, status, message):
    r = await run(cfg(getattr(peers, port), "Shop", "Place", ORDER, proto=SHOP_PROTO, keyword=keyword,
                      invertKeyword=invert))
    assert (r.status, r.message) == (status, message)


async def test_unknown_service_and_method(peers):
    r = await run(cfg(peers.plain_port, "Shop", "Place", ORDER))
    assert (r.status, r.message) == (DOWN, "Error in send gRPC: service Shop is not defined in grpcProtobuf "
                                           "(the server offers no reflection)")
    r = await run(cfg(peers.reflect_port, "Shop", "Refund", ORDER))
    assert (r.status, r.message) == (DOWN, f"Error in send gRPC: service {SHOP} has no method Refund "
                                           "(it has: Place, Ping, Fail, Sleep, Big, Watch)")
    r = await run(cfg(peers.reflect_port, "Shop", "Watch", ORDER))
    assert (r.status, r.message) == (DOWN, f"Error in send gRPC: method {SHOP}.Watch streams; only unary "
                                           "methods can be checked")


async def test_method_the_server_does_not_implement_is_unimplemented(peers):
    proto = SHOP_PROTO.replace("rpc Place(Order) returns (Receipt);", "rpc Place(Order) returns (Receipt);\n"
                                                                      "  rpc Refund(Order) returns (Receipt);")
    r = await run(cfg(peers.plain_port, "Shop", "Refund", ORDER, proto=proto))
    assert (r.status, r.message) == (DOWN, "gRPC call failed: UNIMPLEMENTED: Method not found!")


async def test_error_status_from_the_server(peers):
    r = await run(cfg(peers.reflect_port, "Shop", "Fail", {"code": "PERMISSION_DENIED", "detail": "no entry"}))
    assert (r.status, r.message) == (DOWN, "gRPC call failed: PERMISSION_DENIED: no entry")


async def test_too_large_answer_is_refused(peers):
    r = await run(cfg(peers.reflect_port, "Shop", "Big", {"size": 5 << 20}))
    assert (r.status, r.message) == (DOWN, "gRPC call failed: RESOURCE_EXHAUSTED: grpc: received message larger "
                                           "than max (5242885 vs. 4194304)")


@pytest.mark.parametrize("body, detail", [
    ('{"id": 5}', "Failed to parse id field: "),
    ("{oops", "invalid character 'o' looking for beginning of object key string"),
    ('["a"]', "a JSON object is needed, not array"),
])
async def test_body_that_does_not_fit_the_request_type(peers, body, detail):
    r = await run(cfg(peers.reflect_port, "Shop", "Place", body))
    assert r.status == DOWN
    assert r.message.startswith(f"Error in send gRPC: failed to unmarshal request body: {detail}")


async def test_body_keys_the_request_does_not_have_are_ignored(peers):
    r = await run(cfg(peers.reflect_port, "Shop", "Place", dict(ORDER, key="value")))
    assert (r.status, r.message) == (UP, f"gRPC call successful: {RECEIPT_HEAD}")


@pytest.mark.parametrize("proto, detail", [
    ('syntax = "proto3";\nmessage {', "line 2:9: mismatched input '{'"),
    ('syntax = "proto3"; package demo.v1; service Shop { rpc Place(Missing) returns (Missing); }',
     "couldn't resolve name 'Missing'"),
    ('syntax = "proto3"; package demo.v1; import "google/api/annotations.proto"; message M { google.api.Http h = 1; }'
     ' service Shop { rpc Place(M) returns (M); }',
     "couldn't resolve name 'google.api.Http' (only google/protobuf/*.proto imports are available, not "
     '"google/api/annotations.proto")'),
])
async def test_proto_text_that_cannot_be_read(peers, proto, detail):
    r = await run(cfg(peers.plain_port, "Shop", "Place", ORDER, proto=proto))
    assert (r.status, r.message) == (DOWN, "Error in send gRPC: cannot read grpcProtobuf (the server offers no "
                                           f"reflection): {detail}")


# --------------------------------------------------------------------------------------------------
# TLS

async def test_tls_verified_with_system_roots_fills_tls_info(peers, trusted):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    r = await run(cfg(f"localhost:{peers.tls_port}", grpcEnableTls=True))
    assert (r.status, r.message) == (UP, f"gRPC call successful: {SERVING}")
    assert set(r.timings) == {"dns", "connect", "tls", "call"}
    leaf = x509.load_pem_x509_certificate(peers.leaf_pem)
    info = r.tls_info
    assert info["valid"] is True
    assert info["certInfo"]["fingerprint256"] == ":".join(f"{b:02X}" for b in leaf.fingerprint(hashes.SHA256()))
    assert info["certInfo"]["validFor"] == ["localhost", "127.0.0.1"]
    assert info["certInfo"]["certType"] == "server"


async def test_tls_with_an_unknown_ca_is_down_and_reports_the_certificate(peers, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", os.devnull)  # no system root trusts the test CA
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    r = await run(cfg(peers.tls_port, grpcEnableTls=True))
    assert (r.status, r.message) == (DOWN, "gRPC call failed: UNAVAILABLE: authentication handshake failed: tls: "
                                           "failed to verify certificate: x509: certificate signed by unknown "
                                           "authority")
    assert r.tls_info["valid"] is False and r.tls_info["certInfo"]["validFor"] == ["localhost", "127.0.0.1"]


async def test_tls_to_a_plaintext_port_and_plaintext_to_a_tls_port(peers, trusted):
    r = await run(cfg(peers.plain_port, grpcEnableTls=True))
    assert (r.status, r.message) == (DOWN, "gRPC call failed: UNAVAILABLE: authentication handshake failed: tls: "
                                           "first record does not look like a TLS handshake")
    r = await run(cfg(peers.tls_port))
    assert (r.status, r.message) == (DOWN, "gRPC call failed: UNAVAILABLE: the server closed the connection")


async def test_tls_connections_are_closed_when_the_check_ends(peers, trusted):
    """asyncio would keep a TLS socket up to 30 s waiting for the server's close_notify (grpcio sends none)."""
    import psutil

    for _ in range(5):
        r = await run(cfg(f"localhost:{peers.tls_port}", grpcEnableTls=True))
        assert r.status == UP
    await asyncio.sleep(0.1)  # abort() closes the socket on the loop's next turn
    open_to_tls = [c for c in psutil.Process().net_connections(kind="tcp")
                   if c.raddr and c.raddr.port == peers.tls_port and c.status == psutil.CONN_ESTABLISHED]
    assert open_to_tls == []


# --------------------------------------------------------------------------------------------------
# Unreachable and silent servers end within the timeout

async def test_closed_port_is_down_at_once(peers):
    port = free_port()
    started = time.monotonic()
    r = await run(cfg(port), timeout=1)
    assert (r.status, r.message) == (DOWN, f"gRPC call failed: UNAVAILABLE: dial tcp 127.0.0.1:{port}: connect: "
                                           "connection refused")
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("tls, message", [
    (False, "gRPC call failed: DEADLINE_EXCEEDED: context deadline exceeded"),
    (True, "gRPC call failed: DEADLINE_EXCEEDED: authentication handshake failed: context deadline exceeded"),
])
async def test_a_server_that_never_answers_ends_within_the_timeout(peers, tls, message):
    started = time.monotonic()
    r = await run(cfg(peers.silent_port, grpcEnableTls=tls), timeout=1)
    assert (r.status, r.message) == (DOWN, message)
    assert time.monotonic() - started < 1.5 and r.ping_ms < 1500


async def test_a_slow_method_ends_within_the_timeout(peers):
    started = time.monotonic()
    r = await run(cfg(peers.reflect_port, "Shop", "Sleep", {"size": 3000}), timeout=1)
    assert r.status == DOWN and r.message.startswith("gRPC call failed: DEADLINE_EXCEEDED")
    assert time.monotonic() - started < 1.5


async def test_ping_ms_runs_from_the_dial_to_the_answer(peers):
    before = time.time_ns()
    r = await run(cfg(peers.reflect_port, "Shop", "Place", ORDER))
    after = time.time_ns()
    assert r.status == UP and before <= r.start_ns <= r.end_ns <= after
    assert set(r.timings) == {"connect", "reflection", "call"}


# --------------------------------------------------------------------------------------------------
# Config and target errors

@pytest.mark.parametrize("config, message", [
    ('{"grpcUrl": 5}', "invalid config: failed to parse config: json: cannot unmarshal number into Go struct field "
                       "GRPCConfig.grpcUrl of type string"),
    ('{"grpcUrl": "x:1", "foo": 1}', 'invalid config: failed to parse config: json: unknown field "foo"'),
    ("", "invalid config: failed to parse config: EOF"),
    ("{}", "failed to create gRPC client: empty target"),
    ('{"grpcUrl": "http://127.0.0.1:50051"}',
     'failed to create gRPC client: unsupported scheme "http" in target "http://127.0.0.1:50051" (use host:port)'),
    ('{"grpcUrl": "127.0.0.1:http"}', 'failed to create gRPC client: invalid port "http" in target "127.0.0.1:http"'),
])
async def test_config_and_target_errors(config, message):
    r = await run(config)
    assert (r.status, r.message) == (DOWN, message)
    assert r.start_ns == r.end_ns


# --------------------------------------------------------------------------------------------------
# The .proto reader against protoc

READER_PROTO = SHOP_PROTO + """
message Catalog {
  message Shelf {
    enum Kind { option allow_alias = true; KIND_UNSPECIFIED = 0; COLD = 1; CHILLED = 1; }
    Kind kind = 1;
    map<string, Order.Item> items = 2;
    repeated int32 slots = 3 [packed = false];
  }
  map<int32, Shelf> shelves = 1;
  optional string _name = 2;
  optional string name = 3;
  .demo.v1.Order.Size default_size = 4;
  repeated Order.Item.Note notes = 5;
  bytes picture = 6;
  sfixed64 revision = 7;
}
"""


def _describe(pool, file_name: str) -> dict:
    """What the pool made of a file: every message's fields (with resolved types), oneofs, enums, methods."""
    file = pool.FindFileByName(file_name)
    out: dict = {"package": file.package, "deps": sorted(d.name for d in file.dependencies)}

    def message(m) -> None:
        out[m.full_name] = (
            [(f.name, f.number, f.is_repeated, f.is_required, f.is_packed, f.type, f.json_name,
              f.message_type and f.message_type.full_name, f.enum_type and f.enum_type.full_name,
              f.containing_oneof and f.containing_oneof.name, f.has_presence) for f in m.fields],
            m.GetOptions().map_entry)
        for nested in m.nested_types:
            message(nested)
        for e in m.enum_types:
            out[e.full_name] = [(v.name, v.number) for v in e.values]

    for m in file.message_types_by_name.values():
        message(m)
    for e in file.enum_types_by_name.values():
        out[e.full_name] = [(v.name, v.number) for v in e.values]
    for s in file.services_by_name.values():
        out[s.full_name] = [(x.name, x.input_type.full_name, x.output_type.full_name, x.client_streaming,
                             x.server_streaming) for x in s.methods]
    return out


def test_proto_reader_builds_what_protoc_builds():
    from executors._kit import proto_text

    schema = proto_text.load(READER_PROTO)
    ours = _describe(schema.pool, proto_text.FILE_NAME)
    theirs = _describe(protoc_pool(READER_PROTO), "shop.proto")
    assert ours == theirs
    assert "demo.v1.Catalog.ShelvesEntry" in ours and ours["demo.v1.Catalog.ShelvesEntry"][1] is True
    assert proto_text.package_of("// package a;\n/* package b; */ package demo.v1;") == "demo.v1"


# --------------------------------------------------------------------------------------------------
# 100 checks through Redis and the real handler at concurrency 64

async def test_100_tasks_at_concurrency_64_give_one_result_each(peers, redis):
    cases = [
        (cfg(peers.plain_port), UP, f"gRPC call successful: {SERVING}"),
        (cfg(peers.plain_port, body='{"service": "down"}'), DOWN, "gRPC health check failed: NOT_SERVING"),
        (cfg(peers.reflect_port, "Shop", "Place", ORDER, keyword="fragile"), UP,
         f"{RECEIPT_HEAD}, keyword [fragile] is found"),
        (cfg(peers.plain_port, "Shop", "Ping", "", proto=SHOP_PROTO), UP, 'gRPC call successful: {"message": "pong"}'),
    ]
    closed = free_port()
    payloads, expected = [], {}
    for i in range(100):
        config, status, message = cases[i % len(cases)]
        if i % 10 == 9:
            config, status = cfg(closed), DOWN
            message = f"gRPC call failed: UNAVAILABLE: dial tcp 127.0.0.1:{closed}: connect: connection refused"
        kind = "grpc" if i % 2 else "grpc-keyword"
        payloads.append(healthcheck_payload(kind, config, monitor_id=f"m{i}", timeout=5))
        expected[f"m{i}"] = (kind, status, message)
    seen = one_result_each(await run_through_worker(redis, payloads))
    assert {monitor_id: (body["monitor_type"], body["status"], body["message"])
            for monitor_id, body in seen.items()} == expected
