"""Hostile targets: a server dribbling one byte per second, an endless body, a redirect loop and a TLS
handshake that never completes. Each check ends DOWN within timeout + 1 s, and the process RSS stays
within 50 MB of idle while many of them run at once (on uvloop, as in the worker)."""

from __future__ import annotations

import asyncio
import threading
import time

import psutil
import pytest
import uvloop

from http_peers import Hostile, cfg, peer, run

from executors import DOWN

TIMEOUT = 2.0
AWAITING = "context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
READING = ("Failed to read response body: context deadline exceeded "
           "(Client.Timeout or context cancellation while reading body)")


@pytest.fixture(scope="module")
def hostile():
    servers = {kind: Hostile(kind) for kind in ("dribble", "endless", "tls-stall")}
    yield servers
    for s in servers.values():
        s.close()


def targets(hostile) -> list[tuple[str, dict, str]]:
    loop_url = peer("http").url("/loop")
    return [
        ("dribble", cfg(f"http://127.0.0.1:{hostile['dribble'].port}/"), AWAITING),
        ("endless", cfg(f"http://127.0.0.1:{hostile['endless'].port}/"), READING),
        ("endless+keyword", cfg(f"http://127.0.0.1:{hostile['endless'].port}/", keyword="never"), READING),
        ("redirect-loop", cfg(loop_url, max_redirects=10_000_000), AWAITING),
        ("tls-stall", cfg(f"https://127.0.0.1:{hostile['tls-stall'].port}/"), AWAITING),
    ]


async def timed(doc: dict) -> tuple[float, object]:
    started = time.monotonic()
    r = await run(doc, timeout=TIMEOUT)
    return time.monotonic() - started, r


def test_each_hostile_target_is_down_in_time(hostile):
    async def each():
        cases = targets(hostile)
        outcomes = await asyncio.gather(*(timed(doc) for _, doc, _ in cases))
        return [(name, expected, outcome) for (name, _, expected), outcome in zip(cases, outcomes)]

    for name, expected, (took, r) in uvloop.run(each()):
        assert r.status == DOWN, name
        assert r.message.endswith(expected), (name, r.message)
        assert TIMEOUT - 0.1 <= took <= TIMEOUT + 1.0, (name, took)


def test_redirect_loop_with_a_limit_stops_at_the_limit():
    async def once():
        return await timed(cfg(peer("http").url("/loop"), max_redirects=10))

    took, r = uvloop.run(once())
    assert r.message == 'Get "/loop": too many redirects: followed 11 redirects, maximum allowed is 10'
    assert took < 1.0


def test_memory_stays_bounded_under_many_hostile_checks(hostile):
    proc = psutil.Process()
    copies = 10

    async def warm():
        await run(cfg(peer("http").url("/status/200")), timeout=TIMEOUT)

    uvloop.run(warm())
    idle = proc.memory_info().rss
    peak = [idle]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    async def storm():
        docs = [doc for _, doc, _ in targets(hostile)] * copies
        return await asyncio.gather(*(timed(doc) for doc in docs))

    try:
        outcomes = uvloop.run(storm())
    finally:
        stop.set()
        sampler.join()
    assert len(outcomes) == 5 * copies
    for took, r in outcomes:
        assert r.status == DOWN
        assert took <= TIMEOUT + 1.0
    grown = (peak[0] - idle) / 2**20
    print(f"RSS idle {idle / 2**20:.1f} MiB, peak {peak[0] / 2**20:.1f} MiB, grown {grown:.1f} MiB")
    assert grown < 50, f"RSS grew by {grown:.1f} MiB"
