"""Fenced workers: a worker whose lease lapsed and was reaped (a zombie, paused or cut
off) can neither claim nor settle for its old lease, and nothing it does late makes a
second copy, strands an id or undoes what others did since. Each test lets the lease
lapse at another step of claim, deliver, ack, fail and release."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from ferry.queue import Fenced, Queue
from ferry.queue.connection import connect
from ferry.queue.message import NewMessage, Status, now_ms
from tests.queue.test_queue import messages, places

LAPSE_SECONDS = 0.05


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[Queue]:
    client = connect(redis_url)
    yield Queue(client)
    await client.aclose()


async def zombie_holding(queue: Queue, count: int = 1) -> list[NewMessage]:
    """Worker "z" (holder "old") claims `count` messages; then its lease lapses and is reaped."""
    sent = messages(count)
    await queue.enqueue(sent)
    assert await queue.heartbeat("z", "old", LAPSE_SECONDS, take=True)
    assert len(await queue.claim("z", count, holder="old")) == count
    await asyncio.sleep(LAPSE_SECONDS * 3)
    assert (await queue.reap(max_returns=3)).returned == count
    return sent


async def status_of(queue: Queue, message_id: str) -> Status:
    found = await queue.status(message_id)
    assert found is not None
    return found.status


async def test_a_reaped_worker_claims_nothing(queue: Queue) -> None:
    [sent] = await zombie_holding(queue)
    with pytest.raises(Fenced):
        await queue.claim("z", 5, holder="old")
    assert await places(queue, sent.id) == ["queue"]


async def test_a_reaped_worker_cannot_renew_its_lease(queue: Queue) -> None:
    await zombie_holding(queue)
    assert not await queue.heartbeat("z", "old", 30)
    assert await queue.lease_holder("z") is None


async def test_a_lease_that_lapsed_before_the_reaper_came_may_be_taken_again(queue: Queue) -> None:
    [sent] = messages(1)
    await queue.enqueue([sent])
    assert await queue.heartbeat("z", "old", LAPSE_SECONDS, take=True)
    await queue.claim("z", 1, holder="old")
    await asyncio.sleep(LAPSE_SECONDS * 3)
    assert await queue.heartbeat("z", "old", 30)  # still registered: nothing was given back
    assert (await queue.reap(max_returns=3)).returned == 0
    assert await places(queue, sent.id) == ["in-flight:z"]


async def test_a_late_failure_of_a_reaped_worker_changes_nothing(queue: Queue) -> None:
    [sent] = await zombie_holding(queue)
    assert not await queue.retry_later("z", sent.id, now_ms(), "HTTP 500", holder="old")
    assert not await queue.bury("z", sent.id, "HTTP 404", holder="old")
    assert await places(queue, sent.id) == ["queue"]
    assert await status_of(queue, sent.id) is Status.QUEUED


async def test_a_late_ack_of_a_message_back_on_the_queue_takes_it_off(queue: Queue) -> None:
    [sent] = await zombie_holding(queue)
    assert await queue.ack("z", [sent.id], 100, holder="old") == 1  # the main server has it
    assert await places(queue, sent.id) == []
    assert await status_of(queue, sent.id) is Status.DELIVERED


async def test_a_late_ack_leaves_a_message_another_worker_is_delivering_to_it(queue: Queue) -> None:
    [sent] = await zombie_holding(queue)
    assert await queue.heartbeat("w", "w", 30, take=True)
    [claimed] = await queue.claim("w", 1, holder="w")
    assert await queue.ack("z", [sent.id], 100, holder="old") == 0
    assert await places(queue, sent.id) == ["in-flight:w"]
    assert await status_of(queue, sent.id) is Status.DELIVERING
    assert await queue.ack("w", [claimed.id], 100, holder="w") == 1
    assert await places(queue, sent.id) == []


async def test_a_late_ack_of_a_message_scheduled_for_a_retry_takes_it_off_the_schedule(queue: Queue) -> None:
    [sent] = await zombie_holding(queue)
    assert await queue.heartbeat("w", "w", 30, take=True)
    await queue.claim("w", 1, holder="w")
    assert await queue.retry_later("w", sent.id, now_ms() + 60_000, "HTTP 503", holder="w")
    assert await queue.ack("z", [sent.id], 100, holder="old") == 1
    assert await places(queue, sent.id) == []
    assert await queue.promote_due() == 0
    assert await status_of(queue, sent.id) is Status.DELIVERED


async def test_a_late_ack_of_a_message_dead_lettered_since_takes_it_out_of_the_dead_letters(
    queue: Queue,
) -> None:
    [sent] = messages(1)
    await queue.enqueue([sent])
    assert await queue.heartbeat("z", "old", LAPSE_SECONDS, take=True)
    await queue.claim("z", 1, holder="old")
    await asyncio.sleep(LAPSE_SECONDS * 3)
    assert (await queue.reap(max_returns=0)).buried == 1  # a poison pill, says the reaper
    assert await queue.ack("z", [sent.id], 100, holder="old") == 1
    assert await places(queue, sent.id) == [] and await queue.dead_size() == 0
    assert await status_of(queue, sent.id) is Status.DELIVERED


async def test_a_reaped_worker_touches_nothing_of_the_process_that_took_its_id(queue: Queue) -> None:
    await zombie_holding(queue)
    # The supervisor started a new process under the same worker id: it holds the lease now.
    assert await queue.heartbeat("z", "new", 30, take=True)
    [claimed] = await queue.claim("z", 1, holder="new")
    with pytest.raises(Fenced):
        await queue.release("z", holder="old")
    with pytest.raises(Fenced):
        await queue.return_strays("z", [], holder="old")
    assert not await queue.retry_later("z", claimed.id, now_ms(), "HTTP 500", holder="old")
    assert await queue.lease_holder("z") == "new"
    assert await places(queue, claimed.id) == ["in-flight:z"]
    assert await status_of(queue, claimed.id) is Status.DELIVERING


async def test_a_zombie_waiting_on_an_empty_queue_moves_nothing_when_a_message_comes(queue: Queue) -> None:
    """The idle wait moves no id: one that arrives while a fenced worker waits stays queued."""
    assert await queue.heartbeat("z", "old", LAPSE_SECONDS, take=True)
    waiting = asyncio.create_task(queue.claim("z", 4, holder="old", block_seconds=2))
    await asyncio.sleep(LAPSE_SECONDS * 3)
    await queue.reap(max_returns=3)
    [sent] = messages(1)
    await queue.enqueue([sent])
    with pytest.raises(Fenced):
        await waiting
    assert await places(queue, sent.id) == ["queue"]
