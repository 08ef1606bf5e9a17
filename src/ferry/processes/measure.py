"""What the autoscaler measures of its own workers, each look.

CPU from each worker's process (psutil, on every platform); delivery latency and
busy slots from each worker's own /metrics (the pool knows its port): the
`worker_delivery_duration_seconds` histogram of two scrapes, differenced and
summed over the workers, gives the p95 of what was delivered in between, as
Prometheus's `histogram_quantile` over `increase()` would.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp
import psutil

from ferry.logs import get_logger
from ferry.observe.probes import ScrapeFailure, scrape
from ferry.observe.promtext import Buckets, Page

log = get_logger(__name__)

DELIVERY_HISTOGRAM = "worker_delivery_duration_seconds"
ACTIVE_GAUGE = "worker_active_tasks"


@dataclass(frozen=True)
class Target:
    """One worker to measure: its process and its metrics port (0: none)."""

    pid: int
    metrics_port: int


@dataclass(frozen=True)
class Measured:
    cpu_percent: float | None  # mean over the workers measured, each of one core
    p95_seconds: float | None  # delivery latency since the previous look
    active: int | None  # deliveries in progress, over the workers that answered


@dataclass
class _Seen:
    process: psutil.Process
    buckets: Buckets | None = None


@dataclass
class PoolMeter:
    """Keeps each worker's previous reading, so that each look covers what happened since the last."""

    metrics_host: str = "127.0.0.1"
    _seen: dict[int, _Seen] = field(default_factory=dict)  # by pid: a restarted worker starts afresh

    async def measure(self, targets: list[Target]) -> Measured:
        self._seen = {pid: seen for pid, seen in self._seen.items() if pid in {t.pid for t in targets}}
        cpus = [cpu for t in targets if (cpu := self._cpu(t.pid)) is not None]
        async with aiohttp.ClientSession() as session:  # `scrape` gives each page its timeout
            pages = await asyncio.gather(*(self._scrape(session, t) for t in targets))
        delivered, active, answered = Buckets(), 0, False
        for target, page in zip(targets, pages):
            if page is None:
                continue
            answered = True
            active += int(page.value(ACTIVE_GAUGE))
            buckets = page.histogram(DELIVERY_HISTOGRAM)
            seen = self._seen[target.pid]
            if seen.buckets is not None:
                delivered = delivered.plus(buckets.since(seen.buckets))
            seen.buckets = buckets
        return Measured(
            cpu_percent=sum(cpus) / len(cpus) if cpus else None,
            p95_seconds=delivered.quantile(0.95),
            active=active if answered else None,
        )

    def _cpu(self, pid: int) -> float | None:
        """CPU % since the previous look; None at a worker's first look (psutil's first reading is 0)."""
        try:
            seen = self._seen.get(pid)
            if seen is None:
                self._seen[pid] = _Seen(psutil.Process(pid))
                self._seen[pid].process.cpu_percent(None)
                return None
            return float(seen.process.cpu_percent(None))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None

    async def _scrape(self, session: aiohttp.ClientSession, target: Target) -> Page | None:
        if not target.metrics_port or target.pid not in self._seen:
            return None
        host = "127.0.0.1" if self.metrics_host in ("0.0.0.0", "::", "") else self.metrics_host
        url = f"http://{host}:{target.metrics_port}/metrics"
        page = await scrape(session, url)
        if isinstance(page, ScrapeFailure):
            log.debug("autoscaler cannot read a worker's metrics", url=url, error=page.detail)
            return None
        return page
