"""Every Prometheus metric ferry exposes, named once (the guide's names first)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# The *_created series double every counter's output and no dashboard reads them.
disable_created_metrics()

DELIVERY_BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
END_TO_END_BUCKETS_SECONDS = (0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60, 300, 1800, 3600, 21600, 86400)


class WorkerMetrics:
    """One worker's metrics, all labelled with its `worker_id`."""

    def __init__(self, worker_id: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ["worker_id"]

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, labels, registry=self.registry)

        self._processed = counter("worker_messages_processed", "Messages delivered (2xx from the main server).")
        self._failed = counter("worker_messages_failed", "Delivery attempts that failed.")
        self._retries = counter("worker_retry_attempts", "Failed attempts scheduled for another try.")
        self._dead = counter("worker_messages_dead", "Messages moved to the dead-letter list.")
        self._returned = counter("worker_messages_returned", "Messages this worker took back from dead workers.")
        self._active = Gauge("worker_active_tasks", "Deliveries in progress.", labels, registry=self.registry)
        self._redis_up = Gauge("worker_redis_up", "1 while Redis answers this worker.", labels, registry=self.registry)
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
        self.active = self._active.labels(worker_id)
        self.redis_up = self._redis_up.labels(worker_id)
        self.delivery_seconds = self._delivery.labels(worker_id)
        self.end_to_end_seconds = self._end_to_end.labels(worker_id)
