"""How many workers the queue needs: the guide's scaling advice as a decision with a reason.

Scale up above 1000 queued messages, or while the queue keeps growing; scale
down when it has been empty for a while. The two thresholds are far apart
(hysteresis) and every change waits out a cool-down, so the count does not flap.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AutoscalePolicy:
    min_workers: int = 1
    max_workers: int = 10
    scale_up_queue: int = 1000  # the guide's "Queue size > 1000: Need more workers"
    growth_samples: int = 2  # consecutive growing samples that count as "keeps growing"
    scale_down_after_seconds: float = 60.0  # the guide's "Queue size consistently 0"
    cooldown_seconds: float = 30.0
    interval_seconds: float = 5.0


@dataclass(frozen=True)
class Decision:
    workers: int
    direction: str  # "up" or "down"
    kind: str  # why, as a metric label: over_threshold, growing, empty, minimum, maximum
    reason: str  # why, for the log: with the figures


class Autoscaler:
    """Fed one queue-size sample at a time; says when the worker count should change."""

    def __init__(self, policy: AutoscalePolicy) -> None:
        self.policy = policy
        self._last_size: int | None = None
        self._last_time = 0.0
        self._growing = 0
        self._empty_since: float | None = None
        self._last_change = float("-inf")

    def observe(self, now: float, queue_size: int, workers: int) -> Decision | None:
        policy = self.policy
        growth_per_second = self._note(now, queue_size)
        if workers < policy.min_workers:
            return self._change(now, policy.min_workers, "up", "minimum", f"below the minimum of {policy.min_workers}")
        if workers > policy.max_workers:
            return self._change(
                now, policy.max_workers, "down", "maximum", f"above the maximum of {policy.max_workers}"
            )
        if now - self._last_change < policy.cooldown_seconds:
            return None
        if workers < policy.max_workers:
            if queue_size > policy.scale_up_queue:
                return self._change(
                    now, workers + 1, "up", "over_threshold", f"queue {queue_size} > {policy.scale_up_queue}"
                )
            if self._growing >= policy.growth_samples:
                return self._change(
                    now, workers + 1, "up", "growing", f"queue growing {growth_per_second:+.1f}/s to {queue_size}"
                )
        if workers > policy.min_workers and self._empty_since is not None:
            empty_for = now - self._empty_since
            if empty_for >= policy.scale_down_after_seconds:
                return self._change(now, workers - 1, "down", "empty", f"queue empty for {empty_for:.0f} s")
        return None

    def _note(self, now: float, queue_size: int) -> float:
        growth = 0.0
        if self._last_size is not None and now > self._last_time:
            growth = (queue_size - self._last_size) / (now - self._last_time)
        self._growing = self._growing + 1 if growth > 0 else 0
        if queue_size > 0:
            self._empty_since = None
        elif self._empty_since is None:
            self._empty_since = now
        self._last_size, self._last_time = queue_size, now
        return growth

    def _change(self, now: float, workers: int, direction: str, kind: str, reason: str) -> Decision:
        self._last_change = now
        self._growing = 0
        if direction == "down":
            self._empty_since = now  # the next step down waits a full period again
        return Decision(workers, direction, kind, reason)
