"""Prometheus for ferry: a scrape configuration that finds the workers by itself, and the
guide's thresholds as alert rules.

Workers come and go (autoscaling, restarts, other hosts), so they are not listed: the
proxy's `GET /api/v1/sd/workers` answers the worker registry in Prometheus's `http_sd`
format, each target carrying its scheme, path and the labels `worker_id` and `host`.
That route follows /metrics' rule (FERRY_HEALTH_METRICS_NEED_KEY): where /metrics needs
an API key, Prometheus sends one from a credentials file, never from the config itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferry.deploy.series import series
from ferry.deploy.text import yaml_text

PROXY_JOB = "ferry-proxy"
WORKER_JOB = "ferry-workers"
RULES_FILE = "ferry-rules.yml"
CONFIG_FILE = "prometheus.yml"
# The guide's figures: "Queue size > 1000: Need more workers", "Scale up when ... Response
# time p95 > 5 seconds", "Proxy response times < 1 second".
QUEUE_BACKLOG = 1000
DELIVERY_P95_SECONDS = 5
PROXY_P95_SECONDS = 1
PROXY_ERROR_RATIO = 0.05


@dataclass(frozen=True)
class Scrape:
    """Where the proxies are and how to reach them."""

    proxies: tuple[str, ...] = ("127.0.0.1:8001",)  # host:port of each instance
    scheme: str = "https"
    ca_file: Path | None = None  # verifies the proxies' certificates (None: the system's CAs)
    api_key_file: Path | None = None  # an API key, when /metrics needs one
    scrape_interval: str = "15s"
    evaluation_interval: str = "15s"
    sd_refresh_interval: str = "30s"
    rules_file: str = RULES_FILE


@dataclass(frozen=True)
class Thresholds:
    """What the alerts fire on, and for how long first (`for:`)."""

    queue_backlog: int = QUEUE_BACKLOG
    oldest_age_seconds: float = 600.0
    delivery_p95_seconds: float = DELIVERY_P95_SECONDS
    proxy_p95_seconds: float = PROXY_P95_SECONDS
    proxy_error_ratio: float = PROXY_ERROR_RATIO
    pending: dict[str, str] = field(default_factory=dict)  # alert -> for:, overriding the defaults

    def pending_for(self, alert: str, default: str) -> str:
        return self.pending.get(alert, default)


def _connection(scrape: Scrape) -> dict[str, Any]:
    """How Prometheus talks to a proxy: TLS with the CA, and the API key if there is one."""
    settings: dict[str, Any] = {}
    if scrape.scheme == "https":
        settings["tls_config"] = {"ca_file": str(scrape.ca_file)} if scrape.ca_file else {}
    if scrape.api_key_file is not None:
        settings["authorization"] = {"type": "Bearer", "credentials_file": str(scrape.api_key_file)}
    return settings


def config(scrape: Scrape) -> dict[str, Any]:
    """prometheus.yml: the proxies by address, the workers by discovery."""
    connection = _connection(scrape)
    return {
        "global": {"scrape_interval": scrape.scrape_interval, "evaluation_interval": scrape.evaluation_interval},
        "rule_files": [scrape.rules_file],
        "scrape_configs": [
            {
                "job_name": PROXY_JOB,
                "scheme": scrape.scheme,
                **connection,
                "static_configs": [{"targets": list(scrape.proxies)}],
            },
            {
                # The worker registry, through every proxy (all read the one registry, and a
                # worker found twice is one target: discovery goes on while a proxy is down).
                # Each target's scheme and path come with it (__scheme__, __metrics_path__).
                "job_name": WORKER_JOB,
                "http_sd_configs": [
                    {
                        "url": f"{scrape.scheme}://{address}/api/v1/sd/workers",
                        "refresh_interval": scrape.sd_refresh_interval,
                        **connection,
                    }
                    for address in scrape.proxies
                ],
            },
        ],
    }


def _alert(name: str, expr: str, pending: str, summary: str, severity: str = "warning") -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": pending,
        "labels": {"severity": severity},
        "annotations": {"summary": summary},
    }


def alerts(limits: Thresholds) -> list[dict[str, Any]]:
    """The guide's thresholds as alerts. The queue's figures are read by every proxy from the
    one Redis, so they are taken with max() across instances, never summed."""
    t = limits
    queue_size = series("redis_queue_size")
    delivery = series("worker_delivery_duration_seconds_bucket")
    proxy_time = series("proxy_requests_duration_seconds_bucket")
    requests = series("proxy_requests_total")
    return [
        _alert(
            "FerryQueueBacklog",
            f"max({queue_size}) > {t.queue_backlog}",
            backlog_for := t.pending_for("FerryQueueBacklog", "5m"),
            f"{{{{ $value }}}} messages queued, over {t.queue_backlog} for {backlog_for}: add workers "
            "(ferry workers start --num-workers N) or raise WORKER_CONCURRENCY",
        ),
        _alert(
            "FerryOldestMessageTooOld",
            f"max({series('ferry_queue_oldest_age_seconds')}) > {t.oldest_age_seconds:g}",
            t.pending_for("FerryOldestMessageTooOld", "5m"),
            f"the next message in line has waited {{{{ $value | humanizeDuration }}}} (limit {t.oldest_age_seconds:g} s)",
        ),
        _alert(
            "FerryWorkerDown",
            f'up{{job="{WORKER_JOB}"}} == 0',
            t.pending_for("FerryWorkerDown", "1m"),
            "worker {{ $labels.worker_id }} on {{ $labels.host }} does not answer its /metrics",
        ),
        _alert(
            "FerryNoWorkers",
            f"max({series('ferry_workers')}) == 0 and max({queue_size}) > 0",
            t.pending_for("FerryNoWorkers", "2m"),
            "messages are queued and no worker holds a lease on the queue",
            severity="critical",
        ),
        _alert(
            "FerryWorkerRedisDown",
            f"{series('worker_redis_up')} == 0",
            t.pending_for("FerryWorkerRedisDown", "1m"),
            "worker {{ $labels.worker_id }} cannot reach Redis, or Redis refuses its writes",
            severity="critical",
        ),
        _alert(
            "FerryDeliveryP95Slow",
            f"histogram_quantile(0.95, sum by (le) (rate({delivery}[5m]))) > {t.delivery_p95_seconds:g}",
            t.pending_for("FerryDeliveryP95Slow", "5m"),
            f"p95 of a delivery to the main server is {{{{ $value | humanizeDuration }}}} "
            f"(the guide scales up past {t.delivery_p95_seconds:g} s): check the main server, or add workers",
        ),
        _alert(
            "FerryProxyP95Slow",
            f"histogram_quantile(0.95, sum by (le) (rate({proxy_time}[5m]))) > {t.proxy_p95_seconds:g}",
            t.pending_for("FerryProxyP95Slow", "5m"),
            f"p95 of the proxy's answers is {{{{ $value | humanizeDuration }}}} (the guide expects under "
            f"{t.proxy_p95_seconds:g} s): add proxy processes or instances",
        ),
        _alert(
            "FerryDeadLettersGrowing",
            f"sum(increase({series('worker_messages_dead_total')}[10m])) > 0",
            t.pending_for("FerryDeadLettersGrowing", "0s"),
            "{{ $value }} messages were dead-lettered in 10 minutes: ferry dead list",
        ),
        _alert(
            "FerryProxyErrors",
            f'sum(rate({requests}{{status=~"5.."}}[5m])) / sum(rate({requests}[5m])) > {t.proxy_error_ratio:g}',
            t.pending_for("FerryProxyErrors", "5m"),
            f"{{{{ $value | humanizePercentage }}}} of the proxy's answers are 5xx (over {t.proxy_error_ratio:.0%})",
        ),
    ]


def rules(limits: Thresholds | None = None) -> dict[str, Any]:
    """ferry-rules.yml: one group of alerts."""
    return {"groups": [{"name": "ferry", "rules": alerts(limits or Thresholds())}]}


def dump(document: Any, origin: str) -> str:
    """YAML, headed by what made it."""
    return yaml_text([document], f"# Made by `{origin}`; regenerate rather than edit.")


def write(directory: Path, scrape: Scrape, limits: Thresholds | None = None, origin: str = "ferry deploy prometheus") -> list[Path]:
    """prometheus.yml and ferry-rules.yml in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, document in ((CONFIG_FILE, config(scrape)), (scrape.rules_file, rules(limits))):
        path = directory / name
        path.write_text(dump(document, origin))
        written.append(path)
    return written
