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
        root = path.parent.resolve()
        typer.echo(f"wrote {path}; run: nginx -p {root} -c {root / 'nginx.conf'} -e {root / 'logs' / 'error.log'}", err=True)
        return
    _emit(server_blocks(layout, settings), output)


@deploy.command()
def prometheus(
    output_dir: Annotated[Path, typer.Option(help="Where prometheus.yml and ferry-rules.yml go.")] = Path("."),
    proxy: Annotated[
        list[str] | None, typer.Option(help="host:port of a proxy instance (repeat it) [127.0.0.1:PROXY_PORT].")
    ] = None,
    scheme: Annotated[str, typer.Option(help="https, or http for proxies without TLS.")] = "https",
    ca_file: Annotated[Path | None, typer.Option(help="CA that verifies the proxies' certificates [the system's].")] = None,
    api_key_file: Annotated[
        Path | None, typer.Option(help="File holding an API key, for proxies with FERRY_HEALTH_METRICS_NEED_KEY.")
    ] = None,
    oldest_age_limit: Annotated[
        float, typer.Option(min=1, help="Seconds the next queued message may wait before an alert.")
    ] = 600.0,
) -> None:
    """Prometheus: the proxies scraped, the workers found through the proxy's /api/v1/sd/workers,
    and the guide's thresholds as alert rules (check them with promtool)."""
    from ferry.deploy.prometheus import Scrape, Thresholds, write

    settings = settings_from()
    if scheme not in ("http", "https"):
        fail("--scheme must be http or https")
    scrape = Scrape(
        proxies=tuple(proxy or [f"127.0.0.1:{settings.proxy_port}"]),
        scheme=scheme,
        ca_file=ca_file.absolute() if ca_file else None,
        api_key_file=api_key_file.absolute() if api_key_file else None,
    )
    try:
        written = write(output_dir, scrape, Thresholds(oldest_age_seconds=oldest_age_limit))
    except OSError as error:
        fail(f"cannot write into {output_dir}: {error.strerror}")
    for path in written:
        typer.echo(f"wrote {path}", err=True)


@deploy.command()
def grafana(output: Output = None) -> None:
    """A Grafana dashboard (JSON, import it as is) with the guide's per-worker and system panels."""
    from ferry.deploy.grafana import render

    _emit(render(), output)


@deploy.command()
def kubernetes(
    image: Annotated[str, typer.Option(help="The container image with ferry installed.")] = "",
    namespace: Annotated[str, typer.Option(help="Namespace of every object.")] = "ferry",
    proxy_replicas: Annotated[int, typer.Option(min=1, help="Proxy pods.")] = 2,
    workers: Annotated[int, typer.Option(min=1, help="Worker pods at least (KEDA's minReplicaCount).")] = 2,
    max_workers: Annotated[int, typer.Option(min=1, help="Worker pods at most (KEDA's maxReplicaCount).")] = 10,
    trusted_proxies: Annotated[str, typer.Option(help="FERRY_TRUSTED_PROXIES of the proxy pods: the ingress's network.")] = "10.0.0.0/8",
    output: Output = None,
) -> None:
    """Kubernetes: proxy and worker Deployments, and a KEDA ScaledObject on the Redis list."""
    from ferry.deploy.kubernetes import Cluster, render

    settings = settings_from()
    if max_workers < workers:
        fail("--max-workers must be at least --workers")
    cluster = Cluster(
        image=image or Cluster.image, namespace=namespace, proxy_replicas=proxy_replicas, proxy_processes=settings.proxy_workers,
        workers=workers, max_workers=max_workers, concurrency=settings.worker_concurrency, trusted_proxies=trusted_proxies,
    )
    _emit(render(cluster, settings), output)


@deploy.command()
def plan(
    messages_per_day: Annotated[float, typer.Option(min=0, help="Messages a day you expect.")],
    peak_per_second: Annotated[
        float | None, typer.Option(min=0, help="The busiest second's messages [10x the day's average].")
    ] = None,
    per_worker_rate: Annotated[
        float | None, typer.Option(min=0.001, help="Messages one worker delivers a second, as ferry verify measured.")
    ] = None,
    verify_json: Annotated[
        Path | None, typer.Option(help="A `ferry verify --check-workers --json` document to take that rate from.")
    ] = None,
    write: Annotated[
        Path | None, typer.Option(help="Write the plan's nginx, Prometheus, Grafana and Kubernetes files here.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The plan as JSON.")] = False,
) -> None:
    """The guide's Small / Medium / Large recommendations for your load: workers, concurrency,
    proxy instances and processes, load balancer, monitoring."""
    import json

    from ferry.deploy import files
    from ferry.deploy.plan import describe, make_plan, measured_rate

    settings = settings_from()
    if per_worker_rate is not None and verify_json is not None:
        fail("give --per-worker-rate or --verify-json, not both")
    if verify_json is not None:
        try:
            per_worker_rate = measured_rate(verify_json)
        except (OSError, ValueError) as error:
            fail(f"cannot read {verify_json}: {error}")
        if per_worker_rate is None:
            fail(f"{verify_json} holds no measured per-worker rate (run ferry verify --check-workers under load)")
    result = make_plan(messages_per_day, peak_per_second, per_worker_rate)
    typer.echo(json.dumps(result.as_json(), indent=2) if as_json else describe(result), nl=as_json)
    if write is not None:
        try:
            written = files.write(write, result, settings, files.Paths())
        except OSError as error:
            fail(f"cannot write into {write}: {error.strerror}")
        for path in written:
            typer.echo(f"wrote {path}", err=True)


@deploy.command()
def examples(
    directory: Annotated[Path, typer.Argument(help="The folder to write (the repository's deploy/).")] = Path("deploy"),
) -> None:
    """The example files of the repository's deploy/ folder: a large deployment, defaults throughout."""
    from ferry.deploy.files import examples as example_files

    for name, text in example_files().items():
        _emit(text, directory / name)
