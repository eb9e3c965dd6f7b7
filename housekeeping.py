"""Asynq's background components, run by `worker.Server` beside its processor.

Plain functions of the server, one group per asynq file: the heartbeater (heartbeater.go: the server's
and its workers' entries, lease extensions), the recoverer (recoverer.go: expired leases, corrupt
messages), the forwarder (forwarder.go: scheduled and retry tasks due), the janitor (janitor.go:
expired completed tasks) and the cancellation subscriber (subscriber.go); `every` runs one of them on
its interval and `until_redis` retries start-up until Redis answers. They log as `peekaping.worker`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from settings import _fields, _Throttle

if TYPE_CHECKING:
    from worker import Server

log = logging.getLogger("peekaping.worker")


# --------------------------------------------------------------------------------------------------
# Heartbeater (asynq heartbeater.go): the server's and its workers' entries, lease extensions

async def heartbeat(server: Server) -> None:
    from asynq_protocol import ServerInfo, WorkerInfo, set_timestamp, valid_text

    now = time.time()
    info = ServerInfo(host=server.host, pid=server.pid, server_id=server.server_id, concurrency=server.concurrency,
                      queues={valid_text(q): p for q, p in server.queues.items()}, strict_priority=server.strict,
                      status=server.status, active_worker_count=len(server.jobs))
    set_timestamp(info.start_time, server._started_at)
    # Entries of tasks that ended since the last beat are dropped one by one (Go rewrites the whole
    # hash), so an entry a dequeue writes while this beat is on its way survives.
    ended = [task_id for task_id in server._listed if task_id not in server.jobs]
    jobs = list(server.jobs.values())
    workers, extend = [], {}
    for job in jobs:
        msg = job.msg
        w = WorkerInfo(host=server.host, pid=server.pid, server_id=server.server_id, task_id=msg.id,
                       task_type=msg.type, task_payload=msg.payload, queue=msg.queue)
        set_timestamp(w.start_time, job.started)
        set_timestamp(w.deadline, job.deadline)
        workers.append(w)
        if job.lease_expiry >= now:
            extend.setdefault(msg.queue, []).append(job)
        elif not job.interrupt.done():
            job.interrupt.set_result("lease_lost")
    sent = time.perf_counter()
    await server.broker.write_server_state(info, workers, ended)
    server.stats.heartbeat_done(time.perf_counter() - sent)
    server._listed.difference_update(ended)
    server._listed.update(server.jobs)
    for job in jobs:
        job.beaten = True
    for queue, queue_jobs in extend.items():
        expiry = await server.broker.extend_leases(queue, [j.msg.id for j in queue_jobs])
        for job in queue_jobs:
            job.lease_expiry = expiry


# --------------------------------------------------------------------------------------------------
# Recoverer, forwarder, janitor (asynq recoverer.go, forwarder.go, janitor.go)

async def recover(server: Server) -> None:
    await each_queue(server, server._recover_queue)  # a method: the router overrides it


async def recover_queue(server: Server, queue: str) -> None:
    """Retry or archive the tasks whose lease expired RECOVER_SLACK s ago (Redis clock) and that no
    live server lists; archive those whose message does not decode. One bad entry stops nothing."""
    from asynq_protocol import Corrupt, retry_delay_seconds

    for item in await server.broker.list_lease_expired(queue, server.RECOVER_SLACK):
        if isinstance(item, Corrupt):
            await archive_corrupt(server, item)
            continue
        msg = item
        if msg.id in server.jobs:
            continue
        text = "asynq: task lease expired"
        try:
            if msg.retried >= msg.retry:
                await server.broker.archive(msg, text)
            else:
                await server.broker.retry(msg, text, time.time() + retry_delay_seconds(msg.retried))
            server.stats.recovered += 1
            log.warning("recovered task with expired lease", extra=_fields(task_id=msg.id, queue=queue))
        except Exception as exc:  # NOT FOUND: another server won the race
            honour_cancellation()
            log.debug("recovery skipped", extra=_fields(task_id=msg.id, error=str(exc)))
    await server.broker.reclaim_stale_aggregation_sets(queue)


async def archive_corrupt(server: Server, corrupt: Any, unlist: str = "") -> None:
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
            server.stats.archived += 1
            log.error("corrupt task message archived", extra=_fields(**fields, error=corrupt.error,
                                                                     kept=f"asynq:{{{corrupt.queue}}}:archived"))

    write = server.broker.archive_corrupt(corrupt, unlist=unlist)
    write.add_done_callback(report)
    await asyncio.wait({write})  # a cancelled caller leaves the write and its report running


async def forward(server: Server) -> None:
    await each_queue(server, server.broker.forward)


async def janitor(server: Server) -> None:
    await each_queue(server, server.broker.delete_expired_completed)


async def each_queue(server: Server, action: Callable[[str], Awaitable[Any]]) -> None:
    """Run `action` for every queue; a failing queue does not keep the others waiting (the first
    failure is raised at the end, for `every` to log)."""
    failure: Exception | None = None
    for queue in server.queues:
        try:
            await action(queue)
        except Exception as exc:
            honour_cancellation()
            failure = failure or exc
    if failure is not None:
        raise failure


async def every(server: Server, interval: float, action: Callable[[], Awaitable[None]], now: bool = False) -> None:
    throttle = _Throttle()
    if not now:
        await asyncio.sleep(interval)
    while True:
        try:
            await action()
        except Exception as exc:
            honour_cancellation()
            server.stats.redis_failed(exc, sticky=False)
            if throttle.ready():
                log.warning(f"{action.__name__.strip('_')} failed", extra=_fields(error=str(exc)))
        honour_cancellation()
        await asyncio.sleep(interval)


async def until_redis(server: Server, action: Callable[[], Awaitable[Any]], what: str) -> Any:
    """Retry `action` with backoff until it succeeds (its result) or a stop is requested (None).

    An error retrying cannot fix (refused password, missing ACL permission) raises RedisStartupError.
    """
    from redis_checks import RedisStartupError, refusal

    delay, throttle, failing_since = 0.2, _Throttle(), None
    while not server._stop.is_set():
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
            server.stats.redis_failed(exc)
            if failing_since is None:
                failing_since = time.monotonic()
            if throttle.ready():
                log.warning(f"cannot {what}: Redis unreachable; retrying", extra=_fields(error=str(exc)))
            try:
                await asyncio.wait_for(server._stop.wait(), delay)
            except asyncio.TimeoutError:
                pass
            delay = min(delay * 2, 5.0)
    return None


# --------------------------------------------------------------------------------------------------
# Cancellation subscriber (asynq subscriber.go)

async def subscriber(server: Server) -> None:
    from asynq_protocol import CANCEL_CHANNEL

    # Reads are bounded and the stop flag is checked between them: redis-py's blocking pubsub read
    # can swallow a cancellation, and then a shutdown would wait on it forever.
    while not server._stop.is_set():
        pubsub = server.redis.pubsub()
        try:
            await pubsub.subscribe(CANCEL_CHANNEL)
            while not server._stop.is_set():
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if not message or message.get("type") != "message":
                    continue
                data = message["data"]
                job = server.jobs.get(data.decode() if isinstance(data, bytes) else str(data))
                if job and not job.interrupt.done():
                    job.interrupt.set_result("canceled")
        except asyncio.CancelledError:
            await _quietly(pubsub.aclose())
            raise
        except Exception as exc:
            log.debug("cancel subscription lost; resubscribing", extra=_fields(error=str(exc)))
        await _quietly(pubsub.aclose())
        if not server._stop.is_set():
            await asyncio.sleep(1.0)


# --------------------------------------------------------------------------------------------------
# Helpers

def honour_cancellation() -> None:
    """Re-raise a cancellation that was swallowed on its way out of a library call (seen with
    redis-py: the call returned or failed normally while our task was being cancelled); otherwise a
    polling loop goes back to sleep and shutdown waits for it forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _quietly(aw: Awaitable[Any]) -> None:
    try:
        await aw
    except Exception:
        pass
