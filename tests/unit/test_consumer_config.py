"""Client properties from the spec: protocols, delivery presets, managed keys, auth."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kcg_operator.api.models import (
    CLASSIC_ONLY_CONSUMER_KEYS,
    CREDENTIAL_CONSUMER_KEYS,
    MANAGED_CONSUMER_KEYS,
    DeliverySemantics,
    InvalidKafkaConsumerGroup,
    KafkaConsumerGroup,
    RebalanceProtocol,
    parse_kafka_consumer_group,
)
from kcg_operator.workload.consumer_config import (
    CLASSIC_DEFAULT_PROPERTIES,
    DEFAULT_PROPERTIES,
    ConsumerConfigError,
    build_consumer_config,
    enforced_properties,
    properties_text,
)
from tests.example_apps import load_example_app

pytestmark = pytest.mark.unit


def make_kcg(**spec: Any) -> KafkaConsumerGroup:
    body: dict[str, Any] = {
        "metadata": {"name": "orders", "namespace": "shop", "uid": "u-1"},
        "spec": {
            "topics": ["orders"],
            "kafka": {"bootstrapServers": "kafka:9092"},
            "template": {"spec": {"containers": [{"name": "app", "image": "app:1"}]}},
            **spec,
        },
    }
    return parse_kafka_consumer_group(body)


def test_classic_protocol_enforces_cooperative_sticky() -> None:
    props = build_consumer_config(make_kcg()).consumer
    assert props["partition.assignment.strategy"] == "cooperative-sticky"
    assert props["group.protocol"] == "classic"
    assert props["group.id"] == "orders"
    assert props["bootstrap.servers"] == "kafka:9092"
    assert "session.timeout.ms" in props


def test_consumer_protocol_leaves_assignment_to_the_broker() -> None:
    props = build_consumer_config(make_kcg(rebalanceProtocol="consumer")).consumer
    assert props["group.protocol"] == "consumer"
    assert "partition.assignment.strategy" not in props
    assert not CLASSIC_ONLY_CONSUMER_KEYS & props.keys()


@pytest.mark.parametrize("protocol", list(RebalanceProtocol))
@pytest.mark.parametrize("semantics", list(DeliverySemantics))
def test_every_preset_commits_manually_and_reads_committed(
    semantics: DeliverySemantics, protocol: RebalanceProtocol
) -> None:
    kcg = make_kcg(deliverySemantics=semantics.value, rebalanceProtocol=protocol.value)
    config = build_consumer_config(kcg)
    assert config.consumer["enable.auto.commit"] == "false"
    assert config.consumer["enable.auto.offset.store"] == "false"
    assert config.consumer["isolation.level"] == "read_committed"
    assert f"deliverySemantics={semantics.value}" in config.consumer_properties_text()
    if semantics is DeliverySemantics.EXACTLY_ONCE:
        assert config.producer is not None
        assert config.producer["enable.idempotence"] == "true"
        assert config.producer["acks"] == "all"
        assert "transactional.id" not in config.producer  # per pod, set by the app
    else:
        assert config.producer is None and config.producer_properties_text() is None


def test_commit_advice_differs_per_preset() -> None:
    texts = {
        s: build_consumer_config(make_kcg(deliverySemantics=s.value)).consumer_properties_text()
        for s in DeliverySemantics
    }
    assert "BEFORE" in texts[DeliverySemantics.AT_MOST_ONCE]
    assert "THEN commit" in texts[DeliverySemantics.AT_LEAST_ONCE]
    assert "transaction" in texts[DeliverySemantics.EXACTLY_ONCE]


def test_enforced_keys_are_the_managed_keys() -> None:
    classic = set(enforced_properties(make_kcg()))
    consumer = set(enforced_properties(make_kcg(rebalanceProtocol="consumer")))
    assert classic <= MANAGED_CONSUMER_KEYS.keys()
    assert set(MANAGED_CONSUMER_KEYS) - classic == {"metadata.broker.list", "group.instance.id"}
    assert classic - consumer == {"partition.assignment.strategy"}


def test_user_properties_override_defaults() -> None:
    props = build_consumer_config(make_kcg(consumerConfig={"auto.offset.reset": "latest"})).consumer
    assert props["auto.offset.reset"] == "latest"


@pytest.mark.parametrize("key", sorted(MANAGED_CONSUMER_KEYS))
def test_managed_key_refused_even_without_admission(key: str) -> None:
    # An object stored before a rule existed skips admission; the function checks again.
    kcg = make_kcg()
    bypass = kcg.model_copy(
        update={"spec": kcg.spec.model_copy(update={"consumer_config": {key: "x"}})}
    )
    with pytest.raises(ConsumerConfigError) as refused:
        build_consumer_config(bypass)
    assert key in str(refused.value)
    assert MANAGED_CONSUMER_KEYS[key].why in str(refused.value)


def test_classic_only_key_refused_with_consumer_protocol_without_admission() -> None:
    kcg = make_kcg(rebalanceProtocol="consumer")
    bypass = kcg.model_copy(
        update={
            "spec": kcg.spec.model_copy(update={"consumer_config": {"session.timeout.ms": "1"}})
        }
    )
    with pytest.raises(ConsumerConfigError, match=r"session\.timeout\.ms"):
        build_consumer_config(bypass)


def test_auth_secret_keys_are_named_never_valued() -> None:
    kcg = make_kcg(kafka={"bootstrapServers": "kafka:9092", "secretRef": {"name": "kafka-auth"}})
    secret = {
        "sasl.password": "hunter2",
        "sasl.username": "orders",
        "security.protocol": "SASL_SSL",
    }
    config = build_consumer_config(kcg, secret)
    text = config.consumer_properties_text()
    assert config.auth_keys == ("sasl.password", "sasl.username", "security.protocol")
    assert "sasl.password" in text and "kafka-auth" in text
    assert "hunter2" not in text and "SASL_SSL" not in text
    assert not CREDENTIAL_CONSUMER_KEYS & config.consumer.keys()


def test_auth_secret_must_not_hold_managed_keys() -> None:
    kcg = make_kcg(kafka={"bootstrapServers": "kafka:9092", "secretRef": {"name": "kafka-auth"}})
    with pytest.raises(ConsumerConfigError, match=r"Secret kafka-auth .* must not hold group\.id"):
        build_consumer_config(kcg, {"group.id": "x"})


_plain_keys = st.from_regex(r"\A[a-z]{1,6}(\.[a-z]{1,6}){0,2}\Z").filter(
    lambda k: (
        k not in MANAGED_CONSUMER_KEYS
        and k not in CREDENTIAL_CONSUMER_KEYS
        and not k.endswith((".password", ".secret"))
        and k not in CLASSIC_ONLY_CONSUMER_KEYS
    )
)
_values = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=30)
# Keys a user may write and the operator accepts, with either protocol: the operator's
# overridable defaults and any other property. Classic-only tuning is accepted with the
# classic protocol only.
_accepted_keys = st.one_of(
    st.sampled_from(sorted(DEFAULT_PROPERTIES)),
    st.sampled_from(sorted(CLASSIC_DEFAULT_PROPERTIES)),
    st.sampled_from(sorted(CLASSIC_ONLY_CONSUMER_KEYS)),
    _plain_keys,
)
# Keys the README's "Refused at apply time" table refuses: the managed ones (including
# metadata.broker.list and group.instance.id, which the operator never writes) and
# credentials by name and by suffix; with the consumer protocol, classic-only tuning too.
_refused_keys = st.one_of(
    st.sampled_from(sorted(MANAGED_CONSUMER_KEYS)),
    st.sampled_from(sorted(CREDENTIAL_CONSUMER_KEYS)),
    _plain_keys.map(lambda k: k + ".password"),
    _plain_keys.map(lambda k: k + ".secret"),
)


def _bypassing_admission(kcg: KafkaConsumerGroup, user: dict[str, str]) -> KafkaConsumerGroup:
    """`kcg` with consumerConfig set as if stored before a rule existed (no validation)."""
    return kcg.model_copy(
        update={"spec": kcg.spec.model_copy(update={"consumer_config": user})}
    )


@settings(max_examples=120, deadline=None)
@given(
    data=st.data(),
    semantics=st.sampled_from(list(DeliverySemantics)),
    protocol=st.sampled_from(list(RebalanceProtocol)),
)
def test_user_keys_override_the_defaults_and_the_enforced_keys_are_always_set(
    data: st.DataObject, semantics: DeliverySemantics, protocol: RebalanceProtocol
) -> None:
    classic = protocol is RebalanceProtocol.CLASSIC
    keys = _accepted_keys if classic else _accepted_keys.filter(
        lambda k: k not in CLASSIC_ONLY_CONSUMER_KEYS)
    user = data.draw(st.dictionaries(keys, _values, max_size=10), label="consumerConfig")
    kcg = make_kcg(consumerConfig=user, deliverySemantics=semantics.value,
                   rebalanceProtocol=protocol.value)
    props = build_consumer_config(kcg).consumer
    # Defaults, then the user's keys, then the enforced ones (which no accepted key names:
    # the refusal test below shows a managed key is refused, never silently overridden).
    assert props == {
        "auto.offset.reset": "earliest",
        "max.poll.interval.ms": "300000",
        "socket.keepalive.enable": "true",
        **({"session.timeout.ms": "45000", "heartbeat.interval.ms": "3000"} if classic else {}),
        **user,
        "bootstrap.servers": "kafka:9092",
        "group.id": "orders",
        "group.protocol": protocol.value,
        "enable.auto.commit": "false",
        "enable.auto.offset.store": "false",
        "isolation.level": "read_committed",
        **({"partition.assignment.strategy": "cooperative-sticky"} if classic else {}),
    }


@settings(max_examples=120, deadline=None)
@given(
    data=st.data(),
    semantics=st.sampled_from(list(DeliverySemantics)),
    protocol=st.sampled_from(list(RebalanceProtocol)),
)
def test_a_managed_key_is_refused_and_named_never_overridden(
    data: st.DataObject, semantics: DeliverySemantics, protocol: RebalanceProtocol
) -> None:
    refusing = _refused_keys if protocol is RebalanceProtocol.CLASSIC else st.one_of(
        _refused_keys, st.sampled_from(sorted(CLASSIC_ONLY_CONSUMER_KEYS)))
    refused = data.draw(st.dictionaries(refusing, _values, min_size=1, max_size=4),
                        label="refused keys")
    accepted = data.draw(st.dictionaries(_plain_keys, _values, max_size=4),
                         label="other keys")
    user = {**accepted, **refused}
    # Refused when parsed (as at admission), and again by the renderer for an object
    # stored before a rule existed: nothing is rendered, every refused key is named.
    with pytest.raises(InvalidKafkaConsumerGroup) as parsed:
        make_kcg(consumerConfig=user, deliverySemantics=semantics.value,
                 rebalanceProtocol=protocol.value)
    base = make_kcg(deliverySemantics=semantics.value, rebalanceProtocol=protocol.value)
    with pytest.raises(ConsumerConfigError) as built:
        build_consumer_config(_bypassing_admission(base, user))
    for key in refused:
        named = (".password or .secret" if key.endswith((".password", ".secret"))
                 and key not in CREDENTIAL_CONSUMER_KEYS else key)
        assert named in str(built.value)
        assert named in str(parsed.value)


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(_plain_keys, _values.map(str.strip), max_size=10))
def test_properties_file_round_trips_through_the_example_app(props: dict[str, str]) -> None:
    text = properties_text(props, ("header", ""))
    with _tmp_file(text) as path:
        assert load_example_app("kcg_client").read_properties(path) == props


@contextlib.contextmanager
def _tmp_file(text: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "consumer.properties"
        path.write_text(text)
        yield path


def test_properties_text_is_sorted_and_stable() -> None:
    assert properties_text({"b": "2", "a": "1"}) == "a=1\nb=2\n"
    assert properties_text({"a": "1"}, ("x",)) == "# x\na=1\n"
