"""Kubernetes manifests: the proxy and the workers as Deployments, and KEDA scaling the
workers on the Redis list (the guide's "Auto-scaling: Scale workers based on queue size").

Settings reach the pods by their environment names, taken from the settings model, so a
renamed setting changes the manifests too. Secrets are referred to, never written: the
manifests expect a Secret `ferry-secrets` (REDIS_URL, MAIN_SERVER_URL, FERRY_API_KEYS: the
pods' environment), a Secret `ferry-keda-redis` (`address`, `password`: KEDA's, kept
out of the pods) and a TLS Secret `ferry-proxy-tls`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ferry import __version__
from ferry.deploy.prometheus import QUEUE_BACKLOG
from ferry.deploy.text import yaml_text
from ferry.queue.keys import Keys, partition_names
from ferry.settings import Settings, env_name

SECRET = "ferry-secrets"
TLS_SECRET = "ferry-proxy-tls"
KEDA_SECRET = "ferry-keda-redis"
TLS_DIR = "/etc/ferry/tls"
METRICS_PORT_NAME = "metrics"


@dataclass(frozen=True)
class Cluster:
    """What the manifests say that a plan decides (`ferry deploy plan`)."""

    image: str = f"ferry:{__version__}"
    namespace: str = "ferry"
    proxy_replicas: int = 2
    proxy_processes: int = 4
    workers: int = 2
    max_workers: int = 10
    concurrency: int = 4
    trusted_proxies: str = "10.0.0.0/8"  # the cluster's pod network, where the ingress runs


def _env(values: dict[str, Any]) -> dict[str, str]:
    """Environment variables by the settings' own names (env_name: a KeyError if one was renamed)."""
    return {env_name(field): str(value).lower() if isinstance(value, bool) else str(value) for field, value in values.items()}


def config_map(cluster: Cluster, settings: Settings) -> dict[str, Any]:
    data = _env({
        "proxy_host": "0.0.0.0",
        "proxy_port": settings.proxy_port,
        "proxy_workers": cluster.proxy_processes,
        "trusted_proxies": cluster.trusted_proxies,
        "worker_concurrency": cluster.concurrency,
        "worker_retry_interval": settings.worker_retry_interval,
        "worker_max_attempts": settings.worker_max_attempts,
        "worker_metrics_port": settings.worker_metrics_port,
        "metrics_host": "0.0.0.0",  # Prometheus scrapes the pods from elsewhere
        "lease_seconds": settings.lease_seconds,
        "log_level": settings.log_level,
    })
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta("ferry-config", cluster), "data": data}


def _meta(name: str, cluster: Cluster, component: str | None = None) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "ferry", **({"app.kubernetes.io/component": component} if component else {})}
    return {"name": name, "namespace": cluster.namespace, "labels": labels}


def _container(name: str, cluster: Cluster, command: list[str], ports: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": cluster.image,
        "command": command,
        "envFrom": [{"configMapRef": {"name": "ferry-config"}}, {"secretRef": {"name": SECRET}}],
        "ports": ports,
        **more,
    }


def _deployment(name: str, cluster: Cluster, replicas: int, pod: dict[str, Any]) -> dict[str, Any]:
    selector = {"app.kubernetes.io/name": "ferry", "app.kubernetes.io/component": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(f"ferry-{name}", cluster, name),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": selector}, "spec": pod},
        },
    }


def proxy_deployment(cluster: Cluster, settings: Settings) -> dict[str, Any]:
    port = settings.proxy_port
    health = {"path": "/api/v1/health", "port": port, "scheme": "HTTPS"}
    # The certificate is the proxy pods' alone: a worker given these would look for the files.
    tls = _env({"proxy_certfile": f"{TLS_DIR}/tls.crt", "proxy_keyfile": f"{TLS_DIR}/tls.key"})
    container = _container(
        "proxy", cluster, ["ferry", "proxy"], [{"name": "https", "containerPort": port}],
        env=[{"name": name, "value": value} for name, value in tls.items()],
        readinessProbe={"httpGet": health, "periodSeconds": 5, "failureThreshold": 2},
        livenessProbe={"tcpSocket": {"port": port}, "periodSeconds": 10, "failureThreshold": 3},
        resources={"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        volumeMounts=[{"name": "tls", "mountPath": TLS_DIR, "readOnly": True}],
    )
    pod = {
        "terminationGracePeriodSeconds": int(settings.shutdown_grace_seconds) + 5,
        "containers": [container],
        "volumes": [{"name": "tls", "secret": {"secretName": TLS_SECRET}}],
    }
    return _deployment("proxy", cluster, cluster.proxy_replicas, pod)


def proxy_service(cluster: Cluster, settings: Settings) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta("ferry-proxy", cluster, "proxy"),
        "spec": {
            "selector": {"app.kubernetes.io/name": "ferry", "app.kubernetes.io/component": "proxy"},
            "ports": [{"name": "https", "port": 443, "targetPort": settings.proxy_port}],
        },
    }


def worker_deployment(cluster: Cluster, settings: Settings) -> dict[str, Any]:
    container = _container(
        "worker", cluster, ["ferry", "worker"],
        [{"name": METRICS_PORT_NAME, "containerPort": settings.worker_metrics_port}],
        # Each pod is its own worker: its name is its WORKER_ID in metrics and in Redis.
        env=[{"name": env_name("worker_id"), "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        readinessProbe={"httpGet": {"path": "/metrics", "port": settings.worker_metrics_port}, "periodSeconds": 10},
        resources={"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
    )
    # SIGTERM: the worker stops fetching and finishes what it holds within the grace period.
    pod = {"terminationGracePeriodSeconds": int(settings.shutdown_grace_seconds) + 5, "containers": [container]}
    return _deployment("worker", cluster, cluster.workers, pod)


def trigger_authentication(cluster: Cluster) -> dict[str, Any]:
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": _meta("ferry-redis", cluster),
        "spec": {
            "secretTargetRef": [
                {"parameter": "address", "name": KEDA_SECRET, "key": "address"},
                {"parameter": "password", "name": KEDA_SECRET, "key": "password"},
            ]
        },
    }


def scaled_object(cluster: Cluster, settings: Settings) -> dict[str, Any]:
    """KEDA's Redis list scaler on message_queue: one worker per QUEUE_BACKLOG queued.

    With partitions, one trigger per partition's list and KEDA's scaling modifiers summing
    them: KEDA alone takes the largest trigger's replicas, which would size the pool for
    one partition's share of the backlog.
    """
    queues = partition_names(Keys().queue, settings.partitions)
    names = [f"p{index}" for index in range(len(queues))]  # the formula's variables
    triggers = [
        {
            "type": "redis",
            "name": name,
            "metadata": {"listName": queue, "listLength": str(QUEUE_BACKLOG)},
            "authenticationRef": {"name": "ferry-redis"},
        }
        for name, queue in zip(names, queues, strict=True)
    ]
    advanced: dict[str, Any] = {
        "horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}}}
    }
    if len(queues) > 1:
        advanced["scalingModifiers"] = {
            "formula": " + ".join(names),
            "target": str(QUEUE_BACKLOG),
            "metricType": "AverageValue",
        }
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _meta("ferry-worker", cluster, "worker"),
        "spec": {
            "scaleTargetRef": {"name": "ferry-worker"},
            "minReplicaCount": cluster.workers,
            "maxReplicaCount": cluster.max_workers,
            "pollingInterval": 15,
            "cooldownPeriod": 60,  # ferry's own autoscaler scales down after 60 s empty, too
            "advanced": advanced,
            "triggers": triggers,
        },
    }


def manifests(cluster: Cluster, settings: Settings) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": cluster.namespace}},
        config_map(cluster, settings),
        proxy_deployment(cluster, settings),
        proxy_service(cluster, settings),
        worker_deployment(cluster, settings),
        trigger_authentication(cluster),
        scaled_object(cluster, settings),
    ]


def render(cluster: Cluster, settings: Settings) -> str:
    header = (
        "# Made by `ferry deploy kubernetes`; regenerate rather than edit.\n"
        f"# Needs, in namespace {cluster.namespace}: KEDA (keda.sh), Secret {SECRET} (REDIS_URL, MAIN_SERVER_URL,\n"
        f"# FERRY_API_KEYS), Secret {KEDA_SECRET} (address, password) and TLS Secret {TLS_SECRET}.\n"
    )
    return yaml_text(manifests(cluster, settings), header)
