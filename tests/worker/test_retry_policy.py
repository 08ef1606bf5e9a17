"""When the next attempt is due, and how a main server's answer is judged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from ferry.settings import Settings
from ferry.worker.delivery import Verdict, judge, parse_retry_after
from ferry.worker.retry_policy import next_delay_seconds


def settings(**values: object) -> Settings:
    return Settings(**{name.upper(): value for name, value in values.items()})  # type: ignore[arg-type]


def test_fixed_interval_is_the_default() -> None:
    policy = settings(worker_retry_interval=30)
    assert [next_delay_seconds(n, None, policy) for n in (1, 5, 500)] == [30, 30, 30]


def test_exponential_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    policy = Settings(FERRY_RETRY_BACKOFF="exponential", WORKER_RETRY_INTERVAL=1, FERRY_RETRY_MAX_INTERVAL_SECONDS=60)  # type: ignore[call-arg]
    for attempt, step in [(1, 1), (2, 2), (4, 8), (7, 60), (9000, 60)]:
        delays = {next_delay_seconds(attempt, None, policy) for _ in range(50)}
        assert all(step / 2 <= delay <= step for delay in delays)
        assert len(delays) > 1  # jittered: workers that failed together spread out


def test_retry_after_wins_but_is_capped() -> None:
    policy = Settings(WORKER_RETRY_INTERVAL=30, FERRY_RETRY_MAX_INTERVAL_SECONDS=3600)  # type: ignore[call-arg]
    assert next_delay_seconds(1, 2.5, policy) == 2.5
    assert next_delay_seconds(1, 10**9, policy) == 3600


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("120") == 120
    in_a_minute = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    assert 55 <= (parse_retry_after(in_a_minute) or 0) <= 61
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


@pytest.mark.parametrize(
    ("status", "verdict"),
    [(200, Verdict.DELIVERED), (204, Verdict.DELIVERED), (500, Verdict.RETRY), (503, Verdict.RETRY),
     (408, Verdict.RETRY), (425, Verdict.RETRY), (429, Verdict.RETRY), (400, Verdict.PERMANENT),
     (404, Verdict.PERMANENT), (422, Verdict.PERMANENT), (301, Verdict.RETRY)],
)
def test_answers_are_judged_as_design_md_says(status: int, verdict: Verdict) -> None:
    assert judge(status, None, b"").verdict is verdict


@pytest.mark.parametrize("retry_after", [0.0, 0.001, 0.5])
def test_a_retry_after_of_next_to_nothing_waits_at_least_the_floor(retry_after: float) -> None:
    """`Retry-After: 0` on every attempt must not make a hot loop: a second, or the
    retry interval when that is shorter."""
    assert next_delay_seconds(1, retry_after, settings(worker_retry_interval=30)) == 1.0
    assert next_delay_seconds(1, retry_after, settings(worker_retry_interval=0.2)) == max(retry_after, 0.2)
    assert next_delay_seconds(1, 7.0, settings(worker_retry_interval=30)) == 7.0  # above the floor: as asked
