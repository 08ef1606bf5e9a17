"""The workers check: who works, how much, how evenly, and how many workers the load needs.

Pure functions over a window of readings (no I/O): `ferry.observe.sampling`
gathers them from the worker registry and the metrics ports. docs/verify.md
gives each threshold's reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel

from ferry.observe.promtext import Buckets
from ferry.observe.verdict import EVEN_WORK, MULTIPLE_WORKERS, NO_OVERLOAD, ChecklistItem, Problem, skipped

# Jain's fairness index of the work per delivery slot: 1 is perfectly even, 1/n is one
# worker doing everything. 0.8 lets two workers split 75/25 at worst, far outside the
# spread competing consumers show by chance once each has ~10 messages.
FAIRNESS_THRESHOLD = 0.8
# Fairness and "no progress" are judged only when the window held at least this many
# messages per worker (and MIN_MESSAGES in all): below it chance alone looks uneven.
MIN_MESSAGES_PER_WORKER = 10
MIN_MESSAGES = 20
# A worker is overloaded when all its slots were busy at every sample while another
# worker's slots were at most half busy on average.
IDLE_SHARE = 0.5
# More than this share of the window's delivery attempts failing is the main server's
# problem, not one worker's (the diagnosis probes it).
MAX_FAILED_SHARE = 0.5
# Headroom on the arrival rate when sizing the pool: 25% spare for bursts.
HEADROOM = 1.25
# The guide's rule of thumb: delivery waits on the main server (I/O-bound), 2-4x cores.
IO_BOUND_PER_CORE = 4
DELIVERY_P95_QUANTILE = 0.95


@dataclass(frozen=True)
class Counts:
    processed: float = 0.0
    failed: float = 0.0
    retries: float = 0.0
    active: float = 0.0

    def minus(self, earlier: Counts) -> Counts:
        return Counts(
            self.processed - earlier.processed,
            self.failed - earlier.failed,
            self.retries - earlier.retries,
            self.active,
        )


@dataclass(frozen=True)
class Reading:
    """One scrape of a worker's /metrics."""

    counts: Counts
    delivery: Buckets = Buckets()
    redis_up: bool | None = None


@dataclass
class WorkerSeries:
    """One worker over the window: its registry record and each sample's scrape.

    `readings[i]` is None when the metrics did not answer at sample i (or the
    worker serves none); `registry` holds the registry's figures at each sample it
    was registered at; `registered` says whether it still was at the last sample. A
    series with an empty `registry` was found on a metrics port only.
    """

    id: str
    registered: bool = True
    host: str = ""
    pid: int | None = None
    metrics_url: str = ""
    concurrency: int = 0
    readings: list[Reading | None] = field(default_factory=list)
    registry: list[Counts] = field(default_factory=list)
    heartbeat_ages: list[float] = field(default_factory=list)
    metrics_error: str = ""
    metrics_failure: str = ""  # the last failed scrape's kind: refused, timeout, error

    @property
    def scraped(self) -> list[Reading]:
        return [reading for reading in self.readings if reading is not None]

    def window(self) -> Counts:
        """What it did over the window: from its metrics, else from the registry."""
        scraped = self.scraped
        if len(scraped) >= 2:
            return scraped[-1].counts.minus(scraped[0].counts)
        if len(self.registry) >= 2:
            return self.registry[-1].minus(self.registry[0])
        return Counts(active=scraped[-1].counts.active if scraped else 0.0)

    def actives(self) -> list[float]:
        if self.scraped:
            return [reading.counts.active for reading in self.scraped]
        return [counts.active for counts in self.registry]

    def delivery(self) -> Buckets:
        scraped = self.scraped
        return scraped[-1].delivery.since(scraped[0].delivery) if len(scraped) >= 2 else Buckets()


class WorkerResult(BaseModel):
    id: str
    host: str
    pid: int | None
    metrics_url: str
    registered: bool
    concurrency: int
    processed: int
    failed: int
    retries: int
    active: float
    share: float | None  # of the messages processed in the window
    per_second: float
    heartbeat_age_seconds: float | None
    metrics: str  # "ok", "down: <why>", "none" (serves no metrics)
    status: str  # "ok", or the code of its problem


class Fairness(BaseModel):
    judged: bool
    jain_index: float | None
    threshold: float = FAIRNESS_THRESHOLD
    messages: int
    min_messages: int
    reason: str


class Recommendation(BaseModel):
    workers: int
    current: int
    cores: int
    arrival_per_second: float | None
    per_worker_capacity_per_second: float | None
    reason: str


class WorkersCheck(BaseModel):
    passed: bool
    problems: list[Problem]
    workers: list[WorkerResult]
    fairness: Fairness
    recommendation: Recommendation
    delivery_p95_seconds: float | None
    checklist: list[ChecklistItem]


def jain_index(values: Sequence[float]) -> float:
    """Jain's fairness index (sum x)^2 / (n sum x^2): 1 when all equal, 1/n when one has all.

    Taken on the values over their largest, so that squares of tiny ones do not underflow
    (which took it past 1); rounding is kept within [1/n, 1]."""
    top = max(values, default=0.0)
    if top <= 0:
        return 1.0
    scaled = [value / top for value in values]
    index = sum(scaled) ** 2 / (len(scaled) * sum(value * value for value in scaled))
    return min(1.0, max(1 / len(scaled), index))


def _metrics_state(series: WorkerSeries) -> str:
    if not series.metrics_url:
        return "none"
    if series.readings and series.readings[-1] is not None:
        return "ok"
    return f"down: {series.metrics_error or 'no answer'}"


def _problem(series: WorkerSeries, others_worked: bool, lease_seconds: float) -> Problem | None:
    """The worst thing about one worker, or None."""
    silent = bool(series.metrics_url) and (not series.readings or series.readings[-1] is None)
    hangs = silent and series.metrics_failure == "timeout"
    if not series.registered:
        return _unregistered_problem(series, silent, hangs)
    age = series.heartbeat_ages[-1] if series.heartbeat_ages else None
    if age is not None and age > lease_seconds:
        return Problem(
            code="worker_frozen",
            subject=series.id,
            message=(
                f"{series.id}'s heartbeat is {age:.1f} s old (lease {lease_seconds:g} s): "
                "frozen, stuck or cut off from Redis"
            ),
        )
    if silent:
        return Problem(
            code="worker_frozen" if hangs else "worker_metrics_down",
            subject=series.id,
            message=f"{series.id} is registered but its metrics at {series.metrics_url} do not answer "
            f"({series.metrics_error or 'no answer'})" + (": frozen or stuck" if hangs else ""),
        )
    done = series.window()
    if others_worked and done.processed + done.failed == 0:
        return Problem(
            code="worker_stalled",
            subject=series.id,
            message=f"{series.id} made no progress in the window while the other workers delivered",
        )
    return None


def _unregistered_problem(series: WorkerSeries, silent: bool, hangs: bool) -> Problem | None:
    """A worker not registered at the window's end: left cleanly (none), or frozen, or elsewhere."""
    if series.registry:  # it was registered earlier in the window
        if not hangs:
            return None  # stopped or exited: its port is closed or it still answers
        return Problem(
            code="worker_frozen",
            subject=series.id,
            message=(
                f"{series.id} left the registry during the window (its lease lapsed and it was reaped) "
                f"while its metrics at {series.metrics_url} hang: frozen or stuck"
            ),
        )
    if hangs:
        return Problem(
            code="worker_frozen",
            subject=series.id,
            message=f"{series.metrics_url} accepts connections but does not answer: a frozen worker?",
        )
    if silent:
        return None
    return Problem(
        code="unregistered_worker",
        subject=series.id,
        message=(
            f"{series.id} serves metrics at {series.metrics_url} but is not registered on this queue: "
            "it uses another Redis, database or queue name"
        ),
    )


def _overloaded(workers: Sequence[WorkerSeries]) -> list[Problem]:
    """Workers whose slots were all busy at every sample while another one idled."""
    spare = {
        w.id
        for w in workers
        if w.concurrency and w.actives() and sum(w.actives()) / len(w.actives()) <= IDLE_SHARE * w.concurrency
    }
    problems = []
    for worker in workers:
        actives = worker.actives()
        busy = bool(actives) and worker.concurrency > 0 and min(actives) >= worker.concurrency
        if busy and spare - {worker.id}:
            problems.append(
                Problem(
                    code="worker_overloaded",
                    subject=worker.id,
                    message=(
                        f"{worker.id} had all {worker.concurrency} slots busy for the whole window while "
                        f"{', '.join(sorted(spare - {worker.id}))} idled"
                    ),
                )
            )
    return problems


def fairness(workers: Sequence[WorkerSeries]) -> Fairness:
    """Jain's index of the messages each worker processed per delivery slot."""
    counted = [w for w in workers if w.registered]
    done = [w.window().processed for w in counted]
    messages = int(sum(done))
    needed = max(MIN_MESSAGES, MIN_MESSAGES_PER_WORKER * len(counted))
    if len(counted) < 2:
        return Fairness(judged=False, jain_index=None, messages=messages, min_messages=needed,
                        reason="fewer than two workers: nothing to compare")
    if messages < needed:
        return Fairness(judged=False, jain_index=None, messages=messages, min_messages=needed,
                        reason=f"{messages} messages in the window, {needed} needed to judge")
    index = jain_index([d / max(1, w.concurrency) for d, w in zip(done, counted, strict=True)])
    even = index >= FAIRNESS_THRESHOLD
    return Fairness(
        judged=True, jain_index=round(index, 3), messages=messages, min_messages=needed,
        reason=f"Jain's index {index:.2f} {'>=' if even else '<'} {FAIRNESS_THRESHOLD}",
    )


def deliveries(workers: Sequence[WorkerSeries]) -> Buckets:
    """Delivery attempts in the window, over every worker that answered its metrics."""
    total = Buckets()
    for worker in workers:
        total = total.plus(worker.delivery())
    return total


def recommend(
    workers: Sequence[WorkerSeries], arrival_per_second: float | None, mean_delivery_seconds: float | None, cores: int
) -> Recommendation:
    """Workers the arrival rate needs with 25% headroom, each worth concurrency / mean delivery
    time (Little's law, measured), within the guide's I/O-bound rule (2 to 4x cores)."""
    live = [w for w in workers if w.registered]
    current = len(live)
    ceiling = max(2, IO_BOUND_PER_CORE * cores)
    concurrency = sum(w.concurrency for w in live) / current if current else 0.0
    if arrival_per_second is None or not mean_delivery_seconds or not concurrency:
        return Recommendation(
            workers=max(2, min(current, ceiling)), current=current, cores=cores,
            arrival_per_second=arrival_per_second, per_worker_capacity_per_second=None,
            reason="no deliveries in the window to measure a worker's rate: the guide's start, 2-3 workers",
        )
    capacity = concurrency / mean_delivery_seconds
    needed = math.ceil(arrival_per_second * HEADROOM / capacity) if arrival_per_second > 0 else 0
    wanted = min(max(2, needed), ceiling)
    reason = (
        f"arrivals {arrival_per_second:.1f}/s x {HEADROOM} headroom / {capacity:.1f}/s per worker "
        f"({concurrency:g} slots / {mean_delivery_seconds * 1000:.0f} ms a delivery) = {needed}; "
        f"the guide: at least 2, I/O-bound up to {IO_BOUND_PER_CORE}x {cores} cores = {ceiling}"
    )
    if needed > ceiling:
        reason += ": past one host's worth, add hosts or raise WORKER_CONCURRENCY"
    return Recommendation(
        workers=wanted, current=current, cores=cores, arrival_per_second=round(arrival_per_second, 3),
        per_worker_capacity_per_second=round(capacity, 3), reason=reason,
    )


def _failing(live: Sequence[WorkerSeries]) -> Problem | None:
    """Most delivery attempts of the window failed, across the workers."""
    failed = sum(w.window().failed for w in live)
    attempts = failed + sum(w.window().processed for w in live)
    if not attempts or failed / attempts <= MAX_FAILED_SHARE:
        return None
    return Problem(
        code="deliveries_failing",
        subject="main server",
        message=f"{failed:.0f} of {attempts:.0f} delivery attempts in the window failed",
    )


def _result(series: WorkerSeries, problem: Problem | None, total: float, seconds: float) -> WorkerResult:
    done = series.window()
    actives = series.actives()
    return WorkerResult(
        id=series.id,
        host=series.host,
        pid=series.pid,
        metrics_url=series.metrics_url,
        registered=series.registered,
        concurrency=series.concurrency,
        processed=int(done.processed),
        failed=int(done.failed),
        retries=int(done.retries),
        active=actives[-1] if actives else 0.0,
        share=round(done.processed / total, 3) if total else None,
        per_second=round(done.processed / seconds, 3) if seconds > 0 else 0.0,
        heartbeat_age_seconds=round(series.heartbeat_ages[-1], 3) if series.heartbeat_ages else None,
        metrics=_metrics_state(series),
        status=problem.code if problem else "ok",
    )


def _checklist(workers: Sequence[WorkerSeries], problems: list[Problem], even: Fairness) -> list[ChecklistItem]:
    live = [w for w in workers if w.registered]
    failing = {p.subject for p in problems if p.code != "unregistered_worker"}
    healthy = [w.id for w in live if w.id not in failing]
    multiple = ChecklistItem(
        item=MULTIPLE_WORKERS,
        mark="pass" if len(healthy) >= 2 else "fail",
        detail=f"{len(healthy)} of {len(live)} registered workers healthy",
    )
    if even.judged:
        evenly = ChecklistItem(item=EVEN_WORK, mark="pass" if (even.jain_index or 0) >= even.threshold else "fail",
                               detail=even.reason)
    else:
        evenly = skipped(EVEN_WORK, even.reason)
    overloaded = [p.subject for p in problems if p.code == "worker_overloaded"]
    no_overload = ChecklistItem(
        item=NO_OVERLOAD,
        mark="fail" if overloaded else "pass",
        detail=f"overloaded: {', '.join(overloaded)}" if overloaded else "no worker saturated while another idled",
    )
    return [multiple, evenly, no_overload]


def judge_workers(
    workers: Sequence[WorkerSeries],
    seconds: float,
    lease_seconds: float,
    arrival_per_second: float | None,
    cores: int,
) -> WorkersCheck:
    """The verdict on the workers over a window of `seconds`."""
    live = [w for w in workers if w.registered]
    total = sum(w.window().processed for w in live)
    enough = total >= max(MIN_MESSAGES, MIN_MESSAGES_PER_WORKER * len(live))
    by_worker: dict[str, Problem | None] = {}
    for worker in workers:
        others = sum(w.window().processed for w in live if w is not worker)
        by_worker[worker.id] = _problem(worker, enough and others > 0, lease_seconds)
    problems = [p for p in by_worker.values() if p is not None]
    named = {p.subject for p in problems}
    problems += [p for p in _overloaded(live) if p.subject not in named]
    healthy = [w for w in live if w.id not in {p.subject for p in problems}]
    if len(healthy) < 2:
        problems.append(
            Problem(
                code="too_few_workers",
                subject="workers",
                message=f"{len(healthy)} healthy worker(s) of {len(live)} registered: the guide runs several",
            )
        )
    failing = _failing(live)
    if failing is not None:
        problems.append(failing)
    even = fairness(workers)
    if even.judged and (even.jain_index or 0) < FAIRNESS_THRESHOLD:
        problems.append(Problem(code="uneven_load", subject="workers", message=f"uneven load: {even.reason}"))
    attempts = deliveries(workers)
    first: dict[str, Problem] = {}
    for problem in problems:
        first.setdefault(problem.subject, problem)
    return WorkersCheck(
        passed=not problems,
        problems=problems,
        workers=[_result(w, first.get(w.id), total, seconds) for w in workers],
        fairness=even,
        recommendation=recommend(workers, arrival_per_second, attempts.mean, cores),
        delivery_p95_seconds=_rounded(attempts.quantile(DELIVERY_P95_QUANTILE)),
        checklist=_checklist(workers, problems, even),
    )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
