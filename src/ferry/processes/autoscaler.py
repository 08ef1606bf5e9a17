"""How many workers the queue needs: the guide's "Scale Based on Metrics" as a decision with a reason.

Up when the queue is over 1000, when the workers' CPU is over 80% or the delivery
latency p95 over 5 s (both only while messages wait: with nothing queued, more
workers shorten nothing), or while the queue keeps growing. Down only when all of
the guide's conditions hold: the queue has stayed at 0 for a while, the workers'
CPU is under 30%, and capacity sits unused (what is in flight fits in one worker
fewer). The up and down thresholds are far apart (hysteresis) and every change
waits out a cool-down, so the count does not flap. A figure that could not be
measured (a worker whose metrics do not answer) fires no rule and blocks none.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AutoscalePolicy:
    min_workers: int = 1
    max_workers: int = 10
    scale_up_queue: int = 1000  # the guide's "Queue size > 1000: Need more workers"
    scale_up_cpu_percent: float = 80.0  # the guide's "Worker CPU > 80%"
    scale_down_cpu_percent: float = 30.0  # the guide's "Worker CPU < 30%"
    scale_up_p95_seconds: float = 5.0  # the guide's "Response time p95 > 5 seconds"
    growth_samples: int = 2  # consecutive growing samples that count as "keeps growing"
    scale_down_after_seconds: float = 60.0  # the guide's "Queue size consistently 0"
    cooldown_seconds: float = 30.0
    interval_seconds: float = 5.0


@dataclass(frozen=True)
class Look:
    """What the autoscaler sees at one look: the queue, and the workers as measured."""

    queue_size: int
    workers: int
    cpu_percent: float | None = None  # mean over the workers, each of one core
    p95_seconds: float | None = None  # delivery latency p95 since the previous look
    active: int | None = None  # deliveries in progress, all workers together
    concurrency: int = 0  # delivery slots of one worker


@dataclass(frozen=True)
class Decision:
    workers: int
    direction: str  # "up" or "down"
    rule: str  # the rule that fired, as a metric label: queue_high, cpu_high, p95_high, ...
    reason: str  # for the log and `ferry verify`: with the figures


def figures(look: Look) -> str:
    """The measured figures of a look, for a reason."""
    cpu = "unknown" if look.cpu_percent is None else f"{look.cpu_percent:.0f}%"
    p95 = "unknown" if look.p95_seconds is None else f"{look.p95_seconds:.2f} s"
    slots = look.workers * look.concurrency
    busy = "unknown" if look.active is None or not slots else f"{look.active} of {slots}"
    return f"queue {look.queue_size}, cpu {cpu}, delivery p95 {p95}, busy slots {busy}"


class Autoscaler:
    """Fed one look at a time; says when the worker count should change, and why."""

    def __init__(self, policy: AutoscalePolicy) -> None:
        self.policy = policy
        self._last_size: int | None = None
        self._last_time = 0.0
        self._growing = 0
        self._empty_since: float | None = None
        self._last_change = float("-inf")

    def observe(self, now: float, look: Look) -> Decision | None:
        policy, workers = self.policy, look.workers
        growth_per_second = self._note(now, look.queue_size)
        if workers < policy.min_workers:
            return self._change(now, policy.min_workers, "up", "minimum", f"below the minimum of {policy.min_workers}")
        if workers > policy.max_workers:
            return self._change(now, policy.max_workers, "down", "maximum", f"above the maximum of {policy.max_workers}")
        if now - self._last_change < policy.cooldown_seconds:
            return None
        if workers < policy.max_workers and (up := self._up_rule(look, growth_per_second)) is not None:
            rule, why = up
            return self._change(now, workers + 1, "up", rule, f"{why} ({figures(look)})")
        if workers > policy.min_workers and (down := self._down_reason(now, look)) is not None:
            return self._change(now, workers - 1, "down", "idle", f"{down} ({figures(look)})")
        return None

    def _up_rule(self, look: Look, growth_per_second: float) -> tuple[str, str] | None:
        policy, size = self.policy, look.queue_size
        if size > policy.scale_up_queue:
            return "queue_high", f"queue {size} > {policy.scale_up_queue}"
        waiting = size > 0
        if waiting and look.p95_seconds is not None and look.p95_seconds > policy.scale_up_p95_seconds:
            return "p95_high", f"delivery p95 {look.p95_seconds:.2f} s > {policy.scale_up_p95_seconds:g} s"
        if waiting and look.cpu_percent is not None and look.cpu_percent > policy.scale_up_cpu_percent:
            return "cpu_high", f"worker cpu {look.cpu_percent:.0f}% > {policy.scale_up_cpu_percent:g}%"
        if self._growing >= policy.growth_samples:
            return "queue_growing", f"queue growing {growth_per_second:+.1f}/s to {size}"
        return None

    def _down_reason(self, now: float, look: Look) -> str | None:
        """Why one worker fewer will do, when every condition of the guide holds."""
        policy = self.policy
        if self._empty_since is None or now - self._empty_since < policy.scale_down_after_seconds:
            return None
        if look.cpu_percent is not None and look.cpu_percent >= policy.scale_down_cpu_percent:
            return None
        if look.active is not None and look.concurrency and look.active > (look.workers - 1) * look.concurrency:
            return None  # what is in flight would not fit in one worker fewer
        return f"queue empty for {now - self._empty_since:.0f} s, cpu under {policy.scale_down_cpu_percent:g}%, slots unused"

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

    def _change(self, now: float, workers: int, direction: str, rule: str, reason: str) -> Decision:
        self._last_change = now
        self._growing = 0
        if direction == "down":
            self._empty_since = now  # the next step down waits a full period again
        return Decision(workers, direction, rule, reason)
