"""`ferry up` and `ferry workers start`, run as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ferry.processes.supervisor import ChildSpec, RestartPolicy, State, Supervisor
from tests.support.inspect import client, enqueue, queue_length, registered_workers, scrape_text
from tests.support.processes import FerryProcess, Sink, wait_until
from tests.support.servers import free_port, free_port_range


class Up(FerryProcess):
    """`ferry up` on free ports, in a FERRY_HOME of its own."""

    def __init__(self, home: Path, workers: int = 2) -> None:
        self.home = home
        self.proxy_port, self.sink_port = free_port(), free_port()
        self.metrics_port = free_port_range(workers)
        super().__init__(
            ["up", "--workers", str(workers), "--sink-port", str(self.sink_port),
             "--base-metrics-port", str(self.metrics_port)],
            {"FERRY_HOME": str(home), "PROXY_PORT": str(self.proxy_port), "LOG_LEVEL": "INFO",
             "REDIS_URL": "", "MAIN_SERVER_URL": "", "FERRY_API_KEYS": ""},
            home.parent / f"up-{self.proxy_port}.log",
        )

    def ready_block(self) -> str:
        def ready() -> str | None:
            assert self.process is not None and self.process.poll() is None, self.log()
            log = self.log()
            return log if "ferry is up" in log and "send one" in log else None

        return wait_until(ready, timeout=90)

    def sink(self, path: str, payload: object = None) -> dict[str, int]:
        context = ssl.create_default_context(cafile=str(self.home / "tls" / "ca.pem"))
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(f"https://127.0.0.1:{self.sink_port}{path}", data=data,
                                         method="POST" if data else "GET")
        if data:
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]


@pytest.fixture
def ups(tmp_path: Path) -> Iterator[list[Up]]:
    started: list[Up] = []
    yield started
    for up in started:
        up.stop()


def test_ferry_up_prints_a_curl_command_that_delivers_a_message(tmp_path: Path, ups: list[Up]) -> None:
    up = Up(tmp_path / "home")
    ups.append(up)
    up.start()
    block = up.ready_block()
    curl = re.search(r"send one\s+(curl .*)", block)
    assert curl is not None
    for line in ("proxy         https://127.0.0.1:", "API key       ", "CA file       ", "metrics       "):
        assert line in block
    answer = subprocess.run(curl.group(1), shell=True, capture_output=True, text=True, timeout=30)
    assert json.loads(answer.stdout)["status"] == "queued", answer
    wait_until(lambda: up.sink("/stats")["unique"] == 1, timeout=30)

    key = (tmp_path / "home" / "api-key").read_text().strip()
    assert key in block and oct((tmp_path / "home" / "api-key").stat().st_mode)[-3:] == "600"
    up.signal(signal.SIGTERM)
    assert up.wait(timeout=90) == 0


def test_sigterm_with_messages_in_flight_loses_none_and_the_next_up_delivers_the_rest(
    tmp_path: Path, ups: list[Up]
) -> None:
    home = tmp_path / "home"
    first = Up(home)
    ups.append(first)
    first.start()
    block = first.ready_block()
    key = re.search(r"API key\s+(\S+)", block).group(1)  # type: ignore[union-attr]
    first.sink("/faults", {"latency_ms": 700})
    context = ssl.create_default_context(cafile=str(home / "tls" / "ca.pem"))
    ids = []
    for n in range(40):
        request = urllib.request.Request(
            f"https://127.0.0.1:{first.proxy_port}/api/v1/messages", data=b'{"n": %d}' % n, method="POST",
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            ids.append(json.loads(response.read())["id"])
    wait_until(lambda: first.sink("/stats")["received"] >= 1, timeout=30)
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=90) == 0

    second = Up(home)
    ups.append(second)
    second.start()
    second.ready_block()
    wait_until(lambda: second.sink("/stats")["unique"] == 40, timeout=60)


@pytest.fixture
def workers_start(tmp_path: Path) -> Iterator[Callable[..., FerryProcess]]:
    started: list[FerryProcess] = []

    def start(redis_url: str, sink: Sink, *args: str, **env: str) -> FerryProcess:
        process = FerryProcess(
            ["workers", "start", *args],
            {"REDIS_URL": redis_url, "MAIN_SERVER_URL": sink.url, "MAIN_SERVER_CA_FILE": str(sink.certs.ca),  # type: ignore[union-attr]
             "FERRY_LEASE_SECONDS": "2", "WORKER_RETRY_INTERVAL": "0.2", "LOG_LEVEL": "INFO", **env},
            tmp_path / f"workers-{len(started)}.log",
        )
        started.append(process)
        process.start()
        return process

    yield start
    for process in started:
        process.stop()


def worker_pids(supervisor: FerryProcess) -> dict[str, int]:
    """worker-N -> pid, from the supervisor's children."""
    found = {}
    for line in subprocess.run(["ps", "-o", "pid=", "--ppid", str(supervisor.pid)], capture_output=True, text=True).stdout.split():
        try:
            environ = Path(f"/proc/{line}/environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        worker_id = next((e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"WORKER_ID=")), None)
        if worker_id:
            found[worker_id] = int(line)
    return found


def test_workers_start_runs_the_guides_layout_and_restarts_a_killed_worker(
    redis_url: str, start_sink: Callable[..., Sink], workers_start: Callable[..., FerryProcess]
) -> None:
    sink = start_sink()
    base, supervisor_port = free_port_range(2), free_port()
    supervisor = workers_start(
        redis_url, sink, "--num-workers", "2", "--base-metrics-port", str(base), "--metrics-port", str(supervisor_port)
    )
    wait_until(lambda: registered_workers(redis_url) == {"worker-1", "worker-2"}, timeout=30)
    assert 'worker_id="worker-2"' in wait_until(lambda: _try_scrape(base + 1), timeout=20)

    killed = worker_pids(supervisor)["worker-1"]
    os.kill(killed, signal.SIGKILL)
    wait_until(lambda: worker_pids(supervisor).get("worker-1") not in (None, killed), timeout=30)
    wait_until(lambda: supervisor.log().count('"event": "worker started", "worker_id": "worker-1"') == 2, timeout=30)
    enqueue(redis_url, [b"after the crash %d" % n for n in range(20)])
    wait_until(lambda: sink.stats()["unique"] == 20, timeout=30)
    assert 'ferry_supervisor_restarts_total{child="worker-1"} 1.0' in scrape_text(f"http://127.0.0.1:{supervisor_port}/metrics")

    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(timeout=60) == 0
    assert worker_pids(supervisor) == {} and registered_workers(redis_url) == set()


def _try_scrape(port: int) -> str | None:
    try:
        return scrape_text(f"http://127.0.0.1:{port}/metrics")
    except OSError:
        return None


def test_workers_are_added_and_removed_while_running_without_losing_messages(
    redis_url: str, start_sink: Callable[..., Sink], workers_start: Callable[..., FerryProcess]
) -> None:
    sink = start_sink("--latency-ms", "50")
    supervisor = workers_start(redis_url, sink, "--num-workers", "1", "--base-metrics-port", str(free_port_range(3)))
    wait_until(lambda: registered_workers(redis_url) == {"worker-1"}, timeout=30)
    enqueue(redis_url, [b"m%d" % n for n in range(300)])
    # One signal at a time: Unix merges a signal into one still pending of the same kind.
    supervisor.signal(signal.SIGTTIN)
    wait_until(lambda: registered_workers(redis_url) == {"worker-1", "worker-2"}, timeout=30)
    supervisor.signal(signal.SIGTTIN)
    wait_until(lambda: registered_workers(redis_url) == {"worker-1", "worker-2", "worker-3"}, timeout=30)
    supervisor.signal(signal.SIGTTOU)  # worker-3 drains and leaves
    wait_until(lambda: "worker-3" not in registered_workers(redis_url), timeout=40)
    wait_until(lambda: sink.stats()["unique"] == 300, timeout=60)
    assert sink.stats()["duplicates"] == 0  # a graceful removal gives back, never re-sends


def test_autoscaler_adds_workers_under_a_burst_and_removes_them_when_drained(
    redis_url: str, start_sink: Callable[..., Sink], workers_start: Callable[..., FerryProcess]
) -> None:
    sink = start_sink("--latency-ms", "50")
    supervisor_port = free_port()
    supervisor = workers_start(
        redis_url, sink, "--num-workers", "1", "--base-metrics-port", str(free_port_range(3)),
        "--autoscale", "--min-workers", "1", "--max-workers", "3", "--scale-up-queue", "100",
        "--scale-down-after", "1.5", "--scale-cooldown", "1", "--autoscale-interval", "0.3",
        "--metrics-port", str(supervisor_port),
    )
    wait_until(lambda: registered_workers(redis_url) == {"worker-1"}, timeout=30)
    enqueue(redis_url, [b"burst %d" % n for n in range(600)])

    def workers() -> float:
        text = scrape_text(f"http://127.0.0.1:{supervisor_port}/metrics")
        return float(re.search(r"^ferry_supervisor_workers (\S+)", text, re.M).group(1))  # type: ignore[union-attr]

    wait_until(lambda: workers() == 3, timeout=30)
    wait_until(lambda: sink.stats()["unique"] == 600, timeout=60)
    wait_until(lambda: workers() == 1, timeout=30)
    log = supervisor.log()
    assert '"direction": "up"' in log and "queue" in log and '"direction": "down"' in log
    text = scrape_text(f"http://127.0.0.1:{supervisor_port}/metrics")
    assert 'ferry_autoscaler_decisions_total{direction="down",reason="idle"} 2.0' in text
    assert queue_length(redis_url) == 0
    recorded = decisions(redis_url)  # newest first, as `ferry verify` shows them
    assert [(d["direction"], d["from"], d["to"]) for d in recorded] == [("down", 2, 1), ("down", 3, 2), ("up", 2, 3), ("up", 1, 2)]
    assert recorded[0]["rule"] == "idle" and "queue empty" in recorded[0]["reason"]
    assert recorded[-1]["pool"] == supervisor.pid and recorded[-1]["host"] == socket.gethostname()


def decisions(redis_url: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in client(redis_url).lrange("{message_queue}:autoscaler:decisions", 0, -1)]


def test_autoscaler_adds_a_worker_when_the_delivery_p95_is_over_its_threshold(
    redis_url: str, start_sink: Callable[..., Sink], workers_start: Callable[..., FerryProcess]
) -> None:
    """The queue far under its threshold and not growing: the workers' own latency histogram alone scales.
    (The CPU rule is out of reach: on a machine loaded by others, its 80% fired first.)"""
    sink = start_sink("--latency-ms", "400")
    supervisor_port = free_port()
    supervisor = workers_start(
        redis_url, sink, "--num-workers", "1", "--base-metrics-port", str(free_port_range(2)), "--concurrency", "2",
        "--autoscale", "--min-workers", "1", "--max-workers", "2", "--scale-up-queue", "100000",
        "--scale-up-p95", "0.2", "--scale-up-cpu", "100000", "--scale-cooldown", "1", "--autoscale-interval", "0.5",
        "--metrics-port", str(supervisor_port),
    )
    wait_until(lambda: registered_workers(redis_url) == {"worker-1"}, timeout=30)
    enqueue(redis_url, [b"slow %d" % n for n in range(30)])
    wait_until(lambda: registered_workers(redis_url) == {"worker-1", "worker-2"}, timeout=30)
    first = decisions(redis_url)[-1]
    assert (first["direction"], first["from"], first["to"], first["rule"]) == ("up", 1, 2, "p95_high")
    assert re.search(r"delivery p95 0\.[2-9]\d s > 0\.2 s", first["reason"]), first["reason"]
    text = scrape_text(f"http://127.0.0.1:{supervisor_port}/metrics")
    assert 'ferry_autoscaler_decisions_total{direction="up",reason="p95_high"} 1.0' in text
    assert '"rule": "p95_high"' in supervisor.log()


async def test_supervisor_gives_up_loudly_on_a_child_that_keeps_crashing(capsys: pytest.CaptureFixture[str]) -> None:
    supervisor = Supervisor(RestartPolicy(first_delay_seconds=0.05, max_delay_seconds=0.1, max_crashes=3, window_seconds=30))
    crashing = ChildSpec("doomed", [sys.executable, "-c", "import sys; sys.exit(3)"], dict(os.environ), "worker")
    steady = ChildSpec("steady", [sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ), "worker")
    await supervisor.add(crashing)
    await supervisor.add(steady)
    await asyncio.wait_for(_until(lambda: supervisor.children["doomed"].state is State.FAILED), 20)
    assert len(supervisor.children["doomed"].crashes) == 3
    assert supervisor.children["steady"].state is State.RUNNING and not supervisor.all_failed.is_set()
    await supervisor.stop_all(["worker"], 10)
    captured = capsys.readouterr()
    assert "giving up: it keeps crashing" in captured.out + captured.err


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.05)


def test_workers_stop_when_their_supervisor_is_sigkilled(
    redis_url: str, start_sink: Callable[..., Sink], workers_start: Callable[..., FerryProcess]
) -> None:
    sink = start_sink()
    supervisor = workers_start(redis_url, sink, "--num-workers", "2", "--base-metrics-port", str(free_port_range(2)))
    wait_until(lambda: len(worker_pids(supervisor)) == 2, timeout=30)
    children = list(worker_pids(supervisor).values())
    supervisor.kill()

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"  # a zombie has exited

    wait_until(lambda: all(gone(pid) for pid in children), timeout=30)  # no orphan keeps working
