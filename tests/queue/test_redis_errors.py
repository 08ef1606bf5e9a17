"""The client of `connect()` raises only ferry's kinds of error, on a real Redis and Valkey.

redis-py's exceptions are translated once, in the client (ferry.queue.connection),
into RedisUnavailable, WritesRefused and RedisBug, the original kept as the cause;
redis-py's own loading of a flushed Lua script still works underneath.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.exceptions

from ferry.queue import Queue
from ferry.queue.connection import FerryRedis, connect, probe_writes
from ferry.queue.errors import RedisBug, RedisFailure, RedisUnavailable, WritesRefused, translate
from ferry.queue.keys import Keys
from ferry.queue.message import NewMessage, new_message_id
from tests.refusals import REASON, REFUSALS, writes_refused
from tests.support.servers import RedisProcess

@pytest.fixture
async def client(own_redis: RedisProcess) -> AsyncIterator[FerryRedis]:
    redis = connect(own_redis.url, retries=0)
    yield redis
    await redis.aclose()


def one_message() -> list[NewMessage]:
    return [NewMessage(new_message_id(), b'{"n": 1}', "application/json")]


@pytest.mark.both_servers
@pytest.mark.parametrize("how", REFUSALS)
async def test_a_server_that_refuses_writes_raises_writes_refused_with_its_reason(
    how: str, own_redis: RedisProcess, client: FerryRedis
) -> None:
    queue = Queue(client)
    with writes_refused(own_redis, how):
        for write in (
            lambda: queue.enqueue(one_message()),  # a Lua script
            lambda: probe_writes(client, Keys().health),  # a plain command
            lambda: queue.heartbeat("w1", "holder", 30, take=True),
            lambda: _multi(client),  # a MULTI, whose error redis-py rewords
        ):
            with pytest.raises(WritesRefused) as refused:
                await write()
            assert REASON[how] in str(refused.value)
            assert isinstance(refused.value.__cause__, redis.exceptions.ResponseError)
        assert await queue.size() == 0  # reads are still served (but PING under MISCONF)
    await queue.enqueue(one_message())
    assert await queue.size() == 1


async def _multi(client: FerryRedis) -> None:
    async with client.pipeline(transaction=True) as pipe:
        pipe.set("ferry-test:a", "1")
        pipe.sadd("ferry-test:b", "1")
        await pipe.execute()


@pytest.mark.both_servers
async def test_foreign_data_and_bad_scripts_are_redis_bugs(own_redis: RedisProcess, client: FerryRedis) -> None:
    keys = Keys()
    await client.set(keys.queue, "not a list")  # a key of another type under ferry's name
    with pytest.raises(RedisBug, match="WRONGTYPE") as wrong:
        await Queue(client).enqueue(one_message())
    assert isinstance(wrong.value.__cause__, redis.exceptions.ResponseError)
    with pytest.raises(RedisBug, match="WRONGTYPE"):
        async with client.pipeline(transaction=False) as pipe:
            pipe.llen(keys.queue)
            await pipe.execute()
    async with client.pipeline(transaction=False) as pipe:  # errors returned rather than raised
        pipe.llen(keys.queue)
        pipe.get(keys.queue)
        replies = await pipe.execute(raise_on_error=False)
    assert isinstance(replies[0], RedisBug) and replies[1] == b"not a list"
    with pytest.raises(RedisBug):
        await client.eval("return redis.call('NO-SUCH-COMMAND')", 0)


@pytest.mark.both_servers
async def test_a_server_that_is_gone_raises_redis_unavailable(own_redis: RedisProcess, client: FerryRedis) -> None:
    assert await client.ping()
    own_redis.kill()
    for call in (client.ping, lambda: Queue(client).enqueue(one_message()), lambda: Queue(client).snapshot()):
        with pytest.raises(RedisUnavailable) as away:
            await call()
        assert isinstance(away.value.__cause__, (redis.exceptions.ConnectionError, OSError))


@pytest.mark.both_servers
async def test_scripts_still_load_after_script_flush(own_redis: RedisProcess, client: FerryRedis) -> None:
    """NOSCRIPT passes through untranslated to redis-py's script objects, which load the script."""
    queue = Queue(client)
    await queue.enqueue(one_message())
    await client.script_flush()
    await queue.enqueue(one_message())  # EVALSHA: NOSCRIPT, SCRIPT LOAD, EVALSHA
    assert await queue.size() == 2
    count = client.register_script("return redis.call('INCR', KEYS[1])")
    assert await count(keys=["ferry-test:count"]) == 1
    await client.script_flush()
    assert await count(keys=["ferry-test:count"]) == 2
    await client.script_flush()
    async with client.pipeline(transaction=False) as pipe:  # a pipeline loads its scripts first
        await count(keys=["ferry-test:count"], client=pipe)
        assert await pipe.execute() == [3]


def test_translation_keeps_what_is_already_ferrys_and_names_every_code() -> None:
    already = WritesRefused("x")
    assert translate(already) is already
    reply = redis.exceptions.ResponseError("MISCONF Errors writing to the AOF file")
    assert isinstance(translate(reply), WritesRefused)
    for code in ("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN"):
        assert isinstance(translate(redis.exceptions.ResponseError(f"{code} not now")), RedisUnavailable), code
    assert isinstance(translate(redis.exceptions.ResponseError("NOREPLICAS Not enough good replicas")), WritesRefused)
    assert isinstance(translate(redis.exceptions.InvalidResponse("Protocol error")), RedisBug)
    assert isinstance(translate(ValueError("invalid literal for int()")), RedisBug)
    # Seen once in a long chaos run, a Valkey restart under a worker on uvloop:
    closed = RuntimeError("unable to perform operation on <TCPTransport closed=True reading=False 0x1>; the handler is closed")
    assert isinstance(translate(closed), RedisUnavailable)
    assert isinstance(translate(RuntimeError("something else")), RedisBug)
    assert all(issubclass(kind, RedisFailure) for kind in (RedisUnavailable, WritesRefused, RedisBug))
