"""`kubectl get kcg` tells when consumer pods fail, with the pod's own reason: an image
that cannot be pulled, a container in CrashLoopBackOff, a pod that never becomes ready
(after the operator's grace period: 30 s in this suite) -- in the conditions, STATUS and
Events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml
from kubernetes import client

from .conftest import RunningOperator, eventually

pytestmark = pytest.mark.e2e


def _group(name: str, bootstrap: str, topic: str, container: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kcg.dev/v1alpha1", "kind": "KafkaConsumerGroup",
        "metadata": {"name": name},
        "spec": {"topics": [topic], "kafka": {"bootstrapServers": bootstrap},
                 "scaling": {"minReplicas": 1, "maxReplicas": 1, "pollIntervalSeconds": 2},
                 "template": {"spec": {"containers": [container]}}},
    }


def _health(api: client.ApiClient, ns: str, name: str) -> tuple[str, dict[str, Any]]:
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "kcg.dev", "v1alpha1", ns, "kafkaconsumergroups", name)
    status = obj.get("status") or {}
    cond = next((c for c in status.get("conditions", []) if c["type"] == "PodsHealthy"), {})
    return str(status.get("health", "")), cond


@pytest.mark.parametrize(("container", "reasons"), [
    pytest.param({"name": "app", "image": "localhost/kcg-no-such-image:1"},
                 {"ErrImagePull", "ImagePullBackOff"}, id="image-cannot-be-pulled"),
    pytest.param({"name": "app", "command": ["python", "-c", "raise SystemExit(3)"],
                  "imagePullPolicy": "Never"},
                 {"CrashLoopBackOff", "Error"}, id="crash-loop"),
    pytest.param({"name": "app", "command": ["python", "/app/consumer.py"],
                  "imagePullPolicy": "Never",
                  "readinessProbe": {"exec": {"command": ["false"]}, "periodSeconds": 2}},
                 {"PodsNotReady"}, id="never-ready"),
])
def test_failing_pods_show_their_reason_in_conditions_status_and_events(
    operator: RunningOperator, kubectl: Callable[..., Any], kube_api: client.ApiClient,
    cluster: dict[str, str], examples_image: str, ns: str, topic: Callable[..., str],
    container: dict[str, Any], reasons: set[str],
) -> None:
    container = {"image": examples_image, **container}
    body = _group("failing", cluster["SPEC_BOOTSTRAP"], topic(2), container)
    kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(body))

    def unhealthy() -> tuple[str, dict[str, Any]] | None:
        health, cond = _health(kube_api, ns, "failing")
        return (health, cond) if cond.get("status") == "False" else None

    health, cond = eventually(unhealthy, timeout=90, what="PodsHealthy=False")
    assert cond["reason"] in reasons, cond
    assert "app" in cond["message"], cond
    columns = kubectl("get", "kcg", "failing", "-n", ns, "--no-headers").stdout
    assert cond["reason"] in columns, columns
    assert health in columns
    events = client.CoreV1Api(kube_api).list_namespaced_event(ns).items
    warnings = [e for e in events if e.reason == "PodsUnhealthy"
                and e.involved_object.kind == "KafkaConsumerGroup"]
    assert warnings and warnings[0].type == "Warning"
    assert any(r in warnings[0].message for r in reasons), warnings[0].message
