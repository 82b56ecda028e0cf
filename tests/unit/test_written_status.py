"""What the operator keeps of each object's status and body (memory at 10 000 objects),
and that it still tells a changed status from an unchanged one."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kcg_operator import reconciler
from kcg_operator.api.models import parse_kafka_consumer_group
from kcg_operator.registry import KEPT_METADATA, GroupObject, Registry
from kcg_operator.written_status import WrittenStatus, digest

pytestmark = pytest.mark.unit

CONDITIONS = [{"type": "Ready", "status": "True", "reason": "Reconciled", "message": "ok",
               "lastTransitionTime": "2026-12-03T10:00:00Z", "observedGeneration": 3}]


def _body(**extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kcg.dev/v1alpha1", "kind": "KafkaConsumerGroup",
        "metadata": {"name": "orders", "namespace": "shop", "generation": 3, "uid": "u1",
                     "resourceVersion": "77", "labels": {"team": "a"},
                     "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]},
        "spec": {"topics": ["orders"], "kafka": {"bootstrapServers": "k:9092"},
                 "template": {"spec": {"containers": [{"name": "a", "image": "i"}]}}},
        **extra,
    }


def test_the_digest_ignores_key_order_and_whole_floats_the_apiserver_gives_back_as_ints() -> None:
    status = {"totalLag": 0, "maxLagSeconds": 2.0, "conditions": CONDITIONS}
    echoed = {"conditions": CONDITIONS, "maxLagSeconds": 2, "totalLag": 0}
    assert digest(status) == digest(echoed)
    assert digest(status) != digest({**status, "maxLagSeconds": 2.5})
    assert digest(status) != digest({**status, "conditions": [
        {**CONDITIONS[0], "message": "other"}]})


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                               max_size=4),
    max_leaves=20)


@given(st.dictionaries(st.text(max_size=8), _json, max_size=6))
def test_a_status_and_its_json_round_trip_have_one_digest(status: dict[str, Any]) -> None:
    assert digest(json.loads(json.dumps(status))) == digest(status)


def test_an_object_keeps_its_identity_generation_and_status_digest_only() -> None:
    body = _body(status={"totalLag": 4, "lastScaleTime": "2026-12-03T10:00:00Z",
                         "conditions": CONDITIONS})
    obj = GroupObject(body, parse_kafka_consumer_group(body))
    assert obj.body == {"apiVersion": "kcg.dev/v1alpha1", "kind": "KafkaConsumerGroup",
                        "metadata": {"name": "orders", "namespace": "shop", "generation": 3,
                                     "uid": "u1"}}
    assert set(obj.body["metadata"]) <= set(KEPT_METADATA)
    assert obj.generation == 3
    assert obj.status == WrittenStatus.of(body["status"])
    assert obj.status.last_scale_time == "2026-12-03T10:00:00Z"
    assert obj.status.conditions == ({"type": "Ready", "status": "True",
                                     "lastTransitionTime": "2026-12-03T10:00:00Z"},)
    assert obj.kcg is not None and obj.kcg.spec.topics == ["orders"]


def test_a_watch_event_without_status_keeps_the_status_seen_before() -> None:
    registry, key = Registry(), ("shop", "orders")
    body = _body(status={"conditions": CONDITIONS})
    registry.seen(key, body, parse_kafka_consumer_group(body))
    registry.seen(key, _body(), parse_kafka_consumer_group(body))
    seen = registry.get(key)
    assert seen is not None and seen.status == WrittenStatus.of({"conditions": CONDITIONS})


def test_a_spec_that_does_not_parse_keeps_why() -> None:
    registry, key = Registry(), ("shop", "orders")
    registry.seen(key, _body(spec={"topics": []}), None, "spec.topics: name at least one topic")
    seen = registry.get(key)
    assert seen is not None and seen.kcg is None
    refused = reconciler.prepare(None, key, seen, "relay:1")  # type: ignore[arg-type]
    assert isinstance(refused, reconciler.Refused) and not refused.retry
    assert (refused.outcome.reason, refused.outcome.message) == (
        "InvalidSpec", "spec.topics: name at least one topic")
