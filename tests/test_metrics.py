"""Tallied metrics (the proxy's requests, the worker's histograms) read exactly as if each value had been observed."""

from __future__ import annotations

import threading

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from ferry.metrics import DELIVERY_BUCKETS_SECONDS, REQUEST_BUCKETS_SECONDS, ProxyMetrics, WorkerMetrics

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


def test_a_workers_tallies_read_exactly_while_scraped_from_other_threads() -> None:
    """The worker observes in its event loop while scrapes collect from the metrics server's
    threads: a collect sees every observation made before it, none counted twice."""
    metrics = WorkerMetrics("w1")
    delivering: list[int] = []
    metrics.count_active(lambda: len(delivering))
    reference = Histogram("ref", "", buckets=DELIVERY_BUCKETS_SECONDS, registry=(reference_registry := CollectorRegistry()))
    done = threading.Event()

    def scrape() -> None:
        while not done.is_set():
            generate_latest(metrics.registry)

    scrapers = [threading.Thread(target=scrape) for _ in range(2)]
    for thread in scrapers:
        thread.start()
    try:
        for n in range(20_000):
            seconds = (n % 97) / 1000
            metrics.delivery_seconds.observe(seconds)
            reference.observe(seconds)
    finally:
        done.set()
        for thread in scrapers:
            thread.join()
    delivering.extend([1, 2, 3])
    for bound in [*DELIVERY_BUCKETS_SECONDS, "+Inf"]:
        le = bound if isinstance(bound, str) else str(float(bound))
        assert metrics.registry.get_sample_value(
            "worker_delivery_duration_seconds_bucket", {"worker_id": "w1", "le": le}
        ) == reference_registry.get_sample_value("ref_bucket", {"le": le}), le
    read = metrics.registry.get_sample_value("worker_delivery_duration_seconds_sum", {"worker_id": "w1"})
    assert read is not None and abs(read - reference_registry.get_sample_value("ref_sum")) < 1e-6  # type: ignore[operator]
    assert metrics.registry.get_sample_value("worker_active_tasks", {"worker_id": "w1"}) == 3
