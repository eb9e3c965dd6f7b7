"""peekaping-worker: runs Peekaping health checks from Asynq queues, as the Go worker does.

This module is the loop: the Asynq server (processor, heartbeater, recoverer, forwarder, janitor,
cancellation subscriber, graceful shutdown) and the executor registry. Peekaping's `monitor:healthcheck`
handler is in `healthcheck`, Redis-level details in `asynq_protocol` (scripts in `asynq_scripts`),
start-up checks in `redis_checks`, settings and logging in `settings`, the `check` and `types`
commands in `cli`, the `route` command (sites) in `router` and `sites_rules`; checks in `executors/`.
Only the standard library is imported at start so `--version` and `--help` answer at once.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
import os
import random
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

if __name__ == "__main__":  # `python worker.py`: modules that `import worker` get this very module
    sys.modules.setdefault("worker", sys.modules["__main__"])

from executors import VERSION as __version__  # noqa: E402
from settings import (DEFAULT_QUEUES, ConfigurationError,  # noqa: F401,E402 (DEFAULT_QUEUES re-exported)
                      Settings, _fields, _Throttle, build_parser, format_queues,
                      load_settings, redis_client, setup_logging)

HEALTHCHECK_TASK = "monitor:healthcheck"
INGEST_TASK = "monitor:ingest"

# Every monitor type name the Go registry knows (plus the seed's aliases, and `websocket`) -> module.
# Modules are imported on the first task of their type.
EXECUTORS: dict[str, str] = {
    "tcp": "executors.tcp",
    "push": "executors.push",
    "http": "executors.http", "https": "executors.http", "http-keyword": "executors.http",
    "http-json-query": "executors.http",
    "ping": "executors.ping", "icmp": "executors.ping", "dns": "executors.dns", "snmp": "executors.snmp",
    "docker": "executors.docker", "grpc-keyword": "executors.grpc_keyword", "grpc": "executors.grpc_keyword",
    "websocket": "executors.websocket",
    "postgres": "executors.postgres", "mysql": "executors.mysql", "mongodb": "executors.mongodb",
    "sqlserver": "executors.sqlserver", "redis": "executors.redis",
    "mqtt": "executors.mqtt", "rabbitmq": "executors.rabbitmq", "kafka-producer": "executors.kafka_producer",
}

log = logging.getLogger("peekaping.worker")


# ==================================================================================================
# Task handling primitives (the Python shapes of asynq's handler contract)

class TaskError(Exception):
    """A handler failure: the task is retried or archived with str(exc) as its error message."""


class SkipRetry(TaskError):
    """Archive at once, even with retries left."""


class RevokeTask(TaskError):
    """Drop the task as if it succeeded (no retry, no archive)."""


@dataclass(slots=True)
class Task:
    type: str
    payload: bytes
    id: str
    queue: str
    retried: int
    max_retry: int
    deadline: float  # unix seconds; the handler must be done by then


Handler = Callable[[Task], Awaitable[None]]


# ==================================================================================================
# The Asynq server

@dataclass(eq=False)
class _Job:
    msg: Any
    started: float
    deadline: float
    lease_expiry: float  # local clock; the dequeue and each extension set it from the Redis-time lease
    interrupt: asyncio.Future  # resolves to "canceled", "lease_lost" or "abort"
    runner: asyncio.Task | None = None
    beaten: bool = False  # a heartbeat has written the task's workers entry


def queue_order(queues: dict[str, int], strict: bool) -> list[str]:
    """The order in which one dequeue tries the queues (asynq's strict and weighted selection)."""
    names = list(queues)
    if len(names) == 1:
        return names
    if strict:
        return sorted(names, key=lambda q: -queues[q])
    divisor = 0
    for p in queues.values():
        divisor = math.gcd(divisor, p)
    pool = [q for q in names for _ in range(queues[q] // divisor)]
    random.shuffle(pool)
    order: list[str] = []
    for q in pool:
        if q not in order:
            order.append(q)
    return order


class Server:
    """An Asynq server: dequeues from the configured queues and runs the handler for each task type."""

    HEARTBEAT_INTERVAL = 5.0
    FORWARD_INTERVAL = 5.0
    JANITOR_INTERVAL = 8.0
    RECOVER_INTERVAL = 10.0
    # A lease must have expired this long ago AND no live server may list the task before we take it.
    RECOVER_SLACK = 5.0
    IDLE_SLEEP = 1.0  # asynq TaskCheckInterval: sleep interval/2 + U[0, interval) when all queues are empty
    # When all queues are empty, wait on the unpaused queues' pending lists (pending_watch) instead:
    # a dequeue runs as soon as one holds an id, else after WAKE_POLL s (twice IDLE_SLEEP's poll while
    # a queue is paused, so an unpause is seen within 3 s). Each BLMOVE blocks WAKE_BLOCK s per queue
    # served, so an idle worker sends one BLMOVE per 2 s and one dequeue per 4 s (2 s while a queue is
    # paused), however many queues: no more than the one dequeue per second of the 1 s poll.
    WAKE_ON_PUSH = True
    WAKE_POLL = 4.0
    WAKE_BLOCK = 2.0
    FETCH_BATCH = 64

    def __init__(self, redis: Any, handlers: dict[str, Handler], *, queues: dict[str, int] | None = None,
                 concurrency: int = 128, strict_priority: bool = True, shutdown_timeout: float = 8.0) -> None:
        from asynq_protocol import Broker
        from metrics import Stats

        filtered = {q.strip(): p for q, p in (queues or {"default": 1}).items() if q.strip() and p > 0}
        queues = filtered or {"default": 1}
        self.redis = redis
        self.broker = Broker(redis)
        self.handlers = handlers
        self.concurrency = concurrency if concurrency >= 1 else (os.cpu_count() or 1)
        self.strict = strict_priority
        self.shutdown_timeout = shutdown_timeout
        self.host = socket.gethostname() or "unknown-host"
        self.pid = os.getpid()
        self.server_id = str(uuid.uuid4())
        self.status = "active"
        self.jobs: dict[str, _Job] = {}
        self._listed: set[Any] = set()  # task ids that may have an entry in our asynq:workers hash
        self._requeued = 0  # requeue writes confirmed during the shutdown drain
        self._slot_freed = asyncio.Event()
        self._stop = asyncio.Event()
        self._dequeuing = asyncio.Event()
        self._dequeuing.set()
        self._watch: Any = None  # pending_watch.PendingWatch, made on the first idle wait
        self._started_at = time.time()
        self.stats = Stats(EXECUTORS)  # plain counters; /metrics reads them when --metrics-addr is given
        self._serve(queues)

    # --- lifecycle ---------------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve until `stop()` is called, then shut down gracefully.

        Raises RedisStartupError when Redis refuses the worker (password, ACL permissions) at start-up.
        """
        from redis_checks import start_up, watch

        served = await self._until_redis(lambda: start_up(self), "start")
        if served is None:
            log.info("stopped before Redis became reachable")
            return
        self._serve(served)  # only the queues whose keys the Redis user may read and write
        self._started_at = time.time()
        self.stats.connected()
        spawn = asyncio.get_running_loop().create_task
        heartbeat = spawn(self._every(self.HEARTBEAT_INTERVAL, self._heartbeat, now=True), name="heartbeat")
        forwarder = spawn(self._every(self.FORWARD_INTERVAL, self._forward), name="forwarder")
        helpers = [
            spawn(self._subscriber(), name="subscriber"),
            spawn(self._every(self.RECOVER_INTERVAL, self._recover, now=True), name="recoverer"),
            spawn(self._every(self.JANITOR_INTERVAL, self._janitor), name="janitor"),
            spawn(watch(self), name="redis-watch"),
        ]
        processor = spawn(self._process(), name="processor")
        log.info("worker started", extra=_fields(server_id=self.server_id, queues=format_queues(self.queues),
                                                   concurrency=self.concurrency, strict=self.strict))
        await self._stop.wait()

        self.status = "closed"
        log.info("shutting down", extra=_fields(in_flight=len(self.jobs), timeout_s=self.shutdown_timeout))
        await _cancel(forwarder)  # asynq's shutdown order: forwarder, processor (drain), then the rest
        await _cancel(processor)
        await self._drain()
        for task in helpers:
            await _cancel(task)
        await _cancel(heartbeat)
        try:
            await asyncio.wait_for(self.broker.clear_server_state(self.host, self.pid, self.server_id), 5)
        except Exception as exc:  # Redis gone: the keys expire within 10 s anyway
            log.warning("could not clear server state", extra=_fields(error=str(exc)))
        await self.broker.close()
        log.info("worker stopped", extra=_fields(requeued=self._requeued))

    def _serve(self, queues: dict[str, int]) -> None:
        """The queues dequeues walk: their names in a fixed order and the strict-priority walk over them."""
        self.queues = queues
        self._names = list(queues)
        self._strict_order = [self._names.index(q) for q in queue_order(queues, True)]

    def stop(self) -> None:
        self._stop.set()

    def pause(self) -> None:
        """Stop taking new tasks but keep running (asynq's Server.Stop, on SIGTSTP): status `stopped`."""
        if self.status == "active":
            self.status = "stopped"
            self._dequeuing.clear()
            log.info("stopped taking new tasks (SIGTSTP); SIGTERM to shut down")

    async def _drain(self) -> None:
        """Let in-flight tasks finish within the shutdown timeout, then requeue the rest and say how many."""
        deadline = time.monotonic() + self.shutdown_timeout
        while self.jobs and time.monotonic() < deadline:
            self._slot_freed.clear()
            try:
                await asyncio.wait_for(self._slot_freed.wait(), deadline - time.monotonic())
            except asyncio.TimeoutError:
                break
        runners = [job.runner for job in self.jobs.values() if job.runner]
        aborted = [job for job in self.jobs.values() if not job.interrupt.done()]
        for job in aborted:
            job.interrupt.set_result("abort")
        if runners:
            await asyncio.wait(runners, timeout=10)
        if aborted:
            log.warning("requeued unfinished checks at shutdown", extra=_fields(
                requeued=self._requeued, unfinished=len(aborted), timeout_s=self.shutdown_timeout))

    # --- processor ---------------------------------------------------------------------------------
    def _orders(self, n: int) -> list[list[int]]:
        if self.strict or len(self._names) == 1:
            return [self._strict_order] * n
        return [[self._names.index(q) for q in queue_order(self.queues, False)] for _ in range(n)]

    async def _process(self) -> None:
        try:
            await self._dequeue_loop()
        finally:
            if self._watch is not None:
                await self._watch.close()

    async def _idle(self, paused: list) -> None:
        """Wait for work once a dequeue found every queue empty or paused: until an id is pushed to an
        unpaused queue's pending list (then the dequeue script takes it, in queue order), or the poll."""
        _honour_cancellation()  # a dequeue may have swallowed one; a wait of seconds must not follow
        poll = self.IDLE_SLEEP / 2 + random.random() * self.IDLE_SLEEP
        if not self.WAKE_ON_PUSH:
            return await asyncio.sleep(poll)
        if self._watch is None:
            from pending_watch import PendingWatch
            self._watch = PendingWatch(self.redis, len(self._names), self.WAKE_BLOCK * len(self._names))
        unpaused = [q for q in self._names if q not in paused]
        await self._watch.wait(unpaused, 2 * poll if paused else self.WAKE_POLL, poll)

    async def _dequeue_loop(self) -> None:
        from redis.exceptions import RedisError

        throttle, backoff = _Throttle(), 0.1
        while True:
            _honour_cancellation()
            await self._dequeuing.wait()
            free = self.concurrency - len(self.jobs)
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            sent = time.perf_counter()
            try:
                taken = await self.broker.take(self._names, self._orders(min(free, self.FETCH_BATCH)), self)
                backoff = 0.1
            except Exception as exc:  # Redis trouble, or a reply we did not expect: never stop processing
                _honour_cancellation()
                self.stats.redis_failed(exc)
                if throttle.ready():
                    level = logging.WARNING if isinstance(exc, (RedisError, OSError)) else logging.ERROR
                    log.log(level, "dequeue failed; retrying", extra=_fields(error=str(exc)))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self.stats.dequeue_done(len(taken.messages) + len(taken.corrupt), time.perf_counter() - sent)
            for queue, task_id in taken.not_hashes:
                log.error("task key is not a hash; its id was taken out of the queue, the key left as it is",
                          extra=_fields(task_id=task_id, queue=queue))
            if not taken.messages and not taken.corrupt:
                if not taken.not_hashes:
                    await self._idle(taken.paused)
                continue
            now = time.time()
            for msg in taken.messages:
                self._listed.add(msg.id)
                self._start(msg, now, taken.lease_expiry)
            for corrupt in taken.corrupt:
                self._listed.add(corrupt.id)
                await self._archive_corrupt(corrupt, self._workers_key())

    def _workers_key(self) -> str:
        from asynq_protocol import server_keys

        return server_keys(self.host, self.pid, self.server_id)[1]

    def _unlist(self, job: _Job) -> str:
        """The workers key to drop the task's entry from along with its completion: only while no
        heartbeat has listed it, as Go lists a task from the next heartbeat on and keeps it until the one after."""
        return "" if job.beaten else self._workers_key()

    def _start(self, msg: Any, dequeued_at: float, lease_expiry: float) -> None:
        from asynq_protocol import DEFAULT_TIMEOUT_SECONDS

        if msg.timeout == 0 and msg.deadline == 0:
            deadline = dequeued_at + DEFAULT_TIMEOUT_SECONDS
        elif msg.timeout and msg.deadline:
            deadline = float(min(int(dequeued_at) + msg.timeout, msg.deadline))
        elif msg.timeout:
            deadline = dequeued_at + msg.timeout
        else:
            deadline = float(msg.deadline)
        loop = asyncio.get_running_loop()
        job = _Job(msg, dequeued_at, deadline, lease_expiry, loop.create_future())
        self.jobs[msg.id] = job
        job.runner = loop.create_task(self._run(job))

    async def _run(self, job: _Job) -> None:
        try:
            await self._execute(job)
        except Exception:
            log.exception("task runner failed", extra=_fields(task_id=job.msg.id))
        finally:
            self.jobs.pop(job.msg.id, None)
            self._slot_freed.set()

    async def _execute(self, job: _Job) -> None:
        msg = job.msg
        if time.time() >= job.deadline:
            return await self._failed(job, TaskError("context deadline exceeded"))
        handler = self.handlers.get(msg.type)
        if handler is None:
            return await self._failed(job, TaskError(f'handler not found for task "{msg.type}"'))
        task = Task(msg.type, msg.payload, msg.id, msg.queue, msg.retried, msg.retry, job.deadline)
        call = asyncio.get_running_loop().create_task(_guarded(handler, task))
        done, _ = await asyncio.wait({call, job.interrupt}, timeout=max(0.0, job.deadline - time.time()),
                                     return_when=asyncio.FIRST_COMPLETED)
        if call in done:
            error = call.result()
            if error is None:
                return await self._succeeded(job)
            return await self._failed(job, error)
        call.cancel()
        reason = job.interrupt.result() if job.interrupt.done() else "deadline"
        if reason == "abort":
            if await self._write(job, lambda: self.broker.requeue(msg, unlist=self._unlist(job)), "requeue"):
                self._requeued += 1
            return
        if reason == "lease_lost":
            log.warning("task lease lost; leaving it to the recoverer", extra=_fields(task_id=msg.id))
            return
        text = "context canceled" if reason == "canceled" else "context deadline exceeded"
        await self._failed(job, TaskError(text))

    async def _succeeded(self, job: _Job) -> None:
        msg = job.msg
        self.stats.succeeded += 1
        if msg.retention > 0:
            await self._write(job, lambda: self.broker.mark_complete(msg, unlist=self._unlist(job)), "mark complete")
        else:
            await self._write(job, lambda: self.broker.done(msg, unlist=self._unlist(job)), "done")

    async def _failed(self, job: _Job, error: Exception) -> None:
        from asynq_protocol import retry_delay_seconds

        msg, text = job.msg, str(error)
        log.error("task failed", extra=_fields(type=msg.type, task_id=msg.id, queue=msg.queue, error=text))
        self.stats.failed += 1
        if isinstance(error, RevokeTask):
            await self._write(job, lambda: self.broker.done(msg, unlist=self._unlist(job)), "done")
        elif msg.retried >= msg.retry or isinstance(error, SkipRetry):
            self.stats.archived += 1
            await self._write(job, lambda: self.broker.archive(msg, text, unlist=self._unlist(job)), "archive")
        else:
            retry_at = time.time() + retry_delay_seconds(msg.retried)
            self.stats.retried += 1
            await self._write(job, lambda: self.broker.retry(msg, text, retry_at, unlist=self._unlist(job)), "retry")

    async def _write(self, job: _Job, op: Callable[[], Awaitable[Any]], what: str) -> bool:
        """Run a completion write while the lease is valid, retrying connection errors (asynq's syncer);
        True once Redis has confirmed it."""
        from asynq_protocol import BrokerError
        from redis.exceptions import RedisError

        delay = 0.2
        while True:
            remaining = job.lease_expiry - time.time()
            if remaining <= 0:
                log.warning(f"{what} not written before the lease expired; the recoverer will handle it",
                            extra=_fields(task_id=job.msg.id))
                return False
            try:
                await asyncio.wait_for(op(), remaining)
                return True
            except BrokerError as exc:  # NOT FOUND: another server recovered the task meanwhile
                log.warning(f"{what} refused by broker", extra=_fields(task_id=job.msg.id, error=str(exc)))
                return False
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                self.stats.redis_failed(exc)
                log.warning(f"{what} failed; retrying", extra=_fields(task_id=job.msg.id, error=str(exc)))
                await asyncio.sleep(min(delay, max(0.0, job.lease_expiry - time.time())))
                delay = min(delay * 2, 2.0)

    # --- heartbeat, leases -------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        from asynq_protocol import ServerInfo, WorkerInfo, set_timestamp, valid_text

        now = time.time()
        info = ServerInfo(host=self.host, pid=self.pid, server_id=self.server_id, concurrency=self.concurrency,
                          queues={valid_text(q): p for q, p in self.queues.items()}, strict_priority=self.strict,
                          status=self.status, active_worker_count=len(self.jobs))
        set_timestamp(info.start_time, self._started_at)
        # Entries of tasks that ended since the last beat are dropped one by one (Go rewrites the whole
        # hash), so an entry a dequeue writes while this beat is on its way survives.
        ended = [task_id for task_id in self._listed if task_id not in self.jobs]
        jobs = list(self.jobs.values())
        workers, extend = [], {}
        for job in jobs:
            msg = job.msg
            w = WorkerInfo(host=self.host, pid=self.pid, server_id=self.server_id, task_id=msg.id,
                           task_type=msg.type, task_payload=msg.payload, queue=msg.queue)
            set_timestamp(w.start_time, job.started)
            set_timestamp(w.deadline, job.deadline)
            workers.append(w)
            if job.lease_expiry >= now:
                extend.setdefault(msg.queue, []).append(job)
            elif not job.interrupt.done():
                job.interrupt.set_result("lease_lost")
        sent = time.perf_counter()
        await self.broker.write_server_state(info, workers, ended)
        self.stats.heartbeat_done(time.perf_counter() - sent)
        self._listed.difference_update(ended)
        self._listed.update(self.jobs)
        for job in jobs:
            job.beaten = True
        for queue, queue_jobs in extend.items():
            expiry = await self.broker.extend_leases(queue, [j.msg.id for j in queue_jobs])
            for job in queue_jobs:
                job.lease_expiry = expiry

    # --- recoverer, forwarder, janitor -------------------------------------------------------------
    async def _recover(self) -> None:
        await self._each_queue(self._recover_queue)

    async def _recover_queue(self, queue: str) -> None:
        """Retry or archive the tasks whose lease expired RECOVER_SLACK s ago (Redis clock) and that no
        live server lists; archive those whose message does not decode. One bad entry stops nothing."""
        from asynq_protocol import Corrupt, retry_delay_seconds

        for item in await self.broker.list_lease_expired(queue, self.RECOVER_SLACK):
            if isinstance(item, Corrupt):
                await self._archive_corrupt(item)
                continue
            msg = item
            if msg.id in self.jobs:
                continue
            text = "asynq: task lease expired"
            try:
                if msg.retried >= msg.retry:
                    await self.broker.archive(msg, text)
                else:
                    await self.broker.retry(msg, text, time.time() + retry_delay_seconds(msg.retried))
                self.stats.recovered += 1
                log.warning("recovered task with expired lease", extra=_fields(task_id=msg.id, queue=queue))
            except Exception as exc:  # NOT FOUND: another server won the race
                _honour_cancellation()
                log.debug("recovery skipped", extra=_fields(task_id=msg.id, error=str(exc)))
        await self.broker.reclaim_stale_aggregation_sets(queue)

    async def _archive_corrupt(self, corrupt: Any, unlist: str = "") -> None:
        """Archive a task whose message does not decode (kept with its bytes) and log it, once. The log
        line is written by a callback on the write itself, so a shutdown cancelling the caller cannot lose it."""
        from asynq_protocol import BrokerError

        def report(write: asyncio.Future) -> None:
            fields = dict(task_id=corrupt.task_id, queue=corrupt.queue)
            if write.cancelled():
                return
            exc = write.exception()
            if isinstance(exc, BrokerError):  # NOT FOUND: another server archived it first
                log.debug("corrupt task already moved", extra=_fields(**fields, error=str(exc)))
            elif exc is not None:  # Redis trouble: a recoverer archives it once its lease has expired
                log.warning("could not archive a corrupt task; the recoverer will", extra=_fields(**fields, error=str(exc)))
            else:
                self.stats.archived += 1
                log.error("corrupt task message archived", extra=_fields(**fields, error=corrupt.error,
                                                                         kept=f"asynq:{{{corrupt.queue}}}:archived"))

        write = self.broker.archive_corrupt(corrupt, unlist=unlist)
        write.add_done_callback(report)
        await asyncio.wait({write})  # a cancelled caller leaves the write and its report running

    async def _forward(self) -> None:
        await self._each_queue(self.broker.forward)

    async def _janitor(self) -> None:
        await self._each_queue(self.broker.delete_expired_completed)

    async def _each_queue(self, action: Callable[[str], Awaitable[Any]]) -> None:
        """Run `action` for every queue; a failing queue does not keep the others waiting (the first
        failure is raised at the end, for `_every` to log)."""
        failure: Exception | None = None
        for queue in self.queues:
            try:
                await action(queue)
            except Exception as exc:
                _honour_cancellation()
                failure = failure or exc
        if failure is not None:
            raise failure

    async def _every(self, interval: float, action: Callable[[], Awaitable[None]], now: bool = False) -> None:
        throttle = _Throttle()
        if not now:
            await asyncio.sleep(interval)
        while True:
            try:
                await action()
            except Exception as exc:
                _honour_cancellation()
                self.stats.redis_failed(exc, sticky=False)
                if throttle.ready():
                    log.warning(f"{action.__name__.strip('_')} failed", extra=_fields(error=str(exc)))
            _honour_cancellation()
            await asyncio.sleep(interval)

    async def _until_redis(self, action: Callable[[], Awaitable[Any]], what: str) -> Any:
        """Retry `action` with backoff until it succeeds (its result) or a stop is requested (None).

        An error retrying cannot fix (refused password, missing ACL permission) raises RedisStartupError.
        """
        from redis_checks import RedisStartupError, refusal

        delay, throttle, failing_since = 0.2, _Throttle(), None
        while not self._stop.is_set():
            try:
                result = await action()
                if failing_since is not None:
                    log.info("Redis reachable again", extra=_fields(down_s=round(time.monotonic() - failing_since, 1)))
                return result
            except RedisStartupError:
                raise
            except Exception as exc:
                cause = refusal(exc)
                if cause:
                    raise RedisStartupError(cause) from None
                self.stats.redis_failed(exc)
                if failing_since is None:
                    failing_since = time.monotonic()
                if throttle.ready():
                    log.warning(f"cannot {what}: Redis unreachable; retrying", extra=_fields(error=str(exc)))
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                delay = min(delay * 2, 5.0)
        return None

    # --- cancellation ------------------------------------------------------------------------------
    async def _subscriber(self) -> None:
        from asynq_protocol import CANCEL_CHANNEL

        # Reads are bounded and the stop flag is checked between them: redis-py's blocking pubsub read
        # can swallow a cancellation, and then a shutdown would wait on it forever.
        while not self._stop.is_set():
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(CANCEL_CHANNEL)
                while not self._stop.is_set():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if not message or message.get("type") != "message":
                        continue
                    data = message["data"]
                    job = self.jobs.get(data.decode() if isinstance(data, bytes) else str(data))
                    if job and not job.interrupt.done():
                        job.interrupt.set_result("canceled")
            except asyncio.CancelledError:
                await _quietly(pubsub.aclose())
                raise
            except Exception as exc:
                log.debug("cancel subscription lost; resubscribing", extra=_fields(error=str(exc)))
            await _quietly(pubsub.aclose())
            if not self._stop.is_set():
                await asyncio.sleep(1.0)


async def _guarded(handler: Handler, task: Task) -> Exception | None:
    """Run a handler; return None on success or the error (an unexpected one in Go's panic shape).
    The error text is stored in Redis, so lone surrogates in it become U+FFFD."""
    from executors._kit.gojson import clean_text
    from executors._kit.unexpected import where

    try:
        await handler(task)
        return None
    except TaskError as exc:
        text = str(exc)
        cleaned = clean_text(text)
        return exc if cleaned is text else type(exc)(cleaned)
    except Exception as exc:
        return TaskError(clean_text(f"panic error cause by: panic [{where(exc)}]: {type(exc).__name__}: {exc}"))


def _honour_cancellation() -> None:
    """Re-raise a cancellation that was swallowed on its way out of a library call (seen with
    redis-py: the call returned or failed normally while our task was being cancelled); otherwise a
    polling loop goes back to sleep and shutdown waits for it forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _cancel(task: asyncio.Task, grace: float = 5.0) -> None:
    """Cancel a background task and wait for it, but never longer than `grace` seconds."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=grace)
    if not done:
        log.warning(f"background task {task.get_name()} did not stop within {grace:g} s; leaving it")
    elif not task.cancelled():
        task.exception()  # retrieved, so it is not reported as lost


async def _quietly(aw: Awaitable[Any]) -> None:
    try:
        await aw
    except Exception:
        pass


# ==================================================================================================
# The executor registry: type -> module, imported on the first task of that type

_loaded: dict[str, Any] = {}


def executor_path(monitor_type: str) -> str:
    """The module that runs a type; TaskError (Go's text) when there is none."""
    if monitor_type not in EXECUTORS:
        raise TaskError(f"executor not found for monitor type: {monitor_type}")
    return EXECUTORS[monitor_type]


async def load_executor(monitor_type: str) -> Any:
    """The executor module for a type, imported on its first task.

    The first import runs in a thread: importing executors.http takes ~0.2 s, and doing it on the
    event loop would stall every check in flight and inflate their measured ping.
    """
    path = executor_path(monitor_type)
    module = _loaded.get(path)
    if module is None:
        module = _loaded[path] = await asyncio.to_thread(importlib.import_module, path)
    return module


# ==================================================================================================
# Entry points

async def serve(settings: Settings) -> None:
    from asynq_protocol import Client
    from healthcheck import healthcheck_handler

    redis = redis_client(settings)
    server = Server(redis, {}, queues=settings.queues, concurrency=settings.concurrency,
                    strict_priority=settings.strict_priority, shutdown_timeout=settings.shutdown_timeout)
    server.handlers[HEALTHCHECK_TASK] = healthcheck_handler(Client(server.broker), settings.result_extensions,
                                                            result_origin(settings, server), stats=server.stats)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.stop)
    loop.add_signal_handler(signal.SIGTSTP, server.pause)
    endpoint = None
    if settings.metrics_addr:  # before Redis: /live and /ready answer while the worker connects
        from metrics import serve_metrics
        endpoint = await serve_metrics(server, settings.metrics_addr)
    log.info("connecting to Redis", extra=_fields(redis=settings.redis_target(), version=__version__))
    try:
        await server.run()
    finally:
        if endpoint is not None:
            endpoint.close()
        await redis.aclose()


def result_origin(settings: Settings, server: Server) -> dict[str, str]:
    """The `site` (when --site is given) and `worker` fields of results with --result-extensions."""
    origin = {"site": settings.site} if settings.site else {}
    origin["worker"] = settings.worker_id or f"{server.host}:{server.pid}"
    return origin


def _event_loop_runner() -> Callable[[Awaitable[Any]], Any]:
    try:
        import uvloop
        return uvloop.run
    except ImportError:
        return asyncio.run


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "check":
        from cli import check_command
        return check_command(argv[1:])
    if argv and argv[0] == "doctor":
        from doctor import doctor_command
        return doctor_command(argv[1:])
    if argv and argv[0] == "route":
        from router import route_command
        return route_command(argv[1:])
    if argv and argv[0] == "types":
        from cli import types_command
        return types_command(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.version:
        from cli import version_text
        print(version_text())
        return 0
    try:
        settings = load_settings(dict(os.environ), args)
    except ConfigurationError as exc:
        print(f"peekaping-worker: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if args.acl_rule:
        from redis_checks import acl_rule
        print(acl_rule(settings.queues))
        return 0
    os.environ["TZ"] = settings.tz
    if hasattr(time, "tzset"):
        time.tzset()
    setup_logging(settings)
    from redis_checks import RedisStartupError
    try:
        _event_loop_runner()(serve(settings))
    except KeyboardInterrupt:
        pass
    except ConfigurationError as exc:  # URL options that only redis-py can judge
        print(f"peekaping-worker: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except RedisStartupError as exc:
        log.critical(f"cannot start: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
