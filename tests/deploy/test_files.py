"""The generated files follow the settings model and ferry.metrics, and the repository's
deploy/ folder is what `ferry deploy examples` writes."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from ferry.deploy import files, grafana, nginx, prometheus, series
from ferry.deploy.plan import make_plan, measured_rate
from ferry.settings import load_settings
from tests.support.processes import bare_env, ferry_command

REPO = Path(__file__).resolve().parents[2]
# What a PromQL expression names besides series: functions, keywords, label names.
NOT_SERIES = {"worker_id"}


def named_series(expr: str) -> set[str]:
    """The series an expression reads: its identifiers outside {...} and by (...)."""
    bare = re.sub(r"\{[^}]*\}|by \([^)]*\)|\[[^\]]*\]", " ", expr)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare))
    return {name for name in names if name.startswith(("worker_", "proxy_", "redis_", "ferry_"))} - NOT_SERIES


def test_every_series_in_the_rules_and_the_dashboard_is_one_ferry_exposes() -> None:
    expressions = [rule["expr"] for rule in prometheus.alerts(prometheus.Thresholds())]
    expressions += grafana.expressions(grafana.dashboard())
    named = set().union(*(named_series(expr) for expr in expressions))
    assert {"redis_queue_size", "worker_messages_processed_total", "proxy_requests_total"} <= named
    assert named <= series.exposed(), named - series.exposed()


def test_a_metric_renamed_in_ferry_metrics_fails_the_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    renamed = series.exposed() - {"redis_queue_size"}
    monkeypatch.setattr(series, "exposed", lambda: renamed)
    with pytest.raises(KeyError, match="redis_queue_size"):
        prometheus.rules()
    with pytest.raises(KeyError, match="redis_queue_size"):
        grafana.dashboard()


def test_the_nginx_limits_follow_the_proxys_settings() -> None:
    layout = nginx.NginxLayout(Path("/c.pem"), Path("/k.pem"), Path("/ca.pem"))
    text = nginx.server_blocks(layout, load_settings(max_body_bytes=2048, keep_alive_seconds=8, head_timeout_seconds=3))
    assert "client_max_body_size 2048;" in text
    assert "keepalive_timeout 6000ms;" in text  # below the instances' own 8 s
    assert "client_header_timeout 3000ms;" in text
    assert "non_idempotent" not in text.replace("(non_idempotent is left out on purpose)", "")


def test_the_repositorys_deploy_folder_is_what_ferry_deploy_examples_writes(tmp_path: Path) -> None:
    # Run as a user would, in a shell whose settings must not leak into the examples.
    subprocess.run([ferry_command(), "deploy", "examples", str(tmp_path)], check=True, capture_output=True,
                   env=bare_env(PROXY_PORT="9000", FERRY_MAX_BODY_BYTES="10"))
    made = {str(path.relative_to(tmp_path)): path.read_text() for path in tmp_path.rglob("*") if path.is_file()}
    shipped = {str(path.relative_to(REPO / "deploy")): path.read_text()
               for path in (REPO / "deploy").rglob("*") if path.is_file() and path.name != "README.md"}
    assert made == files.examples()
    assert shipped == made, "regenerate: ferry deploy examples deploy"


def test_the_plan_follows_the_guides_tiers() -> None:
    small, medium, large = make_plan(9_999), make_plan(50_000), make_plan(100_000)
    assert (small.tier.name, small.workers, small.concurrency, small.proxy_instances, small.proxy_processes) == (
        "small", 2, 4, 1, 4)
    assert small.as_json()["load_balancer"] == "not needed"
    assert (medium.tier.name, medium.proxy_instances, medium.proxy_processes) == ("medium", 2, 4)
    assert 3 <= medium.workers <= 5 and 4 <= medium.concurrency <= 8
    assert (large.tier.name, large.proxy_instances, large.proxy_processes, large.tier.autoscale) == ("large", 3, 8, True)
    assert 5 <= large.workers <= 10 and 8 <= large.concurrency <= 16


def test_a_measured_rate_sizes_the_workers_for_the_peak(tmp_path: Path) -> None:
    verify = tmp_path / "verify.json"
    verify.write_text(json.dumps({"checks": {"workers": {"recommendation": {"per_worker_capacity_per_second": 25.0}}}}))
    assert measured_rate(verify) == 25.0
    planned = make_plan(2_000_000, peak_per_second=400, per_worker_per_second=25.0)
    assert planned.workers == 20  # 400/s x 1.25 headroom / 25/s
    assert any("more than the guide's 10" in note for note in planned.notes)


def test_ferry_deploy_plan_writes_the_files_of_its_plan(tmp_path: Path) -> None:
    done = subprocess.run(
        [ferry_command(), "deploy", "plan", "--messages-per-day", "50000", "--json", "--write", str(tmp_path)],
        capture_output=True, text=True, env=bare_env(),
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tier"] == "medium"
    conf = (tmp_path / "nginx" / "ferry.conf").read_text()
    assert conf.count("max_fails=") == 2  # the plan's two instances
    assert "replicas: 2" in (tmp_path / "kubernetes" / "ferry.yaml").read_text()


def test_a_plan_with_two_sources_of_rate_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [ferry_command(), "deploy", "plan", "--messages-per-day", "1", "--per-worker-rate", "3", "--verify-json", "x"],
        capture_output=True, text=True, env=bare_env(),
    )
    assert (done.returncode, done.stderr.strip()) == (2, "ferry: give --per-worker-rate or --verify-json, not both")

