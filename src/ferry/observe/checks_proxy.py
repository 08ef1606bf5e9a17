"""The proxy check: each proxy answers its health route, and clients got answers fast and right.

Pure functions over what the window's probes saw (no I/O). The p95 is of
`proxy_requests_duration_seconds` between the window's first and last scrape,
leaving out the routes that verify and load balancers poll themselves. Behind a
load balancer each scrape may reach another instance: pages are differenced
within each run (`ferry_proxy_run_info`) and the runs summed, so the figures are
those of the instances that answered two scrapes or more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel

from ferry.metrics import RUN_INFO
from ferry.observe.promtext import Buckets, Page
from ferry.observe.verdict import PROXY_FAST, ChecklistItem, Problem, skipped

# The guide's expected result: proxy response times under 1 second.
P95_LIMIT_SECONDS = 1.0
# Fewer requests than this in the window say nothing about a p95.
MIN_REQUESTS = 20
# More than this share of answers 5xx: the guide's "Proxy Overload" symptoms.
MAX_ERROR_RATE = 0.01
POLLED_ROUTES = ("/api/v1/health", "/metrics")
DURATION = "proxy_requests_duration_seconds"
REQUESTS = "proxy_requests_total"


@dataclass(frozen=True)
class HealthProbe:
    """One GET of /api/v1/health: its status and error code, or why there was no answer."""

    status: int | None
    error_code: str = ""
    detail: str = ""


@dataclass
class ProxySeries:
    url: str
    health: list[HealthProbe] = field(default_factory=list)
    pages: list[Page | None] = field(default_factory=list)  # /metrics at each sample


class ProxyResult(BaseModel):
    url: str
    answered: bool
    health: str
    requests: int
    p95_seconds: float | None
    error_rate: float | None
    status: str


class ProxyCheck(BaseModel):
    passed: bool
    problems: list[Problem]
    proxies: list[ProxyResult]
    p95_limit_seconds: float = P95_LIMIT_SECONDS
    checklist: list[ChecklistItem]


def _requests(page: Page) -> tuple[float, float]:
    """Requests answered and those answered 5xx, the polled routes left out."""
    total = errors = 0.0
    for key, value in page.samples.get(REQUESTS, {}).items():
        labels = dict(key)
        if labels.get("route") in POLLED_ROUTES:
            continue
        total += value
        if labels.get("status", "").startswith("5"):
            errors += value
    return total, errors


def _health_problem(series: ProxySeries) -> Problem | None:
    silent = [probe for probe in series.health if probe.status is None]
    if silent or not series.health:
        why = silent[-1].detail if silent else "not probed"
        return Problem(code="proxy_down", subject=series.url, message=f"proxy {series.url} does not answer: {why}")
    last = series.health[-1]
    if last.status != 200:
        return Problem(
            code="proxy_unhealthy",
            subject=series.url,
            message=f"proxy {series.url} health answers {last.status} {last.error_code}: {last.detail}".rstrip(": "),
        )
    return None


def _timings(page: Page) -> Buckets:
    return page.histogram(DURATION, {"route": POLLED_ROUTES})


def by_run(pages: Sequence[Page]) -> list[list[Page]]:
    """The pages of each proxy run, in scrape order (pages of a ferry without the run metric: one run)."""
    runs: dict[str, list[Page]] = {}
    for page in pages:
        run = min(page.label_values(RUN_INFO, "run"), default="")
        runs.setdefault(run, []).append(page)
    return list(runs.values())


def judge_proxy(series: ProxySeries) -> tuple[ProxyResult, list[Problem]]:
    problems = [p for p in [_health_problem(series)] if p is not None]
    requests = errors = 0.0
    buckets = Buckets()
    for pages in by_run([page for page in series.pages if page is not None]):
        if len(pages) < 2:
            continue
        (total_0, errors_0), (total_1, errors_1) = _requests(pages[0]), _requests(pages[-1])
        requests += max(0.0, total_1 - total_0)
        errors += max(0.0, errors_1 - errors_0)
        buckets = buckets.plus(_timings(pages[-1]).since(_timings(pages[0])))
    p95 = error_rate = None
    if requests >= MIN_REQUESTS:
        p95 = buckets.quantile(0.95)
        error_rate = errors / requests
    if p95 is not None and p95 >= P95_LIMIT_SECONDS:
        problems.append(Problem(code="proxy_slow", subject=series.url,
                                message=f"proxy {series.url} p95 {p95:.2f} s (the guide: under {P95_LIMIT_SECONDS:g} s)"))
    if error_rate is not None and error_rate > MAX_ERROR_RATE:
        problems.append(Problem(code="proxy_errors", subject=series.url,
                                message=f"proxy {series.url} answered {error_rate:.1%} of requests 5xx"))
    last = series.health[-1] if series.health else HealthProbe(None, detail="not probed")
    result = ProxyResult(
        url=series.url,
        answered=last.status is not None,
        health="ok" if last.status == 200 else (f"{last.status} {last.error_code}".strip() if last.status else "no answer"),
        requests=int(requests),
        p95_seconds=None if p95 is None else round(p95, 4),
        error_rate=None if error_rate is None else round(error_rate, 4),
        status=problems[0].code if problems else "ok",
    )
    return result, problems


def judge_proxies(proxies: Sequence[ProxySeries]) -> ProxyCheck:
    results, problems = [], []
    for series in proxies:
        result, found = judge_proxy(series)
        results.append(result)
        problems += found
    return ProxyCheck(passed=not problems, problems=problems, proxies=results, checklist=[_fast(results, problems)])


def _fast(results: Sequence[ProxyResult], problems: Sequence[Problem]) -> ChecklistItem:
    slow = [p for p in problems if p.code == "proxy_slow"]
    if slow:
        return ChecklistItem(item=PROXY_FAST, mark="fail", detail="; ".join(p.message for p in slow))
    timed = [r for r in results if r.p95_seconds is not None]
    if not timed:
        return skipped(PROXY_FAST, f"fewer than {MIN_REQUESTS} client requests in the window to time")
    worst = max(timed, key=lambda r: r.p95_seconds or 0.0)
    return ChecklistItem(item=PROXY_FAST, mark="pass", detail=f"p95 at most {worst.p95_seconds:.3f} s ({worst.url})")
