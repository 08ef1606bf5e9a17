"""The Kubernetes manifests: the built-in kinds against Kubernetes' own schemas
(kubernetes-validate, strict), KEDA's two kinds against the fields KEDA documents."""

from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from ferry.deploy import kubernetes
from ferry.queue.keys import partition_names
from ferry.settings import load_settings

KUBERNETES_VERSION = "1.30.0"
_INT = {"type": "integer", "minimum": 0}
_NAMED = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "minLength": 1}}}
# KEDA 2's ScaledObject and TriggerAuthentication, as far as these manifests use them (from
# KEDA's documentation of keda.sh/v1alpha1): an unknown field is an error, as a typo would be.
KEDA_SCHEMAS: dict[str, dict[str, Any]] = {
    "ScaledObject": {
        "type": "object",
        "required": ["scaleTargetRef", "triggers"],
        "additionalProperties": False,
        "properties": {
            "scaleTargetRef": _NAMED,
            "minReplicaCount": _INT,
            "maxReplicaCount": _INT,
            "pollingInterval": _INT,
            "cooldownPeriod": _INT,
            "advanced": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "horizontalPodAutoscalerConfig": {"type": "object"},
                    # As KEDA's CRD (config/crd/bases/keda.sh_scaledobjects.yaml) has them.
                    "scalingModifiers": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["formula", "target"],  # KEDA's webhook: a formula needs a target
                        "properties": {
                            "formula": {"type": "string"},
                            "target": {"type": "string"},
                            "activationTarget": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value"]},
                        },
                    },
                },
            },
            "triggers": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["type", "metadata"],
                    "additionalProperties": False,
                    "properties": {
                        "type": {"type": "string"},
                        "name": {"type": "string"},
                        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                        "authenticationRef": _NAMED,
                    },
                },
            },
        },
    },
    "TriggerAuthentication": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "secretTargetRef": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["parameter", "name", "key"],
                    "additionalProperties": False,
                    "properties": {"parameter": {"type": "string"}, "name": {"type": "string"}, "key": {"type": "string"}},
                },
            }
        },
    },
}


def documents(**settings: Any) -> list[dict[str, Any]]:
    text = kubernetes.render(kubernetes.Cluster(), load_settings(**settings))
    return list(yaml.safe_load_all(text))


def validate(document: dict[str, Any]) -> None:
    if document["apiVersion"].startswith("keda.sh/"):
        assert document["apiVersion"] == "keda.sh/v1alpha1"
        jsonschema.validate(document["spec"], KEDA_SCHEMAS[document["kind"]])
    else:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_every_manifest_is_valid() -> None:
    found = documents()
    assert [doc["kind"] for doc in found] == [
        "Namespace", "ConfigMap", "Deployment", "Service", "Deployment", "TriggerAuthentication", "ScaledObject"]
    for document in found:
        validate(document)


@pytest.mark.parametrize("kind", ["Deployment", "ScaledObject"])
def test_a_misspelt_field_is_caught(kind: str) -> None:
    document = next(doc for doc in documents() if doc["kind"] == kind)
    document["spec"]["replica" if kind == "Deployment" else "minReplicas"] = 2
    with pytest.raises((kubernetes_validate.ValidationError, jsonschema.ValidationError)):
        validate(document)


def test_keda_scales_the_workers_on_the_guides_queue_and_threshold() -> None:
    scaled = next(doc for doc in documents() if doc["kind"] == "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "ferry-worker"
    (trigger,) = scaled["spec"]["triggers"]
    assert (trigger["type"], trigger["metadata"]) == ("redis", {"listName": "message_queue", "listLength": "1000"})
    assert "scalingModifiers" not in scaled["spec"]["advanced"]


def test_keda_sums_the_backlog_of_every_partition() -> None:
    """KEDA alone would take the largest trigger's replicas: a quarter of a backlog spread
    evenly over 4 partitions. The formula must add every partition's list, once each."""
    scaled = next(doc for doc in documents(partitions=4) if doc["kind"] == "ScaledObject")
    validate(scaled)
    triggers = scaled["spec"]["triggers"]
    assert [trigger["metadata"]["listName"] for trigger in triggers] == list(partition_names("message_queue", 4))
    modifiers = scaled["spec"]["advanced"]["scalingModifiers"]
    assert (modifiers["target"], modifiers["metricType"]) == ("1000", "AverageValue")
    lengths = {trigger["name"]: 1000 * (index + 1) for index, trigger in enumerate(triggers)}
    # KEDA's expr language and Python agree on a sum of names; an unknown name raises here too.
    assert eval(modifiers["formula"], {"__builtins__": {}}, lengths) == sum(lengths.values())


def test_each_worker_pod_is_its_own_worker_id_and_settings_go_by_their_names() -> None:
    found = documents()
    config = next(doc for doc in found if doc["kind"] == "ConfigMap")["data"]
    assert config["FERRY_METRICS_HOST"] == "0.0.0.0" and config["WORKER_CONCURRENCY"] == "4"
    worker = next(doc for doc in found if doc["metadata"]["name"] == "ferry-worker" and doc["kind"] == "Deployment")
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert container["env"] == [{"name": "WORKER_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    with pytest.raises(KeyError):
        kubernetes._env({"no_such_setting": 1})  # a renamed setting cannot be written under its old name


def test_the_worker_pods_settings_load_without_the_proxys_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a worker pod's environment holds (the ConfigMap and its own env) is valid settings."""
    found = documents()
    config = next(doc for doc in found if doc["kind"] == "ConfigMap")["data"]
    for name, value in config.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WORKER_ID", "ferry-worker-abc")
    settings = load_settings()
    assert (settings.worker_id, settings.proxy_certfile, settings.trusted_proxies) == ("ferry-worker-abc", None, "10.0.0.0/8")
