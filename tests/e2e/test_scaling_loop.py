"""Closed loop: real apiserver, Kafka and operator; consumers run as local processes that
follow the Deployment's replicas (the stack has no kubelet)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from confluent_kafka import Producer
from kubernetes import client

from .conftest import REPO, Operator, eventually

pytestmark = pytest.mark.e2e
sys.path.insert(0, str(REPO / "stack"))

from podrunner import PodRunner  # noqa: E402

PARTITIONS = 6
RATE_PER_CONSUMER = 150  # messages/s each local consumer processes
BURST = 9000


def _status(api: client.ApiClient, ns: str, name: str) -> dict[str, Any]:
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "kcg.dev", "v1alpha1", ns, "kafkaconsumergroups", name)
    return dict(obj.get("status") or {})


def test_burst_scales_up_to_the_partition_count_drains_and_scales_back(
    operator: Operator | None, kubectl: Callable[..., Any], kube_api: client.ApiClient,
    cluster: dict[str, str], ns: str, topic: Callable[..., str], tmp_path: Any,
) -> None:
    if operator is None:
        pytest.skip("needs the operator started by the test (for its /metrics)")
    name = "burst"
    orders = topic(PARTITIONS)
    body = {
        "apiVersion": "kcg.dev/v1alpha1", "kind": "KafkaConsumerGroup",
        "metadata": {"name": name},
        "spec": {
            "topics": [orders],
            "kafka": {"bootstrapServers": cluster["SPEC_BOOTSTRAP"]},
            "consumerConfig": {"auto.offset.reset": "earliest"},
            "scaling": {"minReplicas": 1, "maxReplicas": 12, "lagPerReplica": 300,
                        "pollIntervalSeconds": 2, "scaleDownStabilizationSeconds": 12},
            "template": {"spec": {"containers": [{
                "name": "consumer", "image": "example/consumer:local",
                "command": ["python", "/app/consumer.py"],
                "args": ["--rate", str(RATE_PER_CONSUMER)]}]}},
        },
    }
    kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(body))
    apps = client.AppsV1Api(kube_api)
    eventually(lambda: apps.read_namespaced_deployment(name, ns), what="the Deployment")
    runner = PodRunner(kube_api, ns, name, {"/app": str(REPO / "examples" / "consumer")},
                       log_dir=tmp_path).start()
    try:
        # Let the first consumer join and commit, so the backlog counts as lag.
        eventually(lambda: _status(kube_api, ns, name).get("members"), timeout=60,
                   what="the first consumer to join")
        producer = Producer({"bootstrap.servers": cluster["KAFKA_BOOTSTRAP_SERVERS"],
                             "linger.ms": 20})
        for i in range(BURST):
            producer.produce(orders, key=f"k{i % 97}", value=f"order-{i}")
        assert producer.flush(30) == 0

        seen_replicas: list[int] = []
        last_status: dict[str, Any] = {}

        def track(want: Callable[[dict[str, Any]], bool]) -> Callable[[], bool]:
            def check() -> bool:
                replicas = int(apps.read_namespaced_deployment(name, ns).spec.replicas or 0)
                seen_replicas.append(replicas)
                status = _status(kube_api, ns, name)
                last_status.clear()
                last_status.update(status)
                return want(status)
            return check

        try:
            eventually(track(lambda s: s.get("desiredReplicas", 0) > 1), timeout=30,
                       what="a scale-up")
        except AssertionError:
            raise AssertionError(f"no scale-up; status: {last_status}") from None
        eventually(track(lambda s: s.get("totalLag") == 0 and s.get("lagStatus") == "OK"),
                   timeout=120, what="the lag to drain")
        eventually(track(lambda s: s.get("replicas") == 1), timeout=60,
                   what="the scale-down to minReplicas after stabilization")
        assert max(seen_replicas) <= PARTITIONS, seen_replicas
        assert max(seen_replicas) > 1
        assert all(r >= 1 for r in seen_replicas)

        status = _status(kube_api, ns, name)
        assert status["partitions"] == PARTITIONS
        assert status["desiredReplicas"] == 1
        assert status.get("lastScaleTime")
        scaling = next(c for c in status["conditions"] if c["type"] == "Scaling")
        assert scaling["status"] == "True"
        events = [e for e in client.CoreV1Api(kube_api).list_namespaced_event(ns).items
                  if e.reason == "Scaled" and e.involved_object.name == name]
        ups = [e for e in events if "→" in e.message and "scaled 1→" in e.message]
        assert ups, [e.message for e in events]
        assert any(f"cap {PARTITIONS} partitions" in e.message for e in events)
        metrics = operator.metrics()
        up_line = next(ln for ln in metrics.splitlines()
                       if ln.startswith("kcg_scale_events_total") and f'name="{name}"' in ln
                       and 'direction="up"' in ln)
        assert float(up_line.rsplit(" ", 1)[1]) >= 1
        down_line = next(ln for ln in metrics.splitlines()
                         if ln.startswith("kcg_scale_events_total") and f'name="{name}"' in ln
                         and 'direction="down"' in ln)
        assert float(down_line.rsplit(" ", 1)[1]) >= 1
        assert f'kcg_desired_replicas{{group="{name}",name="{name}",namespace="{ns}"}} 1.0' \
            in metrics
        assert f'kcg_consumergroup_group_sum_lag{{group="{name}",name="{name}",' \
               f'namespace="{ns}"}} 0.0' in metrics
    finally:
        runner.stop()
        time.sleep(0.5)


def test_unreachable_broker_gives_a_condition_and_an_event_and_keeps_replicas(
    operator: Operator | None, kubectl: Callable[..., Any], kube_api: client.ApiClient,
    ns: str,
) -> None:
    name = "dark"
    body = {
        "apiVersion": "kcg.dev/v1alpha1", "kind": "KafkaConsumerGroup",
        "metadata": {"name": name},
        "spec": {
            "topics": ["orders"],
            # Nothing listens on port 9 (discard) of loopback here: connection refused.
            "kafka": {"bootstrapServers": "127.0.0.1:9"},
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
        return (conditions.get("Ready", {}).get("reason") == "KafkaUnreachable"
                and conditions.get("Scaling", {}).get("reason") == "BrokerUnreachable")

    eventually(unreachable, timeout=60, what="KafkaUnreachable and BrokerUnreachable")
    time.sleep(6)  # three more polls: none may lower the replicas
    assert apps.read_namespaced_deployment(name, ns).spec.replicas == 4
    events = client.CoreV1Api(kube_api).list_namespaced_event(ns).items
    warnings = [e for e in events if e.reason == "BrokerUnreachable"]
    assert len(warnings) == 1 and warnings[0].type == "Warning"
    assert "replicas are left as they are" in warnings[0].message
