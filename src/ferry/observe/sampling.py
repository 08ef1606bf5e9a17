"""The window `ferry verify` judges: snapshots of the queue and registry, worker and proxy scrapes.

A sample every `interval` seconds from start to end of the window, each one
read concurrently (a frozen worker costs one scrape timeout, not a stall of the
whole sample). `series` then turns the samples into the plain readings the
checks judge.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp

from ferry.observe.checks_proxy import HealthProbe, ProxySeries
from ferry.observe.checks_queue import QueueReading
from ferry.observe.checks_workers import Counts, Reading, WorkerSeries
from ferry.observe.probes import ScrapeFailure, health, scrape
from ferry.observe.promtext import Page
from ferry.observe.snapshot import Snapshot, take_snapshot
from ferry.queue import Partitions

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass(frozen=True)
class Plan:
    duration_seconds: float
    queue: Partitions | None
    metrics_ports: Sequence[int]
    proxy_urls: Sequence[str]
    proxy_ssl: ssl.SSLContext | None
    proxy_headers: dict[str, str] = field(default_factory=dict)

    @property
    def interval_seconds(self) -> float:
        """About one sample a second; at least three samples in a short window."""
        return min(1.0, self.duration_seconds / 2) if self.duration_seconds > 0 else 0.0


@dataclass
class Sample:
    at: float  # monotonic seconds since the window began
    snapshot: Snapshot | None
    pages: dict[str, Page | ScrapeFailure]  # worker metrics, by URL
    proxies: dict[str, tuple[HealthProbe, Page | ScrapeFailure]]


def port_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/metrics"


def same_endpoint(url: str) -> str:
    """A URL's endpoint with every loopback name as one: the registry says localhost,
    the port range 127.0.0.1."""
    parts = urlsplit(url)
    host = "127.0.0.1" if (parts.hostname or "") in LOOPBACK else parts.hostname or ""
    return f"{host}:{parts.port}"


async def _sample(plan: Plan, session: aiohttp.ClientSession, started: float, known: set[str]) -> Sample:
    snapshot = await take_snapshot(plan.queue) if plan.queue is not None else None
    registered = {w.metrics_url for w in snapshot.workers if w.metrics_url} if snapshot else set()
    known |= registered
    endpoints = {same_endpoint(url) for url in known}
    urls = sorted(known) + [port_url(p) for p in plan.metrics_ports if same_endpoint(port_url(p)) not in endpoints]
    pages, proxies = await asyncio.gather(
        asyncio.gather(*(scrape(session, url) for url in urls)),
        asyncio.gather(*(_proxy(session, plan, url) for url in plan.proxy_urls)),
    )
    return Sample(
        at=time.monotonic() - started,
        snapshot=snapshot,
        pages=dict(zip(urls, pages, strict=True)),
        proxies=dict(zip(plan.proxy_urls, proxies, strict=True)),
    )


async def _proxy(session: aiohttp.ClientSession, plan: Plan, url: str) -> tuple[HealthProbe, Page | ScrapeFailure]:
    probe, page = await asyncio.gather(
        health(session, url, plan.proxy_ssl, plan.proxy_headers),
        scrape(session, url + "/metrics", ssl_context=plan.proxy_ssl, headers=plan.proxy_headers),
    )
    return probe, page


async def sample_window(plan: Plan, progress: Callable[[float], None] = lambda elapsed: None) -> list[Sample]:
    """Samples from the window's start to its end (`duration_seconds` apart, at least two)."""
    started = time.monotonic()
    samples: list[Sample] = []
    known: set[str] = set()
    connector = aiohttp.TCPConnector(limit=0, force_close=True)  # a fresh connection: a probe of liveness
    async with aiohttp.ClientSession(connector=connector) as session:
        while True:
            samples.append(await _sample(plan, session, started, known))
            elapsed = time.monotonic() - started
            progress(min(elapsed, plan.duration_seconds))
            if elapsed >= plan.duration_seconds and len(samples) >= 2:
                return samples
            due = len(samples) * plan.interval_seconds
            await asyncio.sleep(max(0.0, min(due, plan.duration_seconds) - elapsed))


# ---- samples into the checks' readings ----


def queue_readings(samples: Sequence[Sample]) -> list[QueueReading]:
    readings = []
    for sample in samples:
        if sample.snapshot is None:
            continue
        q = sample.snapshot.queue
        readings.append(
            QueueReading(
                at=sample.snapshot.taken_at,
                size=q.size,
                oldest_age_seconds=q.oldest_age_seconds,
                retry_scheduled=q.retry_scheduled,
                dead_letters=q.dead_letters,
                in_flight=q.in_flight,
                enqueued_total=q.enqueued_total,
                delivered_total=q.delivered_total,
                partition_sizes=tuple(q.partition_sizes),
            )
        )
    return readings


def _reading(page: Page, worker_id: str) -> Reading:
    def value(name: str) -> float:
        return page.value(name, worker_id=worker_id)

    up = page.samples.get("worker_redis_up")
    return Reading(
        counts=Counts(
            processed=value("worker_messages_processed_total"),
            failed=value("worker_messages_failed_total"),
            retries=value("worker_retry_attempts_total"),
            active=value("worker_active_tasks"),
        ),
        delivery=page.histogram("worker_delivery_duration_seconds"),
        redis_up=None if up is None else value("worker_redis_up") >= 1,
    )


def _note_page(series: WorkerSeries, got: Page | ScrapeFailure | None) -> None:
    if isinstance(got, Page):
        series.readings.append(_reading(got, series.id))
    else:
        series.readings.append(None)
        if got is not None:
            series.metrics_error = got.detail
            series.metrics_failure = got.kind


def worker_series(samples: Sequence[Sample]) -> list[WorkerSeries]:
    """One series per worker registered at any sample, and one per metrics port that
    answered (or hung) without a registered worker behind it."""
    by_id: dict[str, WorkerSeries] = {}
    for index, sample in enumerate(samples):
        registered = sample.snapshot.workers if sample.snapshot else []
        for record in registered:
            series = by_id.get(record.id)
            if series is None:
                series = by_id[record.id] = WorkerSeries(id=record.id, readings=[None] * index)
            series.host, series.pid, series.concurrency = record.host, record.pid, record.concurrency
            series.metrics_url = record.metrics_url
            series.registry.append(
                Counts(record.processed, record.failed, record.retries, record.active)
            )
            series.heartbeat_ages.append(record.heartbeat_age_seconds)
        now_ids = {record.id for record in registered}
        for series in by_id.values():
            series.registered = series.id in now_ids
            _note_page(series, sample.pages.get(series.metrics_url) if series.metrics_url else None)
    return list(by_id.values()) + _unregistered(samples, by_id)


def _unregistered(samples: Sequence[Sample], by_id: dict[str, WorkerSeries]) -> list[WorkerSeries]:
    """Metrics endpoints no registered worker claims: a worker on another queue, or a frozen one."""
    claimed = {same_endpoint(s.metrics_url) for s in by_id.values() if s.metrics_url}
    found: dict[str, WorkerSeries] = {}
    for url in sorted({url for sample in samples for url in sample.pages}):
        if same_endpoint(url) in claimed:
            continue
        last = samples[-1].pages.get(url)
        if isinstance(last, Page):
            for worker_id in sorted(last.label_values("worker_messages_processed_total", "worker_id")):
                if worker_id in by_id:
                    continue
                series = found[worker_id] = WorkerSeries(id=worker_id, registered=False, metrics_url=url)
                for sample in samples:
                    _note_page(series, sample.pages.get(url))
        elif isinstance(last, ScrapeFailure) and last.kind == "timeout":
            name = f"port {urlsplit(url).port}"
            found[name] = WorkerSeries(id=name, registered=False, metrics_url=url, readings=[None],
                                       metrics_error=last.detail, metrics_failure=last.kind)
    return list(found.values())


def proxy_series(samples: Sequence[Sample], urls: Sequence[str]) -> list[ProxySeries]:
    result = []
    for url in urls:
        series = ProxySeries(url=url)
        for sample in samples:
            probe, page = sample.proxies[url]
            series.health.append(probe)
            series.pages.append(page if isinstance(page, Page) else None)
        result.append(series)
    return result
