"""Security on a real listener (issue 10.4): the stack's Kafka also listens with SASL_SSL
(SCRAM-SHA-512, a certificate of the CA the stack makes). The operator and the consumer
pods connect with credentials from the referenced Secret only; a wrong password is a
condition that names the authentication failure; and the secret values appear nowhere the
operator writes or logs: status, Events, the rendered ConfigMap, its logs."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Producer
from kubernetes import client

from .conftest import EXTERNAL, OperatorPod, RunningOperator, eventually

pytestmark = pytest.mark.e2e


@pytest.fixture
def sasl(request: pytest.FixtureRequest) -> dict[str, str]:
    if EXTERNAL:
        pytest.skip("the SASL_SSL listener is the local stack's")
    stack = request.getfixturevalue("stack")
    if "KAFKA_SASL_BOOTSTRAP_SERVERS" not in stack:
        pytest.fail("this stack predates its SASL_SSL listener: make down && make up")
    return {k: str(stack[k]) for k in ("KAFKA_SASL_BOOTSTRAP_SERVERS", "KAFKA_SASL_USERNAME",
                                       "KAFKA_SASL_PASSWORD", "KAFKA_CA_FILE")}


def _secret(sasl: dict[str, str], password: str) -> client.V1Secret:
    data = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": sasl["KAFKA_SASL_USERNAME"], "sasl.password": password,
            "ssl.ca.pem": Path(sasl["KAFKA_CA_FILE"]).read_text()}
    return client.V1Secret(metadata=client.V1ObjectMeta(name="kafka-auth"),
                           data={k: base64.b64encode(v.encode()).decode()
                                 for k, v in data.items()})


def _kcg(api: client.ApiClient, ns: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "kcg.dev", "v1alpha1", ns, "kafkaconsumergroups", name)
    return obj


def _ready(obj: dict[str, Any]) -> str:
    cond = next((c for c in (obj.get("status") or {}).get("conditions") or []
                 if c["type"] == "Ready"), {})
    return f"{cond.get('status')}/{cond.get('reason')}"


def _everything_written(api: client.ApiClient, operator: RunningOperator, ns: str,
                        name: str) -> dict[str, str]:
    """What the operator wrote or logged about the group, as text."""
    core = client.CoreV1Api(api)
    logs = (operator.log_text() if not isinstance(operator, OperatorPod) else "\n".join(
        core.read_namespaced_pod_log(p.metadata.name, operator.namespace, container="operator")
        for p in operator.pods()))
    return {
        "the KafkaConsumerGroup (status included)": json.dumps(_kcg(api, ns, name)),
        "Events": "\n".join(e.message or "" for e in core.list_namespaced_event(ns).items),
        "the rendered ConfigMaps": json.dumps([c.data for c in core.list_namespaced_config_map(
            ns, label_selector=f"kcg.dev/group={name}").items]),
        "the Deployment": json.dumps(client.ApiClient().sanitize_for_serialization(
            client.AppsV1Api(api).read_namespaced_deployment(name, ns))),
        "the operator's logs": logs,
    }


def test_credentials_from_the_secret_only_reach_kafka_and_nowhere_else(
    operator: RunningOperator, kubectl: Callable[..., Any], kube_api: client.ApiClient,
    cluster: dict[str, str], ns: str, topic: Callable[..., str], examples_image: str,
    sasl: dict[str, str],
) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_secret(ns, _secret(sasl, sasl["KAFKA_SASL_PASSWORD"]))
    orders = topic(3)
    name = f"sasl-{orders[2:]}"
    body = {
        "apiVersion": "kcg.dev/v1alpha1", "kind": "KafkaConsumerGroup",
        "metadata": {"name": name},
        "spec": {
            "topics": [orders],
            "kafka": {"bootstrapServers": sasl["KAFKA_SASL_BOOTSTRAP_SERVERS"],
                      "secretRef": {"name": "kafka-auth"}},
            "consumerConfig": {"auto.offset.reset": "earliest"},
            "template": {"spec": {"containers": [{
                "name": "consumer", "image": examples_image, "imagePullPolicy": "Never",
                "command": ["python", "/app/consumer.py"]}]}},
        },
    }
    kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(body))
    producer = Producer({"bootstrap.servers": cluster["KAFKA_BOOTSTRAP_SERVERS"]})
    for i in range(300):
        producer.produce(orders, key=f"k{i % 13}", value=b"{}")
    assert producer.flush(30) == 0

    # The operator's client and the consumer pod both authenticated: the pod is a member
    # of the group and has consumed everything.
    def consumed() -> bool:
        obj = _kcg(kube_api, ns, name)
        status = obj.get("status") or {}
        return (_ready(obj) == "True/Reconciled" and len(status.get("members") or []) == 1
                and status.get("totalLag") == 0)

    eventually(consumed, timeout=120, what="the consumer pod in the group over SASL_SSL, lag 0")

    # A wrong password: a condition that names the authentication failure.
    wrong = "not-the-password-" + sasl["KAFKA_SASL_PASSWORD"][::-1]
    core.replace_namespaced_secret("kafka-auth", ns, _secret(sasl, wrong))
    obj = eventually(lambda: (o := _kcg(kube_api, ns, name))
                     and _ready(o) == "False/KafkaAuthenticationFailed" and o,
                     timeout=60, what="Ready=False KafkaAuthenticationFailed")
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert "Authentication failed" in ready["message"] and "SCRAM-SHA-512" in ready["message"]

    written = _everything_written(kube_api, operator, ns, name)
    for secret_value in (sasl["KAFKA_SASL_PASSWORD"], wrong):
        leaks = [where for where, text in written.items() if secret_value in text]
        assert not leaks, f"a secret value appears in {leaks}"
    print(f"sasl-ssl: searched {sum(len(t) for t in written.values())} characters in "
          f"{', '.join(written)}: no secret value")
