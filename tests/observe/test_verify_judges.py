"""ferry verify's judgement on plain readings: the thresholds do what docs/verify.md says."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ferry.observe.checks_proxy import HealthProbe, ProxySeries, judge_proxies
from ferry.observe.checks_queue import QueueReading, band, judge_queue, slope
from ferry.observe.checks_workers import (
    FAIRNESS_THRESHOLD,
    Counts,
    Reading,
    WorkerSeries,
    jain_index,
    judge_workers,
    recommend,
)
from ferry.observe.diagnosis import Evidence, diagnose
from ferry.observe.promtext import Buckets, parse
from ferry.observe.verify import Report, checklist

LEASE = 2.0


def worker(worker_id: str, processed: list[float], active: list[float] | None = None, *,
           concurrency: int = 4, failed: list[float] | None = None, heartbeat: float = 0.1) -> WorkerSeries:
    active = active or [0.0] * len(processed)
    failed = failed or [0.0] * len(processed)
    readings: list[Reading | None] = [
        Reading(Counts(processed=p, failed=f, active=a)) for p, f, a in zip(processed, failed, active, strict=True)
    ]
    return WorkerSeries(
        id=worker_id, metrics_url=f"http://127.0.0.1:9/{worker_id}", concurrency=concurrency,
        readings=readings, registry=[Counts()] * len(processed), heartbeat_ages=[heartbeat] * len(processed),
    )


def judged(*workers: WorkerSeries):  # type: ignore[no-untyped-def]
    return judge_workers(workers, 3.0, LEASE, 10.0, 2)


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=20))
def test_jain_index_lies_between_one_over_n_and_one(values: list[float]) -> None:
    index = jain_index(values)
    assert 1 / len(values) - 1e-9 <= index <= 1 + 1e-9


def test_even_workers_pass_and_one_doing_everything_fails_by_fairness() -> None:
    assert judged(worker("a", [0, 40]), worker("b", [0, 38]), worker("c", [0, 41])).passed
    lopsided = judged(worker("a", [0, 100]), worker("b", [0, 3]), worker("c", [0, 2]))
    assert not lopsided.passed and lopsided.fairness.jain_index is not None
    assert lopsided.fairness.jain_index < FAIRNESS_THRESHOLD
    assert "uneven_load" in {p.code for p in lopsided.problems}


def test_fairness_is_not_judged_on_too_little_work() -> None:
    check = judged(worker("a", [0, 9]), worker("b", [0, 1]), worker("c", [0, 0]))
    assert not check.fairness.judged and check.fairness.min_messages == 30
    assert check.passed  # nor is "no progress": the window held too little work


def test_fairness_is_per_delivery_slot() -> None:
    check = judged(worker("a", [0, 80], concurrency=8), worker("b", [0, 40], concurrency=4))
    assert check.fairness.jain_index == 1.0


def test_a_worker_without_progress_while_others_deliver_fails_by_name() -> None:
    check = judged(worker("a", [0, 50]), worker("b", [0, 50]), worker("stuck", [7, 7]))
    assert [(p.code, p.subject) for p in check.problems][0] == ("worker_stalled", "stuck")


def test_a_registered_worker_whose_metrics_hang_is_frozen() -> None:
    frozen = worker("frozen", [0, 0])
    frozen.readings[-1] = None
    frozen.metrics_failure, frozen.metrics_error = "timeout", "no answer within 1 s"
    check = judged(worker("a", [0, 5]), worker("b", [0, 5]), frozen)
    assert ("worker_frozen", "frozen") in {(p.code, p.subject) for p in check.problems}


def test_a_stale_heartbeat_fails_by_name() -> None:
    check = judged(worker("a", [0, 5]), worker("old", [0, 5], heartbeat=LEASE + 1))
    assert ("worker_frozen", "old") in {(p.code, p.subject) for p in check.problems}


def test_a_saturated_worker_beside_an_idle_one_is_overloaded() -> None:
    check = judged(
        worker("busy", [0, 15, 30], [4, 4, 4]), worker("idle", [0, 15, 30], [0, 1, 0]), worker("c", [0, 15, 30], [1, 2, 1])
    )
    assert [(p.code, p.subject) for p in check.problems] == [("worker_overloaded", "busy")]
    all_busy = judged(worker("a", [0, 30], [4, 4]), worker("b", [0, 30], [4, 4]))
    assert all_busy.passed


def test_one_worker_is_not_multiple_workers() -> None:
    check = judged(worker("alone", [0, 100]))
    assert "too_few_workers" in {p.code for p in check.problems}
    assert check.checklist[0].mark == "fail"


def test_failing_deliveries_fail_the_check() -> None:
    check = judged(worker("a", [0, 0], failed=[0, 12]), worker("b", [0, 1], failed=[0, 9]))
    assert ("deliveries_failing", "main server") in {(p.code, p.subject) for p in check.problems}


def test_recommendation_follows_arrivals_and_the_rule_of_thumb() -> None:
    pool = [worker("a", [0, 10]), worker("b", [0, 10])]
    # 4 slots / 0.1 s a delivery = 40/s a worker; 100/s x 1.25 needs 4 workers.
    assert recommend(pool, 100.0, 0.1, cores=2).workers == 4
    # 1000/s would need 32: capped at 4 x 2 cores, and it says to add hosts.
    capped = recommend(pool, 1000.0, 0.1, cores=2)
    assert capped.workers == 8 and "add hosts" in capped.reason
    assert recommend(pool, 0.5, 0.1, cores=2).workers == 2  # never fewer than the guide's 2


def reading(at: float, size: int, enqueued: int = 0, delivered: int = 0, oldest: float = 0.0) -> QueueReading:
    return QueueReading(at=at, size=size, enqueued_total=enqueued, delivered_total=delivered, oldest_age_seconds=oldest)


def test_the_guides_bands() -> None:
    assert [band(n) for n in (0, 99, 100, 1000, 1001)] == [
        "healthy", "healthy", "monitor closely", "monitor closely", "add workers",
    ]


def test_queue_over_1000_and_growing_fails_but_over_1000_and_draining_does_not() -> None:
    growing = judge_queue([reading(0, 1200, 0), reading(1, 1300, 150, 50), reading(2, 1400, 300, 100)], 300)
    assert not growing.passed and growing.problems[0].code == "queue_piling_up"
    assert growing.arrival_per_second == 150 and growing.processing_per_second == 50
    draining = judge_queue([reading(0, 1400), reading(1, 1300), reading(2, 1200)], 300)
    assert draining.passed and draining.band == "add workers"


def test_two_partitions_on_one_cluster_master_fail_the_queue_naming_the_one_to_move() -> None:
    sizes = (4, 5, 6)
    readings = [QueueReading(at=t, size=15, partition_sizes=sizes) for t in (0, 1)]
    spread = judge_queue(readings, 300, [("message_queue", "a:1"), ("message_queue:1.9452", "b:2"), ("message_queue:2.16985", "c:3")])
    assert spread.passed and [(p.partition, p.size, p.master) for p in spread.partitions] == [
        (0, 4, "a:1"), (1, 5, "b:2"), (2, 6, "c:3")
    ]
    crowded = judge_queue(readings, 300, [("message_queue", "a:1"), ("message_queue:1.9452", "b:2"), ("message_queue:2.16985", "a:1")])
    assert not crowded.passed
    (problem,) = crowded.problems
    assert (problem.code, problem.subject) == ("partitions_share_a_master", "message_queue:2.16985")
    assert "partitions 0 and 2 are both on a:1" in problem.message
    # Partitions on one plain Redis: nothing to reshard, nothing to fail.
    assert judge_queue(readings, 300, [("message_queue", ""), ("q:1", ""), ("q:2", "")]).passed


def test_an_old_message_fails_the_queue() -> None:
    check = judge_queue([reading(0, 3, oldest=400), reading(1, 3, oldest=401)], 300)
    assert [p.code for p in check.problems] == ["oldest_too_old"]


@given(st.floats(min_value=-1e4, max_value=1e4), st.floats(min_value=-1e4, max_value=1e4))
def test_slope_of_a_line_is_its_rate(rate: float, start: float) -> None:
    points = [(t, start + rate * t) for t in (0.0, 1.0, 2.0, 3.5)]
    assert abs(slope(points) - rate) < 1e-6 * max(1.0, abs(rate), abs(start))


PROXY_PAGE = """# TYPE proxy_requests_duration_seconds histogram
proxy_requests_duration_seconds_bucket{{method="POST",route="/api/v1/messages",le="0.1"}} {fast}
proxy_requests_duration_seconds_bucket{{method="POST",route="/api/v1/messages",le="1.0"}} {fast}
proxy_requests_duration_seconds_bucket{{method="POST",route="/api/v1/messages",le="2.5"}} {total}
proxy_requests_duration_seconds_bucket{{method="POST",route="/api/v1/messages",le="+Inf"}} {total}
proxy_requests_duration_seconds_sum{{method="POST",route="/api/v1/messages"}} 1.0
proxy_requests_duration_seconds_count{{method="POST",route="/api/v1/messages"}} {total}
# TYPE proxy_requests_total counter
proxy_requests_total{{method="POST",route="/api/v1/messages",status="202"}} {ok}
proxy_requests_total{{method="POST",route="/api/v1/messages",status="503"}} {errors}
proxy_requests_total{{method="GET",route="/api/v1/health",status="200"}} 999
"""


def page(fast: int, slow: int, errors: int = 0, run: str = ""):  # type: ignore[no-untyped-def]
    total = fast + slow
    text = PROXY_PAGE.format(fast=fast, total=total, ok=total - errors, errors=errors)
    return parse(text + (f'ferry_proxy_run_info{{run="{run}"}} 1\n' if run else ""))


def test_proxy_p95_over_the_window_is_the_difference_of_two_scrapes() -> None:
    ok = ProxySeries("https://p1", [HealthProbe(200)] * 2, [page(1000, 500), page(1100, 500)])
    slow = ProxySeries("https://p2", [HealthProbe(200)] * 2, [page(1000, 0), page(1000, 100)])
    check = judge_proxies([ok, slow])
    assert check.proxies[0].p95_seconds is not None and check.proxies[0].p95_seconds < 1
    assert [(p.code, p.subject) for p in check.problems] == [("proxy_slow", "https://p2")]


def test_behind_a_load_balancer_each_instances_scrapes_are_differenced_on_their_own() -> None:
    """nginx hands each scrape to one of three instances: a's 100 fast requests and c's 40
    slow ones happened in the window; b answered one scrape, which says nothing about it.
    Differenced across instances, b's 9,000 earlier requests would count, and a's page
    minus c's would be negative."""
    pages = [page(1000, 0, run="a"), page(9000, 0, run="b"), page(5000, 0, run="c"),
             page(1100, 0, run="a"), page(5000, 40, run="c")]
    [result] = judge_proxies([ProxySeries("https://lb", [HealthProbe(200)] * 5, pages)]).proxies
    assert result.requests == 140
    assert result.p95_seconds is not None and result.p95_seconds > 1  # c's slow 40 are over the 5 %


def test_a_silent_or_unhealthy_proxy_fails_by_name() -> None:
    down = ProxySeries("https://down", [HealthProbe(200), HealthProbe(None, detail="refused")], [None, None])
    sick = ProxySeries("https://sick", [HealthProbe(503, "redis_unavailable", "Redis is unavailable")] * 2, [None, None])
    errors = ProxySeries("https://errs", [HealthProbe(200)] * 2, [page(100, 0, 0), page(200, 0, 50)])
    check = judge_proxies([down, sick, errors])
    assert [(p.code, p.subject) for p in check.problems] == [
        ("proxy_down", "https://down"), ("proxy_unhealthy", "https://sick"), ("proxy_errors", "https://errs"),
    ]


@given(st.lists(st.integers(min_value=0, max_value=1000), min_size=3, max_size=3), st.floats(0.01, 0.99))
def test_histogram_quantile_stays_within_the_buckets(counts: list[int], q: float) -> None:
    cumulative = [sum(counts[: i + 1]) for i in range(3)]
    buckets = Buckets(((0.1, cumulative[0]), (1.0, cumulative[1]), (float("inf"), cumulative[2])))
    value = buckets.quantile(q)
    assert (value is None) == (cumulative[2] == 0)
    assert value is None or 0 <= value <= 1.0


def test_the_diagnosis_names_causes_in_the_guides_terms() -> None:
    slow = worker("a", [0, 30])
    slow.readings = [Reading(Counts(), Buckets(((5.0, 0), (10.0, 0), (float("inf"), 0)), 0.0)),
                     Reading(Counts(processed=30), Buckets(((5.0, 1), (10.0, 30), (float("inf"), 30)), 240.0))]
    stray = WorkerSeries(id="stray", registered=False, metrics_url="http://127.0.0.1:9109/metrics",
                         readings=[Reading(Counts())])
    workers = judged(slow, worker("b", [0, 30]), stray)
    assert ("unregistered_worker", "stray") in {(p.code, p.subject) for p in workers.problems}
    queue = judge_queue([reading(0, 150, 0, 0), reading(2, 400, 300, 50)], 300)
    queue.retry_growth, queue.retry_scheduled = 12, 40
    found = {f.code for f in diagnose(workers, queue, None, Evidence(redis="refusing writes: OOM", last_errors=["HTTP 503"]))}
    assert {"main_server_slow", "workers_on_other_queue", "retries_piling_up", "workers_cannot_keep_up",
            "redis_refusing_writes"} <= found


def test_checks_not_asked_for_leave_their_checklist_lines_skipped() -> None:
    queue = judge_queue([reading(0, 5), reading(1, 4)], 300)
    report = Report(ok=True, exit_code=0, checks=["queue"], sample_duration_seconds=1, queue=queue)
    marks = [(item.mark, item.detail) for item in checklist(report)]
    assert marks[2][0] == "pass"
    assert [mark for mark, _ in marks] == ["skip", "skip", "pass", "skip", "skip"]
    assert marks[0][1] == "not checked (--check-workers)" and marks[4][1] == "not checked (--check-proxy)"
