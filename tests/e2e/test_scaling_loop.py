"""The closed loop on a real node: consumer pods of the example image join the group,
a burst scales them up (never past the partitions), lag drains, they scale back down and
leave the group cleanly; the operator pod deleted mid-scale comes back and resumes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from confluent_kafka import ConsumerGroupState, Producer
from confluent_kafka.admin import AdminClient
from kubernetes import client

from .conftest import OperatorPod, RunningOperator, eventually

pytestmark = pytest.mark.e2e

PARTITIONS = 6
RATE_PER_CONSUMER = 150  # messages/s each consumer pod processes
BURST = 9000
STABILIZATION_SECONDS = 12
# Nothing listens on port 9 (discard) of loopback here: connection refused.
UNREACHABLE = "127.0.0.1:9"


def _status(api: client.ApiClient, ns: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "kcg.dev", "v1alpha1", ns, "kafkaconsumergroups", name)  # type: ignore[assignment]
    return dict(obj.get("status") or {})


def _replicas(apps: client.AppsV1Api, ns: str, name: str) -> int:
    """The Deployment's spec.replicas."""
    spec = apps.read_namespaced_deployment(name, ns).spec
    assert spec is not None and spec.replicas is not None
    return spec.replicas


def _name(obj: Any) -> str:
    return str(obj.metadata.name)


def _group(admin: AdminClient, group: str) -> Any:
    return admin.describe_consumer_groups([group], request_timeout=10)[group].result()


def _running_pods(api: client.ApiClient, ns: str, name: str) -> list[client.V1Pod]:
    pods = client.CoreV1Api(api).list_namespaced_pod(
        ns, label_selector=f"kcg.dev/group={name}").items
    return [p for p in pods
            if p.status is not None and p.status.phase == "Running"
            and p.metadata is not None and p.metadata.deletion_timestamp is None]


class SweepCounter:
    """Lag sweeps of one Kafka cluster by the operator, from its metrics: the count of
    kcg_lag_sweep_duration_seconds (one observation per sweep), since this was made."""

    def __init__(self, operator: RunningOperator, bootstrap: str) -> None:
        self.operator = operator
        self.series = f'kcg_lag_sweep_duration_seconds_count{{cluster="{bootstrap}"}} '
        self.start = self.now()

    def now(self) -> int:
        for line in self.operator.metrics().splitlines():
            if line.startswith(self.series):
                return int(float(line.removeprefix(self.series)))
        return 0

    def since_start(self) -> int:
        count = self.now()
        assert count >= self.start, "the operator's counters restarted (the operator did)"
        return count - self.start


def consumer_group_body(name: str, topic: str, bootstrap: str, image: str,
                        **scaling: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kcg.dev/v1alpha1", "kind": "KafkaConsumerGroup",
        "metadata": {"name": name},
        "spec": {
            "topics": [topic],
            "kafka": {"bootstrapServers": bootstrap},
            "consumerConfig": {"auto.offset.reset": "earliest"},
            "scaling": {"minReplicas": 1, "maxReplicas": 12, "lagPerReplica": 300,
                        "pollIntervalSeconds": 2,
                        "scaleDownStabilizationSeconds": STABILIZATION_SECONDS,
                        **scaling},
            "template": {"spec": {
                "terminationGracePeriodSeconds": 20,
                "containers": [{
                    "name": "consumer", "image": image, "imagePullPolicy": "Never",
                    "command": ["python", "/app/consumer.py"],
                    "args": ["--rate", str(RATE_PER_CONSUMER)]}]}},
        },
    }


def test_consumer_pods_scale_with_lag_within_the_partitions_and_leave_cleanly(
    operator: RunningOperator, kubectl: Callable[..., Any], kube_api: client.ApiClient,
    cluster: dict[str, str], examples_image: str, ns: str, topic: Callable[..., str],
) -> None:
    orders = topic(PARTITIONS)
    name = f"burst-{orders[2:]}"  # the group id: unique on the shared broker
    admin = AdminClient({"bootstrap.servers": cluster["KAFKA_BOOTSTRAP_SERVERS"]})
    kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(
        consumer_group_body(name, orders, cluster["SPEC_BOOTSTRAP"], examples_image)))
    apps = client.AppsV1Api(kube_api)
    group_id = name  # spec.groupId defaults to the object's name

    # The first pod runs, joins the group with the assignor the operator enforces.
    def one_member() -> Any:
        desc = _group(admin, group_id)
        return desc if len(desc.members) == 1 and desc.state == ConsumerGroupState.STABLE \
            else None

    desc = eventually(one_member, timeout=120, what="the first consumer pod to join")
    assert desc.partition_assignor == "cooperative-sticky"
    # The member is the pod (its address), which the kubelet reports Running soon after.
    hosts = {m.host.lstrip("/") for m in desc.members}
    eventually(lambda: hosts <= {p.status.pod_ip for p in _running_pods(kube_api, ns, name)
                                 if p.status is not None},
               timeout=30, what=f"the member {hosts} to be a Running pod of the group")
    eventually(lambda: len(_status(kube_api, ns, name).get("members") or []) == 1,
               timeout=30, what="status.members to list the one member")

    producer = Producer({"bootstrap.servers": cluster["KAFKA_BOOTSTRAP_SERVERS"],
                         "linger.ms": 20})
    for i in range(BURST):
        producer.produce(orders, key=f"k{i % 97}", value=f"order-{i}")
    assert producer.flush(30) == 0

    seen_replicas: list[int] = []
    sampled: list[tuple[float, int]] = []  # (monotonic time, Deployment replicas)
    max_members = 0

    def watch(want: Callable[[dict[str, Any]], bool]) -> Callable[[], bool]:
        def check() -> bool:
            nonlocal max_members
            seen_replicas.append(_replicas(apps, ns, name))
            sampled.append((time.monotonic(), seen_replicas[-1]))
            status = _status(kube_api, ns, name)
            max_members = max(max_members, len(status.get("members") or []))
            return want(status)
        return check

    eventually(watch(lambda s: s.get("desiredReplicas", 0) > 1), timeout=40, what="a scale-up")
    restart: tuple[float, float, int] | None = None
    if isinstance(operator, OperatorPod):
        # Deleted mid-scale: its Deployment brings it back, and the new one resumes
        # without scaling down before a whole stabilization window has passed.
        old = _name(operator.pod())
        before = _replicas(apps, ns, name)
        deleted = time.monotonic()
        client.CoreV1Api(kube_api).delete_namespaced_pod(old, operator.namespace)
        eventually(lambda: operator.pods() and _name(operator.pod()) != old,
                   timeout=60, what="a new operator pod")
        operator.wait_ready()
        restart = (deleted, time.monotonic() + STABILIZATION_SECONDS, before)
    # New pods run and consume: more than one member of the group, on pod addresses.
    eventually(watch(lambda s: len(_running_pods(kube_api, ns, name)) > 1
                     and len(s.get("members") or []) > 1), timeout=120,
               what="new consumer pods in the group")
    assert client.AppsV1Api(kube_api).list_namespaced_replica_set(
        ns, label_selector=f"kcg.dev/group={name}").items
    eventually(watch(lambda s: s.get("totalLag") == 0 and s.get("lagStatus") == "OK"),
               timeout=180, what="the lag to drain")
    eventually(watch(lambda s: s.get("replicas") == 1), timeout=90,
               what="the scale-down to minReplicas after stabilization")
    # Scaled-away pods close their consumers: the group shrinks to one member long
    # before the 45 s session timeout would have evicted a pod that just vanished.
    left = time.monotonic()
    desc = eventually(one_member, timeout=30, what="the scaled-away pods to leave the group")
    print(f"left the group {time.monotonic() - left:.1f}s after replicas=1; "
          f"replicas seen {sorted(set(seen_replicas))}, max members {max_members}")
    assert desc.partition_assignor == "cooperative-sticky"

    assert max(seen_replicas) <= PARTITIONS, seen_replicas
    assert max(seen_replicas) > 1 and max_members > 1
    assert all(r >= 1 for r in seen_replicas)
    if restart is not None:
        deleted, settled, before = restart
        around = [r for t, r in sampled if deleted <= t < settled]
        assert around and min(around) >= before, \
            f"scaled below {before} within a stabilization window of the restart: {around}"
    status = _status(kube_api, ns, name)
    assert status["partitions"] == PARTITIONS and status["desiredReplicas"] == 1
    events = [e for e in client.CoreV1Api(kube_api).list_namespaced_event(ns).items
              if e.reason == "Scaled" and e.involved_object.name == name]
    assert any("scaled 1→" in (e.message or "") for e in events), [e.message for e in events]
    metrics = operator.metrics()
    assert f'kcg_desired_replicas{{group="{group_id}",name="{name}",namespace="{ns}"}} 1.0' \
        in metrics


def test_unreachable_broker_gives_a_condition_and_an_event_and_keeps_replicas(
    operator: RunningOperator, kubectl: Callable[..., Any], kube_api: client.ApiClient,
    ns: str,
) -> None:
    name = "dark"
    body = {
        "apiVersion": "kcg.dev/v1alpha1", "kind": "KafkaConsumerGroup",
        "metadata": {"name": name},
        "spec": {
            "topics": ["orders"],
            "kafka": {"bootstrapServers": UNREACHABLE},
            "scaling": {"minReplicas": 1, "maxReplicas": 6, "pollIntervalSeconds": 2},
            "template": {"spec": {"containers": [{"name": "c", "image": "example/app:1"}]}},
        },
    }
    kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(body))
    apps = client.AppsV1Api(kube_api)
    eventually(lambda: apps.read_namespaced_deployment(name, ns), what="the Deployment")
    kubectl("scale", "deployment", name, "-n", ns, "--replicas=4")

    def unreachable() -> bool:
        conditions = {c["type"]: c for c in _status(kube_api, ns, name).get("conditions", [])}
        return bool(conditions.get("Ready", {}).get("reason") == "KafkaUnreachable"
                    and conditions.get("Scaling", {}).get("reason") == "BrokerUnreachable")

    eventually(unreachable, timeout=60, what="KafkaUnreachable and BrokerUnreachable")
    # Two more whole polls of the group, neither of which may lower the replicas. Each poll
    # is one sweep of the group's cluster (no other group names that broker), which waits
    # for the request timeout (10 s) here, and a pass decides and scales before the next
    # sweep starts: three more sweeps, two whole polls.
    polls = SweepCounter(operator, UNREACHABLE)
    eventually(lambda: polls.since_start() >= 3, timeout=90, what="two more whole polls")
    assert _replicas(apps, ns, name) == 4
    events = client.CoreV1Api(kube_api).list_namespaced_event(ns).items
    warnings = [e for e in events if e.reason == "BrokerUnreachable"]
    assert len(warnings) == 1 and warnings[0].type == "Warning"
    assert "replicas are left as they are" in (warnings[0].message or "")
