"""The files of one plan, in one folder: nginx, Prometheus, Grafana and Kubernetes.

`ferry deploy plan --write DIR` writes them for the load it was given; the repository's
deploy/ folder is the same for a large deployment with every setting at its default
(`ferry deploy examples deploy`), and a test fails when it drifts from what this writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ferry.deploy import grafana, kubernetes, nginx, prometheus
from ferry.deploy.plan import Plan, make_plan
from ferry.settings import Settings

EXAMPLE_MESSAGES_PER_DAY = 1_000_000  # a large deployment: every file has something to say


@dataclass(frozen=True)
class Paths:
    """Where the files the generated ones name live on the target machines."""

    certfile: Path = Path("/etc/ferry/tls/proxy.pem")
    keyfile: Path = Path("/etc/ferry/tls/proxy.key")
    ca_file: Path = Path("/etc/ferry/tls/ca.pem")
    api_key_file: Path | None = None
    image: str = kubernetes.Cluster.image


def contents(plan: Plan, settings: Settings, paths: Paths) -> dict[str, str]:
    """Each file's path (relative to the folder) and text."""
    base_port = settings.proxy_port
    layout = nginx.NginxLayout(
        certfile=paths.certfile, keyfile=paths.keyfile, upstream_ca=paths.ca_file,
        instances=plan.proxy_instances, base_port=base_port,
    )
    scrape = prometheus.Scrape(
        proxies=tuple(f"127.0.0.1:{base_port + index}" for index in range(plan.proxy_instances)),
        ca_file=paths.ca_file, api_key_file=paths.api_key_file,
    )
    origin = "ferry deploy plan --write"
    cluster = kubernetes.Cluster(
        image=paths.image, proxy_replicas=plan.proxy_instances, proxy_processes=plan.proxy_processes,
        workers=plan.workers, max_workers=max(plan.workers, plan.tier.workers[1]) * 2, concurrency=plan.concurrency,
    )
    return {
        "nginx/ferry.conf": nginx.server_blocks(layout, settings),
        f"prometheus/{prometheus.CONFIG_FILE}": prometheus.dump(prometheus.config(scrape), origin),
        f"prometheus/{prometheus.RULES_FILE}": prometheus.dump(prometheus.rules(), origin),
        "grafana/ferry-dashboard.json": grafana.render(),
        "kubernetes/ferry.yaml": kubernetes.render(cluster, settings),
    }


def write(directory: Path, plan: Plan, settings: Settings, paths: Paths) -> list[Path]:
    written = []
    for name, text in contents(plan, settings, paths).items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def examples() -> dict[str, str]:
    """The repository's deploy/ folder: a large deployment, every setting at its default
    (whatever the environment of the shell that makes them says)."""
    return contents(make_plan(EXAMPLE_MESSAGES_PER_DAY), Settings.model_construct(), Paths())
