"""Pod Security "restricted" (issue 10.4): the chart installs into a namespace that enforces
it, and the consumer pods the operator renders, relay sidecar included, are admitted there
(the apiserver's PodSecurity admission refuses a pod that breaks it at creation)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from .conftest import (
    REPO,
    OperatorPod,
    RunningOperator,
    eventually,
    helm_binary,
    install_operator,
)

pytestmark = pytest.mark.e2e
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}


@pytest.fixture
def restricted(kube_api: client.ApiClient) -> Iterator[Callable[[str], str]]:
    core, made = client.CoreV1Api(kube_api), []

    def make(prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        core.create_namespace(client.V1Namespace(
            metadata=client.V1ObjectMeta(name=name, labels=RESTRICTED)))
        made.append(name)
        return name

    yield make
    for name in made:
        core.delete_namespace(name)


def _refusals(api: client.ApiClient, ns: str) -> list[str]:
    """What the ReplicaSets were refused (FailedCreate Events name the PodSecurity rule)."""
    return [e.message for e in client.CoreV1Api(api).list_namespaced_event(ns).items
            if e.reason == "FailedCreate"]


def test_the_chart_installs_into_a_restricted_namespace(
    operator: RunningOperator, cluster: dict[str, str], kube_api: client.ApiClient,
    restricted: Callable[[str], str],
) -> None:
    if "OPERATOR_IMAGE" not in cluster:
        pytest.fail("the chart's pods need the operator image on the node (make up)")
    ns = restricted("kcg-restricted")
    release = f"kcg-{ns[-6:]}"
    # It serves only its own (empty) namespace: it must not fight the suite's operator.
    install_operator(cluster["KUBECONFIG"], ns, release, cluster["OPERATOR_IMAGE"],
                     ["--set", f"watchNamespaces={{{ns}}}"])
    try:
        pods = OperatorPod(kube_api, ns, release)
        pods.wait_ready(timeout=150)  # both replicas admitted, Ready, one leading
        assert len(pods.pods()) == 2
        assert _refusals(kube_api, ns) == []
    finally:
        subprocess.run([helm_binary(), "uninstall", release, "--namespace", ns],
                       capture_output=True, timeout=120,
                       env={**os.environ, "KUBECONFIG": cluster["KUBECONFIG"]})


def test_rendered_consumer_pods_with_the_relay_sidecar_are_admitted(
    operator: RunningOperator, kubectl: Callable[..., Any], kube_api: client.ApiClient,
    cluster: dict[str, str], examples_image: str, topic: Callable[..., str],
    restricted: Callable[[str], str],
) -> None:
    ns = restricted("kcg-restricted-app")
    body: dict[str, Any] = yaml.safe_load((REPO / "examples" / "orders-outbox.yaml").read_text())
    body["metadata"]["name"] = "orders-app"
    body["spec"].update(topics=[topic(2)], kafka={"bootstrapServers": cluster["SPEC_BOOTSTRAP"]})
    # A pod-level securityContext as restricted asks of every container (the example sets
    # the container level already); the operator adds its volumes and the relay sidecar.
    body["spec"]["template"]["spec"]["securityContext"] = {
        "runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}}
    container = body["spec"]["template"]["spec"]["containers"][0]
    container["image"], container["imagePullPolicy"] = examples_image, "Never"
    kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(body))
    core = client.CoreV1Api(kube_api)

    def created() -> list[client.V1Pod] | None:
        refused = _refusals(kube_api, ns)
        assert not refused, f"PodSecurity refused the rendered pod: {refused}"
        pods = core.list_namespaced_pod(ns, label_selector="kcg.dev/group=orders-app").items
        return pods or None

    (pod, *_) = eventually(created, timeout=60, what="the consumer pod created")
    names = {c.name for c in pod.spec.init_containers or []}
    assert "outbox-relay" in names  # the relay sidecar was part of the admitted pod
