"""The light-load path: a worker that has claimed all there was waits on the empty queue
in the same round trip as its next claim, and carries the acks of the deliveries it just
made in that round trip too. The acks must be recorded at once, not when the wait ends,
and a worker killed while it waits must leave nothing to deliver twice."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable

import pytest

from ferry.queue import Fenced, Queue
from ferry.queue.connection import connect
from ferry.queue.message import NewMessage, Status, new_message_id
from tests.queue.test_queue import messages, places, queue  # noqa: F401  (queue: the fixture, w1 holding its lease)
from tests.support.inspect import enqueue, in_flight, queue_length, status
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


def test_a_worker_stopped_while_it_lingers_at_a_steady_rate_accounts_for_every_message(
    redis_url: str,
    start_sink: Callable[..., Sink],
    start_worker: Callable[..., FerryProcess],
) -> None:
    """At 400 messages a second the worker lingers before each wait (LINGER_SECONDS), the acks
    of the deliveries that end meanwhile waiting to ride with its claim; stopped mid-stream,
    each delivered message is recorded as delivered, none is left in flight, the rest are queued."""
    sink = start_sink()
    worker = start_worker(redis_url, sink.url, WORKER_ID="steady", WORKER_CONCURRENCY=16)
    enqueue(redis_url, [b"warm-up"])
    wait_until(lambda: sink.stats()["unique"] == 1, timeout=20)

    async def stream() -> list[str]:
        client = connect(redis_url)
        queue = Queue(client)
        ids = []
        start = time.monotonic()
        for n in range(600):  # 1.5 s on a clock, stopped half-way
            await asyncio.sleep(max(0.0, start + n / 400 - time.monotonic()))
            if n == 300:
                worker.signal(signal.SIGTERM)
            [result] = await queue.enqueue([NewMessage(new_message_id(), b'{"n": %d}' % n, "application/json")])
            ids.append(result.id)
        await client.aclose()
        return ids

    ids = asyncio.run(stream())
    assert worker.wait(timeout=15) == 0
    arrived = sink.stats()["unique"] - 1
    assert 0 < arrived < len(ids)
    statuses = [status(redis_url, message_id).status for message_id in ids]
    assert statuses.count("delivered") == arrived
    assert statuses.count("queued") == len(ids) - arrived == queue_length(redis_url)
    assert in_flight(redis_url, "steady") == []
    assert sink.stats()["duplicates"] == 0
