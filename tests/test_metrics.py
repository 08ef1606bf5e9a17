"""The proxy's tallied request metrics read exactly as if each request had been observed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from ferry.metrics import REQUEST_BUCKETS_SECONDS, ProxyMetrics

ROUTE = ("POST", "/api/v1/messages")
SECONDS = st.floats(min_value=0, max_value=20, allow_nan=False) | st.sampled_from(REQUEST_BUCKETS_SECONDS)


def series(text: bytes, prefix: str) -> list[str]:
    return [line for line in text.decode().splitlines() if line.startswith(prefix)]


@given(st.lists(st.tuples(SECONDS, st.sampled_from([202, 401, 503])), max_size=50), st.integers(0, 3))
def test_a_flushed_tally_equals_observing_each_request(requests: list[tuple[float, int]], flushes: int) -> None:
    metrics = ProxyMetrics()
    reference = Histogram(
        "proxy_requests_duration_seconds", "", ["method", "route"], buckets=REQUEST_BUCKETS_SECONDS,
        registry=(reference_registry := CollectorRegistry()),
    )
    for number, (seconds, status) in enumerate(requests):
        metrics.note(*ROUTE, status, seconds)
        reference.labels(*ROUTE).observe(seconds)
        if flushes and number % (flushes + 1) == 0:
            metrics.flush()  # flushing part way adds up the same
    text = metrics.render(None)
    assert series(text, "proxy_requests_duration_seconds_bucket") == series(
        generate_latest(reference_registry), "proxy_requests_duration_seconds_bucket"
    )
    for status in (202, 401, 503):
        count = sum(answer == status for _, answer in requests)
        line = f'proxy_requests_total{{method="POST",route="/api/v1/messages",status="{status}"}} {float(count)}'
        assert (line in text.decode()) == (count > 0)


def test_accepted_messages_are_counted_once_flushed() -> None:
    metrics = ProxyMetrics()
    metrics.note_accepted(1)
    metrics.note_accepted(100)
    assert "proxy_messages_accepted_total 101.0" in metrics.render(None).decode()
    assert "proxy_messages_accepted_total 101.0" in metrics.render(None).decode()  # not twice
