"""`peekaping-worker route RULES.toml`: each health check goes to the site that can reach its target.

Peekaping's producer puts every check into the `healthcheck` queue. The router consumes that queue as an
Asynq server (worker.Server: leases, heartbeats, graceful shutdown) and, per task, by the rules in
`sites_rules`:
  * forwards it unchanged (payload bytes and options) into `healthcheck-<site>`, which the edge workers
    started with `--site <site>` serve; or runs it itself (`unmatched = "run"`), or queues it elsewhere
    (`unmatched = "queue:<name>"`);
  * when no live, active server lists the site's queue in `asynq:servers`, does what the rule's `offline`
    says: a DOWN result `No worker online for site "<site>"`, run it itself, or queue it anyway. Tasks
    already waiting in the queue of a site that went offline get the same (the sweep, every second).
Forwarding is one Lua script that enqueues into the site queue and marks the original `forwarded`; the
original is then acknowledged as any task. A re-delivered original (router killed in between) is
acknowledged without a second copy, and the router's recoverer puts back tasks a dead router left
active (once no live server lists them and their lease has gone 12 s without extension) instead of
archiving them, so killing a router loses no check.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import signal
import sys
import time
from collections import Counter
from typing import Any

from housekeeping import archive_corrupt, every
from settings import ConfigurationError, _fields, _Throttle, build_parser, load_settings, redis_client, setup_logging
from sites_rules import SOURCE_QUEUE, Decision, Rules, RulesError, load_rules
from worker import HEALTHCHECK_TASK, Server, Task, TaskError, _cancel, _event_loop_runner, result_origin

log = logging.getLogger("peekaping.worker")

OFFLINE_MESSAGE = 'No worker online for site "{site}"'

# KEYS: original task, target task, target pending, asynq:queues.
# ARGV: id, target msg, target queue, now ns, target unique key ("" = none), original unique key ("" = none),
#       unique TTL when the original's lock has expired, target key prefix.
# Returns 1 enqueued, 0 the target queue holds a task with that id, -1 the unique lock is held,
# 2 already forwarded (a re-delivery). An archived or completed task with the id in the target queue is
# replaced, as Peekaping's producer deletes an archived healthcheck:<id> that blocks its next enqueue.
FORWARD = """
if redis.call("HEXISTS", KEYS[1], "forwarded") == 1 then return 2 end
local state = redis.call("HGET", KEYS[2], "state")
if state == "archived" or state == "completed" then
  redis.call("ZREM", ARGV[8] .. state, ARGV[1])
  redis.call("DEL", KEYS[2])
  state = false
end
local result = 1
if state then
  result = 0
elseif ARGV[5] ~= "" then
  local ttl = -2
  if ARGV[6] ~= "" then ttl = redis.call("TTL", ARGV[6]) end
  if ttl < 1 then ttl = tonumber(ARGV[7]) end
  if not redis.call("SET", ARGV[5], ARGV[1], "NX", "EX", ttl) then result = -1 end
end
if result == 1 then
  if ARGV[5] ~= "" then
    redis.call("HSET", KEYS[2], "msg", ARGV[2], "state", "pending", "pending_since", ARGV[4], "unique_key", ARGV[5])
  else
    redis.call("HSET", KEYS[2], "msg", ARGV[2], "state", "pending", "pending_since", ARGV[4])
  end
  redis.call("LPUSH", KEYS[3], ARGV[1])
  redis.call("SADD", KEYS[4], ARGV[3])
end
if redis.call("EXISTS", KEYS[1]) == 1 then redis.call("HSET", KEYS[1], "forwarded", ARGV[3]) end
return result
"""
# Back to the tail of pending (taken last): for a swept task the router leaves in its queue.
# KEYS: active, lease, pending, task. ARGV: id, workers key of the router.
PUT_BACK = """
if redis.call("LREM", KEYS[1], 0, ARGV[1]) == 0 then return 0 end
redis.call("ZREM", KEYS[2], ARGV[1])
redis.call("HSET", KEYS[4], "state", "pending")
redis.call("LPUSH", KEYS[3], ARGV[1])
redis.call("HDEL", ARGV[2], ARGV[1])
return 1
"""
# Ids whose lease ends within ARGV[1] s (Redis clock) and that no live server lists in its workers hash.
# KEYS: lease, asynq:workers.
ORPHANS = """
local now = tonumber(redis.call("TIME")[1])
local ids = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", now + tonumber(ARGV[1]))
if #ids == 0 then return ids end
local workers = redis.call("ZRANGEBYSCORE", KEYS[2], now, "+inf")
local out = {}
for _, id in ipairs(ids) do
  local listed = false
  for _, w in ipairs(workers) do
    if redis.pcall("HEXISTS", w, id) == 1 then listed = true break end
  end
  if not listed then out[#out+1] = id end
end
return out
"""
SCRIPTS = {"forward": FORWARD, "put_back": PUT_BACK, "orphans": ORPHANS}
_SHAS = {name: hashlib.sha1(body.encode()).hexdigest() for name, body in SCRIPTS.items()}


class ScriptCalls:
    """The router's scripts, sent with EVALSHA and coalesced into pipelines: forwards made at the same
    time cost one round trip. Kept apart from asynq_scripts, whose commands make the workers' ACL rule."""

    BATCH = 256

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self._pending: list[tuple[str, list, list, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None

    def call(self, name: str, keys: list, args: list) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((name, keys, args, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        return future

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:self.BATCH], self._pending[self.BATCH:]
            try:
                replies = await self._execute(batch)
                if any(_is_noscript(r) for r in replies):
                    pipe = self.redis.pipeline(transaction=False)
                    for body in SCRIPTS.values():
                        pipe.script_load(body)
                    await pipe.execute()
                    replies = await self._execute(batch)
            except Exception as exc:  # connection trouble: every caller sees it
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (*_, future), reply in zip(batch, replies):
                if not future.done():
                    (future.set_exception if isinstance(reply, Exception) else future.set_result)(reply)

    async def _execute(self, batch: list) -> list:
        pipe = self.redis.pipeline(transaction=False)
        for name, keys, args, _ in batch:
            pipe.evalsha(_SHAS[name], len(keys), *keys, *args)
        return await pipe.execute(raise_on_error=False)


def _is_noscript(reply: Any) -> bool:
    return isinstance(reply, Exception) and (type(reply).__name__ == "NoScriptError" or "NOSCRIPT" in str(reply))


class LiveQueues:
    """The queues that live, active Asynq servers (Go's too) serve, as `asynq:servers` lists them."""

    STALE_AFTER = 15.0  # without a successful read for this long, every queue counts as served

    def __init__(self) -> None:
        self.queues: set[str] = set()
        self.read_at: float | None = None

    async def refresh(self, redis: Any) -> None:
        from asynq_protocol import ALL_SERVERS, ServerInfo

        seconds, _ = await redis.time()
        members = await redis.zrangebyscore(ALL_SERVERS, seconds, "+inf")
        queues: set[str] = set()
        for raw in await redis.mget(members) if members else []:
            info = ServerInfo()
            try:
                info.ParseFromString(raw or b"")
            except Exception:  # not a ServerInfo: not a server we can count on
                continue
            if info.status == "active":  # "stopped" (SIGTSTP) and "closed" take no new tasks
                queues.update(q for q, priority in info.queues.items() if priority > 0)
        self.queues, self.read_at = queues, time.monotonic()

    def serves(self, queue: str) -> bool:
        """False only when a recent read found no live server for `queue`: an unknown state is not offline."""
        if self.read_at is None or time.monotonic() - self.read_at > self.STALE_AFTER:
            return True
        return queue in self.queues


class Router(Server):
    """An Asynq server on `healthcheck` whose handler routes each task by the rules."""

    RECOVER_INTERVAL = 2.0
    LIVE_INTERVAL = 1.0
    SWEEP_INTERVAL = 1.0
    STATS_INTERVAL = 60.0
    ORPHAN_AFTER = 12.0  # a lease not extended for this long (servers extend every 5 s) and listed by no live server

    def __init__(self, redis: Any, rules: Rules, *, concurrency: int = 128, shutdown_timeout: float = 8.0) -> None:
        super().__init__(redis, {}, queues={SOURCE_QUEUE: 1}, concurrency=concurrency, strict_priority=True,
                         shutdown_timeout=shutdown_timeout)
        self.rules = rules
        self.live = LiveQueues()
        self.scripts = ScriptCalls(redis)
        self.counts: Counter = Counter()  # (what, site) -> tasks, logged every STATS_INTERVAL
        self._swept: dict[str, tuple[str, str]] = {}  # task id -> (site, offline action) of tasks the sweep took
        self._kept: dict[str, set[bytes]] = {}  # queue -> ids the sweep left there (offline = "queue")
        self._offline_sites: set[str] | None = None
        self.report_with(False, {})
        self.handlers[HEALTHCHECK_TASK] = self.route

    def report_with(self, extensions: bool, origin: dict) -> None:
        """How results the router makes itself are written (--result-extensions and their origin fields)."""
        from asynq_protocol import Client
        from healthcheck import healthcheck_handler

        self.client = Client(self.broker)
        self.extensions, self.origin = extensions, origin
        self.run_here = healthcheck_handler(self.client, extensions, origin)

    async def run(self) -> None:
        spawn = asyncio.get_running_loop().create_task
        loops = [spawn(every(self, self.LIVE_INTERVAL, self._refresh_live, now=True), name="live-servers"),
                 spawn(every(self, self.STATS_INTERVAL, self._log_counts), name="router-stats")]
        sweeper = spawn(self._sweeper(), name="sweep")
        try:
            await super().run()
        finally:
            self._stop.set()
            done, _ = await asyncio.wait({sweeper}, timeout=10)  # it stops at its next turn
            if not done:
                await _cancel(sweeper)
            for task in loops:
                await _cancel(task)
            self._log_counts()

    # --- the handler -------------------------------------------------------------------------------
    async def route(self, task: Task) -> None:
        if task.queue != SOURCE_QUEUE:  # taken by the sweep from the queue of an offline site
            site, offline = self._swept.pop(task.id, (None, "run"))
            return await self._offline(task, site, offline)
        decision = self.rules.decide(task.payload)
        if decision.queue is None:
            if not await self._forwarded(task):
                self.counts["ran_unmatched", ""] += 1
                await self.run_here(task)
            return
        if decision.site is not None and decision.offline != "queue" and not self.live.serves(decision.queue):
            if not await self._forwarded(task):
                await self._offline(task, decision.site, decision.offline)
            return
        await self._send_to_queue(task, decision)

    async def _send_to_queue(self, task: Task, decision: Decision) -> None:
        msg = self.jobs[task.id].msg
        code = await self.forward_message(msg, decision.queue, task.deadline)
        site = decision.site or decision.queue
        if code == 1:
            self.counts["forwarded", site] += 1
        elif code == 2:
            log.info("task was forwarded before the router restarted", extra=_fields(task_id=msg.id, queue=decision.queue))
        else:  # as the producer's enqueue: one task per monitor waits at a time
            self.counts["already_queued", site] += 1
            log.debug("already queued", extra=_fields(task_id=msg.id, queue=decision.queue))

    async def forward_message(self, msg: Any, queue: str, deadline: float) -> int:
        """Enqueue a copy of `msg` into `queue` (same payload bytes and options, the unique lock moved to
        that queue with what remains of its TTL) and mark `msg` forwarded, in one script. Connection errors
        are retried until `deadline`. Returns the script's code (1 enqueued, 0/-1 one waits there, 2 done before)."""
        from redis.exceptions import ConnectionError, TimeoutError

        from asynq_protocol import ALL_QUEUES, TaskMessage, queue_prefix, task_key, unique_key

        target = TaskMessage()
        target.CopyFrom(msg)
        target.queue = queue
        target.unique_key = unique_key(queue, msg.type, msg.payload) if msg.unique_key else ""
        prefix = queue_prefix(queue)
        keys = [task_key(msg.queue, msg.id), prefix + "t:" + msg.id, prefix + "pending", ALL_QUEUES]
        args = [msg.id, target.SerializeToString(), queue, time.time_ns(), target.unique_key, msg.unique_key,
                max(1, msg.timeout), prefix]
        delay = 0.1
        while True:
            try:
                return await self.scripts.call("forward", keys, args)
            except (ConnectionError, TimeoutError, OSError) as exc:  # Redis away: retry while the task may run
                if time.time() + delay >= deadline - 1:
                    raise TaskError(f"could not forward to {queue}: {exc}") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except Exception as exc:
                raise TaskError(f"could not forward to {queue}: {exc}") from None

    async def _forwarded(self, task: Task) -> bool:
        """Whether an earlier delivery of this task was forwarded (then it is not run or reported again)."""
        from asynq_protocol import task_key

        return bool(await self.redis.hexists(task_key(task.queue, task.id), "forwarded"))

    async def _offline(self, task: Task, site: str | None, offline: str) -> None:
        if offline == "run" or site is None:
            self.counts["offline_ran", site or ""] += 1
            return await self.run_here(task)
        self.counts["offline_down", site] += 1
        await self._report_offline(task, site)

    async def _report_offline(self, task: Task, site: str) -> None:
        """The DOWN result the site would not send, through the handler's decoding and result writing
        (stale tasks are skipped and maintenance is reported as the Go worker does)."""
        from executors import DOWN, MAINTENANCE, instant
        from healthcheck import decode_payload, enqueue_result

        try:
            p = decode_payload(task.payload)
        except Exception as exc:
            raise TaskError(f"failed to unmarshal payload: {exc}") from None
        if time.time() - p["scheduled_at"] > p["interval"] * 1.5:
            log.warning("Skipping stale health check task", extra=_fields(monitor_id=p["monitor_id"]))
            return
        if p["is_under_maintenance"]:
            result = instant(MAINTENANCE, "Monitor under maintenance")
        else:
            result = instant(DOWN, OFFLINE_MESSAGE.format(site=site))
        await enqueue_result(self.client, p, result, self.extensions, self.origin)

    # --- live servers and the sweep ----------------------------------------------------------------
    async def _refresh_live(self) -> None:
        await self.live.refresh(self.redis)
        sites = self.rules.site_queues()
        offline = {site for queue, site in sites.items() if not self.live.serves(queue)}
        before = self._offline_sites if self._offline_sites is not None else set()
        for site in sorted(offline - before):
            log.warning("site offline: no live worker serves its queue",
                        extra=_fields(site=site, queue=f"healthcheck-{site}"))
        for site in sorted(before - offline):
            log.info("site online again", extra=_fields(site=site))
        self._offline_sites = offline

    async def _sweeper(self) -> None:
        throttle = _Throttle()
        while not self._stop.is_set():
            try:
                await self._sweep()
            except Exception as exc:
                if throttle.ready():
                    log.warning("sweep failed", extra=_fields(error=str(exc)))
            try:
                await asyncio.wait_for(self._stop.wait(), self.SWEEP_INTERVAL)
            except asyncio.TimeoutError:
                pass

    async def _sweep(self) -> None:
        """Take the tasks waiting in the queues of offline sites and handle them by `offline` (they would
        turn stale there); the tasks whose rule says `queue` go back to the tail of their queue, and the
        queue is taken again only once something else has arrived."""
        for queue, site in self.rules.site_queues().items():
            actions = {r.offline for r in self.rules.rules if r.queue == queue}
            if actions == {"queue"} or self.live.serves(queue) or self.status != "active":
                continue
            pending = f"asynq:{{{queue}}}:pending"
            if "queue" in actions:
                ids = await self.redis.lrange(pending, 0, -1)
                kept = self._kept.setdefault(queue, set())
                kept.intersection_update(ids)
                budget = 0 if kept.issuperset(ids) else len(ids)
            else:
                budget = await self.redis.llen(pending)
            while budget > 0 and self.status == "active" and not self._stop.is_set():
                free = self.concurrency - len(self.jobs)
                if free <= 0:
                    return
                wanted = min(free, self.FETCH_BATCH, budget)
                taken = await self.broker.take([queue], [[0]] * wanted, self)
                got = len(taken.messages) + len(taken.corrupt) + len(taken.not_hashes)
                budget -= got
                for corrupt in taken.corrupt:
                    self._listed.add(corrupt.id)
                    await archive_corrupt(self, corrupt, self._workers_key())
                now = time.time()
                for msg in taken.messages:
                    offline = self._offline_action(msg, site)
                    if (offline == "queue" or msg.id in self.jobs or self._stop.is_set()
                            or self.live.serves(queue)):
                        await self.scripts.call("put_back", _task_keys(msg), [msg.id, self._workers_key()])
                        if offline == "queue":
                            self._kept.setdefault(queue, set()).add(msg.id.encode())
                        continue
                    self._swept[msg.id] = (site, offline)
                    self._listed.add(msg.id)
                    self._start(msg, now, taken.lease_expiry)
                if got < wanted:
                    break

    def _offline_action(self, msg: Any, site: str) -> str:
        """`offline` of the rule that sent the task to this queue (the first rule of the site if the
        rules would now send it elsewhere)."""
        decision = self.rules.decide(msg.payload)
        if decision.queue == msg.queue:
            return decision.offline
        return next(r.offline for r in self.rules.rules if r.queue == msg.queue)

    # --- recovery ----------------------------------------------------------------------------------
    async def _recover_queue(self, queue: str) -> None:
        """Put back (instead of archiving: MaxRetry is 0) the tasks a dead server left active in
        `healthcheck` and in the queues of offline sites (the sweep then handles them), once no live server
        lists them and their lease has gone ORPHAN_AFTER s without extension: they were never checked, or
        their check died with it. The queues of online sites are left to their workers' recoverers."""
        from asynq_protocol import ALL_WORKERS, LEASE_SECONDS, BrokerError, TaskMessage, queue_prefix

        if queue != SOURCE_QUEUE:
            return await super()._recover_queue(queue)
        for name in [SOURCE_QUEUE, *(q for q in self.rules.site_queues() if not self.live.serves(q))]:
            ids = await self.scripts.call("orphans", [queue_prefix(name) + "lease", ALL_WORKERS],
                                          [LEASE_SECONDS - self.ORPHAN_AFTER])
            for raw in ids:
                task_id = raw.decode("utf-8", "replace")
                if task_id in self.jobs:
                    continue
                try:
                    await self.broker.requeue(TaskMessage(id=task_id, queue=name))
                    log.warning("requeued a task its server left active", extra=_fields(task_id=task_id, queue=name))
                except BrokerError:  # another router took it back first
                    pass

    def _log_counts(self) -> None:
        """What was done since the last line, per site: forwarded, already_queued (one waited there already),
        offline_down, offline_ran, and ran_unmatched."""
        fields: dict[str, Any] = {}
        for (kind, site), n in sorted(self.counts.items()):
            if site:
                fields.setdefault(kind, {})[site] = n
            else:
                fields[kind] = n
        if fields:
            log.info("routed", extra=_fields(**fields))
        self.counts.clear()


def _task_keys(msg: Any) -> list[str]:
    from asynq_protocol import queue_prefix

    p = queue_prefix(msg.queue)
    return [p + "active", p + "lease", p + "pending", p + "t:" + msg.id]


# ==================================================================================================
# The command

def route_parser() -> Any:
    parser = build_parser()
    parser.prog = "peekaping-worker route"
    parser.description = ("Consume Peekaping's healthcheck queue and send each task to the queue of the site its "
                          "rules name (healthcheck-<site>, served by `peekaping-worker --site <site>`).")
    for action in parser._actions:  # the worker's flags that mean nothing to the router
        if action.dest in ("queues", "acl_rule", "strict_priority", "version"):
            action.help = argparse.SUPPRESS
        elif action.dest == "site":
            action.help = "where the router itself runs: the `site` field of the results it makes (optional)"
    parser.add_argument("rules", help="the rules file (TOML)")
    parser.add_argument("payload", nargs="?", help="with --check: a health-check payload (JSON)")
    parser.add_argument("--check", action="store_true",
                        help="print where the payload would go and why, then exit (no Redis)")
    return parser


def route_command(argv: list[str]) -> int:
    parser = route_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)

    def refuse(text: str) -> int:
        print(f"peekaping-worker route: {text}", file=sys.stderr)
        return 2

    try:
        rules = load_rules(args.rules)
    except RulesError as exc:
        return refuse(f"invalid rules: {exc}")
    if args.check:
        if args.payload is None:
            return refuse("--check needs a payload: route --check RULES.toml '<payload JSON>'")
        try:
            print(rules.explain(args.payload))
        except ValueError as exc:
            return refuse(f"the payload is not a JSON object: {exc}")
        return 0
    if args.payload is not None:
        return refuse("a payload is only read with --check")
    if args.queues or args.acl_rule:
        return refuse(f"--queues and --acl-rule are for workers; the router consumes {SOURCE_QUEUE}")
    try:
        settings = load_settings(dict(os.environ), args)
    except ConfigurationError as exc:
        return refuse(f"invalid configuration: {exc}")
    settings.queues = {SOURCE_QUEUE: 1}
    os.environ["TZ"] = settings.tz
    if hasattr(time, "tzset"):
        time.tzset()
    setup_logging(settings)
    from redis_checks import RedisStartupError
    try:
        _event_loop_runner()(serve_router(settings, rules))
    except KeyboardInterrupt:
        pass
    except ConfigurationError as exc:
        return refuse(f"invalid configuration: {exc}")
    except RedisStartupError as exc:
        log.critical(f"cannot start: {exc}")
        return 2
    return 0


async def serve_router(settings: Any, rules: Rules) -> None:
    redis = redis_client(settings)
    router = Router(redis, rules, concurrency=settings.concurrency, shutdown_timeout=settings.shutdown_timeout)
    router.report_with(settings.result_extensions, result_origin(settings, router))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, router.stop)
    loop.add_signal_handler(signal.SIGTSTP, router.pause)
    log.info("routing", extra=_fields(rules=rules.path, sites=",".join(sorted(set(rules.site_queues().values()))),
                                      unmatched=rules.unmatched, redis=settings.redis_target()))
    try:
        await router.run()
    finally:
        await redis.aclose()
