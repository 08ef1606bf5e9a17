"""The file `ferry deploy nginx --standalone` writes, run by Debian's nginx in front of three
real `ferry proxy` instances over TLS, a real worker and the sink."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.stack import (
    ADMIN_KEY,
    Daemon,
    accepted,
    delivered_ids,
    need,
    post_messages,
    proxy,
    sink_on_fresh_redis,
    wait_port,
    worker,
)
from tests.support.certs import CertFiles
from tests.support.processes import FerryProcess, Sink, ferry_command, wait_until
from tests.support.servers import RedisProcess, free_port, free_port_range

INSTANCES = 3


@dataclass
class Layout:
    nginx_port: int
    proxy_ports: list[int]
    proxies: list[FerryProcess]
    nginx: Daemon
    directory: Path
    sink: Sink
    sink_dir: Path
    redis_url: str
    context: ssl.SSLContext

    @property
    def sink_db(self) -> Path:
        return self.sink_dir / f"sink-{self.sink.port}.db"

    @property
    def url(self) -> str:
        return f"https://localhost:{self.nginx_port}/api/v1/messages"

    def accepted(self) -> list[float]:
        return [accepted(port, self.context) if process.process and process.process.poll() is None else 0.0
                for port, process in zip(self.proxy_ports, self.proxies, strict=True)]

    def access_log(self) -> list[str]:
        return (self.directory / "logs" / "access.log").read_text().splitlines()

    def error_log(self) -> str:
        return (self.directory / "logs" / "error.log").read_text()


@pytest.fixture(scope="module")
def layout(
    tmp_path_factory: pytest.TempPathFactory, certs: CertFiles, default_server: RedisProcess
) -> Iterator[Layout]:
    nginx_binary = need("nginx")
    directory = tmp_path_factory.mktemp("nginx-layout")
    redis_url, sink = sink_on_fresh_redis(directory, certs, default_server)
    base = free_port_range(INSTANCES)
    ports = list(range(base, base + INSTANCES))
    proxies = [proxy(directory, certs, redis_url, port) for port in ports]
    work, _ = worker(directory, certs, redis_url, sink.url, "nginx-worker")
    nginx_port = free_port()
    nginx_dir = directory / "nginx"
    subprocess.run(
        [ferry_command(), "deploy", "nginx", "--standalone", str(nginx_dir), "--instances", str(INSTANCES),
         "--base-port", str(base), "--listen", f"127.0.0.1:{nginx_port}", "--certfile", str(certs.server_cert),
         "--keyfile", str(certs.server_key), "--upstream-ca", str(certs.ca)],
        check=True, capture_output=True,
    )
    conf = nginx_dir / "nginx.conf"
    args = [nginx_binary, "-p", str(nginx_dir), "-c", str(conf), "-e", str(nginx_dir / "logs" / "error.log"),
            "-g", "daemon off;" + (" user root;" if os.geteuid() == 0 else "")]  # as root, workers would be nobody
    nginx = Daemon(args, directory / "nginx.out")
    try:
        for process, port in zip(proxies, ports, strict=True):
            assert process.process is not None
            wait_port(port, process.process, process.log_path)
        nginx.wait_port(nginx_port)
        yield Layout(nginx_port, ports, proxies, nginx, nginx_dir, sink, directory, redis_url,
                     ssl.create_default_context(cafile=str(certs.ca)))
    finally:
        nginx.stop()
        for process in [*proxies, work]:
            process.stop()
        sink.kill()


def test_the_generated_file_passes_nginx_t(layout: Layout) -> None:
    conf = layout.directory / "nginx.conf"
    checked = subprocess.run(
        [need("nginx"), "-t", "-p", str(layout.directory), "-c", str(conf), "-e", str(layout.directory / "logs" / "error.log")],
        capture_output=True, text=True,
    )
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr


def test_thousands_of_messages_through_nginx_are_delivered_and_shared_fairly(layout: Layout) -> None:
    before = layout.accepted()
    answers = asyncio.run(post_messages(layout.url, layout.context, 3000, concurrency=24))
    assert [status for status, _ in answers] == [202] * 3000, {status for status, _ in answers}
    ids = {message_id for _, message_id in answers}
    wait_until(lambda: ids <= delivered_ids(layout.sink_db), timeout=60)
    # Each instance counted what it stored (its counters reach /metrics within a second).
    shares = wait_until(
        lambda: (grown := [now - then for now, then in zip(layout.accepted(), before, strict=True)])
        and sum(grown) == 3000 and grown,
        timeout=10,
    )
    assert all(share >= 3000 / INSTANCES * 0.6 for share in shares), shares  # least_conn shares the load


def test_nginx_answers_its_own_refusals_in_ferrys_json(layout: Layout) -> None:
    async def go() -> list[tuple[int, str]]:
        import aiohttp

        headers = {"Authorization": "Bearer deploy-key"}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=layout.context)) as session:
            answers = []
            # The largest body ferry takes passes (through nginx's temporary files) ...
            async with session.post(layout.url, data=b"x" * (1024 * 1024), headers=headers) as response:
                answers.append((response.status, (await response.json(content_type=None))["status"]))
            # ... one byte more is refused by nginx, as ferry would.
            async with session.post(layout.url, data=b"x" * (1024 * 1024 + 1), headers=headers) as response:
                answers.append((response.status, (await response.json(content_type=None))["error"]))
            async with session.get(layout.url, headers={**headers, "X-Big": "y" * 9000}) as response:
                answers.append((response.status, (await response.json(content_type=None))["error"]))
            return answers

    assert asyncio.run(go()) == [(202, "queued"), (413, "payload_too_large"), (431, "headers_too_large")]


def test_the_proxies_log_the_client_nginx_names_and_ignore_anyone_elses(layout: Layout) -> None:
    """The client connects from 127.0.0.2; nginx (127.0.0.1) is the one trusted proxy."""

    async def replay(url: str, forwarded_for: str) -> int:
        import aiohttp

        connector = aiohttp.TCPConnector(ssl=layout.context, local_addr=("127.0.0.2", 0))
        headers = {"Authorization": f"Bearer {ADMIN_KEY}", "X-Forwarded-For": forwarded_for, "X-Real-IP": forwarded_for}
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.post(url, json={"ids": ["none"]}, headers=headers) as response:
                return response.status

    through_nginx = f"https://localhost:{layout.nginx_port}/api/v1/dead-letters/replay"
    direct = f"https://localhost:{layout.proxy_ports[0]}/api/v1/dead-letters/replay"
    assert asyncio.run(replay(through_nginx, "203.0.113.7")) == 200  # a client's own header: appended to
    assert asyncio.run(replay(direct, "203.0.113.8")) == 200  # not from a trusted proxy: ignored

    def audit_lines() -> list[dict[str, object]]:
        lines = []
        for process in layout.proxies:
            for line in process.log().splitlines():
                if "dead letters replayed" in line:
                    lines.append(json.loads(line))
        return lines

    lines = wait_until(lambda: len(found := audit_lines()) >= 2 and found)
    assert [line["client"] for line in lines] == ["127.0.0.2", "127.0.0.2"], lines


def test_ferry_verify_check_proxy_passes_through_nginx(layout: Layout, certs: CertFiles) -> None:
    # 4 scrapes (one a second, both ends included) over 3 instances: one answers two of them.
    command = [ferry_command(), "verify", "--check-proxy", "--json", "--sample-duration", "3",
               "--proxy-url", f"https://localhost:{layout.nginx_port}", "--ca-file", str(certs.ca),
               "--redis-url", layout.redis_url]

    async def verify_under_load() -> subprocess.CompletedProcess[str]:
        # 12 s of load: verify's own start (up to a few seconds on a busy machine) and its
        # 3-second window both fall within it.
        load = asyncio.create_task(post_messages(layout.url, layout.context, 2400, concurrency=4, rate_per_second=200))
        done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60)
        assert {status for status, _ in await load} == {202}
        return done

    done = asyncio.run(verify_under_load())
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)["proxy"]
    assert report["passed"] is True, report
    # nginx hands each scrape to one of the instances: each instance's are differenced on their own.
    assert [(proxy["status"], proxy["requests"] > 0) for proxy in report["proxies"]] == [("ok", True)]


def test_an_instance_killed_under_load_loses_no_202_and_the_others_take_its_traffic(layout: Layout) -> None:
    victim = layout.proxies[-1]
    survivors = layout.proxy_ports[:-1]

    async def load_and_kill() -> list[tuple[int, str]]:
        load = asyncio.create_task(post_messages(layout.url, layout.context, 1200, concurrency=8, rate_per_second=400))
        await asyncio.sleep(1.0)
        victim.kill()  # SIGKILL, mid-load
        return await load

    answers = asyncio.run(load_and_kill())
    stored = {message_id for status, message_id in answers if status == 202}
    # A request the dead instance held may fail (502, in ferry's JSON: send again with the same
    # Idempotency-Key); every other is answered 202, and every 202 is delivered.
    assert all(status in (202, 502) for status, _ in answers), {status for status, _ in answers}
    assert len(stored) >= 1200 - 8, len(stored)
    wait_until(lambda: stored <= delivered_ids(layout.sink_db), timeout=60)
    assert "upstream server temporarily disabled" in layout.error_log()  # nginx marked it down

    # Marked down, it is not even tried: the next messages all go to the others.
    before = [accepted(port, layout.context) for port in survivors]
    marker = len(layout.access_log())
    after = asyncio.run(post_messages(layout.url, layout.context, 300, concurrency=8))
    assert [status for status, _ in after] == [202] * 300
    victim_address = f"127.0.0.1:{layout.proxy_ports[-1]}"
    tried = [line for line in layout.access_log()[marker:] if victim_address in line]
    assert tried == [], tried[:3]
    wait_until(lambda: sum(accepted(port, layout.context) for port in survivors) - sum(before) == 300, timeout=10)



def test_with_no_instance_left_a_client_is_told_to_send_again_in_ferrys_json(layout: Layout) -> None:
    for process in layout.proxies:
        process.kill()

    async def post() -> tuple[int, str | None, dict[str, str]]:
        import aiohttp

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=layout.context)) as session:
            async with session.post(layout.url, data=b"{}", headers={"Authorization": "Bearer deploy-key"}) as response:
                return response.status, response.headers.get("Retry-After"), await response.json(content_type=None)

    status, retry_after, body = asyncio.run(post())
    assert (status, retry_after, body["error"]) == (502, "1", "upstream_unavailable")
    assert "Idempotency-Key" in body["detail"]
