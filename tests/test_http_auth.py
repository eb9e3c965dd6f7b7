"""Authentication against real peers: a client-credentials token endpoint and resource server, and a
real NTLM challenge-response server (pyspnego's acceptor checks the NTLMv2 response) (items 29-34)."""

from __future__ import annotations

import asyncio
import base64
import time
from urllib.parse import quote

import pytest

from http_peers import ProxyServer, Tap, cfg, peer, run

from executors import DOWN, UP
from executors._kit import oauth as _oauth


@pytest.fixture
def srv():
    p = peer("http")
    p.reset()
    p.token_mode = "ok"
    p.expires_in = 3600
    p.client_id, p.client_secret = "client123", "secret456"
    _oauth.clear()
    yield p
    _oauth.clear()


def oauth(p, style="client_secret_basic", scopes="read write", resource="/bearer", **extra) -> dict:
    return cfg(p.url(resource), authMethod="oauth2-cc", oauth_auth_method=style,
               oauth_token_url=extra.pop("token_url", p.url("/token")), oauth_client_id=p.client_id,
               oauth_client_secret=extra.pop("secret", p.client_secret), oauth_scopes=scopes, **extra)


def header(record, name):
    return next((v for k, v in record["headers"] if k.lower() == name.lower()), None)


# --- OAuth2 client credentials ---------------------------------------------------------------------

async def test_client_secret_basic(srv):
    r = await run(oauth(srv))
    assert (r.status, r.message) == (UP, "200 - 200 OK")
    (req,) = srv.token_requests
    assert req["form"] == {"grant_type": "client_credentials", "scope": "read write", "client_id": "client123",
                           "client_secret": "secret456"}
    assert req["authorization"] == "Basic " + base64.b64encode(b"client123:secret456").decode()
    assert req["content_type"] == "application/x-www-form-urlencoded"
    token_call, resource_call = srv.requests
    assert token_call["method"] == "POST" and header(token_call, "User-Agent").startswith("peekaping/")
    assert header(resource_call, "Authorization") == "Bearer tok-1-read+write"


async def test_client_secret_post_and_no_scope(srv):
    r = await run(oauth(srv, style="client_secret_post", scopes=""))
    assert r.status == UP
    (req,) = srv.token_requests
    assert req["authorization"] is None
    assert req["form"] == {"grant_type": "client_credentials", "client_id": "client123", "client_secret": "secret456"}


async def test_token_endpoint_refusal_and_bad_answers(srv):
    srv.token_mode = "401"
    r = await run(oauth(srv))
    assert (r.status, r.message, r.ping_ms) == (DOWN, "oauth2 token endpoint returned status: 401", 0)
    assert r.start_ns == r.end_ns
    srv.token_mode = "empty"
    r = await run(oauth(srv))
    assert r.message == "failed to parse oauth2 token response: %!w(<nil>)"
    srv.token_mode = "not-json"
    r = await run(oauth(srv))
    assert r.message == "failed to parse oauth2 token response: invalid character '<' looking for beginning of value"
    assert len(srv.requests) == 3  # the resource was never asked


async def test_token_request_errors(srv, closed_port):
    r = await run(oauth(srv, token_url=f"http://127.0.0.1:{closed_port}/token"))
    assert r.message == (f'failed to get oauth2 token: Post "http://127.0.0.1:{closed_port}/token": '
                         f"dial tcp 127.0.0.1:{closed_port}: connect: connection refused")
    r = await run(oauth(srv, token_url="http://a b/token"))
    assert r.message == 'failed to create oauth2 token request: parse "http://a b/token": invalid character " " in host name'
    r = await run(oauth(srv, secret="wrong-secret"))
    assert r.message == "oauth2 token endpoint returned status: 401"
    assert "wrong-secret" not in r.message and "secret456" not in r.message


async def test_token_request_always_verifies_tls(srv):
    self_signed = peer("https-self")
    r = await run(oauth(srv, token_url=self_signed.url("/token"), ignore_tls_errors=True))
    assert r.status == DOWN
    assert r.message == (f'failed to get oauth2 token: Post "{self_signed.url("/token")}": tls: failed to verify '
                         "certificate: x509: certificate signed by unknown authority")


async def test_tokens_are_cached_per_client_and_scope(srv):
    for _ in range(3):
        r = await run(oauth(srv))
        assert r.status == UP
    assert len(srv.token_requests) == 1
    r = await run(oauth(srv, scopes="admin"))
    assert r.status == UP and len(srv.token_requests) == 2
    r = await run(oauth(srv, secret="not-the-secret"))  # never borrows another client's token
    assert r.message == "oauth2 token endpoint returned status: 401"
    assert len(srv.token_requests) == 3


async def test_concurrent_checks_share_one_token_fetch(srv):
    results = await asyncio.gather(*(run(oauth(srv)) for _ in range(20)))
    assert all(r.status == UP for r in results)
    assert len(srv.token_requests) == 1


async def test_revoked_token_is_refetched_on_401(srv):
    assert (await run(oauth(srv))).status == UP
    srv.valid_tokens.clear()  # the server forgets every token
    r = await run(oauth(srv))
    assert (r.status, r.message) == (UP, "200 - 200 OK")
    assert len(srv.token_requests) == 2
    srv.valid_tokens.clear()
    srv.token_mode = "401"
    r = await run(oauth(srv))
    assert r.message == "oauth2 token endpoint returned status: 401"


async def test_fresh_token_refused_is_not_retried(srv):
    r = await run(oauth(srv, resource="/status/401"))
    assert (r.status, r.message) == (DOWN, "HTTP request failed with status: 401")
    assert len(srv.token_requests) == 1


async def test_token_expiry_is_honoured(srv):
    srv.expires_in = 1
    assert (await run(oauth(srv))).status == UP
    assert (await run(oauth(srv))).status == UP
    assert len(srv.token_requests) == 1
    time.sleep(1.0)
    assert (await run(oauth(srv))).status == UP
    assert len(srv.token_requests) == 2


async def test_token_request_goes_through_the_monitor_proxy(srv):
    proxy = ProxyServer("http")
    tap = Tap(proxy.port)
    try:
        task_proxy = {"protocol": "http", "host": "127.0.0.1", "port": tap.port}
        r = await run(oauth(srv), proxy=task_proxy)
        assert r.status == UP
        sent = b"".join(tap.sent)
        assert f"POST {srv.url('/token')} HTTP/1.1".encode() in sent
        assert f"GET {srv.url('/bearer')} HTTP/1.1".encode() in sent
    finally:
        tap.close()
        proxy.close()


# --- NTLM ------------------------------------------------------------------------------------------

@pytest.fixture
def ntlm_users(tmp_path, monkeypatch):
    users = tmp_path / "ntlm-users"
    users.write_text("CORP:alice:Passw0rd!\n")
    monkeypatch.setenv("NTLM_USER_FILE", str(users))


def ntlm(url: str, password: str = "Passw0rd!", domain: str = "CORP") -> dict:
    return cfg(url, authMethod="ntlm", basic_auth_user="alice", basic_auth_pass=password, authDomain=domain,
               authWorkstation="WS01")


async def test_ntlm_handshake_against_a_real_acceptor(srv, ntlm_users):
    r = await run(ntlm(srv.url("/ntlm")))
    assert (r.status, r.message) == (UP, "200 - 200 OK")
    assert srv.ntlm_log == ["", "NTLM", "NTLM"]  # anonymous, NEGOTIATE, AUTHENTICATE
    assert srv.ntlm_users == ["CORP\\alice"]
    negotiate = base64.b64decode(header(srv.requests[1], "Authorization")[5:])
    assert negotiate.startswith(b"NTLMSSP\x00\x01\x00\x00\x00")


async def test_ntlm_wrong_password(srv, ntlm_users):
    r = await run(ntlm(srv.url("/ntlm"), password="wrong"))
    assert (r.status, r.message) == (DOWN, "HTTP request failed with status: 401")
    assert srv.ntlm_users == []


async def test_ntlm_first_request_is_anonymous_and_200_needs_no_handshake(srv, ntlm_users):
    r = await run(ntlm(srv.url("/status/200")))
    assert r.status == UP
    (only,) = srv.requests
    assert header(only, "Authorization") is None


async def test_ntlm_falls_back_to_basic_when_not_offered(srv, ntlm_users):
    url = srv.url("/basic?user=" + quote("CORP\\alice") + "&pass=Passw0rd%21")
    r = await run(ntlm(url))
    assert r.status == UP
    first, second = srv.requests
    assert header(first, "Authorization") is None
    assert header(second, "Authorization") == "Basic " + base64.b64encode(b"CORP\\alice:Passw0rd!").decode()
