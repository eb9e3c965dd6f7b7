"""The broker's Lua scripts (asynq v0.25.1 operations), kept apart from the Python that calls them.

Each script mirrors one Go broker script; keys and arguments follow the protocol spec. Where a script
differs from Go's it says so: several take many tasks per call, lease and registration times come from
Redis `TIME` (so a host with a wrong clock cannot write a lease that looks expired, or one that never
expires), and the dequeue lists each task it takes in this server's `asynq:workers:{…}` hash.
Redis 5+ replicates script effects, which is what allows `TIME` before writes.
"""

from __future__ import annotations

__all__ = ["SCRIPTS"]

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
-- Drop the task's entry from a workers hash (given when no heartbeat has listed the task yet, so the
-- hash looks as Go's would: Go lists a task only from the next heartbeat on).
local function unlist(workers_key, id)
  if workers_key and workers_key ~= "" then redis.call("HDEL", workers_key, id) end
end
"""

# Protobuf encoding of the WorkerInfo entry the dequeue writes: the caller passes fields 1-3 (host,
# pid, server_id) already encoded; the script appends 4 task_id, 7 queue and 8 start_time.
_PROTO = """
local function varint(n)
  local out = {}
  while n >= 128 do
    out[#out+1] = string.char(n % 128 + 128)
    n = math.floor(n / 128)
  end
  out[#out+1] = string.char(n)
  return table.concat(out)
end
local function bytes_field(tag, s) return string.char(tag) .. varint(#s) .. s end
local function timestamp_field(tag, sec, nanos)
  local body = string.char(8) .. varint(sec)
  if nanos > 0 then body = body .. string.char(16) .. varint(nanos) end
  return bytes_field(tag, body)
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
    # Many Go dequeues in one call. KEYS: asynq:workers, this server's workers key, then per queue i:
    # pending, paused, active, lease.
    # ARGV: lease seconds, slots, worker-info prefix ("" = list no task), workers ttl, one queue name
    # per queue, then one queue order per slot ("2,1,3"). Each slot walks its order and takes the first
    # task, exactly like one Go dequeue. The lease score is Redis TIME + lease seconds.
    # An id whose hash is missing is dropped from active/lease instead of being left stuck there; one
    # whose key is not a hash leaves the queue too (its msg is returned as nil), so no script error can
    # strand the tasks taken before it. Returns TIME (seconds, microseconds), the indexes of the paused
    # queues ("1,3"), then queue index, id and msg of each task taken; the caller decodes msg and
    # archives what does not decode (see archive).
    "dequeue_batch": _PROTO + """
local nq = (#KEYS - 2) / 4
local slots = tonumber(ARGV[2])
local prefix = ARGV[3]
local ttl = tonumber(ARGV[4])
local now = redis.call("TIME")
local sec = tonumber(now[1])
local lease = sec + tonumber(ARGV[1])
local stamp = timestamp_field(66, sec, tonumber(now[2]) * 1000)
local listed = false
local empty = {}
local paused = {}
for q = 1, nq do
  if redis.call("EXISTS", KEYS[2+(q-1)*4+2]) == 1 then empty[q] = true paused[#paused+1] = q end
end
local out = {now[1], now[2], table.concat(paused, ",")}
for s = 1, slots do
  local got = false
  for qs in string.gmatch(ARGV[4 + nq + s], "%d+") do
    local q = tonumber(qs)
    local queue = ARGV[4 + q]
    while not empty[q] do
      local b = 2 + (q-1)*4
      local id = redis.call("RPOPLPUSH", KEYS[b+1], KEYS[b+3])
      if not id then empty[q] = true break end
      local key = "asynq:{" .. queue .. "}:t:" .. id
      if type(redis.pcall("HSET", key, "state", "active")) == "table" then
        -- The key is not a hash: its id leaves the queue, the key is left as it is (reported as nil msg).
        redis.call("LREM", KEYS[b+3], 1, id)
        out[#out+1] = q
        out[#out+1] = id
        out[#out+1] = false
      else
        redis.call("HDEL", key, "pending_since")
        redis.call("ZADD", KEYS[b+4], lease, id)
        local msg = redis.call("HGET", key, "msg")
        if msg then
          out[#out+1] = q
          out[#out+1] = id
          out[#out+1] = msg
          if prefix ~= "" then
            redis.call("HSET", KEYS[2], id, prefix .. bytes_field(34, id) .. bytes_field(58, queue) .. stamp)
            listed = true
          end
          got = true
          break
        end
        redis.call("LREM", KEYS[b+3], 1, id)
        redis.call("ZREM", KEYS[b+4], id)
        redis.call("DEL", key)
      end
    end
    if got then break end
  end
  if not got then break end
end
if listed then
  redis.call("EXPIRE", KEYS[2], ttl)
  redis.call("ZADD", KEYS[1], sec + ttl, KEYS[2])
end
return out
""",
    # KEYS: active, lease, t, processed:day, processed[, unique]. ARGV: id, stats_expire_at, maxint[, workers key]
    "done": _STATS + """
local err = leave_active(KEYS[1], KEYS[2], ARGV[1]) if err then return err end
if redis.call("DEL", KEYS[3]) == 0 then return redis.error_reply("NOT FOUND") end
bump_day(KEYS[4], ARGV[2])
bump_total(KEYS[5], ARGV[3])
if KEYS[6] and redis.call("GET", KEYS[6]) == ARGV[1] then redis.call("DEL", KEYS[6]) end
unlist(ARGV[4], ARGV[1])
return redis.status_reply("OK")
""",
    # KEYS: active, lease, completed, t, processed:day, processed[, unique].
    # ARGV: id, stats_expire_at, completed_score, msg, maxint[, workers key]
    "mark_complete": _STATS + """
local err = leave_active(KEYS[1], KEYS[2], ARGV[1]) if err then return err end
if redis.call("ZADD", KEYS[3], ARGV[3], ARGV[1]) ~= 1 then return redis.error_reply("INTERNAL") end
redis.call("HSET", KEYS[4], "msg", ARGV[4], "state", "completed")
bump_day(KEYS[5], ARGV[2])
bump_total(KEYS[6], ARGV[5])
if KEYS[7] and redis.call("GET", KEYS[7]) == ARGV[1] then redis.call("DEL", KEYS[7]) end
unlist(ARGV[6], ARGV[1])
return redis.status_reply("OK")
""",
    # KEYS: active, lease, pending, t. ARGV: id[, workers key]
    "requeue": _STATS + """
local err = leave_active(KEYS[1], KEYS[2], ARGV[1]) if err then return err end
redis.call("RPUSH", KEYS[3], ARGV[1])
redis.call("HSET", KEYS[4], "state", "pending")
unlist(ARGV[2], ARGV[1])
return redis.status_reply("OK")
""",
    # KEYS: t, active, lease, retry, processed:day, failed:day, processed, failed.
    # ARGV: id, msg, retry_at, stats_expire_at, is_failure, maxint[, workers key]
    "retry": _STATS + """
local err = leave_active(KEYS[2], KEYS[3], ARGV[1]) if err then return err end
redis.call("ZADD", KEYS[4], ARGV[3], ARGV[1])
redis.call("HSET", KEYS[1], "msg", ARGV[2], "state", "retry")
if tonumber(ARGV[5]) == 1 then
  bump_day(KEYS[5], ARGV[4])
  bump_day(KEYS[6], ARGV[4])
  bump_pair(KEYS[7], KEYS[8], ARGV[6])
end
unlist(ARGV[7], ARGV[1])
return redis.status_reply("OK")
""",
    # KEYS: t, active, lease, archived, processed:day, failed:day, processed, failed, t-prefix.
    # ARGV: id, msg, now, cutoff, max_size, stats_expire_at, maxint[, workers key[, corrupt msg]]
    # A corrupt msg (bytes that did not decode) is kept verbatim in the hash field corrupt_msg, which
    # Go never reads; msg then holds a valid TaskMessage describing the failure.
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
if ARGV[9] then redis.call("HSET", KEYS[1], "corrupt_msg", ARGV[9]) end
bump_day(KEYS[5], ARGV[6])
bump_day(KEYS[6], ARGV[6])
bump_pair(KEYS[7], KEYS[8], ARGV[7])
unlist(ARGV[8], ARGV[1])
return redis.status_reply("OK")
""",
    # KEYS: lease. ARGV: lease seconds, ids... Go's ZADD XX, with the score from Redis TIME.
    # Returns TIME (seconds, microseconds).
    "extend_leases": """
local now = redis.call("TIME")
local score = tonumber(now[1]) + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call("ZADD", KEYS[1], "XX", score, ARGV[i]) end
return {now[1], now[2]}
""",
    # KEYS: source zset, pending. ARGV: now, t-prefix, now_ns, group-prefix
    # An id whose key is not a hash leaves the source zset (the key is left as it is) instead of
    # failing every call and holding back the ids due after it.
    "forward": """
local ids = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", ARGV[1], "LIMIT", 0, 100)
for _, id in ipairs(ids) do
  local key = ARGV[2] .. id
  local group = redis.pcall("HGET", key, "group")
  if type(group) == "table" then
    redis.call("ZREM", KEYS[1], id)
  elseif group and group ~= "" then
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
    # The recoverer's candidates. KEYS: lease, asynq:workers. ARGV: slack seconds, t-prefix. Read-only.
    # Ids whose lease score is at least `slack` seconds before Redis TIME and which no workers hash
    # lists (every member of asynq:workers is checked, expired or not: a live Go server with a slow
    # clock writes expiry scores in the past). Ids with no hash or no msg are skipped, as Go does, and
    # so are keys that are not hashes.
    # Returns id, msg pairs; the caller decodes msg.
    "list_lease_expired": """
local cutoff = tonumber(redis.call("TIME")[1]) - tonumber(ARGV[1])
local out = {}
local ids = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", cutoff)
if #ids == 0 then return out end
local workers = redis.call("ZRANGE", KEYS[2], 0, -1)
for _, id in ipairs(ids) do
  local listed = false
  for _, w in ipairs(workers) do
    if redis.pcall("HEXISTS", w, id) == 1 then listed = true break end
  end
  if not listed then
    local msg = redis.pcall("HGET", ARGV[2] .. id, "msg")
    if type(msg) == "string" then
      out[#out+1] = id
      out[#out+1] = msg
    end
  end
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
    # KEYS: asynq:servers, asynq:workers, server key, workers key.
    # ARGV: ttl, server info, n, n ids that ended since the last beat, then (id, worker info) pairs.
    # Go DELs the workers hash and writes it anew; here only the ended ids are removed, so an entry a
    # dequeue wrote meanwhile survives. Both zset scores are Redis TIME + ttl.
    "write_server_state": """
local ttl = tonumber(ARGV[1])
local expires = tonumber(redis.call("TIME")[1]) + ttl
redis.call("ZADD", KEYS[1], expires, KEYS[3])
redis.call("ZADD", KEYS[2], expires, KEYS[4])
redis.call("SETEX", KEYS[3], ttl, ARGV[2])
local n = tonumber(ARGV[3])
for i = 4, 3 + n do redis.call("HDEL", KEYS[4], ARGV[i]) end
for i = 4 + n, #ARGV, 2 do redis.call("HSET", KEYS[4], ARGV[i], ARGV[i+1]) end
redis.call("EXPIRE", KEYS[4], ttl)
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
