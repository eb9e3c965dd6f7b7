"""Asynq v0.25.1 wire protocol: key names, protobuf messages, the broker, the enqueue client.

Everything a Go asynq server, client or Inspector reads is written here exactly as Go writes it, so a
Python worker can share queues with Go processes. The Lua scripts (`asynq_scripts`) are our own,
written from the protocol spec; several broker operations are batched (many tasks per script call or
pipeline) because round trips, not Redis, bound throughput.

Every text this module serialises is valid UTF-8: lone surrogates become U+FFFD, as Go turns invalid
UTF-8 into U+FFFD. A task whose stored message does not decode is archived with a readable error and
its bytes kept (see `Broker.archive_corrupt`) instead of stopping whoever read it.
Connections and the lean pipeline are in `redis_wire` (`connect`, `side_client`, `pipeline` re-exported).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

from asynq_scripts import SCRIPTS
from redis_wire import connect, pipeline, side_client  # noqa: F401 (connect, side_client re-exported)

__all__ = [
    "TaskMessage", "ServerInfo", "WorkerInfo", "Broker", "Client", "EnqueueError", "TaskAlreadyExists",
    "TaskIDConflict", "LEASE_SECONDS", "task_key", "unique_key", "retry_delay_seconds", "valid_text",
    "Corrupt", "Taken", "decode_task", "corrupt_record", "server_keys",
]

LEASE_SECONDS = 30
SERVER_INFO_TTL = 10
STATS_TTL_SECONDS = 90 * 24 * 3600
MAX_ARCHIVE_SIZE = 10000
ARCHIVE_MAX_AGE_DAYS = 90
MAX_INT64 = 9223372036854775807
DEFAULT_MAX_RETRY = 25
DEFAULT_TIMEOUT_SECONDS = 1800
FORWARD_BATCH = 100
JANITOR_BATCH = 100
CANCEL_CHANNEL = "asynq:cancel"
ALL_SERVERS = "asynq:servers"
ALL_WORKERS = "asynq:workers"
ALL_QUEUES = "asynq:queues"


# --------------------------------------------------------------------------------------------------
# Protobuf schema (package asynq, proto3), built at import time so no generated code or protoc is needed.

def _build_messages() -> dict[str, type]:
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(
        name="peekaping_worker/asynq.proto", package="asynq", syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"])

    def message(name: str, fields: Sequence[tuple], nested: Sequence[descriptor_pb2.DescriptorProto] = ()):
        m = fdp.message_type.add(name=name)
        m.nested_type.extend(nested)
        for fname, number, ftype, *rest in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=F.LABEL_OPTIONAL)
            if rest:
                f.label = rest[0] if len(rest) > 1 else F.LABEL_OPTIONAL
                f.type_name = rest[-1]
        return m

    def map_entry(name: str, value_type: int) -> descriptor_pb2.DescriptorProto:
        e = descriptor_pb2.DescriptorProto(name=name)
        e.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
        e.field.add(name="value", number=2, type=value_type, label=F.LABEL_OPTIONAL)
        e.options.map_entry = True
        return e

    S, B, I32, I64, BOOL, MSG = (F.TYPE_STRING, F.TYPE_BYTES, F.TYPE_INT32, F.TYPE_INT64, F.TYPE_BOOL,
                                 F.TYPE_MESSAGE)
    TS = ".google.protobuf.Timestamp"
    REP = F.LABEL_REPEATED
    message("TaskMessage", [
        ("type", 1, S), ("payload", 2, B), ("id", 3, S), ("queue", 4, S), ("retry", 5, I32),
        ("retried", 6, I32), ("error_msg", 7, S), ("last_failed_at", 11, I64), ("timeout", 8, I64),
        ("deadline", 9, I64), ("unique_key", 10, S), ("group_key", 14, S), ("retention", 12, I64),
        ("completed_at", 13, I64),
        # v0.26.0+ only; kept so that a re-encode never drops headers written by a newer client.
        ("headers", 15, MSG, REP, ".asynq.TaskMessage.HeadersEntry"),
    ], nested=[map_entry("HeadersEntry", S)])
    message("ServerInfo", [
        ("host", 1, S), ("pid", 2, I32), ("server_id", 3, S), ("concurrency", 4, I32),
        ("queues", 5, MSG, REP, ".asynq.ServerInfo.QueuesEntry"), ("strict_priority", 6, BOOL),
        ("status", 7, S), ("start_time", 8, MSG, TS), ("active_worker_count", 9, I32),
    ], nested=[map_entry("QueuesEntry", I32)])
    message("WorkerInfo", [
        ("host", 1, S), ("pid", 2, I32), ("server_id", 3, S), ("task_id", 4, S), ("task_type", 5, S),
        ("task_payload", 6, B), ("queue", 7, S), ("start_time", 8, MSG, TS), ("deadline", 9, MSG, TS),
    ])
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(fdp)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"asynq.{name}"))
            for name in ("TaskMessage", "ServerInfo", "WorkerInfo")}


_MESSAGES = _build_messages()
TaskMessage = _MESSAGES["TaskMessage"]
ServerInfo = _MESSAGES["ServerInfo"]
WorkerInfo = _MESSAGES["WorkerInfo"]


def set_timestamp(ts: Any, unix_seconds: float) -> None:
    ns = int(unix_seconds * 1e9)
    ts.seconds, ts.nanos = divmod(ns, 1_000_000_000)


_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD, so that it encodes as UTF-8.

    Python makes lone surrogates of undecodable bytes (surrogateescape) and of unpaired `\\udXXX` JSON
    escapes; protobuf refuses to serialise them, and Go has U+FFFD where the bytes were invalid.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


# --------------------------------------------------------------------------------------------------
# Stored task messages that do not decode

CORRUPT_PREFIX = "cannot decode task message: "


@dataclass(slots=True)
class Corrupt:
    """A task whose stored `msg` does not decode, or names another id or queue than the one it is under."""
    queue: str
    id: bytes  # as stored in the queue's lists, which need not be UTF-8
    raw: bytes  # the stored msg, verbatim
    error: str  # "cannot decode task message: <why>"

    @property
    def task_id(self) -> str:
        return self.id.decode("utf-8", "replace")


@dataclass(slots=True)
class Taken:
    """What one dequeue call took: the tasks to run, the corrupt ones, when their leases expire."""
    messages: list
    corrupt: list
    lease_expiry: float  # unix seconds on the local clock
    not_hashes: list = field(default_factory=list)  # (queue, id) whose task key is not a hash: dropped
    paused: list = field(default_factory=list)  # the queues paused when the script ran


def decode_task(queue: str, task_id: bytes, raw: bytes) -> Any:
    """The TaskMessage stored as task `task_id` of `queue`, or a Corrupt saying why it cannot be run."""
    msg = TaskMessage()
    try:
        msg.ParseFromString(raw)
    except Exception as exc:  # DecodeError; whatever else the parser raises means the same
        return Corrupt(queue, task_id, raw, CORRUPT_PREFIX + str(exc))
    if msg.id.encode() != task_id or msg.queue != queue:
        stored = task_id.decode("utf-8", "replace")
        return Corrupt(queue, task_id, raw, CORRUPT_PREFIX + f"it names task {msg.id!r} of queue {msg.queue!r} "
                                                            f"but is stored as task {stored!r} of queue {queue!r}")
    return msg


def corrupt_record(corrupt: Corrupt, now: float) -> Any:
    """The valid TaskMessage that replaces a corrupt one in the archive (the raw bytes are its payload)."""
    return TaskMessage(type=_leading_type(corrupt.raw), payload=corrupt.raw, id=corrupt.task_id,
                       queue=corrupt.queue, error_msg=valid_text(corrupt.error), last_failed_at=int(now))


def _leading_type(raw: bytes) -> str:
    """The task type if the bytes start with it intact (encoders write field 1 first); "" otherwise."""
    size = shift = 0
    for pos in range(1, min(len(raw), 6)) if raw[:1] == b"\x0a" else ():
        size |= (raw[pos] & 0x7F) << shift
        shift += 7
        if raw[pos] < 0x80:
            chunk = raw[pos + 1:pos + 1 + size]
            try:
                return chunk.decode("utf-8") if len(chunk) == size else ""
            except UnicodeDecodeError:
                return ""
    return ""


# --------------------------------------------------------------------------------------------------
# Keys

def queue_prefix(queue: str) -> str:
    return f"asynq:{{{queue}}}:"


def task_key(queue: str, task_id: str) -> str:
    return f"asynq:{{{queue}}}:t:{task_id}"


def unique_key(queue: str, task_type: str, payload: bytes | None) -> str:
    digest = "" if payload is None else hashlib.md5(payload).hexdigest()
    return f"asynq:{{{queue}}}:unique:{task_type}:{digest}"


_last_day: tuple[float, str] = (float("nan"), "")  # (unix day number, its date): every completion asks


def _day(now: float) -> str:
    global _last_day
    number = now // 86400
    last = _last_day
    if last[0] == number:
        return last[1]
    text = time.strftime("%Y-%m-%d", time.gmtime(now))
    _last_day = (number, text)
    return text


def retry_delay_seconds(retried: int) -> int:
    """Asynq's default RetryDelayFunc (Sidekiq's formula)."""
    return retried ** 4 + 15 + random.randint(0, 29) * (retried + 1)


_SHAS = {name: hashlib.sha1(body.encode()).hexdigest() for name, body in SCRIPTS.items()}


class EnqueueError(Exception):
    """An enqueue the broker refused; the text is the Go client's, which Peekaping matches on."""


class TaskAlreadyExists(EnqueueError):
    def __init__(self) -> None:
        super().__init__("task already exists")


class TaskIDConflict(EnqueueError):
    def __init__(self) -> None:
        super().__init__("task ID conflicts with another task")


class BrokerError(Exception):
    """A broker script answered with an error (`NOT FOUND`, `INTERNAL`)."""


# --------------------------------------------------------------------------------------------------

@dataclass
class Call:
    """One script call waiting in a batch; its future gets the reply or the exception."""
    script: str
    keys: list
    args: list
    future: asyncio.Future = field(default=None)  # type: ignore[assignment]


class Broker:
    """Runs the asynq scripts against one redis.asyncio client.

    Calls are sent with EVALSHA; scripts missing on the server (first use, Redis restart, SCRIPT
    FLUSH) are loaded and the call retried. Calls queued through `submit` are coalesced into
    pipelines so that many concurrent task completions cost one round trip.
    """

    def __init__(self, redis: Any, batch_limit: int = 256) -> None:
        self.redis = redis
        self._pending: list[Call] = []
        self._wakeup = asyncio.Event()
        self._batch_limit = batch_limit
        self._flusher: asyncio.Task | None = None

    # --- single calls --------------------------------------------------------------------------
    async def run(self, script: str, keys: Sequence, args: Sequence) -> Any:
        reply = (await pipeline(self.redis, [("EVALSHA", _SHAS[script], len(keys), *keys, *args)]))[0]
        if _is_noscript(reply):
            reply = (await pipeline(self.redis, [("EVAL", SCRIPTS[script], len(keys), *keys, *args)]))[0]
        if isinstance(reply, Exception):
            raise reply
        return reply

    # --- batched calls -------------------------------------------------------------------------
    def submit(self, script: str, keys: list, args: list) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        call = Call(script, keys, args, loop.create_future())
        self._pending.append(call)
        self._wakeup.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush_loop())
        return call.future

    async def _flush_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = self._pending[: self._batch_limit]
                del self._pending[: self._batch_limit]
                await self._send(batch)

    async def _send(self, batch: list[Call]) -> None:
        try:
            replies = await self._pipeline(batch)
            if any(_is_noscript(r) for r in replies):
                await self.load_scripts()
                replies = await self._pipeline(batch)
        except Exception as exc:  # connection trouble: every caller sees it
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(exc)
            return
        for call, reply in zip(batch, replies):
            if call.future.done():
                continue
            if isinstance(reply, Exception):
                call.future.set_exception(BrokerError(str(reply)) if _is_script_error(reply) else reply)
            else:
                call.future.set_result(reply)

    async def _pipeline(self, batch: list[Call]) -> list:
        commands = [("SADD", *call.keys) if call.script == "SADD" else
                    ("EVALSHA", _SHAS[call.script], len(call.keys), *call.keys, *call.args) for call in batch]
        return await pipeline(self.redis, commands)

    async def load_scripts(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for body in SCRIPTS.values():
            pipe.script_load(body)
        await pipe.execute()

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()

    # --- server-side operations ----------------------------------------------------------------
    async def take(self, queues: Sequence[str], orders: Sequence[Sequence[int]], worker: Any = None) -> Taken:
        """Take up to len(orders) tasks; orders[i] lists queue indexes to try, in order, for slot i.

        With `worker` (anything with host, pid and server_id), the same script lists each task taken in
        that server's `asynq:workers:{…}` hash, so no task is active without a server naming it.
        Lease scores are Redis TIME + 30 s; `lease_expiry` is that moment on the local clock (never
        later than the Redis lease). Messages that do not decode come back in `corrupt`, still active.
        """
        prefix, wkey = b"", ALL_WORKERS  # without a worker the key is declared but never written
        if worker is not None:
            prefix = WorkerInfo(host=worker.host, pid=worker.pid, server_id=worker.server_id).SerializeToString()
            wkey = server_keys(worker.host, worker.pid, worker.server_id)[1]
        keys = [ALL_WORKERS, wkey]
        for q in queues:
            p = queue_prefix(q)
            keys += [p + "pending", p + "paused", p + "active", p + "lease"]
        args: list[Any] = [LEASE_SECONDS, len(orders), prefix, SERVER_INFO_TTL, *queues]
        args += [",".join(str(i + 1) for i in order) for order in orders]
        sent = time.time()
        reply = await self.run("dequeue_batch", keys, args)
        taken = Taken([], [], sent + LEASE_SECONDS - int(reply[1]) / 1e6,
                      paused=[queues[int(i) - 1] for i in reply[2].split(b",") if i])
        for i in range(3, len(reply), 3):
            queue, task_id, raw = queues[int(reply[i]) - 1], reply[i + 1], reply[i + 2]
            if raw is None:
                taken.not_hashes.append((queue, task_id.decode("utf-8", "replace")))
                continue
            got = decode_task(queue, task_id, raw)
            (taken.corrupt if isinstance(got, Corrupt) else taken.messages).append(got)
        return taken

    async def dequeue(self, queues: Sequence[str], orders: Sequence[Sequence[int]]) -> list[Any]:
        """The decodable messages of `take` without a worker (tools and tests)."""
        return (await self.take(queues, orders)).messages

    # `unlist`, on the completion writes: a workers key whose entry for the task goes in the same script
    # (given while no heartbeat has listed the task: Go's hash would not show it).
    def done(self, msg: Any, now: float | None = None, unlist: str = "") -> asyncio.Future:
        now = time.time() if now is None else now
        p = queue_prefix(msg.queue)
        keys = [p + "active", p + "lease", p + "t:" + msg.id, p + "processed:" + _day(now), p + "processed"]
        if msg.unique_key:
            keys.append(msg.unique_key)
        return self.submit("done", keys, [msg.id, int(now) + STATS_TTL_SECONDS, MAX_INT64, unlist])

    def mark_complete(self, msg: Any, now: float | None = None, unlist: str = "") -> asyncio.Future:
        now = time.time() if now is None else now
        p = queue_prefix(msg.queue)
        done = TaskMessage()
        done.CopyFrom(msg)
        done.completed_at = int(now)
        keys = [p + "active", p + "lease", p + "completed", p + "t:" + msg.id, p + "processed:" + _day(now),
                p + "processed"]
        if msg.unique_key:
            keys.append(msg.unique_key)
        args = [msg.id, int(now) + STATS_TTL_SECONDS, int(now) + msg.retention, done.SerializeToString(),
                MAX_INT64, unlist]
        return self.submit("mark_complete", keys, args)

    def requeue(self, msg: Any, unlist: str = "") -> asyncio.Future:
        p = queue_prefix(msg.queue)
        return self.submit("requeue", [p + "active", p + "lease", p + "pending", p + "t:" + msg.id], [msg.id, unlist])

    def retry(self, msg: Any, error: str, retry_at: float, is_failure: bool = True,
              now: float | None = None, unlist: str = "") -> asyncio.Future:
        now = time.time() if now is None else now
        p = queue_prefix(msg.queue)
        failed = _failed_copy(msg, error, now)
        if is_failure:
            failed.retried += 1
        day = _day(now)
        keys = [p + "t:" + msg.id, p + "active", p + "lease", p + "retry", p + "processed:" + day,
                p + "failed:" + day, p + "processed", p + "failed"]
        args = [msg.id, failed.SerializeToString(), int(retry_at), int(now) + STATS_TTL_SECONDS,
                1 if is_failure else 0, MAX_INT64, unlist]
        return self.submit("retry", keys, args)

    def archive(self, msg: Any, error: str, now: float | None = None, unlist: str = "") -> asyncio.Future:
        now = time.time() if now is None else now
        failed = _failed_copy(msg, error, now)
        return self._archive(msg.queue, msg.id.encode(), failed.SerializeToString(), now, [unlist])

    def archive_corrupt(self, corrupt: Corrupt, now: float | None = None, unlist: str = "") -> asyncio.Future:
        """Archive an active task whose msg does not decode, keeping it for inspection.

        `msg` becomes a valid TaskMessage (same id and queue, the raw bytes as payload, `error_msg`
        "cannot decode task message: …"), so Go's Inspector and asynqmon list and show it; the bytes
        are also kept verbatim in the hash field `corrupt_msg`. Stats count it like any archive.
        """
        now = time.time() if now is None else now
        record = corrupt_record(corrupt, now).SerializeToString()
        return self._archive(corrupt.queue, corrupt.id, record, now, [unlist, corrupt.raw])

    def _archive(self, queue: str, task_id: bytes, msg: bytes, now: float, extra: list) -> asyncio.Future:
        p = queue_prefix(queue)
        day = _day(now)
        cutoff = int(now) - ARCHIVE_MAX_AGE_DAYS * 86400  # Go's AddDate(0,0,-90): in UTC, always 90 x 24 h
        keys = [p.encode() + b"t:" + task_id, p + "active", p + "lease", p + "archived", p + "processed:" + day,
                p + "failed:" + day, p + "processed", p + "failed", p + "t:"]
        args = [task_id, msg, int(now), cutoff, MAX_ARCHIVE_SIZE, int(now) + STATS_TTL_SECONDS, MAX_INT64, *extra]
        return self.submit("archive", keys, args)

    async def extend_leases(self, queue: str, ids: Iterable[str]) -> float | None:
        """Push the leases of ids still leased to Redis TIME + 30 s (ZADD XX); returns that moment on the
        local clock, or None when there was nothing to extend."""
        ids = list(ids)
        if not ids:
            return None
        sent = time.time()
        reply = await self.run("extend_leases", [queue_prefix(queue) + "lease"], [LEASE_SECONDS, *ids])
        return sent + LEASE_SECONDS - int(reply[1]) / 1e6

    async def forward(self, queue: str) -> int:
        p = queue_prefix(queue)
        moved = 0
        for source in ("scheduled", "retry"):
            while True:
                now_ns = time.time_ns()
                n = await self.run("forward", [p + source, p + "pending"],
                                   [now_ns // 1_000_000_000, p + "t:", now_ns, p + "g:"])
                moved += n
                if n == 0:
                    break
        return moved

    async def list_lease_expired(self, queue: str, slack: float) -> list[Any]:
        """Tasks of `queue` to recover: lease expired at least `slack` s ago by the Redis clock, and no
        server lists them in its workers hash. Each is a TaskMessage, or a Corrupt if it does not decode."""
        p = queue_prefix(queue)
        reply = await self.run("list_lease_expired", [p + "lease", ALL_WORKERS], [slack, p + "t:"])
        return [decode_task(queue, reply[i], reply[i + 1]) for i in range(0, len(reply), 2)]

    async def reclaim_stale_aggregation_sets(self, queue: str) -> None:
        await self.run("reclaim_stale_aggregation_sets", [queue_prefix(queue) + "aggregation_sets"],
                       [int(time.time())])

    async def delete_expired_completed(self, queue: str) -> int:
        p = queue_prefix(queue)
        total = 0
        while True:
            n = await self.run("delete_expired_completed", [p + "completed"],
                               [int(time.time()), p + "t:", JANITOR_BATCH])
            total += n
            if n == 0:
                return total

    async def write_server_state(self, info: Any, workers: Sequence[Any], ended: Sequence[Any] = ()) -> None:
        """The heartbeat: server info, a workers entry per running task, `ended` ids dropped from the hash.

        Both registration zset scores are Redis TIME + 10 s, so Inspectors prune us by the Redis clock.
        """
        skey, wkey = server_keys(info.host, info.pid, info.server_id)
        args: list[Any] = [SERVER_INFO_TTL, info.SerializeToString(), len(ended), *ended]
        for w in workers:
            args += [w.task_id, w.SerializeToString()]
        await self.run("write_server_state", [ALL_SERVERS, ALL_WORKERS, skey, wkey], args)

    async def clear_server_state(self, host: str, pid: int, server_id: str) -> None:
        skey, wkey = server_keys(host, pid, server_id)
        await self.redis.zrem(ALL_SERVERS, skey)
        await self.redis.zrem(ALL_WORKERS, wkey)
        await self.run("clear_server_state", [skey, wkey], [])


def server_keys(host: str, pid: int, server_id: str) -> tuple[str, str]:
    """`asynq:servers:{host:pid:id}` and `asynq:workers:{host:pid:id}`."""
    ident = f"{host}:{pid}:{server_id}"
    return f"asynq:servers:{{{ident}}}", f"asynq:workers:{{{ident}}}"


def _failed_copy(msg: Any, error: str, now: float) -> Any:
    """The message as retry and archive rewrite it: same fields plus the error and the failure time."""
    failed = TaskMessage()
    failed.CopyFrom(msg)
    failed.error_msg = valid_text(error)
    failed.last_failed_at = int(now)
    return failed


def _is_noscript(reply: Any) -> bool:
    # redis-py strips the NOSCRIPT prefix into the NoScriptError class; match either form.
    return isinstance(reply, Exception) and (type(reply).__name__ == "NoScriptError" or "NOSCRIPT" in str(reply))


def _is_script_error(reply: Any) -> bool:
    text = str(reply)
    return text.startswith("NOT FOUND") or text.startswith("INTERNAL")


# --------------------------------------------------------------------------------------------------
# Client

class Client:
    """Enqueues tasks exactly like `asynq.Client.Enqueue` (options, defaults, conflict errors)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def build(self, task_type: str, payload: bytes | None, *, queue: str = "default",
              max_retry: int = DEFAULT_MAX_RETRY, timeout: float | None = None, deadline: float | None = None,
              retention: float = 0, unique_ttl: float | None = None, task_id: str | None = None,
              process_at: float | None = None, process_in: float | None = None,
              now: float | None = None) -> tuple[Any, float, int]:
        """Validate options and build the TaskMessage; returns (msg, process_at, unique_ttl_seconds)."""
        now = time.time() if now is None else now
        if not task_type or not task_type.strip():
            raise ValueError("task typename cannot be empty")
        if not queue or not queue.strip():
            raise ValueError("queue name must contain one or more characters")
        if task_id is not None and not task_id.strip():
            raise ValueError("task ID cannot be empty")
        if unique_ttl is not None and unique_ttl < 1:
            raise ValueError("Unique TTL cannot be less than 1s")
        task_type, queue = valid_text(task_type), valid_text(queue)
        task_id = None if task_id is None else valid_text(task_id)
        timeout_s = int(timeout) if timeout is not None else 0
        has_deadline = deadline is not None and int(deadline) != 0
        if not has_deadline and (timeout is None or timeout == 0):
            timeout_s = DEFAULT_TIMEOUT_SECONDS
        msg = TaskMessage(type=task_type, payload=payload or b"", id=task_id or str(uuid.uuid4()), queue=queue,
                          retry=max(0, int(max_retry)), timeout=timeout_s,
                          deadline=int(deadline) if has_deadline else 0, retention=int(retention))
        if unique_ttl is not None:
            msg.unique_key = unique_key(queue, task_type, payload)
        at = process_at if process_at is not None else now + (process_in or 0)
        return msg, at, int(unique_ttl or 0)

    async def enqueue(self, task_type: str, payload: bytes | None, **options: Any) -> Any:
        """Enqueue one task; raises TaskAlreadyExists / TaskIDConflict with Go's texts."""
        msg, process_at, ttl = self.build(task_type, payload, **options)
        return await self.enqueue_message(msg, process_at, ttl)

    async def enqueue_message(self, msg: Any, process_at: float, unique_ttl: int) -> Any:
        now = time.time()
        p = queue_prefix(msg.queue)
        tkey = p + "t:" + msg.id
        data = msg.SerializeToString()
        if process_at > now:
            if msg.unique_key:
                ttl = int(process_at - now + unique_ttl)
                call = ("schedule_unique", [msg.unique_key, tkey, p + "scheduled"],
                        [msg.id, ttl, int(process_at), data])
            else:
                call = ("schedule", [tkey, p + "scheduled"], [data, int(process_at), msg.id])
        elif msg.unique_key:
            call = ("enqueue_unique", [msg.unique_key, tkey, p + "pending"], [msg.id, unique_ttl, data, time.time_ns()])
        else:
            call = ("enqueue", [tkey, p + "pending"], [data, msg.id, time.time_ns()])
        # SADD and the script travel in one pipeline: two commands, one round trip.
        sadd = self.broker.submit("SADD", [ALL_QUEUES, msg.queue], [])
        result = self.broker.submit(*call)
        try:
            await sadd
        except Exception:
            if result.done() and not result.cancelled():  # the same batch: answered too
                result.exception()  # retrieved, so it is not reported as lost; the SADD's error is raised
            raise
        reply = await result
        if reply == -1:
            raise TaskAlreadyExists()
        if reply == 0:
            raise TaskIDConflict()
        return msg
