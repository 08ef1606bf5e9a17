"""A Grafana dashboard with the guide's panels ("Monitor Key Metrics"), importable as is.

Each panel's PromQL names its series through `series`, so a metric renamed in
ferry.metrics fails here. The queue's figures are read by every proxy instance from
the one Redis: they are taken with max() across instances, never summed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ferry.deploy.series import series

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
PANEL_WIDTH = 12
PANEL_HEIGHT = 8


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"
    description: str = ""


def panels() -> list[Panel]:
    """The guide's per-worker and system-wide metrics, and what operators need beside them."""
    processed = series("worker_messages_processed_total")
    queue_size = series("redis_queue_size")
    return [
        Panel("Messages processed per worker", ((f"sum by (worker_id) (rate({processed}[1m]))", "{{worker_id}}"),), "ops",
              "worker_messages_processed_total: deliveries the main server accepted, per second. Even lines mean an even load."),
        Panel("Failed attempts per worker",
              ((f"sum by (worker_id) (rate({series('worker_messages_failed_total')}[1m]))", "{{worker_id}}"),), "ops"),
        Panel("Active deliveries per worker",
              ((f"sum by (worker_id) ({series('worker_active_tasks')})", "{{worker_id}}"),), "short",
              "worker_active_tasks: at WORKER_CONCURRENCY all the time, the worker is saturated."),
        Panel("Queue size", ((f"max({queue_size})", "message_queue"),), "short",
              "LLEN message_queue. The guide: under 100 well balanced, 100-1000 watch, over 1000 add workers."),
        Panel("Queue growth: in and out",
              ((f"sum(rate({series('proxy_messages_accepted_total')}[1m]))", "in (accepted)"),
               (f"sum(rate({processed}[1m]))", "out (delivered)"),
               (f"max(deriv({queue_size}[2m]))", "growth")), "ops",
              "Messages per second in and out; growth above 0 for long means the workers cannot keep up."),
        Panel("Proxy requests",
              ((f"sum by (route, status) (rate({series('proxy_requests_total')}[1m]))", "{{route}} {{status}}"),), "reqps"),
        Panel("Proxy p95 response time",
              ((f"histogram_quantile(0.95, sum by (le, route) (rate({series('proxy_requests_duration_seconds_bucket')}[5m])))",
                "{{route}}"),), "s", "The guide expects under 1 second."),
        Panel("Delivery p95 (main server)",
              ((f"histogram_quantile(0.95, sum by (le) (rate({series('worker_delivery_duration_seconds_bucket')}[5m])))",
                "p95"),), "s", "One HTTP attempt to the main server. The guide scales up past 5 seconds."),
        Panel("Retries",
              ((f"sum by (worker_id) (rate({series('worker_retry_attempts_total')}[5m]))", "{{worker_id}} retrying"),
               (f"max({series('ferry_retry_scheduled')})", "waiting for another attempt")), "short"),
        Panel("Dead letters", ((f"max({series('ferry_dead_letters')})", "dead letters"),), "short",
              "Messages that will not be delivered without an operator: ferry dead list / replay."),
        Panel("Oldest queued message", ((f"max({series('ferry_queue_oldest_age_seconds')})", "age"),), "s",
              "How long the next message in line has waited: the backlog in seconds."),
    ]


def _panel(index: int, panel: Panel) -> dict[str, Any]:
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"x": (index % 2) * PANEL_WIDTH, "y": (index // 2) * PANEL_HEIGHT, "w": PANEL_WIDTH, "h": PANEL_HEIGHT},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [
            {"refId": chr(ord("A") + number), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
            for number, (expr, legend) in enumerate(panel.queries)
        ],
    }


def dashboard() -> dict[str, Any]:
    """The dashboard's JSON model; the Prometheus data source is chosen on import."""
    return {
        "uid": "ferry-broker",
        "title": "ferry: message broker",
        "tags": ["ferry"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [{"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus"}]
        },
        "panels": [_panel(index, panel) for index, panel in enumerate(panels())],
    }


def expressions(document: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard's panels."""
    return [target["expr"] for panel in document["panels"] for target in panel["targets"]]


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"
