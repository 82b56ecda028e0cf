"""Two operator replicas from the chart on the real node (issue 10.1, 10.3): one leads
through the Lease, the standby is warm and silent, a crashed leader (SIGKILL of its
process, no API involved) and a stopped one (SIGTERM: the Lease is released) are replaced,
and what the operator owns comes back when deleted by hand."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from kubernetes import client, watch

from .conftest import REPO, OperatorPod, RunningOperator, eventually, example

sys.path.insert(0, str(REPO / "stack"))
import node

pytestmark = pytest.mark.e2e


@pytest.fixture
def replicas(operator: RunningOperator) -> OperatorPod:
    if not isinstance(operator, OperatorPod):
        pytest.fail("leader election is tested on the chart's pods (the local node runs them)")
    operator.wait_ready()
    return operator


def _metric(text: str, name: str) -> float:
    """One unlabelled sample; 0 when the series is absent (a counter never incremented)."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _healthz(api: client.ApiClient, namespace: str, pod: str) -> str:
    out = client.CoreV1Api(api).connect_get_namespaced_pod_proxy_with_path(
        f"{pod}:8080", namespace, "healthz", _preload_content=False)
    return str(out.data.decode())


def _standby(replicas: OperatorPod) -> str:
    leader = replicas.leader_name()
    (standby,) = [p.metadata.name for p in replicas.pods() if p.metadata.name != leader]
    return str(standby)


def _assert_silent_warm_standby(replicas: OperatorPod, api: client.ApiClient,
                                groups: int) -> str:
    standby = _standby(replicas)
    # Warm: it watches every object (its loop counts them at each pass).
    text = eventually(lambda: (t := replicas.metrics_of(standby))
                      and _metric(t, "kcg_groups") >= groups and t,
                      timeout=20, what="the standby to see the groups")
    assert _metric(text, "kcg_operator_leader") == 0
    # It never wrote, and never even tried (the write gate counts refusals).
    assert _metric(text, "kcg_api_writes_total") == 0
    assert _metric(text, "kcg_operator_writes_refused_total") == 0
    health = json.loads(_healthz(api, replicas.namespace, standby))
    assert health["leader"] is False and health["controllerLoopSeconds"] >= 0
    return standby


def _apply(kubectl: Callable[..., Any], ns: str, body: dict[str, Any]) -> None:
    kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(body))


def _env(apps: client.AppsV1Api, ns: str, name: str) -> dict[str, str]:
    dep = apps.read_namespaced_deployment(name, ns)
    return {e.name: e.value for e in dep.spec.template.spec.containers[0].env or []}


def test_one_leader_a_silent_warm_standby_and_takeover_after_a_crash_and_a_stop(
    replicas: OperatorPod, kube_api: client.ApiClient, kubectl: Callable[..., Any],
    cluster: dict[str, str], ns: str, topic: Callable[..., str],
) -> None:
    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)
    body = example("minimal.yaml", topics=[topic(3)],
                   kafka={"bootstrapServers": cluster["SPEC_BOOTSTRAP"]})
    body["metadata"]["name"] = "app"
    _apply(kubectl, ns, body)
    eventually(lambda: apps.read_namespaced_deployment("app", ns), what="the Deployment")
    leader = replicas.pod()
    assert _metric(replicas.metrics(), "kcg_operator_leader") == 1
    standby = _assert_silent_warm_standby(replicas, kube_api, groups=1)

    # What the operator owns comes back when deleted by hand (watched, not polled).
    config_map = next(v.config_map.name for v in apps.read_namespaced_deployment(
        "app", ns).spec.template.spec.volumes if v.config_map)
    core.delete_namespaced_config_map(config_map, ns)
    eventually(lambda: core.read_namespaced_config_map(config_map, ns), timeout=20,
               what="the deleted ConfigMap to come back")
    uid = apps.read_namespaced_deployment("app", ns).metadata.uid
    apps.delete_namespaced_deployment("app", ns)
    eventually(lambda: apps.read_namespaced_deployment("app", ns).metadata.uid != uid,
               timeout=20, what="the deleted Deployment to come back")

    # Crash: SIGKILL of the leader's process. The standby takes the Lease once it expires
    # and applies a change made after the crash.
    (pid,) = node.pod_processes(leader.metadata.uid, "run")
    os.kill(pid, signal.SIGKILL)
    container = body["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": "CHANGED_AFTER_CRASH", "value": "1"}]
    _apply(kubectl, ns, body)
    eventually(lambda: replicas.leader_name() == standby, timeout=30,
               what="the standby to take the lease")
    eventually(lambda: _env(apps, ns, "app").get("CHANGED_AFTER_CRASH") == "1", timeout=30,
               what="the new leader to apply the change")
    # The crashed container restarts in its pod, as the standby now.
    eventually(lambda: replicas.wait_ready() and _standby(replicas) == leader.metadata.name,
               timeout=90, what="the crashed replica back as the standby")
    _assert_silent_warm_standby(replicas, kube_api, groups=1)

    # Stop: deleting the leader's pod sends SIGTERM; it releases the Lease on the way out.
    current = replicas.leader_name()
    assert current == standby
    core.delete_namespaced_pod(current, replicas.namespace)
    eventually(lambda: replicas.leader_name() not in (None, current), timeout=15,
               what="the other replica to lead after the handover")
    container["env"] = [{"name": "CHANGED_AFTER_HANDOVER", "value": "1"}]
    _apply(kubectl, ns, body)
    eventually(lambda: _env(apps, ns, "app").get("CHANGED_AFTER_HANDOVER") == "1",
               timeout=30, what="the change applied after the handover")
    replicas.wait_ready()  # the Deployment replaced the deleted pod: two again


def test_the_lease_is_released_on_a_graceful_stop(
    replicas: OperatorPod, kube_api: client.ApiClient,
) -> None:
    """SIGTERM: the leader frees the Lease (no holder) before its process ends, so the
    standby does not wait the lease out."""
    leases = client.CoordinationV1Api(kube_api)
    leader = replicas.pod()
    seen: list[str | None] = []
    version = leases.list_namespaced_lease(replicas.namespace).metadata.resource_version
    client.CoreV1Api(kube_api).delete_namespaced_pod(leader.metadata.name, replicas.namespace)
    for event in watch.Watch().stream(leases.list_namespaced_lease, replicas.namespace,
                                      resource_version=version, timeout_seconds=20):
        lease = event["object"]
        if lease.metadata.name != replicas.lease:
            continue
        seen.append(lease.spec.holder_identity)
        if lease.spec.holder_identity and not lease.spec.holder_identity.startswith(
                leader.metadata.name):
            break
    assert None in seen, f"the lease went {seen} without being released"
    assert seen[-1] and not seen[-1].startswith(leader.metadata.name)
    replicas.wait_ready()
