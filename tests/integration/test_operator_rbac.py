"""The real operator, run with a token of the chart's ServiceAccount, does its job.

Least privilege is proven both ways: tests/integration/test_helm_chart.py shows the token
is refused (403) for what the operator must not do; here the operator, holding only that
token, reconciles an example in the namespaces the chart lets it watch.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.e2e.conftest import Operator, eventually, example

from .conftest import ChartInstall

pytestmark = pytest.mark.integration


def topic_with(stack: dict[str, Any], partitions: int) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    name = f"rbac-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": str(stack["KAFKA_BOOTSTRAP_SERVERS"])})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result()
    return name


@pytest.fixture
def watched(kube: client.ApiClient) -> Iterator[str]:
    core = client.CoreV1Api(kube)
    name = f"rbac-watched-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        core.delete_namespace(name)


def test_operator_with_the_chart_token_reconciles_an_example(
    kube: client.ApiClient, install_chart: Callable[..., ChartInstall], namespace: str,
    watched: str, stack: dict[str, Any], tmp_path: Path,
) -> None:
    release = install_chart(namespace, watch_namespaces=[watched])
    body = example("minimal.yaml", topics=["rbac-probe"],
                   kafka={"bootstrapServers": str(stack["KAFKA_BOOTSTRAP_SERVERS"])})
    body["metadata"]["namespace"] = watched
    client.CustomObjectsApi(kube).create_namespaced_custom_object(
        "kcg.dev", "v1alpha1", watched, "kafkaconsumergroups", body)

    op = Operator(str(release.kubeconfig), ["--namespace", watched], tmp_path / "op.log")
    try:
        apps = client.AppsV1Api(kube)
        eventually(lambda: apps.read_namespaced_deployment("orders-minimal", watched),
                   timeout=60, what="the Deployment made with the chart's token")

        def reconciled_by_it() -> bool:
            log = op.log.read_text(errors="replace")
            # This operator watches only `watched`, where orders-minimal is the only object.
            return "Handler 'reconcile' succeeded" in log
        eventually(reconciled_by_it, timeout=30, what="this operator's reconcile")
        obj = eventually(lambda: (o := client.CustomObjectsApi(kube).get_namespaced_custom_object(
            "kcg.dev", "v1alpha1", watched, "kafkaconsumergroups", "orders-minimal")).get(
            "status", {}).get("conditions") and o, what="a status written with the token")
        ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
        # The topic does not exist: the operator says so, which proves it reached Kafka too.
        assert ready["reason"] == "TopicNotFound"

        # Scaling goes through deployments/scale: a group over its cap is brought down to
        # it by this operator, with only the chart's rights.
        scaled = example("minimal.yaml", topics=[topic_with(stack, 3)],
                         kafka={"bootstrapServers": str(stack["KAFKA_BOOTSTRAP_SERVERS"])},
                         scaling={"minReplicas": 1, "maxReplicas": 2, "pollIntervalSeconds": 1})
        scaled["metadata"] = {"name": "capped", "namespace": watched}
        client.CustomObjectsApi(kube).create_namespaced_custom_object(
            "kcg.dev", "v1alpha1", watched, "kafkaconsumergroups", scaled)
        eventually(lambda: apps.read_namespaced_deployment("capped", watched), timeout=60,
                   what="the capped Deployment")
        apps.patch_namespaced_deployment_scale("capped", watched, {"spec": {"replicas": 5}})
        eventually(lambda: apps.read_namespaced_deployment("capped", watched).spec.replicas <= 2,
                   timeout=60, what="the operator to scale 5 down within maxReplicas 2")
    finally:
        op.stop()
    log = op.log.read_text(errors="replace")
    assert "403" not in log and "Forbidden" not in log, log[-3000:]
