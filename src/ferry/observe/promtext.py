"""What `ferry verify` reads from a Prometheus text page: counters, gauges, histograms.

Two scrapes of the same page, differenced, give what happened in between; a
histogram's quantile is estimated as Prometheus's `histogram_quantile` does
(linear within the bucket that holds it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Page:
    """One scrape: every sample by its name (with `_total`, `_bucket`...) and labels."""

    samples: Mapping[str, Mapping[Labels, float]] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float:
        """The sum of `name`'s samples whose labels include `labels` (0 when there are none)."""
        wanted = set(labels.items())
        return sum(v for key, v in self.samples.get(name, {}).items() if wanted <= set(key))

    def label_values(self, name: str, label: str) -> set[str]:
        return {dict(key)[label] for key in self.samples.get(name, {}) if label in dict(key)}

    def histogram(self, name: str, exclude: Mapping[str, Iterable[str]] | None = None) -> Buckets:
        """`name`'s buckets summed over its series, leaving out series whose labels
        take one of the `exclude` values (e.g. the routes verify itself calls)."""
        left_out = {label: set(values) for label, values in (exclude or {}).items()}

        def kept(key: Labels) -> bool:
            labels = dict(key)
            return not any(labels.get(label) in values for label, values in left_out.items())

        counts: dict[float, float] = {}
        for key, value in self.samples.get(name + "_bucket", {}).items():
            if kept(key):
                bound = float(dict(key)["le"])
                counts[bound] = counts.get(bound, 0.0) + value
        observed = sum(value for key, value in self.samples.get(name + "_sum", {}).items() if kept(key))
        return Buckets(tuple(sorted(counts.items())), observed)


def parse(text: str) -> Page:
    """A page of Prometheus text; ValueError when it is not one."""
    samples: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            by_labels = samples.setdefault(sample.name, {})
            by_labels[key] = by_labels.get(key, 0.0) + sample.value
    return Page(samples)


@dataclass(frozen=True)
class Buckets:
    """A histogram's cumulative counts by upper bound (`le`), +Inf last, and the sum observed."""

    counts: tuple[tuple[float, float], ...] = ()
    observed_sum: float = 0.0

    @property
    def total(self) -> float:
        return self.counts[-1][1] if self.counts else 0.0

    def since(self, earlier: Buckets) -> Buckets:
        """What was observed after `earlier` (a counter reset counts from zero)."""
        before = dict(earlier.counts)
        diff = tuple((bound, count - before.get(bound, 0.0)) for bound, count in self.counts)
        if any(count < 0 for _, count in diff):
            return self
        return Buckets(diff, self.observed_sum - earlier.observed_sum)

    def plus(self, other: Buckets) -> Buckets:
        counts = dict(self.counts)
        for bound, count in other.counts:
            counts[bound] = counts.get(bound, 0.0) + count
        return Buckets(tuple(sorted(counts.items())), self.observed_sum + other.observed_sum)

    @property
    def mean(self) -> float | None:
        return self.observed_sum / self.total if self.total > 0 else None

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0..1), or None with no observations. Past the highest finite
        bound it is that bound, as in Prometheus: "at least this much"."""
        total = self.total
        if total <= 0:
            return None
        rank = q * total
        lower_bound, lower_count = 0.0, 0.0
        for bound, count in self.counts:
            if count >= rank:
                if math.isinf(bound):
                    return lower_bound
                if count == lower_count:
                    return bound
                return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
            lower_bound, lower_count = bound, count
        return lower_bound
