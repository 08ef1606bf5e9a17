"""The worker registry and the queue-wide counters, on a real Valkey with real workers."""

from __future__ import annotations

import signal
import socket
from collections.abc import AsyncIterator, Callable

import pytest

from ferry import __version__
from ferry.observe import WorkerRecord, registered_workers, take_snapshot
from ferry.queue import Queue
from ferry.queue.connection import connect
from ferry.queue.message import NewMessage, new_message_id
from tests.support.inspect import client, enqueue, with_queue
from tests.support.processes import FerryProcess, Sink, wait_until

StartSink = Callable[..., Sink]
StartWorker = Callable[..., FerryProcess]


def listed(redis_url: str) -> list[WorkerRecord]:
    return with_queue(redis_url, registered_workers)


def test_a_running_worker_is_listed_with_figures_that_move_and_leaves_on_a_clean_stop(
    redis_url: str, start_sink: StartSink, start_worker: StartWorker
) -> None:
    sink = start_sink("--latency-ms", "200")
    worker = start_worker(redis_url, sink.url, WORKER_ID="listed", WORKER_CONCURRENCY=2)
    [entry] = wait_until(lambda: listed(redis_url), timeout=30)
    port = worker.env["WORKER_METRICS_PORT"]
    assert (entry.id, entry.host, entry.pid, entry.concurrency, entry.version) == (
        "listed", socket.gethostname(), worker.pid, 2, __version__
    )
    assert entry.metrics_url == f"http://127.0.0.1:{port}/metrics"
    assert entry.processed == entry.active == 0 and entry.heartbeat_age_seconds < 2

    enqueue(redis_url, [b"{}"] * 20)  # ten rounds of two deliveries of 0.2 s: two seconds of work
    readings: list[WorkerRecord] = []

    def done() -> bool:
        readings.extend(listed(redis_url))
        return readings[-1].processed == 20

    wait_until(done, timeout=30, interval=0.1)
    assert any(0 < reading.processed < 20 for reading in readings)  # counted while it delivers
    assert any(reading.active > 0 for reading in readings)
    assert max(reading.active for reading in readings) <= 2
    assert with_queue(redis_url, take_snapshot).queue.model_dump(include={"enqueued_total", "delivered_total"}) == {
        "enqueued_total": 20, "delivered_total": 20
    }

    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    assert listed(redis_url) == []
    assert not client(redis_url).exists("{message_queue}:worker:listed")


def test_a_killed_workers_entry_expires(redis_url: str, start_sink: StartSink, start_worker: StartWorker) -> None:
    sink = start_sink()
    # A one-second lease: its entry lives three.
    worker = start_worker(redis_url, sink.url, WORKER_ID="killed", FERRY_LEASE_SECONDS=1)
    wait_until(lambda: listed(redis_url), timeout=30)
    worker.kill()
    [stale] = listed(redis_url)  # listed still, its heartbeat ageing
    wait_until(lambda: listed(redis_url) == [], timeout=10)
    assert not client(redis_url).exists("{message_queue}:worker:killed")
    assert stale.id == "killed"


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[Queue]:
    redis = connect(redis_url)
    queue = Queue(redis)
    await queue.heartbeat("w1", "test", 30, take=True)
    yield queue
    await redis.aclose()


def new(count: int, idempotency_key: str = "") -> list[NewMessage]:
    return [NewMessage(new_message_id(), b"{}", "application/json", idempotency_key=idempotency_key) for _ in range(count)]


async def test_the_counters_count_what_was_stored_delivered_and_buried_exactly(queue: Queue) -> None:
    first = new(3, idempotency_key="")
    keyed = new(1, idempotency_key="order-1")
    await queue.enqueue(first + keyed)
    await queue.enqueue(first)  # a retried call: stored already, not counted again
    await queue.enqueue(new(1, idempotency_key="order-1"))  # a repeat of order-1: nothing stored
    await queue.enqueue(new(2), all_or_nothing=True)
    claimed = [message.id for message in await queue.claim("w1", 10, holder="test")]
    assert len(claimed) == 6
    assert await queue.ack("w1", claimed[:2], 60, holder="test") == 2
    assert await queue.ack("w1", claimed[:2], 60, holder="test") == 0  # recorded once only
    assert await queue.bury("w1", claimed[2], "HTTP 400", holder="test")
    assert await queue.retry_later("w1", claimed[3], 10**15, "HTTP 503", holder="test")

    snapshot = await take_snapshot(queue)
    assert (await queue.redis.hgetall(queue.keys.stats)) == {b"enqueued": b"6", b"delivered": b"2", b"dead": b"1"}
    assert snapshot.queue.model_dump() | {"oldest_age_seconds": 0} == {
        "size": 0,
        "oldest_age_seconds": 0,
        "retry_scheduled": 1,
        "dead_letters": 1,
        "in_flight": 2,
        "enqueued_total": 6,
        "delivered_total": 2,
        "dead_total": 1,
    }
    assert snapshot.workers == []  # w1 holds a lease but wrote no entry
