"""Rendering the ConfigMap and Deployment of a KafkaConsumerGroup."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kcg_operator.api.models import (
    CREDENTIAL_CONSUMER_KEYS,
    MANAGED_CONSUMER_KEYS,
    parse_kafka_consumer_group,
)
from kcg_operator.workload.render import (
    AUTH_DIR,
    CONFIG_DIR,
    CONFIG_HASH_ANNOTATION,
    CONSUMER_PROPERTIES_FILE,
    DEFAULT_TERMINATION_GRACE_SECONDS,
    PRODUCER_PROPERTIES_FILE,
    WORKLOAD_HASH_ANNOTATION,
    Workload,
    render_workload,
    selector_labels,
    status_selector,
)

pytestmark = pytest.mark.unit


def body(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kcg.dev/v1alpha1",
        "kind": "KafkaConsumerGroup",
        "metadata": {"name": "orders", "namespace": "shop", "uid": "u-1"},
        "spec": {
            "topics": ["orders", "refunds"],
            "kafka": {"bootstrapServers": "kafka:9092"},
            "template": {
                "metadata": {"labels": {"team": "shop"}},
                "spec": {
                    "containers": [
                        {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}]},
                        {"name": "helper", "image": "helper:1"},
                    ]
                },
            },
            **spec,
        },
    }


def render(replicas: int = 2, auth: dict[str, str] | None = None, **spec: Any) -> Workload:
    return render_workload(
        parse_kafka_consumer_group(body(**spec)), replicas=replicas, auth_secret_data=auth
    )


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_owned_by_the_custom_resource() -> None:
    workload = render()
    for obj in (workload.config_map, workload.deployment):
        [ref] = obj["metadata"]["ownerReferences"]
        assert ref == {
            "apiVersion": "kcg.dev/v1alpha1",
            "kind": "KafkaConsumerGroup",
            "name": "orders",
            "uid": "u-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert obj["metadata"]["namespace"] == "shop"
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kcg-operator"
        assert obj["metadata"]["labels"]["kcg.dev/group"] == "orders"


def test_owner_reference_needs_a_uid() -> None:
    b = body()
    del b["metadata"]["uid"]
    with pytest.raises(ValueError, match="uid"):
        render_workload(parse_kafka_consumer_group(b), replicas=1)


def test_config_map_holds_the_properties() -> None:
    text = render().config_map["data"][CONSUMER_PROPERTIES_FILE]
    assert "partition.assignment.strategy=cooperative-sticky\n" in text
    assert "group.id=orders\n" in text


def test_deployment_shape() -> None:
    deployment = render(replicas=3).deployment
    spec = deployment["spec"]
    assert deployment["metadata"]["name"] == "orders"
    assert spec["replicas"] == 3
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    assert spec["selector"] == {"matchLabels": {"kcg.dev/group": "orders"}}
    labels = spec["template"]["metadata"]["labels"]
    assert labels.items() >= spec["selector"]["matchLabels"].items()
    assert labels["team"] == "shop"
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] == (
        DEFAULT_TERMINATION_GRACE_SECONDS
    )


def test_zero_replicas_allowed_negative_refused() -> None:
    assert render(replicas=0).deployment["spec"]["replicas"] == 0
    with pytest.raises(ValueError):
        render(replicas=-1)


def test_user_grace_period_kept() -> None:
    b = body()
    b["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 5
    deployment = render_workload(parse_kafka_consumer_group(b), replicas=1).deployment
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 5


def test_every_container_gets_the_mount_and_env() -> None:
    pod = render().deployment["spec"]["template"]["spec"]
    assert {"name": "kcg-client-config", "configMap": {"name": "orders-kafka-client"}} in pod[
        "volumes"
    ]
    for container in pod["containers"]:
        assert {
            "name": "kcg-client-config",
            "mountPath": CONFIG_DIR,
            "readOnly": True,
        } in container["volumeMounts"]
        env = env_of(container)
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert env["KAFKA_GROUP_ID"] == "orders"
        assert env["KAFKA_TOPICS"] == "orders,refunds"
        assert env["KCG_CONSUMER_PROPERTIES"] == f"{CONFIG_DIR}/{CONSUMER_PROPERTIES_FILE}"
        assert env["KCG_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        assert "KCG_KAFKA_AUTH_DIR" not in env and "KCG_PRODUCER_PROPERTIES" not in env
    assert env_of(pod["containers"][0])["A"] == "1"


def test_operator_env_comes_first_and_replaces_same_names() -> None:
    b = body()
    b["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "KAFKA_GROUP_ID", "value": "mine"},
        {"name": "DERIVED", "value": "$(KAFKA_GROUP_ID)-x"},
    ]
    container = render_workload(parse_kafka_consumer_group(b), replicas=1).deployment["spec"][
        "template"
    ]["spec"]["containers"][0]
    names = [e["name"] for e in container["env"]]
    assert names.count("KAFKA_GROUP_ID") == 1
    assert names.index("KAFKA_GROUP_ID") < names.index("DERIVED")
    assert env_of(container)["KAFKA_GROUP_ID"] == "orders"


def test_auth_secret_is_mounted_not_copied() -> None:
    secret = {"sasl.password": "hunter2", "security.protocol": "SASL_SSL"}
    workload = render(
        auth=secret, kafka={"bootstrapServers": "kafka:9092", "secretRef": {"name": "kafka-auth"}}
    )
    pod = workload.deployment["spec"]["template"]["spec"]
    assert {"name": "kcg-kafka-auth", "secret": {"secretName": "kafka-auth"}} in pod["volumes"]
    for container in pod["containers"]:
        assert {"name": "kcg-kafka-auth", "mountPath": AUTH_DIR, "readOnly": True} in container[
            "volumeMounts"
        ]
        assert env_of(container)["KCG_KAFKA_AUTH_DIR"] == AUTH_DIR
    rendered = repr(workload.config_map) + repr(workload.deployment)
    assert "hunter2" not in rendered and "SASL_SSL" not in rendered


def test_exactly_once_ships_the_producer_file() -> None:
    workload = render(deliverySemantics="exactlyOnce")
    assert "enable.idempotence=true" in workload.config_map["data"][PRODUCER_PROPERTIES_FILE]
    container = workload.deployment["spec"]["template"]["spec"]["containers"][0]
    assert (
        env_of(container)["KCG_PRODUCER_PROPERTIES"] == f"{CONFIG_DIR}/{PRODUCER_PROPERTIES_FILE}"
    )


def test_status_selector_matches_the_selector() -> None:
    kcg = parse_kafka_consumer_group(body())
    assert status_selector(kcg) == "kcg.dev/group=orders"
    assert selector_labels(kcg) == {"kcg.dev/group": "orders"}


def test_rendering_is_pure() -> None:
    b = body()
    kcg = parse_kafka_consumer_group(b)
    before = copy.deepcopy(kcg.spec.template)
    first = render_workload(kcg, replicas=1)
    second = render_workload(kcg, replicas=1)
    assert kcg.spec.template == before
    assert first == second


def _hash(workload: Workload) -> str:
    annotations = workload.deployment["spec"]["template"]["metadata"]["annotations"]
    value: str = annotations[CONFIG_HASH_ANNOTATION]
    return value


_keys = st.sampled_from(["fetch.min.bytes", "max.poll.interval.ms", "client.rack", "a.b"])
_configs = st.dictionaries(_keys, st.sampled_from(["1", "2", "x"]), max_size=3)


@settings(max_examples=60, deadline=None)
@given(
    first=_configs,
    second=_configs,
    images=st.tuples(st.sampled_from(["app:1", "app:2"]), st.sampled_from(["app:1", "app:2"])),
    semantics=st.tuples(
        st.sampled_from(["atLeastOnce", "exactlyOnce"]),
        st.sampled_from(["atLeastOnce", "exactlyOnce"]),
    ),
)
def test_config_hash_changes_iff_the_config_changes(
    first: dict[str, str],
    second: dict[str, str],
    images: tuple[str, str],
    semantics: tuple[str, str],
) -> None:
    def workload(config: dict[str, str], image: str, delivery: str) -> Workload:
        b = body(consumerConfig=config, deliverySemantics=delivery)
        b["spec"]["template"]["spec"]["containers"][0]["image"] = image
        return render_workload(parse_kafka_consumer_group(b), replicas=1)

    a = workload(first, images[0], semantics[0])
    b = workload(second, images[1], semantics[1])
    same_config = a.config_map["data"] == b.config_map["data"]
    assert (_hash(a) == _hash(b)) == same_config
    assert same_config == (first == second and semantics[0] == semantics[1])


def test_no_managed_or_credential_key_reaches_the_config_map_from_the_user() -> None:
    text = render(consumerConfig={"client.rack": "a"}).config_map["data"][CONSUMER_PROPERTIES_FILE]
    keys = {line.split("=", 1)[0] for line in text.splitlines() if not line.startswith("#")}
    assert not keys & CREDENTIAL_CONSUMER_KEYS
    assert keys & MANAGED_CONSUMER_KEYS.keys()  # the operator's own values


def _digest(w: Workload) -> str:
    return str(w.deployment["metadata"]["annotations"][WORKLOAD_HASH_ANNOTATION])


def test_the_workload_digest_changes_with_what_is_applied_and_only_with_it() -> None:
    scaled = {"scaling": {"minReplicas": 1, "maxReplicas": 4}}
    assert _digest(render(2)) == _digest(render(2))
    # The scaler owns replicas: a digest that followed them would re-apply at every scale.
    assert _digest(render(1, **scaled)) == _digest(render(3, **scaled))
    # Without scaling, spec.replicas is what is applied.
    pinned = [render_workload(parse_kafka_consumer_group(body(replicas=n)), replicas=n)
              for n in (2, 3)]
    assert _digest(pinned[0]) != _digest(pinned[1])
    assert _digest(render(2)) != _digest(render(2, consumerConfig={"max.poll.records": "50"}))
    assert _digest(render(2)) != _digest(render(2, topics=["orders"]))
    assert _digest(render(2)) != _digest(render(2, auth={"sasl.password": "x"}))
