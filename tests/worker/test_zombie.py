"""A zombie worker: a real `ferry worker` frozen (SIGSTOP) for longer than its lease,
while another worker takes back what it held, then thawed. It is fenced off: what it
does late makes no second copy and strands nothing; it rejoins under a new lease and
goes on delivering."""

from __future__ import annotations

import signal
from collections.abc import Callable

from tests.support.inspect import client, enqueue, queue_length, scrape, status
from tests.support.processes import FerryProcess, Sink, wait_until
from tests.support.worker import InProcessWorker

StartSink = Callable[..., Sink]
StartWorker = Callable[..., FerryProcess]
RunWorker = Callable[..., InProcessWorker]


def processed(worker: FerryProcess) -> float:
    name = f'worker_messages_processed_total{{worker_id="{worker.env["WORKER_ID"]}"}}'
    try:
        return scrape(int(worker.env["WORKER_METRICS_PORT"])).get(name, 0.0)
    except OSError:
        return 0.0


def active(worker: FerryProcess) -> float:
    name = f'worker_active_tasks{{worker_id="{worker.env["WORKER_ID"]}"}}'
    try:
        return scrape(int(worker.env["WORKER_METRICS_PORT"])).get(name, 0.0)
    except OSError:
        return 0.0


def stranded(redis_url: str) -> list[bytes]:
    """Ids in any in-flight list at all, registered worker or not."""
    redis = client(redis_url)
    return [i for key in redis.scan_iter(match="{message_queue}:inflight:*") for i in redis.zrange(key, 0, -1)]


def test_a_frozen_worker_is_fenced_off_then_rejoins_and_nothing_is_lost_or_stranded(
    redis_url: str, start_sink: StartSink, start_worker: StartWorker, run_worker: RunWorker
) -> None:
    sink = start_sink("--latency-ms", "1500")
    first = enqueue(redis_url, [b'{"n": %d}' % n for n in range(12)])
    zombie = start_worker(redis_url, sink.url, WORKER_ID="zombie", WORKER_CONCURRENCY=4, FERRY_LEASE_SECONDS=1)
    wait_until(lambda: active(zombie) == 4)
    zombie.signal(signal.SIGSTOP)
    try:
        sink.faults(latency_ms=0)
        rescuer = run_worker(redis_url, sink.url, WORKER_ID="rescuer", FERRY_LEASE_SECONDS=1)
        # The rescuer's reaper takes back what the frozen worker held, and delivers it all.
        wait_until(lambda: all(status(redis_url, i).status == "delivered" for i in first), timeout=30)
    finally:
        zombie.signal(signal.SIGCONT)

    # Thawed: its late deliveries and acks change nothing; it finds itself fenced off,
    # takes a new lease, and delivers again.
    wait_until(lambda: "fenced off" in zombie.log(), timeout=20)
    # The rescuer leaves first: both waiting, one push wakes one of them, and the rescuer
    # could take all 40 before the zombie's wait ends; alone, the zombie must deliver them.
    rescuer.stop()
    before = processed(zombie)
    later = enqueue(redis_url, [b'{"later": %d}' % n for n in range(40)])
    wait_until(lambda: all(status(redis_url, i).status == "delivered" for i in later), timeout=30)
    # It counts a message once its ack returns, a moment after the ack marked it delivered.
    # + its late first deliveries, if counted after `before`.
    wait_until(lambda: processed(zombie) >= before + 40, timeout=10)
    assert sink.stats()["unique"] == 52
    assert queue_length(redis_url) == 0
    wait_until(lambda: stranded(redis_url) == [], timeout=10)
    assert zombie.process is not None and zombie.process.poll() is None  # alive, not crashed
