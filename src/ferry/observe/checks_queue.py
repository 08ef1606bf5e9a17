"""The queue check: the guide's `LLEN message_queue` bands, growth, in and out rates, the oldest message.

Pure functions over the window's queue readings (no I/O). docs/verify.md gives
each threshold's reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel

from ferry.observe.verdict import QUEUE_STABLE, ChecklistItem, Mark, Problem

# The guide's health indicators for LLEN message_queue.
HEALTHY_BELOW = 100
ADD_WORKERS_ABOVE = 1000
# A message waiting this long is late for a broker whose workers keep up in seconds.
DEFAULT_MAX_OLDEST_AGE_SECONDS = 300.0


@dataclass(frozen=True)
class QueueReading:
    """The queue at one sample (from the snapshot; totals are the stats counters)."""

    at: float
    size: int
    oldest_age_seconds: float = 0.0
    retry_scheduled: int = 0
    dead_letters: int = 0
    in_flight: int = 0
    enqueued_total: int = 0
    delivered_total: int = 0
    partition_sizes: tuple[int, ...] = ()


class PartitionPlace(BaseModel):
    """Where one partition lives, and its backlog at the last sample."""

    partition: int
    name: str  # its queue name: `message_queue`, `message_queue:<p>.<k>`
    master: str  # host:port of the master serving its slot ("" off a Cluster)
    size: int


class QueueCheck(BaseModel):
    passed: bool
    problems: list[Problem]
    sizes: list[int]
    size: int
    band: str
    growth_per_second: float
    arrival_per_second: float | None
    processing_per_second: float | None
    oldest_age_seconds: float
    max_oldest_age_seconds: float
    retry_scheduled: int
    retry_growth: int
    dead_letters: int
    new_dead_letters: int
    in_flight: int
    partitions: list[PartitionPlace] = []
    checklist: list[ChecklistItem]


def band(size: int) -> str:
    """The guide's words for a queue of `size`."""
    if size < HEALTHY_BELOW:
        return "healthy"
    if size <= ADD_WORKERS_ABOVE:
        return "monitor closely"
    return "add workers"


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (time, value): the growth per second, robust to one odd sample."""
    if len(points) < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / spread


def rate(first: float, last: float, seconds: float) -> float | None:
    """A counter's rate; None when it went backwards (a reset) or no time passed."""
    if seconds <= 0 or last < first:
        return None
    return (last - first) / seconds


def judge_queue(
    readings: Sequence[QueueReading], max_oldest_age_seconds: float, homes: Sequence[tuple[str, str]] = ()
) -> QueueCheck:
    """The verdict on the queue: fails when over 1000 and growing, its oldest message is
    too old, or two partitions share a Cluster master (`homes`: each partition's name and
    master)."""
    first, last = readings[0], readings[-1]
    seconds = last.at - first.at
    growth = slope([(r.at, r.size) for r in readings])
    growing = growth > 0 and last.size > first.size
    problems = []
    if last.size > ADD_WORKERS_ABOVE and growing:
        problems.append(
            Problem(
                code="queue_piling_up",
                subject="queue",
                message=(
                    f"{last.size} messages queued (over {ADD_WORKERS_ABOVE}) and growing {growth:+.1f}/s: "
                    "the workers cannot keep up, add workers"
                ),
            )
        )
    if last.oldest_age_seconds > max_oldest_age_seconds:
        problems.append(
            Problem(
                code="oldest_too_old",
                subject="queue",
                message=(
                    f"the next message in line has waited {last.oldest_age_seconds:.0f} s "
                    f"(over {max_oldest_age_seconds:g} s)"
                ),
            )
        )
    places = [
        PartitionPlace(partition=p, name=name, master=master, size=size)
        for p, ((name, master), size) in enumerate(zip(homes, last.partition_sizes or (last.size,)))
    ]
    problems += _shared_masters(places)
    mark: Mark
    if problems and problems[0].code == "queue_piling_up":
        mark, detail = "fail", problems[0].message
    elif growing and last.size >= HEALTHY_BELOW:
        mark, detail = "warn", f"{last.size} queued, growing {growth:+.1f}/s ({band(last.size)})"
    else:
        mark, detail = "pass", f"{first.size} -> {last.size} queued ({band(last.size)}), {growth:+.1f}/s"
    return QueueCheck(
        passed=not problems,
        problems=problems,
        sizes=[r.size for r in readings],
        size=last.size,
        band=band(last.size),
        growth_per_second=round(growth, 3),
        arrival_per_second=_rounded(rate(first.enqueued_total, last.enqueued_total, seconds)),
        processing_per_second=_rounded(rate(first.delivered_total, last.delivered_total, seconds)),
        oldest_age_seconds=round(last.oldest_age_seconds, 3),
        max_oldest_age_seconds=max_oldest_age_seconds,
        retry_scheduled=last.retry_scheduled,
        retry_growth=last.retry_scheduled - first.retry_scheduled,
        dead_letters=last.dead_letters,
        new_dead_letters=max(0, last.dead_letters - first.dead_letters),
        in_flight=last.in_flight,
        partitions=places if len(places) > 1 else [],
        checklist=[ChecklistItem(item=QUEUE_STABLE, mark=mark, detail=detail)],
    )


def _shared_masters(places: Sequence[PartitionPlace]) -> list[Problem]:
    """Partitions on one master add no capacity: a Cluster whose slots were not spread
    evenly, or a reshard since. Say which partition to move where its slot is."""
    seen: dict[str, PartitionPlace] = {}
    problems = []
    for place in places:
        if not place.master:
            continue
        if place.master in seen:
            problems.append(
                Problem(
                    code="partitions_share_a_master",
                    subject=place.name,
                    message=(
                        f"partitions {seen[place.master].partition} and {place.partition} are both on "
                        f"{place.master}: reshard the slot of {place.name} (CLUSTER KEYSLOT {place.name}) "
                        "to a master that holds no partition"
                    ),
                )
            )
        else:
            seen[place.master] = place
    return problems


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
