"""Canary: many observations at once render exactly as observing each, in both of
prometheus_client's modes (in process, and the multiprocess files the proxy uses)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from ferry.adapters.prometheus import observe_many

BOUNDS = (0.01, 0.1, 1.0)
VALUES = [0.005, 0.05, 0.05, 0.5, 5.0, 0.1]


def counts_per_bucket(values: list[float]) -> list[int]:
    """Observations per bucket (not cumulative), +Inf last: what the proxy tallies."""
    counts = [0] * (len(BOUNDS) + 1)
    for value in values:
        counts[next((i for i, bound in enumerate(BOUNDS) if value <= bound), len(BOUNDS))] += 1
    return counts


def render(many: bool) -> bytes:
    registry = CollectorRegistry()
    histogram = Histogram("canary_seconds", "Canary.", ["route"], buckets=BOUNDS, registry=registry)
    child = histogram.labels("/r")
    if many:
        observe_many(child, counts_per_bucket(VALUES), sum(VALUES))
    else:
        for value in VALUES:
            child.observe(value)
    # *_created holds the time the child was made: the one line that may differ.
    return b"\n".join(line for line in generate_latest(registry).splitlines() if b"_created" not in line)


def test_observe_many_renders_as_observing_each() -> None:
    assert render(many=True) == render(many=False)


MULTIPROCESS = f"""
import os, sys
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
sys.path.insert(0, {str(Path(__file__).parent)!r})
import test_prometheus as canary
canary.render(many=sys.argv[2] == "many")
registry = CollectorRegistry()
MultiProcessCollector(registry)
sys.stdout.buffer.write(generate_latest(registry))
"""


def test_observe_many_renders_as_observing_each_across_processes(tmp_path: Path) -> None:
    """In multiprocess mode the buckets are values in mmap files: the same must hold there."""
    rendered = {}
    for mode in ("many", "each"):
        directory = tmp_path / mode
        directory.mkdir()
        result = subprocess.run(
            [sys.executable, "-c", MULTIPROCESS, str(directory), mode], capture_output=True, check=True
        )
        rendered[mode] = result.stdout
    assert b'canary_seconds_bucket{le="0.1",route="/r"} 4.0' in rendered["each"]
    assert rendered["many"] == rendered["each"]
