"""The series ferry exposes, read from the collectors of `ferry.metrics` themselves.

Every PromQL expression of the generated rules and dashboard names its series through
`series(...)`, which refuses a name no collector exposes: a metric renamed in
ferry.metrics makes generating the files fail, never a silent empty panel.
"""

from __future__ import annotations

from functools import cache

from prometheus_client import CollectorRegistry

from ferry.metrics import ProxyMetrics, QueueCollector, SupervisorMetrics, WorkerMetrics
from ferry.queue import Snapshot

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",), "summary": ("_sum", "_count", "")}


@cache
def exposed() -> frozenset[str]:
    """Every series name a worker, a proxy or a supervisor serves on /metrics."""
    queue = CollectorRegistry()
    queue.register(QueueCollector(Snapshot(0, 0.0, 0, 0, 0)))
    registries = [WorkerMetrics("any").registry, ProxyMetrics().registry, SupervisorMetrics().registry, queue]
    names: set[str] = set()
    for registry in registries:
        for family in registry.collect():
            names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return frozenset(names)


def series(name: str) -> str:
    """`name`, once it is known to be one of ferry's series."""
    if name not in exposed():
        raise KeyError(f"{name} is no series of ferry.metrics (renamed?)")
    return name
