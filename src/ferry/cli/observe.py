"""What runs, and how the queue keeps up: `ferry workers list` and `ferry queue watch`.

Both read Redis alone (the worker registry and the queue's counters), so they see
every worker and every proxy on every host, wherever they are run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from ferry.cli.common import AdminRedisUrl, app, fail, settings_from, table_console, workers_app

if TYPE_CHECKING:
    from collections.abc import Callable

    from ferry.observe import Reading, WorkerRecord
    from ferry.queue import Partitions

queue_app = typer.Typer(help="The queue: watch it grow or drain (the guide's LLEN loop).", no_args_is_help=True)
app.add_typer(queue_app, name="queue")

AsJson = Annotated[bool, typer.Option("--json", help="JSON instead of text.")]
# --once measures its rates over this window (or --interval, if shorter): long enough
# for a busy queue's counters to move, short enough for a script to wait for.
FIRST_WINDOW_SECONDS = 1.0


def duration(seconds: float) -> str:
    """0.4s, 42s, 5m03s, 2h15m, 3d4h: short, and exact where it matters (a heartbeat's age)."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600}h"


@workers_app.command("list")
def workers_list(as_json: AsJson = False, redis_url: AdminRedisUrl = None) -> None:
    """Every registered worker on every host: id, host, pid, metrics URL, concurrency,
    active deliveries, messages processed and the age of its last heartbeat."""
    from pydantic import TypeAdapter

    from ferry.observe import WorkerRecord, registered_workers
    from ferry.processes.redis_url import NoRedis, run_on_queue

    settings = settings_from(redis_url=redis_url)
    try:
        workers = run_on_queue(settings, registered_workers)
    except NoRedis as error:
        fail(str(error))
    if as_json:
        typer.echo(TypeAdapter(list[WorkerRecord]).dump_json(workers, indent=2).decode())
    elif not workers:
        typer.echo("no workers registered (none runs on this queue, or none has sent a heartbeat yet)")
    else:
        _print_workers(workers)


def _print_workers(workers: list[WorkerRecord]) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    hosts = len({worker.host for worker in workers})
    caption = f"{len(workers)} worker{'s' * (len(workers) != 1)} on {hosts} host{'s' * (hosts != 1)}"
    # Light borders, short headings, and names that fold rather than lose their ends.
    table = Table(caption=caption, box=box.SIMPLE_HEAD)
    for name in ("id", "host", "pid", "metrics URL", "conc", "active", "processed", "heartbeat"):
        if name in ("id", "host", "metrics URL"):
            table.add_column(name, overflow="fold")
        else:
            table.add_column(name, justify="right", no_wrap=True)
    for worker in workers:
        # Text, not strings: an id with [brackets] is not Rich markup.
        table.add_row(
            Text(worker.id),
            Text(worker.host),
            str(worker.pid),
            Text(worker.metrics_url or "-"),
            str(worker.concurrency),
            str(worker.active),
            f"{worker.processed:,}",
            duration(worker.heartbeat_age_seconds) + " ago",
        )
    table_console().print(table)


@queue_app.command("watch")
def queue_watch(
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between readings.")] = 5.0,
    once: Annotated[bool, typer.Option("--once", help=f"One reading (rates over {FIRST_WINDOW_SECONDS:g} s), then exit.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document a reading (a line each).")] = False,
    redis_url: AdminRedisUrl = None,
) -> None:
    """The queue every --interval seconds until Ctrl-C: size, messages in and out per
    second (every proxy and worker), the oldest message's age, retries scheduled,
    dead letters, messages in flight and registered workers; with partitions, each
    one's size too (partition 0 first)."""
    from ferry.processes.redis_url import NoRedis, run_on_queue

    settings = settings_from(redis_url=redis_url)
    show = _print_json if as_json else _print_line
    try:
        run_on_queue(settings, lambda queue: _watch(queue, interval, once, show))
    except NoRedis as error:
        fail(str(error))
    except KeyboardInterrupt:  # Ctrl-C is how a watch ends
        raise typer.Exit(0) from None


async def _watch(queue: Partitions, interval: float, once: bool, show: Callable[[Reading], None]) -> None:
    import asyncio
    import time

    from ferry.observe import Reading, take_snapshot
    from ferry.queue.errors import RedisUnavailable

    older = await take_snapshot(queue)  # a first failure ends the command: wrong URL, no server
    await asyncio.sleep(min(interval, FIRST_WINDOW_SECONDS))
    failing = False
    while True:
        started = time.monotonic()
        try:
            newer = await take_snapshot(queue)
        except RedisUnavailable as error:  # a watch outlives a restart of Redis
            if not failing:
                typer.echo(f"ferry: Redis does not answer, still trying: {error}", err=True)
            failing = True
        else:
            if failing:
                typer.echo("ferry: Redis answers again", err=True)
            failing = False
            show(Reading.of(older, newer))
            older = newer
        if once:
            return
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))


def _print_json(reading: Reading) -> None:
    typer.echo(reading.model_dump_json())


def _print_line(reading: Reading) -> None:
    import time

    figures, rates = reading.queue, reading.rates
    typer.echo(
        f"{time.strftime('%H:%M:%S', time.localtime(reading.taken_at))}"
        f"  size {figures.size:,}"
        f"  in {rates.enqueued_per_second:,.1f}/s"
        f"  out {rates.delivered_per_second:,.1f}/s"
        f"  oldest {duration(figures.oldest_age_seconds)}"
        f"  retrying {figures.retry_scheduled:,}"
        f"  dead {figures.dead_letters:,}"
        f"  in flight {figures.in_flight:,}"
        f"  workers {len(reading.workers)}"
        + _partitions(figures.partition_sizes)
    )


def _partitions(sizes: list[int]) -> str:
    """Each partition's backlog, when there is more than one: `  partitions 12/9/10`."""
    return f"  partitions {'/'.join(f'{size:,}' for size in sizes)}" if len(sizes) > 1 else ""
