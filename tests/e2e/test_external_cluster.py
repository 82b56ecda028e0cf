"""The e2e suite also runs against an existing cluster given by KUBECONFIG (kind, or any).

Docker cannot run on our build machines, so `make kind-e2e` is not exercised here; this
test runs the suite's external-cluster path against the local stack instead: a child
pytest with KCG_E2E_EXTERNAL_CLUSTER=1, the stack's KUBECONFIG and broker, and the
operator already running (as the Helm chart would have installed it on kind).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import REPO, OperatorPod, RunningOperator

pytestmark = pytest.mark.e2e

SUBSET = [
    "tests/e2e/test_workload.py::test_deployment_configmap_owner_hash_and_garbage_collection",
    "tests/e2e/test_workload.py::test_kubectl_scale_sets_deployment_replicas_through_the_scale_subresource",
]


def test_suite_runs_against_an_existing_cluster_from_kubeconfig(
    operator: RunningOperator, cluster: dict[str, str]
) -> None:
    if os.environ.get("KCG_E2E_EXTERNAL_CLUSTER") == "1":
        pytest.skip("already running against an external cluster")
    assert isinstance(operator, OperatorPod), "the suite's operator is the chart's pod"
    env = {**os.environ, "KCG_E2E_EXTERNAL_CLUSTER": "1", "KCG_E2E_OPERATOR_RUNNING": "1",
           "KCG_E2E_OPERATOR_NAMESPACE": operator.namespace,
           "KCG_E2E_OPERATOR_RELEASE": operator.release,
           "KUBECONFIG": cluster["KUBECONFIG"],
           "KAFKA_BOOTSTRAP_SERVERS": cluster["KAFKA_BOOTSTRAP_SERVERS"],
           # The child must not bring up or tear down a stack of its own.
           "KCG_STACK_DIR": "/nonexistent-kcg-stack"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *SUBSET], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "2 passed" in proc.stdout
