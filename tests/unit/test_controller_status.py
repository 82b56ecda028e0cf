"""Pure parts of the controller: conditions, rebalance compliance, status rendering."""

from __future__ import annotations

from typing import Any

import pytest

from kcg_operator.api.models import parse_kafka_consumer_group
from kcg_operator.conditions import condition
from kcg_operator.controller import (
    Controller,
    Observed,
    outbox_condition,
    rebalance_condition,
)
from kcg_operator.handlers.workload import initial_replicas
from kcg_operator.registry import Entry, Reconciled, Registry
from kcg_operator.scaling.collector import GroupSnapshot, Member

pytestmark = pytest.mark.unit


def _body(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kcg.dev/v1alpha1", "kind": "KafkaConsumerGroup",
        "metadata": {"name": "orders", "namespace": "shop", "generation": 3},
        "spec": {"topics": ["orders"], "kafka": {"bootstrapServers": "k:9092"},
                 "template": {"spec": {"containers": [{"name": "a", "image": "i"}]}}, **spec},
    }


def _snap(**kw: Any) -> GroupSnapshot:
    base: dict[str, Any] = {"group_id": "orders", "time_s": 100.0, "broker_ok": True,
                            "partition_counts": {"orders": 2},
                            "offsets": {("orders", 0): (10, 10), ("orders", 1): (5, 5)},
                            "group_type": "CLASSIC", "assignor": "cooperative-sticky",
                            "state": "STABLE",
                            "members": (Member("m-1", "app-1", "/10.0.0.1",
                                               (("orders", 0), ("orders", 1))),)}
    base.update(kw)
    return GroupSnapshot(**base)


def test_condition_keeps_transition_time_while_status_holds() -> None:
    first = condition("Ready", True, "Reconciled", "ok", 1, [], now="2026-01-01T00:00:00Z")
    again = condition("Ready", True, "Reconciled", "still ok", 2, [first],
                      now="2026-01-02T00:00:00Z")
    flipped = condition("Ready", False, "TopicNotFound", "gone", 2, [again],
                        now="2026-01-03T00:00:00Z")
    assert again["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert flipped["lastTransitionTime"] == "2026-01-03T00:00:00Z"
    assert condition("X", None, "R", "m", None, [])["status"] == "Unknown"


def test_range_assignor_is_non_compliant_and_names_the_members() -> None:
    kcg = parse_kafka_consumer_group(_body())
    cond = rebalance_condition(kcg, _snap(assignor="range"), [])
    assert (cond["status"], cond["reason"]) == ("False", "WrongAssignor")
    assert "'range'" in cond["message"] and "app-1@/10.0.0.1" in cond["message"]
    assert "cooperative-sticky" in cond["message"]


@pytest.mark.parametrize("snap_kw,status,reason", [
    ({}, "True", "CooperativeSticky"),
    ({"group_type": "CONSUMER", "assignor": "uniform"}, "True", "ServerSideAssignment"),
    ({"members": ()}, "Unknown", "NoMembers"),
    ({"broker_ok": False, "error": "down"}, "Unknown", "BrokerUnreachable"),
])
def test_rebalance_condition_cases(snap_kw: dict[str, Any], status: str, reason: str) -> None:
    cond = rebalance_condition(parse_kafka_consumer_group(_body()), _snap(**snap_kw), [])
    assert (cond["status"], cond["reason"]) == (status, reason)


def test_outbox_condition_follows_ready_pods() -> None:
    assert outbox_condition((2, 2), 1, [])["status"] == "True"
    assert outbox_condition((2, 1), 1, [])["reason"] == "RelaysNotReady"
    assert outbox_condition(None, 1, [])["status"] == "Unknown"


def test_initial_replicas_follow_spec_or_keep_the_scalers_choice() -> None:
    plain = parse_kafka_consumer_group(_body(replicas=3))
    assert initial_replicas(plain, current=7) == 3
    scaled = parse_kafka_consumer_group(_body(scaling={"minReplicas": 2, "maxReplicas": 5}))
    assert initial_replicas(scaled, current=None) == 2
    assert initial_replicas(scaled, current=4) == 4
    assert initial_replicas(scaled, current=9) == 5
    assert initial_replicas(scaled, current=1) == 2


class _NoKube:
    """render_status makes no API calls; the controller only needs something to hold."""


def test_status_is_identical_when_nothing_changes_so_nothing_is_written() -> None:
    body = _body()
    entry = Entry(body, parse_kafka_consumer_group(body))
    entry.reconciled = Reconciled(3, True, "Reconciled", "applied", "orders",
                                  "kcg.dev/group=orders")
    entry.replicas = (1, 1)
    ctl = Controller(_NoKube(), Registry())  # type: ignore[arg-type]
    first = ctl.render_status(entry, Observed(_snap(), current=1))
    entry.last_status = first
    entry.body = {**body, "status": first}
    second = ctl.render_status(entry, Observed(_snap(time_s=200.0), current=1))
    assert first == second
    assert first["observedGeneration"] == 3 and first["totalLag"] == 0
    types = {c["type"]: c["status"] for c in first["conditions"]}
    assert types == {"Ready": "True", "RebalanceCompliant": "True", "LagHealthy": "True",
                     "Scaling": "False"}
    assert "sasl" not in str(first)


def test_invalid_spec_gets_ready_false_with_the_reason() -> None:
    body = _body()
    entry = Entry(body, None)
    entry.reconciled = Reconciled(3, False, "InvalidSpec", "spec.topics: add one")
    ctl = Controller(_NoKube(), Registry())  # type: ignore[arg-type]
    status = ctl.render_status(entry, None)
    assert status["conditions"][0]["reason"] == "InvalidSpec"
    assert status["conditions"][0]["status"] == "False"
    assert status["observedGeneration"] == 3


def test_a_rebalancing_group_is_not_judged_until_stable() -> None:
    kcg = parse_kafka_consumer_group(_body())
    cond = rebalance_condition(kcg, _snap(state="PREPARING_REBALANCE", assignor=None), [])
    assert (cond["status"], cond["reason"]) == ("Unknown", "Rebalancing")


def test_operator_client_takes_only_auth_settings_from_the_secret() -> None:
    from kcg_operator.scaling.collector import operator_auth

    secret = {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN",
              "sasl.username": "u", "sasl.password": "p",
              "plugin.library.paths": "/tmp/evil.so", "ssl.ca.location": "/etc/shadow"}
    assert operator_auth(secret) == {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN",
                                     "sasl.username": "u", "sasl.password": "p"}


def test_objects_sharing_a_group_id_each_see_their_own_topics() -> None:
    snap = _snap(offsets={("orders", 0): (10, 5), ("payments", 0): (7, 7)},
                 partition_counts={"orders": 1, "payments": 1}, missing_topics=("gone",))
    mine = snap.for_topics(["orders", "gone"])
    assert mine.offsets == {("orders", 0): (10, 5)}
    assert mine.partitions == 1 and mine.missing_topics == ("gone",)
