"""200 simultaneous checks with different auth, TLS and redirect settings against the same servers,
on uvloop as in the worker: every check gets its own result (the Go executor's shared client could
hand a check another check's settings, spec 6.1.8)."""

from __future__ import annotations

import asyncio
import base64

import uvloop

from http_peers import certs, cfg, peer, run

from executors import DOWN, UP


def case(i: int) -> tuple[dict, str, object]:
    """(config, monitor type, expectation) for check number i; kinds interleave so they overlap."""
    plain, secure, mutual = peer("http"), peer("https"), peer("mtls")
    c = certs()
    kind = i % 5
    if kind == 0:  # basic auth, right or wrong credentials, each check its own user
        good = i % 10 == 0
        url = plain.url(f"/basic?user=u{i}&pass=p{i}")
        doc = cfg(url, authMethod="basic", basic_auth_user=f"u{i}", basic_auth_pass=f"p{i}" if good else f"x{i}")
        return doc, "http", (UP, "200 - 200 OK") if good else (DOWN, "HTTP request failed with status: 401")
    if kind == 1:  # redirect chains against per-check limits
        hops, limit = i % 4, (i // 5) % 4
        doc = cfg(plain.url(f"/redirect/{hops}"), max_redirects=limit, keyword="arrived")
        if hops == 0 or 0 < hops <= limit:
            return doc, "http-keyword", (UP, "200 - 200 OK")
        if limit == 0:
            return doc, "http-keyword", (DOWN, f'Get "/redirect/{hops - 1}": redirects disabled: max_redirects set to 0')
        return doc, "http-keyword", (DOWN, f'Get "/redirect/{hops - limit - 1}": too many redirects: followed '
                                           f"{limit + 1} redirects, maximum allowed is {limit}")
    if kind == 2:  # TLS verification on or off against a CA the system does not trust
        ignore = i % 4 == 2
        doc = cfg(secure.url(f"/status/200?check={i}"), ignore_tls_errors=ignore)
        if ignore:
            return doc, "http", (UP, "200 - 200 OK", False)
        return doc, "http", (DOWN, f'Get "{secure.url(f"/status/200?check={i}")}": tls: failed to verify certificate: '
                                   "x509: certificate signed by unknown authority", False)
    if kind == 3:  # mTLS with a private trust anchor (valid chain), or no client certificate
        if i % 2:
            doc = cfg(mutual.url("/tls-info"), authMethod="mtls", tlsCert=c.client.cert, tlsKey=c.client.key,
                      tlsCa=c.ca_pem)
            return doc, "http", (UP, "200 - 200 OK", True)
        return cfg(mutual.url("/tls-info"), ignore_tls_errors=True), "http", (DOWN, None, None)
    token = f"token-{i}"  # keyword checks, each looking for its own token
    doc = cfg(plain.url(f"/body?text={token}"), keyword=token if i % 3 else f"token-{i + 1}")
    if i % 3:
        return doc, "http-keyword", (UP, "200 - 200 OK")
    return doc, "http-keyword", (DOWN, f"Keyword check failed: keyword 'token-{i + 1}' not found in response")


def test_200_simultaneous_checks_each_get_their_own_result():
    plain = peer("http")
    plain.reset()
    cases = [case(i) for i in range(200)]

    async def all_at_once():
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        return await asyncio.gather(*(run(doc, monitor_type, timeout=15) for doc, monitor_type, _ in cases))

    results = uvloop.run(all_at_once())
    for i, ((doc, _, expected), r) in enumerate(zip(cases, results)):
        assert r.status == expected[0], (i, r.message)
        if expected[1] is not None:
            assert r.message == expected[1], i
        else:
            assert "tls" in r.message.lower(), (i, r.message)
        if len(expected) == 3:
            if expected[2] is None:
                continue
            assert r.tls_info is not None and r.tls_info["valid"] is expected[2], i
        else:
            assert r.tls_info is None, i
    # the server saw each basic-auth check with that check's own credentials, never another's
    seen = {}
    for rec in plain.requests:
        if rec["path"].startswith("/basic?"):
            auth = dict(rec["headers"]).get("Authorization")
            seen[rec["path"]] = base64.b64decode(auth[6:]).decode() if auth else None
    for i in range(0, 200, 5):
        user = seen[f"/basic?user=u{i}&pass=p{i}"]
        assert user == (f"u{i}:p{i}" if i % 10 == 0 else f"u{i}:x{i}")
