"""`ferry dashboard`: the proxy's live page, served on loopback from Redis alone."""

from __future__ import annotations

import secrets
import socket
from typing import Annotated

import typer

from ferry.cli.common import AdminRedisUrl, app, fail, settings_from

DEFAULT_PORT = 8050  # beside the proxy's 8001 and the sink's 8080; workers' metrics are 9100+


@app.command()
def dashboard(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port on 127.0.0.1 (loopback only).")] = DEFAULT_PORT,
    redis_url: AdminRedisUrl = None,
) -> None:
    """The live dashboard on http://127.0.0.1:PORT/dashboard, read from Redis (no proxy needed).
    The page asks for a key of FERRY_ADMIN_API_KEYS; when none is set, one is made for this run
    and printed here."""
    import uvicorn

    from ferry.logs import configure
    from ferry.observe.dashboard import PAGE, standalone_app
    from ferry.processes.redis_url import NoRedis, running_redis_url
    from ferry.proxy.auth import ApiKeys, key_hash

    settings = settings_from(redis_url=redis_url)
    try:
        url = running_redis_url(settings)
    except NoRedis as error:
        fail(str(error))
    admin_keys = ApiKeys.admin_from_settings(settings)
    made_key = None
    if admin_keys is None:
        made_key = secrets.token_urlsafe(24)
        admin_keys = ApiKeys([key_hash(made_key)])
    listening = socket.socket()
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind(("127.0.0.1", port))
    except OSError as error:
        fail(f"cannot listen on 127.0.0.1:{port}: {error.strerror or error}")
    configure(settings.log_level)
    server = uvicorn.Server(uvicorn.Config(standalone_app(url, admin_keys), log_level="warning", log_config=None))
    typer.echo(f"ferry dashboard on http://127.0.0.1:{port}{PAGE}")
    if made_key is not None:
        typer.echo(f"  admin key  {made_key} (FERRY_ADMIN_API_KEYS is unset: this key holds for this run only)")
    typer.echo("Ctrl-C stops it.")
    server.run(sockets=[listening])
