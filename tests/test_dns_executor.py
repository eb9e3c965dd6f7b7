"""The `dns` executor against a private nsd (Debian's authoritative server) and misbehaving Python
servers started here: every record type UP with Go's exact message and DOWN, TCP fallback for every
type, silence, SERVFAIL/REFUSED, lame referral, forged answers, an IPv6 resolver, and 100 checks
through the real worker and Redis at concurrency 64."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import dns.flags
import dns.message
import pytest
import uvloop

import healthcheck
from dns_peers import BIG_TXT, Nsd, StubDns, free_port
from executors import DOWN, UP, Monitor
from conftest import require_program
from helpers import healthcheck_payload, one_result_each, run_through_worker


@pytest.fixture(scope="module")
def nsd():
    require_program("nsd", "nsd")
    server = Nsd()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stubs():
    modes = ("silent", "servfail", "refused", "referral", "truncate", "tcp-silent", "spoof")
    servers = {mode: StubDns(mode) for mode in modes}
    yield servers
    for server in servers.values():
        server.close()


def doc(host: str, resolve_type: str, port: int, server: str = "127.0.0.1") -> dict:
    return {"host": host, "resolver_server": server, "port": port, "resolve_type": resolve_type}


async def run(config: dict | str, timeout: int = 2, proxy: dict | None = None):
    """One check through the worker's registry and hard cap, as the worker runs it."""
    text = config if isinstance(config, str) else json.dumps(config)
    monitor = Monitor(id="m1", name="dns test", type="dns", interval=60, timeout=timeout, config=text)
    return await healthcheck.run_check(monitor, proxy, float(timeout))


SOA_UP = ("SOA: Primary NS: ns1.peek.test., Admin: hostmaster.peek.test., Serial: 2024010101, Refresh: 3600, "
          "Retry: 600, Expire: 86400, Min TTL: 300")
UP_CASES = [  # (host, type, exact message)
    ("www.peek.test", "A", "A records: 192.0.2.10, 192.0.2.11"),
    ("www.peek.test", "AAAA", "AAAA records: 2001:db8::10, 2001:db8::1:0:0:11"),
    ("alias.peek.test", "CNAME", "CNAME: www.peek.test."),
    ("peek.test", "MX", "MX records: mail.peek.test. (priority: 10), backup.peek.test. (priority: 20)"),
    ("peek.test", "NS", "NS records: ns1.peek.test., ns2.peek.test."),
    ("192.0.2.10", "PTR", "PTR records: www.peek.test., web.peek.test."),
    ("peek.test", "SOA", SOA_UP),
    ("_sip._tcp.peek.test", "SRV", "SRV records (cname: _sip._tcp.peek.test.): sip1.peek.test.:5060 (priority: 10, "
                                   "weight: 60), sip2.peek.test.:5061 (priority: 20, weight: 10)"),
    ("txt.peek.test", "TXT", "TXT records: v=spf1 -all; part one, part two"),  # 2nd record: two strings joined
    ("peek.test", "CAA", 'CAA records: 0 issue "letsencrypt.org"; 0 iodef "mailto:sec@peek.test"'),
]


@pytest.mark.parametrize("host,resolve_type,message", UP_CASES, ids=[c[1] for c in UP_CASES])
async def test_every_type_is_up_with_gos_message(nsd, host, resolve_type, message):
    r = await run(doc(host, resolve_type, nsd.port))
    assert (r.status, r.message) == (UP, message)
    assert set(r.timings) == {"query"} and r.timings["query"] >= 0


@pytest.mark.parametrize("host,resolve_type,message", UP_CASES, ids=[c[1] for c in UP_CASES])
async def test_lower_case_types_and_an_ipv6_resolver(nsd, host, resolve_type, message):
    r = await run(doc(host, resolve_type.lower(), nsd.port, server="::1"))
    assert (r.status, r.message) == (UP, message)


NXDOMAIN_CASES = [(t, "missing.peek.test") for t in ("A", "AAAA", "CAA", "CNAME", "MX", "NS", "SOA", "SRV", "TXT")]


@pytest.mark.parametrize("resolve_type,host", NXDOMAIN_CASES, ids=[c[0] for c in NXDOMAIN_CASES])
async def test_nxdomain_names_the_server_asked(nsd, resolve_type, host):
    r = await run(doc(host, resolve_type, nsd.port))
    assert (r.status, r.message) == (DOWN, f"DNS lookup failed: lookup {host} on 127.0.0.1:{nsd.port}: no such host")


async def test_ptr_nxdomain_names_the_reverse_name_and_the_server(nsd):
    r = await run(doc("192.0.2.99", "PTR", nsd.port, server="::1"))
    assert (r.status, r.message) == (DOWN, f"DNS lookup failed: lookup 99.2.0.192.in-addr.arpa. on [::1]:{nsd.port}: "
                                           "no such host")


NODATA_CASES = [  # a name that exists without records of the type: NOERROR and an empty answer
    ("txt.peek.test", "A"), ("txt.peek.test", "AAAA"), ("www.peek.test", "CAA"), ("txt.peek.test", "CNAME"),
    ("www.peek.test", "MX"), ("www.peek.test", "NS"), ("192.0.2.20", "PTR"), ("www.peek.test", "SRV"),
    ("www.peek.test", "txt"),  # the message keeps the config's spelling of the type
    ("www.peek.test", "SOA"),  # not a zone apex: the SOA comes in the authority section only
]


@pytest.mark.parametrize("host,resolve_type", NODATA_CASES, ids=[c[1] for c in NODATA_CASES])
async def test_nodata_is_no_records_found(nsd, host, resolve_type):
    r = await run(doc(host, resolve_type, nsd.port))
    assert (r.status, r.message) == (DOWN, f"No {resolve_type} records found for {host}")


async def test_more_up_shapes(nsd):
    port = nsd.port
    cases = [
        (doc("www.peek.test", "CNAME", port), "CNAME: www.peek.test."),  # no CNAME but addresses: the name itself
        (doc("dangling.peek.test", "CNAME", port), "CNAME: gone.peek.test."),  # the CNAME record even if it dangles
        (doc("chain.peek.test", "CNAME", port), "CNAME: alias.peek.test."),  # the first hop, as Go reports it
        (doc("chain.peek.test", "A", port), "A records: 192.0.2.10, 192.0.2.11"),  # CNAMEs followed
        (doc("bytes.peek.test", "TXT", port), "TXT records: caf\u00e9 \ufffd!"),  # a byte that is not UTF-8
        (doc("v6only.peek.test", "CNAME", port), "CNAME: v6only.peek.test."),
        (doc("quoted.peek.test", "CAA", port), 'CAA records: 128 tbs "say \\"hi\\"\\ttab"'),  # Go's %q
        (doc("2001:db8::10", "PTR", port), "PTR records: www.peek.test."),
        (doc("www.peek.test.", "A", port), "A records: 192.0.2.10, 192.0.2.11"),  # a rooted name
        (doc("192.0.2.77", "A", port), "A records: 192.0.2.77"),  # an address answers itself, as in Go
        (doc("2001:db8::1", "AAAA", port), "AAAA records: 2001:db8::1"),
    ]
    for config, message in cases:
        r = await run(config)
        assert (r.status, r.message) == (UP, message), config


async def test_more_down_shapes(nsd):
    port = nsd.port
    cases = [
        (doc("www.peek.test", "XYZ", port), "DNS lookup failed: unsupported record type: XYZ"),
        (doc("www.peek.test", "", port), "DNS lookup failed: unsupported record type: "),
        (doc("not-an-ip", "PTR", port), "DNS lookup failed: lookup not-an-ip: unrecognized address"),
        (doc("bad name", "MX", port), "DNS lookup failed: lookup bad name: no such host"),
        (doc("::1", "A", port), "DNS lookup failed: address ::1: no suitable address found"),
        (doc("badmx.peek.test", "MX", port), f"DNS lookup failed: lookup badmx.peek.test on 127.0.0.1:{port}: "
                                             "DNS response contained records which contain invalid names"),
        (doc("other.example", "A", port), f"DNS lookup failed: lookup other.example on 127.0.0.1:{port}: "
                                          "server misbehaving"),  # nsd refuses names outside its zones
        (doc("www.peek.test", "A", 70000), "DNS lookup failed: lookup www.peek.test on 127.0.0.1:70000: dial udp: "
                                           "address 70000: invalid port"),
        (doc("www.peek.test", "A", port, server="bad_server!"),
         f"DNS lookup failed: lookup www.peek.test on bad_server!:{port}: dial udp: lookup bad_server!: no such host"),
        (json.dumps({**doc("www.peek.test", "A", port), "foo": 1}), 'failed to parse config: json: unknown field "foo"'),
        ('{"host":"www.peek.test","port":"53"}', "failed to parse config: json: cannot unmarshal string into Go "
                                                 "struct field DNSConfig.port of type int"),
    ]
    for config, message in cases:
        r = await run(config)
        assert (r.status, r.message) == (DOWN, message), config


async def test_a_large_txt_set_comes_over_tcp(nsd):
    # over UDP, nsd cannot fit the set into the 1232 bytes the executor offers: it answers truncated
    query = dns.message.make_query("big.peek.test.", "TXT", use_edns=0, payload=1232)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(query.to_wire(), ("127.0.0.1", nsd.port))
        truncated = dns.message.from_wire(s.recv(65535))
    assert truncated.flags & dns.flags.TC and not truncated.answer
    for server in ("127.0.0.1", "::1"):
        r = await run(doc("big.peek.test", "TXT", nsd.port, server=server))
        assert (r.status, r.message) == (UP, "TXT records: " + "; ".join(BIG_TXT))


@pytest.mark.parametrize("host,resolve_type,message", UP_CASES, ids=[c[1] for c in UP_CASES])
async def test_truncated_udp_answers_are_asked_again_over_tcp(stubs, host, resolve_type, message):
    stub = stubs["truncate"]
    r = await run(doc(host, resolve_type, stub.port))
    assert (r.status, r.message) == (UP, message)
    # the CNAME type asks CNAME first: here it holds the answer; PTR asks for the reverse name
    asked = [q for q in stub.tcp_queries if q[1] == resolve_type]
    assert asked and asked == [q for q in stub.udp_queries if q[1] == resolve_type]


async def test_a_silent_server_ends_down_within_the_timeout(stubs):
    stub = stubs["silent"]
    before = len(stub.udp_queries)
    started = time.monotonic()
    r = await run(doc("www.peek.test", "A", stub.port), timeout=1)
    elapsed = time.monotonic() - started
    assert (r.status, r.message) == (DOWN, f"DNS lookup failed: lookup www.peek.test on 127.0.0.1:{stub.port}: "
                                           "i/o timeout")
    assert elapsed < 1.5
    assert len(stub.udp_queries) - before >= 2  # the query was sent again within the timeout


async def test_a_silent_tcp_fallback_still_ends_within_the_timeout(stubs):
    stub = stubs["tcp-silent"]
    started = time.monotonic()
    r = await run(doc("peek.test", "SOA", stub.port), timeout=1)
    assert time.monotonic() - started < 1.5
    assert (r.status, r.message) == (DOWN, f"DNS lookup failed: lookup peek.test on 127.0.0.1:{stub.port}: "
                                           "i/o timeout")


async def test_servfail_is_asked_twice_then_misbehaving(stubs):
    stub = stubs["servfail"]
    before = len(stub.udp_queries)
    r = await run(doc("peek.test", "SOA", stub.port))
    assert (r.status, r.message) == (DOWN, f"DNS lookup failed: lookup peek.test on 127.0.0.1:{stub.port}: "
                                           "server misbehaving")
    assert len(stub.udp_queries) - before == 2


async def test_refused_is_misbehaving_at_once(stubs):
    stub = stubs["refused"]
    before = len(stub.udp_queries)
    r = await run(doc("peek.test", "CAA", stub.port))
    assert (r.status, r.message) == (DOWN, f"DNS lookup failed: lookup peek.test on 127.0.0.1:{stub.port}: "
                                           "server misbehaving")
    assert len(stub.udp_queries) - before == 1


async def test_a_referral_is_a_lame_referral(stubs):
    stub = stubs["referral"]
    r = await run(doc("www.peek.test", "MX", stub.port))
    assert (r.status, r.message) == (DOWN, f"DNS lookup failed: lookup www.peek.test on 127.0.0.1:{stub.port}: "
                                           "lame referral")


async def test_forged_and_garbage_datagrams_are_ignored(stubs):
    stub = stubs["spoof"]
    r = await run(doc("www.peek.test", "A", stub.port))
    assert (r.status, r.message) == (UP, "A records: 192.0.2.10, 192.0.2.11")


async def test_a_closed_port_is_refused_at_once():
    port = free_port()
    r = await run(doc("www.peek.test", "A", port), timeout=5)
    assert r.status == DOWN  # the kernel's port-unreachable, not the timeout
    prefix = f"DNS lookup failed: lookup www.peek.test on 127.0.0.1:{port}: read udp 127.0.0.1:"
    assert r.message.startswith(prefix) and r.message.endswith(f"->127.0.0.1:{port}: read: connection refused")


async def test_a_resolver_given_by_name_is_resolved_and_timed(nsd):
    r = await run(doc("www.peek.test", "A", nsd.port, server="localhost"), proxy={"url": "http://127.0.0.1:9"})
    assert (r.status, r.message) == (UP, "A records: 192.0.2.10, 192.0.2.11")  # and the proxy is ignored
    assert set(r.timings) == {"resolve", "query"}


async def test_ping_ms_is_the_exchange(nsd):
    before = time.time_ns()
    r = await run(doc("peek.test", "SOA", nsd.port))
    after = time.time_ns()
    assert r.status == UP and before <= r.start_ns <= r.end_ns <= after
    assert r.timings["query"] <= (r.end_ns - r.start_ns) / 1e6 + 0.001


def test_every_type_on_uvloop_as_in_the_worker(nsd):
    async def all_types():
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        return await asyncio.gather(*(run(doc(host, t, nsd.port)) for host, t, _ in UP_CASES))

    results = uvloop.run(all_types())
    assert [(r.status, r.message) for r in results] == [(UP, message) for _, _, message in UP_CASES]


# --------------------------------------------------------------------------------------------------
# 100 checks through Redis and the real handler at concurrency 64.

async def test_100_tasks_at_concurrency_64_give_one_result_each(nsd, redis):
    payloads, expected = [], {}
    for i in range(100):
        host, resolve_type, message = UP_CASES[i % len(UP_CASES)]
        if i % 7 == 0:
            host, message = "missing.peek.test", (f"DNS lookup failed: lookup missing.peek.test on "
                                                  f"127.0.0.1:{nsd.port}: no such host")
            resolve_type = "A"
        payloads.append(healthcheck_payload("dns", doc(host, resolve_type, nsd.port), monitor_id=f"m{i}", timeout=5))
        expected[f"m{i}"] = message
    seen = one_result_each(await run_through_worker(redis, payloads))
    for body in seen.values():
        assert body["monitor_type"] == "dns"
        assert body["status"] == (DOWN if body["message"].startswith("DNS lookup failed") else UP)
    assert {monitor_id: body["message"] for monitor_id, body in seen.items()} == expected
