"""`ping`/`icmp` against real hosts in network namespaces (tests/netns_peers.py), in every strategy.

The datagram strategy needs a widened net.ipv4.ping_group_range, so those checks (and most others,
for one set-up) run in a subprocess inside the `client` namespace. Needs root, `ip netns` and
Debian's iputils-ping; skipped without them, failed under CI=true.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, require
from executors import DOWN, UP, ConfigError, Monitor
from executors import ping
from executors._kit import icmp
from executors._kit.gotext import go_duration
from helpers import healthcheck_payload, run_through_worker
from netns_peers import (ANSWERING, PLAIN, PROHIBITED_V6, ROUTER_V4, SILENT, SILENT_DECOYED, UNREACHABLE_V6, V6_NET,
                         Lab, missing_tools, prohibited_v4, unreachable_v4)

STRATEGIES = ("datagram", "raw", "command")
RTT = re.compile(r"^Ping successful, RTT: ([0-9]+(\.[0-9]+)?(ns|µs|ms|s)|([0-9]+h)?([0-9]+m)?[0-9]+(\.[0-9]+)?s)$")
NO_REPLY = "Ping failed: no response received"


def require_tools() -> None:
    require(missing_tools())


@pytest.fixture(scope="module")
def lab():
    require_tools()
    lab = Lab()
    lab.start()
    yield lab
    lab.cleanup()


def monitor(config: dict | str, timeout: int = 2) -> Monitor:
    text = config if isinstance(config, str) else json.dumps(config)
    return Monitor(id="m", type="ping", timeout=timeout, config=text)


def run_check(config: dict | str, budget: float = 2.0):
    return asyncio.run(ping.check(monitor(config), None, budget))


# --------------------------------------------------------------------------------------------------
# Go's texts and the payload

@pytest.mark.parametrize("ns, text", [
    (0, "0s"), (850, "850ns"), (999, "999ns"), (1_000, "1µs"), (12_500, "12.5µs"), (1_500_000, "1.5ms"),
    (12_345_678, "12.345678ms"), (2_500_000_000, "2.5s"), (16_000_000_000, "16s"), (60_000_000_000, "1m0s"),
    (90_000_000_000, "1m30s"), (3_600_000_000_000, "1h0m0s"), (3_723_000_000_001, "1h2m3.000000001s"),
])
def test_rtt_is_written_as_go_duration_text(ns, text):
    assert go_duration(ns) == text


def test_payload_is_peekaping_then_zeros_cut_to_size():
    assert icmp.payload_of(32) == b"Peekaping" + bytes(23)
    assert icmp.payload_of(8) == b"Peekapin"
    assert icmp.payload_of(0) == b""
    assert icmp.payload_of(1400) == b"Peekaping" + bytes(1391)


def test_config_is_decoded_strictly_with_go_texts():
    with pytest.raises(ConfigError, match=r'^failed to parse config: json: unknown field "count"$'):
        run_check({"host": "127.0.0.1", "count": 3})
    with pytest.raises(ConfigError, match=r"^failed to parse config: json: cannot unmarshal string into Go struct "
                                          r"field PingConfig\.packet_size of type int$"):
        run_check('{"host":"127.0.0.1","packet_size":"32"}')
    with pytest.raises(ConfigError, match=r"^failed to parse config: EOF$"):
        run_check("")


def test_bad_sizes_names_and_modes_are_down_with_the_reason(monkeypatch):
    require_tools()
    assert run_check({"host": "127.0.0.1", "packet_size": -1}).message == \
        "Ping failed: invalid packet size -1: must be 0-65507"
    assert run_check({"host": "127.0.0.1", "packet_size": 65508}).message == \
        "Ping failed: packet size 65508 is too large: an IPv4 echo request carries at most 65507 bytes"
    assert run_check({"host": "::1", "packet_size": 65528}).message == \
        "Ping failed: packet size 65528 is too large: an IPv6 echo request carries at most 65527 bytes"
    assert run_check({"host": ""}).message == "Ping failed: no host to ping: the config's host is empty"
    assert run_check({"host": "not a name!"}).message == "Ping failed: lookup not a name!: no such host"
    monkeypatch.setenv("PEEKAPING_PING_MODE", "sonar")
    result = run_check({"host": "127.0.0.1"})
    assert (result.status, result.message) == (DOWN, "Ping failed: PEEKAPING_PING_MODE='sonar' is not one of "
                                                     "auto, datagram, raw, command")
    with pytest.raises(ValueError, match="PEEKAPING_PING_MODE"):
        ping.strategy()


@pytest.mark.parametrize("mode", STRATEGIES)
def test_a_name_that_does_not_resolve_is_down_with_the_lookup_error(mode, monkeypatch):
    require_tools()
    monkeypatch.setenv("PEEKAPING_PING_MODE", mode)
    began = time.monotonic()
    result = run_check({"host": "nohost.invalid"}, budget=2.0)
    assert time.monotonic() - began <= 2.5
    assert result.status == DOWN
    assert result.message.startswith("Ping failed: lookup nohost.invalid"), result.message
    assert result.message.endswith((": no such host", ": i/o timeout", ": temporary failure in name resolution"))
    assert set(result.timings) == {"resolve", "echo"}


@pytest.mark.parametrize("mode", ["raw", "command"])
def test_largest_payloads_go_through_in_the_root_namespace(mode, monkeypatch):
    """Root in the root namespace: raw sockets and the ping program (datagram: see the namespace tests)."""
    require_tools()
    monkeypatch.setenv("PEEKAPING_PING_MODE", mode)
    assert RTT.match(run_check({"host": "127.0.0.1", "packet_size": 65507}).message)
    assert RTT.match(run_check({"host": "::1", "packet_size": 65527}).message)


# --------------------------------------------------------------------------------------------------
# In the namespaces

@pytest.mark.parametrize("mode", [*STRATEGIES, "auto"])
def test_loopback_answers_over_ipv4_and_ipv6_in_every_strategy(lab, mode):
    out = lab.run(lab.client, [{"host": "127.0.0.1"}, {"host": "::1"}, {"host": "127.0.0.1", "packet_size": 0},
                               {"host": "::1", "packet_size": 8}], mode)
    assert out["strategy"] == ("datagram" if mode == "auto" else mode)
    for result in out["results"]:
        assert result["status"] == UP and RTT.match(result["message"]), result
        assert set(result["timings"]) == {"resolve", "echo"}
        assert result["end_ns"] > result["start_ns"]


def test_strategy_order_datagram_then_raw_then_the_ping_program(lab):
    assert lab.run(lab.client, [], "auto")["strategy"] == "datagram"  # ping_group_range allows every group
    assert lab.run(lab.plain, [], "auto")["strategy"] == "raw"  # "1 0": no group; root may open raw sockets
    nobody = lab.run(lab.plain, [{"host": "127.0.0.1"}, {"host": "::1"}], "auto", user=65534)
    assert nobody["strategy"] == "command"  # neither: the setcap'd ping program
    assert [r["status"] for r in nobody["results"]] == [UP, UP], nobody
    refused = lab.run(lab.plain, [{"host": "127.0.0.1"}], "datagram")["results"][0]
    assert refused["message"] == ('Ping failed: cannot open an unprivileged ICMP socket: permission denied '
                                  '(net.ipv4.ping_group_range is "1 0", group 0 is not in it)')
    refused = lab.run(lab.plain, [{"host": "::1"}], "raw", user=65534)["results"][0]
    assert refused["message"] == ("Ping failed: cannot open a raw ICMPv6 socket: operation not permitted "
                                  "(needs root or CAP_NET_RAW)")


@pytest.mark.parametrize("mode", STRATEGIES)
def test_a_host_that_ignores_echo_requests_is_down_within_the_timeout(lab, mode):
    targets = SILENT + (SILENT_DECOYED if mode != "command" else [])
    out = lab.run(lab.client, [{"host": host} for host in targets], mode, timeout=1.0)
    for result in out["results"]:
        assert result["message"] == NO_REPLY, result
        assert result["elapsed"] <= 1.5
        assert set(result["timings"]) == {"resolve", "echo"}


def test_the_ping_program_does_not_take_a_reply_from_another_host(lab):
    """iputils accepts a look-alike reply from another address; the command strategy checks the source."""
    out = lab.run(lab.client, [{"host": SILENT_DECOYED[0]}, {"host": SILENT_DECOYED[1]}], "command", timeout=1.0)
    for result in out["results"]:
        assert result["status"] == DOWN and result["message"].startswith("Ping failed: the reply came from "), result
        assert result["message"].endswith(f", not from {result['config']['host']}")


@pytest.mark.parametrize("mode", STRATEGIES)
def test_icmp_errors_end_the_check_with_their_reason(lab, mode):
    out = lab.run(lab.client, [{"host": unreachable_v4(mode)}, {"host": prohibited_v4(mode)}, {"host": UNREACHABLE_V6},
                               {"host": PROHIBITED_V6}], mode, timeout=2.0)
    messages = [r["message"] for r in out["results"]]
    assert messages[0] == f"Ping failed: destination host unreachable (reported by {ROUTER_V4})"
    assert messages[1] == f"Ping failed: packet filtered (reported by {ROUTER_V4})"
    assert re.match(rf"^Ping failed: destination unreachable: no route \(reported by {V6_NET}[0-9a-f]+\)$", messages[2])
    assert re.match(rf"^Ping failed: destination unreachable: administratively prohibited \(reported by "
                    rf"{V6_NET}[0-9a-f]+\)$", messages[3])
    assert all(r["elapsed"] < 1.5 for r in out["results"])  # answered by the error, not by the timeout


@pytest.mark.parametrize("mode", ["datagram", "raw"])
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_128_concurrent_pings_to_16_hosts_each_get_their_own_reply(lab, mode, loop):
    """Each answering address replies after its own delay, and before every real reply the peer sends
    two look-alikes (wrong identifier; right identifier and sequence from another address). A check
    that took any reply but its own would report an RTT below its host's delay, or UP for a host
    that never answers."""
    jobs = [{"host": host} for _ in range(8) for host in ANSWERING]
    jobs += [{"host": host} for _ in range(4) for host in SILENT_DECOYED]
    seen_before = len(lab.requests())
    out = lab.run(lab.client, jobs, mode, timeout=1.0, loop=loop)
    assert len(out["results"]) == 136
    for result in out["results"]:
        host = result["config"]["host"]
        if host in ANSWERING:
            assert result["status"] == UP and RTT.match(result["message"]), result
            assert result["end_ns"] - result["start_ns"] >= ANSWERING[host] * 1e9, (host, result)
        else:
            assert result["message"] == NO_REPLY, result
    requests = lab.requests()[seen_before:]
    for host in ANSWERING:
        mine = [(r["id"], r["seq"]) for r in requests if r["dst"] == host]
        assert len(mine) == len(set(mine)) == 8, host


@pytest.mark.parametrize("mode", STRATEGIES)
def test_packet_sizes_0_8_32_1400_on_the_wire(lab, mode):
    """The ping program takes the first look-alike reply (see below): it pings the PLAIN addresses."""
    hosts = PLAIN if mode == "command" else [next(h for h in ANSWERING if ":" not in h),
                                             next(h for h in ANSWERING if ":" in h)]
    sizes = (0, 8, 32, 1400)
    seen_before = len(lab.requests())
    out = lab.run(lab.client, [{"host": h, "packet_size": s} for h in hosts for s in sizes], mode)
    assert all(r["status"] == UP for r in out["results"]), out
    requests = lab.requests()[seen_before:]
    for host in hosts:
        payloads = sorted((bytes.fromhex(r["payload"]) for r in requests if r["dst"] == host), key=len)
        assert [len(p) for p in payloads] == [8, 32, 32, 1400]  # 0 means 32
        if mode != "command":  # the ping program sends its own pattern
            assert payloads == [icmp.payload_of(8), icmp.payload_of(32), icmp.payload_of(32), icmp.payload_of(1400)]


def test_a_name_is_pinged_at_its_first_ipv4_address(lab):
    hosts = Path(f"/etc/netns/{lab.client}")  # `ip netns exec` mounts the files here over /etc
    made_parent = not hosts.parent.exists()
    hosts.mkdir(parents=True, exist_ok=True)
    v4, v6 = next(h for h in ANSWERING if ":" not in h), next(h for h in ANSWERING if ":" in h)
    try:
        (hosts / "hosts").write_text(f"127.0.0.1 localhost\n{SILENT[1]} dual.test\n{v4} dual.test\n{v6} six.test\n")
        seen_before = len(lab.requests())
        out = lab.run(lab.client, [{"host": "dual.test"}, {"host": "six.test"}], "datagram")
    finally:
        shutil.rmtree(hosts, ignore_errors=True)
        if made_parent:
            shutil.rmtree(hosts.parent, ignore_errors=True)
    assert [r["status"] for r in out["results"]] == [UP, UP], out
    assert sorted(r["dst"] for r in lab.requests()[seen_before:]) == sorted([v4, v6])


def test_check_command_prints_the_phase_timings(lab):
    env = dict(os.environ, PEEKAPING_PING_MODE="datagram")
    proc = subprocess.run(["ip", "netns", "exec", lab.client, sys.executable, str(ROOT / "worker.py"), "check", "icmp",
                           '{"host":"::1","packet_size":8}', "--json", "--timeout", "2"],
                          capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["status"] == UP and RTT.match(out["message"]) and set(out["timings"]) == {"resolve", "echo"}


# --------------------------------------------------------------------------------------------------
# Through Redis


async def test_100_tasks_through_redis_at_concurrency_64_give_one_result_each(redis):
    require_tools()
    ids = [f"ping-{i}" for i in range(100)]
    payloads = []
    for i, monitor_id in enumerate(ids):
        kind, host = ("ping", "127.0.0.1") if i % 2 else ("icmp", "::1")
        payloads.append(healthcheck_payload(kind, {"host": host, "packet_size": 8 * (i % 3)}, monitor_id=monitor_id,
                                            timeout=5))
    # go_strict: no key the Go ingester lacks
    bodies = await run_through_worker(redis, payloads, go_strict=True, queues={"healthcheck": 1})
    assert sorted(b["monitor_id"] for b in bodies) == sorted(ids)
    for body in bodies:
        assert body["status"] == UP and RTT.match(body["message"]), body
        assert body["monitor_type"] == ("ping" if int(body["monitor_id"].split("-")[1]) % 2 else "icmp")
