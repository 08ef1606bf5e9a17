"""The autoscaler's decisions (the guide's whole "Scale Based on Metrics"), on a clock the test controls."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.processes.autoscaler import AutoscalePolicy, Autoscaler, Decision, Look

POLICY = AutoscalePolicy(
    min_workers=1, max_workers=4, scale_up_queue=1000, growth_samples=2,
    scale_down_after_seconds=60, cooldown_seconds=30, interval_seconds=5,
)


def look(queue: int, workers: int, cpu: float | None = None, p95: float | None = None, active: int | None = None) -> Look:
    return Look(queue_size=queue, workers=workers, cpu_percent=cpu, p95_seconds=p95, active=active, concurrency=4)


def test_a_queue_over_the_threshold_adds_a_worker_then_waits_out_the_cooldown() -> None:
    scaler = Autoscaler(POLICY)
    decision = scaler.observe(0, look(5000, 1))
    assert decision is not None and (decision.workers, decision.direction, decision.rule) == (2, "up", "queue_high")
    assert "queue 5000 > 1000" in decision.reason
    assert scaler.observe(10, look(6000, 2)) is None  # cooling down
    later = scaler.observe(31, look(6000, 2))
    assert later is not None and later.workers == 3


def test_worker_cpu_over_80_adds_a_worker_while_messages_wait() -> None:
    scaler = Autoscaler(POLICY)
    decision = scaler.observe(0, look(50, 2, cpu=91.0, p95=0.2, active=8))
    assert decision is not None and (decision.workers, decision.rule) == (3, "cpu_high")
    assert "worker cpu 91% > 80%" in decision.reason and "busy slots 8 of 8" in decision.reason
    assert Autoscaler(POLICY).observe(0, look(0, 2, cpu=91.0)) is None  # nothing waits: nothing to gain


def test_a_delivery_p95_over_5_s_adds_a_worker_while_messages_wait() -> None:
    scaler = Autoscaler(POLICY)
    decision = scaler.observe(0, look(20, 1, cpu=10.0, p95=7.5))
    assert decision is not None and (decision.workers, decision.rule) == (2, "p95_high")
    assert "delivery p95 7.50 s > 5 s" in decision.reason
    assert Autoscaler(POLICY).observe(0, look(20, 1, cpu=10.0, p95=4.9)) is None


def test_a_growing_queue_adds_a_worker_even_below_the_threshold() -> None:
    scaler = Autoscaler(POLICY)
    assert scaler.observe(0, look(10, 1)) is None
    assert scaler.observe(5, look(60, 1)) is None  # growing once is not a trend
    decision = scaler.observe(10, look(120, 1))
    assert decision is not None and decision.rule == "queue_growing" and "+12.0/s" in decision.reason


def test_a_steady_busy_queue_changes_nothing() -> None:
    scaler = Autoscaler(POLICY)
    assert all(scaler.observe(t, look(500, 2, cpu=50.0, p95=1.0, active=6)) is None for t in range(0, 300, 5))


def test_an_idle_pool_loses_workers_one_period_at_a_time_down_to_the_minimum() -> None:
    scaler = Autoscaler(POLICY)
    steps = [(0, 3), (30, 3), (60, 3), (90, 2), (120, 2)]
    decisions = [(t, scaler.observe(t, look(0, workers, cpu=2.0, active=0))) for t, workers in steps]
    down = [(t, d.workers, d.rule) for t, d in decisions if d is not None]
    assert down == [(60, 2, "idle"), (120, 1, "idle")]
    floor = Autoscaler(POLICY)
    assert all(floor.observe(t, look(0, 1, cpu=0.0, active=0)) is None for t in range(0, 600, 5))


def test_an_empty_queue_keeps_its_workers_while_they_are_busy_or_their_cpu_is_not_low() -> None:
    busy_cpu, busy_slots = Autoscaler(POLICY), Autoscaler(POLICY)
    # Queue at 0 for minutes, but the workers are still at 45% CPU / every slot of 3 workers but one in use.
    assert all(busy_cpu.observe(t, look(0, 3, cpu=45.0, active=0)) is None for t in range(0, 300, 5))
    assert all(busy_slots.observe(t, look(0, 3, cpu=5.0, active=9)) is None for t in range(0, 300, 5))
    freed = busy_slots.observe(300, look(0, 3, cpu=5.0, active=8))  # 8 in flight fit in 2 workers of 4
    assert freed is not None and freed.rule == "idle" and "busy slots 8 of 12" in freed.reason


def test_it_does_not_flap_between_up_and_down() -> None:
    scaler = Autoscaler(POLICY)
    workers, changes = 1, []
    # A burst, then drained: one step up per cool-down, then down only after a full empty minute.
    for t in range(0, 400, 5):
        size = 3000 if t < 60 else 0
        decision = scaler.observe(t, look(size, workers, cpu=85.0 if size else 1.0, active=0))
        if decision is not None:
            changes.append((t, decision.direction))
            workers = decision.workers
    assert [direction for _, direction in changes] == ["up", "up", "down", "down"]
    assert changes[2][0] - 60 >= 60  # the first step down came a minute after the queue emptied


def test_limits_are_enforced_first() -> None:
    below = Autoscaler(POLICY).observe(0, look(0, 0))
    above = Autoscaler(POLICY).observe(0, look(0, 9))
    assert below is not None and (below.workers, below.rule) == (1, "minimum")
    assert above is not None and (above.workers, above.rule) == (4, "maximum")
    assert Autoscaler(POLICY).observe(0, look(99999, 4, cpu=99.0, p95=60.0)) is None  # already at the maximum


figure = st.none() | st.floats(min_value=0, max_value=400, allow_nan=False)
looks = st.builds(
    Look,
    queue_size=st.integers(min_value=0, max_value=5000),
    workers=st.integers(min_value=0, max_value=8),
    cpu_percent=figure,
    p95_seconds=figure,
    active=st.none() | st.integers(min_value=0, max_value=40),
    concurrency=st.integers(min_value=0, max_value=8),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.floats(min_value=0.1, max_value=20), looks), min_size=1, max_size=40))
def test_every_decision_is_one_step_within_the_limits_cooled_down_and_names_its_rule(
    steps: list[tuple[float, Look]],
) -> None:
    scaler, now, last_change = Autoscaler(POLICY), 0.0, float("-inf")
    for gap, seen in steps:
        now += gap
        decision = scaler.observe(now, seen)
        if decision is None:
            continue
        assert POLICY.min_workers <= decision.workers <= POLICY.max_workers
        if decision.rule in ("minimum", "maximum"):
            last_change = now
            continue
        assert now - last_change >= POLICY.cooldown_seconds
        assert abs(decision.workers - seen.workers) == 1 and _rule_holds(decision, seen)
        last_change = now


def _rule_holds(decision: Decision, seen: Look) -> bool:
    """The rule named is true of the figures it was decided on (the hysteresis: down never at >= 30% CPU)."""
    if decision.direction == "down":
        return decision.rule == "idle" and seen.queue_size == 0 and (seen.cpu_percent or 0) < POLICY.scale_down_cpu_percent
    waiting = seen.queue_size > 0
    return {
        "queue_high": seen.queue_size > POLICY.scale_up_queue,
        "cpu_high": waiting and (seen.cpu_percent or 0) > POLICY.scale_up_cpu_percent,
        "p95_high": waiting and (seen.p95_seconds or 0) > POLICY.scale_up_p95_seconds,
        "queue_growing": True,
    }[decision.rule]
