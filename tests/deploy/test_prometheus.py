"""The files `ferry deploy prometheus` and `ferry deploy grafana` write, checked by promtool
and run by Debian's Prometheus against a real stack: a proxy that wants an API key for
/metrics, two workers found only through the proxy's discovery route, and the sink."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from ferry.deploy import grafana, prometheus
from ferry.deploy.prometheus import Scrape, Thresholds
from tests.deploy.stack import API_KEY, Daemon, need, post_messages, proxy, sink_on_fresh_redis, wait_port, worker
from tests.support.certs import CertFiles
from tests.support.inspect import enqueue
from tests.support.processes import Sink, ferry_command, wait_until
from tests.support.servers import RedisProcess, free_port

WORKER_IDS = ("prom-worker-1", "prom-worker-2")


@dataclass
class Monitored:
    prometheus: Daemon
    port: int
    proxy_port: int
    redis_url: str
    sink: Sink
    directory: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result; a query Prometheus refuses fails the test."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]  # type: ignore[no-any-return]

    def alerts(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1/alerts", timeout=10) as response:
            return json.load(response)["data"]["alerts"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def monitored(
    tmp_path_factory: pytest.TempPathFactory, certs: CertFiles, default_server: RedisProcess
) -> Iterator[Monitored]:
    binary = need("prometheus")
    directory = tmp_path_factory.mktemp("prometheus")
    redis_url, sink = sink_on_fresh_redis(directory, certs, default_server)
    proxy_port = free_port()
    front = proxy(directory, certs, redis_url, proxy_port, FERRY_HEALTH_METRICS_NEED_KEY="true")
    workers = [worker(directory, certs, redis_url, sink.url, worker_id)[0] for worker_id in WORKER_IDS]
    key_file = directory / "api-key"
    key_file.write_text(API_KEY + "\n")
    # The shipped rules, a configuration with test-sized intervals: the same code makes both.
    # The one proxy under two names: two discovery sources that list the same workers.
    scrape = Scrape(proxies=(f"localhost:{proxy_port}", f"127.0.0.1:{proxy_port}"), ca_file=certs.ca, api_key_file=key_file,
                    scrape_interval="1s", evaluation_interval="1s", sd_refresh_interval="1s")
    prometheus.write(directory / "conf", scrape)
    port = free_port()
    daemon = Daemon(
        [binary, f"--config.file={directory / 'conf' / prometheus.CONFIG_FILE}", f"--storage.tsdb.path={directory / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        directory / "prometheus.log",
    )
    try:
        assert front.process is not None
        wait_port(proxy_port, front.process, front.log_path)
        daemon.wait_port(port)
        yield Monitored(daemon, port, proxy_port, redis_url, sink, directory)
    finally:
        daemon.stop()
        for process in [front, *workers]:
            process.stop()
        sink.kill()


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([need("promtool"), *args], capture_output=True, text=True)


def test_promtool_accepts_the_files_ferry_deploy_prometheus_writes(tmp_path: Path, certs: CertFiles) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("k\n")
    subprocess.run(
        [ferry_command(), "deploy", "prometheus", "--output-dir", str(tmp_path), "--proxy", "proxy-1:8001",
         "--proxy", "proxy-2:8001", "--ca-file", str(certs.ca), "--api-key-file", str(key_file)],
        check=True, capture_output=True,
    )
    config = promtool("check", "config", str(tmp_path / prometheus.CONFIG_FILE))
    assert config.returncode == 0, config.stdout + config.stderr
    rules = promtool("check", "rules", str(tmp_path / prometheus.RULES_FILE))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    shipped = yaml.safe_load((tmp_path / prometheus.RULES_FILE).read_text())["groups"][0]["rules"]
    backlog = next(rule for rule in shipped if rule["alert"] == "FerryQueueBacklog")
    assert (backlog["expr"], backlog["for"]) == ("max(redis_queue_size) > 1000", "5m")  # the guide's figures


def _summary(alert: str, value: str) -> str:
    rule = next(rule for rule in prometheus.alerts(Thresholds()) if rule["alert"] == alert)
    return str(rule["annotations"]["summary"]).replace("{{ $value }}", value)


def test_the_rules_fire_on_a_growing_queue_and_a_silent_worker_and_stay_quiet_on_a_healthy_one(tmp_path: Path) -> None:
    (tmp_path / prometheus.RULES_FILE).write_text(prometheus.dump(prometheus.rules(), "test"))
    growing = {"series": 'redis_queue_size{instance="proxy-1:8001"}', "values": "0+100x30"}  # +100 a minute
    healthy = {"series": 'redis_queue_size{instance="proxy-1:8001"}', "values": "5+0x30"}
    workers = {"series": 'ferry_workers{instance="proxy-1:8001"}', "values": "2+0x30"}
    tests = {
        "rule_files": [prometheus.RULES_FILE],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [growing, workers],
                "alert_rule_test": [
                    # Over 1000 from minute 11: pending, not yet firing, at 14...
                    {"eval_time": "14m", "alertname": "FerryQueueBacklog", "exp_alerts": []},
                    # ... firing once it has been over for 5 minutes.
                    {"eval_time": "17m", "alertname": "FerryQueueBacklog", "exp_alerts": [
                        {"exp_labels": {"severity": "warning"},
                         "exp_annotations": {"summary": _summary("FerryQueueBacklog", "1700")}}]},
                ],
            },
            {
                "interval": "1m",
                "input_series": [{"series": 'up{job="ferry-workers", instance="h1:9100", worker_id="w1", host="h1"}',
                                  "values": "1 1 1 0 0 0 0"}],
                "alert_rule_test": [
                    {"eval_time": "3m", "alertname": "FerryWorkerDown", "exp_alerts": []},  # down, not for 1m yet
                    {"eval_time": "5m", "alertname": "FerryWorkerDown", "exp_alerts": [
                        {"exp_labels": {"severity": "warning", "job": "ferry-workers", "instance": "h1:9100",
                                        "worker_id": "w1", "host": "h1"},
                         "exp_annotations": {"summary": "worker w1 on h1 does not answer its /metrics"}}]},
                ],
            },
            {
                "interval": "1m",
                "input_series": [healthy, workers],
                "alert_rule_test": [
                    {"eval_time": "30m", "alertname": name, "exp_alerts": []}
                    for name in ("FerryQueueBacklog", "FerryNoWorkers", "FerryOldestMessageTooOld")
                ],
            },
        ],
    }
    (tmp_path / "ferry-rules.test.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    tested = promtool("test", "rules", str(tmp_path / "ferry-rules.test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def _send_some(monitored: Monitored, count: int = 200) -> None:
    context = monitored.sink.client_context
    assert context is not None
    url = f"https://localhost:{monitored.proxy_port}/api/v1/messages"
    answers = asyncio.run(post_messages(url, context, count, concurrency=8, source="127.0.0.1"))
    assert {status for status, _ in answers} == {202}


def test_prometheus_scrapes_the_queue_and_finds_every_worker_through_discovery(monitored: Monitored) -> None:
    _send_some(monitored)
    wait_until(lambda: monitored.query("redis_queue_size"), timeout=20)

    def processed_by() -> set[str]:
        found = monitored.query('worker_messages_processed_total{job="ferry-workers"}')
        return {sample["metric"]["worker_id"] for sample in found if float(sample["value"][1]) > 0}

    assert wait_until(lambda: processed_by() == set(WORKER_IDS) and processed_by(), timeout=30) == set(WORKER_IDS)
    targets = monitored.query('up{job="ferry-workers"}')
    assert len(targets) == len(WORKER_IDS)  # a worker listed by both sources is one target
    assert all(sample["metric"].get("host") for sample in targets)  # discovery labels each with its host


def test_every_dashboard_query_is_accepted_and_returns_series(monitored: Monitored) -> None:
    _send_some(monitored)
    expressions = grafana.expressions(grafana.dashboard())
    assert len(expressions) >= 11
    for expr in expressions:
        assert wait_until(lambda expr=expr: monitored.query(expr), timeout=30), expr


def test_a_piling_queue_makes_the_backlog_alert_pending(monitored: Monitored) -> None:
    monitored.sink.faults(latency_ms=5000)  # the main server slows down: the queue piles up
    enqueue(monitored.redis_url, [b"{}"] * 1500)

    def backlog_state() -> str | None:
        return next((alert["state"] for alert in monitored.alerts() if alert["labels"]["alertname"] == "FerryQueueBacklog"), None)

    assert wait_until(backlog_state, timeout=20) == "pending"  # the shipped for: 5m
    monitored.sink.faults(latency_ms=0)
