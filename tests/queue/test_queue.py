"""The reliable queue's moves, on a real Redis/Valkey: each id is always in exactly one place."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from ferry.queue import Limits, Queue
from ferry.queue.connection import connect
from ferry.queue.keys import Keys
from ferry.queue.message import NewMessage, Status, id_time_ms, new_message_id, now_ms


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[Queue]:
    """A queue on a clean server, where worker "w1" holds its lease as holder "test"."""
    client = connect(redis_url)
    queue = Queue(client)
    await queue.heartbeat("w1", "test", 30, take=True)
    yield queue
    await client.aclose()


def messages(count: int, body: bytes = b'{"n": 1}') -> list[NewMessage]:
    return [NewMessage(new_message_id(), body, "application/json") for _ in range(count)]


async def places(queue: Queue, message_id: str) -> list[str]:
    """Every place that holds the id: the invariant is that there is exactly one."""
    redis: Redis = queue.redis
    keys = queue.keys
    found = []
    if message_id.encode() in await redis.lrange(keys.queue, 0, -1):
        found.append("queue")
    # Every in-flight list, the registry's or not: an id in the list of a worker nobody
    # will reap is stranded, and must show here.
    async for key in redis.scan_iter(match=keys.in_flight_prefix + "*"):
        if await redis.zscore(key, message_id) is not None:
            found.append("in-flight:" + key.decode().removeprefix(keys.in_flight_prefix))
    if await redis.zscore(keys.retry, message_id) is not None:
        found.append("retry")
    if message_id.encode() in await redis.zrange(keys.dead, 0, -1):
        found.append("dead")
    return found


async def test_enqueue_then_claim_returns_body_and_first_attempt(queue: Queue) -> None:
    body = bytes(range(256))  # not UTF-8: kept byte for byte
    [sent] = [NewMessage(new_message_id(), body, "application/octet-stream")]
    [result] = await queue.enqueue([sent])
    assert result.outcome == "queued"
    assert await queue.size() == 1  # LLEN message_queue is the backlog, as the guide reads it

    await queue.heartbeat("w1", "test", 30, take=True)
    [claimed] = await queue.claim("w1", 10, holder="test")
    assert (claimed.id, claimed.body, claimed.content_type, claimed.attempt) == (
        sent.id, body, "application/octet-stream", 1,
    )
    assert await places(queue, sent.id) == ["in-flight:w1"]
    status = await queue.status(sent.id)
    assert status is not None and status.status is Status.DELIVERING


async def test_a_queued_message_stores_no_field_at_its_default_and_reads_as_if_it_did(queue: Queue) -> None:
    before = now_ms()
    json_one = NewMessage(new_message_id(), b'{"n": 1}', "application/json", sender="k1")
    csv_one = NewMessage(new_message_id(), b"a,b", "text/csv", sender="k1")
    await queue.enqueue([json_one, csv_one])
    stored = await queue.redis.hgetall(queue.keys.message(json_one.id))  # type: ignore[misc]
    assert set(stored) == {b"body", b"sender"}  # no defaults, no status 'queued', no time: its id holds it
    assert (await queue.redis.hget(queue.keys.message(csv_one.id), "content_type")) == b"text/csv"  # type: ignore[misc]

    status = await queue.status(json_one.id)
    assert status is not None and (status.status, status.attempts, status.returns) == (Status.QUEUED, 0, 0)
    assert status.updated_at_ms == status.created_at_ms == id_time_ms(json_one.id)
    assert before <= status.created_at_ms <= now_ms()
    claimed = {m.id: m for m in await queue.claim("w1", 10, holder="test")}
    assert (claimed[json_one.id].content_type, claimed[json_one.id].attempt) == ("application/json", 1)
    assert claimed[json_one.id].created_at_ms == status.created_at_ms
    assert claimed[csv_one.id].content_type == "text/csv"
    assert (await queue.status(json_one.id)).attempts == 1  # type: ignore[union-attr]


def test_an_id_says_when_it_was_made_and_one_of_another_form_says_0() -> None:
    before = now_ms()
    assert before <= id_time_ms(new_message_id()) <= now_ms()
    for other in ["m1", "", "01a236d4-c172", "zzzzzzzz-zzzz-7zzz-8zzz-zzzzzzzzzzzz"]:
        assert id_time_ms(other) == 0, other


async def test_claim_is_first_in_first_out_and_bounded_by_limit(queue: Queue) -> None:
    sent = messages(5)
    await queue.enqueue(sent)
    await queue.heartbeat("w1", "test", 30, take=True)
    first = await queue.claim("w1", 3, holder="test")
    second = await queue.claim("w1", 3, holder="test")
    assert [m.id for m in first + second] == [m.id for m in sent]
    assert len(first) == 3


async def test_thousands_in_one_call_are_queued_and_claimed_in_order(queue: Queue) -> None:
    # More than a script passes to one command (call_chunked in _message.lua): LPUSH and ZADD in chunks.
    sent = messages(8200)  # Lua 5.1 unpacks at most about 8,000 values
    assert {result.outcome for result in await queue.enqueue(sent)} == {"queued"}
    claimed = await queue.claim("w1", 9000, holder="test")
    assert [m.id for m in claimed] == [m.id for m in sent]
    assert await queue.redis.zcard(queue.keys.in_flight("w1")) == 8200
    assert await queue.size() == 0


async def test_blocking_claim_wakes_when_a_message_arrives(queue: Queue) -> None:
    await queue.heartbeat("w1", "test", 30, take=True)
    waiting = asyncio.create_task(queue.claim("w1", 4, holder="test", block_seconds=5))
    await asyncio.sleep(0.2)
    [sent] = messages(1)
    await queue.enqueue([sent])
    claimed = await asyncio.wait_for(waiting, 5)
    assert [m.id for m in claimed] == [sent.id]
    assert claimed[0].body == sent.body


async def test_ack_records_delivery_frees_body_and_expires(queue: Queue) -> None:
    [sent] = messages(1)
    await queue.enqueue([sent])
    await queue.claim("w1", 1, holder="test")
    await queue.ack("w1", [sent.id], status_ttl_seconds=100, holder="test")
    assert await places(queue, sent.id) == []
    status = await queue.status(sent.id)
    assert status is not None
    assert status.status is Status.DELIVERED and status.attempts == 1 and status.delivered_at_ms
    assert await queue.redis.hget(queue.keys.message(sent.id), "body") is None
    assert 0 < await queue.redis.ttl(queue.keys.message(sent.id)) <= 100


async def test_retry_waits_in_schedule_until_due_then_counts_attempts(queue: Queue) -> None:
    [sent] = messages(1)
    await queue.enqueue([sent])
    await queue.claim("w1", 1, holder="test")
    assert await queue.retry_later("w1", sent.id, now_ms() + 300, "HTTP 503", holder="test")
    assert await places(queue, sent.id) == ["retry"]
    status = await queue.status(sent.id)
    assert status is not None and status.status is Status.RETRYING and status.last_error == "HTTP 503"

    assert await queue.promote_due() == 0  # not due yet
    await asyncio.sleep(0.4)
    assert await queue.promote_due() == 1
    assert await places(queue, sent.id) == ["queue"]
    [again] = await queue.claim("w1", 1, holder="test")
    assert again.attempt == 2


async def test_promote_due_from_many_workers_at_once_moves_each_id_once(queue: Queue) -> None:
    sent = messages(200)
    await queue.enqueue(sent)
    await queue.claim("w1", 200, holder="test")
    due = now_ms() - 1
    for message in sent:
        await queue.retry_later("w1", message.id, due, "HTTP 500", holder="test")
    moved = await asyncio.gather(*(queue.promote_due(limit=7) for _ in range(60)))
    assert sum(moved) == 200
    assert await queue.size() == 200
    assert len(set(await queue.redis.lrange(queue.keys.queue, 0, -1))) == 200


async def test_bury_moves_to_dead_letters_and_replay_resets_attempts(queue: Queue) -> None:
    [sent] = messages(1)
    await queue.enqueue([sent])
    await queue.claim("w1", 1, holder="test")
    assert await queue.bury("w1", sent.id, "HTTP 404", holder="test")
    assert await places(queue, sent.id) == ["dead"]
    assert [letter.id for letter in await queue.dead_letters()] == [sent.id]

    assert (await queue.replay([sent.id])).count == 1
    assert await places(queue, sent.id) == ["queue"]
    [again] = await queue.claim("w1", 1, holder="test")
    assert again.attempt == 1 and again.body == sent.body


async def test_reap_returns_in_flight_of_a_worker_whose_lease_expired(queue: Queue) -> None:
    sent = messages(3)
    await queue.enqueue(sent)
    await queue.heartbeat("dead-worker", "test", 0.2, take=True)
    await queue.heartbeat("live-worker", "test", 30, take=True)
    await queue.claim("dead-worker", 2, holder="test")
    await queue.claim("live-worker", 1, holder="test")

    assert (await queue.reap(max_returns=3)).returned == 0  # lease still running
    await asyncio.sleep(0.3)
    reaped = await queue.reap(max_returns=3)
    assert reaped.returned == 2
    assert [await places(queue, m.id) for m in sent] == [["queue"], ["queue"], ["in-flight:live-worker"]]
    # Returned to the front, oldest first: they are the next to be claimed.
    assert [m.id for m in await queue.claim("live-worker", 2, holder="test")] == [sent[0].id, sent[1].id]


async def test_a_worker_the_reaper_took_back_from_cannot_make_a_second_copy(queue: Queue) -> None:
    [sent] = messages(1)
    await queue.enqueue([sent])
    await queue.heartbeat("slow", "test", 0.1, take=True)
    await queue.claim("slow", 1, holder="test")
    await asyncio.sleep(0.2)
    await queue.reap(max_returns=3)
    # The slow worker wakes up, its attempt failed: it no longer holds the id.
    assert not await queue.retry_later("slow", sent.id, now_ms(), "HTTP 500", holder="test")
    assert await places(queue, sent.id) == ["queue"]


async def test_poison_pill_is_dead_lettered_after_max_returns(queue: Queue) -> None:
    [sent] = messages(1)
    await queue.enqueue([sent])
    for death in range(1, 4):
        worker = f"victim-{death}"
        await queue.heartbeat(worker, "test", 0.05, take=True)
        await queue.claim(worker, 1, holder="test")
        await asyncio.sleep(0.1)
        await queue.reap(max_returns=2)
        expected = ["queue"] if death <= 2 else ["dead"]
        assert await places(queue, sent.id) == expected, f"after death {death}"
    status = await queue.status(sent.id)
    assert status is not None and status.status is Status.DEAD and "poison pill" in (status.last_error or "")


async def test_release_gives_everything_back_without_counting_a_return(queue: Queue) -> None:
    sent = messages(3)
    await queue.enqueue(sent)
    await queue.heartbeat("leaving", "test", 30, take=True)
    await queue.claim("leaving", 3, holder="test")
    assert await queue.release("leaving", holder="test") == 3
    assert [await places(queue, m.id) for m in sent] == [["queue"]] * 3
    assert await queue.redis.sismember(queue.keys.workers, "leaving") == 0
    assert await queue.lease_holder("leaving") is None
    status = await queue.status(sent[0].id)
    assert status is not None and status.returns == 0 and status.status is Status.QUEUED


async def test_delivered_copy_handed_back_late_is_not_delivered_again(queue: Queue) -> None:
    [sent] = messages(1)
    await queue.enqueue([sent])
    await queue.heartbeat("slow", "test", 0.1, take=True)
    await queue.claim("slow", 1, holder="test")
    await asyncio.sleep(0.2)
    await queue.reap(max_returns=3)  # back on the queue...
    await queue.ack("slow", [sent.id], 100, holder="test")  # ...but the slow worker did deliver it
    await queue.heartbeat("other", "test", 30, take=True)
    assert await queue.claim("other", 5, holder="test") == []
    assert await places(queue, sent.id) == []


async def test_idempotency_key_returns_first_id_and_queues_nothing(queue: Queue) -> None:
    first = NewMessage(new_message_id(), b"a", "text/plain", idempotency_key="order-7")
    repeat = NewMessage(new_message_id(), b"a", "text/plain", idempotency_key="order-7")
    [one] = await queue.enqueue([first])
    [two] = await queue.enqueue([repeat])
    assert (one.outcome, two.outcome) == ("queued", "existing")
    assert two.id == first.id
    assert await queue.size() == 1


async def test_queue_cap_refuses_new_messages_and_all_or_nothing_refuses_whole_batch(queue: Queue) -> None:
    await queue.enqueue(messages(3))
    refused = await queue.enqueue(messages(2), Limits(max_queue_size=4), all_or_nothing=True)
    assert [r.outcome for r in refused] == ["full", "full"]
    partial = await queue.enqueue(messages(2), Limits(max_queue_size=4))
    assert [r.outcome for r in partial] == ["queued", "full"]
    assert await queue.size() == 4


async def test_rate_limit_is_a_token_bucket_per_api_key(queue: Queue) -> None:
    limits = Limits(rate_per_second=10, rate_capacity=3)

    def from_key(bucket: str, count: int) -> list[NewMessage]:
        return [NewMessage(new_message_id(), b"x", "text/plain", rate_bucket=bucket) for _ in range(count)]

    first = await queue.enqueue(from_key("alice", 5), limits)
    assert [r.outcome for r in first] == ["queued"] * 3 + ["limited"] * 2
    assert 1 <= first[-1].wait_ms <= 100  # one token comes back every 100 ms
    assert [r.outcome for r in await queue.enqueue(from_key("bob", 1), limits)] == ["queued"]
    await asyncio.sleep(0.25)  # two tokens back
    again = await queue.enqueue(from_key("alice", 3), limits)
    assert [r.outcome for r in again] == ["queued", "queued", "limited"]
    batch = await queue.enqueue(from_key("carol", 4), limits, all_or_nothing=True)
    assert [r.outcome for r in batch] == ["limited"] * 4  # four do not fit a bucket of three
    assert await queue.size() == 6


async def test_every_key_shares_the_queues_cluster_slot(queue: Queue) -> None:
    [sent] = messages(1)
    await queue.enqueue([NewMessage(sent.id, b"x", "text/plain", "k")])
    await queue.heartbeat("w1", "test", 30, take=True)
    await queue.claim("w1", 1, holder="test")
    await queue.retry_later("w1", sent.id, now_ms() + 60_000, "HTTP 500", holder="test")
    keys = [key.decode() for key in await queue.redis.keys("*")]
    tagged = [key for key in keys if key != Keys().queue and not key.startswith("ferry-test")]
    assert tagged and all(key.startswith("{message_queue}:") for key in tagged), keys


async def test_commands_carry_any_bytes_strings_and_numbers_intact(redis_url: str) -> None:
    """connect() packs commands with hiredis: nothing may be mangled on the way."""
    client = connect(redis_url)
    try:
        values = [b"\r\n$3\r\n*1\r\n", bytes(range(256)), "é ü 中", 42, -7, 0.1, 1.5e300, b"x" * 100_000, b""]
        assert await client.rpush("probe", *values) == len(values)
        async with client.pipeline(transaction=True) as pipeline:
            pipeline.lrange("probe", 0, -1).execute_command("CLIENT SETNAME", "probe")
            stored, named = await pipeline.execute()
    finally:
        await client.aclose()
    assert stored == [
        b"\r\n$3\r\n*1\r\n", bytes(range(256)), "é ü 中".encode(), b"42", b"-7", b"0.1", b"1.5e+300",
        b"x" * 100_000, b"",
    ]
    assert named is True
