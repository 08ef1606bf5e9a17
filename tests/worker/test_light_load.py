"""The light-load path: a worker that has claimed all there was waits on the empty queue
in the same round trip as its next claim, and carries the acks of the deliveries it just
made in that round trip too. The acks must be recorded at once, not when the wait ends,
and a worker killed while it waits must leave nothing to deliver twice."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import pytest

from ferry.queue import Fenced, Queue
from ferry.queue.message import Status
from tests.queue.test_queue import messages, places, queue  # noqa: F401  (queue: the fixture, w1 holding its lease)
from tests.support.inspect import enqueue, in_flight, status
from tests.support.processes import FerryProcess, Sink, wait_until


async def poll(condition: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.02)


async def test_an_ack_carried_by_a_waiting_claim_is_recorded_before_the_wait_ends(queue: Queue) -> None:
    [delivered] = messages(1)
    await queue.enqueue([delivered])
    await queue.claim("w1", 4, holder="test")
    await queue.ack("w1", [], 60, holder="test")  # the ack script loaded, as by a worker's first lone ack
    waiting = asyncio.create_task(
        queue.ack_and_claim("w1", [delivered.id], 60, 4, holder="test", block_seconds=5)
    )

    async def recorded() -> bool:
        found = await queue.status(delivered.id)
        return found is not None and found.status is Status.DELIVERED

    await poll(recorded)
    assert not waiting.done()  # still waiting on the empty queue: the ack ran first
    assert await places(queue, delivered.id) == []
    [arriving] = messages(1)
    await queue.enqueue([arriving])
    acks_ran, claimed = await asyncio.wait_for(waiting, 5)
    assert acks_ran and [m.id for m in claimed] == [arriving.id]
    assert await places(queue, arriving.id) == ["in-flight:w1"]


async def test_a_flushed_script_cache_under_a_carried_ack_loses_neither(queue: Queue) -> None:
    """NOSCRIPT in the pipeline: the claim loads its script and runs; the ack is reported
    not run, for the worker to send again on its own."""
    [delivered, arriving] = messages(2)
    await queue.enqueue([delivered])
    await queue.claim("w1", 4, holder="test")
    await queue.enqueue([arriving])
    await queue.redis.script_flush()
    acks_ran, claimed = await queue.ack_and_claim("w1", [delivered.id], 60, 4, holder="test", block_seconds=1)
    assert not acks_ran and [m.id for m in claimed] == [arriving.id]
    assert await queue.ack("w1", [delivered.id], 60, holder="test") == 1
    assert await places(queue, delivered.id) == []


async def test_a_fenced_worker_s_carried_ack_and_claim_change_nothing_of_its_successor(queue: Queue) -> None:
    """As a lone ack would (ack.lua): an id in the list of the worker id's new holder is left to it."""
    [delivered] = messages(1)
    await queue.enqueue([delivered])
    await queue.claim("w1", 4, holder="test")
    await queue.redis.set(queue.keys.heartbeat("w1"), "another")  # another process took the id
    with pytest.raises(Fenced):
        await queue.ack_and_claim("w1", [delivered.id], 60, 4, holder="test", block_seconds=0.1)
    assert await places(queue, delivered.id) == ["in-flight:w1"]  # not its list any more: left
    found = await queue.status(delivered.id)
    assert found is not None and found.status is Status.DELIVERING


def test_a_worker_killed_while_it_waits_after_light_load_has_nothing_to_deliver_again(
    redis_url: str,
    start_sink: Callable[..., Sink],
    start_worker: Callable[..., FerryProcess],
) -> None:
    sink = start_sink()
    worker = start_worker(redis_url, sink.url, WORKER_ID="light", WORKER_CONCURRENCY=4)
    sent = []
    for n in range(20):  # one at a time: each ack rides with the next wait
        [message_id] = enqueue(redis_url, [b'{"n": %d}' % n])
        sent.append(message_id)
        wait_until(lambda: sink.stats()["unique"] == n + 1, timeout=20, interval=0.01)
    wait_until(lambda: all(status(redis_url, i).status == "delivered" for i in sent), timeout=10)
    assert in_flight(redis_url, "light") == []
    worker.signal(signal.SIGKILL)
    worker.wait()
    assert all(status(redis_url, i).status == "delivered" for i in sent)
    assert in_flight(redis_url, "light") == []  # nothing a reaper would give back to deliver twice
    assert sink.stats()["duplicates"] == 0
