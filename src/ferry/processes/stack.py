"""`ferry up`: the whole stack on one machine, from one command on a fresh laptop.

Embedded Valkey (unless REDIS_URL), a dev CA and certificate (unless given), the
reference main server (unless MAIN_SERVER_URL), the proxy and N supervised
workers. Stopping goes proxy first (no new messages), then workers (they finish
or give back what they hold), then the sink, then Valkey, whose append-only file
keeps whatever is still queued for the next `ferry up`.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from ferry import platform
from ferry.logs import configure, get_logger
from ferry.metrics import SupervisorMetrics
from ferry.processes.devcerts import ensure_dev_tls
from ferry.processes.redis_url import resolve_redis_url
from ferry.processes.supervisor import ChildSpec, Supervisor, child_env, ferry_argv
from ferry.processes.worker_pool import WORKER_GROUP, WorkerPool, control_channel
from ferry.queue.connection import connect
from ferry.settings import Settings, environment, redacted_url, secret_environment

log = get_logger(__name__)

READY_TIMEOUT_SECONDS = 60.0
STOP_ORDER = ["proxy", WORKER_GROUP, "sink"]
# What the proxy needs of the secret settings (it delivers nothing).
PROXY_SECRETS = frozenset({"redis_url", "api_keys", "admin_api_keys"})


class StackRefused(Exception):
    """`ferry up` cannot start; the message says why in one line."""


@dataclass(frozen=True)
class UpOptions:
    workers: int = 2
    proxy_workers: int = 1
    sink_port: int = 8080
    base_metrics_port: int = 9100


@dataclass(frozen=True)
class Stack:
    """What the ready block tells the user."""

    proxy_url: str
    api_key: str
    ca_file: Path | None
    main_server_url: str
    sink_started: bool
    worker_metrics_ports: list[int]


def api_key_file(settings: Settings) -> Path:
    return settings.home / "api-key"


def known_api_key(settings: Settings) -> str | None:
    """FERRY_API_KEYS' first key, else the one `ferry up` keeps in FERRY_HOME/api-key, if any."""
    given = [key.strip() for key in settings.api_keys.get_secret_value().split(",") if key.strip()]
    if given:
        return given[0]
    path = api_key_file(settings)
    return path.read_text().strip() if path.is_file() else None


def api_key(settings: Settings) -> str:
    """The known key, or one made once and kept in FERRY_HOME/api-key."""
    if (known := known_api_key(settings)) is not None:
        return known
    path = api_key_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(secrets.token_urlsafe(32) + "\n")
    os.chmod(path, 0o600)
    return path.read_text().strip()


def check_ports_free(ports: dict[str, int]) -> None:
    for name, port in ports.items():
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                raise StackRefused(f"port {port} ({name}) is in use: is ferry already up?") from None


async def wait_listening(supervisor: Supervisor, name: str, port: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            process = supervisor.children[name].process
            if process is not None and process.returncode is not None:
                raise StackRefused(f"{name} exited with {process.returncode} at start; see its log above") from None
            if time.monotonic() > deadline:
                raise StackRefused(f"{name} did not listen on port {port} within {READY_TIMEOUT_SECONDS:.0f} s")
            await asyncio.sleep(0.1)


def ready_block(stack: Stack) -> str:
    cacert = f"--cacert {stack.ca_file} " if stack.ca_file else ""
    ports = stack.worker_metrics_ports
    metrics = f"http://127.0.0.1:{ports[0]}-{ports[-1]}/metrics" if ports else "(no workers)"
    curl = (
        f"curl -sS {cacert}-H 'Authorization: Bearer {stack.api_key}' -H 'Content-Type: application/json' "
        f"""-d '{{"hello": "ferry"}}' {stack.proxy_url}/api/v1/messages"""
    )
    sink = " (the reference sink: GET /stats counts what arrived)" if stack.sink_started else ""
    return "\n".join(
        [
            "",
            "ferry is up",
            f"  proxy         {stack.proxy_url}",
            f"  API key       {stack.api_key}",
            f"  CA file       {stack.ca_file or '(your own: PROXY_CERTFILE is set)'}",
            f"  main server   {stack.main_server_url}{sink}",
            f"  metrics       proxy {stack.proxy_url}/metrics, workers {metrics}",
            f"  send one      {curl}",
            "Ctrl-C stops everything gracefully; what is still queued is delivered by the next `ferry up`.",
            "",
        ]
    )


async def serve_stack(settings: Settings, redis_url: str, options: UpOptions) -> int:
    home = settings.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    settings = settings.model_copy(update={"home": home})
    key = api_key(settings)
    ca_file: Path | None = None
    if settings.proxy_certfile is None:
        tls = ensure_dev_tls(home)
        ca_file = tls.ca_file
        settings = settings.model_copy(update={"proxy_certfile": tls.cert_file, "proxy_keyfile": tls.key_file})
    start_sink = settings.main_server_url is None
    if start_sink:
        settings = settings.model_copy(
            update={
                "main_server_url": f"https://127.0.0.1:{options.sink_port}/webhook",
                "main_server_ca_file": ca_file or settings.main_server_ca_file,
            }
        )
    ports = {"PROXY_PORT": settings.proxy_port}
    if start_sink:
        ports["--sink-port"] = options.sink_port
    for number in range(options.workers):
        ports[f"worker-{number + 1} metrics"] = options.base_metrics_port + number
    check_ports_free(ports)

    metrics = SupervisorMetrics()
    supervisor = Supervisor(on_restart=lambda name: metrics.restarts.labels(name).inc())
    env = environment(settings) | {"FERRY_PROXY_WORKERS": str(options.proxy_workers)}
    proxy_secrets = secret_environment(settings, redis_url, PROXY_SECRETS) | {"FERRY_API_KEYS": key}
    stopping = asyncio.Event()
    platform.on_stop(stopping.set)
    pool = WorkerPool(supervisor, settings, redis_url, options.base_metrics_port, metrics)
    try:
        if start_sink:
            assert settings.proxy_certfile and settings.proxy_keyfile
            sink_argv = ferry_argv(
                "sink", "--port", str(options.sink_port), "--db", str(home / "sink.db"),
                "--certfile", str(settings.proxy_certfile), "--keyfile", str(settings.proxy_keyfile),
            )
            await supervisor.add(ChildSpec("sink", sink_argv, child_env(**env), "sink"))  # no secrets
            await wait_listening(supervisor, "sink", options.sink_port)
        await supervisor.add(ChildSpec("proxy", ferry_argv("proxy"), child_env(**env), "proxy", proxy_secrets))
        await wait_listening(supervisor, "proxy", settings.proxy_port)
        await pool.scale_to(options.workers)
    except StackRefused:
        await supervisor.stop_all(STOP_ORDER, pool.stop_timeout_seconds)
        raise
    print(
        ready_block(
            Stack(
                proxy_url=f"https://127.0.0.1:{settings.proxy_port}",
                api_key=key,
                ca_file=ca_file,
                main_server_url=redacted_url(settings.main_server_url or ""),
                sink_started=start_sink,
                worker_metrics_ports=pool.metrics_ports(),
            )
        ),
        flush=True,
    )
    redis = connect(redis_url)
    control = asyncio.create_task(control_channel(pool, redis).run())  # `ferry workers scale` works here too
    failed = asyncio.create_task(supervisor.all_failed.wait())
    await asyncio.wait([asyncio.create_task(stopping.wait()), failed], return_when=asyncio.FIRST_COMPLETED)
    log.info("stopping the stack")
    control.cancel()
    await asyncio.gather(control, return_exceptions=True)
    await supervisor.stop_all(STOP_ORDER, pool.stop_timeout_seconds)
    await redis.aclose()
    return 1 if failed.done() else 0


def run_stack(settings: Settings, options: UpOptions) -> int:
    configure(settings.log_level)
    redis_url, embedded = resolve_redis_url(settings)
    try:
        return asyncio.run(serve_stack(settings, redis_url, options))
    finally:
        if embedded is not None:
            embedded.stop()
