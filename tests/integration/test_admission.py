"""Bad KafkaConsumerGroups are refused at `kubectl apply` time, naming the field and the fix.

Every case here is listed in the README's "Refused at apply time" table.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import config

from tests.e2e.conftest import wait_established

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

VALID: dict[str, Any] = {
    "apiVersion": "kcg.dev/v1alpha1",
    "kind": "KafkaConsumerGroup",
    "metadata": {"name": "probe"},
    "spec": {
        "topics": ["orders"],
        "kafka": {"bootstrapServers": "kafka:9092"},
        "template": {"spec": {"containers": [{"name": "app", "image": "example/app:1"}]}},
    },
}


def _with(path: str, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(VALID)
    node: Any = body
    *parents, leaf = path.split("/")
    for part in parents:
        node = node.setdefault(part, {}) if not part.isdigit() else node[int(part)]
    if value is DELETE:
        del node[leaf]
    elif leaf.isdigit():
        node[int(leaf)] = value
    else:
        node[leaf] = value
    return body


DELETE = object()
CONTAINER = "spec/template/spec/containers/0"

# (case id, body, substrings the refusal must contain: the field path and the fix)
CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("empty-topics", _with("spec/topics", []), ["spec.topics", "at least one topic"]),
    ("missing-topics", _with("spec/topics", DELETE), ["spec.topics", "Required"]),
    ("duplicate-topics", _with("spec/topics", ["orders", "orders"]), ["spec.topics[1]",
                                                                       "Duplicate"]),
    ("bad-topic-name", _with("spec/topics", ["orders!"]), ["spec.topics[0]"]),
    ("missing-bootstrap", _with("spec/kafka", {}), ["spec.kafka.bootstrapServers", "Required"]),
    ("unknown-delivery-semantics", _with("spec/deliverySemantics", "exactlyTwice"),
     ["spec.deliverySemantics", "atLeastOnce"]),
    ("unknown-rebalance-protocol", _with("spec/rebalanceProtocol", "eager"),
     ["spec.rebalanceProtocol", "classic"]),
    ("min-above-max", _with("spec/scaling", {"minReplicas": 5, "maxReplicas": 2}),
     ["spec.scaling.minReplicas", "maxReplicas"]),
    ("zero-min-without-scale-to-zero", _with("spec/scaling", {"minReplicas": 0}),
     ["minReplicas", "scaleToZero.enabled"]),
    ("zero-lag-per-replica", _with("spec/scaling", {"lagPerReplica": 0}),
     ["spec.scaling.lagPerReplica"]),
    ("negative-replicas", _with("spec/replicas", -1), ["spec.replicas"]),
    ("conflicting-assignor", _with("spec/consumerConfig",
                                   {"partition.assignment.strategy": "range"}),
     ["partition.assignment.strategy", "spec.rebalanceProtocol"]),
    ("group-id-in-config", _with("spec/consumerConfig", {"group.id": "x"}),
     ["group.id", "spec.groupId"]),
    ("auto-commit-in-config", _with("spec/consumerConfig", {"enable.auto.commit": "true"}),
     ["enable.auto.commit", "spec.deliverySemantics"]),
    ("password-inline", _with("spec/consumerConfig", {"sasl.password": "hunter2"}),
     ["sasl.password", "spec.kafka.secretRef"]),
    ("session-timeout-with-kip848", {**_with("spec/consumerConfig",
                                             {"session.timeout.ms": "10000"}),
                                     "spec": {**_with("spec/consumerConfig", {
                                         "session.timeout.ms": "10000"})["spec"],
                                         "rebalanceProtocol": "consumer"}},
     ["session.timeout.ms"]),
    ("config-key-not-a-property", _with("spec/consumerConfig", {"bad key": "1"}),
     ["spec.consumerConfig", "librdkafka name"]),
    ("config-value-with-line-break", _with("spec/consumerConfig",
                                           {"client.rack": "a\nsasl.password=x"}),
     ["spec.consumerConfig", "single line"]),
    ("no-containers", _with("spec/template/spec/containers", []),
     ["spec.template", "at least one container"]),
    ("container-without-name", _with(f"{CONTAINER}/name", DELETE),
     ["spec.template.spec.containers[0].name", "Required"]),
    ("restart-policy-never", _with("spec/template/spec/restartPolicy", "Never"),
     ["restartPolicy", "Always"]),
    ("malformed-cpu-quantity", _with(f"{CONTAINER}/resources", {"limits": {"cpu": "lots"}}),
     ["spec.template.spec.containers[0].resources.limits.cpu"]),
    ("container-port-not-a-number", _with(f"{CONTAINER}/ports",
                                          [{"containerPort": "http"}]),
     ["containerPort"]),
    ("unknown-template-field", _with(f"{CONTAINER}/imagePullPolcy", "Always"),
     ["imagePullPolcy"]),
    ("secret-ref-without-name", _with("spec/kafka/secretRef", {}),
     ["spec.kafka.secretRef.name"]),
    ("bad-outbox-table", _with("spec/outbox", {"databaseSecretRef": {"name": "db"},
                                               "table": "out box; drop"}),
     ["spec.outbox.table"]),
    ("outbox-without-secret", _with("spec/outbox", {}), ["spec.outbox.databaseSecretRef"]),
    ("outbox-with-scale-to-zero", {**VALID, "spec": {
        **VALID["spec"], "outbox": {"databaseSecretRef": {"name": "db"}},
        "scaling": {"minReplicas": 0, "scaleToZero": {"enabled": True}}}},
     ["spec.scaling.scaleToZero.enabled", "remove spec.outbox"]),
]
# The rules the README names below its table ("also enforced by the apiserver").
UNLISTED: list[tuple[str, dict[str, Any], list[str]]] = [
    ("name-longer-than-a-label", {**VALID, "metadata": {"name": "n" * 64}},
     ["metadata.name", "63"]),
    ("container-without-image", _with(f"{CONTAINER}/image", DELETE),
     ["image"]),
    ("template-sets-the-group-label",
     _with("spec/template/metadata", {"labels": {"kcg.dev/group": "other"}}),
     ["kcg.dev/group"]),
]


@pytest.fixture(scope="module")
def kubectl(stack: dict[str, Any]) -> Any:
    sys.path.insert(0, str(REPO / "stack"))
    import localstack

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(localstack.K8S_BIN / "kubectl"), *args], input=stdin,
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "KUBECONFIG": str(stack["KUBECONFIG"])})

    applied = run("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    assert applied.returncode == 0, applied.stderr
    api = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(stack["KUBECONFIG"]))
    try:
        wait_established(api)
    finally:
        api.close()
    return run


def test_the_valid_object_is_accepted(kubectl: Any, namespace: str) -> None:
    proc = kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(VALID))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("body,expected", [(b, e) for _, b, e in CASES + UNLISTED],
                         ids=[c[0] for c in CASES + UNLISTED])
def test_bad_input_is_refused_at_apply_time_naming_the_field(
    kubectl: Any, namespace: str, body: dict[str, Any], expected: list[str]
) -> None:
    proc = kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(body))
    assert proc.returncode != 0, f"accepted: {proc.stdout}"
    for fragment in expected:
        assert fragment in proc.stderr, proc.stderr
    assert kubectl("get", "kcg", "-n", namespace, "-o", "name").stdout == ""


def _apply(kubectl: Any, namespace: str, body: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(body))  # type: ignore[no-any-return]


def _group_id(kubectl: Any, namespace: str, name: str) -> str:
    return str(kubectl("get", "kcg", name, "-n", namespace,
                       "-o", "jsonpath={.spec.groupId}").stdout)


@pytest.mark.parametrize(("before", "after"), [("orders-v1", "orders-v2"), (None, "orders-v2"),
                                               ("orders-v1", None)],
                         ids=["changed", "added", "removed"])
def test_group_id_is_immutable_at_the_apiserver(
    kubectl: Any, namespace: str, before: str | None, after: str | None
) -> None:
    """README: spec.groupId is immutable (another id is another group, without its offsets)."""
    def body(group_id: str | None, replicas: int) -> dict[str, Any]:
        out = copy.deepcopy(VALID)
        out["spec"]["replicas"] = replicas
        if group_id is not None:
            out["spec"]["groupId"] = group_id
        return out

    created = _apply(kubectl, namespace, body(before, 1))
    assert created.returncode == 0, created.stderr
    # Other fields still change freely, with the group id as it was.
    unchanged = _apply(kubectl, namespace, body(before, 2))
    assert unchanged.returncode == 0, unchanged.stderr

    refused = _apply(kubectl, namespace, body(after, 3))
    assert refused.returncode != 0, f"accepted: {refused.stdout}"
    assert "spec.groupId is immutable" in refused.stderr, refused.stderr
    assert "create a new KafkaConsumerGroup instead" in refused.stderr, refused.stderr
    # Nothing of the refused update was stored.
    assert _group_id(kubectl, namespace, "probe") == (before or "")
    replicas = kubectl("get", "kcg", "probe", "-n", namespace, "-o", "jsonpath={.spec.replicas}")
    assert replicas.stdout == "2"
