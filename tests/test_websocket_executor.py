"""The `websocket` executor (issue 10, item 2) against real peers on loopback: `websockets` servers with
and without subprotocols, wss with a test CA (verified, self-signed with and without
ignore_tls_errors), an HTTP server answering 200, servers that never finish the upgrade or the close
handshake, HTTP CONNECT and SOCKS5 proxies (pproxy), send + keyword, close codes, config errors,
and 100 tasks through a private Redis at concurrency 64.
"""

from __future__ import annotations

import base64
import json
import time

import pytest
from conftest import require_modules

require_modules("websockets", "trustme", "pproxy", install="pip install '.[test]'")

import healthcheck
from executors import DOWN, UP, Monitor
from helpers import cycled, one_result_each, run_through_worker
from http_peers import Hostile, ProxyServer, Tap, certs, peer
from ws_peers import RawPeer, peers

UP_PLAIN = "WebSocket upgrade successful: 101 Switching Protocols, closed with 1000 (Normal Closure)"
MARGIN = 0.5  # a check must end within its timeout plus this


async def run(config: dict | str, proxy: dict | None = None, timeout: float = 3.0):
    """One check through the worker's registry and hard cap, as the worker runs it."""
    text = config if isinstance(config, str) else json.dumps(config)
    monitor = Monitor(id="m1", name="ws", type="websocket", interval=60, timeout=int(timeout), config=text)
    return await healthcheck.run_check(monitor, proxy, timeout)


def task_proxy(protocol: str, port: int, user: str | None = None, password: str | None = None) -> dict:
    p = {"id": "p1", "protocol": protocol, "host": "127.0.0.1", "port": port, "auth": user is not None}
    if user is not None:
        p["username"], p["password"] = user, password
    return p


@pytest.fixture(scope="module")
def ws():
    return peers()


@pytest.fixture(scope="module")
def raw():
    servers = {kind: RawPeer(kind) for kind in ("bad-accept", "no-close", "http10-open")}
    yield servers
    for server in servers.values():
        server.close()


@pytest.fixture(scope="module")
def proxies():
    servers = {"http": ProxyServer("http"), "http-auth": ProxyServer("http", auth="bob:pw"),
               "socks5": ProxyServer("socks5"), "socks5-auth": ProxyServer("socks5", auth="alice:s3cret")}
    yield servers
    for server in servers.values():
        server.close()


@pytest.fixture
def trusted(monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", certs().ca_file)


# --- upgrade, with and without subprotocols ------------------------------------------------------------

async def test_plain_upgrade_is_up_with_phase_timings_and_no_tls_info(ws):
    r = await run({"url": ws.url()})
    assert (r.status, r.message) == (UP, UP_PLAIN)
    assert r.tls_info is None
    assert set(r.timings) == {"dns", "connect", "tls", "handshake", "close"}
    assert r.timings["connect"] > 0 and r.timings["handshake"] > 0 and r.timings["tls"] == 0
    assert 0 <= r.ping_ms < 1000


async def test_subprotocol_accepted_by_the_server_is_named(ws):
    r = await run({"url": ws.url("chat", "/hello"), "subprotocol": "v2.other , superchat", "keyword": "subprotocol=superchat"})
    assert (r.status, r.message) == (UP, "WebSocket upgrade successful: 101 Switching Protocols, subprotocol "
                                         "'superchat', keyword 'subprotocol=superchat' found in first message, "
                                         "closed with 1000 (Normal Closure)")
    # a Sec-WebSocket-Protocol header in `headers` is the offer when `subprotocol` is empty
    r = await run({"url": ws.url("chat", "/hello"), "headers": json.dumps({"Sec-WebSocket-Protocol": "chat"})})
    assert r.status == UP and "subprotocol 'chat'" in r.message


async def test_subprotocol_refused_or_ignored_is_down(ws):
    r = await run({"url": ws.url("chat", "/hello")})  # this server requires one: it answers 400
    assert (r.status, r.message) == (DOWN, "WebSocket upgrade failed: server answered 400 Bad Request, "
                                           "not 101 Switching Protocols")
    r = await run({"url": ws.url("ws", "/hello"), "subprotocol": "chat,superchat"})  # upgrades without one
    assert (r.status, r.message) == (DOWN, "WebSocket upgrade failed: the server accepted none of the "
                                           "subprotocols offered (chat, superchat)")


async def test_http_server_answering_200_is_down_with_the_status_line(ws, raw):
    url = peer("http").url("/status/200").replace("http://", "ws://")
    r = await run({"url": url})
    assert (r.status, r.message) == (DOWN, "WebSocket upgrade failed: server answered 200 OK, not 101 "
                                           "Switching Protocols")
    # HTTP/1.0 with a body that never ends: judged on the head (waiting for the body would time out)
    r = await run({"url": raw["http10-open"].url()}, timeout=3)
    assert r.message == "WebSocket upgrade failed: server answered 200 OK, not 101 Switching Protocols"


async def test_101_with_a_wrong_accept_key_is_down(raw):
    r = await run({"url": raw["bad-accept"].url()})
    assert r.status == DOWN and r.message.startswith("WebSocket upgrade failed: invalid Sec-WebSocket-Accept header: ")


async def test_refused_port_is_down_in_go_words(closed_port):
    r = await run({"url": f"ws://127.0.0.1:{closed_port}/"})
    assert (r.status, r.message) == (DOWN, f"WebSocket upgrade failed: dial tcp 127.0.0.1:{closed_port}: connect: "
                                           "connection refused")


@pytest.mark.parametrize("kind", ["upgrade", "tls"])
async def test_server_that_never_completes_the_upgrade_ends_down_within_the_timeout(kind, open_port):
    if kind == "upgrade":  # connects (the kernel accepts), never answers the request
        url, text = f"ws://127.0.0.1:{open_port}/", ("WebSocket upgrade failed: context deadline exceeded "
                                                      "(Client.Timeout exceeded while awaiting headers)")
    else:  # never answers the ClientHello
        stall = Hostile("tls-stall")
        url, text = f"wss://127.0.0.1:{stall.port}/", "WebSocket upgrade failed: net/http: TLS handshake timeout"
    try:
        started = time.monotonic()
        r = await run({"url": url}, timeout=1)
        assert time.monotonic() - started < 1 + MARGIN
        assert (r.status, r.message) == (DOWN, text)
    finally:
        if kind == "tls":
            stall.close()


async def test_close_never_answered_is_1006_within_the_timeout(raw):
    started = time.monotonic()
    r = await run({"url": raw["no-close"].url()}, timeout=1)
    assert time.monotonic() - started < 1 + MARGIN
    assert (r.status, r.message) == (DOWN, "WebSocket closed with 1006 (Abnormal Closure): no close frame received: "
                                           "context deadline exceeded")
    # ping_ms ends at the 101: the wait for the close frame comes after it, it is not part of it
    elapsed_ns = time.time_ns() - r.start_ns
    assert (r.end_ns - r.start_ns) + r.timings["close"] * 1e6 <= elapsed_ns + 1e6
    r = await run({"url": raw["no-close"].url(), "accepted_close_codes": ["1000", "1006"]}, timeout=1)
    assert r.status == UP and r.message.endswith("closed with 1006 (Abnormal Closure)")


# --- close codes -------------------------------------------------------------------------------------

async def test_close_codes_outside_the_accepted_list_are_down(ws):
    r = await run({"url": ws.url(path="/close/1008")})
    assert (r.status, r.message) == (DOWN, "WebSocket closed with 1008 (Policy Violation): bye 1008")
    r = await run({"url": ws.url(path="/close/4001")})
    assert (r.status, r.message) == (DOWN, "WebSocket closed with 4001: bye 4001")
    r = await run({"url": ws.url(path="/close/4001"), "accepted_close_codes": ["1000", "4000-4099", "junk"]})
    assert (r.status, r.message) == (UP, "WebSocket upgrade successful: 101 Switching Protocols, closed with 4001")
    r = await run({"url": ws.url(), "accepted_close_codes": ["1001"]})  # our 1000 echoed back is then DOWN
    assert (r.status, r.message) == (DOWN, "WebSocket closed with 1000 (Normal Closure)")


# --- send and keyword on the first message ---------------------------------------------------------

async def test_send_and_keyword_found_absent_inverted(ws):
    r = await run({"url": ws.url(), "send": "ping 42", "keyword": "42"})
    assert (r.status, r.message) == (UP, "WebSocket upgrade successful: 101 Switching Protocols, keyword '42' "
                                         "found in first message, closed with 1000 (Normal Closure)")
    assert set(r.timings) == {"dns", "connect", "tls", "handshake", "exchange", "close"}
    r = await run({"url": ws.url(), "send": "ping 42", "keyword": "pong"})
    assert (r.status, r.message) == (DOWN, "Keyword check failed: keyword 'pong' not found in first message: "
                                           '"ping 42"')
    r = await run({"url": ws.url(), "send": "ping 42", "keyword": "42", "invert_keyword": True})
    assert (r.status, r.message) == (DOWN, "Keyword check failed: keyword '42' found in first message (expected "
                                           'absent): "ping 42"')
    r = await run({"url": ws.url(), "send": "ping 42", "keyword": "error", "invert_keyword": True})
    assert (r.status, r.message) == (UP, "WebSocket upgrade successful: 101 Switching Protocols, keyword 'error' "
                                         "absent from first message, closed with 1000 (Normal Closure)")


async def test_keyword_sees_greetings_fragments_and_binary_messages(ws):
    r = await run({"url": ws.url(path="/hello"), "send": "ignored", "keyword": "hello"})  # the greeting comes first
    assert r.status == UP
    r = await run({"url": ws.url(path="/fragments"), "keyword": "fragmented-message"})
    assert r.status == UP
    r = await run({"url": ws.url(path="/binary"), "keyword": "bin-keyword"})
    assert r.status == UP


async def test_keyword_without_any_message_is_down(ws):
    started = time.monotonic()
    r = await run({"url": ws.url(path="/silent"), "keyword": "x"}, timeout=1)
    assert time.monotonic() - started < 1 + MARGIN
    assert (r.status, r.message) == (DOWN, "Keyword check failed: no message received: context deadline exceeded")
    r = await run({"url": ws.url(path="/close/1011"), "keyword": "x"})
    assert (r.status, r.message) == (DOWN, "Keyword check failed: connection closed with 1011 (Internal Error) "
                                           "before the first message: bye 1011")


async def test_a_message_over_the_body_cap_is_down(ws, monkeypatch):
    monkeypatch.setenv("HTTP_MAX_BODY_BYTES", "8")
    r = await run({"url": ws.url(), "send": "0123456789abc", "keyword": "0"})
    assert (r.status, r.message) == (DOWN, "WebSocket protocol error: frame with 13 bytes exceeds limit of 8 bytes "
                                           "(HTTP_MAX_BODY_BYTES)")


async def test_headers_and_url_credentials_are_sent(ws):
    url = ws.url(path="/headers").replace("ws://", "ws://user:pa55@")
    token = base64.b64encode(b"user:pa55").decode()
    r = await run({"url": url, "headers": json.dumps({"x-token": "abc", "Origin": "https://app.test"}),
                   "keyword": f"Authorization: Basic {token}"})
    assert r.status == UP, r.message
    for line in ("X-Token: abc", "Origin: https://app.test", "User-Agent: peekaping/", "Sec-WebSocket-Version: 13"):
        r = await run({"url": url, "headers": json.dumps({"x-token": "abc", "Origin": "https://app.test"}),
                       "keyword": line})
        assert r.status == UP, line


# --- TLS ---------------------------------------------------------------------------------------------

async def test_wss_verified_against_the_test_ca_has_the_http_executors_tls_info(ws, trusted):
    r = await run({"url": ws.url("wss", "/echo", host="localhost")})
    assert (r.status, r.message) == (UP, UP_PLAIN)
    assert r.timings["tls"] > 0
    assert r.tls_info["valid"] is True and r.tls_info["certInfo"]["subject"].startswith("CN=localhost,")
    # the same certificate seen by the http executor gives the same tls_info
    http_monitor = Monitor(id="h", name="h", type="http", interval=60, timeout=3,
                           config=json.dumps({"url": peer("https").url("/status/200", host="localhost"),
                                              "accepted_statuscodes": ["2XX"]}))
    reference = await healthcheck.run_check(http_monitor, None, 3)
    assert reference.status == UP and r.tls_info == reference.tls_info


async def test_wss_self_signed_is_down_unless_tls_errors_are_ignored(ws, trusted):
    url = ws.url("wss-self", "/echo", host="localhost")
    r = await run({"url": url})
    assert (r.status, r.message) == (DOWN, "WebSocket upgrade failed: tls: failed to verify certificate: x509: "
                                           "certificate signed by unknown authority")
    assert r.tls_info["valid"] is False and r.tls_info["certInfo"]["certType"] == "self-signed"
    r = await run({"url": url, "ignore_tls_errors": True})
    assert (r.status, r.message) == (UP, UP_PLAIN)
    assert r.tls_info["valid"] is False and r.tls_info["certInfo"]["certType"] == "self-signed"


async def test_wss_without_the_ca_is_down_and_with_ignore_reports_the_chain_invalid(ws, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.setenv("SSL_CERT_DIR", "/nonexistent")
    url = ws.url("wss", "/echo", host="localhost")
    r = await run({"url": url})
    assert r.status == DOWN and r.message.endswith("x509: certificate signed by unknown authority")
    r = await run({"url": url, "ignore_tls_errors": True})
    assert (r.status, r.message) == (UP, UP_PLAIN)
    assert r.tls_info["valid"] is False and r.tls_info["certInfo"]["certType"] == "server"


# --- proxies -----------------------------------------------------------------------------------------

async def test_http_connect_proxy_tunnels_ws_and_wss(ws, proxies, trusted):
    tap = Tap(proxies["http"].port)
    try:
        r = await run({"url": ws.url(path="/hello"), "keyword": "hello"}, proxy=task_proxy("http", tap.port))
        assert r.status == UP, r.message
        assert tap.sent[0].startswith(f"CONNECT 127.0.0.1:{ws.ports['ws']} HTTP/1.1\r\n".encode())
    finally:
        tap.close()
    r = await run({"url": ws.url("wss", "/hello", host="localhost"), "keyword": "hello"},
                  proxy=task_proxy("http", proxies["http"].port))
    assert r.status == UP and r.tls_info["valid"] is True
    r = await run({"url": ws.url()}, proxy=task_proxy("http", proxies["http-auth"].port, "bob", "pw"))
    assert (r.status, r.message) == (UP, UP_PLAIN)
    r = await run({"url": ws.url()}, proxy=task_proxy("http", proxies["http-auth"].port, "bob", "wrong"))
    assert (r.status, r.message) == (DOWN, "WebSocket upgrade failed: Proxy Authentication Required")


async def test_socks5_proxy_carries_ws_and_wss(ws, proxies, trusted):
    r = await run({"url": ws.url(path="/hello"), "keyword": "hello"}, proxy=task_proxy("socks5", proxies["socks5"].port))
    assert r.status == UP, r.message
    r = await run({"url": ws.url("wss", "/hello", host="localhost")}, proxy=task_proxy("socks5h", proxies["socks5"].port))
    assert r.status == UP and r.tls_info["valid"] is True
    r = await run({"url": ws.url()}, proxy=task_proxy("socks5", proxies["socks5-auth"].port, "alice", "s3cret"))
    assert r.status == UP


async def test_proxy_refused_is_down_and_never_shows_the_password(ws, closed_port):
    r = await run({"url": ws.url()}, proxy=task_proxy("http", closed_port, "bob", "hunter2"))
    assert (r.status, r.message) == (DOWN, f"WebSocket upgrade failed: proxyconnect tcp: dial tcp "
                                           f"127.0.0.1:{closed_port}: connect: connection refused")
    r = await run({"url": ws.url()}, proxy=task_proxy("socks5", closed_port, "bob", "hunter2"))
    assert r.status == DOWN and "connect: connection refused" in r.message and "hunter2" not in r.message


# --- config ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config, message", [
    ('{"url": "ws://127.0.0.1:1/", "foo": 1}', 'failed to parse config: json: unknown field "foo"'),
    ("", "failed to parse config: EOF"),
    ('{"url": 5}', "failed to parse config: json: cannot unmarshal number into Go struct field "
                   "WebSocketConfig.url of type string"),
    ('{"url": "ws://x", "accepted_close_codes": [1000]}', "failed to parse config: json: cannot unmarshal number "
                                                           "into Go struct field WebSocketConfig.accepted_close_codes "
                                                           "of type string"),
    ('{"url": "http://127.0.0.1/"}', 'invalid WebSocket URL "http://127.0.0.1/": scheme must be ws or wss'),
    ('{"url": "ws://u:secret@[::1/"}', 'parse "ws://u:***@[::1/": missing \']\' in host'),
    ('{"url": "wss:///path"}', 'invalid WebSocket URL "wss:///path": missing host'),
    ('{"url": "ws://127.0.0.1/", "headers": "{bad"}',
     "invalid headers json: invalid character 'b' looking for beginning of object key string"),
    ('{"url": "ws://127.0.0.1/", "headers": "{\\"X-A\\": \\"1\\\\r\\\\nEvil: 2\\"}"}',
     'net/http: invalid header field value for "X-A"'),
    ('{"url": "ws://127.0.0.1/", "subprotocol": "a;b"}', 'invalid subprotocol list "a;b": each must be an HTTP token'),
])
async def test_config_errors_are_instant_down(config, message):
    r = await run(config)
    assert (r.status, r.message) == (DOWN, message)
    assert r.start_ns == r.end_ns


async def test_url_keys_match_case_insensitively(ws):
    r = await run(json.dumps({"URL": ws.url(), "Keyword": "", "ACCEPTED_CLOSE_CODES": None}))
    assert (r.status, r.message) == (UP, UP_PLAIN)


# --- through Redis --------------------------------------------------------------------------------------


async def test_100_tasks_through_redis_at_concurrency_64_give_one_strict_result_each(redis, ws, trusted, closed_port):
    cases = [({"url": ws.url(), "send": "hi", "keyword": "hi"}, UP),
             ({"url": ws.url("wss", "/echo", host="localhost")}, UP),
             ({"url": ws.url(path="/close/1008")}, DOWN),
             ({"url": f"ws://127.0.0.1:{closed_port}/"}, DOWN),
             ({"url": peer("http").url("/status/200").replace("http://", "ws://")}, DOWN)]
    payloads, expected = cycled("websocket", cases, "ws-")
    seen = one_result_each(await run_through_worker(redis, payloads, go_strict=True))
    assert all(body["monitor_type"] == "websocket" and body["message"] for body in seen.values())
    assert {monitor_id: body["status"] for monitor_id, body in seen.items()} == expected
