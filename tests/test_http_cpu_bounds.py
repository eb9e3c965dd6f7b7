"""What a hostile body or a huge config may cost one check, run in-process on uvloop as the worker runs
it: gzip is inflated only up to the body cap, work on a body never stalls the loop for long and stops
when its check times out, and caches keyed by config or URL do not hold large configs.

The targets (tests/cpu_peers.py) run in a child process so their CPU is not counted here.
"""

from __future__ import annotations

import json
import time

import pytest
import uvloop

import cpu_peers
from http_peers import cfg, run

from executors import DOWN, UP
from executors._kit import http1 as _http1, limits as _limits
from executors import http as http_executor

QUERY_FAILED = "JSON query validation failed: query '{q}' with condition '==' and expected value '1'"


@pytest.fixture(scope="module")
def target():
    proc, port = cpu_peers.start()
    yield f"http://127.0.0.1:{port}"
    cpu_peers.stop(proc)


def test_gzip_bomb_is_inflated_only_up_to_the_body_cap(target):
    """1 GiB of zeros in 1 MB of gzip: judged on its first MiB, at the CPU cost of reading 1 MB
    (the unbounded inflate cost ~2.8 s of CPU per check on this machine)."""
    async def checks():
        out = []
        for keyword in ("keyword-at-start", "keyword-at-end", ""):
            cpu = time.process_time()
            r, _, lag = await cpu_peers.with_lag(run(cfg(f"{target}/bomb", keyword=keyword), "http-keyword", timeout=10))
            out.append((keyword, r, time.process_time() - cpu, lag))
        return out

    for keyword, r, cpu, lag in uvloop.run(checks()):
        print(f"bomb, keyword {keyword!r}: {r.message!r}, CPU {cpu * 1000:.0f} ms, loop lag {lag * 1000:.1f} ms")
        if keyword == "keyword-at-end":  # beyond the first MiB: not seen, as documented
            assert (r.status, r.message) == (DOWN, "Keyword check failed: keyword 'keyword-at-end' not found in response")
        else:
            assert (r.status, r.message) == (UP, "200 - 200 OK")
        assert cpu < 0.5, f"{cpu:.2f} s of CPU for one bomb"
        assert lag < 0.1, f"loop stalled {lag * 1000:.0f} ms"


def test_endless_gzip_body_is_down_at_the_timeout(target):
    """A gzip stream that never ends is read (raw, past the cap) until the timeout, as an endless plain body is."""
    async def check():
        started = time.monotonic()
        r = await run(cfg(f"{target}/endless-bomb", keyword="x"), "http-keyword", timeout=2)
        return r, time.monotonic() - started

    r, took = uvloop.run(check())
    print(f"endless gzip: {r.message!r} after {took:.2f} s")
    assert (r.status, r.message) == (DOWN, "Failed to read response body: context deadline exceeded "
                                           "(Client.Timeout or context cancellation while reading body)")
    assert 1.9 <= took <= 3.0, took


def test_json_query_on_a_deeply_nested_body_keeps_the_loop_turning(target):
    """GJSON on 1 MiB of nested arrays takes ~0.3-0.8 s of CPU; the loop must keep turning meanwhile
    (it stalled 0.84 s when the query ran on the loop)."""
    body = cpu_peers.deep_json().decode()
    query = "#.id"
    expected = http_executor.json_check(body, query, "==", "1")

    async def check():
        doc = cfg(f"{target}/deep", json_query=query, json_condition="==", expected_value="1")
        result, _, lag = await cpu_peers.with_lag(run(doc, "http-json-query", timeout=10))
        return result, lag

    r, lag = uvloop.run(check())
    print(f"deep JSON, {query}: {r.message!r}, loop lag {lag * 1000:.1f} ms")
    assert expected == (False, None)
    assert (r.status, r.message) == (DOWN, QUERY_FAILED.format(q=query))
    assert lag < 0.1, f"loop stalled {lag * 1000:.0f} ms"


def test_body_work_of_a_timed_out_check_stops_with_it(target):
    """`@pretty` on 1 MiB of nesting is quadratic (75 s of CPU when run to the end): the check is DOWN
    at its timeout and the abandoned work stops instead of burning CPU afterwards."""
    async def check():
        started = time.monotonic()
        r = await run(cfg(f"{target}/deep", json_query="@pretty", expected_value="x"), "http-json-query", timeout=2)
        return r, time.monotonic() - started

    r, took = uvloop.run(check())
    cpu = time.process_time()
    time.sleep(1.0)
    after = time.process_time() - cpu
    print(f"@pretty on deep JSON: {r.message!r} after {took:.2f} s; CPU in the next second {after * 1000:.0f} ms")
    assert r.status == DOWN and "context deadline exceeded" in r.message
    assert took < 3.0
    assert after < 0.3, f"abandoned work still ran {after:.2f} s of CPU in 1 s"


def test_offloaded_work_runs_inline_when_quick_and_moves_off_the_loop_when_not():
    """Small work returns on the loop thread; work that outlives the inline slice finishes on a lane thread."""
    import threading

    def where(n: int) -> tuple[str, int]:
        total = 0
        for i in range(n):
            if not i % 1000:
                _limits.checkpoint()
            total += i
        return threading.current_thread().name, total

    async def both():
        return await _limits.offload(where, 10), await _limits.offload(where, 3_000_000)

    (quick, a), (slow, b) = uvloop.run(both())
    assert (quick, a) == ("MainThread", 45)
    assert slow == "body-work" and b == sum(range(3_000_000))


def test_large_distinct_configs_and_long_urls_are_not_held_by_caches(target):
    """40 configs with distinct 1 MB bodies and 40 distinct 200 KB URLs leave the plan and URL caches
    within their byte bounds (they held ~3 copies of every config before), while a small config is
    still planned once."""
    plans, urls = http_executor._plans, _http1._urls
    plans.clear()  # the caches are per process: measure what this test's configs leave, not earlier tests'
    urls.clear()

    async def checks():
        out = []
        for i in range(40):
            big = cfg(f"{target}/sink", method="POST", encoding="text", body=f"{i:04d}" + "x" * (1 << 20))
            long_url = cfg(f"{target}/sink?q={i:04d}" + "y" * 200_000)
            out.append(await run(big))
            out.append(await run(long_url))
        return out

    results = uvloop.run(checks())
    assert all(r.status == UP for r in results), {r.message for r in results}
    print(f"plan cache {len(plans)} entries, {plans.bytes / 2**20:.2f} MiB; "
          f"URL cache {len(urls)} entries, {urls.bytes / 2**20:.2f} MiB")
    assert plans.bytes <= plans.max_bytes and urls.bytes <= urls.max_bytes
    assert plans.bytes < 2 << 20 and urls.bytes < 1 << 20  # none of the large ones is held
    assert not [key for key in list(plans._data) + list(urls._data) if len(key) > 100_000]
    small = json.dumps(cfg(f"{target}/sink"))
    assert http_executor._plan(small) is http_executor._plan(small)


def test_byte_bounded_cache_evicts_by_size_and_skips_oversized_values():
    cache = _limits.BoundedCache(max_bytes=1000, max_entries=100, max_item=400)
    for i in range(10):
        cache.put(i, f"v{i}", 300)
    assert cache.bytes <= 1000 and len(cache) == 3 and cache.get(9) == "v9" and cache.get(0) is None
    cache.put("big", "x", 401)
    assert cache.get("big") is None
