"""The seed's whole pattern in pods: the orders app records each order and its event in
one PostgreSQL transaction (deduplicated by order id), and the operator's `kcg relay`
native sidecar in the same pod publishes the outbox to Kafka."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.integration.outbox_support import consume
from tests.integration.test_orders_app import (  # noqa: F401 - names: a fixture
    PARTITIONS,
    Names,
    as_record,
    counts,
    names,
    order,
    produce,
    table_rows,
)

from .conftest import REPO, RunningOperator, eventually

pytestmark = pytest.mark.e2e


def _kcg(api: client.ApiClient, ns: str, name: str) -> dict[str, Any]:
    return dict(client.CustomObjectsApi(api).get_namespaced_custom_object(
        "kcg.dev", "v1alpha1", ns, "kafkaconsumergroups", name))


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in obj.get("status", {}).get("conditions", [])
                 if c["type"] == kind), None)


def orders_app_body(made: Names, bootstrap: str, image: str) -> dict[str, Any]:
    """examples/orders-outbox.yaml, pointed at this test's topics, tables and image."""
    body: dict[str, Any] = yaml.safe_load((REPO / "examples" / "orders-outbox.yaml").read_text())
    spec = body["spec"]
    spec["topics"] = [made.topic]
    spec["kafka"] = {"bootstrapServers": bootstrap}
    spec["consumerConfig"] = {"auto.offset.reset": "earliest"}
    spec["outbox"]["table"] = made.outbox
    spec["scaling"] = {"minReplicas": 2, "maxReplicas": 2, "pollIntervalSeconds": 2}
    app = spec["template"]["spec"]["containers"][0]
    app["image"], app["imagePullPolicy"] = image, "Never"
    app["args"] = ["--results-table", made.results, "--outbox-table", made.outbox,
                   "--output-topic", made.output_topic]
    return body


def test_orders_app_pods_and_relay_sidecar_publish_every_event_once_in_key_order(
    operator: RunningOperator, kubectl: Callable[..., Any], kube_api: client.ApiClient,
    cluster: dict[str, str], stack: dict[str, Any], examples_image: str, ns: str,
    names: Names,  # noqa: F811 - the fixture imported above
) -> None:
    bootstrap, dsn = str(stack["KAFKA_BOOTSTRAP_SERVERS"]), str(stack["OUTBOX_DSN"])
    client.CoreV1Api(kube_api).create_namespaced_secret(ns, client.V1Secret(
        metadata=client.V1ObjectMeta(name="orders-db"),
        data={"dsn": base64.b64encode(dsn.encode()).decode()}))
    distinct = 300
    # Each order once, then a third of them again (a redelivery: same key, same partition).
    records = [as_record(order(n)) for n in range(distinct)]
    records += [as_record(order(n)) for n in range(0, distinct, 3)]
    produce(bootstrap, names.topic, records)
    body = orders_app_body(names, cluster["SPEC_BOOTSTRAP"], examples_image)
    name = body["metadata"]["name"]
    kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(body))

    ready = eventually(lambda: (c := _condition(_kcg(kube_api, ns, name), "OutboxReady"))
                       and c["status"] == "True" and c, timeout=180, what="OutboxReady=True")
    assert ready["reason"]
    pods = client.CoreV1Api(kube_api).list_namespaced_pod(
        ns, label_selector=f"kcg.dev/group={name}").items
    assert len(pods) == 2
    for pod in pods:
        statuses = {s.name: s for s in (pod.status.init_container_statuses or [])}
        assert statuses["outbox-relay"].started and statuses["outbox-relay"].ready

    eventually(lambda: counts(dsn, names)[0] == distinct and counts(dsn, names)[2] == 0,
               timeout=120, what="every order processed and the outbox drained")
    messages = consume(bootstrap, names.output_topic, distinct, partitions=PARTITIONS)
    by_id: dict[str, Any] = {}
    for m in messages:
        assert m.value is not None
        # A duplicate is only ever a repeat of the same event.
        assert by_id.setdefault(m.event_id, m.value) == m.value
    assert len(by_id) == distinct, f"{len(by_id)} distinct events of {distinct}"
    first_seen: dict[str, list[int]] = {}
    seen: set[str] = set()
    for m in sorted(messages, key=lambda m: (m.partition, m.offset)):
        if m.event_id not in seen:
            seen.add(m.event_id)
            first_seen.setdefault(m.key, []).append(int(str(m.value["orderId"])[2:]))  # type: ignore[index]
    for key, ns_in_order in first_seen.items():
        assert ns_in_order == sorted(ns_in_order), f"{key} published out of order"
    (row,) = table_rows(dsn, f"SELECT count(*), count(DISTINCT idempotency_key) "
                             f"FROM {names.results}")
    assert row == (distinct, distinct)
    processed_by = {r[0] for r in table_rows(dsn, f"SELECT DISTINCT processed_by "
                                                  f"FROM {names.results}")}
    assert processed_by <= {p.metadata.name for p in pods}
    print(f"{len(messages)} messages, {len(by_id)} events, {len(messages) - len(by_id)} "
          f"duplicates; processed by {sorted(processed_by)}")
