"""Acks on the way: a delivery's slot frees at the main server's 2xx and its ack rides
with the next claim (ferry.worker.acks; what that saves is measured in bench/). A
worker that dies before its acks are recorded loses nothing: those messages are
delivered again."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

import ferry.worker.acks as acks_module
from ferry.queue.message import Message
from ferry.worker.acks import Acks
from tests.support.inspect import client, enqueue, in_flight, queue_length, status
from tests.support.processes import FerryProcess, Sink, wait_until
from tests.support.servers import RedisProcess

StartSink = Callable[..., Sink]
StartWorker = Callable[..., FerryProcess]


def test_a_worker_killed_before_its_acks_are_recorded_loses_nothing(
    own_redis: RedisProcess, start_sink: StartSink, start_worker: StartWorker
) -> None:
    """Redis stalls (SIGSTOP) while the worker goes on POSTing what it had claimed: those
    deliveries' acks cannot be recorded. The worker is SIGKILLed, Redis resumes, and
    another worker delivers them again: every message delivered, none stranded."""
    count = 300
    ids = enqueue(own_redis.url, [b'{"n": %d}' % n for n in range(count)])
    sink = start_sink("--latency-ms", "200")  # 16 POSTs in flight whenever Redis stops
    doomed = start_worker(own_redis.url, sink.url, WORKER_ID="doomed", WORKER_CONCURRENCY=16, FERRY_LEASE_SECONDS=1)
    wait_until(lambda: sink.stats()["unique"] >= 40, timeout=30, interval=0.005)
    assert own_redis.process is not None
    own_redis.process.send_signal(signal.SIGSTOP)
    try:
        arrived = -1
        while arrived != sink.stats()["unique"]:  # what it had claimed ahead is POSTed too
            arrived = sink.stats()["unique"]
            time.sleep(0.6)  # longer than a POST
        doomed.signal(signal.SIGKILL)
        doomed.wait()
    finally:
        own_redis.process.send_signal(signal.SIGCONT)
    recorded = sum(status(own_redis.url, i).status == "delivered" for i in ids)
    assert recorded < arrived  # some deliveries' acks were still on the way: the case under test
    start_worker(own_redis.url, sink.url, WORKER_ID="rescuer", WORKER_CONCURRENCY=16, FERRY_LEASE_SECONDS=1)
    wait_until(lambda: all(status(own_redis.url, i).status == "delivered" for i in ids), timeout=60)
    assert sink.stats()["unique"] == count
    assert queue_length(own_redis.url) == 0
    assert in_flight(own_redis.url, "doomed") == [] and in_flight(own_redis.url, "rescuer") == []
    assert sink.stats()["duplicates"] >= arrived - recorded  # delivered again: at least once, never lost


def test_acks_a_flushed_script_cache_refused_are_recorded_on_their_own(
    redis_url: str, start_sink: StartSink, start_worker: StartWorker
) -> None:
    """A new master (or SCRIPT FLUSH) knows none of ferry's scripts: the acks a claim
    carried come back NOSCRIPT. They go again on their own, which loads the script:
    every message ends `delivered`, none left in flight, none delivered twice."""
    count = 1500
    ids = enqueue(redis_url, [b'{"n": %d}' % n for n in range(count)])
    sink = start_sink("--latency-ms", "5")
    start_worker(redis_url, sink.url, WORKER_ID="flushed", WORKER_CONCURRENCY=16)
    redis = client(redis_url)
    for unique in (200, 600, 1000):
        wait_until(lambda: sink.stats()["unique"] >= unique, timeout=30, interval=0.005)
        redis.script_flush()
    wait_until(lambda: sink.stats()["unique"] == count, timeout=60)
    wait_until(lambda: all(status(redis_url, i).status == "delivered" for i in ids), timeout=10)
    assert in_flight(redis_url, "flushed") == []
    assert sink.stats()["duplicates"] == 0


def message(message_id: str) -> Message:
    return Message(id=message_id, body=b"{}", content_type="application/json", attempt=1, created_at_ms=0)


class Recorder:
    """What `Acks.run` records, call by call (the worker's would be one ack.lua call each)."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def record(self, batch: list[Message]) -> None:
        self.calls.append([m.id for m in batch])


@asynccontextmanager
async def running_acks() -> AsyncIterator[tuple[Acks, Recorder]]:
    """An `Acks` whose loop runs, recording into a `Recorder`."""
    recorder = Recorder()
    acks = Acks(recorder.record, lambda batch: None)
    running = asyncio.create_task(acks.run())
    try:
        yield acks, recorder
    finally:
        running.cancel()


async def test_acks_a_claim_gave_back_go_on_their_own_though_claims_keep_coming() -> None:
    """A claim's carried acks came back NOSCRIPT: the next claim does not carry them again
    (it would meet the same refusal); they go in one call of their own, without lingering."""
    async with running_acks() as (acks, recorder):
        acks.claim_coming = True
        acks.add(message("a"))
        acks.add(message("b"))
        carried = acks.take()
        assert [m.id for m in carried] == ["a", "b"]
        acks.give_back(carried)
        assert acks.take() == []
        await asyncio.wait_for(acks.settled(), 5)
        assert recorder.calls == [["a", "b"]]


async def test_acks_are_left_for_a_coming_claim_and_sent_alone_when_none_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """(A loop lingering when the claim stops coming sends at the linger's end: in the
    worker, 10 ms at most.)"""
    monkeypatch.setattr(acks_module, "LINGER_SECONDS", 0.5)
    async with running_acks() as (acks, recorder):
        acks.claim_coming = True
        acks.add(message("a"))
        for _ in range(5):
            await asyncio.sleep(0)  # the loop runs, and holds off
        carried = acks.take()
        assert [m.id for m in carried] == ["a"] and recorder.calls == []
        acks.done(carried)
        acks.claim_coming = False
        acks.add(message("b"))
        await asyncio.wait_for(acks.settled(), 5)
        assert recorder.calls == [["b"]]


async def test_acks_a_claim_was_coming_for_go_alone_after_the_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(acks_module, "LINGER_SECONDS", 0.05)
    async with running_acks() as (acks, recorder):
        acks.claim_coming = True  # and it never comes
        acks.add(message("a"))
        await asyncio.wait_for(acks.settled(), 5)
        assert recorder.calls == [["a"]]
