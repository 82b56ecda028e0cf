"""The KafkaConsumerGroup models: defaults, aliases, and refusals that name field and fix."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kcg_operator.api.models import (
    CREDENTIAL_CONSUMER_KEYS,
    MANAGED_CONSUMER_KEYS,
    Condition,
    ConditionStatus,
    DeliverySemantics,
    InvalidKafkaConsumerGroup,
    KafkaConsumerGroup,
    KafkaConsumerGroupStatus,
    LagStatus,
    RebalanceProtocol,
    ScaleToZero,
    ScalingSpec,
    consumer_config_problems,
    managed_key_message,
    parse_kafka_consumer_group,
)

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def minimal_body() -> dict[str, Any]:
    return {
        "apiVersion": "kcg.dev/v1alpha1",
        "kind": "KafkaConsumerGroup",
        "metadata": {"name": "orders", "namespace": "shop", "uid": "u-1", "generation": 1},
        "spec": {
            "topics": ["orders"],
            "kafka": {"bootstrapServers": "kafka:9092"},
            "template": {"spec": {"containers": [{"name": "app", "image": "app:1"}]}},
        },
    }


def test_defaults() -> None:
    kcg = parse_kafka_consumer_group(minimal_body())
    spec = kcg.spec
    assert kcg.group_id == "orders"
    assert spec.delivery_semantics is DeliverySemantics.AT_LEAST_ONCE
    assert spec.rebalance_protocol is RebalanceProtocol.CLASSIC
    assert spec.replicas == 1
    assert spec.consumer_config == {}
    assert spec.scaling is None and spec.outbox is None and spec.kafka.secret_ref is None
    assert kcg.status is None


def test_group_id_overrides_the_name() -> None:
    body = minimal_body()
    body["spec"]["groupId"] = "orders-processor"
    assert parse_kafka_consumer_group(body).group_id == "orders-processor"


def test_scaling_defaults() -> None:
    scaling = ScalingSpec()
    assert (scaling.min_replicas, scaling.max_replicas, scaling.lag_per_replica) == (1, 10, 1000)
    assert scaling.scale_to_zero.enabled is False
    assert scaling.paused is False


def test_wire_names_are_camel_case_and_python_names_work_too() -> None:
    by_alias = ScalingSpec.model_validate({"minReplicas": 2, "scaleToZero": {"idleSeconds": 60}})
    by_name = ScalingSpec(min_replicas=2, scale_to_zero=ScaleToZero(idle_seconds=60))
    assert by_alias == by_name
    dumped = by_alias.model_dump(by_alias=True)
    assert dumped["minReplicas"] == 2 and dumped["scaleToZero"]["idleSeconds"] == 60


def test_examples_parse() -> None:
    for name in ("minimal.yaml", "full.yaml"):
        body = yaml.safe_load((REPO / "examples" / name).read_text())
        kcg = parse_kafka_consumer_group(body)
        assert kcg.spec.topics == ["orders"]


def test_status_round_trip() -> None:
    status = KafkaConsumerGroupStatus.model_validate(
        {
            "observedGeneration": 3,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "DeploymentAvailable",
                    "message": "3/3 replicas available",
                    "lastTransitionTime": "2025-01-01T00:00:00Z",
                }
            ],
            "lagStatus": "STALL",
            "members": [{"clientId": "c-1", "assignor": "range", "partitions": 2}],
            "selector": "kcg.dev/group=orders",
            "somethingOld": 1,
        }
    )
    assert status.lag_status is LagStatus.STALL
    assert status.conditions is not None
    assert status.conditions[0].status is ConditionStatus.TRUE
    out = status.model_dump(by_alias=True, mode="json", exclude_none=True)
    assert out["conditions"][0]["lastTransitionTime"].startswith("2025-01-01T00:00:00")
    assert "somethingOld" not in out


def test_condition_reason_must_be_camel_case() -> None:
    with pytest.raises(ValueError, match="reason"):
        Condition.model_validate(
            {
                "type": "Ready",
                "status": "True",
                "reason": "not camel case",
                "message": "",
                "lastTransitionTime": "2025-01-01T00:00:00Z",
            }
        )


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(body: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        node = body
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    return mutate


def _del(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(body: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        node = body
        for part in parents:
            node = node[part]
        del node[last]

    return mutate


BAD_INPUTS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("empty topics", _set("spec/topics", []), "spec.topics must name at least one topic"),
    ("duplicate topics", _set("spec/topics", ["a", "a"]), "spec.topics lists a more than once"),
    ("bad topic name", _set("spec/topics", ["a b"]), "is not a valid Kafka topic name"),
    ("topic '..'", _set("spec/topics", [".."]), "'.' and '..' are not valid"),
    ("missing topics", _del("spec/topics"), "spec.topics: Field required; add it"),
    ("missing bootstrap", _set("spec/kafka", {}), "spec.kafka.bootstrapServers: Field required"),
    (
        "bad bootstrap",
        _set("spec/kafka/bootstrapServers", "a:1, b:2"),
        "spec.kafka.bootstrapServers",
    ),
    ("unknown semantics", _set("spec/deliverySemantics", "twice"), "spec.deliverySemantics"),
    ("unknown protocol", _set("spec/rebalanceProtocol", "eager"), "spec.rebalanceProtocol"),
    (
        "min > max",
        _set("spec/scaling", {"minReplicas": 5, "maxReplicas": 2}),
        "spec.scaling.minReplicas must not exceed spec.scaling.maxReplicas",
    ),
    (
        "zero without scaleToZero",
        _set("spec/scaling", {"minReplicas": 0}),
        "scaleToZero.enabled is false",
    ),
    ("lagPerReplica 0", _set("spec/scaling", {"lagPerReplica": 0}), "spec.scaling.lagPerReplica"),
    ("negative replicas", _set("spec/replicas", -1), "spec.replicas"),
    (
        "assignment strategy",
        _set("spec/consumerConfig", {"partition.assignment.strategy": "range"}),
        "must not set partition.assignment.strategy",
    ),
    ("group.id", _set("spec/consumerConfig", {"group.id": "x"}), "set spec.groupId instead"),
    (
        "credential",
        _set("spec/consumerConfig", {"sasl.password": "x"}),
        "put it in the Secret named by spec.kafka.secretRef",
    ),
    (
        "credential suffix",
        _set("spec/consumerConfig", {"foo.secret": "x"}),
        "keys ending in .password or .secret",
    ),
    (
        "classic-only key with consumer protocol",
        lambda b: b["spec"].update(
            rebalanceProtocol="consumer", consumerConfig={"session.timeout.ms": "1"}
        ),
        "must not set session.timeout.ms with spec.rebalanceProtocol consumer",
    ),
    ("missing template", _del("spec/template"), "spec.template: Field required"),
    (
        "no containers",
        _set("spec/template", {"spec": {"containers": []}}),
        "spec.template.spec.containers must hold at least one container",
    ),
    (
        "container without image",
        _set("spec/template", {"spec": {"containers": [{"name": "a"}]}}),
        "every container needs an image",
    ),
    (
        "restartPolicy Never",
        _set("spec/template/spec/restartPolicy", "Never"),
        "restartPolicy must be Always",
    ),
    (
        "reserved pod label",
        _set("spec/template/metadata", {"labels": {"kcg.dev/group": "x"}}),
        "must not set kcg.dev/group",
    ),
    (
        "unknown field",
        _set("spec/replica", 2),
        "spec.replica: Extra inputs are not permitted; remove",
    ),
    ("secretRef without name", _set("spec/kafka/secretRef", {}), "spec.kafka.secretRef.name"),
    (
        "outbox bad table",
        _set("spec/outbox", {"databaseSecretRef": {"name": "db"}, "table": "a b"}),
        "spec.outbox.table",
    ),
    (
        "outbox with scaleToZero",
        lambda b: b["spec"].update(outbox={"databaseSecretRef": {"name": "db"}},
                                   scaling={"minReplicas": 0, "scaleToZero": {"enabled": True}}),
        "scaleToZero.enabled must be false with spec.outbox",
    ),
    ("name too long", _set("metadata/name", "x" * 64), "metadata.name"),
]


@pytest.mark.parametrize(
    ("mutate", "expected"), [(m, e) for _, m, e in BAD_INPUTS], ids=[n for n, _, _ in BAD_INPUTS]
)
def test_bad_input_is_refused_naming_the_field(
    mutate: Callable[[dict[str, Any]], None], expected: str
) -> None:
    body = minimal_body()
    mutate(body)
    with pytest.raises(InvalidKafkaConsumerGroup) as refused:
        parse_kafka_consumer_group(body)
    assert any(expected in problem for problem in refused.value.problems), refused.value.problems


def test_parse_does_not_modify_the_body() -> None:
    body = minimal_body()
    before = copy.deepcopy(body)
    parse_kafka_consumer_group(body)
    assert body == before


@pytest.mark.parametrize("key", sorted(MANAGED_CONSUMER_KEYS))
def test_every_managed_key_is_refused_with_its_reason(key: str) -> None:
    assert consumer_config_problems({key: "x"}) == [managed_key_message(key)]
    assert key in managed_key_message(key)


@pytest.mark.parametrize("key", sorted(CREDENTIAL_CONSUMER_KEYS))
def test_every_credential_key_is_refused(key: str) -> None:
    [problem] = consumer_config_problems({key: "x"})
    assert key in problem and "spec.kafka.secretRef" in problem


_property_names = st.from_regex(r"\A[a-z]{1,8}(\.[a-z]{1,8}){0,3}\Z")


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        _property_names,
        st.text(max_size=20).filter(lambda v: "\n" not in v and "\r" not in v),
        max_size=8,
    )
)
def test_any_unmanaged_consumer_config_is_accepted(config: dict[str, str]) -> None:
    config = {
        k: v
        for k, v in config.items()
        if k not in MANAGED_CONSUMER_KEYS
        and k not in CREDENTIAL_CONSUMER_KEYS
        and not k.endswith((".password", ".secret"))
    }
    body = minimal_body()
    body["spec"]["consumerConfig"] = config
    assert parse_kafka_consumer_group(body).spec.consumer_config == config


def test_whole_object_type() -> None:
    kcg = KafkaConsumerGroup.model_validate(minimal_body())
    assert kcg.metadata.uid == "u-1"
    assert kcg.api_version == "kcg.dev/v1alpha1"
