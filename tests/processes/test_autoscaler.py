"""The autoscaler's decisions, on a clock the test controls."""

from __future__ import annotations

from ferry.processes.autoscaler import AutoscalePolicy, Autoscaler

POLICY = AutoscalePolicy(
    min_workers=1, max_workers=4, scale_up_queue=1000, growth_samples=2,
    scale_down_after_seconds=60, cooldown_seconds=30, interval_seconds=5,
)


def test_a_queue_over_the_threshold_adds_a_worker_then_waits_out_the_cooldown() -> None:
    scaler = Autoscaler(POLICY)
    decision = scaler.observe(0, 5000, 1)
    assert decision is not None and (decision.workers, decision.direction, decision.kind) == (2, "up", "over_threshold")
    assert "5000 > 1000" in decision.reason
    assert scaler.observe(10, 6000, 2) is None  # cooling down
    later = scaler.observe(31, 6000, 2)
    assert later is not None and later.workers == 3


def test_a_growing_queue_adds_a_worker_even_below_the_threshold() -> None:
    scaler = Autoscaler(POLICY)
    assert scaler.observe(0, 10, 1) is None
    assert scaler.observe(5, 60, 1) is None  # growing once is not a trend
    decision = scaler.observe(10, 120, 1)
    assert decision is not None and decision.kind == "growing" and "+12.0/s" in decision.reason


def test_a_steady_busy_queue_changes_nothing() -> None:
    scaler = Autoscaler(POLICY)
    assert all(scaler.observe(t, 500, 2) is None for t in range(0, 300, 5))


def test_an_empty_queue_removes_workers_one_period_at_a_time_down_to_the_minimum() -> None:
    scaler = Autoscaler(POLICY)
    decisions = [(t, scaler.observe(t, 0, workers)) for t, workers in [(0, 3), (30, 3), (60, 3), (90, 2), (120, 2)]]
    down = [(t, d.workers) for t, d in decisions if d is not None]
    assert down == [(60, 2), (120, 1)]
    floor = Autoscaler(POLICY)
    assert all(floor.observe(t, 0, 1) is None for t in range(0, 600, 5))


def test_it_does_not_flap_between_up_and_down() -> None:
    scaler = Autoscaler(POLICY)
    workers, changes = 1, []
    # A burst, then drained: one step up per cool-down, then down only after a full empty minute.
    for t in range(0, 400, 5):
        size = 3000 if t < 60 else 0
        decision = scaler.observe(t, size, workers)
        if decision is not None:
            changes.append((t, decision.direction))
            workers = decision.workers
    directions = [direction for _, direction in changes]
    assert directions == ["up", "up", "down", "down"]
    assert changes[2][0] - 60 >= 60  # the first step down came a minute after the queue emptied


def test_limits_are_enforced_first() -> None:
    below = Autoscaler(POLICY).observe(0, 0, 0)
    above = Autoscaler(POLICY).observe(0, 0, 9)
    assert below is not None and (below.workers, below.kind) == (1, "minimum")
    assert above is not None and (above.workers, above.kind) == (4, "maximum")
    capped = Autoscaler(POLICY)
    assert capped.observe(0, 99999, 4) is None  # already at the maximum
