"""A worker never stops silently: Redis refusing writes is waited out, an unexpected
failure of one of its tasks is logged and the task restarted (the worker exits 1 if it
keeps failing), and a worker whose lease cannot be renewed starts no delivery that
could outlive it.

The refusals run against real `ferry worker` processes under load; the task failures
and the lease against ferry's Worker in this process, with one Queue method patched.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from ferry.metrics import WorkerMetrics
from ferry.queue import Partitions, Queue
from ferry.queue.connection import connect
from ferry.queue.errors import RedisBug, RedisUnavailable, WritesRefused
from ferry.queue.keys import Keys
from ferry.queue.message import Message
from ferry.settings import Settings
from ferry.worker.delivery import Deliverer, Outcome
from ferry.worker.worker import LEASE_LEFT_TO_DELIVER, Worker, serve
from tests.refusals import REASON, REFUSALS, writes_refused
from tests.support.certs import CertFiles
from tests.support.inspect import client, enqueue, queue_length
from tests.support.processes import FerryProcess, Sink, wait_until
from tests.support.servers import RedisProcess

StartSink = Callable[..., Sink]
StartWorker = Callable[..., FerryProcess]

# How long each refusal lasts: past the test workers' 2 s lease, as in the reported outage.
OUTAGE_SECONDS = 2.5


def unique(sink: Sink, expected: int) -> Callable[[], bool]:
    return lambda: sink.stats()["unique"] >= expected


def logged(process: FerryProcess, event: str) -> list[dict[str, Any]]:
    """The lines of a ferry process's JSON log with this event."""
    lines = [json.loads(line) for line in process.log().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event]


def all_delivered(redis_url: str, ids: list[str]) -> Callable[[], bool]:
    keys = Keys()

    def check() -> bool:
        with client(redis_url).pipeline(transaction=False) as pipe:
            for message_id in ids:
                pipe.hget(keys.message(message_id), "status")
            return all(status == b"delivered" for status in pipe.execute())

    return check


@pytest.mark.both_servers
@pytest.mark.parametrize("how", REFUSALS)
def test_a_worker_under_load_outlives_redis_refusing_writes(
    how: str, own_redis: RedisProcess, start_sink: StartSink, start_worker: StartWorker
) -> None:
    sink = start_sink()
    sink.faults(latency_ms=20)  # 4 at a time: about 200 a second, so the refusal finds work left
    before = enqueue(own_redis.url, [b'{"before": %d}' % n for n in range(300)])
    worker = start_worker(own_redis.url, sink.url, WORKER_ID="steady")
    wait_until(unique(sink, 20))

    with writes_refused(own_redis, how):
        wait_until(lambda: "redis refuses writes, retrying" in worker.log(), timeout=10)
        with pytest.raises(WritesRefused):  # what a client sends meanwhile is refused, not stored
            enqueue(own_redis.url, [b'{"refused": true}'])
        assert sink.stats()["unique"] < len(before)
        time.sleep(OUTAGE_SECONDS)  # the outage itself, not a wait for anything
    # Told to retry, the clients send the refused messages again; and new ones.
    during = enqueue(own_redis.url, [b'{"during": %d}' % n for n in range(20)])
    after = enqueue(own_redis.url, [b'{"after": %d}' % n for n in range(20)])

    every = before + during + after
    wait_until(unique(sink, len(every)), timeout=60)
    wait_until(all_delivered(own_redis.url, every), timeout=10)
    assert queue_length(own_redis.url) == 0
    refusals = logged(worker, "redis refuses writes, retrying")
    assert refusals and all(REASON[how] in line["error"] for line in refusals), refusals
    back = logged(worker, "redis reachable again")
    # Once per outage as the worker sees it (a call that wrote nothing may succeed
    # meanwhile and end it early), never once per try.
    assert back and len(refusals) <= 1 + len(back) < sum(line["failed_tries"] for line in back)
    assert worker.process is not None and worker.process.poll() is None


# -- in this process ---------------------------------------------------------------------


def worker_settings(redis_url: str, sink: Sink, certs: CertFiles, worker_id: str, **env: str) -> Settings:
    values = {
        "REDIS_URL": redis_url,
        "MAIN_SERVER_URL": sink.url,
        "MAIN_SERVER_CA_FILE": str(certs.ca),
        "WORKER_ID": worker_id,
        "WORKER_METRICS_PORT": "0",
        "WORKER_RETRY_INTERVAL": "0.2",
        "FERRY_LEASE_SECONDS": "2",
        "LOG_LEVEL": "INFO",
        **env,
    }
    return Settings(**values)  # type: ignore[arg-type]  # the variables' names, as the CLI reads them


class WorkerThread:
    """ferry's Worker in an event loop of its own thread, so that the test polls with wait_until.

    `prepare` gets the Worker before it runs: where a test patches one of its Queue's methods.
    """

    def __init__(self, settings: Settings, prepare: Callable[[Worker], None] | None = None) -> None:
        self.settings = settings
        self.prepare = prepare
        self.worker: Worker | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._main, name=f"worker {settings.worker_id}", daemon=True)

    def start(self) -> WorkerThread:
        self.thread.start()
        assert self.ready.wait(30), "the worker did not start"
        if self.error is not None:
            raise self.error
        return self

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as error:  # reported by stop()
            self.error = error
        finally:
            self.ready.set()

    async def _run(self) -> None:
        assert self.settings.redis_url is not None
        redis = connect(self.settings.redis_url)
        try:
            async with Deliverer(self.settings) as deliverer:
                worker = Worker(self.settings, Partitions(redis, self.settings.partitions), deliverer, WorkerMetrics(self.settings.worker_id))
                if self.prepare is not None:
                    self.prepare(worker)
                self.worker, self.loop = worker, asyncio.get_running_loop()
                self.ready.set()
                await worker.run()
        finally:
            await redis.aclose()

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def stop(self, timeout: float = 30.0) -> None:
        if self.thread.is_alive() and self.loop is not None and self.worker is not None:
            for _ in range(2):  # as two SIGTERMs: no grace period
                try:
                    self.loop.call_soon_threadsafe(self.worker.stop)
                except RuntimeError:  # its loop closed meanwhile
                    break
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the worker did not stop"
        if self.error is not None:
            raise self.error


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    """Every log line of this process (the worker threads' too), as structlog's event dicts."""
    with capture_logs() as captured:
        yield captured


@pytest.fixture
def run_worker_thread() -> Iterator[Callable[..., WorkerThread]]:
    started: list[WorkerThread] = []

    def start(settings: Settings, prepare: Callable[[Worker], None] | None = None) -> WorkerThread:
        thread = WorkerThread(settings, prepare)
        started.append(thread)
        return thread.start()

    yield start
    for thread in started:
        thread.stop()


def events(logs: list[dict[str, Any]], event: str, **fields: Any) -> list[dict[str, Any]]:
    return [entry for entry in list(logs) if entry["event"] == event and fields.items() <= entry.items()]


def failing_once(target: Any, method: str, error: Exception, on_call: int = 1) -> None:
    """Make `target.method` raise `error` on its `on_call`-th call only."""
    real = getattr(target, method)
    calls = 0

    async def patched(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == on_call:
            raise error
        return await real(*args, **kwargs)

    setattr(target, method, patched)


@pytest.mark.parametrize(
    ("method", "task", "on_call"),
    [
        ("claim", "fetch", 1),
        ("promote_due", "maintenance", 1),
        ("heartbeat", "lease", 2),  # the first heartbeat takes the lease, before the tasks start
    ],
)
def test_a_task_that_fails_unexpectedly_is_logged_and_restarted(
    method: str,
    task: str,
    on_call: int,
    redis_url: str,
    start_sink: StartSink,
    run_worker_thread: Callable[..., WorkerThread],
    certs: CertFiles,
    logs: list[dict[str, Any]],
) -> None:
    sink = start_sink()
    first = enqueue(redis_url, [b'{"first": %d}' % n for n in range(10)])
    settings = worker_settings(redis_url, sink, certs, f"restarted-{task}")
    bug = RedisBug(f"WRONGTYPE injected into {method}")
    run_worker_thread(settings, lambda worker: failing_once(worker.queue, method, bug, on_call))

    wait_until(lambda: events(logs, "worker task failed unexpectedly, restarting", task=task), timeout=10)
    [failure] = events(logs, "worker task failed unexpectedly, restarting", task=task)
    assert failure["log_level"] == "error" and failure["exc_info"] is bug  # with its traceback
    assert "WRONGTYPE injected" in failure["error"]
    later = enqueue(redis_url, [b'{"later": %d}' % n for n in range(10)])
    wait_until(unique(sink, len(first) + len(later)), timeout=20)
    wait_until(all_delivered(redis_url, first + later))


def test_a_task_that_keeps_failing_stops_the_worker_with_exit_code_1(
    redis_url: str, start_sink: StartSink, certs: CertFiles, logs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """5 failures within a minute: the worker gives back what it holds and `serve` returns 1,
    so that its supervisor (`ferry workers start`) starts it afresh."""
    sink = start_sink()
    enqueue(redis_url, [b'{"n": %d}' % n for n in range(3)])

    async def broken(self: Queue, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected: claims always fail")

    monkeypatch.setattr(Queue, "claim", broken)
    settings = worker_settings(redis_url, sink, certs, "doomed")

    code = asyncio.run(asyncio.wait_for(serve(settings, redis_url), timeout=30))

    assert code == 1
    assert len(events(logs, "worker task failed unexpectedly, restarting", task="fetch")) == 4
    [last] = events(logs, "worker task keeps failing, stopping the worker", task="fetch")
    assert last["log_level"] == "critical" and isinstance(last["exc_info"], RuntimeError)
    assert events(logs, "worker stopped")
    assert queue_length(redis_url) == 3  # nothing was lost on the way out


def test_a_worker_whose_lease_cannot_be_renewed_starts_no_delivery_that_could_outlive_it(
    redis_url: str,
    start_sink: StartSink,
    run_worker_thread: Callable[..., WorkerThread],
    certs: CertFiles,
    logs: list[dict[str, Any]],
) -> None:
    sink = start_sink()
    sink.faults(latency_ms=50)  # one at a time, 20 a second: well over a lease's worth (30) is queued
    settings = worker_settings(redis_url, sink, certs, "lapsing", WORKER_CONCURRENCY="1", FERRY_LEASE_SECONDS="1.5")
    lease = settings.lease_seconds
    heartbeats_fail = threading.Event()
    renewed: list[float] = []  # when each heartbeat that got through was sent (monotonic)
    started: list[float] = []  # when each delivery began

    def prepare(worker: Worker) -> None:
        real_heartbeat, real_deliver = worker.queue.heartbeat, worker.deliverer.deliver

        async def heartbeat(*args: Any, **kwargs: Any) -> bool:
            if heartbeats_fail.is_set():
                raise RedisUnavailable("injected: the heartbeat does not get through")
            sent = time.monotonic()
            held = await real_heartbeat(*args, **kwargs)
            if held is not False:
                renewed.append(sent)
            return held

        async def deliver(message: Message) -> Outcome:
            started.append(time.monotonic())
            return await real_deliver(message)

        worker.queue.heartbeat = heartbeat  # type: ignore[method-assign]
        worker.deliverer.deliver = deliver  # type: ignore[method-assign]

    thread = run_worker_thread(settings, prepare)
    ids = enqueue(redis_url, [b'{"n": %d}' % n for n in range(60)])
    wait_until(unique(sink, 3))

    heartbeats_fail.set()
    heartbeat = Keys().heartbeat("lapsing")
    wait_until(lambda: not client(redis_url).exists(heartbeat), timeout=10)  # the lease has lapsed
    renewed_at = renewed[-1]
    assert sink.stats()["unique"] < len(ids)  # work was left: the lease, not the queue, stopped it
    # None began once the lease may have lapsed, nor (give or take a turn of the
    # worker's event loop) in its last third.
    assert max(started) < renewed_at + lease, (max(started) - renewed_at, lease)
    assert max(started) <= renewed_at + lease * (1 - LEASE_LEFT_TO_DELIVER) + 0.2, (max(started) - renewed_at, lease)
    assert events(logs, "lease renewal overdue, starting no deliveries until one succeeds")

    heartbeats_fail.clear()
    wait_until(lambda: events(logs, "lease renewed, starting deliveries again"), timeout=10)
    wait_until(unique(sink, len(ids)), timeout=30)
    wait_until(all_delivered(redis_url, ids))
    assert thread.running
