"""The operator as users run it: `helm install` on the node, a pod under the chart's own
ServiceAccount, non-root on a read-only root filesystem, its probes and metrics Service
working, and doing its whole job with only the chart's rights (no other operator alive)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from .conftest import OperatorPod, RunningOperator, eventually, example

pytestmark = pytest.mark.e2e


@pytest.fixture
def operator_pod(operator: RunningOperator) -> OperatorPod:
    if not isinstance(operator, OperatorPod):
        pytest.fail("the e2e operator must run as the chart's pod (the local node runs it; "
                    "on another cluster set KCG_E2E_OPERATOR_IMAGE)")
    return operator


def _operator_processes() -> list[tuple[int, str]]:
    """Every `kcg run` on this machine with the cgroup it runs in."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            cgroup = (proc / "cgroup").read_text()
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv if a]
        if "run" in words and any(w.endswith("kcg") or w == "kcg_operator.cli" for w in words):
            found.append((int(proc.name), cgroup))
    return found


def test_the_chart_pod_runs_locked_down_under_its_service_account(
    operator_pod: OperatorPod, kube_api: client.ApiClient,
) -> None:
    pod = operator_pod.wait_ready()
    sa = pod.spec.service_account_name
    assert sa and sa != "default"
    role_refs = {b.role_ref.name for b in client.RbacAuthorizationV1Api(kube_api)
                 .list_cluster_role_binding().items
                 if any(s.kind == "ServiceAccount" and s.name == sa
                        and s.namespace == operator_pod.namespace for s in b.subjects or [])}
    assert role_refs and all("cluster-admin" not in r for r in role_refs), role_refs
    (container,) = [c for c in pod.spec.containers if c.name == "operator"]
    security = container.security_context
    assert security.read_only_root_filesystem and security.run_as_non_root
    assert security.allow_privilege_escalation is False
    assert container.liveness_probe.http_get.path == "/healthz"
    status = next(c for c in pod.status.container_statuses if c.name == "operator")
    assert status.ready and status.restart_count == 0
    metrics = operator_pod.metrics()
    assert "kcg_" in metrics


def test_with_only_the_chart_rights_it_reconciles_scales_and_writes_status(
    operator_pod: OperatorPod, kube_api: client.ApiClient, kubectl: Callable[..., Any],
    cluster: dict[str, str], ns: str, topic: Callable[..., str],
) -> None:
    # Nothing else can have done the work below: every operator on this machine runs in a
    # container of the node (local stacks run theirs as processes of the host).
    outside = [(pid, cg) for pid, cg in _operator_processes() if "kcg-node-" not in cg]
    assert not outside, f"an operator outside the node is running: {outside}"

    body = example("minimal.yaml", topics=[topic(3)],
                   kafka={"bootstrapServers": cluster["SPEC_BOOTSTRAP"]},
                   scaling={"minReplicas": 1, "maxReplicas": 2, "pollIntervalSeconds": 1})
    body["metadata"]["name"] = "capped"
    client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
        "kcg.dev", "v1alpha1", ns, "kafkaconsumergroups", body)
    apps = client.AppsV1Api(kube_api)
    dep = eventually(lambda: apps.read_namespaced_deployment("capped", ns), timeout=60,
                     what="the Deployment")
    # Scaling goes through deployments/scale: over its cap, it is brought back down.
    apps.patch_namespaced_deployment_scale("capped", ns, {"spec": {"replicas": 5}})
    eventually(lambda: apps.read_namespaced_deployment("capped", ns).spec.replicas <= 2,
               timeout=60, what="the operator to scale 5 down within maxReplicas 2")
    obj = eventually(lambda: (o := client.CustomObjectsApi(kube_api).get_namespaced_custom_object(
        "kcg.dev", "v1alpha1", ns, "kafkaconsumergroups", "capped")).get("status", {}).get(
        "partitions") == 3 and o, timeout=60, what="a status with the partition count")
    assert obj["status"]["conditions"]
    managers = {f.manager for f in apps.read_namespaced_deployment("capped", ns)
                .metadata.managed_fields}
    assert "kcg-operator" in managers, managers
    config_map = client.CoreV1Api(kube_api).read_namespaced_config_map(
        dep.spec.template.spec.volumes[0].config_map.name, ns)
    assert "kcg-operator" in {f.manager for f in config_map.metadata.managed_fields}
    # A denial by RBAC, not the apiserver refusing writes into a namespace that another
    # test is deleting (NamespaceTerminating is a 403 too, and no missing right).
    denied = [line for line in operator_pod.log_text().splitlines()
              if ("403" in line or "Forbidden" in line) and "NamespaceTerminating" not in line]
    assert not denied, denied[-5:]
