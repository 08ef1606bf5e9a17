"""`ferry verify`: the guide's verify_load_balancing.ps1 (-CheckWorkers, -CheckQueue, -CheckProxy, -All)."""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ferry.adapters.typer import OwnUsageErrors
from ferry.cli.common import AdminRedisUrl, app, fail, table_console

if TYPE_CHECKING:
    from ferry.observe.verify import Report, VerifyOptions
    from ferry.settings import Settings


class VerifyCommand(OwnUsageErrors):
    """With --json, a usage error is one JSON document on stdout too (exit 2), as every outcome is."""

    @staticmethod
    def on_usage_error(args: list[str], message: str) -> bool:
        if "--json" not in args:
            return False
        document = {"ok": False, "exit_code": 2, "error": {"code": "usage", "message": message}}
        typer.echo(json.dumps(document, indent=2))
        typer.echo(f"ferry: {message}", err=True)
        return True


def parse_ports(text: str) -> list[int]:
    """`9100-9109`, `9100,9105` or a mix; `none` for no cross-check."""
    if text.strip().lower() in {"", "none"}:
        return []
    ports: list[int] = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError(f"--metrics-ports: {part.strip()!r} is not a port or a range like 9100-9109")
        first, last = int(low), int(high or low)
        if not 1 <= first <= last <= 65535:
            raise ValueError(f"--metrics-ports: {part.strip()!r} is not within 1-65535")
        ports += range(first, last + 1)
    return sorted(set(ports))


@app.command(cls=VerifyCommand)
def verify(
    check_workers: Annotated[bool, typer.Option("--check-workers", help="Workers: registered, answering, even, sized.")] = False,
    check_queue: Annotated[bool, typer.Option("--check-queue", help="Queue: size bands, growth, rates, oldest message.")] = False,
    check_proxy: Annotated[bool, typer.Option("--check-proxy", help="Proxies: health, p95 under 1 s, errors.")] = False,
    all_: Annotated[bool, typer.Option("--all", help="Every check (also when none is named).")] = False,
    sample_duration: Annotated[float, typer.Option(help="Seconds to sample before judging.")] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document, whatever the outcome.")] = False,
    proxy_url: Annotated[
        list[str] | None,
        typer.Option(help="A proxy to check (repeatable; default https://127.0.0.1:$PROXY_PORT with TLS, else http)."),
    ] = None,
    ca_file: Annotated[
        Path | None, typer.Option(help="CA that verifies the proxies (default: ferry up's in FERRY_HOME, else the system's).")
    ] = None,
    metrics_ports: Annotated[
        str | None,
        typer.Option(help="Worker metrics ports to cross-check with the registry (default: WORKER_METRICS_PORT "
                     "and the 9 after it, the guide's 9100-9109; 'none': no cross-check)."),
    ] = None,
    max_oldest_age: Annotated[float, typer.Option(help="Seconds the next message in line may wait.")] = 300.0,
    cert_days: Annotated[float, typer.Option(help="Warn when the main server's certificate expires within these days.")] = 14.0,
    redis_url: AdminRedisUrl = None,
) -> None:
    """Sample the system for --sample-duration seconds and judge it: exit 0 when every check passes, 1 when one fails, 2 when it cannot judge."""
    from ferry.observe.verify import Report, VerifyError, VerifyOptions
    from ferry.settings import SettingsError, forget_secret_environment, load_settings

    everything = all_ or not (check_workers or check_queue or check_proxy)
    options = VerifyOptions(
        check_workers=check_workers or everything,
        check_queue=check_queue or everything,
        check_proxy=check_proxy or everything,
        sample_duration_seconds=sample_duration,
        proxy_urls=proxy_url or [],
        ca_file=ca_file,
        max_oldest_age_seconds=max_oldest_age,
        cert_days=cert_days,
    )
    try:
        try:
            ports = None if metrics_ports is None else parse_ports(metrics_ports)
            settings = load_settings(redis_url=redis_url)
        except (ValueError, SettingsError) as error:
            raise VerifyError("usage", str(error)) from None
        forget_secret_environment()
        options = replace(options, metrics_ports=ports)
        report = asyncio.run(_run(settings, options, show_progress=not as_json))
    except VerifyError as error:
        if as_json:
            typer.echo(Report.failed(options, error).model_dump_json(indent=2))
            raise typer.Exit(2) from None
        fail(str(error))
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
    else:
        from ferry.observe.report import print_report

        print_report(report, table_console())
    raise typer.Exit(report.exit_code)


async def _run(settings: Settings, options: VerifyOptions, show_progress: bool) -> Report:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from ferry.observe.verify import verify

    console = Console(stderr=True)
    if not (show_progress and console.is_terminal and sys.stderr.isatty()):
        return await verify(settings, options, lambda elapsed: None)
    with Progress(TextColumn("sampling"), BarColumn(), TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("sampling", total=options.sample_duration_seconds)
        return await verify(settings, options, lambda elapsed: bar.update(task, completed=elapsed))
