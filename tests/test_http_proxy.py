"""Proxies of every kind the task may carry, each a real proxy server (pproxy) on loopback; a recording
relay in front shows what the client sent (items 45-47, issue 3: SOCKS4 proper, TLS proxies)."""

from __future__ import annotations

import pytest

from http_peers import ProxyServer, Tap, certs, cfg, peer, run

from executors import DOWN, UP


@pytest.fixture(scope="module")
def proxies():
    c = certs()
    servers = {
        "http": ProxyServer("http"),
        "http-auth": ProxyServer("http", auth="bob:pw"),
        "https-auth": ProxyServer("http+ssl", auth="bob:pw", ssl_pem=c.leaf, certs=c),
        "https": ProxyServer("http+ssl", ssl_pem=c.leaf, certs=c),
        "socks5": ProxyServer("socks5"),
        "socks5-auth": ProxyServer("socks5", auth="alice:s3cret"),
        "socks4": ProxyServer("socks4"),
    }
    yield servers
    for s in servers.values():
        s.close()


@pytest.fixture
def trusted(monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", certs().ca_file)


def task_proxy(protocol: str, port: int, user: str | None = None, password: str | None = None) -> dict:
    p = {"id": "p1", "protocol": protocol, "host": "127.0.0.1", "port": port, "auth": user is not None}
    if user is not None:
        p["username"] = user
    if password is not None:
        p["password"] = password
    return p


def tapped(server: ProxyServer) -> Tap:
    return Tap(server.port)


# --- item 45 ---------------------------------------------------------------------------------------------

async def test_http_proxy_refused(closed_port):
    target = peer("http").url("/status/200")
    r = await run(cfg(target), proxy=task_proxy("http", closed_port))
    assert r.status == DOWN
    assert r.message == (f'Get "{target}": proxyconnect tcp: dial tcp 127.0.0.1:{closed_port}: connect: '
                         "connection refused")


@pytest.mark.parametrize("protocol", ["socks5", "socks5h", "socks", "socks4"])
async def test_socks_proxy_refused(closed_port, protocol):
    target = peer("http").url("/status/200")
    r = await run(cfg(target), proxy=task_proxy(protocol, closed_port))
    assert r.status == DOWN and "connect: connection refused" in r.message
    assert f"connect tcp 127.0.0.1:{closed_port}->127.0.0.1:{peer('http').port}" in r.message


# --- http and https proxies ------------------------------------------------------------------------------

async def test_http_proxy_plain_target_uses_absolute_form(proxies):
    srv = peer("http")
    tap = tapped(proxies["http"])
    try:
        target = srv.url("/echo", host="localhost")
        r = await run(cfg(target, keyword="GET"), proxy=task_proxy("", tap.port))  # empty protocol = http
        assert (r.status, r.message) == (UP, "200 - 200 OK")
        assert tap.sent[0].startswith(f"GET {target} HTTP/1.1\r\n".encode())
        assert b"Proxy-Authorization" not in tap.sent[0]
    finally:
        tap.close()


async def test_http_proxy_with_and_without_credentials(proxies):
    srv = peer("http")
    port = proxies["http-auth"].port
    r = await run(cfg(srv.url("/status/200")), proxy=task_proxy("http", port, "bob", "pw"))
    assert r.status == UP
    r = await run(cfg(srv.url("/status/200")), proxy=task_proxy("http", port, "bob", "wrong"))
    assert (r.status, r.message) == (DOWN, "HTTP request failed with status: 407")
    r = await run(cfg(srv.url("/status/200")), proxy=task_proxy("http", port, "bob", ""))  # auth needs both
    assert r.message == "HTTP request failed with status: 407"
    assert "wrong" not in r.message


async def test_http_proxy_tunnels_https_with_connect(proxies, trusted):
    secure = peer("https")
    tap = tapped(proxies["http-auth"])
    try:
        target = secure.url("/status/200", host="localhost")
        r = await run(cfg(target), proxy=task_proxy("http", tap.port, "bob", "pw"))
        assert (r.status, r.message) == (UP, "200 - 200 OK")
        assert r.tls_info["valid"] is True
        first = tap.sent[0]
        assert first.startswith(f"CONNECT localhost:{secure.port} HTTP/1.1\r\n".encode())
        assert b"Proxy-Authorization: Basic Ym9iOnB3\r\n" in first
    finally:
        tap.close()
    r = await run(cfg(target), proxy=task_proxy("http", proxies["http-auth"].port))
    assert r.status == DOWN and r.message.startswith(f'Get "{target}": ')
    assert "Proxy Authentication Required" in r.message or "407" in r.message or "EOF" in r.message


async def test_https_proxy_speaks_tls_to_the_proxy(proxies, trusted):
    port = proxies["https-auth"].port
    plain, secure = peer("http"), peer("https")
    proxy = task_proxy("https", port, "bob", "pw")
    proxy["host"] = "localhost"
    r = await run(cfg(plain.url("/echo"), keyword="GET"), proxy=proxy)
    assert (r.status, r.message) == (UP, "200 - 200 OK")
    r = await run(cfg(secure.url("/status/200", host="localhost")), proxy=proxy)  # TLS inside TLS
    assert (r.status, r.message) == (UP, "200 - 200 OK")
    assert r.tls_info["valid"] is True and r.timings["tls"] > 0


async def test_https_proxy_without_credentials(proxies, trusted):
    plain, secure = peer("http"), peer("https")
    proxy = task_proxy("https", proxies["https"].port)
    r = await run(cfg(plain.url("/echo"), keyword="GET"), proxy=proxy)
    assert (r.status, r.message) == (UP, "200 - 200 OK")
    r = await run(cfg(secure.url("/status/200")), proxy=proxy)
    assert (r.status, r.message) == (UP, "200 - 200 OK")
    r = await run(cfg(plain.url("/echo")), proxy=task_proxy("https", proxies["https-auth"].port))
    assert (r.status, r.message) == (DOWN, "HTTP request failed with status: 407")


async def test_https_proxy_certificate_is_verified(proxies, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    proxy = task_proxy("https", proxies["https-auth"].port, "bob", "pw")
    target = peer("http").url("/status/200")
    r = await run(cfg(target), proxy=proxy)
    assert r.message == (f'Get "{target}": proxyconnect tcp: tls: failed to verify certificate: '
                         "x509: certificate signed by unknown authority")
    r = await run(cfg(target, ignore_tls_errors=True), proxy=proxy)
    assert r.status == UP


# --- SOCKS (items 46, 47) ----------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["socks5", "socks5h"])
async def test_socks5_with_auth_sends_credentials_and_host_name(proxies, protocol):
    srv = peer("http")
    tap = tapped(proxies["socks5-auth"])
    try:
        target = srv.url("/echo", host="localhost")
        r = await run(cfg(target), proxy=task_proxy(protocol, tap.port, "alice", "s3cret"))
        assert (r.status, r.message) == (UP, "200 - 200 OK")
        sent = tap.sent[0]
        assert sent.startswith(b"\x05\x02\x00\x02")  # offers no-auth and username/password
        assert b"\x01\x05alice\x06s3cret" in sent  # RFC 1929
        connect = b"\x05\x01\x00\x03\x09localhost" + srv.port.to_bytes(2, "big")
        assert connect in sent  # the name, not an address: the proxy resolves it
    finally:
        tap.close()


async def test_socks5_wrong_password(proxies):
    srv = peer("http")
    port = proxies["socks5-auth"].port
    r = await run(cfg(srv.url("/status/200")), proxy=task_proxy("socks5", port, "alice", "nope"))
    assert r.status == DOWN
    assert r.message.startswith(f'Get "{srv.url("/status/200")}": socks connect tcp 127.0.0.1:{port}->')
    assert "nope" not in r.message


@pytest.mark.parametrize("protocol", ["socks5", "socks5h", "socks"])
async def test_socks5_family_without_auth_and_to_https(proxies, trusted, protocol):
    tap = tapped(proxies["socks5"])
    try:
        secure = peer("https")
        r = await run(cfg(secure.url("/status/200", host="localhost")), proxy=task_proxy(protocol, tap.port))
        assert (r.status, r.message) == (UP, "200 - 200 OK")
        assert r.tls_info["valid"] is True
        assert tap.sent[0].startswith(b"\x05\x01\x00\x05\x01\x00\x03\x09localhost")
    finally:
        tap.close()


async def test_socks4_is_socks4(proxies):
    srv = peer("http")
    tap = tapped(proxies["socks4"])
    try:
        r = await run(cfg(srv.url("/echo", host="localhost")), proxy=task_proxy("socks4", tap.port))
        assert (r.status, r.message) == (UP, "200 - 200 OK")
        # VN=4, CD=1, port, the address resolved by the client, empty user id
        assert tap.sent[0].startswith(b"\x04\x01" + srv.port.to_bytes(2, "big") + b"\x7f\x00\x00\x01\x00")
    finally:
        tap.close()


async def test_unknown_protocol_is_ignored(monkeypatch, closed_port):
    srv = peer("http")
    srv.reset()
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port}")  # environment proxies are not used
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{closed_port}")
    r = await run(cfg(srv.url("/echo")), proxy=task_proxy("ftp", closed_port))
    assert (r.status, r.message) == (UP, "200 - 200 OK")
    assert srv.requests[-1]["path"] == "/echo"



def test_tls_proxies_on_uvloop(proxies, trusted):
    """The worker runs on uvloop: TLS to the proxy and TLS inside that TLS, there too."""
    import asyncio

    import uvloop

    async def both():
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        proxy = task_proxy("https", proxies["https-auth"].port, "bob", "pw")
        proxy["host"] = "localhost"
        secure = peer("https").url("/status/200", host="localhost")
        via_tls = await run(cfg(secure), proxy=proxy)
        via_socks = await run(cfg(secure), proxy=task_proxy("socks5h", proxies["socks5"].port))
        return via_tls, via_socks

    for r in uvloop.run(both()):
        assert (r.status, r.message) == (UP, "200 - 200 OK")
        assert r.tls_info["valid"] is True
