"""A ferry stack for the deploy tests: proxies on consecutive ports, workers, the sink,
and the real programs in front of them (nginx, Prometheus), each a subprocess."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sqlite3
import ssl
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.support.certs import CertFiles
from tests.support.inspect import scrape_text
from tests.support.processes import FerryProcess, Sink, wait_until
from tests.support.servers import RedisProcess, free_port

API_KEY = "deploy-key"
ADMIN_KEY = "deploy-admin"


def need(program: str) -> str:
    """The path of a Debian program the test runs for real (.ci/run installs it)."""
    found = shutil.which(program) or (f"/usr/sbin/{program}" if os.path.exists(f"/usr/sbin/{program}") else None)
    if found is None:
        pytest.fail(f"{program} is not installed (apt-get install {program}; .ci/run does)")
    return found


def sink_on_fresh_redis(directory: Path, certs: CertFiles, server: RedisProcess) -> tuple[str, Sink]:
    """The session's Valkey emptied for this module, and a sink of its own (started)."""
    server.client().flushall()
    sink = Sink(directory, certs)
    sink.start()
    return server.url, sink


def proxy(directory: Path, certs: CertFiles, redis_url: str, port: int, **env: str) -> FerryProcess:
    """`ferry proxy` over TLS on `port`, trusting X-Forwarded-For from 127.0.0.1 only."""
    process = FerryProcess(
        ["proxy", "--port", str(port), "--certfile", str(certs.server_cert), "--keyfile", str(certs.server_key)],
        {
            "REDIS_URL": redis_url,
            "FERRY_API_KEYS": API_KEY,
            "FERRY_ADMIN_API_KEYS": ADMIN_KEY,
            "FERRY_TRUSTED_PROXIES": "127.0.0.1",
            "LOG_LEVEL": "INFO",
            **env,
        },
        directory / f"proxy-{port}.log",
    )
    process.start()
    return process


def worker(directory: Path, certs: CertFiles, redis_url: str, main_server_url: str, worker_id: str) -> tuple[FerryProcess, int]:
    """`ferry worker` with its metrics on a free port; returns it and the port."""
    port = free_port()
    process = FerryProcess(
        ["worker"],
        {
            "REDIS_URL": redis_url,
            "MAIN_SERVER_URL": main_server_url,
            "MAIN_SERVER_CA_FILE": str(certs.ca),
            "WORKER_ID": worker_id,
            "WORKER_METRICS_PORT": str(port),
            "WORKER_CONCURRENCY": "16",
            "WORKER_RETRY_INTERVAL": "0.2",
            "FERRY_LEASE_SECONDS": "2",
            "FERRY_HOME": str(directory / "home"),
            "FERRY_SHUTDOWN_GRACE_SECONDS": "1",
            "LOG_LEVEL": "WARNING",
        },
        directory / f"{worker_id}.log",
    )
    process.start_listening(port)
    return process, port


def wait_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until `port` takes connections; fail at once if `process` exits."""

    def listening() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"{process.args!r} exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    wait_until(listening, timeout=30)


def delivered_ids(sink_db: Path) -> set[str]:
    """Every message id the sink stored (read beside the running sink: WAL)."""
    if not sink_db.exists():
        return set()
    connection = sqlite3.connect(sink_db, timeout=10)
    try:
        return {row[0] for row in connection.execute("SELECT id FROM messages")}
    finally:
        connection.close()


def accepted(port: int, context: ssl.SSLContext) -> float:
    """One instance's proxy_messages_accepted_total, from its own /metrics."""
    for line in scrape_text(f"https://localhost:{port}/metrics", context).splitlines():
        if line.startswith("proxy_messages_accepted_total "):
            return float(line.split()[1])
    return 0.0


class Daemon:
    """A real program (nginx, Prometheus) run in the foreground, its output in a file."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_port(self, port: int) -> None:
        wait_port(port, self.process, self.log_path)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


async def post_messages(
    url: str,
    context: ssl.SSLContext,
    count: int,
    concurrency: int,
    *,
    source: str = "127.0.0.2",
    rate_per_second: float = 0.0,
) -> list[tuple[int, str]]:
    """POST `count` messages from `concurrency` connections (from address `source`); returns
    (status, id or error code) of each, in the order sent. With `rate_per_second`, paced."""
    results: list[tuple[int, str]] = []
    loop = asyncio.get_running_loop()
    started = loop.time()
    next_index = 0
    connector = aiohttp.TCPConnector(ssl=context, local_addr=(source, 0), limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one_connection() -> None:
            nonlocal next_index
            while next_index < count:
                index = next_index
                next_index += 1
                if rate_per_second:
                    delay = started + index / rate_per_second - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                body = b'{"n": %d}' % index
                headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        answer = await response.json(content_type=None)
                        results.append((response.status, str(answer.get("id") or answer.get("error"))))
                except aiohttp.ClientError as error:
                    results.append((0, type(error).__name__))

        await asyncio.gather(*(one_connection() for _ in range(concurrency)))
    return results
