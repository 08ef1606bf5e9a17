"""Dead-letter administration: thin commands over Partitions.dead_letters, replay and purge."""

from __future__ import annotations

from typing import Annotated

import typer

from ferry.cli.common import AdminRedisUrl, app, fail, settings_from, table_console

dead = typer.Typer(
    help="Dead letters: list them, replay them to the main server, or purge them.",
    no_args_is_help=True,
)
app.add_typer(dead, name="dead")

DeadIds = Annotated[list[str] | None, typer.Argument(help="Ids of dead letters.", show_default=False)]
AllDead = Annotated[bool, typer.Option("--all", help="Every dead letter.")]
MAX_ERROR_CHARS = 100


def _selection(ids: list[str] | None, all_: bool) -> list[str]:
    """The ids given, or [] with --all: exactly one of the two, or a usage error."""
    if bool(ids) == all_:
        fail("give dead-letter ids or --all (exactly one of them)")
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
    from rich.table import Table
    from rich.text import Text

    from ferry.processes.redis_url import NoRedis, run_on_queue
    from ferry.proxy.schemas import DeadLetterPage
    from ferry.queue import Partitions
    from ferry.queue.message import DeadLetter

    async def read(queue: Partitions) -> tuple[list[DeadLetter], int]:
        return await queue.dead_letters(limit, offset), await queue.dead_size()

    settings = settings_from(redis_url=redis_url)
    try:
        letters, total = run_on_queue(settings, read)
    except NoRedis as error:
        fail(str(error))
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
    table_console().print(table)


@dead.command("replay")
def dead_replay(ids: DeadIds = None, all_: AllDead = False, redis_url: AdminRedisUrl = None) -> None:
    """Put dead letters back on the queue with their attempts reset: the ids given, or --all."""
    from ferry.processes.redis_url import NoRedis, run_on_queue

    given = _selection(ids, all_)
    settings = settings_from(redis_url=redis_url)
    try:
        handled = run_on_queue(settings, lambda queue: queue.replay_all() if all_ else queue.replay(given))
    except NoRedis as error:
        fail(str(error))
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
    settings = settings_from(redis_url=redis_url)
    if not yes and not sys.stdin.isatty():
        fail("refusing to purge without --yes: there is no terminal to ask for confirmation")
    try:
        if not yes:
            count = run_on_queue(settings, lambda queue: queue.dead_size()) if all_ else len(given)
            typer.confirm(f"Delete {count} dead letter(s) and their bodies for good?", abort=True)
        handled = run_on_queue(settings, lambda queue: queue.purge(None if all_ else given))
    except NoRedis as error:
        fail(str(error))
    typer.echo(f"purged {handled.count} dead letter{'' if handled.count == 1 else 's'}")
    _report_not_dead(handled.not_dead)
