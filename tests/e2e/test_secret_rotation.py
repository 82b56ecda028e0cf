"""A rotated Secret reaches the operator's own Kafka client within one check interval
(issue 10.3), without a spec change: the Secret named by spec.kafka.secretRef is read again
each interval (by name: the operator can never list or watch Secrets)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from kubernetes import client

from .conftest import RunningOperator, eventually, example

pytestmark = pytest.mark.e2e


def _ready_reason(api: client.ApiClient, ns: str, name: str) -> str | None:
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "kcg.dev", "v1alpha1", ns, "kafkaconsumergroups", name)
    ready = next((c for c in (obj.get("status") or {}).get("conditions") or []
                  if c["type"] == "Ready"), None)
    return None if ready is None else f"{ready['status']}/{ready['reason']}"


def test_a_rotated_secret_reaches_the_operators_client_without_a_spec_change(
    operator: RunningOperator, kubectl: Callable[..., Any], kube_api: client.ApiClient,
    cluster: dict[str, str], ns: str, topic: Callable[..., str],
) -> None:
    core = client.CoreV1Api(kube_api)

    def secret(protocol: str) -> client.V1Secret:
        return client.V1Secret(metadata=client.V1ObjectMeta(name="kafka-auth"), data={
            "security.protocol": base64.b64encode(protocol.encode()).decode()})

    core.create_namespaced_secret(ns, secret("PLAINTEXT"))
    body = example("minimal.yaml", topics=[topic(2)],
                   kafka={"bootstrapServers": cluster["SPEC_BOOTSTRAP"],
                          "secretRef": {"name": "kafka-auth"}})
    body["metadata"]["name"] = "rotated"
    kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(body))
    eventually(lambda: _ready_reason(kube_api, ns, "rotated") == "True/Reconciled",
               timeout=60, what="Ready with the Secret's PLAINTEXT")

    # The broker speaks plaintext: credentials that say SSL must now fail, and only the
    # operator's re-read of the Secret can tell it.
    core.replace_namespaced_secret("kafka-auth", ns, secret("SSL"))
    eventually(lambda: _ready_reason(kube_api, ns, "rotated") == "False/KafkaUnreachable",
               timeout=45, what="the rotated Secret (SSL) in use")
    core.replace_namespaced_secret("kafka-auth", ns, secret("PLAINTEXT"))
    eventually(lambda: _ready_reason(kube_api, ns, "rotated") == "True/Reconciled",
               timeout=45, what="the Secret rotated back in use")
