"""The `rabbitmq` executor against a private RabbitMQ node with the management plugin, started once for
the module (tests/rabbit_peers.py): UP `OK`, 401 for a wrong password, 503 with the reason of a real
disk alarm, a dead first node, all nodes dead, hung nodes followed by a live one (UP within the
budget), HTTPS verified with the system roots (SSL_CERT_FILE), Go's URL joining and its error texts;
scripted HTTP peers for the request's shape, answers a real node does not give and HTTP_PROXY; no
connection left open; 100 tasks through Redis at concurrency 64.

Where rabbitmq-server cannot start the tests skip, except under CI=true, where they fail with the reason.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import logging
import time
import warnings

import pytest
from conftest import free_port, skip_or_fail
from helpers import assert_no_secret, cycled, one_result_each, run_through_worker, sockets_to
from rabbit_peers import PASSWORD, USER, HttpPeer, NodeError, RabbitNode, response

import healthcheck
from executors import DOWN, UP, Monitor, rabbitmq
from executors._kit.http1 import parse_url

FAILED = "All RabbitMQ nodes failed: "
MARGIN = 0.5  # seconds a check may end after its timeout


@pytest.fixture(scope="module")
def node():
    try:
        server = RabbitNode()
        server.start()
    except NodeError as exc:
        if "server" in locals():
            server.stop()
        skip_or_fail(f"rabbitmq-server cannot run here: {exc}")
    yield server
    server.stop()


@pytest.fixture
def peers():
    made: list[HttpPeer] = []

    def make(reply: bytes | None) -> HttpPeer:
        made.append(HttpPeer(reply))
        return made[-1]
    yield make
    for peer in made:
        peer.close()


def config(*nodes: str, username: str = USER, password: str = PASSWORD) -> dict:
    return {"nodes": list(nodes), "username": username, "password": password}


def alarms(base: str) -> str:
    return base + "/api/health/checks/alarms/"


def refused(port: int) -> str:
    return (f'request failed: Get "http://127.0.0.1:{port}/api/health/checks/alarms/": '
            f"dial tcp 127.0.0.1:{port}: connect: connection refused")


async def run(cfg: dict | str, timeout: int = 3):
    """One check through the worker's registry and hard cap, as the worker runs it."""
    text = cfg if isinstance(cfg, str) else json.dumps(cfg)
    monitor = Monitor(id="m1", name="rabbitmq test", type="rabbitmq", interval=60, timeout=timeout, config=text)
    return await healthcheck.run_check(monitor, None, float(timeout))


# --------------------------------------------------------------------------------------------------
# A real node

async def test_healthy_node_is_up_ok_with_phase_timings(node):
    result = await run(config(node.url()))
    assert (result.status, result.message) == (UP, "OK")
    assert result.end_ns >= result.start_ns and result.ping_ms < 3000
    assert set(result.timings) == {"dns", "connect", "tls", "ttfb", "transfer"}
    assert result.timings["ttfb"] > 0


async def test_node_url_with_trailing_slash_or_path_cleaning_is_asked_the_same(node):
    for base in (node.url() + "/", node.url() + "/x/..//"):
        result = await run(config(base))
        assert (result.status, result.message) == (UP, "OK"), base


async def test_wrong_password_is_401(node):
    result = await run(config(node.url(), password="not-" + PASSWORD))
    assert (result.status, result.message) == (DOWN, FAILED + "unexpected status code: 401")
    assert PASSWORD not in result.message


async def test_disk_alarm_is_503_with_the_reason_the_node_gives(node):
    body = node.raise_disk_alarm()
    try:
        result = await run(config(node.url()))
    finally:
        node.clear_disk_alarm()
    reason = body["reason"]
    assert isinstance(reason, str) and reason
    assert (result.status, result.message) == (DOWN, FAILED + "RabbitMQ health check failed: " + reason)
    assert (await run(config(node.url()))).status == UP  # the alarm cleared


async def test_dead_first_node_then_live_second_is_up(node):
    dead = free_port()
    result = await run(config(f"http://127.0.0.1:{dead}", node.url()))
    assert (result.status, result.message) == (UP, "OK")


async def test_all_nodes_dead_reports_the_last_nodes_error():
    first, second = free_port(), free_port()
    result = await run(config(f"http://127.0.0.1:{first}", f"http://127.0.0.1:{second}"))
    assert (result.status, result.message) == (DOWN, FAILED + refused(second))


@pytest.mark.parametrize("hang", ["open_port", "hanging_port"])
async def test_hung_node_then_live_one_is_up_within_the_budget(node, hang, request):
    """A listener that accepts and never answers, or one whose SYNs are dropped: it gets its share only."""
    port = request.getfixturevalue(hang)
    started = time.monotonic()
    result = await run(config(f"http://127.0.0.1:{port}", node.url()), timeout=3)
    assert time.monotonic() - started < 3 + MARGIN
    assert (result.status, result.message) == (UP, "OK")


async def test_all_nodes_hung_is_down_within_the_timeout(open_port, hanging_port):
    started = time.monotonic()
    result = await run(config(f"http://127.0.0.1:{hanging_port}", f"http://127.0.0.1:{open_port}"), timeout=2)
    assert time.monotonic() - started < 2 + MARGIN
    assert (result.status, result.message) == (
        DOWN, FAILED + f'request failed: Get "{alarms(f"http://127.0.0.1:{open_port}")}": context deadline exceeded')


async def test_no_time_left_before_the_first_node_is_go_s_timeout_message(node):
    monitor = Monitor(id="m1", type="rabbitmq", timeout=7, config=json.dumps(config(node.url())))
    result = await rabbitmq.check(monitor, None, 0.0)
    assert (result.status, result.message) == (DOWN, "Health check timed out after 7s")


async def test_https_verifies_with_system_roots(node, monkeypatch, tmp_path):
    url = node.url(tls=True)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "none.pem"))  # no trusted roots at all
    result = await run(config(url))
    assert (result.status, result.message) == (
        DOWN, FAILED + f'request failed: Get "{alarms(url)}": tls: failed to verify certificate: '
                       "x509: certificate signed by unknown authority")
    (tmp_path / "ca.pem").write_text(node.ca_pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))  # the test CA plays a public root
    result = await run(config(url))
    assert (result.status, result.message) == (UP, "OK")
    assert result.timings["tls"] > 0


# --------------------------------------------------------------------------------------------------
# Scripted peers: the request, answers a real node does not give

async def test_request_is_a_get_of_the_alarms_check_with_basic_auth_and_accept_json(peers):
    peer = peers(response("200 OK", b'{"status":"ok"}'))
    result = await run(config(peer.url + "/mgmt", username="ops", password="s3:cr\u00e9t"))
    assert (result.status, result.message) == (UP, "OK")
    head = peer.requests[0].decode()
    lines = head.split("\r\n")
    assert lines[0] == "GET /mgmt/api/health/checks/alarms/ HTTP/1.1"
    token = base64.b64encode("ops:s3:cr\u00e9t".encode()).decode()
    assert f"Authorization: Basic {token}" in lines
    assert "Accept: application/json" in lines


async def test_first_healthy_node_ends_the_check_and_the_next_is_not_asked(peers):
    first, second = peers(response("200 OK")), peers(response("200 OK"))
    result = await run(config(first.url, second.url))
    assert (result.status, result.message) == (UP, "OK")
    assert len(first.requests) == 1 and second.requests == []


@pytest.mark.parametrize("reply, error", [
    (response("503 Service Unavailable", b'{"status":"failed","reason":"resource alarm(s) in effect"}'),
     "RabbitMQ health check failed: resource alarm(s) in effect"),
    (response("503 Service Unavailable", b"<html>down</html>", "text/html"),
     "RabbitMQ health check failed: service unavailable"),
    (response("503 Service Unavailable", b'{"reason": 7}'), "RabbitMQ health check failed: service unavailable"),
    (response("503 Service Unavailable", b'{"reason": "x"} trailing'),
     "RabbitMQ health check failed: service unavailable"),
    (response("503 Service Unavailable", b'{"reason": "bad \\ud800 half"}'),
     "RabbitMQ health check failed: bad \ufffd half"),
    (response("404 Not Found", b"{}"), "unexpected status code: 404"),
    (response("200 OK", b'{"status":"ok"}', length=100), "failed to read response: unexpected EOF"),
    (b"HTTP/1.1 2000 OK\r\n\r\n", None),
])
async def test_answers_a_real_node_does_not_give(peers, reply, error):
    peer = peers(reply)
    result = await run(config(peer.url))
    assert result.status == DOWN
    if error is None:
        assert result.message.startswith(FAILED + f'request failed: Get "{alarms(peer.url)}": '), result.message
    else:
        assert result.message == FAILED + error


async def test_last_node_error_wins_over_earlier_ones(peers):
    alarm = peers(response("503 Service Unavailable", b'{"reason":"r1"}'))
    dead = free_port()
    result = await run(config(alarm.url, f"http://127.0.0.1:{dead}"))
    assert result.message == FAILED + refused(dead)
    result = await run(config(f"http://127.0.0.1:{dead}", alarm.url))
    assert result.message == FAILED + "RabbitMQ health check failed: r1"


async def test_hung_body_fails_as_a_read_error_and_the_next_node_is_asked(node):
    """Headers and then silence: the node's share ends while reading the body."""
    server_ready = asyncio.Event()

    async def serve(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{")
        server_ready.set()
        await asyncio.sleep(10)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        result = await run(config(base), timeout=1)
        assert (result.status, result.message) == (DOWN, FAILED + "failed to read response: context deadline exceeded")
        result = await run(config(base, node.url()), timeout=2)
        assert (result.status, result.message) == (UP, "OK")
    finally:
        server.close()
    assert server_ready.is_set()


# --------------------------------------------------------------------------------------------------
# Node URLs and configs

async def test_node_urls_that_cannot_be_joined_are_skipped_with_go_s_error(node):
    result = await run(config("http://[::1", node.url()))
    assert (result.status, result.message) == (UP, "OK")
    result = await run(config("http://user:hidden-pw@[::1"))
    assert result.message == (FAILED + "invalid URL construction for node http://user:***@[::1: "
                              "parse \"http://user:***@[::1/\": missing ']' in host")
    result = await run(config("ops:hidden-pw@127.0.0.1:15672"))  # reads as scheme `ops`: Go would show the password
    assert result.message == (FAILED + 'request failed: Get "ops:***@127.0.0.1:15672/": unsupported protocol scheme "ops"')
    result = await run(config("127.0.0.1:15672"))
    assert result.message == (FAILED + "invalid URL construction for node 127.0.0.1:15672: "
                              "parse \"127.0.0.1:15672/\": first path segment in URL cannot contain colon")


@pytest.mark.parametrize("node_url, message", [
    ("localhost:15672", 'request failed: Get "localhost:15672/": unsupported protocol scheme "localhost"'),
    ("ftp://127.0.0.1/", ('request failed: Get "ftp://127.0.0.1/api/health/checks/alarms/": '
                          'unsupported protocol scheme "ftp"')),
    ("", 'request failed: Get "/api/health/checks/alarms/": unsupported protocol scheme ""'),
    ("http://127.0.0.1:99999", ('request failed: Get "http://127.0.0.1:99999/api/health/checks/alarms/": '
                                "dial tcp: address 99999: invalid port")),
])
async def test_node_urls_the_client_refuses(node_url, message):
    result = await run(config(node_url))
    assert (result.status, result.message) == (DOWN, FAILED + message)


def test_health_url_is_go_s_join_path():
    assert rabbitmq.health_url("http://h:15672") == "http://h:15672/api/health/checks/alarms/"
    assert rabbitmq.health_url("https://h/a/../b//") == "https://h/b/api/health/checks/alarms/"
    assert rabbitmq.health_url("http://h:15672?x=1") == "http://h:15672/api/health/checks/alarms/?x=1/"
    assert rabbitmq.health_url("rel") == "rel/api/health/checks/alarms/"


@pytest.mark.parametrize("text, message", [
    ('{"nodes": [], "username": "u", "password": "p"}', "All RabbitMQ nodes failed"),
    ("null", "All RabbitMQ nodes failed"),
    ('{"nodes": "http://h", "username": "u"}',
     "failed to parse config: json: cannot unmarshal string into Go struct field RabbitMQConfig.nodes of type []string"),
    ('{"nodes": [], "vhost": "/"}', 'failed to parse config: json: unknown field "vhost"'),
    ("", "failed to parse config: EOF"),
])
async def test_configs(text, message):
    result = await run(text)
    assert (result.status, result.message) == (DOWN, message)


# --------------------------------------------------------------------------------------------------
# Proxy environment variables (Go's ProxyFromEnvironment)

async def test_http_proxy_from_the_environment_carries_the_request(peers, monkeypatch):
    proxy = peers(response("200 OK", b'{"status":"ok"}'))
    monkeypatch.setenv("HTTP_PROXY", f"127.0.0.1:{proxy.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    result = await run(config("http://rabbit.invalid:15672"))
    assert (result.status, result.message) == (UP, "OK")
    assert proxy.requests[0].startswith(b"GET http://rabbit.invalid:15672/api/health/checks/alarms/ HTTP/1.1\r\n")
    monkeypatch.setenv("NO_PROXY", ".invalid")
    result = await run(config("http://rabbit.invalid:15672"), timeout=1)
    assert result.status == DOWN and len(proxy.requests) == 1
    assert result.message.startswith(FAILED + 'request failed: Get "http://rabbit.invalid:15672/api/health/checks/alarms/": ')


async def test_loopback_nodes_are_never_proxied(node, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # a dead proxy
    result = await run(config(node.url()))
    assert (result.status, result.message) == (UP, "OK")


@pytest.mark.parametrize("env, url, expected", [
    ({"HTTP_PROXY": "proxy:3128"}, "http://h.example/", ("http", "proxy", 3128)),
    ({"HTTP_PROXY": "proxy:3128"}, "https://h.example/", None),
    ({"HTTPS_PROXY": "https://u:p%40ss@proxy"}, "https://h.example/", ("https", "proxy", 443, "u", "p@ss")),
    ({"https_proxy": "socks5h://proxy"}, "https://h.example/", ("socks5", "proxy", 1080)),
    ({"HTTP_PROXY": "proxy:3128", "NO_PROXY": "ample"}, "http://h.example/", ("http", "proxy", 3128)),
    ({"HTTP_PROXY": "proxy:3128", "NO_PROXY": "example"}, "http://h.example/", None),
    ({"HTTP_PROXY": "proxy:3128", "NO_PROXY": ".example"}, "http://example/", ("http", "proxy", 3128)),
    ({"HTTP_PROXY": "proxy:3128", "NO_PROXY": "example"}, "http://example/", None),
    ({"HTTP_PROXY": "proxy:3128", "NO_PROXY": "h.example"}, "http://a.h.example/", None),
    ({"HTTP_PROXY": "proxy:3128", "NO_PROXY": "*.example:8080"}, "http://h.example/", ("http", "proxy", 3128)),
    ({"HTTP_PROXY": "proxy:3128", "NO_PROXY": "*.example:8080"}, "http://h.example:8080/", None),
    ({"HTTP_PROXY": "proxy:3128", "no_proxy": "10.0.0.0/8"}, "http://10.1.2.3/", None),
    ({"HTTP_PROXY": "proxy:3128", "NO_PROXY": "10.1.2.3"}, "http://10.1.2.4/", ("http", "proxy", 3128)),
    ({"HTTP_PROXY": "proxy:3128", "NO_PROXY": "*"}, "http://h.example/", None),
    ({"HTTP_PROXY": "proxy:3128"}, "http://localhost/", None),
    ({"HTTP_PROXY": "proxy:3128"}, "http://[::1]/", None),
])
def test_proxy_environment_rules(monkeypatch, env, url, expected):
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    proxy = rabbitmq.env_proxy(parse_url(url))
    if expected is None:
        assert proxy is None
    else:
        got = (proxy.kind, proxy.host, proxy.port) + ((proxy.username, proxy.password) if len(expected) > 3 else ())
        assert got == expected


# --------------------------------------------------------------------------------------------------
# Resources


async def test_no_connection_outlives_its_check(node, open_port, hanging_port):
    before = sockets_to(node.mgmt_port, node.tls_port, open_port, hanging_port)  # hanging_port's own fillers
    cfgs = [config(node.url()), config(node.url(), password="wrong"), config(f"http://127.0.0.1:{open_port}"),
            config(f"http://127.0.0.1:{hanging_port}", node.url()), config(node.url(tls=True))]
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        results = await asyncio.gather(*(run(cfg, timeout=1) for cfg in cfgs * 3))
        assert sockets_to(node.mgmt_port, node.tls_port, open_port, hanging_port) == before
        gc.collect()
    assert [r.status for r in results[:2]] == [UP, DOWN]
    assert not [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


# --------------------------------------------------------------------------------------------------
# 100 checks through Redis and the real handler at concurrency 64

async def test_100_tasks_at_concurrency_64_give_one_result_each(node, redis, caplog):
    caplog.set_level(logging.DEBUG)
    dead = free_port()
    cases = [
        (config(node.url()), UP, "OK"),
        (config(node.url(), password="wrong-" + PASSWORD), DOWN, FAILED + "unexpected status code: 401"),
        (config(f"http://127.0.0.1:{dead}", node.url()), UP, "OK"),
        (config(f"http://127.0.0.1:{dead}"), DOWN, FAILED + refused(dead)),
    ]
    payloads, expected = cycled("rabbitmq", cases, "m")
    seen = one_result_each(await run_through_worker(redis, payloads))
    assert all(body["monitor_type"] == "rabbitmq" for body in seen.values())
    assert {monitor_id: (body["status"], body["message"]) for monitor_id, body in seen.items()} == expected
    assert_no_secret([PASSWORD], seen.values(), caplog)  # only in the config echoed back, as Go does
