"""Asynq v0.25.1 wire protocol: key names, protobuf messages, broker Lua scripts, the enqueue client.

Everything a Go asynq server, client or Inspector reads is written here exactly as Go writes it, so a
Python worker can share queues with Go processes. The scripts are our own, written from the protocol
spec; several broker operations are batched (many tasks per script call or pipeline) because round
trips, not Redis, bound throughput.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

__all__ = [
    "TaskMessage", "ServerInfo", "WorkerInfo", "Broker", "Client", "EnqueueError", "TaskAlreadyExists",
    "TaskIDConflict", "LEASE_SECONDS", "task_key", "unique_key", "retry_delay_seconds",
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


# --------------------------------------------------------------------------------------------------
# Keys

def queue_prefix(queue: str) -> str:
    return f"asynq:{{{queue}}}:"


def task_key(queue: str, task_id: str) -> str:
    return f"asynq:{{{queue}}}:t:{task_id}"


def unique_key(queue: str, task_type: str, payload: bytes | None) -> str:
    digest = "" if payload is None else hashlib.md5(payload).hexdigest()
    return f"asynq:{{{queue}}}:unique:{task_type}:{digest}"


def _day(now: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(now))


def retry_delay_seconds(retried: int) -> int:
    """Asynq's default RetryDelayFunc (Sidekiq's formula)."""
    return retried ** 4 + 15 + random.randint(0, 29) * (retried + 1)


# --------------------------------------------------------------------------------------------------
# Lua scripts. Each mirrors one Go broker script; keys and arguments follow the protocol spec.

_STATS = """
local function bump_day(key, expire_at)
  if redis.call("INCR", key) == 1 then redis.call("EXPIREAT", key, expire_at) end
end
local function bump_total(key, maxint)
  if redis.call("GET", key) == maxint then redis.call("SET", key, 1) else redis.call("INCR", key) end
end
local function bump_pair(processed, failed, maxint)
  if redis.call("GET", processed) == maxint then
    redis.call("SET", processed, 1); redis.call("SET", failed, 1)
  else
    redis.call("INCR", processed); redis.call("INCR", failed)
  end
end
local function leave_active(active, lease, id)
  if redis.call("LREM", active, 0, id) == 0 then return redis.error_reply("NOT FOUND") end
  if redis.call("ZREM", lease, id) == 0 then return redis.error_reply("NOT FOUND") end
  return nil
end
"""

SCRIPTS: dict[str, str] = {
    # KEYS: t, pending.  ARGV: msg, id, now_ns
    "enqueue": """
if redis.call("EXISTS", KEYS[1]) == 1 then return 0 end
redis.call("HSET", KEYS[1], "msg", ARGV[1], "state", "pending", "pending_since", ARGV[3])
redis.call("LPUSH", KEYS[2], ARGV[2])
return 1
""",
    # KEYS: unique, t, pending.  ARGV: id, ttl, msg, now_ns
    "enqueue_unique": """
if not redis.call("SET", KEYS[1], ARGV[1], "NX", "EX", ARGV[2]) then return -1 end
if redis.call("EXISTS", KEYS[2]) == 1 then return 0 end
redis.call("HSET", KEYS[2], "msg", ARGV[3], "state", "pending", "pending_since", ARGV[4], "unique_key", KEYS[1])
redis.call("LPUSH", KEYS[3], ARGV[1])
return 1
""",
    # KEYS: t, scheduled.  ARGV: msg, process_at, id
    "schedule": """
if redis.call("EXISTS", KEYS[1]) == 1 then return 0 end
redis.call("HSET", KEYS[1], "msg", ARGV[1], "state", "scheduled")
redis.call("ZADD", KEYS[2], ARGV[2], ARGV[3])
return 1
""",
    # KEYS: unique, t, scheduled.  ARGV: id, ttl, process_at, msg
    "schedule_unique": """
if not redis.call("SET", KEYS[1], ARGV[1], "NX", "EX", ARGV[2]) then return -1 end
if redis.call("EXISTS", KEYS[2]) == 1 then return 0 end
redis.call("HSET", KEYS[2], "msg", ARGV[4], "state", "scheduled", "unique_key", KEYS[1])
redis.call("ZADD", KEYS[3], ARGV[3], ARGV[1])
return 1
""",
    # Many Go dequeues in one call. KEYS: per queue i: pending, paused, active, lease.
    # ARGV: lease_expiry, slots, then one task-key prefix per queue, then one queue order per slot
    # ("2,1,3"). Each slot walks its order and takes the first task, exactly like one Go dequeue.
    # An id whose hash is missing is dropped from active/lease instead of being left stuck there.
    "dequeue_batch": """
local nq = #KEYS / 4
local slots = tonumber(ARGV[2])
local out = {}
local empty = {}
for q = 1, nq do
  if redis.call("EXISTS", KEYS[(q-1)*4+2]) == 1 then empty[q] = true end
end
for s = 1, slots do
  local got = false
  for qs in string.gmatch(ARGV[2 + nq + s], "%d+") do
    local q = tonumber(qs)
    while not empty[q] do
      local b = (q-1)*4
      local id = redis.call("RPOPLPUSH", KEYS[b+1], KEYS[b+3])
      if not id then empty[q] = true break end
      local key = ARGV[2+q] .. id
      redis.call("HSET", key, "state", "active")
      redis.call("HDEL", key, "pending_since")
      redis.call("ZADD", KEYS[b+4], ARGV[1], id)
      local msg = redis.call("HGET", key, "msg")
      if msg then
        out[#out+1] = msg
        got = true
        break
      end
      redis.call("LREM", KEYS[b+3], 1, id)
      redis.call("ZREM", KEYS[b+4], id)
      redis.call("DEL", key)
    end
    if got then break end
  end
  if not got then break end
end
return out
""",
    # KEYS: active, lease, t, processed:day, processed[, unique]. ARGV: id, stats_expire_at, maxint
    "done": _STATS + """
local err = leave_active(KEYS[1], KEYS[2], ARGV[1]) if err then return err end
if redis.call("DEL", KEYS[3]) == 0 then return redis.error_reply("NOT FOUND") end
bump_day(KEYS[4], ARGV[2])
bump_total(KEYS[5], ARGV[3])
if KEYS[6] and redis.call("GET", KEYS[6]) == ARGV[1] then redis.call("DEL", KEYS[6]) end
return redis.status_reply("OK")
""",
    # KEYS: active, lease, completed, t, processed:day, processed[, unique].
    # ARGV: id, stats_expire_at, completed_score, msg, maxint
    "mark_complete": _STATS + """
local err = leave_active(KEYS[1], KEYS[2], ARGV[1]) if err then return err end
if redis.call("ZADD", KEYS[3], ARGV[3], ARGV[1]) ~= 1 then return redis.error_reply("INTERNAL") end
redis.call("HSET", KEYS[4], "msg", ARGV[4], "state", "completed")
bump_day(KEYS[5], ARGV[2])
bump_total(KEYS[6], ARGV[5])
if KEYS[7] and redis.call("GET", KEYS[7]) == ARGV[1] then redis.call("DEL", KEYS[7]) end
return redis.status_reply("OK")
""",
    # KEYS: active, lease, pending, t. ARGV: id
    "requeue": _STATS + """
local err = leave_active(KEYS[1], KEYS[2], ARGV[1]) if err then return err end
redis.call("RPUSH", KEYS[3], ARGV[1])
redis.call("HSET", KEYS[4], "state", "pending")
return redis.status_reply("OK")
""",
    # KEYS: t, active, lease, retry, processed:day, failed:day, processed, failed.
    # ARGV: id, msg, retry_at, stats_expire_at, is_failure, maxint
    "retry": _STATS + """
local err = leave_active(KEYS[2], KEYS[3], ARGV[1]) if err then return err end
redis.call("ZADD", KEYS[4], ARGV[3], ARGV[1])
redis.call("HSET", KEYS[1], "msg", ARGV[2], "state", "retry")
if tonumber(ARGV[5]) == 1 then
  bump_day(KEYS[5], ARGV[4])
  bump_day(KEYS[6], ARGV[4])
  bump_pair(KEYS[7], KEYS[8], ARGV[6])
end
return redis.status_reply("OK")
""",
    # KEYS: t, active, lease, archived, processed:day, failed:day, processed, failed, t-prefix.
    # ARGV: id, msg, now, cutoff, max_size, stats_expire_at, maxint
    "archive": _STATS + """
local err = leave_active(KEYS[2], KEYS[3], ARGV[1]) if err then return err end
redis.call("ZADD", KEYS[4], ARGV[3], ARGV[1])
for _, old in ipairs(redis.call("ZRANGEBYSCORE", KEYS[4], "-inf", ARGV[4])) do
  redis.call("DEL", KEYS[9] .. old)
  redis.call("ZREM", KEYS[4], old)
end
for _, old in ipairs(redis.call("ZRANGE", KEYS[4], 0, -tonumber(ARGV[5]))) do
  redis.call("DEL", KEYS[9] .. old)
  redis.call("ZREM", KEYS[4], old)
end
redis.call("HSET", KEYS[1], "msg", ARGV[2], "state", "archived")
bump_day(KEYS[5], ARGV[6])
bump_day(KEYS[6], ARGV[6])
bump_pair(KEYS[7], KEYS[8], ARGV[7])
return redis.status_reply("OK")
""",
    # KEYS: source zset, pending. ARGV: now, t-prefix, now_ns, group-prefix
    "forward": """
local ids = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", ARGV[1], "LIMIT", 0, 100)
for _, id in ipairs(ids) do
  local key = ARGV[2] .. id
  local group = redis.call("HGET", key, "group")
  if group and group ~= "" then
    redis.call("ZADD", ARGV[4] .. group, ARGV[1], id)
    redis.call("ZREM", KEYS[1], id)
    redis.call("HSET", key, "state", "aggregating")
  else
    redis.call("LPUSH", KEYS[2], id)
    redis.call("ZREM", KEYS[1], id)
    redis.call("HSET", key, "state", "pending", "pending_since", ARGV[3])
  end
end
return #ids
""",
    # KEYS: lease. ARGV: cutoff, t-prefix.  Read-only.
    "list_lease_expired": """
local out = {}
for _, id in ipairs(redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", ARGV[1])) do
  local msg = redis.call("HGET", ARGV[2] .. id, "msg")
  if msg then out[#out+1] = msg end
end
return out
""",
    # KEYS: completed. ARGV: now, t-prefix, batch
    "delete_expired_completed": """
local ids = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", ARGV[1], "LIMIT", 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call("DEL", ARGV[2] .. id)
  redis.call("ZREM", KEYS[1], id)
end
return #ids
""",
    # KEYS: server key, workers key. ARGV: ttl, server info, (id, worker info)...
    "write_server_state": """
redis.call("SETEX", KEYS[1], ARGV[1], ARGV[2])
redis.call("DEL", KEYS[2])
for i = 3, #ARGV, 2 do redis.call("HSET", KEYS[2], ARGV[i], ARGV[i+1]) end
redis.call("EXPIRE", KEYS[2], ARGV[1])
return redis.status_reply("OK")
""",
    # KEYS: server key, workers key
    "clear_server_state": """
redis.call("DEL", KEYS[1])
redis.call("DEL", KEYS[2])
return redis.status_reply("OK")
""",
    # Reclaim stale aggregation sets (the recoverer does this even without a group aggregator).
    # KEYS: aggregation_sets. ARGV: now
    "reclaim_stale_aggregation_sets": """
for _, setkey in ipairs(redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", ARGV[1])) do
  local groupkey = string.match(setkey, "^(.*):[^:]*$")
  for _, pair in ipairs({redis.call("ZRANGE", setkey, 0, -1, "WITHSCORES")}) do
    for i = 1, #pair, 2 do redis.call("ZADD", groupkey, pair[i+1], pair[i]) end
  end
  redis.call("DEL", setkey)
  redis.call("ZREM", KEYS[1], setkey)
end
return redis.status_reply("OK")
""",
}
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
        try:
            return await self.redis.evalsha(_SHAS[script], len(keys), *keys, *args)
        except Exception as exc:
            if not _is_noscript(exc):
                raise
        return await self.redis.eval(SCRIPTS[script], len(keys), *keys, *args)

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
        pipe = self.redis.pipeline(transaction=False)
        for call in batch:
            if call.script == "SADD":
                pipe.sadd(*call.keys)
            else:
                pipe.evalsha(_SHAS[call.script], len(call.keys), *call.keys, *call.args)
        return await pipe.execute(raise_on_error=False)

    async def load_scripts(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for body in SCRIPTS.values():
            pipe.script_load(body)
        await pipe.execute()

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()

    # --- server-side operations ----------------------------------------------------------------
    async def dequeue(self, queues: Sequence[str], orders: Sequence[Sequence[int]]) -> list[Any]:
        """Take up to len(orders) tasks; orders[i] lists queue indexes to try, in order, for slot i."""
        keys: list[str] = []
        for q in queues:
            p = queue_prefix(q)
            keys += [p + "pending", p + "paused", p + "active", p + "lease"]
        args: list[Any] = [int(time.time()) + LEASE_SECONDS, len(orders)]
        args += [queue_prefix(q) + "t:" for q in queues]
        args += [",".join(str(i + 1) for i in order) for order in orders]
        return _decode_messages(await self.run("dequeue_batch", keys, args))

    def done(self, msg: Any, now: float | None = None) -> asyncio.Future:
        now = time.time() if now is None else now
        p = queue_prefix(msg.queue)
        keys = [p + "active", p + "lease", p + "t:" + msg.id, p + "processed:" + _day(now), p + "processed"]
        if msg.unique_key:
            keys.append(msg.unique_key)
        return self.submit("done", keys, [msg.id, int(now) + STATS_TTL_SECONDS, MAX_INT64])

    def mark_complete(self, msg: Any, now: float | None = None) -> asyncio.Future:
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
                MAX_INT64]
        return self.submit("mark_complete", keys, args)

    def requeue(self, msg: Any) -> asyncio.Future:
        p = queue_prefix(msg.queue)
        return self.submit("requeue", [p + "active", p + "lease", p + "pending", p + "t:" + msg.id], [msg.id])

    def retry(self, msg: Any, error: str, retry_at: float, is_failure: bool = True,
              now: float | None = None) -> asyncio.Future:
        now = time.time() if now is None else now
        p = queue_prefix(msg.queue)
        failed = _failed_copy(msg, error, now)
        if is_failure:
            failed.retried += 1
        day = _day(now)
        keys = [p + "t:" + msg.id, p + "active", p + "lease", p + "retry", p + "processed:" + day,
                p + "failed:" + day, p + "processed", p + "failed"]
        args = [msg.id, failed.SerializeToString(), int(retry_at), int(now) + STATS_TTL_SECONDS,
                1 if is_failure else 0, MAX_INT64]
        return self.submit("retry", keys, args)

    def archive(self, msg: Any, error: str, now: float | None = None) -> asyncio.Future:
        now = time.time() if now is None else now
        p = queue_prefix(msg.queue)
        failed = _failed_copy(msg, error, now)
        day = _day(now)
        cutoff = int(now) - ARCHIVE_MAX_AGE_DAYS * 86400  # Go's AddDate(0,0,-90): in UTC, always 90 x 24 h
        keys = [p + "t:" + msg.id, p + "active", p + "lease", p + "archived", p + "processed:" + day,
                p + "failed:" + day, p + "processed", p + "failed", p + "t:"]
        args = [msg.id, failed.SerializeToString(), int(now), cutoff, MAX_ARCHIVE_SIZE,
                int(now) + STATS_TTL_SECONDS, MAX_INT64]
        return self.submit("archive", keys, args)

    async def extend_leases(self, queue: str, ids: Iterable[str]) -> float:
        """ZADD XX the new expiry for ids still leased; returns the new expiry (unix seconds)."""
        expiry = time.time() + LEASE_SECONDS
        score = int(expiry)
        mapping = {task_id: score for task_id in ids}
        if mapping:
            await self.redis.zadd(queue_prefix(queue) + "lease", mapping, xx=True)
        return expiry

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

    async def list_lease_expired(self, queue: str, cutoff: float) -> list[Any]:
        p = queue_prefix(queue)
        return _decode_messages(await self.run("list_lease_expired", [p + "lease"], [int(cutoff), p + "t:"]))

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

    async def write_server_state(self, info: Any, workers: Sequence[Any]) -> None:
        ident = f"{info.host}:{info.pid}:{info.server_id}"
        skey, wkey = f"asynq:servers:{{{ident}}}", f"asynq:workers:{{{ident}}}"
        exp = int(time.time()) + SERVER_INFO_TTL
        args: list[Any] = [SERVER_INFO_TTL, info.SerializeToString()]
        for w in workers:
            args += [w.task_id, w.SerializeToString()]
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(ALL_SERVERS, {skey: exp})
        pipe.zadd(ALL_WORKERS, {wkey: exp})
        pipe.evalsha(_SHAS["write_server_state"], 2, skey, wkey, *args)
        replies = await pipe.execute(raise_on_error=False)
        if _is_noscript(replies[-1]):
            await self.run("write_server_state", [skey, wkey], args)
        elif isinstance(replies[-1], Exception):
            raise replies[-1]
        for r in replies[:2]:
            if isinstance(r, Exception):
                raise r

    async def clear_server_state(self, host: str, pid: int, server_id: str) -> None:
        ident = f"{host}:{pid}:{server_id}"
        skey, wkey = f"asynq:servers:{{{ident}}}", f"asynq:workers:{{{ident}}}"
        await self.redis.zrem(ALL_SERVERS, skey)
        await self.redis.zrem(ALL_WORKERS, wkey)
        await self.run("clear_server_state", [skey, wkey], [])

    async def live_worker_task_ids(self) -> set[str]:
        """Task ids that some server still reports as running (its workers hash has not expired)."""
        keys = await self.redis.zrange(ALL_WORKERS, 0, -1)
        ids: set[str] = set()
        for key in keys:
            ids.update(_text(k) for k in await self.redis.hkeys(key))
        return ids


# --------------------------------------------------------------------------------------------------
# Connections

def connect(url: str | None = None, *, max_connections: int = 32, **options: Any) -> Any:
    """A redis.asyncio client over a blocking pool (waits for a free connection instead of failing).

    Commands are serialised with hiredis when it is installed: redis-py's asyncio connections pack in
    pure Python, which was ~40% of the worker's CPU per task in profiles.
    """
    import redis.asyncio as aioredis

    common = dict(max_connections=max_connections, timeout=None, protocol=2, **options)
    if url:
        pool = aioredis.BlockingConnectionPool.from_url(url, **common)
    else:
        pool = aioredis.BlockingConnectionPool(**common)
    pool.connection_class = _fast_connection_class(pool.connection_class)
    return aioredis.Redis(connection_pool=pool)


def _fast_connection_class(base: type) -> type:
    try:
        import hiredis
    except ImportError:
        return base
    if not hasattr(hiredis, "pack_command"):
        return base

    def pack_command(self: Any, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):
            args = tuple(args[0].encode().split()) + args[1:]
        elif b" " in args[0]:
            args = tuple(args[0].split()) + args[1:]
        return [hiredis.pack_command(tuple(bytes(a) if isinstance(a, (bytearray, memoryview)) else a for a in args))]

    return type(f"Hiredis{base.__name__}", (base,), {"pack_command": pack_command})


def _decode_messages(raw: Sequence[bytes] | None) -> list[Any]:
    out = []
    for data in raw or ():
        msg = TaskMessage()
        msg.ParseFromString(data)
        out.append(msg)
    return out


def _failed_copy(msg: Any, error: str, now: float) -> Any:
    """The message as retry and archive rewrite it: same fields plus the error and the failure time."""
    failed = TaskMessage()
    failed.CopyFrom(msg)
    failed.error_msg = error
    failed.last_failed_at = int(now)
    return failed


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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
        await asyncio.wait((sadd, result))
        errors = [sadd.exception(), result.exception()]  # retrieve both, so neither is reported as lost
        if errors[0] or errors[1]:
            raise errors[0] or errors[1]
        reply = result.result()
        if reply == -1:
            raise TaskAlreadyExists()
        if reply == 0:
            raise TaskIDConflict()
        return msg
