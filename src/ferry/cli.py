"""The `ferry` command: flags become settings, then the library does the work."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from ferry.settings import Settings, SettingsError, flag_help, forget_secret_environment, load_settings

app = typer.Typer(
    name="ferry",
    help="A store-and-forward HTTPS message broker on Redis.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts say "[env NAME, default]"; that is no markup
)


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"ferry: {message}", err=True)
    raise typer.Exit(code)


def _exit_quietly_on_early_sigterm() -> None:
    """A SIGTERM while still starting (nothing claimed yet) ends the process cleanly, exit 0.

    The worker's own handlers take over once it runs; without this, a stop sent
    during start-up would kill it by the default action.
    """

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)


def _settings(**flags: Any) -> Settings:
    """The command's settings; then the secret ones leave its environment, so that no
    process it starts inherits them (children get theirs through a pipe, or pickled)."""
    try:
        settings = load_settings(**flags)
    except SettingsError as error:
        _fail(str(error))
    forget_secret_environment()
    return settings


def _delivering_settings(who: str, **flags: Any) -> Settings:
    """Settings for a command that delivers: MAIN_SERVER_URL is required."""
    settings = _settings(**flags)
    if settings.main_server_url is None:
        _fail(f"invalid setting MAIN_SERVER_URL: required by {who} (where to deliver)")
    return settings


def _level(log_level: str | None) -> str | None:
    return log_level.upper() if log_level else None


# Flags that set a setting: their help comes from the settings model, default included.
Concurrency = Annotated[int | None, typer.Option(help=flag_help("worker_concurrency"))]
RetryInterval = Annotated[float | None, typer.Option(help=flag_help("worker_retry_interval"))]
MaxAttempts = Annotated[int | None, typer.Option(help=flag_help("worker_max_attempts"))]
MainServerUrl = Annotated[str | None, typer.Option(help=flag_help("main_server_url"))]
RedisUrl = Annotated[str | None, typer.Option(help=flag_help("redis_url"))]
LogLevel = Annotated[str | None, typer.Option(help=flag_help("log_level"))]


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
    _exit_quietly_on_early_sigterm()
    from ferry.worker.worker import run_worker

    settings = _delivering_settings(
        "the worker",
        worker_concurrency=concurrency,
        worker_retry_interval=retry_interval,
        worker_max_attempts=max_attempts,
        worker_id=worker_id,
        worker_metrics_port=metrics_port,
        main_server_url=main_server_url,
        redis_url=redis_url,
        log_level=_level(log_level),
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

    settings = _settings(
        proxy_host=host,
        proxy_port=port,
        proxy_workers=workers,
        proxy_certfile=certfile,
        proxy_keyfile=keyfile,
        proxy_client_ca_file=client_ca,
        redis_url=redis_url,
        log_level=_level(log_level),
    )
    try:
        run_proxy(settings, insecure=insecure)
    except ProxyRefused as error:
        _fail(str(error))


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

    settings = _settings(log_level=_level(log_level))
    try:
        code = run_stack(settings, UpOptions(workers, proxy_workers, sink_port, base_metrics_port))
    except StackRefused as error:
        _fail(str(error))
    raise typer.Exit(code)


workers_app = typer.Typer(help="Supervised worker processes (the guide's start_multiple_workers).", no_args_is_help=True)
app.add_typer(workers_app, name="workers")


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

    settings = _delivering_settings(
        "the workers",
        worker_concurrency=concurrency,
        worker_retry_interval=retry_interval,
        worker_max_attempts=max_attempts,
        log_level=_level(log_level),
        main_server_url=main_server_url,
        redis_url=redis_url,
    )
    if autoscale and min_workers > max_workers:
        _fail("--min-workers must not exceed --max-workers")
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

    settings = _settings(log_level=_level(log_level))
    if (certfile is None) != (keyfile is None):
        _fail("--certfile and --keyfile go together")
    if client_ca is not None and certfile is None:
        _fail("--client-ca needs --certfile and --keyfile (mTLS is on top of TLS)")
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


# Dead-letter administration: thin commands over Queue.dead_letters, replay and purge.

dead = typer.Typer(
    help="Dead letters: list them, replay them to the main server, or purge them.",
    no_args_is_help=True,
)
app.add_typer(dead, name="dead")

AdminRedisUrl = Annotated[
    str | None, typer.Option(help="Redis URL (env REDIS_URL; unset: the embedded Valkey of FERRY_HOME, if it runs).")
]
DeadIds = Annotated[list[str] | None, typer.Argument(help="Ids of dead letters.", show_default=False)]
AllDead = Annotated[bool, typer.Option("--all", help="Every dead letter.")]
MAX_ERROR_CHARS = 100


def _selection(ids: list[str] | None, all_: bool) -> list[str]:
    """The ids given, or [] with --all: exactly one of the two, or a usage error."""
    if bool(ids) == all_:
        _fail("give dead-letter ids or --all (exactly one of them)")
    return ids or []


def _age(seconds: float) -> str:
    """3s, 5m, 2h, 4d: enough to tell a fresh death from an old one."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _one_line(text: str | None, limit: int = MAX_ERROR_CHARS) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _report_not_dead(not_dead: tuple[str, ...]) -> None:
    """Ids that were not dead letters (a typo, or replayed meanwhile): said, and exit 1."""
    if not_dead:
        typer.echo(f"not dead letters, left alone: {' '.join(not_dead)}", err=True)
        raise typer.Exit(1)


@dead.command("list")
def dead_list(
    limit: Annotated[int, typer.Option(min=1, help="How many to show.")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="How many of the most recent to skip.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="JSON, as the admin API answers.")] = False,
    redis_url: AdminRedisUrl = None,
) -> None:
    """The dead letters, the most recently dead first: id, attempts, age, last error."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from ferry.processes.redis_url import NoRedis, run_on_queue
    from ferry.proxy.schemas import DeadLetterPage
    from ferry.queue import Queue
    from ferry.queue.message import DeadLetter

    async def read(queue: Queue) -> tuple[list[DeadLetter], int]:
        return await queue.dead_letters(limit, offset), await queue.dead_size()

    settings = _settings(redis_url=redis_url)
    try:
        letters, total = run_on_queue(settings, read)
    except NoRedis as error:
        _fail(str(error))
    if as_json:
        typer.echo(DeadLetterPage.of(letters, total, limit, offset).model_dump_json(indent=2))
        return
    if not letters:
        typer.echo("no dead letters" if total == 0 else f"no dead letters past {offset} (of {total})")
        return
    table = Table(caption=f"{len(letters)} of {total} dead letters, the most recently dead first")
    # Ids are never cut (they are what replay and purge take); on a narrow terminal
    # the error column gives way, each error cut to one line.
    table.add_column("id", no_wrap=True)
    table.add_column("attempts", justify="right", no_wrap=True)
    table.add_column("age", justify="right", no_wrap=True)
    table.add_column("last error")
    for letter in letters:
        # Text, not a string: an error that contains [brackets] is not Rich markup.
        last_error = Text(_one_line(letter.last_error), no_wrap=True, overflow="ellipsis")
        table.add_row(letter.id, str(letter.attempts), _age(letter.age_seconds()), last_error)
    Console().print(table)


@dead.command("replay")
def dead_replay(ids: DeadIds = None, all_: AllDead = False, redis_url: AdminRedisUrl = None) -> None:
    """Put dead letters back on the queue with their attempts reset: the ids given, or --all."""
    from ferry.processes.redis_url import NoRedis, run_on_queue

    given = _selection(ids, all_)
    settings = _settings(redis_url=redis_url)
    try:
        handled = run_on_queue(settings, lambda queue: queue.replay_all() if all_ else queue.replay(given))
    except NoRedis as error:
        _fail(str(error))
    typer.echo(f"replayed {handled.count} dead letter{'' if handled.count == 1 else 's'}")
    _report_not_dead(handled.not_dead)


@dead.command("purge")
def dead_purge(
    ids: DeadIds = None,
    all_: AllDead = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask (needed when not on a terminal).")] = False,
    redis_url: AdminRedisUrl = None,
) -> None:
    """Delete dead letters and their bodies for good: the ids given, or --all."""
    import sys

    from ferry.processes.redis_url import NoRedis, run_on_queue

    given = _selection(ids, all_)
    settings = _settings(redis_url=redis_url)
    if not yes and not sys.stdin.isatty():
        _fail("refusing to purge without --yes: there is no terminal to ask for confirmation")
    try:
        if not yes:
            count = run_on_queue(settings, lambda queue: queue.dead_size()) if all_ else len(given)
            typer.confirm(f"Delete {count} dead letter(s) and their bodies for good?", abort=True)
        handled = run_on_queue(settings, lambda queue: queue.purge(None if all_ else given))
    except NoRedis as error:
        _fail(str(error))
    typer.echo(f"purged {handled.count} dead letter{'' if handled.count == 1 else 's'}")
    _report_not_dead(handled.not_dead)
