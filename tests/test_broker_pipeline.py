"""The broker's pipelines (`asynq_protocol.pipeline`): the replies redis-py's own Pipeline gives, error replies
in their place, and a pooled connection that never goes out of step with its replies, whatever happened
to the call before (an error reply, a dropped connection, a cancellation)."""

from __future__ import annotations

import asyncio

import pytest
from redis._parsers import _AsyncRESP2Parser

from asynq_protocol import connect, pipeline

BIG = bytes(range(256)) * 1200  # ~300 KB: its reply spans many socket reads
# Commands redis-py's Pipeline returns raw (no response callback), so both must give the same values.
MIXED = [
    ("SADD", "set", "a"), ("SADD", "set", "a"),
    ("EVALSHA", "0" * 40, 0),  # NOSCRIPT
    ("EVAL", "return redis.error_reply('NOT FOUND')", 0),
    ("EVAL", "return redis.call('INCR', KEYS[1])", 1, "set"),  # WRONGTYPE inside a script
    ("GET", "missing"),
    ("EVAL", "return {1, 'x', {2, false}, -3}", 0),
    ("EVAL", "redis.call('SET', KEYS[1], ARGV[1]) return redis.call('GET', KEYS[1])", 1, "big", BIG),
    ("LPUSH", "list", "x", "y"), ("LRANGE", "list", 0, -1),
]


def _shape(replies: list) -> list:
    return [(type(r).__name__, str(r)) if isinstance(r, Exception) else r for r in replies]


@pytest.fixture(params=["hiredis", "python-parser"])
async def client(request, redis_server):
    options = {} if request.param == "hiredis" else {"parser_class": _AsyncRESP2Parser}
    redis = connect(redis_server.url, max_connections=1, **options)  # one connection: every call shares it
    yield redis
    await redis.aclose()


async def test_replies_and_error_replies_match_redis_py_pipeline(client):
    got = await pipeline(client, MIXED)
    await client.delete("set", "big", "list")
    pipe = client.pipeline(transaction=False)
    for command in MIXED:
        pipe.execute_command(*command)
    expected = await pipe.execute(raise_on_error=False)
    assert _shape(got) == _shape(expected)
    assert got[0] == 1 and got[1] == 0 and got[7] == BIG
    assert type(got[2]).__name__ == "NoScriptError" and str(got[3]) == "NOT FOUND"


async def test_thousands_of_replies_arrive_complete_and_in_order(client):
    await client.set("v", b"x" * 10_000)
    commands = [("GET", "v") if i % 2 else ("ECHO", str(i)) for i in range(3000)]
    got = await pipeline(client, commands)
    assert got == [b"x" * 10_000 if i % 2 else str(i).encode() for i in range(3000)]


async def test_arguments_hiredis_does_not_pack_are_packed_by_redis_py(client):
    assert await pipeline(client, [("SET", "k", memoryview(b"mv")), ("GET", "k"), ("ECHO", 1.5)]) == \
        [b"OK", b"mv", b"1.5"]


async def test_a_dropped_connection_costs_at_most_the_call_in_flight(client, redis):
    assert await pipeline(client, [("CLIENT", "SETNAME", "victim")]) == [b"OK"]
    await redis.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    try:
        replies = await pipeline(client, [("ECHO", "a"), ("ECHO", "b")])  # redis-py's retry may resend it
    except Exception:
        replies = await pipeline(client, [("ECHO", "a"), ("ECHO", "b")])
    assert replies == [b"a", b"b"]


async def test_a_cancelled_call_leaves_no_reply_behind_for_the_next(client):
    call = asyncio.ensure_future(pipeline(client, [("ECHO", "first"), ("BLPOP", "nothing", 1), ("ECHO", "late")]))
    await asyncio.sleep(0.2)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await pipeline(client, [("ECHO", "next")]) == [b"next"]  # not b"first", not the BLPOP's nil
    await asyncio.sleep(1.2)  # the BLPOP's answer is due now: it must not turn up either
    assert await pipeline(client, [("ECHO", "again"), ("PING",)]) == [b"again", b"PONG"]
