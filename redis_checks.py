"""Redis start-up checks and the watch over the connection while the worker runs.

At start-up, what retrying cannot fix (a wrong or missing password, a missing ACL permission) ends
the process with one line, and queues whose keys the Redis user may not use are left out. While the
worker runs, the watch logs once when Redis goes away and once when it is back, and logs a refused
password or a lost permission at error level; the loops that hit those errors retry on their own.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any, Iterable

from settings import _fields, _Throttle

log = logging.getLogger("peekaping.worker")

CLOCK_TOLERANCE = 1.0  # seconds between the host clock and Redis TIME before start-up warns
# EVAL checks that the user may read and write every key passed as KEYS (Redis 7 ACL); this script
# then touches none of them, so the probe has no side effect.
_PROBE_SCRIPT = "return 1"
_PROBE_ID = "peekaping-permission-probe"
# Commands the worker sends itself; the commands inside the Lua scripts are added from the scripts.
_DIRECT_COMMANDS = ("ping", "time", "select", "eval", "evalsha", "script|load", "subscribe", "unsubscribe",
                    "sadd", "zrem", "blmove")
_ACL_HINT = "`peekaping-worker --acl-rule` prints the rule a worker needs"


class RedisStartupError(Exception):
    """Redis refused the worker in a way retrying cannot fix; the text is one line without secrets."""


def refusal(exc: BaseException) -> str | None:
    """One line saying what an authentication or permission error means; None for errors worth retrying."""
    from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

    text = str(exc)
    if isinstance(exc, AuthenticationError):
        if "without any password configured" in text:
            return ("a password was given but the Redis server has none configured (AUTH ... without any password "
                    "configured): remove it from REDIS_PASSWORD or --redis-url")
        if exc.status_code == "NOAUTH":
            return "Redis requires a password and none was given (NOAUTH): set REDIS_PASSWORD or put it in --redis-url"
        if exc.status_code == "WRONGPASS" or "invalid" in text:
            return "Redis refused the user name or password (WRONGPASS)"
        return f"Redis refused to authenticate the worker: {text}"
    if isinstance(exc, NoPermissionError):
        # A pipeline wraps the server's text in its own; the server's part names what is missing.
        command = re.search(r"no permissions to run the '([^']+)' command", text)
        if command:
            missing = f"run the {command.group(1)!r} command"
        elif "channel" in text:
            missing = "use a pub/sub channel the worker needs"
        else:
            missing = "read and write a key the worker needs"
        return f"the Redis user may not {missing} (NOPERM); {_ACL_HINT}"
    if isinstance(exc, ResponseError):
        if text.startswith("The user executing the script can't"):
            return f"the Redis user lacks an ACL permission ({text.split(' script:')[0]}); {_ACL_HINT}"
        if "DB index is out of range" in text:
            return "the Redis server has no database with that number (REDIS_DB or the db of --redis-url)"
    return None


# --- key permissions -----------------------------------------------------------------------------

def queue_keys(queue: str, day: str) -> list[str]:
    """Names of the keys a server writes for one queue it serves."""
    from asynq_protocol import queue_prefix

    p = queue_prefix(queue)
    return [p + name for name in ("pending", "active", "lease", "paused", "scheduled", "retry", "archived",
                                  "completed", "processed", "failed", f"processed:{day}", f"failed:{day}",
                                  f"t:{_PROBE_ID}", f"unique:{_PROBE_ID}", "aggregation_sets")]


def result_keys() -> list[str]:
    """Keys written when a result is enqueued to the ingester queue."""
    from asynq_protocol import ALL_QUEUES, queue_prefix

    p = queue_prefix("ingester")
    return [p + "pending", p + f"t:{_PROBE_ID}", p + f"unique:{_PROBE_ID}", ALL_QUEUES]


def heartbeat_keys(server: Any) -> list[str]:
    """Keys of the heartbeat (server info, workers) and the live-worker lookup of the recoverer."""
    from asynq_protocol import ALL_SERVERS, ALL_WORKERS, server_keys

    return [ALL_SERVERS, ALL_WORKERS, *server_keys(server.host, server.pid, server.server_id)]


async def denied_keys(redis: Any, keys: Iterable[str]) -> list[str]:
    """The keys the Redis user may not both read and write; other errors are raised."""
    from redis.exceptions import NoPermissionError

    keys = list(keys)
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.eval(_PROBE_SCRIPT, 1, key)
    denied = []
    for key, reply in zip(keys, await pipe.execute(raise_on_error=False)):
        if isinstance(reply, NoPermissionError) and "keys" in str(reply):
            denied.append(key)
        elif isinstance(reply, Exception):
            raise reply
    return denied


# --- start-up ------------------------------------------------------------------------------------

async def start_up(server: Any) -> dict[str, int]:
    """Check that Redis accepts this worker and return the queues it may serve.

    Raises RedisStartupError for what retrying cannot fix; connection errors are raised as they are.
    """
    from asynq_protocol import queue_prefix

    redis = server.redis
    await redis.ping()
    await server.broker.load_scripts()
    day = time.strftime("%Y-%m-%d", time.gmtime())
    per_queue = {q: queue_keys(q, day) for q in server.queues}
    heartbeat = heartbeat_keys(server)
    required = result_keys() + heartbeat
    denied = set(await denied_keys(redis, required + [k for keys in per_queue.values() for k in keys]))
    for key in required:
        if key in denied:
            what = "heartbeats" if key in heartbeat else "results (queue ingester)"
            raise RedisStartupError(f"the Redis user may not read and write {key}, needed for {what}; {_ACL_HINT}")
    await check_cancel_channel(redis)
    served: dict[str, int] = {}
    for queue, keys in per_queue.items():
        blocked = [k for k in keys if k in denied]
        if blocked:
            log.warning("not serving a queue: the Redis user may not read and write its keys",
                        extra=_fields(queue=queue, key=blocked[0], grant=f"~{queue_prefix(queue)}*"))
        else:
            served[queue] = server.queues[queue]
    if not served:
        names = ",".join(server.queues)
        raise RedisStartupError(f"the Redis user may not read and write the keys of any configured queue ({names}); "
                                f"{_ACL_HINT}")
    await check_clock(redis)
    return served


async def check_cancel_channel(redis: Any) -> None:
    """Subscribe to asynq:cancel once, as the cancellation subscriber will."""
    from asynq_protocol import CANCEL_CHANNEL
    from redis.exceptions import ConnectionError, NoPermissionError

    pubsub = redis.pubsub()
    try:
        await pubsub.subscribe(CANCEL_CHANNEL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            message = await pubsub.get_message(timeout=1)
            if message and message.get("type") == "subscribe":
                return
        raise ConnectionError(f"no reply to SUBSCRIBE {CANCEL_CHANNEL}")
    except NoPermissionError:
        raise RedisStartupError(f"the Redis user may not subscribe to the {CANCEL_CHANNEL} channel (NOPERM); "
                                f"grant &{CANCEL_CHANNEL}") from None
    finally:
        await pubsub.aclose()


async def check_clock(redis: Any, clock: Any = time.time) -> float:
    """Warn when the host clock differs from Redis TIME by more than CLOCK_TOLERANCE; returns host - Redis."""
    before = clock()
    seconds, micros = await redis.time()
    after = clock()
    offset = (before + after) / 2 - (seconds + micros / 1e6)
    if abs(offset) - (after - before) / 2 > CLOCK_TOLERANCE:
        direction = "ahead of" if offset > 0 else "behind"
        log.warning(f"host clock is {abs(offset):.1f} s {direction} Redis TIME; sync it (NTP): leases and retry "
                    "times are compared across hosts", extra=_fields(offset_s=round(offset, 1)))
    return offset


# --- while running -------------------------------------------------------------------------------

def _own_client(redis: Any) -> Any:
    """One connection with the worker's settings, short timeouts and no retries: the watch must not wait
    behind busy pool connections, nor hide an outage behind redis-py's reconnect attempts."""
    from asynq_protocol import side_client

    return side_client(redis, 1, socket_timeout=5, socket_connect_timeout=5)


async def watch(server: Any, interval: float = 1.0, permission_interval: float = 10.0) -> None:
    """Log an outage once when it starts and once when Redis is back (with how long it was down), and
    refused credentials or lost key permissions at error level (again every minute while they last)."""
    client = _own_client(server.redis)
    since: float | None = None
    refused_throttle = _Throttle(60.0)
    next_probe = 0.0
    lost: str | None = None  # a lost key permission lasts until a probe finds it back (probed every turn meanwhile)
    try:
        while True:
            problem = cause = None
            try:
                await asyncio.wait_for(client.ping(), 10)
                if lost is not None or time.monotonic() >= next_probe:
                    next_probe = time.monotonic() + permission_interval
                    day = time.strftime("%Y-%m-%d", time.gmtime())
                    keys = result_keys() + heartbeat_keys(server) + [k for q in server.queues for k in queue_keys(q, day)]
                    denied = await denied_keys(client, keys)
                    lost = f"the Redis user may no longer read and write {denied[0]}; {_ACL_HINT}" if denied else None
                problem = cause = lost
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                cause = refusal(exc)
                problem = cause or str(exc) or type(exc).__name__
            now = time.monotonic()
            if problem is None:
                if since is not None:
                    log.info("Redis reachable again", extra=_fields(down_s=round(now - since, 1)))
                    since = None
                    refused_throttle = _Throttle(60.0)
            else:
                if since is None:
                    since = now
                    if cause is None:
                        log.error("Redis unreachable; retrying", extra=_fields(error=problem))
                if cause is not None and refused_throttle.ready():
                    log.error("Redis refuses the worker; retrying", extra=_fields(error=cause))
                    next_probe = 0.0
            await asyncio.sleep(interval)
    finally:
        await client.aclose()


def acl_rule(queues: Iterable[str], user: str = "peekaping-worker", password: str = "CHANGE-ME") -> str:
    """The minimal `ACL SETUSER` line for a worker serving `queues` (commands of the Lua scripts included)."""
    from asynq_protocol import SCRIPTS

    in_scripts = {name.lower() for body in SCRIPTS.values()
                  for name in re.findall(r"""redis\.p?call\(\s*["']([A-Za-z]+)["']""", body)}
    commands = list(_DIRECT_COMMANDS) + sorted(in_scripts - set(_DIRECT_COMMANDS))
    names = list(dict.fromkeys([*queues, "ingester"]))
    keys = [f"~asynq:{{{q}}}:*" for q in names] + ["~asynq:queues", "~asynq:servers", "~asynq:servers:*",
                                                   "~asynq:workers", "~asynq:workers:*"]
    return " ".join(["ACL SETUSER", user, "on", f">{password}", "resetkeys", *keys, "resetchannels",
                     "&asynq:cancel", "-@all", *(f"+{c}" for c in commands)])
