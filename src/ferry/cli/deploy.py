"""`ferry deploy ...`: the guide's production layouts as ready files (ferry.deploy makes them)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ferry.cli.common import app, fail, settings_from

deploy = typer.Typer(
    help="Ready files for production layouts: nginx, Prometheus, Grafana, Kubernetes, and a plan.",
    no_args_is_help=True,
)
app.add_typer(deploy, name="deploy")

Output = Annotated[Path | None, typer.Option(help="Write here instead of standard output.")]


def _emit(text: str, output: Path | None) -> None:
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
    except OSError as error:
        fail(f"cannot write {output}: {error.strerror}")
    typer.echo(f"wrote {output}", err=True)


@deploy.command()
def nginx(
    upstream_ca: Annotated[
        Path, typer.Option(help="CA that signed the instances' certificates: nginx verifies them with it.")
    ],
    instances: Annotated[int, typer.Option(min=1, max=1000, help="Proxy instances behind nginx.")] = 3,
    base_port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port of the first instance [PROXY_PORT].")] = None,
    upstream_host: Annotated[str, typer.Option(help="Host the instances listen on.")] = "127.0.0.1",
    upstream_name: Annotated[
        str, typer.Option(help="Name in the instances' certificates [localhost for a loopback host, else the host].")
    ] = "",
    listen: Annotated[str, typer.Option(help="nginx's listen address: port or host:port.")] = "443",
    server_name: Annotated[str, typer.Option(help="nginx's server_name.")] = "_",
    certfile: Annotated[Path | None, typer.Option(help="nginx's TLS certificate [PROXY_CERTFILE].")] = None,
    keyfile: Annotated[Path | None, typer.Option(help="nginx's TLS private key [PROXY_KEYFILE].")] = None,
    output: Output = None,
    standalone: Annotated[
        Path | None,
        typer.Option(help="Write DIR/nginx.conf, a whole configuration for `nginx -p DIR -c DIR/nginx.conf`."),
    ] = None,
) -> None:
    """nginx with least_conn in front of the proxy instances (the guide's "Nginx Load Balancer")."""
    from ferry.deploy.nginx import NginxLayout, server_blocks, write_standalone

    settings = settings_from()
    certfile = certfile or settings.proxy_certfile
    keyfile = keyfile or settings.proxy_keyfile
    if certfile is None or keyfile is None:
        fail("give --certfile and --keyfile (or PROXY_CERTFILE and PROXY_KEYFILE): nginx serves TLS")
    if output is not None and standalone is not None:
        fail("give --output or --standalone, not both")
    base = base_port or settings.proxy_port
    if base + instances - 1 > 65535:
        fail(f"--instances {instances} from --base-port {base} runs past port 65535")
    layout = NginxLayout(
        certfile=certfile.absolute(),
        keyfile=keyfile.absolute(),
        upstream_ca=upstream_ca.absolute(),
        instances=instances,
        base_port=base,
        upstream_host=upstream_host,
        upstream_name=upstream_name,
        listen=listen,
        server_name=server_name,
    )
    if standalone is not None:
        try:
            path = write_standalone(layout, settings, standalone)
        except OSError as error:
            fail(f"cannot write into {standalone}: {error.strerror}")
        typer.echo(f"wrote {path}; run: nginx -p {path.parent.resolve()} -c {path.resolve()}", err=True)
        return
    _emit(server_blocks(layout, settings), output)
