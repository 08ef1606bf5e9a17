"""The guide's "Production Recommendations" (Small / Medium / Large) as a calculation.

The tier comes from the messages a day, as in the guide; the counts within it come
from the peak rate (stated, or the day's average times `PEAK_FACTOR`) and what one
worker delivers a second: measured by `ferry verify` when given, else the worker's
concurrency over an assumed main-server latency. A plan never goes below the guide's
figures for its tier; where the load needs more, it says so.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Traffic is not flat: without a stated peak, the busiest second is taken as this many
# times the day's average.
PEAK_FACTOR = 10.0
# Sized for the peak plus this much spare (bursts, a worker restarting).
HEADROOM = 1.25
# What one proxy process is planned to store a second over HTTPS: about half what it
# did on a 2-core machine (docs/architecture.md's figures), for the rest of the host.
PROXY_PROCESS_PER_SECOND = 1500.0
ASSUMED_MAIN_SERVER_LATENCY_SECONDS = 0.1


@dataclass(frozen=True)
class Tier:
    """One row of the guide's table."""

    name: str
    up_to_messages_per_day: float  # exclusive; the last tier has no bound
    workers: tuple[int, int]
    concurrency: tuple[int, int]
    proxy_instances: int
    proxy_processes: int
    load_balancer: str
    monitoring: str
    autoscale: bool


TIERS = (
    Tier("small", 10_000, (2, 2), (4, 4), 1, 4, "not needed", "ferry verify --all now and then", False),
    Tier("medium", 100_000, (3, 5), (4, 8), 2, 4, "simple round-robin (ferry deploy nginx does least_conn)",
         "ferry verify --all; Prometheus when you have one", False),
    Tier("large", math.inf, (5, 10), (8, 16), 3, 8, "nginx/HAProxy with least connections: ferry deploy nginx",
         "Prometheus + Grafana: ferry deploy prometheus, ferry deploy grafana", True),
)


@dataclass(frozen=True)
class Plan:
    tier: Tier
    messages_per_day: float
    peak_per_second: float
    per_worker_per_second: float
    rate_measured: bool
    workers: int
    concurrency: int
    proxy_instances: int
    proxy_processes: int
    notes: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "tier": self.tier.name,
            "messages_per_day": self.messages_per_day,
            "peak_per_second": round(self.peak_per_second, 3),
            "per_worker_per_second": round(self.per_worker_per_second, 3),
            "per_worker_rate_measured": self.rate_measured,
            "workers": self.workers,
            "concurrency": self.concurrency,
            "proxy_instances": self.proxy_instances,
            "proxy_processes": self.proxy_processes,
            "load_balancer": self.tier.load_balancer if self.proxy_instances > 1 else "not needed",
            "monitoring": self.tier.monitoring,
            "autoscale": self.tier.autoscale,
            "notes": list(self.notes),
        }

    def commands(self) -> list[str]:
        """What to run for this plan."""
        scale = (f" --autoscale --min-workers {self.workers} --max-workers {max(self.workers, self.tier.workers[1]) * 2}"
                 if self.tier.autoscale else "")
        lines = [f"ferry workers start --num-workers {self.workers} --concurrency {self.concurrency}{scale}"]
        if self.proxy_instances == 1:
            lines.append(f"ferry proxy --workers {self.proxy_processes}")
        else:
            lines.append(f"ferry proxy --workers {self.proxy_processes} --port 800N   # N = 1..{self.proxy_instances}, "
                         "FERRY_TRUSTED_PROXIES=<nginx's address>")
            lines.append(f"ferry deploy nginx --instances {self.proxy_instances} --base-port 8001 --upstream-ca CA ...")
        return lines


def tier_for(messages_per_day: float) -> Tier:
    return next(tier for tier in TIERS if messages_per_day < tier.up_to_messages_per_day)


def make_plan(
    messages_per_day: float,
    peak_per_second: float | None = None,
    per_worker_per_second: float | None = None,
) -> Plan:
    """Workers, concurrency and proxies for the load, never fewer than the guide's tier."""
    tier = tier_for(messages_per_day)
    peak = peak_per_second if peak_per_second is not None else messages_per_day / 86400 * PEAK_FACTOR
    concurrency = tier.concurrency[0]
    measured = per_worker_per_second is not None
    notes = []
    if per_worker_per_second is None:
        per_worker_per_second = concurrency / ASSUMED_MAIN_SERVER_LATENCY_SECONDS
        notes.append(
            f"per-worker rate assumed: {concurrency} concurrent deliveries / "
            f"{ASSUMED_MAIN_SERVER_LATENCY_SECONDS * 1000:.0f} ms each; measure it with ferry verify --check-workers "
            "and pass --per-worker-rate or --verify-json"
        )
    needed = math.ceil(peak * HEADROOM / per_worker_per_second) if peak > 0 else 0
    workers = max(tier.workers[0], needed)
    if needed > tier.workers[1]:
        if not measured and concurrency < tier.concurrency[1]:
            concurrency = tier.concurrency[1]  # the tier's top concurrency first, then more workers
            per_worker_per_second = concurrency / ASSUMED_MAIN_SERVER_LATENCY_SECONDS
            needed = math.ceil(peak * HEADROOM / per_worker_per_second)
            workers = max(tier.workers[0], needed)
        if needed > tier.workers[1]:
            notes.append(f"the peak needs {needed} workers, more than the guide's {tier.workers[1]} for a {tier.name} "
                         "deployment: spread them over hosts")
    processes_needed = math.ceil(peak * HEADROOM / PROXY_PROCESS_PER_SECOND) if peak > 0 else 1
    instances = tier.proxy_instances
    processes = max(tier.proxy_processes, math.ceil(processes_needed / instances))
    return Plan(tier, messages_per_day, peak, per_worker_per_second, measured, workers, concurrency,
                instances, processes, tuple(notes))


def measured_rate(verify_json: Path) -> float | None:
    """The per-worker rate a `ferry verify --json` document holds, wherever it nests it."""
    return _find(json.loads(verify_json.read_text()), "per_worker_capacity_per_second")


def _find(document: Any, key: str) -> float | None:
    if isinstance(document, dict):
        value = document.get(key)
        if isinstance(value, int | float) and value > 0:
            return float(value)
        children: Any = document.values()
    elif isinstance(document, list):
        children = document
    else:
        return None
    for child in children:
        if (found := _find(child, key)) is not None:
            return found
    return None


def describe(plan: Plan) -> str:
    """The plan as a person reads it."""
    data = plan.as_json()
    rate = f"{plan.per_worker_per_second:.1f}/s per worker ({'measured' if plan.rate_measured else 'assumed'})"
    lines = [
        f"{plan.tier.name} deployment: {plan.messages_per_day:,.0f} messages a day, peak {plan.peak_per_second:.1f}/s, {rate}",
        f"  workers:       {plan.workers} x {plan.concurrency} concurrent deliveries",
        f"  proxy:         {plan.proxy_instances} instance(s) x {plan.proxy_processes} processes",
        f"  load balancer: {data['load_balancer']}",
        f"  monitoring:    {plan.tier.monitoring}",
        f"  autoscaling:   {'on queue size (ferry workers start --autoscale, or KEDA: ferry deploy kubernetes)' if plan.tier.autoscale else 'not needed'}",
        *(f"  note: {note}" for note in plan.notes),
        "run:",
        *(f"  {command}" for command in plan.commands()),
    ]
    return "\n".join(lines) + "\n"
