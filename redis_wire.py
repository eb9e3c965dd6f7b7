"""Redis connections for the Asynq broker: the clients the worker makes and the lean pipeline.

`connect` makes the worker's client (a blocking pool whose connections pack commands with hiredis),
`side_client` a client on connections of its own with the same settings, and `pipeline` sends a batch of
commands in one write and reads their raw replies with far less Python per command than redis-py's Pipeline.
Only the standard library is imported here; redis-py and hiredis load on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["connect", "pipeline", "side_client"]


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


def side_client(redis: Any, connections: int, **overrides: Any) -> Any:
    """A client on connections of its own, with `redis`'s settings (address, credentials, TLS, the fast
    connection class) but no retries: for a watch or a blocking command that must neither wait behind
    the loop's busy pool connections nor hide an outage behind redis-py's reconnect attempts."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    pool = redis.connection_pool
    kwargs = dict(pool.connection_kwargs, retry=Retry(NoBackoff(), 0))
    kwargs.update(overrides)
    return aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool(
        connection_class=pool.connection_class, max_connections=connections, timeout=None, **kwargs))


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


async def pipeline(redis: Any, commands: list[tuple]) -> list:
    """Send `commands` in one write on one pooled connection of `redis` and read all their replies:
    raw values (no response callbacks), error replies as exception objects in their place.

    redis-py's Pipeline spends ~10 us of Python per command around the wire (option handling, response
    callbacks, observability hooks); this spends ~1 us with hiredis. Connection errors are retried
    with the connection's own Retry, as redis-py's pipelines are.
    """
    pool = redis.connection_pool
    conn = await (pool.get_connection() if _no_args(pool) else pool.get_connection("EVALSHA"))
    try:
        return await conn.retry.call_with_retry(lambda: _exchange(conn, commands), lambda _: conn.disconnect())
    finally:
        released = pool.release(conn)
        if released is not None:  # a coroutine from redis-py 5.1 on
            await released


async def _exchange(conn: Any, commands: list[tuple]) -> list:
    from redis.exceptions import ConnectionError as LinkError, ResponseError

    fast = _hiredis()
    packed = None
    if fast is not None:
        try:
            packed = [b"".join([fast[0](c) for c in commands])]
        except TypeError:  # an argument type hiredis does not pack
            pass
    await conn.send_packed_command(packed or conn.pack_commands(commands), check_health=False)
    replies: list = []
    parser = conn._parser
    reader = getattr(parser, "_reader", None)
    if fast is None or type(reader) is not fast[1] or not hasattr(parser, "read_from_socket"):
        for _ in commands:  # another parser: redis-py's own read per reply
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
        return replies
    gets, n, more = reader.gets, len(commands), fast[2]
    try:
        while len(replies) < n:
            reply = gets()
            if reply is more:
                await parser.read_from_socket()
            elif isinstance(reply, LinkError):  # an error reply meaning the server cannot serve (LOADING)
                raise reply
            else:
                replies.append(reply)
    except OSError as exc:
        await conn.disconnect(nowait=True)
        raise LinkError(f"Error while reading from Redis: {exc}") from None
    except BaseException:  # replies may be left unread: the connection must not be reused
        await conn.disconnect(nowait=True)
        raise
    return replies


_HIREDIS: list = []


def _hiredis() -> tuple | None:
    """(pack_command, Reader class, redis-py's not-enough-data marker), or None without hiredis."""
    if not _HIREDIS:
        try:
            import hiredis
            from redis._parsers.hiredis import NOT_ENOUGH_DATA
            _HIREDIS.append((hiredis.pack_command, hiredis.Reader, NOT_ENOUGH_DATA))
        except (ImportError, AttributeError):
            _HIREDIS.append(None)
    return _HIREDIS[0]


_NO_ARGS: dict[type, bool] = {}


def _no_args(pool: Any) -> bool:
    """Whether get_connection() takes no command name (redis-py 5.3 on deprecates it; 5.2 requires it)."""
    kind = type(pool)
    if kind not in _NO_ARGS:
        import inspect

        param = inspect.signature(pool.get_connection).parameters.get("command_name")
        _NO_ARGS[kind] = param is None or param.default is not inspect.Parameter.empty
    return _NO_ARGS[kind]
