"""peekaping-worker: runs Peekaping health checks from Asynq queues, as the Go worker does.

This module is the loop: the Asynq server (processor, graceful shutdown) and the executor registry. The
server's background components (heartbeater, recoverer, forwarder, janitor, cancellation subscriber) are
in `housekeeping`. Peekaping's `monitor:healthcheck` handler is in `healthcheck`, Redis-level details in
`asynq_protocol` (scripts in `asynq_scripts`, connections and the pipeline in `redis_wire`),
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
import housekeeping  # noqa: E402
from housekeeping import honour_cancellation  # noqa: E402
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
    runner: asyncio.Task | None = None  # runs the handler, then its completion write; after an interrupt
    # or the deadline, the task writing that outcome instead (the handler's task unwinds on its own)
    beaten: bool = False  # a heartbeat has written the task's workers entry
    settled: bool = False  # the handler returned: interrupts and the deadline no longer apply
    overtaken: bool = False  # an interrupt or the deadline came first


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
        from asynq_protocol import DEFAULT_TIMEOUT_SECONDS, Broker
        from metrics import Stats

        filtered = {q.strip(): p for q, p in (queues or {"default": 1}).items() if q.strip() and p > 0}
        queues = filtered or {"default": 1}
        self.redis = redis
        self.broker = Broker(redis)
        self._default_timeout = DEFAULT_TIMEOUT_SECONDS  # of a task with neither timeout nor deadline
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
        self._wkey: tuple = ((), "")  # (host, pid, server_id) and its asynq:workers key
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

        served = await housekeeping.until_redis(self, lambda: start_up(self), "start")
        if served is None:
            log.info("stopped before Redis became reachable")
            return
        self._serve(served)  # only the queues whose keys the Redis user may read and write
        self._started_at = time.time()
        self.stats.connected()
        spawn = asyncio.get_running_loop().create_task
        every = housekeeping.every
        heartbeat = spawn(every(self, self.HEARTBEAT_INTERVAL, self._heartbeat, now=True), name="heartbeat")
        forwarder = spawn(every(self, self.FORWARD_INTERVAL, self._forward), name="forwarder")
        helpers = [
            spawn(housekeeping.subscriber(self), name="subscriber"),
            spawn(every(self, self.RECOVER_INTERVAL, self._recover, now=True), name="recoverer"),
            spawn(every(self, self.JANITOR_INTERVAL, self._janitor), name="janitor"),
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
        aborted = [job for job in self.jobs.values() if not job.interrupt.done()]
        for job in aborted:
            job.interrupt.set_result("abort")
            self._overtake(job, "abort")  # now, so that job.runner is the requeue write
        runners = [job.runner for job in self.jobs.values() if job.runner]
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
        honour_cancellation()  # a dequeue may have swallowed one; a wait of seconds must not follow
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
            honour_cancellation()
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
                honour_cancellation()
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
                await housekeeping.archive_corrupt(self, corrupt, self._workers_key())

    def _workers_key(self) -> str:
        ident = (self.host, self.pid, self.server_id)
        if self._wkey[0] != ident:  # made once: every completion of a task not yet listed asks for it
            from asynq_protocol import server_keys

            self._wkey = (ident, server_keys(*ident)[1])
        return self._wkey[1]

    def _unlist(self, job: _Job) -> str:
        """The workers key to drop the task's entry from along with its completion: only while no
        heartbeat has listed it, as Go lists a task from the next heartbeat on and keeps it until the one after."""
        return "" if job.beaten else self._workers_key()

    def _start(self, msg: Any, dequeued_at: float, lease_expiry: float) -> None:
        if msg.timeout == 0 and msg.deadline == 0:
            deadline = dequeued_at + self._default_timeout
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
        """Run the handler in this task, then write its outcome. An interrupt or the deadline hands the
        job to `_interrupted` (`_overtake`), which writes at once while the handler is cancelled here."""
        msg = job.msg
        try:
            handler = self.handlers.get(msg.type)
            if time.time() >= job.deadline or handler is None:
                job.settled = True
                return await self._failed(job, TaskError("context deadline exceeded" if handler else
                                                         f'handler not found for task "{msg.type}"'))
            task = Task(msg.type, msg.payload, msg.id, msg.queue, msg.retried, msg.retry, job.deadline)
            loop = asyncio.get_running_loop()
            timer = loop.call_at(loop.time() + max(0.0, job.deadline - time.time()), self._overtake, job, "deadline")

            def interrupted(interrupt: asyncio.Future) -> None:
                self._overtake(job, interrupt.result())

            job.interrupt.add_done_callback(interrupted)
            try:
                error = await _guarded(handler, task)
            except asyncio.CancelledError:
                if job.overtaken:
                    return  # the handler is stopped; `_interrupted` writes the outcome
                raise
            finally:
                timer.cancel()
                job.interrupt.remove_done_callback(interrupted)
            if job.overtaken:
                return  # the handler swallowed the cancellation
            job.settled = True
            if error is None:
                return await self._succeeded(job)
            return await self._failed(job, error)
        except Exception:
            log.exception("task runner failed", extra=_fields(task_id=msg.id))
        finally:
            if not job.overtaken:
                self._finished(job)

    def _finished(self, job: _Job) -> None:
        self.jobs.pop(job.msg.id, None)
        self._slot_freed.set()

    def _overtake(self, job: _Job, reason: str) -> None:
        """The job is interrupted (or its deadline passed) before its handler returned: cancel the handler
        and write the outcome from a task of its own, so a handler slow to unwind delays nothing."""
        if job.settled or job.overtaken:
            return
        job.overtaken = True
        runner, job.runner = job.runner, asyncio.get_running_loop().create_task(self._interrupted(job, reason))
        if runner is not None:
            runner.cancel()

    async def _interrupted(self, job: _Job, reason: str) -> None:
        msg = job.msg
        try:
            if reason == "abort":
                if await self._write(job, lambda: self.broker.requeue(msg, unlist=self._unlist(job)), "requeue"):
                    self._requeued += 1
            elif reason == "lease_lost":
                log.warning("task lease lost; leaving it to the recoverer", extra=_fields(task_id=msg.id))
            else:
                text = "context canceled" if reason == "canceled" else "context deadline exceeded"
                await self._failed(job, TaskError(text))
        except Exception:
            log.exception("task runner failed", extra=_fields(task_id=msg.id))
        finally:
            self._finished(job)

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
        delay = 0.2
        while True:
            remaining = job.lease_expiry - time.time()
            if remaining <= 0:
                log.warning(f"{what} not written before the lease expired; the recoverer will handle it",
                            extra=_fields(task_id=job.msg.id))
                return False
            try:
                async with asyncio.timeout(remaining):
                    await op()
                return True
            except Exception as exc:
                from asynq_protocol import BrokerError
                from redis.exceptions import RedisError

                if isinstance(exc, BrokerError):  # NOT FOUND: another server recovered the task meanwhile
                    log.warning(f"{what} refused by broker", extra=_fields(task_id=job.msg.id, error=str(exc)))
                    return False
                if not isinstance(exc, (RedisError, OSError, asyncio.TimeoutError)):
                    raise
                self.stats.redis_failed(exc)
                log.warning(f"{what} failed; retrying", extra=_fields(task_id=job.msg.id, error=str(exc)))
                await asyncio.sleep(min(delay, max(0.0, job.lease_expiry - time.time())))
                delay = min(delay * 2, 2.0)

    # --- background components: in `housekeeping`; these are the actions its loops run (methods, so
    # tests and the router reach them, and `every` logs "<name> failed" by them) -------------------
    async def _heartbeat(self) -> None:
        await housekeeping.heartbeat(self)

    async def _recover(self) -> None:
        await housekeeping.recover(self)

    async def _recover_queue(self, queue: str) -> None:
        await housekeeping.recover_queue(self, queue)

    async def _forward(self) -> None:
        await housekeeping.forward(self)

    async def _janitor(self) -> None:
        await housekeeping.janitor(self)


async def _guarded(handler: Handler, task: Task) -> Exception | None:
    """Run a handler; return None on success or the error (an unexpected one in Go's panic shape).
    The error text is stored in Redis, so lone surrogates in it become U+FFFD."""
    try:
        await handler(task)
        return None
    except TaskError as exc:
        from executors._kit.gojson import clean_text

        text = str(exc)
        cleaned = clean_text(text)
        return exc if cleaned is text else type(exc)(cleaned)
    except Exception as exc:
        from executors._kit.gojson import clean_text
        from executors._kit.unexpected import where

        return TaskError(clean_text(f"panic error cause by: panic [{where(exc)}]: {type(exc).__name__}: {exc}"))


async def _cancel(task: asyncio.Task, grace: float = 5.0) -> None:
    """Cancel a background task and wait for it, but never longer than `grace` seconds."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=grace)
    if not done:
        log.warning(f"background task {task.get_name()} did not stop within {grace:g} s; leaving it")
    elif not task.cancelled():
        task.exception()  # retrieved, so it is not reported as lost


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
