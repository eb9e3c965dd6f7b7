"""Sites end to end: a router and two edge workers (`--site berlin`, `--site paris`) as processes on a private
Redis, tasks produced as Peekaping's producer does, results read from the ingester queue."""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest
from conftest import RedisServer
from helpers import wait_until
from router_helpers import Proc, Targets, produce, results, wait_for

import asynq_protocol as aq

PARIS_IDS = [f"paris-id-{i}" for i in range(20)]
SLOW_AT_PARIS = "paris-slow"  # named by the paris rule's ids; its check never ends before Paris is killed
RULES = f"""
unmatched = "run"

[[rule]]
site = "berlin"
names = ["[berlin]*"]
hosts = ["127.0.0.3/32", "localhost"]

[[rule]]
site = "lyon"
names = ["[lyon]*"]

[[rule]]
site = "paris"
ids = {PARIS_IDS + [SLOW_AT_PARIS]!r}
types = ["push"]
hosts = ["127.0.0.2/32"]
""".replace("'", '"')
WORKER_IDS = {"berlin": "berlin-1", "paris": "paris-1", "lyon": "lyon-1", None: "router"}
OFFLINE_PARIS = 'No worker online for site "paris"'


@pytest.fixture(scope="module")
def redis_srv():
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is required under CI")
        pytest.skip("redis-server is not installed")
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def targets():
    t = Targets()
    yield t
    t.close()


class Fleet:
    def __init__(self, url: str, tmp) -> None:
        self.url, self.tmp, self.procs, self.started = url, tmp, {}, 0
        self.rules = tmp / "rules.toml"
        self.rules.write_text(RULES)

    def start(self, name: str, url: str | None = None) -> Proc:
        self.started += 1
        if name == "router":
            args = ["route", str(self.rules), "--worker-id", "router", "--shutdown-timeout", "1"]
        else:
            args = ["--site", name, "--worker-id", WORKER_IDS[name], "--concurrency", "64"]
        proc = Proc([*args, "--redis-url", url or self.url, "--result-extensions"],
                    self.tmp / f"{name}-{self.started}.log")
        self.procs[name] = proc
        return proc

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.proc.poll() is None:
                proc.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def fleet(redis_srv, tmp_path_factory):
    """Edge workers first, then the router, so its first look at asynq:servers finds both sites."""
    import redis as sync_redis

    fleet = Fleet(redis_srv.url, tmp_path_factory.mktemp("fleet"))
    client = sync_redis.Redis.from_url(redis_srv.url)
    try:
        fleet.start("berlin")
        fleet.start("paris")
        wait_for(lambda: client.zcard(aq.ALL_SERVERS) == 2, 20, "edge workers registered")
        router = fleet.start("router")
        wait_for(lambda: router.logged("worker started"), 20, "router started")
        yield fleet
    finally:
        fleet.close()
        client.close()


@pytest.fixture
async def r(redis_srv):
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_srv.url, protocol=2)
    yield client
    await client.aclose()


@pytest.fixture
async def client(r):
    broker = aq.Broker(r)
    yield aq.Client(broker)
    await broker.close()


async def wait_results(r, ids, timeout: float) -> dict[str, list[dict]]:
    async def all_in() -> bool:
        return set(ids) <= set(await results(r))
    try:
        await wait_until(all_in, timeout, 0.1)
    except AssertionError:
        missing = sorted(set(ids) - set(await results(r)))
        raise AssertionError(f"no result within {timeout} s for {len(missing)} tasks: {missing[:10]}") from None
    got = await results(r)
    return {i: got[i] for i in ids}


async def queue_counts(r, queue: str) -> dict[str, int]:
    p = f"asynq:{{{queue}}}:"
    return {"pending": await r.llen(p + "pending"), "active": await r.llen(p + "active"),
            "archived": await r.zcard(p + "archived"), "retry": await r.zcard(p + "retry")}


async def assert_all_queues_empty(r) -> None:
    for queue in ("healthcheck", "healthcheck-berlin", "healthcheck-paris"):
        assert await queue_counts(r, queue) == {"pending": 0, "active": 0, "archived": 0, "retry": 0}, queue


async def test_each_task_is_checked_once_at_the_site_its_rule_names(fleet, r, client, targets):
    tcp1, tcp3 = targets.tcp["127.0.0.1"], targets.tcp["127.0.0.3"]
    plan: dict[str, tuple[str | None, str]] = {}  # monitor id -> (site, type)
    for i in range(40):  # names
        plan[f"name-{i}"] = ("berlin", "tcp")
        await produce(client, "tcp", {"host": "127.0.0.1", "port": tcp1}, f"name-{i}", name=f"[Berlin] switch {i}")
    for i in range(30):  # hosts: CIDR
        plan[f"cidr-{i}"] = ("berlin", "tcp")
        await produce(client, "tcp", {"host": "127.0.0.3", "port": tcp3}, f"cidr-{i}")
    for i in range(10):  # hosts: a name
        plan[f"local-{i}"] = ("berlin", "tcp")
        await produce(client, "tcp", {"host": "localhost", "port": tcp1}, f"local-{i}")
    for i in range(30):  # hosts: CIDR on the address in a URL
        plan[f"web-{i}"] = ("paris", "http")
        await produce(client, "http", {"url": targets.http_url, "accepted_statuscodes": ["2XX"]}, f"web-{i}")
    for i in range(30):  # types
        plan[f"push-{i}"] = ("paris", "push")
        await produce(client, "push", {"pushToken": "t"}, f"push-{i}")
    for monitor_id in PARIS_IDS:  # ids
        plan[monitor_id] = ("paris", "tcp")
        await produce(client, "tcp", {"host": "127.0.0.1", "port": tcp1}, monitor_id)
    for i in range(40):  # unmatched: run by the router
        plan[f"other-{i}"] = (None, "tcp")
        await produce(client, "tcp", {"host": "127.0.0.1", "port": tcp1}, f"other-{i}")
    assert len(plan) == 200

    got = await wait_results(r, plan, 30)
    for monitor_id, (site, monitor_type) in plan.items():
        assert len(got[monitor_id]) == 1, (monitor_id, got[monitor_id])
        body = got[monitor_id][0]
        assert (body.get("site"), body["worker"]) == (site, WORKER_IDS[site]), (monitor_id, body)
        if monitor_type == "push":
            assert (body["status"], body["message"]) == (0, "No push received yet")
        else:
            assert body["status"] == 1, (monitor_id, body)
    await wait_until(lambda: _empty(r), 10)
    await assert_all_queues_empty(r)


async def _empty(r) -> bool:
    for queue in ("healthcheck", "healthcheck-berlin", "healthcheck-paris"):
        counts = await queue_counts(r, queue)
        if counts["pending"] or counts["active"]:
            return False
    return True


async def test_offline_site_gets_down_results_then_is_checked_again_once_back(fleet, r, client, targets,
                                                                              hanging_port):
    tcp3 = targets.tcp["127.0.0.3"]
    await produce(client, "tcp", {"host": "127.0.0.1", "port": hanging_port}, SLOW_AT_PARIS)
    slow_key = f"healthcheck:{SLOW_AT_PARIS}".encode()
    await wait_until(lambda: _has(r.lrange("asynq:{healthcheck-paris}:active", 0, -1), slow_key), 10)
    killed = time.monotonic()
    assert fleet.procs["paris"].stop(signal.SIGKILL) == -signal.SIGKILL  # its registration lasts up to 10 s
    router = fleet.procs["router"]
    await wait_until(lambda: _async(router.logged("site offline: no live worker serves its queue", site="paris")), 15)

    # Tasks forwarded just before Paris stopped wait in its queue: the sweep reports them.
    waiting = [f"waiting-{i}" for i in range(5)]
    for monitor_id in waiting:
        await produce(client, "http", {"url": targets.http_url, "accepted_statuscodes": ["2XX"]}, monitor_id,
                      queue="healthcheck-paris")
    new = [f"off-push-{i}" for i in range(5)] + [f"off-web-{i}" for i in range(5)]
    for monitor_id in new:
        if "push" in monitor_id:
            await produce(client, "push", {}, monitor_id)
        else:
            await produce(client, "http", {"url": targets.http_url, "accepted_statuscodes": ["2XX"]}, monitor_id)
    berlin = [f"still-{i}" for i in range(5)]
    for monitor_id in berlin:
        await produce(client, "tcp", {"host": "127.0.0.3", "port": tcp3}, monitor_id)

    # Within one heartbeat period and the task timeout of the kill; the check Paris had in progress too.
    got = await wait_results(r, [SLOW_AT_PARIS] + waiting + new + berlin, killed + 5 + 16 + 1 - time.monotonic())
    for monitor_id in [SLOW_AT_PARIS] + waiting + new:
        (body,) = got[monitor_id]
        assert (body["status"], body["message"], body["worker"]) == (0, OFFLINE_PARIS, "router"), body
        assert "site" not in body  # the router runs at no site; the message names the site
    for monitor_id in berlin:
        (body,) = got[monitor_id]
        assert (body["status"], body["site"]) == (1, "berlin")
    assert (await queue_counts(r, "healthcheck-paris"))["pending"] == 0

    paris = fleet.start("paris")
    await wait_until(lambda: _async(router.logged("site online again", site="paris")), 15)
    assert paris.proc.poll() is None
    back = [f"back-{i}" for i in range(10)]
    for monitor_id in back:
        await produce(client, "http", {"url": targets.http_url, "accepted_statuscodes": ["2XX"]}, monitor_id)
    got = await wait_results(r, back, 20)
    for monitor_id in back:
        (body,) = got[monitor_id]
        assert (body["status"], body["site"], body["worker"]) == (1, "paris", "paris-1"), body
    await wait_until(lambda: _empty(r), 10)
    await assert_all_queues_empty(r)


async def test_sigterm_and_kill_of_the_router_lose_no_task(fleet, r, client, targets, hanging_port):
    tcp3 = targets.tcp["127.0.0.3"]
    slow = [f"slow-{i}" for i in range(5)]  # run by the router (unmatched), still in progress at each stop
    for monitor_id in slow:
        await produce(client, "tcp", {"host": "127.0.0.1", "port": hanging_port}, monitor_id, timeout=3)
    routed = [f"routed-{i}" for i in range(100)]
    for monitor_id in routed[:50]:
        await produce(client, "tcp", {"host": "127.0.0.3", "port": tcp3}, monitor_id)
    slow_keys = {f"healthcheck:{m}".encode() for m in slow}

    async def slow_active() -> bool:
        return slow_keys <= set(await r.lrange("asynq:{healthcheck}:active", 0, -1))

    await wait_results(r, routed[:50], 20)
    await wait_until(slow_active, 10)
    assert fleet.procs["router"].stop(signal.SIGTERM) == 0  # --shutdown-timeout 1: the slow checks are requeued
    assert set(await r.lrange("asynq:{healthcheck}:pending", 0, -1)) == slow_keys

    fleet.start("router")
    await wait_until(slow_active, 10)
    assert fleet.procs["router"].stop(signal.SIGKILL) == -signal.SIGKILL
    assert set(await r.lrange("asynq:{healthcheck}:active", 0, -1)) == slow_keys
    for monitor_id in routed[50:]:
        await produce(client, "tcp", {"host": "127.0.0.3", "port": tcp3}, monitor_id)

    router = fleet.start("router")  # puts the dead router's tasks back once no live server lists them
    got = await wait_results(r, slow + routed, 35)
    for monitor_id in slow:
        (body,) = got[monitor_id]
        assert body["status"] == 0 and "TCP connection failed" in body["message"], body
        assert body["worker"] == "router"
    for monitor_id in routed:
        (body,) = got[monitor_id]
        assert (body["status"], body["site"]) == (1, "berlin"), body
    assert router.logged("requeued a task its server left active", queue="healthcheck")
    await wait_until(lambda: _empty(r), 10)
    await assert_all_queues_empty(r)


async def _async(value):
    return value


async def _has(aw, item) -> bool:
    return item in await aw


async def test_an_edge_worker_runs_under_the_minimal_acl_its_acl_rule_prints(fleet, r, client, targets, redis_srv):
    import subprocess
    import sys

    from conftest import ROOT

    line = subprocess.run([sys.executable, str(ROOT / "worker.py"), "--acl-rule", "--site", "lyon"], check=True,
                          capture_output=True, text=True, timeout=60).stdout.strip()
    assert "~asynq:{healthcheck-lyon}:*" in line and "~asynq:{healthcheck}:*" not in line
    await r.execute_command(*line.replace("CHANGE-ME", "edge-secret").split())
    url = redis_srv.url.replace("redis://", "redis://peekaping-worker:edge-secret@")
    lyon = fleet.start("lyon", url)
    router = fleet.procs["router"]
    await wait_until(lambda: _async(router.logged("site online again", site="lyon")), 15)
    ids = [f"lyon-{i}" for i in range(5)]
    for monitor_id in ids:
        await produce(client, "tcp", {"host": "127.0.0.1", "port": targets.tcp["127.0.0.1"]}, monitor_id,
                      name=f"[lyon] sensor {monitor_id}")
    got = await wait_results(r, ids, 20)
    for monitor_id in ids:
        (body,) = got[monitor_id]
        assert (body["status"], body["site"], body["worker"]) == (1, "lyon", "lyon-1"), body
    assert lyon.logged("worker started", queues="healthcheck-lyon:5")
    assert not any(line.get("level") in ("warn", "error") for line in lyon.lines()), lyon.lines()
