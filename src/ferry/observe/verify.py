"""`ferry verify`: the guide's verify_load_balancing.ps1, made real.

Samples the system over a window (`sampling`), judges the workers, the queue and
the proxies on what it saw (`checks_*`), says why a check failed (`diagnosis`),
and returns one `Report`: the CLI prints it as tables or as JSON. docs/verify.md
describes each check, threshold and field.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ferry.observe.checks_proxy import ProxyCheck, judge_proxies
from ferry.observe.checks_queue import QueueCheck, judge_queue
from ferry.observe.checks_workers import WorkersCheck, WorkerSeries, judge_workers
from ferry.observe.diagnosis import Evidence, diagnose
from ferry.observe.probes import MainServerProbe, probe_main_server
from ferry.observe.sampling import Plan, Sample, proxy_series, queue_readings, sample_window, worker_series
from ferry.observe.verdict import CHECKLIST, ChecklistItem, Finding, skipped
from ferry.processes.redis_url import NoRedis, running_redis_url
from ferry.queue import Partitions
from ferry.queue.connection import connect, probe_writes
from ferry.queue.errors import RedisFailure, WritesRefused
from ferry.settings import Settings, redacted_url

# The guide's worker metrics ports: 9100 to 9109 (BaseMetricsPort and nine more).
METRICS_PORT_SPAN = 10
LAST_ERRORS = 3


class VerifyError(Exception):
    """verify could not judge (a usage or connection error): exit 2, one line."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class VerifyOptions:
    check_workers: bool
    check_queue: bool
    check_proxy: bool
    sample_duration_seconds: float = 60.0
    proxy_urls: Sequence[str] = ()
    ca_file: Path | None = None
    metrics_ports: Sequence[int] | None = None  # None: WORKER_METRICS_PORT and the nine after it
    max_oldest_age_seconds: float = 300.0
    cert_days: float = 14.0

    @property
    def asked(self) -> list[str]:
        return [name for name, on in (("workers", self.check_workers), ("queue", self.check_queue),
                                      ("proxy", self.check_proxy)) if on]


class ErrorOut(BaseModel):
    code: str
    message: str


class Report(BaseModel):
    ok: bool
    exit_code: int
    error: ErrorOut | None = None
    checks: list[str]
    sample_duration_seconds: float
    samples: int = 0
    window_seconds: float = 0.0
    redis: str = ""
    workers: WorkersCheck | None = None
    queue: QueueCheck | None = None
    proxy: ProxyCheck | None = None
    checklist: list[ChecklistItem] = []
    diagnosis: list[Finding] = []
    main_server: MainServerProbe | None = None
    autoscaler: list[dict[str, Any]] = []

    @classmethod
    def failed(cls, options: VerifyOptions, error: VerifyError) -> Report:
        return cls(ok=False, exit_code=2, error=ErrorOut(code=error.code, message=str(error)),
                   checks=options.asked, sample_duration_seconds=options.sample_duration_seconds)


def metrics_ports(settings: Settings, given: Sequence[int] | None) -> list[int]:
    if given is not None:
        return list(given)
    base = settings.worker_metrics_port
    return [] if base == 0 else [p for p in range(base, base + METRICS_PORT_SPAN) if p <= 65535]


def default_proxy_url(settings: Settings) -> str:
    """`ferry up`'s or `ferry proxy`'s address: https when the proxy has a certificate
    (PROXY_CERTFILE, or ferry up's development one in FERRY_HOME), else http."""
    tls = settings.proxy_certfile is not None or _dev_ca(settings).is_file()
    return f"{'https' if tls else 'http'}://127.0.0.1:{settings.proxy_port}"


def _dev_ca(settings: Settings) -> Path:
    return settings.home / "tls" / "ca.pem"  # where ferry.processes.devcerts keeps it


def proxy_ssl_context(settings: Settings, ca_file: Path | None) -> ssl.SSLContext:
    """Trust --ca-file, else ferry up's CA in FERRY_HOME, else the system store (SSL_CERT_FILE)."""
    ca = ca_file or (_dev_ca(settings) if _dev_ca(settings).is_file() else None)
    if ca is not None and not ca.is_file():
        raise VerifyError("usage", f"--ca-file {ca}: no such file")
    try:
        return ssl.create_default_context(cafile=str(ca) if ca else None)
    except (ssl.SSLError, OSError) as error:
        raise VerifyError("usage", f"cannot load the CA file {ca}: {error}") from None


def _proxy_headers(settings: Settings) -> dict[str, str]:
    """An API key for health and /metrics, in case FERRY_HEALTH_METRICS_NEED_KEY is on."""
    keys = [k.strip() for k in settings.api_keys.get_secret_value().split(",") if k.strip()]
    kept = settings.home / "api-key"  # ferry up's key
    key = keys[0] if keys else (kept.read_text().strip() if kept.is_file() else "")
    return {"Authorization": f"Bearer {key}"} if key else {}


def _main_server_context(settings: Settings) -> ssl.SSLContext:
    context = ssl.create_default_context(
        cafile=str(settings.main_server_ca_file) if settings.main_server_ca_file else None
    )
    if settings.main_server_cert_file and settings.main_server_key_file:
        context.load_cert_chain(settings.main_server_cert_file, settings.main_server_key_file)
    return context


async def _probe_main_server(settings: Settings, url: str) -> MainServerProbe:
    try:
        context = _main_server_context(settings) if url.startswith("https://") else None
    except (ssl.SSLError, OSError) as error:  # the workers cannot load them either
        return MainServerProbe(url=redacted_url(url), reachable=False, status=None, seconds=None,
                               error=f"cannot load MAIN_SERVER_CA_FILE / MAIN_SERVER_CERT_FILE: {error}",
                               certificate=None)
    return await probe_main_server(url, context)


async def _redis_state(queue: Partitions) -> str:
    try:
        await probe_writes(queue.redis, queue.keys.health)
    except WritesRefused as error:
        return f"refusing writes: {error}"
    except RedisFailure as error:
        return f"unreachable: {error}"
    return ""


async def _last_errors(queue: Partitions) -> list[str]:
    """The last errors of the newest retrying messages and dead letters."""
    try:
        ids = await queue.redis.zrevrange(queue.keys.retry, 0, LAST_ERRORS - 1)
        errors = [await queue.redis.hget(queue.keys.message(i.decode()), "last_error") for i in ids]  # type: ignore[misc]
        texts = [e.decode(errors="replace") for e in errors if e]
        texts += [d.last_error for d in await queue.dead_letters(LAST_ERRORS) if d.last_error]
    except RedisFailure:
        return []
    return list(dict.fromkeys(" ".join(t.split())[:200] for t in texts))[:LAST_ERRORS]


def _workers_without_redis(series: Sequence[WorkerSeries]) -> list[str]:
    return [s.id for s in series if s.scraped and s.scraped[-1].redis_up is False]


def checklist(report: Report) -> list[ChecklistItem]:
    """The guide's five lines in its order; a check not asked for is a skipped line."""
    items = {item.item: item for check in (report.workers, report.queue, report.proxy) if check for item in check.checklist}
    flags = {"workers": "--check-workers", "queue": "--check-queue", "proxy": "--check-proxy"}
    owner = dict(zip(CHECKLIST, ("workers", "workers", "queue", "workers", "proxy"), strict=True))
    return [items.get(line) or skipped(line, f"not checked ({flags[owner[line]]})") for line in CHECKLIST]


async def verify(settings: Settings, options: VerifyOptions, progress: Callable[[float], None]) -> Report:
    """Sample for the window and judge; VerifyError when it cannot (no Redis, a bad CA file)."""
    if options.sample_duration_seconds <= 0:
        raise VerifyError("usage", "--sample-duration must be more than 0 seconds")
    proxy_urls = [u.rstrip("/") for u in options.proxy_urls] or [default_proxy_url(settings)]
    context = proxy_ssl_context(settings, options.ca_file) if options.check_proxy else None
    queue, shown = await _connect(settings, required=options.check_workers or options.check_queue)
    plan = Plan(
        duration_seconds=options.sample_duration_seconds,
        queue=queue,
        metrics_ports=metrics_ports(settings, options.metrics_ports) if options.check_workers else [],
        proxy_urls=proxy_urls if options.check_proxy else [],
        proxy_ssl=context,
        proxy_headers=_proxy_headers(settings),
    )
    try:
        samples, first_probe = await asyncio.gather(sample_window(plan, progress), _main_server(settings))
        evidence = await _evidence(settings, queue, shown, options, first_probe)
    except RedisFailure as error:
        raise VerifyError("redis_unavailable", f"Redis at {shown} failed during the window: {error}") from None
    finally:
        if queue is not None:
            await queue.redis.aclose()
    return judge(samples, plan, options, settings, evidence, shown)


async def _connect(settings: Settings, required: bool) -> tuple[Partitions | None, str]:
    try:
        url = running_redis_url(settings)
    except NoRedis as error:
        if required:
            raise VerifyError("no_redis", str(error)) from None
        return None, ""
    queue = Partitions(connect(url, retries=1))  # finds the partitions in their record
    try:
        await queue.ping()
    except RedisFailure as error:
        await queue.redis.aclose()
        if required:
            raise VerifyError("redis_unavailable", f"Redis at {redacted_url(url)} does not answer: {error}") from None
        return None, redacted_url(url)
    return queue, redacted_url(url)


async def _main_server(settings: Settings) -> MainServerProbe | None:
    return await _probe_main_server(settings, settings.main_server_url) if settings.main_server_url else None


async def _evidence(
    settings: Settings, queue: Partitions | None, shown: str, options: VerifyOptions, first: MainServerProbe | None
) -> Evidence:
    """What the diagnosis reads after the window. The main server is probed at its start and
    its end: an outage that began or ended within the window shows in one of the two."""
    last = await _main_server(settings)
    main = first if first is not None and not first.reachable and last is not None and last.reachable else last
    return Evidence(
        main_server=main,
        redis=await _redis_state(queue) if queue is not None else "",
        last_errors=await _last_errors(queue) if queue is not None else [],
        cert_days=options.cert_days,
        queue_name=queue.keys.queue if queue is not None else "message_queue",
        redis_shown=shown,
        partition_homes=queue.homes() if queue is not None else (),
    )


def judge(
    samples: Sequence[Sample], plan: Plan, options: VerifyOptions, settings: Settings, evidence: Evidence, shown: str
) -> Report:
    readings = queue_readings(samples)
    queue = (
        judge_queue(readings, options.max_oldest_age_seconds, evidence.partition_homes) if len(readings) >= 2 else None
    )
    series = worker_series(samples)
    workers = None
    if options.check_workers:
        workers = judge_workers(
            series, samples[-1].at - samples[0].at, settings.lease_seconds,
            queue.arrival_per_second if queue else None, os.cpu_count() or 1,
        )
    proxy = judge_proxies(proxy_series(samples, plan.proxy_urls)) if options.check_proxy else None
    evidence = replace(evidence, workers_without_redis=_workers_without_redis(series))
    asked_queue = queue if options.check_queue else None
    passed = all(check.passed for check in (workers, asked_queue, proxy) if check is not None)
    report = Report(
        ok=passed,
        exit_code=0 if passed else 1,
        checks=options.asked,
        sample_duration_seconds=options.sample_duration_seconds,
        samples=len(samples),
        window_seconds=round(samples[-1].at - samples[0].at, 3),
        redis=shown,
        workers=workers,
        queue=asked_queue,
        proxy=proxy,
        diagnosis=diagnose(workers, queue, proxy, evidence),
        main_server=evidence.main_server,
        autoscaler=samples[-1].snapshot.autoscaler if samples[-1].snapshot else [],
    )
    report.checklist = checklist(report)
    return report
