"""What every `ferry` command shares: the app, its groups, settings from flags, one-line failures."""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from ferry.settings import Settings, SettingsError, flag_help, forget_secret_environment, load_settings

if TYPE_CHECKING:
    from rich.console import Console

PIPED_WIDTH = 200  # a table's width when it goes to a file or a pipe

app = typer.Typer(
    name="ferry",
    help="A store-and-forward HTTPS message broker on Redis.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts say "[env NAME, default]"; that is no markup
)
workers_app = typer.Typer(help="Supervised worker processes (the guide's start_multiple_workers).", no_args_is_help=True)
app.add_typer(workers_app, name="workers")


def fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"ferry: {message}", err=True)
    raise typer.Exit(code)


def table_console() -> Console:
    """A console for tables: the terminal's width, or, piped or redirected, wide enough that
    no id or URL is cut (Rich would take 80 columns there); COLUMNS, when set, decides."""
    from rich.console import Console

    console = Console()
    if console.is_terminal or "COLUMNS" in os.environ:
        return console
    return Console(width=PIPED_WIDTH)


def exit_quietly_on_early_sigterm() -> None:
    """A SIGTERM while still starting (nothing claimed yet) ends the process cleanly, exit 0.

    The worker's own handlers take over once it runs; without this, a stop sent
    during start-up would kill it by the default action.
    """

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)


def settings_from(**flags: Any) -> Settings:
    """The command's settings; then the secret ones leave its environment, so that no
    process it starts inherits them (children get theirs through a pipe, or pickled)."""
    try:
        settings = load_settings(**flags)
    except SettingsError as error:
        fail(str(error))
    forget_secret_environment()
    return settings


def delivering_settings(who: str, **flags: Any) -> Settings:
    """Settings for a command that delivers: MAIN_SERVER_URL is required."""
    settings = settings_from(**flags)
    if settings.main_server_url is None:
        fail(f"invalid setting MAIN_SERVER_URL: required by {who} (where to deliver)")
    return settings


def level(log_level: str | None) -> str | None:
    return log_level.upper() if log_level else None


# Flags that set a setting: their help comes from the settings model, default included.
Concurrency = Annotated[int | None, typer.Option(help=flag_help("worker_concurrency"))]
RetryInterval = Annotated[float | None, typer.Option(help=flag_help("worker_retry_interval"))]
MaxAttempts = Annotated[int | None, typer.Option(help=flag_help("worker_max_attempts"))]
MainServerUrl = Annotated[str | None, typer.Option(help=flag_help("main_server_url"))]
RedisUrl = Annotated[str | None, typer.Option(help=flag_help("redis_url"))]
LogLevel = Annotated[str | None, typer.Option(help=flag_help("log_level"))]

AdminRedisUrl = Annotated[
    str | None, typer.Option(help="Redis URL (env REDIS_URL; unset: the embedded Valkey of FERRY_HOME, if it runs).")
]
