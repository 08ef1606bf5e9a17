"""One 202, one copy: an enqueue the client retried after a timeout (the first try may
have run) stores nothing twice; and a repeated Idempotency-Key says where the first
message is now."""

from __future__ import annotations

import asyncio

import pytest
import redis as sync_redis

from ferry.queue import Limits, Queue
from ferry.queue import connection as redis_connection
from ferry.queue.connection import connect
from ferry.queue.message import NewMessage, new_message_id, now_ms
from tests.queue.test_queue import messages


async def stalled_enqueue(redis_url: str, monkeypatch: pytest.MonkeyPatch, sent: list[NewMessage], **options: object) -> None:
    """Enqueue while Redis sleeps past the client's socket timeout: the client times
    out, retries, and Redis then runs both tries."""
    monkeypatch.setattr(redis_connection, "SOCKET_TIMEOUT_SECONDS", 0.5)
    client = connect(redis_url, retries=1)
    queue = Queue(client)
    await queue.ping()  # connected and the script cache warm before Redis stalls
    await queue.enqueue(messages(1))
    host, port = redis_url.removeprefix("redis://").split(":")
    sleeper = sync_redis.Redis(host=host, port=int(port))
    stall = asyncio.get_running_loop().run_in_executor(None, sleeper.execute_command, "DEBUG", "SLEEP", "0.7")
    await asyncio.sleep(0.05)
    try:
        results = await queue.enqueue(sent, **options)  # type: ignore[arg-type]
        assert all(result.outcome == "queued" for result in results)
    finally:
        await stall
        sleeper.close()
        await client.aclose()


async def test_an_enqueue_retried_after_a_timeout_queues_one_copy(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = messages(3)
    await stalled_enqueue(redis_url, monkeypatch, sent)
    check = sync_redis.Redis.from_url(redis_url)
    queued = [raw.decode() for raw in check.lrange("message_queue", 0, -1)]
    # The probe message, then each of ours exactly once.
    assert len(queued) == 4 and sorted(queued[:3]) == sorted(m.id for m in sent)
    stats = check.info("commandstats")["cmdstat_evalsha"]
    assert stats["calls"] >= 3, "the client retried: Redis ran the enqueue twice"


async def test_a_batch_retried_after_a_timeout_is_neither_doubled_nor_refused(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All or nothing, with a rate of one batch: a retry that took tokens again would be refused."""
    sent = [NewMessage(new_message_id(), b"x", "text/plain", rate_bucket="key") for _ in range(5)]
    limits = Limits(rate_per_second=0.001, rate_capacity=5)
    await stalled_enqueue(redis_url, monkeypatch, sent, limits=limits, all_or_nothing=True)
    check = sync_redis.Redis.from_url(redis_url)
    assert check.llen("message_queue") == 6


async def test_a_repeated_idempotency_key_answers_the_first_messages_status_now(redis_url: str) -> None:
    client = connect(redis_url)
    queue = Queue(client)
    try:
        def keyed() -> NewMessage:
            return NewMessage(new_message_id(), b"a", "text/plain", idempotency_key="invoice-7")

        [first] = await queue.enqueue([keyed()])
        [repeat] = await queue.enqueue([keyed()])
        assert (repeat.outcome, repeat.id, repeat.status) == ("existing", first.id, "queued")
        assert await queue.heartbeat("w", "w", 30, take=True)
        await queue.claim("w", 1, holder="w")
        await queue.bury("w", first.id, "HTTP 410", holder="w")
        [repeat] = await queue.enqueue([keyed()])
        assert (repeat.outcome, repeat.id, repeat.status) == ("existing", first.id, "dead")
        await queue.purge([first.id])
        [repeat] = await queue.enqueue([keyed()])
        assert (repeat.outcome, repeat.id, repeat.status) == ("existing", first.id, "")
        assert await queue.size() == 0  # the key answers its first message for its TTL: nothing queued
    finally:
        await client.aclose()


async def test_dead_letters_of_an_older_ferry_move_into_the_current_layout(redis_url: str) -> None:
    client = connect(redis_url)
    queue = Queue(client)
    try:
        ids = [new_message_id() for _ in range(2500)]
        died = now_ms() - 10_000
        async with client.pipeline(transaction=False) as pipe:
            for number, message_id in enumerate(ids):  # an 0.1 list: the most recently dead at the left
                pipe.hset(queue.keys.message(message_id), mapping={"status": "dead", "updated_at": died + number})
                pipe.lpush(queue.keys.legacy_dead_list, message_id)
            await pipe.execute()
        assert await queue.upgrade() == 2500
        assert await client.exists(queue.keys.legacy_dead_list) == 0
        assert await queue.dead_size() == 2500
        assert [letter.id for letter in await queue.dead_letters(limit=3)] == ids[::-1][:3]
        assert await queue.upgrade() == 0
    finally:
        await client.aclose()


async def test_in_flight_lists_of_an_older_ferry_become_sets_in_claim_order(redis_url: str) -> None:
    """A worker of ferry 0.1 died holding 450 ids in a list: after the upgrade the reaper
    gives them back, oldest first at the queue's front."""
    client = connect(redis_url)
    queue = Queue(client)
    try:
        sent = messages(450)
        await queue.enqueue(sent)
        ids = [m.id for m in sent]
        await client.delete(queue.keys.queue)
        await client.lpush(queue.keys.in_flight("old-worker"), *ids)  # type: ignore[misc]  # 0.1: newest claim at the left
        await client.sadd(queue.keys.workers, "old-worker")  # type: ignore[misc]
        assert await queue.upgrade() == 450
        assert await client.type(queue.keys.in_flight("old-worker")) == b"zset"
        assert (await queue.reap(max_returns=3)).returned == 450
        assert [raw.decode() for raw in await client.lrange(queue.keys.queue, 0, -1)][::-1] == ids
    finally:
        await client.aclose()
