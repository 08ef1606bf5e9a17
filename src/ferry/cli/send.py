"""`ferry send`: one message from a terminal, to the proxy `ferry up` started unless told otherwise."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ferry.cli.common import app, fail, settings_from

EXIT_DEAD = 1  # stored, but dead, or not delivered within --timeout
EXIT_NOT_SENT = 2  # nothing stored: a usage error, the proxy unreachable, or its refusal


def _body(text: str | None, file: Path | None) -> bytes:
    """The body from exactly one source: the argument, `-` (stdin) or --file."""
    if (text is None) == (file is None):
        fail("give the body as an argument, `-` for stdin, or --file PATH (exactly one of them)")
    if file is not None:
        try:
            return file.read_bytes()
        except OSError as error:
            fail(f"cannot read {file}: {error.strerror or error}")
    assert text is not None
    return sys.stdin.buffer.read() if text == "-" else text.encode()


@app.command()
def send(
    body: Annotated[
        str | None, typer.Argument(help="The message body; `-` reads it from stdin.", show_default=False)
    ] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Read the body from this file.")] = None,
    content_type: Annotated[
        str | None,
        typer.Option(
            help="Content-Type [application/json when the body parses as JSON, text/plain; "
            "charset=utf-8 when it is other UTF-8 text, else application/octet-stream]."
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Sent again with the same key, the first message's id comes back.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the message until delivered (exit 0) or dead (1).")] = False,
    timeout: Annotated[float, typer.Option(min=0.0, help="With --wait: seconds before giving up (exit 1).")] = 60.0,
    url: Annotated[str | None, typer.Option(help="The proxy [https://127.0.0.1:$PROXY_PORT, as ferry up].")] = None,
    api_key: Annotated[
        str | None, typer.Option(help="[the first of FERRY_API_KEYS, else FERRY_HOME/api-key, as ferry up].")
    ] = None,
    ca_file: Annotated[
        Path | None, typer.Option(help="CA that signed the proxy's certificate [system store + FERRY_HOME/tls/ca.pem].")
    ] = None,
) -> None:
    """Send one message; print its id. Exit 0 when stored (with --wait: delivered), 1 when dead,
    not delivered within --timeout or no longer followed, 2 when nothing was stored (usage,
    connection, refusal)."""
    import asyncio

    from ferry.client import ClientError, ProxyClient, judge_content_type, ssl_context, target

    message = _body(body, file)
    settings = settings_from()
    try:
        proxy = target(settings, url, api_key, ca_file)
        context = ssl_context(ca_file, settings.home)
    except ClientError as error:
        fail(str(error))

    async def run() -> int:
        async with ProxyClient(proxy, context) as client:
            accepted = await client.send(message, content_type or judge_content_type(message), idempotency_key)
            typer.echo(accepted["id"])
            if not wait:
                return 0
            try:
                return _report(await client.wait(accepted["id"], timeout), timeout)
            except ClientError as error:  # stored all the same: not exit 2, which says "not stored"
                typer.echo(f"ferry: stored, but its status cannot be followed: {error}", err=True)
                return EXIT_DEAD

    try:
        code = asyncio.run(run())
    except ClientError as error:
        fail(str(error), EXIT_NOT_SENT)
    raise typer.Exit(code)


def _report(found: dict[str, Any], timeout: float) -> int:
    """One line on how the wait ended; the exit code."""
    attempts = found.get("attempts", 0)
    tries = f"{attempts} attempt{'' if attempts == 1 else 's'}"
    if found.get("status") == "delivered":
        typer.echo(f"delivered after {tries}")
        return 0
    error = found.get("last_error")
    if found.get("status") == "dead":
        typer.echo(f"ferry: dead after {tries}: {error or 'no error recorded'}", err=True)
    else:
        so_far = f"{tries}; last error: {error}" if error else tries
        typer.echo(f"ferry: still {found.get('status')} after {timeout:g} s ({so_far})", err=True)
    return EXIT_DEAD
