"""Every Prometheus metric ferry exposes, named once (the guide's names first)."""

from __future__ import annotations

import asyncio
import math
import os
import socket
import threading
import uuid
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from ferry.adapters.prometheus import observe_many
from ferry.logs import get_logger
from ferry.queue import Snapshot

log = get_logger(__name__)

# The *_created series double every counter's output and no dashboard reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

DELIVERY_BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
END_TO_END_BUCKETS_SECONDS = (0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60, 300, 1800, 3600, 21600, 86400)


class WorkerMetrics:
    """One worker's metrics, all labelled with its `worker_id`.

    The two histograms are tallied (`Tally`: a plain list, no lock, about 0.3 µs an
    observation instead of 2 to 2.5 µs; docs/architecture.md has the figures) and added
    to the metrics whenever the registry is collected, from any thread: a scrape, a
    heartbeat's figures and a test all read every observation so far. The active gauge
    reads the worker's deliveries at collect (`count_active`).
    """

    def __init__(self, worker_id: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.registry.register(FlushOnCollect(self.flush))  # first: collected before the histograms
        labels = ["worker_id"]

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, labels, registry=self.registry)

        self._processed = counter("worker_messages_processed", "Messages delivered (2xx from the main server).")
        self._failed = counter("worker_messages_failed", "Delivery attempts that failed.")
        self._retries = counter("worker_retry_attempts", "Failed attempts scheduled for another try.")
        self._dead = counter("worker_messages_dead", "Messages moved to the dead-letter list.")
        self._returned = counter("worker_messages_returned", "Messages this worker took back from dead workers.")
        self._active = Gauge("worker_active_tasks", "Deliveries in progress.", labels, registry=self.registry)
        self._redis_up = Gauge("worker_redis_up", "1 while Redis answers this worker and takes its writes.", labels, registry=self.registry)
        self._delivery = Histogram(
            "worker_delivery_duration_seconds",
            "Time of one HTTP delivery attempt to the main server.",
            labels,
            buckets=DELIVERY_BUCKETS_SECONDS,
            registry=self.registry,
        )
        self._end_to_end = Histogram(
            "worker_message_latency_seconds",
            "Time from a message's arrival at the proxy to its delivery.",
            labels,
            buckets=END_TO_END_BUCKETS_SECONDS,
            registry=self.registry,
        )
        self.processed = self._processed.labels(worker_id)
        self.failed = self._failed.labels(worker_id)
        self.retries = self._retries.labels(worker_id)
        self.dead = self._dead.labels(worker_id)
        self.returned = self._returned.labels(worker_id)
        self.redis_up = self._redis_up.labels(worker_id)
        self._active_child = self._active.labels(worker_id)
        self._delivery_child = self._delivery.labels(worker_id)
        self._end_to_end_child = self._end_to_end.labels(worker_id)
        self.delivery_seconds = Tally(DELIVERY_BUCKETS_SECONDS)
        self.end_to_end_seconds = Tally(END_TO_END_BUCKETS_SECONDS)
        self._flushing = threading.Lock()  # two scrapes at once must not add a tally twice

    def count_active(self, deliveries: Callable[[], int]) -> None:
        """`worker_active_tasks` is what `deliveries` says at collect time."""
        self._active_child.set_function(deliveries)

    def flush(self) -> None:
        with self._flushing:
            self.delivery_seconds.flush_into(self._delivery_child)
            self.end_to_end_seconds.flush_into(self._end_to_end_child)


class FlushOnCollect(Collector):
    """Collects nothing itself: runs `flush` when its registry is collected (it is registered first)."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush

    def collect(self) -> Iterator[Metric]:
        self._flush()
        return iter(())

    def describe(self) -> list[Metric]:
        return []  # no names: not run again to find them at registration


class Tally:
    """A histogram child's observations, added in one thread without a lock.

    `flush_into` (from any thread) adds to the child what was observed since its last
    flush: it copies the counts, so an observation made meanwhile goes with the next.
    """

    __slots__ = ("_bounds", "_flushed", "_flushed_total", "buckets", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = (*bounds, math.inf)
        self.buckets = [0] * len(self._bounds)  # observations per bucket (not cumulative), +Inf last
        self.total = 0.0
        self._flushed = [0] * len(self._bounds)
        self._flushed_total = 0.0

    def observe(self, value: float) -> None:
        self.buckets[bisect_left(self._bounds, value)] += 1
        self.total += value

    def flush_into(self, child: Histogram) -> None:
        counts, total = list(self.buckets), self.total
        added = [now - before for now, before in zip(counts, self._flushed, strict=True)]
        if any(added):
            observe_many(child, added, total - self._flushed_total)
        self._flushed, self._flushed_total = counts, total


RUN_INFO = "ferry_proxy_run_info"
REQUEST_BUCKETS_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class ProxyMetrics:
    """The proxy's request metrics, summed over its processes.

    With PROMETHEUS_MULTIPROC_DIR set (`ferry proxy` sets a fresh one per run),
    each process writes its values to files there and any process's /metrics
    reads them all; without it, they live in this process alone.

    Requests are tallied in plain dicts and written to the metrics by `flush`
    (every `FLUSH_SECONDS`, before this process renders, and at exit): a
    multiprocess write costs a getpid and a locked mmap write per value, about
    8 µs a request, which was 5% of the ingest route. Another process's last
    second may so be missing from a scrape; nothing is lost.
    """

    FLUSH_SECONDS = 1.0

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.run = proxy_run()
        self.requests = Counter(
            "proxy_requests", "HTTP requests answered.", ["method", "route", "status"], registry=self.registry
        )
        self.duration = Histogram(
            "proxy_requests_duration_seconds",
            "Time to answer a request.",
            ["method", "route"],
            buckets=REQUEST_BUCKETS_SECONDS,
            registry=self.registry,
        )
        self.accepted = Counter(
            "proxy_messages_accepted", "Messages stored and queued (202).", registry=self.registry
        )
        self._answers: dict[tuple[str, str, int], int] = {}
        self._times: dict[tuple[str, str], Tally] = {}
        self._accepted = 0

    def note(self, method: str, route: str, status: int, seconds: float) -> None:
        """One answered request; `route` is a template, never a raw path (ids would blow up the series)."""
        key = (method, route, status)
        self._answers[key] = self._answers.get(key, 0) + 1
        times = self._times.get((method, route))
        if times is None:
            times = self._times[(method, route)] = Tally(REQUEST_BUCKETS_SECONDS)
        times.observe(seconds)

    def note_accepted(self, count: int) -> None:
        self._accepted += count

    def flush(self) -> None:
        """Add what was tallied since the last flush to the metrics."""
        answers, self._answers = self._answers, {}
        for (method, route, status), count in answers.items():
            self.requests.labels(method, route, str(status)).inc(count)
        for (method, route), times in self._times.items():
            times.flush_into(self.duration.labels(method, route))
        if self._accepted:
            self.accepted.inc(self._accepted)
            self._accepted = 0

    async def flush_every_interval(self) -> None:
        """Flush every `FLUSH_SECONDS` until cancelled, and once more then."""
        try:
            while True:
                await asyncio.sleep(self.FLUSH_SECONDS)
                self._flush_or_log()
        finally:
            self._flush_or_log()

    def _flush_or_log(self) -> None:
        try:
            self.flush()
        except Exception:  # a failed write must not end the flushing for good, nor pass unsaid
            log.exception("writing the request metrics failed")

    def render(self, snapshot: Snapshot | None) -> bytes:
        """Prometheus text: every process's counters, and the queue as Redis says it is now."""
        self.flush()
        registry = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        text = generate_latest(registry)
        live = CollectorRegistry()
        live.register(RunCollector(self.run))
        if snapshot is not None:
            live.register(QueueCollector(snapshot))
        return text + generate_latest(live)


def proxy_run() -> str:
    """This `ferry proxy` run: its host and its metrics directory (one per run, shared by its
    processes), or a token of this process where there is none."""
    shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    token = os.path.basename(shared.rstrip("/")) if shared else uuid.uuid4().hex[:12]
    return f"{socket.gethostname()}/{token}"


class RunCollector(Collector):
    """`ferry_proxy_run_info{run}`: which instance answered a scrape. Behind a load balancer
    each scrape may reach another instance; `ferry verify` differences only pages of one run."""

    def __init__(self, run: str) -> None:
        self.run = run

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(RUN_INFO, "Which proxy run answered (value 1).", labels=["run"])
        family.add_metric([self.run], 1)
        yield family


class QueueCollector(Collector):
    """The queue's figures, read from Redis at scrape time (not kept per process)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snapshot = self.snapshot
        yield GaugeMetricFamily(
            "redis_queue_size", "Messages waiting, in every partition (one partition: LLEN message_queue).", snapshot.size
        )
        by_partition = GaugeMetricFamily(
            "redis_queue_partition_size", "Messages waiting in one partition (0: message_queue).", labels=["partition"]
        )
        for partition, size in enumerate(snapshot.partition_sizes):
            by_partition.add_metric([str(partition)], size)
        yield by_partition
        yield GaugeMetricFamily(
            "ferry_queue_oldest_age_seconds",
            "How long the next message in line has waited: the backlog in seconds.",
            snapshot.oldest_age_seconds,
        )
        yield GaugeMetricFamily(
            "ferry_retry_scheduled", "Messages waiting for another attempt.", snapshot.retry_scheduled
        )
        yield GaugeMetricFamily("ferry_dead_letters", "Messages in the dead-letter list.", snapshot.dead_letters)
        yield GaugeMetricFamily("ferry_workers", "Workers holding a lease on the queue.", snapshot.workers)


class SupervisorMetrics:
    """What `ferry workers start` and `ferry up` say about the processes they keep."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.workers = Gauge("ferry_supervisor_workers", "Worker processes wanted now.", registry=self.registry)
        self.restarts = Counter(
            "ferry_supervisor_restarts", "Crashed processes started again.", ["child"], registry=self.registry
        )
        self.decisions = Counter(
            "ferry_autoscaler_decisions",
            "Changes of the worker count, by direction and the rule that fired (reason: queue_high, "
            "cpu_high, p95_high, queue_growing, idle, minimum, maximum).",
            ["direction", "reason"],
            registry=self.registry,
        )
        self.queue_size = Gauge(
            "ferry_autoscaler_queue_size", "Queue size at the autoscaler's last look.", registry=self.registry
        )
