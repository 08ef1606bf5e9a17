"""The worker registry and the queue-wide counters, on a real Valkey with real workers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from ferry import __version__
from ferry.observe import WorkerRecord, registered_workers, take_snapshot
from ferry.observe.registry import Registration
from ferry.queue import Partitions, Queue
from ferry.queue.connection import connect
from ferry.queue.message import NewMessage, new_message_id
from tests.support.inspect import client, enqueue, with_queue
from tests.support.processes import FerryProcess, Sink, bare_env, ferry_command, wait_until

StartSink = Callable[..., Sink]
StartWorker = Callable[..., FerryProcess]


def listed(redis_url: str) -> list[WorkerRecord]:
    return with_queue(redis_url, registered_workers)


def registered(redis_url: str, worker: FerryProcess) -> list[WorkerRecord]:
    """Its entry, once it has one; fails at once, with its log, if the worker exited."""

    def check() -> list[WorkerRecord]:
        assert worker.process is not None and worker.process.poll() is None, f"the worker exited:\n{worker.log()}"
        return listed(redis_url)

    found: list[WorkerRecord] = wait_until(check, timeout=30)
    return found


def ferry(redis_url: str, *args: str) -> subprocess.Popen[str]:
    """The real CLI, as an operator on another terminal runs it."""
    return subprocess.Popen(
        [ferry_command(), *args, "--redis-url", redis_url],
        env=bare_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )


def answer(command: subprocess.Popen[str]) -> str:
    out, err = command.communicate(timeout=60)
    assert command.returncode == 0 and err == "", err
    return out


def documents(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def test_a_running_worker_is_listed_with_figures_that_move_and_leaves_on_a_clean_stop(
    redis_url: str, start_sink: StartSink, start_worker: StartWorker, tmp_path: Path
) -> None:
    sink = start_sink("--latency-ms", "200")
    worker = start_worker(redis_url, sink.url, WORKER_ID="listed", WORKER_CONCURRENCY=2)
    [entry] = registered(redis_url, worker)
    port = worker.env["WORKER_METRICS_PORT"]
    assert (entry.id, entry.host, entry.pid, entry.concurrency, entry.version) == (
        "listed", socket.gethostname(), worker.pid, 2, __version__
    )
    assert entry.metrics_url == f"http://127.0.0.1:{port}/metrics"
    assert entry.processed == entry.active == 0 and entry.heartbeat_age_seconds < 2
    watch = FerryProcess(["queue", "watch", "--json", "--interval", "0.3", "--redis-url", redis_url], {}, tmp_path / "watch.log")
    watch.start()
    wait_until(lambda: documents(watch.log_path), timeout=30)

    enqueue(redis_url, [b"{}"] * 20)  # ten rounds of two deliveries of 0.2 s: two seconds of work
    readings: list[WorkerRecord] = []

    def done() -> bool:
        readings.extend(listed(redis_url))
        return readings[-1].processed == 20

    wait_until(done, timeout=30, interval=0.1)
    assert any(0 < reading.processed < 20 for reading in readings)  # counted while it delivers
    assert any(reading.active > 0 for reading in readings)
    assert max(reading.active for reading in readings) <= 2
    assert with_queue(redis_url, lambda queue: take_snapshot(Partitions(queue.redis))).queue.model_dump(include={"enqueued_total", "delivered_total"}) == {
        "enqueued_total": 20, "delivered_total": 20
    }
    # The watch saw messages come in and go out, then ends on Ctrl-C with exit 0.
    wait_until(lambda: documents(watch.log_path)[-1]["queue"]["delivered_total"] == 20, timeout=10)
    watched = documents(watch.log_path)
    assert any(reading["rates"]["enqueued_per_second"] > 0 for reading in watched)
    assert any(reading["rates"]["delivered_per_second"] > 0 for reading in watched)
    watch.signal_group(signal.SIGINT)
    assert watch.wait() == 0
    assert "Traceback" not in watch.log()

    as_json, table, once = (
        ferry(redis_url, "workers", "list", "--json"),
        ferry(redis_url, "workers", "list"),
        ferry(redis_url, "queue", "watch", "--once", "--json"),
    )
    [shown] = json.loads(answer(as_json))
    assert (shown["id"], shown["pid"], shown["metrics_url"], shown["processed"]) == ("listed", worker.pid, entry.metrics_url, 20)
    row = next(line for line in answer(table).splitlines() if "listed" in line).split()
    assert row[:3] == ["listed", socket.gethostname(), str(worker.pid)] and "20" in row
    assert entry.metrics_url in row  # piped, the table is not cut to 80 columns
    reading = json.loads(answer(once))
    assert reading["queue"]["size"] == 0 and reading["queue"]["delivered_total"] == 20
    assert [shown["id"] for shown in reading["workers"]] == ["listed"]
    assert 0.9 < reading["rates"]["seconds"] < 5  # --once: rates over its first second

    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    assert listed(redis_url) == []
    assert not client(redis_url).exists("{message_queue}:worker:listed")
    assert answer(ferry(redis_url, "workers", "list")).startswith("no workers registered")


def test_a_killed_workers_entry_expires(redis_url: str, start_sink: StartSink, start_worker: StartWorker) -> None:
    sink = start_sink()
    # A one-second lease: its entry lives three.
    worker = start_worker(redis_url, sink.url, WORKER_ID="killed", FERRY_LEASE_SECONDS=1)
    registered(redis_url, worker)
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


@pytest.mark.both_servers
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

    snapshot = await take_snapshot(Partitions(queue.redis))
    # answered_again: the retried call's 3 and order-1's repeat, answered from the copies stored before.
    assert (await queue.redis.hgetall(queue.keys.stats)) == {
        b"enqueued": b"6", b"answered_again": b"4", b"delivered": b"2", b"dead": b"1"
    }
    assert snapshot.queue.model_dump() | {"oldest_age_seconds": 0} == {
        "size": 0,
        "oldest_age_seconds": 0,
        "retry_scheduled": 1,
        "dead_letters": 1,
        "in_flight": 2,
        "enqueued_total": 6,
        "delivered_total": 2,
        "dead_total": 1,
        "partition_sizes": [0],
    }
    assert snapshot.workers == []  # w1 holds a lease but wrote no entry

    entry = Registration.of("w1", 4, "").entry(CollectorRegistry())
    assert await queue.heartbeat("w1", "test", 30, entry=entry)
    [listed_now] = await registered_workers(Partitions(queue.redis))
    assert (listed_now.id, listed_now.concurrency, listed_now.pid) == ("w1", 4, os.getpid())
    assert 0 < await queue.redis.pttl(queue.keys.worker_info("w1")) <= 90_000  # three leases
