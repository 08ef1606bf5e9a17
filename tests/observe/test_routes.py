"""The proxy's /api/v1/stats (admin keys) and /api/v1/sd/workers (Prometheus http_sd), over real HTTP."""

from __future__ import annotations

import socket
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from ferry.observe.registry import Registration
from ferry.queue.message import NewMessage, new_message_id
from tests.support.inspect import with_queue
from tests.support.processes import Proxy

ADMIN_KEY = "observe-admin-key"


def register(redis_url: str, worker_id: str, metrics_url: str) -> None:
    """A worker's registry entry, written as a worker's heartbeat writes it."""
    entry = Registration.of(worker_id, 4, metrics_url).entry(CollectorRegistry())
    assert with_queue(redis_url, lambda queue: queue.heartbeat(worker_id, "h-" + worker_id, 30, take=True, entry=entry))


def test_stats_answers_admin_keys_only(redis_url: str, shared_proxy: Callable[..., Proxy]) -> None:
    proxy = shared_proxy(redis_url, tls=False, FERRY_ADMIN_API_KEYS=ADMIN_KEY)
    register(redis_url, "w1", "")
    sent = [NewMessage(new_message_id(), b"{}", "application/json") for _ in range(3)]
    with_queue(redis_url, lambda queue: queue.enqueue(sent))

    code, _, snapshot = proxy.request("GET", "/api/v1/stats", key=ADMIN_KEY)
    assert code == 200
    assert snapshot["queue"]["size"] == snapshot["queue"]["enqueued_total"] == 3
    assert [worker["id"] for worker in snapshot["workers"]] == ["w1"]
    assert snapshot["taken_at"] > 0 and snapshot["autoscaler"] == []

    code, _, refused = proxy.request("GET", "/api/v1/stats")  # the proxy's API key
    assert (code, refused["error"]) == (403, "forbidden")
    code, _, refused = proxy.request("GET", "/api/v1/stats", key=None)
    assert (code, refused["error"]) == (401, "unauthorized")
    code, _, refused = proxy.request("GET", "/api/v1/stats", key="not-a-key")
    assert (code, refused["error"]) == (401, "unauthorized")


def test_sd_workers_lists_exactly_the_workers_that_serve_metrics(
    redis_url: str, shared_proxy: Callable[..., Proxy]
) -> None:
    proxy = shared_proxy(redis_url, tls=False, FERRY_ADMIN_API_KEYS=ADMIN_KEY)
    register(redis_url, "scraped", "http://10.0.0.7:9101/metrics")
    register(redis_url, "silent", "")  # WORKER_METRICS_PORT=0
    code, headers, groups = proxy.request("GET", "/api/v1/sd/workers", key=None)  # as /metrics: open by default
    assert (code, headers["content-type"]) == (200, "application/json")
    assert groups == [
        {
            "targets": ["10.0.0.7:9101"],
            "labels": {
                "worker_id": "scraped",
                "host": socket.gethostname(),
                "__scheme__": "http",
                "__metrics_path__": "/metrics",
            },
        }
    ]

    guarded = shared_proxy(redis_url, tls=False, FERRY_HEALTH_METRICS_NEED_KEY="true")
    code, _, refused = guarded.request("GET", "/api/v1/sd/workers", key=None)
    assert (code, refused["error"]) == (401, "unauthorized")
    code, _, groups = guarded.request("GET", "/api/v1/sd/workers")  # Prometheus with an API key
    assert code == 200 and [group["labels"]["worker_id"] for group in groups] == ["scraped"]
