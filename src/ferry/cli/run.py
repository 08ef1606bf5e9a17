"""The commands that run ferry's processes: worker, proxy, up, workers start, sink."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ferry.cli.common import (
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
from ferry.settings import flag_help


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
    raise typer.Exit(run_worker(settings))


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
        run_proxy(settings, insecure=insecure)
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

    settings = settings_from(log_level=level(log_level))
    try:
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
    autoscale: Annotated[bool, typer.Option(help="Scale on queue size and growth.")] = False,
    min_workers: Annotated[int, typer.Option(min=0, help="Autoscaling floor.")] = 1,
    max_workers: Annotated[int, typer.Option(min=1, help="Autoscaling ceiling.")] = 10,
    scale_up_queue: Annotated[int, typer.Option(help="Queue size that adds a worker.")] = 1000,
    scale_down_after: Annotated[float, typer.Option(help="Seconds of empty queue that remove a worker.")] = 60.0,
    scale_cooldown: Annotated[float, typer.Option(help="Seconds between two scaling steps.")] = 30.0,
    autoscale_interval: Annotated[float, typer.Option(help="Seconds between looks at the queue.")] = 5.0,
    metrics_port: Annotated[int, typer.Option(help="The supervisor's own /metrics (0: off).")] = 0,
    main_server_url: MainServerUrl = None,
    redis_url: RedisUrl = None,
) -> None:
    """Start N workers, restart crashed ones, scale with SIGTTIN/SIGTTOU or --autoscale; SIGTERM drains all."""
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
    policy = (
        AutoscalePolicy(
            min_workers=min_workers,
            max_workers=max_workers,
            scale_up_queue=scale_up_queue,
            scale_down_after_seconds=scale_down_after,
            cooldown_seconds=scale_cooldown,
            interval_seconds=autoscale_interval,
        )
        if autoscale
        else None
    )
    raise typer.Exit(run_workers(settings, num_workers, base_metrics_port, policy, metrics_port))


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
    from ferry.sink import SinkConfig, run

    settings = settings_from(log_level=level(log_level))
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

