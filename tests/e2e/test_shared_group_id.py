"""Two KafkaConsumerGroups that name one Kafka group on one cluster (the default group id is
metadata.name, so team-a/orders and team-b/orders) are both flagged, each naming the other,
until one of them is gone."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.conftest import fresh_namespace

from .conftest import RunningOperator, eventually, example

pytestmark = pytest.mark.e2e


@pytest.fixture
def second_ns(kube_api: client.ApiClient, unique_name: str) -> Iterator[str]:
    with fresh_namespace(kube_api, f"{unique_name[:50]}-b") as name:
        yield name


def _condition(api: client.ApiClient, ns: str, name: str, type_: str) -> dict[str, Any] | None:
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "kcg.dev", "v1alpha1", ns, "kafkaconsumergroups", name)
    return next((c for c in (obj.get("status") or {}).get("conditions") or []
                 if c["type"] == type_), None)


def test_two_objects_with_one_group_id_are_both_flagged_until_one_moves(
    operator: RunningOperator, kubectl: Callable[..., Any], kube_api: client.ApiClient,
    cluster: dict[str, str], ns: str, second_ns: str, topic: Callable[..., str],
) -> None:
    name = f"shared-{topic(1)[2:]}"  # one group id, unique on the shared broker
    body = example("minimal.yaml", topics=[topic(2)],
                   kafka={"bootstrapServers": cluster["SPEC_BOOTSTRAP"]})
    body["metadata"]["name"] = name
    for namespace in (ns, second_ns):
        kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(body))

    def flagged(mine: str, other: str) -> dict[str, Any] | None:
        cond = _condition(kube_api, mine, name, "GroupIdUnique")
        return cond if cond and cond["status"] == "False" else None

    for mine, other in ((ns, second_ns), (second_ns, ns)):
        cond = eventually(lambda m=mine, o=other: flagged(m, o), timeout=60,
                          what=f"{mine}/{name} flagged")
        assert cond["reason"] == "SharedGroupId"
        assert f"{other}/{name}" in cond["message"] and "spec.groupId" in cond["message"]
    events = client.CoreV1Api(kube_api).list_namespaced_event(ns).items
    assert any(e.reason == "SharedGroupId" and e.involved_object.name == name for e in events)

    # spec.groupId is immutable: the fix is one of them recreated under its own group id.
    kubectl("delete", "kcg", name, "-n", second_ns)
    eventually(lambda: (c := _condition(kube_api, ns, name, "GroupIdUnique"))
               and c["status"] == "True", timeout=60, what=f"{ns}/{name} unique again")
