"""`ferry verify`'s report on a terminal: a table per check, the guide's checklist, the why."""

from __future__ import annotations

import time
from collections.abc import Iterator

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from ferry.observe.checks_proxy import ProxyCheck
from ferry.observe.checks_queue import QueueCheck
from ferry.observe.checks_workers import WorkersCheck
from ferry.observe.verdict import Mark
from ferry.observe.verify import Report

MARKS: dict[Mark, tuple[str, str]] = {
    "pass": ("✅", "green"),
    "warn": ("⚠️ ", "yellow"),
    "fail": ("❌", "red"),
    "skip": ("➖", "dim"),
}


def _number(value: float | None, digits: int = 1, unit: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def workers_table(check: WorkersCheck) -> Table:
    table = Table(title="Workers", caption=check.recommendation.reason)
    for name in ("worker", "host", "pid", "processed", "failed", "retries", "active", "share", "/s", "heartbeat",
                 "metrics", "status"):
        table.add_column(name, justify="right" if name in {"pid", "processed", "failed", "retries", "active",
                                                             "share", "/s", "heartbeat"} else "left")
    for w in check.workers:
        table.add_row(
            Text(w.id), Text(w.host), str(w.pid or "-"), str(w.processed), str(w.failed), str(w.retries),
            f"{w.active:g}/{w.concurrency}" if w.concurrency else f"{w.active:g}",
            "-" if w.share is None else f"{w.share:.0%}", _number(w.per_second),
            _number(w.heartbeat_age_seconds, 1, " s"), Text(w.metrics), _status(w.status),
        )
    return table


def _status(status: str) -> Text:
    return Text(status, style="green" if status == "ok" else "red")


def queue_table(check: QueueCheck) -> Table:
    table = Table(title="Queue", show_header=False)
    table.add_column("figure")
    table.add_column("value")
    size_label = "size (every partition)" if check.partitions else "size (LLEN message_queue)"
    rows = [
        (size_label, f"{check.size} ({check.band})"),
        ("samples", " ".join(str(s) for s in check.sizes)),
        ("growth", f"{check.growth_per_second:+.1f} /s"),
        ("arrivals / deliveries", f"{_number(check.arrival_per_second)} /s in, "
                                  f"{_number(check.processing_per_second)} /s out"),
        ("oldest message", f"{check.oldest_age_seconds:.1f} s (limit {check.max_oldest_age_seconds:g} s)"),
        ("in flight", str(check.in_flight)),
        ("retry schedule", f"{check.retry_scheduled} ({check.retry_growth:+d} in the window)"),
        ("dead letters", f"{check.dead_letters} ({check.new_dead_letters:+d} in the window)"),
    ]
    rows += [
        (f"partition {place.partition}", f"{place.size} queued, {place.name}" + (f" on {place.master}" if place.master else ""))
        for place in check.partitions
    ]
    for name, value in rows:
        table.add_row(name, Text(value))
    return table


def proxy_table(check: ProxyCheck) -> Table:
    table = Table(title=f"Proxies (p95 limit {check.p95_limit_seconds:g} s)")
    for name in ("proxy", "health", "requests", "p95", "5xx", "status"):
        table.add_column(name)
    for p in check.proxies:
        table.add_row(
            Text(p.url), Text(p.health), str(p.requests), _number(p.p95_seconds, 3, " s"),
            "-" if p.error_rate is None else f"{p.error_rate:.1%}", _status(p.status),
        )
    return table


def _problems(report: Report) -> Iterator[RenderableType]:
    for check in (report.workers, report.queue, report.proxy):
        for problem in check.problems if check else []:
            yield Text(f"  ✗ {problem.message}", style="red")


def render(report: Report) -> RenderableType:
    parts: list[RenderableType] = []
    if report.workers:
        parts.append(workers_table(report.workers))
        fairness = report.workers.fairness
        rec = report.workers.recommendation
        parts.append(Text(f"fairness: {fairness.reason}; recommended workers: {rec.workers} (now {rec.current})"))
        parts.append(Text(f"delivery p95: {_number(report.workers.delivery_p95_seconds, 3, ' s')}"))
    if report.queue:
        parts.append(queue_table(report.queue))
    if report.proxy:
        parts.append(proxy_table(report.proxy))
    if report.autoscaler:
        parts.append(_autoscaler(report))
    parts.append(Text("\nExpected results (the guide's checklist):", style="bold"))
    for item in report.checklist:
        mark, style = MARKS[item.mark]
        line = Text(f"  {mark} {item.item}", style=style)
        line.append(f"  {item.detail}", style="dim")
        parts.append(line)
    problems = list(_problems(report))
    if problems:
        parts.append(Text("\nFailed:", style="bold red"))
        parts += problems
    if report.diagnosis:
        parts.append(Text("\nWhy (the guide's troubleshooting):", style="bold"))
        parts += [Text(f"  • {finding.message}") for finding in report.diagnosis]
    verdict = "all checks passed" if report.ok else "a check failed"
    parts.append(Text(f"\n{verdict} ({', '.join(report.checks)}; {report.samples} samples over "
                      f"{report.window_seconds:.1f} s)", style="green bold" if report.ok else "red bold"))
    return Group(*parts)


def _autoscaler(report: Report) -> Table:
    table = Table(title="Autoscaler's last decisions")
    for name in ("at", "host", "direction", "from", "to", "rule", "reason"):
        table.add_column(name)
    for decision in report.autoscaler[:5]:
        at = decision.get("at")
        when = time.strftime("%H:%M:%S", time.localtime(at)) if isinstance(at, int | float) else str(at or "")
        table.add_row(when, *(Text(str(decision.get(name, ""))) for name in ("host", "direction", "from", "to",
                                                                            "rule", "reason")))
    return table


def print_report(report: Report, console: Console | None = None) -> None:
    (console or Console()).print(render(report))
