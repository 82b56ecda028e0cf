"""`kubectl get kcg` and `kubectl get kcg -o wide` on the real apiserver, from the CRD."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.e2e.conftest import wait_established

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_wide_output_adds_the_time_lag_and_the_assignor(
    stack: dict[str, Any], kube: client.ApiClient, namespace: str
) -> None:
    sys.path.insert(0, str(REPO / "stack"))
    import localstack

    def kubectl(*args: str) -> str:
        proc = subprocess.run([str(localstack.K8S_BIN / "kubectl"), *args], capture_output=True,
                              text=True, timeout=60, check=True,
                              env={**os.environ, "KUBECONFIG": str(stack["KUBECONFIG"])})
        return proc.stdout

    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    wait_established(kube)
    custom = client.CustomObjectsApi(kube)
    custom.create_namespaced_custom_object("kcg.dev", "v1alpha1", namespace,
                                           "kafkaconsumergroups", {
        "apiVersion": "kcg.dev/v1alpha1", "kind": "KafkaConsumerGroup",
        "metadata": {"name": "orders"},
        "spec": {"topics": ["orders"], "kafka": {"bootstrapServers": "kafka:9092"},
                 "template": {"spec": {"containers": [{"name": "app", "image": "app:1"}]}}}})
    # The status as the controller writes it (it is the status subresource's only writer).
    custom.patch_namespaced_custom_object_status(
        "kcg.dev", "v1alpha1", namespace, "kafkaconsumergroups", "orders",
        {"status": {"partitions": 6, "replicas": 2, "desiredReplicas": 3, "totalLag": 4200,
                    "maxTimeLagSeconds": 37.5, "health": "OK",
                    "assignor": "cooperative-sticky"}})

    narrow = kubectl("get", "kcg", "-n", namespace).splitlines()
    assert narrow[0].split() == ["NAME", "TOPICS", "PARTITIONS", "REPLICAS", "DESIRED", "LAG",
                                 "STATUS", "AGE"]
    wide = kubectl("get", "kcg", "-n", namespace, "-o", "wide").splitlines()
    assert wide[0].split() == ["NAME", "TOPICS", "PARTITIONS", "REPLICAS", "DESIRED", "LAG",
                               "TIME-LAG", "STATUS", "ASSIGNOR", "AGE"]
    row = dict(zip(wide[0].split(), wide[1].split(), strict=True))
    assert (row["LAG"], row["TIME-LAG"], row["ASSIGNOR"]) == ("4200", "37.5",
                                                              "cooperative-sticky")
