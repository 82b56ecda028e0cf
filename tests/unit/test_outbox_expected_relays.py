"""kcg_outbox_expected_relays: the relays a group with spec.outbox should run (one sidecar
per pod), from the same figure as the status' replicas; KcgOutboxRelayDown compares it with
the relay targets that are up, so it must vanish with the outbox or the group."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from kcg_operator import metrics
from kcg_operator.api.models import parse_kafka_consumer_group
from kcg_operator.controller import Controller
from kcg_operator.metrics import GROUP_REGISTRY
from kcg_operator.registry import Registry
from kcg_operator.status import GroupObject
from tests.unit.test_controller_status import _body, _FakeKube, _ready_object, _snap

pytestmark = pytest.mark.unit

EXPECTED = "kcg_outbox_expected_relays"


def _expected(name: str, group: str | None = None) -> float | None:
    """The series of KafkaConsumerGroup shop/`name` (group id: its name unless given)."""
    return GROUP_REGISTRY.get_sample_value(EXPECTED, {"namespace": "shop", "name": name,
                                                "group": group or name})


def _object(name: str, outbox: bool) -> GroupObject:
    spec: dict[str, Any] = (
        {"outbox": {"databaseSecretRef": {"name": "orders-db"}}} if outbox else {})
    body = _body(**spec)
    body["metadata"]["name"] = name
    return replace(_ready_object(), body=body, kcg=parse_kafka_consumer_group(body))


def test_expected_relays_follow_the_deployment_and_go_with_the_outbox_or_the_group() -> None:
    kube = _FakeKube()
    registry = Registry()
    key = ("shop", "relays")
    registry.deployment_seen(key, (3, 1))
    ctl = Controller(kube, registry)  # type: ignore[arg-type]

    ctl.evaluate(key, _object("relays", outbox=True), _snap())
    status = kube.statuses[-1]
    assert _expected("relays") == status["replicas"] == 3  # one road: the status' figure
    outbox = {c["type"]: c for c in status["conditions"]}["OutboxReady"]
    assert outbox["message"].startswith("1/3 ")

    registry.deployment_seen(key, (0, 0))  # scaled to zero: no relay is expected
    ctl.evaluate(key, _object("relays", outbox=True), _snap())
    assert _expected("relays") == 0

    registry.deployment_seen(key, (2, 2))
    ctl.evaluate(key, _object("relays", outbox=False), _snap())  # spec.outbox removed
    assert _expected("relays") is None
    assert GROUP_REGISTRY.get_sample_value("kcg_current_replicas", {
        "namespace": "shop", "name": "relays", "group": "relays"}) == 2

    ctl.evaluate(key, _object("relays", outbox=True), _snap())
    assert _expected("relays") == 2
    ctl.pass_once()  # the object is gone from the registry: the group is deleted
    assert _expected("relays") is None


def test_a_group_without_outbox_exports_no_expected_relays() -> None:
    kube = _FakeKube()
    registry = Registry()
    registry.deployment_seen(("shop", "plain"), (2, 2))
    ctl = Controller(kube, registry)  # type: ignore[arg-type]
    ctl.evaluate(("shop", "plain"), _object("plain", outbox=False), _snap())
    assert _expected("plain") is None
    assert kube.statuses[-1]["replicas"] == 2


def test_forget_group_drops_the_expected_relays() -> None:
    labels = ("shop", "forgotten", "orders")
    metrics.groups.update(labels, metrics.GroupFigures(expected_relays=4))
    assert _expected("forgotten", "orders") == 4
    metrics.groups.update(labels, metrics.GroupFigures(), relays_known=False)
    # No Deployment seen this time: the last figure holds.
    assert _expected("forgotten", "orders") == 4
    metrics.groups.update(labels, metrics.GroupFigures())  # spec.outbox removed
    assert _expected("forgotten", "orders") is None
    metrics.groups.update(labels, metrics.GroupFigures(expected_relays=2))
    metrics.forget_group(labels)
    assert _expected("forgotten", "orders") is None
