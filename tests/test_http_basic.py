"""HTTP executor against a real HTTP server: statuses, headers, bodies, redirects, timeouts, bounds
(spec 10.4 items 21-28, 35, 41-44, 48-49 and the Go request semantics of 6.1.2-6.1.4)."""

from __future__ import annotations

import json
import time

import pytest

from http_peers import cfg, peer, run

import healthcheck
import worker
from executors import DOWN, UP


@pytest.fixture
def srv():
    p = peer("http")
    p.reset()
    return p


def last(p):
    return p.requests[-1]


def header(record, name):
    for k, v in record["headers"]:
        if k.lower() == name.lower():
            return v
    return None


# --- item 21-23: status classes ---------------------------------------------------------------------

async def test_get_200_is_up_with_go_status_line(srv):
    r = await run(cfg(srv.url("/status/200")))
    assert (r.status, r.message) == (UP, "200 - 200 OK")
    assert r.tls_info is None
    assert r.start_ns <= r.end_ns


async def test_404_down_unless_4xx_accepted(srv):
    r = await run(cfg(srv.url("/status/404")))
    assert (r.status, r.message) == (DOWN, "HTTP request failed with status: 404")
    r = await run(cfg(srv.url("/status/404"), accepted_statuscodes=["2XX", "4XX"]))
    assert (r.status, r.message) == (UP, "404 - 404 Not Found")


@pytest.mark.parametrize("accepted", [[], None, ["1XX"], ["2xx"], ["INVALID"]])
async def test_empty_or_unknown_classes_accept_nothing(srv, accepted):
    doc = cfg(srv.url("/status/200"))
    if accepted is None:
        del doc["accepted_statuscodes"]
    else:
        doc["accepted_statuscodes"] = accepted
    r = await run(doc)
    assert (r.status, r.message) == (DOWN, "HTTP request failed with status: 200")


async def test_5xx_and_3xx_classes(srv):
    r = await run(cfg(srv.url("/status/503"), accepted_statuscodes=["5XX"]))
    assert (r.status, r.message) == (UP, "503 - 503 Service Unavailable")
    r = await run(cfg(srv.url("/status/500")))
    assert r.message == "HTTP request failed with status: 500"


# --- item 24-27: request headers and body -----------------------------------------------------------

async def test_default_user_agent_accept_and_content_type_on_get(srv):
    r = await run(cfg(srv.url("/echo")))
    assert r.status == UP
    rec = last(srv)
    assert header(rec, "User-Agent") == f"peekaping/{worker.__version__}"
    assert header(rec, "Accept") == "*/*"
    assert header(rec, "Content-Type") == "application/json"  # sent even for GET without body
    assert header(rec, "Accept-Encoding") == "gzip"
    assert header(rec, "Content-Length") is None
    assert rec["method"] == "GET" and rec["body"] == b""


@pytest.mark.parametrize("encoding,ctype", [("json", "application/json"), ("form", "application/x-www-form-urlencoded"),
                                            ("xml", "application/xml"), ("text", "text/plain"), ("", None)])
async def test_encoding_sets_content_type_over_custom_header(srv, encoding, ctype):
    headers = json.dumps({"content-type": "application/evil", "X-Custom-Header": "value"})
    await run(cfg(srv.url("/echo"), encoding=encoding, headers=headers))
    rec = last(srv)
    assert header(rec, "Content-Type") == (ctype or "application/evil")
    assert header(rec, "X-Custom-Header") == "value"


async def test_custom_headers_override_defaults_and_are_canonicalised(srv):
    headers = json.dumps({"user-agent": "probe/9", "accept": "text/html", "x-multi-word-name": "v", "X_Under": "u"})
    await run(cfg(srv.url("/echo"), headers=headers))
    names = [k for k, _ in last(srv)["headers"]]
    assert header(last(srv), "User-Agent") == "probe/9"
    assert header(last(srv), "Accept") == "text/html"
    assert "X-Multi-Word-Name" in names and "X_under" in names


async def test_null_headers_document_and_null_values(srv):
    r = await run(cfg(srv.url("/echo"), headers="null"))
    assert r.status == UP
    r = await run(cfg(srv.url("/echo"), headers='{"X-Empty": null}'))
    assert r.status == UP and header(last(srv), "X-Empty") == ""


@pytest.mark.parametrize("headers,tail", [
    ("{invalid json}", "invalid character 'i' looking for beginning of object key string"),
    ('{"X-N": 5}', "json: cannot unmarshal number into Go value of type string"),
    ('{"X-N": true}', "json: cannot unmarshal bool into Go value of type string"),
    ('["a"]', "json: cannot unmarshal array into Go value of type map[string]string"),
    ('{"a":"b"', "unexpected end of JSON input"),
    ('{"a":"b"} x', "invalid character 'x' after top-level value"),
    ('{"a" "b"}', "invalid character '\"' after object key"),
    ('{"a":NaN}', "invalid character 'N' looking for beginning of value"),
])
async def test_invalid_headers_json(srv, headers, tail):
    before = len(srv.requests)
    r = await run(cfg(srv.url("/echo"), headers=headers))
    assert (r.status, r.message) == (DOWN, f"invalid headers json: {tail}")
    assert r.start_ns == r.end_ns
    assert len(srv.requests) == before  # nothing was sent


async def test_header_injection_is_refused_like_go(srv):
    r = await run(cfg(srv.url("/echo"), headers=json.dumps({"X-A": "ok\r\nX-Injected: 1"})))
    assert r.status == DOWN
    assert r.message == f'Get "{srv.url("/echo")}": net/http: invalid header field value for "X-A"'
    r = await run(cfg(srv.url("/echo"), headers=json.dumps({"bad name": "v"})))
    assert r.message == f'Get "{srv.url("/echo")}": net/http: invalid header field name "bad name"'


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS", "GET"])
async def test_body_sent_verbatim_with_method(srv, method):
    body = '<root><test>value</test></root>'
    r = await run(cfg(srv.url("/echo"), method=method, encoding="xml", body=body))
    assert r.status == UP
    rec = last(srv)
    assert rec["method"] == method
    assert rec["body"] == body.encode()
    assert header(rec, "Content-Length") == str(len(body.encode()))
    assert header(rec, "Content-Type") == "application/xml"


async def test_post_without_body_sends_content_length_zero_and_head_reads_no_body(srv):
    await run(cfg(srv.url("/echo"), method="POST"))
    assert header(last(srv), "Content-Length") == "0"
    r = await run(cfg(srv.url("/big?bytes=5000"), method="HEAD", keyword="x"))
    assert r.message.startswith("Keyword check failed")  # HEAD: no body to search
    assert header(last(srv), "Accept-Encoding") is None


async def test_empty_method_is_get_and_invalid_method_fails_before_sending(srv):
    await run(cfg(srv.url("/echo"), method=""))
    assert last(srv)["method"] == "GET"
    before = len(srv.requests)
    r = await run(cfg(srv.url("/echo"), method="G T"))
    assert (r.status, r.message) == (DOWN, 'net/http: invalid method "G T"')
    assert r.start_ns == r.end_ns and len(srv.requests) == before


async def test_lower_case_method_is_sent_as_is_and_named_like_go(srv):
    r = await run(cfg(srv.url("/status/404"), method="post", accepted_statuscodes=["5XX"]))
    assert r.message == "501 - 501 Unsupported method ('post')"  # the server's own reason phrase
    r = await run(cfg("http://127.0.0.1:1/", method="post"))
    assert r.message.startswith('post "http://127.0.0.1:1/": dial tcp 127.0.0.1:1: connect: connection refused')


# --- item 28: basic auth -----------------------------------------------------------------------------

async def test_basic_auth(srv):
    url = srv.url("/basic?user=user&pass=p%C3%A4ss")
    r = await run(cfg(url, authMethod="basic", basic_auth_user="user", basic_auth_pass="päss",
                      headers='{"Authorization": "Bearer overridden"}'))
    assert (r.status, r.message) == (UP, "200 - 200 OK")
    r = await run(cfg(url, authMethod="basic", basic_auth_user="user", basic_auth_pass="wrong"))
    assert (r.status, r.message) == (DOWN, "HTTP request failed with status: 401")
    assert "wrong" not in r.message


async def test_url_userinfo_becomes_basic_auth_and_password_never_shows(srv):
    url = srv.url("/basic?user=u&pass=topsecret").replace("http://", "http://u:topsecret@")
    r = await run(cfg(url))
    assert r.status == UP
    r = await run(cfg("http://u:topsecret@127.0.0.1:1/"))
    assert r.status == DOWN and "topsecret" not in r.message and 'http://u:***@127.0.0.1:1/' in r.message


# --- URL and transport errors ------------------------------------------------------------------------

@pytest.mark.parametrize("url,message", [
    ("not-a-url", 'Get "not-a-url": unsupported protocol scheme ""'),
    ("ftp://example.invalid/x", 'Get "ftp://example.invalid/x": unsupported protocol scheme "ftp"'),
    ("http:///path", 'Get "http:///path": http: no Host in request URL'),
])
async def test_unusable_urls(url, message):
    r = await run(cfg(url))
    assert (r.status, r.message) == (DOWN, message)


@pytest.mark.parametrize("url,message", [
    ("://nothing", 'parse "://nothing": missing protocol scheme'),
    ("http://a b/", 'parse "http://a b/": invalid character " " in host name'),
    ("http://h:port/", 'parse "http://h:port/": invalid port ":port" after host'),
    ("http://[::1/", 'parse "http://[::1/": missing \']\' in host'),
    ("http://h/%zz", 'parse "http://h/%zz": invalid URL escape "%zz"'),
    ("http://h/\x7f", 'parse "http://h/\\x7f": net/url: invalid control character in URL'),
])
async def test_url_parse_errors_are_instant(url, message):
    r = await run(cfg(url))
    assert (r.status, r.message) == (DOWN, message)
    assert r.start_ns == r.end_ns


async def test_connection_refused_and_unknown_host(closed_port):
    r = await run(cfg(f"http://127.0.0.1:{closed_port}/x"))
    assert r.message == f'Get "http://127.0.0.1:{closed_port}/x": dial tcp 127.0.0.1:{closed_port}: connect: connection refused'
    r = await run(cfg("http://nohost.invalid/"))
    assert r.status == DOWN
    assert r.message.startswith('Get "http://nohost.invalid/": dial tcp: lookup nohost.invalid')
    assert r.message.endswith("no such host")


async def test_config_errors_are_down_with_go_prefix(srv):
    for text in ['{"url":"http://x","foo":1}', "", '{"url": 5}', "{invalid"]:
        r = await run(text)
        assert r.status == DOWN and r.message.startswith("failed to parse config: "), text
        assert r.start_ns == r.end_ns
    r = await run('{"URL":"%s","Accepted_StatusCodes":["2XX"]}' % srv.url("/status/200"))
    assert r.status == UP  # keys match case-insensitively
    r = await run("null")
    assert r.message == 'Get "": unsupported protocol scheme ""'


async def test_https_alias_and_registry():
    assert all(worker.EXECUTORS[t] == "executors.http" for t in ("http", "https", "http-keyword", "http-json-query"))
    p = peer("http")
    r = await run(cfg(p.url("/status/200")), monitor_type="https")
    assert r.message == "200 - 200 OK"


# --- item 35: timeout --------------------------------------------------------------------------------

async def test_server_slower_than_timeout(srv):
    started = time.monotonic()
    r = await run(cfg(srv.url("/slow?s=3")), timeout=1.0)
    took = time.monotonic() - started
    assert r.status == DOWN
    assert r.message == (f'Get "{srv.url("/slow?s=3")}": context deadline exceeded '
                         "(Client.Timeout exceeded while awaiting headers)")
    assert 0.9 <= took < 1.5
    assert 900 <= r.ping_ms < 1500


async def test_zero_budget_is_an_immediate_deadline(srv):
    r = await run(cfg(srv.url("/status/200")), timeout=0)
    assert r.status == DOWN and "context deadline exceeded" in r.message


# --- items 41-44: redirects --------------------------------------------------------------------------

@pytest.mark.parametrize("limit", [0, None])
async def test_redirects_disabled_when_zero_or_absent(srv, limit):
    doc = cfg(srv.url("/redirect/1"), accepted_statuscodes=["2XX", "3XX"])
    if limit is None:
        del doc["max_redirects"]
    else:
        doc["max_redirects"] = limit
    r = await run(doc)
    assert (r.status, r.message) == (DOWN, 'Get "/redirect/0": redirects disabled: max_redirects set to 0')


async def test_too_many_redirects_counts_requests_like_go(srv):
    r = await run(cfg(srv.url("/redirect/3"), max_redirects=2))
    assert (r.status, r.message) == (DOWN, 'Get "/redirect/0": too many redirects: followed 3 redirects, '
                                           "maximum allowed is 2")
    assert len(srv.requests) == 3


async def test_redirects_within_limit_are_followed(srv):
    r = await run(cfg(srv.url("/redirect/2"), max_redirects=5, keyword="arrived"))
    assert (r.status, r.message) == (UP, "200 - 200 OK")
    paths = [rec["path"] for rec in srv.requests]
    assert paths == ["/redirect/2", "/redirect/1", "/redirect/0"]
    assert header(srv.requests[1], "Referer") == srv.url("/redirect/2")
    r = await run(cfg(srv.url("/redirect/2"), max_redirects=2))
    assert r.status == UP


async def test_304_and_redirect_without_location_are_final(srv):
    r = await run(cfg(srv.url("/status/304"), accepted_statuscodes=["3XX"]))
    assert (r.status, r.message) == (UP, "304 - 304 Not Modified")
    r = await run(cfg(srv.url("/no-location"), accepted_statuscodes=["3XX"], max_redirects=0))
    assert (r.status, r.message) == (UP, "302 - 302 Found")


async def test_redirect_method_rules(srv):
    from urllib.parse import quote

    target = quote(srv.url("/echo"), safe="")
    await run(cfg(srv.url(f"/to?code=303&url={target}"), method="POST", body="data", max_redirects=3))
    assert [r["method"] for r in srv.requests] == ["POST", "GET"]
    assert srv.requests[1]["body"] == b""
    srv.reset()
    await run(cfg(srv.url(f"/to?code=307&url={target}"), method="PUT", body="data", max_redirects=3))
    assert [r["method"] for r in srv.requests] == ["PUT", "PUT"]
    assert srv.requests[1]["body"] == b"data"
    srv.reset()
    await run(cfg(srv.url(f"/to?code=301&url={target}"), method="HEAD", max_redirects=3))
    assert [r["method"] for r in srv.requests] == ["HEAD", "HEAD"]


async def test_authorization_follows_same_host_only(srv):
    from urllib.parse import quote

    same = quote(srv.url("/echo"), safe="")
    other = quote(srv.url("/echo", host="localhost"), safe="")
    basic = dict(authMethod="basic", basic_auth_user="u", basic_auth_pass="p", max_redirects=3)
    await run(cfg(srv.url(f"/to?url={same}"), **basic))
    assert header(srv.requests[1], "Authorization") is not None
    srv.reset()
    await run(cfg(srv.url(f"/to?url={other}"), **basic))
    assert header(srv.requests[1], "Authorization") is None
    assert header(srv.requests[1], "X-Custom") is None


async def test_relative_and_bad_location(srv):
    from urllib.parse import quote

    r = await run(cfg(srv.url("/to?url=" + quote("echo?x=1", safe="")), max_redirects=1))
    assert r.status == UP and srv.requests[-1]["path"] == "/echo?x=1"
    r = await run(cfg(srv.url("/to?url=" + quote("http://[::1", safe="")), max_redirects=1))
    assert r.status == DOWN
    assert "failed to parse Location header \"http://[::1\"" in r.message


# --- item 48-49: keyword; bodies -----------------------------------------------------------------------

@pytest.mark.parametrize("monitor_type", ["http", "http-keyword", "http-json-query", "https"])
async def test_keyword_rules_apply_to_every_type(srv, monitor_type):
    url = srv.url("/body?text=Example%20Domain")
    extra = {"json_query": "", "json_condition": "", "expected_value": ""}
    r = await run(cfg(url, keyword="Example Domain", **extra), monitor_type)
    assert r.status == UP
    r = await run(cfg(url, keyword="example domain", **extra), monitor_type)
    assert (r.status, r.message) == (DOWN, "Keyword check failed: keyword 'example domain' not found in response")
    r = await run(cfg(url, keyword="Example", invert_keyword=True, **extra), monitor_type)
    assert (r.status, r.message) == (DOWN, "Keyword check failed: keyword 'Example' found in response (expected absent)")
    r = await run(cfg(url, keyword="absent", invert_keyword=True, **extra), monitor_type)
    assert r.status == UP


async def test_keyword_is_bytewise_utf8(srv):
    r = await run(cfg(srv.url("/body?text=gr%C3%BC%C3%9Fe"), keyword="grüße"))
    assert r.status == UP


async def test_json_query_ignored_for_http_and_keyword_types(srv):
    doc = cfg(srv.url("/body?text=plain"), json_query="nope", json_condition="==", expected_value="x")
    for monitor_type in ("http", "http-keyword"):
        r = await run(doc, monitor_type)
        assert r.status == UP, monitor_type
    r = await run(doc, "http-json-query")
    assert r.message == "JSON query validation error: JSON query path not found: nope"


async def test_gzip_and_chunked_bodies_are_decoded(srv):
    r = await run(cfg(srv.url("/gzip?text=compressed%20keyword"), keyword="compressed keyword"))
    assert r.status == UP
    r = await run(cfg(srv.url("/gzip?text=compressed%20keyword"), keyword="compressed keyword",
                      headers='{"Accept-Encoding": "identity"}'))
    assert r.status == UP and header(last(srv), "Accept-Encoding") == "identity"
    r = await run(cfg(srv.url("/chunked?parts=ab,cd,ef"), keyword="bcde"))
    assert r.status == UP
    r = await run(cfg(srv.url("/bad-gzip"), keyword="x"))
    assert (r.status, r.message) == (DOWN, "Failed to read response body: gzip: invalid header")


async def test_body_bound_keeps_the_first_bytes(srv, monkeypatch):
    url = srv.url("/big?bytes=3000000&head=HEADMARK&tail=TAILMARK")
    r = await run(cfg(url, keyword="HEADMARK"))
    assert r.status == UP
    r = await run(cfg(url, keyword="TAILMARK"))
    assert r.message == "Keyword check failed: keyword 'TAILMARK' not found in response"  # past 1 MiB
    monkeypatch.setenv("HTTP_MAX_BODY_BYTES", str(4 * 1024 * 1024))
    r = await run(cfg(url, keyword="TAILMARK"))
    assert r.status == UP
    monkeypatch.setenv("HTTP_MAX_BODY_BYTES", "8")
    r = await run(cfg(url, keyword="HEADMARK"))
    assert r.status == UP
    r = await run(cfg(url, keyword="HEADMARKx"))
    assert r.status == DOWN


async def test_timings_cover_the_phases(srv):
    r = await run(cfg(srv.url("/big?bytes=200000"), keyword="x"))
    assert set(r.timings) == {"dns", "connect", "tls", "ttfb", "transfer"}
    assert r.timings["connect"] > 0 and r.timings["ttfb"] > 0 and r.timings["transfer"] > 0
    assert r.timings["dns"] == 0 and r.timings["tls"] == 0  # IP literal, plain http
    r = await run(cfg(srv.url("/status/200", host="localhost")))
    assert r.timings["dns"] > 0


async def test_ingest_payload_carries_timings_only_with_extensions(srv):
    r = await run(cfg(srv.url("/status/200")))
    p = {"monitor_id": "m", "monitor_name": "n", "monitor_type": "http", "interval": 60, "timeout": 5,
         "max_retries": 0, "retry_interval": 60, "resend_interval": 0, "config": "{}", "check_cert_expiry": False}
    plain = json.loads(healthcheck.ingest_payload(p, r))
    extended = json.loads(healthcheck.ingest_payload(p, r, extensions=True))
    assert "timings" not in plain and "tls_info" not in plain
    assert extended["timings"] == r.timings


def test_check_command_prints_timings(srv, capsys):
    code = worker.main(["check", "http", json.dumps(cfg(srv.url("/status/200"))), "--json", "--timeout", "5"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["message"] == "200 - 200 OK"
    assert set(out["timings"]) == {"dns", "connect", "tls", "ttfb", "transfer"}
