"""The operator turns a KafkaConsumerGroup into a correctly configured consumer Deployment."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from confluent_kafka import Consumer
from kubernetes import client
from kubernetes.client.rest import ApiException

from .conftest import RunningOperator, eventually, example

pytestmark = pytest.mark.e2e
GVP = ("kcg.dev", "v1alpha1")


def _kcg(api: client.ApiClient, ns: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
        *GVP, ns, "kafkaconsumergroups", name)
    return obj


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return None


def _apply(kubectl: Callable[..., Any], ns: str, body: dict[str, Any]) -> None:
    kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(body))


def test_examples_are_accepted_and_kubectl_shows_real_values(
    operator: RunningOperator, kubectl: Callable[..., Any], kube_api: client.ApiClient,
    cluster: dict[str, str], ns: str, topic: Callable[..., str],
) -> None:
    orders = topic(6)
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_secret(ns, client.V1Secret(
        metadata=client.V1ObjectMeta(name="kafka-auth"),
        string_data={"security.protocol": "PLAINTEXT"}))
    bootstrap = {"bootstrapServers": cluster["SPEC_BOOTSTRAP"]}
    minimal = example("minimal.yaml", topics=[orders], kafka=bootstrap)
    full = example("full.yaml", topics=[orders])
    full["spec"]["kafka"]["bootstrapServers"] = cluster["SPEC_BOOTSTRAP"]
    _apply(kubectl, ns, minimal)
    _apply(kubectl, ns, full)
    for name in ("orders-minimal", "orders-processor"):
        eventually(lambda n=name: (_condition(_kcg(kube_api, ns, n), "Ready") or {}).get(
            "status") == "True", timeout=60, what=f"{name} Ready")

    table = kubectl("get", "kcg", "-n", ns).stdout
    header = table.splitlines()[0].split()
    assert header == ["NAME", "TOPICS", "PARTITIONS", "REPLICAS", "DESIRED", "LAG", "STATUS",
                      "AGE"]
    row = next(ln.split() for ln in table.splitlines() if ln.startswith("orders-minimal"))
    assert row[2] == "6" and row[3] == "1" and row[4] == "1" and row[5] == "0"
    assert row[6] == "OK"
    explained = kubectl("explain", "kcg.spec").stdout
    assert "scaling" in explained and "DESCRIPTION" in explained
    assert "deliverySemantics" in explained
    scaling_doc = kubectl("explain", "kcg.spec.scaling.lagPerReplica").stdout
    assert "lag" in scaling_doc.lower()


def test_deployment_configmap_owner_hash_and_garbage_collection(
    operator: RunningOperator, kubectl: Callable[..., Any], kube_api: client.ApiClient,
    cluster: dict[str, str], ns: str, topic: Callable[..., str],
) -> None:
    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)
    body = example("minimal.yaml", topics=[topic(3)],
                   kafka={"bootstrapServers": cluster["SPEC_BOOTSTRAP"]})
    body["metadata"]["name"] = "app"
    _apply(kubectl, ns, body)
    dep = eventually(lambda: apps.read_namespaced_deployment("app", ns), timeout=30,
                     what="the Deployment")
    owner = dep.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.controller) == ("KafkaConsumerGroup", "app", True)
    strategy = dep.spec.strategy.rolling_update
    assert (strategy.max_unavailable, strategy.max_surge) == (0, 1)
    volumes = {v.name: v for v in dep.spec.template.spec.volumes}
    cm_name = next(v.config_map.name for v in volumes.values() if v.config_map)
    cm = core.read_namespaced_config_map(cm_name, ns)
    props = "\n".join(cm.data.values())
    assert "partition.assignment.strategy=cooperative-sticky" in props
    assert "enable.auto.commit=false" in props
    container = dep.spec.template.spec.containers[0]
    env = {e.name: e.value for e in container.env}
    assert env["KAFKA_GROUP_ID"] == "app"
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == cluster["SPEC_BOOTSTRAP"]
    assert any(m.read_only for m in container.volume_mounts)
    hash_key = "kcg.dev/config-hash"
    first_hash = dep.spec.template.metadata.annotations[hash_key]

    obj = eventually(lambda: (o := _kcg(kube_api, ns, "app")).get("status", {}).get(
        "observedGeneration") == 1 and o, what="status.observedGeneration 1")
    assert (_condition(obj, "Ready") or {}).get("status") == "True"

    kubectl("patch", "kcg", "app", "-n", ns, "--type=merge",
            "-p", json.dumps({"spec": {"consumerConfig": {"max.poll.interval.ms": "600000"}}}))
    rolled = eventually(
        lambda: (d := apps.read_namespaced_deployment("app", ns)).spec.template.metadata
        .annotations[hash_key] != first_hash and d, what="the config hash to change")
    assert rolled.spec.template.metadata.annotations[hash_key] != first_hash
    cm = core.read_namespaced_config_map(cm_name, ns)
    assert "max.poll.interval.ms=600000" in "\n".join(cm.data.values())
    obj = eventually(lambda: (o := _kcg(kube_api, ns, "app"))["status"].get(
        "observedGeneration") == 2 and o, what="observedGeneration 2")
    assert all(c.get("observedGeneration") == 2 for c in obj["status"]["conditions"])

    kubectl("delete", "kcg", "app", "-n", ns)

    def gone() -> bool:
        for read in (lambda: apps.read_namespaced_deployment("app", ns),
                     lambda: core.read_namespaced_config_map(cm_name, ns)):
            try:
                read()
                return False
            except ApiException as exc:
                if exc.status != 404:
                    raise
        return True

    eventually(gone, timeout=60, what="GC of the Deployment and ConfigMap")


def test_kubectl_scale_sets_deployment_replicas_through_the_scale_subresource(
    operator: RunningOperator, kubectl: Callable[..., Any], kube_api: client.ApiClient,
    cluster: dict[str, str], ns: str, topic: Callable[..., str],
) -> None:
    body = example("minimal.yaml", topics=[topic(6)],
                   kafka={"bootstrapServers": cluster["SPEC_BOOTSTRAP"]})
    _apply(kubectl, ns, body)
    apps = client.AppsV1Api(kube_api)
    eventually(lambda: apps.read_namespaced_deployment("orders-minimal", ns), what="Deployment")
    kubectl("scale", "kcg/orders-minimal", "-n", ns, "--replicas=3")
    eventually(lambda: apps.read_namespaced_deployment("orders-minimal", ns).spec.replicas == 3,
               what="3 replicas")
    obj = eventually(lambda: (o := _kcg(kube_api, ns, "orders-minimal"))["status"].get(
        "replicas") == 3 and o, what="status.replicas 3")
    assert obj["status"]["selector"] == "kcg.dev/group=orders-minimal"


def test_broken_objects_get_a_reason_and_do_not_stop_the_others(
    operator: RunningOperator, kubectl: Callable[..., Any], kube_api: client.ApiClient,
    cluster: dict[str, str], ns: str, topic: Callable[..., str],
) -> None:
    bootstrap = {"bootstrapServers": cluster["SPEC_BOOTSTRAP"]}
    no_secret = example("minimal.yaml", topics=[topic(1)],
                        kafka={**bootstrap, "secretRef": {"name": "missing"}})
    no_secret["metadata"]["name"] = "no-secret"
    no_topic = example("minimal.yaml", topics=["does-not-exist"], kafka=bootstrap)
    no_topic["metadata"]["name"] = "no-topic"
    healthy = example("minimal.yaml", topics=[topic(2)], kafka=bootstrap)
    healthy["metadata"]["name"] = "healthy"
    for body in (no_secret, no_topic, healthy):
        _apply(kubectl, ns, body)

    def reason(name: str, want: str) -> bool:
        c = _condition(_kcg(kube_api, ns, name), "Ready") or {}
        return bool(c.get("reason") == want and c.get("status") == "False")

    eventually(lambda: reason("no-secret", "SecretNotFound"), what="SecretNotFound")
    eventually(lambda: reason("no-topic", "TopicNotFound"), what="TopicNotFound")
    eventually(lambda: (_condition(_kcg(kube_api, ns, "healthy"), "Ready") or {}).get(
        "status") == "True", what="the healthy group to be Ready")
    message = (_condition(_kcg(kube_api, ns, "no-topic"), "Ready") or {})["message"]
    assert "does-not-exist" in message
    events = client.CoreV1Api(kube_api).list_namespaced_event(ns).items
    assert any(e.reason == "TopicNotFound" and e.involved_object.name == "no-topic"
               for e in events)


@pytest.mark.parametrize("assignor,compliant", [("range", "False"),
                                                ("cooperative-sticky", "True")])
def test_rebalance_compliance_is_checked_on_the_broker(
    operator: RunningOperator, kubectl: Callable[..., Any], kube_api: client.ApiClient,
    cluster: dict[str, str], ns: str, topic: Callable[..., str], assignor: str, compliant: str,
) -> None:
    name = f"grp-{assignor.split('-')[0]}"
    body = example("minimal.yaml", topics=[topic(3)],
                   kafka={"bootstrapServers": cluster["SPEC_BOOTSTRAP"]})
    body["metadata"]["name"] = name
    _apply(kubectl, ns, body)
    consumer = Consumer({"bootstrap.servers": cluster["KAFKA_BOOTSTRAP_SERVERS"],
                         "group.id": name, "partition.assignment.strategy": assignor,
                         "client.id": f"rogue-{assignor}"})
    consumer.subscribe(body["spec"]["topics"])
    try:
        eventually(lambda: consumer.poll(0.2) is None and bool(consumer.assignment()),
                   timeout=30, what="the consumer to join")
        # Two check periods of the operator (KCG_CHECK_INTERVAL_SECONDS=2), plus slack
        # for the join to settle on the broker.
        cond = eventually(lambda: (c := _condition(_kcg(kube_api, ns, name),
                                                   "RebalanceCompliant")) and
                          c["status"] == compliant and c, timeout=10, what="RebalanceCompliant")
        if compliant == "False":
            assert assignor in cond["message"] and f"rogue-{assignor}" in cond["message"]
            assert cond["reason"] == "WrongAssignor"
        obj = _kcg(kube_api, ns, name)
        assert obj["status"]["assignor"] == assignor
    finally:
        consumer.close()


def test_outbox_adds_the_relay_as_a_native_sidecar(
    operator: RunningOperator, kubectl: Callable[..., Any], kube_api: client.ApiClient,
    cluster: dict[str, str], ns: str, topic: Callable[..., str],
) -> None:
    body = example("minimal.yaml", topics=[topic(2)],
                   kafka={"bootstrapServers": cluster["SPEC_BOOTSTRAP"]},
                   outbox={"databaseSecretRef": {"name": "orders-db", "key": "dsn"},
                           "table": "outbox", "batchSize": 500})
    body["metadata"]["name"] = "with-outbox"
    _apply(kubectl, ns, body)
    apps = client.AppsV1Api(kube_api)
    dep = eventually(lambda: apps.read_namespaced_deployment("with-outbox", ns),
                     what="the Deployment")
    relay = next(c for c in dep.spec.template.spec.init_containers
                 if c.name == "outbox-relay")
    assert relay.restart_policy == "Always"
    assert relay.command == ["kcg", "relay"]
    env = {e.name: e for e in relay.env}
    assert env["OUTBOX_DSN"].value_from.secret_key_ref.name == "orders-db"
    assert env["OUTBOX_BATCH_SIZE"].value == "500"
    assert relay.readiness_probe.http_get.path == "/readyz"
    assert relay.security_context.read_only_root_filesystem is True
    obj = eventually(lambda: (c := _condition(_kcg(kube_api, ns, "with-outbox"),
                                              "OutboxReady")) and c, what="OutboxReady")
    # The Secret orders-db does not exist here: the relay cannot start, and the condition
    # says so (tests/e2e/test_outbox_pods.py runs it for real).
    assert obj["status"] in ("False", "Unknown")
    assert obj["reason"] in ("RelaysNotReady", "NoDeployment")
