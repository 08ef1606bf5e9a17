"""The worker registry: each running worker describes itself in Redis, on every host.

A worker writes its entry (`Keys.worker_info`) with each heartbeat, in the same
script call that renews its lease (see heartbeat.lua), so being listed costs no
round trip of its own and only the lease's holder writes it. A clean stop deletes
it (release.lua); a killed worker's entry expires a few leases later. The set
`{message_queue}:workers` stays the list of ids: an id whose entry is gone is not
listed. docs/storage.md describes the hash.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ValidationError

from ferry import __version__
from ferry.queue import Partitions

# The worker's metrics that its entry repeats, by entry field: a reader of the registry
# sees what each worker's /metrics would say, without scraping it.
FIGURES = {
    "processed": "worker_messages_processed_total",
    "failed": "worker_messages_failed_total",
    "retries": "worker_retry_attempts_total",
    "dead": "worker_messages_dead_total",
    "active": "worker_active_tasks",
}
WILDCARD_HOSTS = ("", "0.0.0.0", "::")


class WorkerRecord(BaseModel):
    """One registered worker, as its last heartbeat described it."""

    id: str
    host: str
    pid: int
    metrics_url: str  # empty when the worker serves no metrics
    concurrency: int
    started_at: float  # unix seconds, the worker's clock
    version: str
    processed: int = 0  # cumulative since start, as its /metrics counts them
    failed: int = 0
    retries: int = 0
    dead: int = 0
    active: int = 0  # deliveries in progress at its last heartbeat
    heartbeat_at: float  # unix seconds, Redis's clock
    heartbeat_age_seconds: float  # at the reading, by Redis's clock: no skew between hosts


@dataclass(frozen=True, slots=True)
class Registration:
    """What a worker says of itself at start; `entry` adds its live figures."""

    worker_id: str
    metrics_url: str
    concurrency: int
    host: str
    pid: int
    started_at: float

    @classmethod
    def of(cls, worker_id: str, concurrency: int, metrics_url: str = "") -> Registration:
        return cls(worker_id, metrics_url, concurrency, socket.gethostname(), os.getpid(), time.time())

    def entry(self, metrics: CollectorRegistry) -> dict[str, str | int | float]:
        """The fields of its registry entry now (`heartbeat_at` is the script's)."""
        fields: dict[str, str | int | float] = {
            "id": self.worker_id,
            "host": self.host,
            "pid": self.pid,
            "metrics_url": self.metrics_url,
            "concurrency": self.concurrency,
            "started_at": self.started_at,
            "version": __version__,
        }
        return fields | figures(metrics)


def figures(metrics: CollectorRegistry) -> dict[str, int]:
    """The worker's counters and active deliveries, read from its own metrics (one walk)."""
    samples = {sample.name: sample.value for family in metrics.collect() for sample in family.samples}
    return {field: int(samples.get(name, 0)) for field, name in FIGURES.items()}


def metrics_url(host: str, port: int) -> str:
    """Where a worker's /metrics can be scraped: its host's name when it listens on every address."""
    if port == 0:
        return ""
    if host in WILDCARD_HOSTS:
        host = socket.gethostname()
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/metrics"


def redis_seconds(time_reply: Sequence[int]) -> float:
    """Redis's TIME reply as unix seconds."""
    seconds, microseconds = time_reply
    return seconds + microseconds / 1_000_000


def record(raw: Mapping[bytes, bytes], now: float) -> WorkerRecord | None:
    """A worker's entry as read, or None when it is not one ferry wrote."""
    fields = {name.decode(errors="replace"): value.decode(errors="replace") for name, value in raw.items()}
    try:
        heartbeat_at = float(fields.get("heartbeat_at", ""))
        return WorkerRecord.model_validate(fields | {"heartbeat_age_seconds": max(0.0, now - heartbeat_at)})
    except (ValueError, ValidationError):
        return None


def records(rows: Iterable[Mapping[bytes, bytes]], now: float) -> list[WorkerRecord]:
    """The entries read (HGETALL replies) that exist and are ferry's, ordered by host and id."""
    found = [worker for row in rows if row and (worker := record(row, now)) is not None]
    return sorted(found, key=lambda worker: (worker.host, worker.id))


async def registered_workers(queue: Partitions) -> list[WorkerRecord]:
    """Every registered worker whose entry is live, on every host: two round trips."""
    async with queue.redis.pipeline(transaction=False) as pipe:
        pipe.smembers(queue.keys.workers)
        pipe.time()
        ids, now = await pipe.execute()
    async with queue.redis.pipeline(transaction=False) as pipe:
        for worker_id in ids:
            pipe.hgetall(queue.keys.worker_info(worker_id.decode(errors="replace")))
        rows = await pipe.execute()
    return records(rows, redis_seconds(now))
