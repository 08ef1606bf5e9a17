"""`ferry verify --all` against a real stack under load: it passes when healthy, and fails
naming the culprit with a frozen worker, a queue piling past 1000, an unreachable main
server and a stopped proxy.

One stack for the module (Valkey, `ferry sink` and `ferry proxy` over TLS with trustme
certificates, three workers under `ferry workers start`, a steady load through the
proxy); each fault is undone before the next test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from rich.console import Console
from typer.testing import CliRunner

from ferry.cli import app
from ferry.observe import registered_workers
from ferry.observe.registry import WorkerRecord
from ferry.observe.report import print_report
from ferry.observe.verify import Report
from ferry.queue.keys import Keys
from tests.conftest import TEST_WORKER_ENV
from tests.support.certs import CertFiles
from tests.support.inspect import client, queue_length, with_queue
from tests.support.processes import FerryProcess, Proxy, Sink, bare_env, ferry_command, wait_until
from tests.support.servers import RedisProcess, free_port_range

NUM_WORKERS = 3
API_KEY = "verify-key"
PILE = 1100  # past the guide's 1000, for real


class Load(threading.Thread):
    """A steady trickle of messages through the proxy: 5 a batch, every 50 ms (about 100/s)."""

    def __init__(self, proxy: Proxy) -> None:
        super().__init__(daemon=True)
        self.proxy = proxy
        self.stopping = threading.Event()
        self.sent = 0

    def run(self) -> None:
        body = json.dumps({"messages": [{"json": {"n": i}} for i in range(5)]}).encode()
        while not self.stopping.wait(0.05):
            try:
                status, _, _ = self.proxy.request("POST", "/api/v1/messages/batch", body,
                                                  {"Content-Type": "application/json"})
            except OSError:
                continue
            self.sent += 5 if status == 202 else 0


@dataclass
class Stack:
    directory: Path
    certs: CertFiles
    redis: RedisProcess
    sink: Sink
    proxy: Proxy
    workers: FerryProcess
    metrics_base: int

    def verify(self, *extra: str) -> tuple[int, dict[str, Any]]:
        """`ferry verify --all --sample-duration 3 --json` as an operator runs it on this host."""
        args = [
            ferry_command(), "verify", "--all", "--sample-duration", "3", "--json",
            "--redis-url", self.redis.url, "--ca-file", str(self.certs.ca), "--proxy-url", self.proxy.base,
            "--metrics-ports", f"{self.metrics_base}-{self.metrics_base + NUM_WORKERS}", *extra,
        ]
        env = bare_env(
            MAIN_SERVER_URL=self.sink.url, MAIN_SERVER_CA_FILE=str(self.certs.ca),
            FERRY_LEASE_SECONDS=TEST_WORKER_ENV["FERRY_LEASE_SECONDS"], FERRY_HOME=str(self.directory / "home"),
        )
        done = subprocess.run(args, env=env, capture_output=True, timeout=60, check=False)
        assert b"Traceback" not in done.stderr, done.stderr.decode()
        return done.returncode, json.loads(done.stdout)

    def registry(self) -> dict[str, WorkerRecord]:
        return {w.id: w for w in with_queue(self.redis.url, registered_workers)}

    def healthy(self) -> bool:
        """Every worker registered with a fresh heartbeat, the queue and retries drained."""
        workers = self.registry()
        fresh = len(workers) == NUM_WORKERS and all(w.heartbeat_age_seconds < 1 for w in workers.values())
        retrying = client(self.redis.url).zcard("{message_queue}:retry")
        return fresh and queue_length(self.redis.url) < 50 and retrying == 0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, certs: CertFiles) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("verify")
    redis = RedisProcess("valkey", directory / "valkey", appendfsync="everysec")
    redis.start()
    sink = Sink(directory, certs)
    proxy = Proxy(directory, redis.url, certs, [], {}, api_key=API_KEY)
    base = free_port_range(NUM_WORKERS + 1)
    env = {
        "REDIS_URL": redis.url, "MAIN_SERVER_URL": sink.url, "MAIN_SERVER_CA_FILE": str(certs.ca),
        "FERRY_HOME": str(directory / "home"), **TEST_WORKER_ENV,
    }
    workers = FerryProcess(
        ["workers", "start", "--num-workers", str(NUM_WORKERS), "--base-metrics-port", str(base)],
        env, directory / "workers.log",
    )
    load = Load(proxy)
    try:
        sink.start()
        proxy.start()
        workers.start()
        found = Stack(directory, certs, redis, sink, proxy, workers, base)
        wait_until(found.healthy, timeout=60, interval=0.2)
        load.start()
        yield found
    finally:
        load.stopping.set()
        workers.stop()
        proxy.stop()
        sink.kill()
        redis.kill()


@pytest.fixture
def fresh(stack: Stack) -> Iterator[Stack]:
    """The stack as healthy as it started, before and after the test."""
    wait_until(stack.healthy, timeout=30, interval=0.2)
    yield stack
    wait_until(stack.healthy, timeout=30, interval=0.2)


def problems(report: dict[str, Any], check: str) -> set[tuple[str, str]]:
    return {(p["code"], p["subject"]) for p in report[check]["problems"]}


def findings(report: dict[str, Any]) -> dict[str, str]:
    return {f["code"]: f["message"] for f in report["diagnosis"]}


def test_a_healthy_stack_under_load_passes_every_check(fresh: Stack) -> None:
    decision = {"at": time.time(), "host": "ops-1", "pool": 4242, "direction": "up", "from": 3, "to": 4,
                "rule": "queue_over_1000", "reason": "1204 queued > 1000"}
    client(fresh.redis.url).lpush(Keys().autoscaler_decisions, json.dumps(decision))
    code, report = fresh.verify()
    assert (code, report["ok"]) == (0, True), json.dumps(report, indent=1)
    assert [item["mark"] for item in report["checklist"]] == ["pass"] * 5
    workers = report["workers"]
    assert {w["id"] for w in workers["workers"]} == {f"worker-{n}" for n in range(1, NUM_WORKERS + 1)}
    assert workers["fairness"]["judged"] and workers["fairness"]["jain_index"] >= 0.8
    assert all(w["processed"] > 0 and w["metrics"] == "ok" for w in workers["workers"])
    assert report["queue"]["arrival_per_second"] > 20 and report["queue"]["band"] == "healthy"
    [proxy] = report["proxy"]["proxies"]
    assert proxy["health"] == "ok" and proxy["p95_seconds"] < 1 and proxy["requests"] >= 20
    assert report["main_server"]["reachable"] and report["main_server"]["certificate"]["verified"]
    assert report["autoscaler"] == [decision]

    console = Console(record=True, width=200)
    print_report(Report.model_validate(report), console)
    text = console.export_text()
    for line in ("Multiple workers running", "Workers processing messages evenly", "Queue size stable or decreasing",
                 "No single worker overloaded", "Proxy response times < 1 second"):
        assert f"✅ {line}" in text
    assert "worker-3" in text and "queue_over_1000" in text and "all checks passed" in text


def test_a_frozen_worker_fails_by_name(fresh: Stack) -> None:
    frozen = fresh.registry()["worker-2"]
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        code, report = fresh.verify()
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    assert code == 1 and not report["ok"]
    # By its id while it is registered; by its metrics port once the others reaped it (a
    # lease, 2 s here, after the SIGSTOP: before verify's first sample on a loaded machine).
    names = {"worker-2", f"port {urlsplit(frozen.metrics_url).port}"}
    found = problems(report, "workers")
    assert any(subject in names and problem == "worker_frozen" for problem, subject in found), report["workers"]
    assert {s for _, s in found} <= names | {"workers"}  # nobody else is blamed
    assert report["proxy"]["problems"] == []


def test_a_queue_piling_past_1000_fails_and_says_add_workers(fresh: Stack) -> None:
    fresh.sink.faults(latency_ms=1000)  # three workers of 4 slots: 12 deliveries a second
    try:
        batch = json.dumps({"messages": [{"json": {"pile": i}} for i in range(100)]}).encode()
        for _ in range(PILE // 100):
            status, _, _ = fresh.proxy.request("POST", "/api/v1/messages/batch", batch,
                                               {"Content-Type": "application/json"})
            assert status == 202
        code, report = fresh.verify()
    finally:
        fresh.sink.faults(latency_ms=0)
    assert code == 1
    assert problems(report, "queue") == {("queue_piling_up", "queue")}
    assert report["queue"]["size"] > 1000 and report["queue"]["band"] == "add workers"
    assert report["checklist"][2]["mark"] == "fail"
    assert "workers_cannot_keep_up" in findings(report)
    assert report["workers"]["recommendation"]["workers"] > NUM_WORKERS


def test_an_unreachable_main_server_fails_and_is_probed(fresh: Stack) -> None:
    # Down (SIGKILLed) until verify is done, however long its start and window take on a
    # loaded machine: its last errors are read at the window's end, while the retries still
    # fail. Then started again on its port, with its database.
    fresh.sink.kill()
    try:
        code, report = fresh.verify()
    finally:
        fresh.sink.start()
    assert code == 1
    assert ("deliveries_failing", "main server") in problems(report, "workers")
    assert not report["main_server"]["reachable"]
    message = findings(report)["main_server_unreachable"]
    assert f"localhost:{fresh.sink.port}" in message and "last errors" in message


def test_no_redis_is_exit_2_with_one_json_document(tmp_path: Path) -> None:
    nowhere = f"redis://127.0.0.1:{free_port_range(1)}"
    done = subprocess.run(
        [ferry_command(), "verify", "--check-queue", "--json", "--sample-duration", "1", "--redis-url", nowhere],
        env=bare_env(FERRY_HOME=str(tmp_path)), capture_output=True, timeout=30, check=False,
    )
    assert done.returncode == 2 and b"Traceback" not in done.stderr
    report = json.loads(done.stdout)
    assert report["error"]["code"] == "redis_unavailable" and report["exit_code"] == 2
    runner = CliRunner()
    said = runner.invoke(app, ["verify", "--check-queue", "--sample-duration", "1", "--redis-url", nowhere],
                         env={"FERRY_HOME": str(tmp_path)})
    assert said.exit_code == 2 and said.stdout == ""
    assert said.stderr.startswith(f"ferry: Redis at {nowhere} does not answer") and said.stderr.count("\n") == 1


def test_usage_errors_are_exit_2_and_json_with_json() -> None:
    runner = CliRunner()
    zero = runner.invoke(app, ["verify", "--json", "--sample-duration", "0"])
    assert zero.exit_code == 2 and "--sample-duration" in json.loads(zero.stdout)["error"]["message"]
    usage = runner.invoke(app, ["verify", "--json", "--no-such-flag"])
    assert usage.exit_code == 2 and json.loads(usage.stdout)["error"]["code"] == "usage"
    ports = runner.invoke(app, ["verify", "--json", "--metrics-ports", "9100-oops"])
    assert ports.exit_code == 2 and "--metrics-ports" in json.loads(ports.stdout)["error"]["message"]


def test_a_stopped_proxy_and_a_worker_on_another_database_are_each_named(fresh: Stack) -> None:
    port = fresh.metrics_base + NUM_WORKERS  # the last port of the cross-checked range
    stray = FerryProcess(
        ["worker"],
        {"REDIS_URL": f"{fresh.redis.url}/1", "MAIN_SERVER_URL": fresh.sink.url, "MAIN_SERVER_CA_FILE": str(fresh.certs.ca),
         "WORKER_ID": "stray", "WORKER_METRICS_PORT": str(port), "FERRY_HOME": str(fresh.directory / "home"),
         **TEST_WORKER_ENV},
        fresh.directory / "stray.log",
    )
    second = Proxy(fresh.directory, fresh.redis.url, fresh.certs, [], {}, api_key=API_KEY)
    try:
        stray.start_listening(port)
        second.start()
        second.stop()
        code, report = fresh.verify("--proxy-url", second.base)
    finally:
        stray.stop()
        second.stop()
    assert code == 1
    assert problems(report, "proxy") == {("proxy_down", second.base)}
    statuses = {p["url"]: p["status"] for p in report["proxy"]["proxies"]}
    assert statuses == {fresh.proxy.base: "ok", second.base: "proxy_down"}
    assert problems(report, "workers") == {("unregistered_worker", "stray")}
    assert f"http://127.0.0.1:{port}/metrics" in findings(report)["workers_on_other_queue"]


def test_redis_refusing_writes_is_said(fresh: Stack) -> None:
    redis = client(fresh.redis.url)
    redis.config_set("maxmemory", "1")  # every write is refused: OOM under noeviction
    try:
        code, report = fresh.verify()
    finally:
        redis.config_set("maxmemory", "0")
    assert code == 1
    assert ("proxy_unhealthy", fresh.proxy.base) in problems(report, "proxy")
    assert "redis_refusing_writes" in report["proxy"]["proxies"][0]["health"]
    assert "OOM" in findings(report)["redis_refusing_writes"]
