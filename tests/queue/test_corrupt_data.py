"""Corrupt or foreign data never strands good messages: an unreadable message is
dead-lettered with the reason, its raw fields kept, wherever it is found (queue,
retry schedule, a dead worker's in-flight list, a live worker's strays), and no
script fails half way (Redis would not roll back what it had moved).

Examples are derandomized: every CI run checks the same ones.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from ferry.queue import Queue
from ferry.queue.connection import connect
from ferry.queue.message import Status, now_ms
from tests.queue.test_queue import messages, places

COUNT_FIELDS = ["attempts", "returns", "created_at", "updated_at"]
REQUIRED_FIELDS = ["body"]  # every other field has a default (_message.lua): a queued message stores only body and sender
WHERE = ["queue", "retry", "dead worker", "strays"]


@dataclass(frozen=True)
class Damage:
    """One way a message hash can be broken: a field's value, a field gone, or the key itself."""

    kind: str  # "value", "missing", "type", "gone"
    field: str = ""
    value: bytes = b""

    async def apply(self, redis: Redis, key: str) -> None:
        if self.kind == "value":
            await redis.hset(key, self.field, self.value)  # type: ignore[misc]
        elif self.kind == "missing":
            await redis.hdel(key, self.field)  # type: ignore[misc]
        elif self.kind == "type":
            await redis.delete(key)
            if self.field == "string":
                await redis.set(key, self.value)
            else:
                await redis.rpush(key, self.value)  # type: ignore[misc]
        else:
            await redis.delete(key)


not_a_count = st.binary(max_size=20).filter(lambda raw: not (raw.isdigit() and len(raw) <= 15))
not_a_status = st.binary(max_size=20).filter(lambda raw: raw not in {s.value.encode() for s in Status})
damages = st.one_of(
    st.builds(Damage, st.just("value"), st.sampled_from(COUNT_FIELDS), not_a_count),
    st.builds(Damage, st.just("value"), st.just("status"), not_a_status),
    st.builds(Damage, st.just("missing"), st.sampled_from(REQUIRED_FIELDS)),
    st.builds(Damage, st.just("type"), st.sampled_from(["string", "list"]), st.binary(min_size=1, max_size=10)),
    st.builds(Damage, st.just("gone")),
)


async def status_of(queue: Queue, message_id: str) -> Status:
    found = await queue.status(message_id)
    assert found is not None
    return found.status


async def drain(queue: Queue, worker: str) -> list[str]:
    """A worker's whole life in a loop: promote, reap, give back strays, claim, ack; the ids delivered."""
    delivered: list[str] = []
    for _ in range(50):
        await queue.promote_due()
        await queue.reap(max_returns=3)
        await queue.return_strays(worker, [], holder=worker)
        claimed = await queue.claim(worker, 10, holder=worker)
        if not claimed and not await queue.size():
            return delivered
        assert await queue.ack(worker, [m.id for m in claimed], 100, holder=worker) == len(claimed)
        delivered += [m.id for m in claimed]
    raise AssertionError("the queue never drained: a worker stalled")


async def place_bad_one(queue: Queue, message_id: str, where: str) -> None:
    """Move a freshly queued message to where the damage will be found."""
    redis, keys = queue.redis, queue.keys
    if where == "queue":
        return
    await redis.lrem(keys.queue, 0, message_id)  # type: ignore[misc]
    if where == "retry":
        await redis.zadd(keys.retry, {message_id: now_ms() - 1})
    elif where == "dead worker":
        await redis.sadd(keys.workers, "gone-worker")  # type: ignore[misc]
        await redis.zadd(keys.in_flight("gone-worker"), {message_id: now_ms()})
    else:  # a claim of the live worker whose reply was lost
        await redis.zadd(keys.in_flight("live"), {message_id: now_ms()})


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(
    bad=st.lists(st.tuples(damages, st.sampled_from(WHERE)), min_size=1, max_size=6),
    good_count=st.integers(min_value=1, max_value=12),
)
def test_garbage_among_good_messages_is_dead_lettered_and_every_good_one_delivered(
    redis_url: str, bad: list[tuple[Damage, str]], good_count: int
) -> None:
    async def run() -> None:
        redis = connect(redis_url)
        await redis.flushall()
        queue = Queue(redis)
        try:
            assert await queue.heartbeat("live", "live", 30, take=True)
            good = messages(good_count)
            broken = messages(len(bad), body=b"will be broken")
            await queue.enqueue(good[: good_count // 2] + broken + good[good_count // 2 :])
            for message, (damage, where) in zip(broken, bad, strict=True):
                await place_bad_one(queue, message.id, where)
                await damage.apply(redis, queue.keys.message(message.id))

            delivered = await drain(queue, "live")

            assert sorted(delivered) == sorted(m.id for m in good)
            for message in good:
                found = await queue.status(message.id)
                assert found is not None and found.status is Status.DELIVERED and found.attempts == 1
            dead = {letter.id: letter for letter in await queue.dead_letters(limit=100)}
            assert set(dead) == {m.id for m in broken}
            for message, (damage, _) in zip(broken, bad, strict=True):
                assert (dead[message.id].last_error or "").startswith("corrupt: "), damage
                assert await places(queue, message.id) == ["dead"]
                assert await status_of(queue, message.id) is Status.DEAD
                kept = queue.keys.message(message.id) + ":corrupt"  # what the key held, as found
                if damage.kind == "type":
                    assert await redis.type(kept) == damage.field.encode()
                elif damage.kind == "value":
                    assert await redis.hget(kept, damage.field) == damage.value  # type: ignore[misc]
                elif damage.kind == "missing":
                    assert await redis.hexists(kept, damage.field) == 0  # type: ignore[misc]
                    assert await redis.hget(kept, "content_type") in (b"application/json", None)  # type: ignore[misc]
            assert await queue.size() == 0 and await redis.zcard(queue.keys.retry) == 0
        finally:
            await redis.aclose()

    asyncio.run(run())


async def test_a_corrupt_dead_letter_can_be_listed_replayed_and_purged(redis_url: str) -> None:
    redis = connect(redis_url)
    queue = Queue(redis)
    try:
        assert await queue.heartbeat("w", "w", 30, take=True)
        [sent] = messages(1)
        await queue.enqueue([sent])
        await redis.hset(queue.keys.message(sent.id), "attempts", "many")  # type: ignore[misc]
        assert await queue.claim("w", 1, holder="w") == []
        [letter] = await queue.dead_letters()
        assert letter.id == sent.id and letter.attempts == 0
        key = queue.keys.message(sent.id)
        assert letter.last_error == f'corrupt: attempts is not a whole number: "many"; as found at {key}:corrupt'
        assert await redis.hget(key + ":corrupt", "attempts") == b"many"  # type: ignore[misc]
        # Readable now (the bad count was set to 0), body intact: an operator's replay delivers it.
        assert (await queue.replay([sent.id])).count == 1
        [again] = await queue.claim("w", 1, holder="w")
        assert again.body == sent.body and again.attempt == 1
        await queue.bury("w", sent.id, "HTTP 410", holder="w")
        assert (await queue.purge([sent.id])).count == 1
        assert await redis.exists(key, key + ":corrupt") == 0
    finally:
        await redis.aclose()


@pytest.mark.parametrize("kind", ["string", "list"])
async def test_a_message_key_of_another_type_is_kept_aside_not_overwritten(redis_url: str, kind: str) -> None:
    redis = connect(redis_url)
    queue = Queue(redis)
    try:
        assert await queue.heartbeat("w", "w", 30, take=True)
        [sent] = messages(1)
        await queue.enqueue([sent])
        key = queue.keys.message(sent.id)
        await Damage("type", kind, b"foreign").apply(redis, key)
        assert await queue.claim("w", 1, holder="w") == []
        [letter] = await queue.dead_letters()
        assert letter.last_error == f"corrupt: the key holds a {kind}, not a hash; as found at {key}:corrupt"
        assert await redis.type(key + ":corrupt") == kind.encode()
        assert (await queue.purge([sent.id])).count == 1
        assert await redis.exists(key, key + ":corrupt") == 0
    finally:
        await redis.aclose()
