"""The lag sweep over the Kafka protocol (kafka_wire) against the real broker: the same
snapshots as librdkafka's admin client for every kind of group, SCRAM over TLS on the
stack's SASL_SSL listener, and settings it does not speak handed to librdkafka."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer

from kcg_operator.scaling import kafka_wire
from kcg_operator.scaling.collector import ClusterKey, GroupRequest, GroupSnapshot, LagCollector
from kcg_operator.scaling.kafka_wire import WireLagCollector
from tests.integration.lag_support import topic_with_committed_groups

pytestmark = pytest.mark.integration


@pytest.fixture
def wire() -> Iterator[WireLagCollector]:
    collector = WireLagCollector(timeout_s=10)
    yield collector
    collector.close()


def _member(bootstrap: str, group: str, topic: str, protocol: str) -> Consumer:
    settings: dict[str, Any] = {
        "bootstrap.servers": bootstrap, "group.id": group, "client.id": f"member-{protocol}",
        "enable.auto.commit": False, "group.protocol": protocol,
    }
    if protocol == "classic":
        settings["partition.assignment.strategy"] = "cooperative-sticky"
    consumer = Consumer(settings)
    consumer.subscribe([topic])
    deadline = time.monotonic() + 30
    while len(consumer.assignment()) < 3:
        assert time.monotonic() < deadline, f"the {protocol} member got no assignment"
        consumer.poll(0.2)
    return consumer


def _seen(snap: GroupSnapshot) -> tuple[Any, ...]:
    return (snap.broker_ok, snap.error, snap.offsets, snap.log_starts, snap.partition_counts,
            snap.missing_topics, snap.state, snap.group_type, snap.assignor, snap.members)


@pytest.mark.parametrize("batch", [kafka_wire.GROUP_BATCH, 2])
def test_the_same_snapshots_as_librdkafka_for_every_kind_of_group(
    stack: dict[str, Any], unique_name: str, wire: WireLagCollector, batch: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Batches of 2 split the groups over several requests, the last one short.
    monkeypatch.setattr(kafka_wire, "GROUP_BATCH", batch)
    bootstrap = str(stack["KAFKA_BOOTSTRAP_SERVERS"])
    topic = unique_name
    groups = topic_with_committed_groups(bootstrap, topic, [10, 20, 30], [0, 4, 10])
    members = [_member(bootstrap, f"{topic}-classic", topic, "classic"),
               _member(bootstrap, f"{topic}-consumer", topic, "consumer")]
    try:
        ids = [*groups, f"{topic}-classic", f"{topic}-consumer", f"{topic}-never-seen"]
        requests = [GroupRequest(g, (topic, "no-such-topic")) for g in ids]
        key = ClusterKey.of(bootstrap)
        ours = wire.sweep(key, requests)
        theirs = LagCollector().sweep(key, requests)
    finally:
        for m in members:
            m.close()
    for g in ids:
        assert _seen(ours[g]) == _seen(theirs[g]), g
    assert ours[groups[1]].offsets[(topic, 0)] == (10, 4)
    assert ours[groups[1]].offsets[(topic, 2)] == (30, None)
    assert ours[groups[1]].log_starts[(topic, 2)] == 0
    classic, consumer = ours[f"{topic}-classic"], ours[f"{topic}-consumer"]
    assert (classic.group_type, classic.state, classic.assignor) == \
        ("CLASSIC", "STABLE", "cooperative-sticky")
    assert consumer.group_type == "CONSUMER" and consumer.state == "STABLE"
    for snap in (classic, consumer):
        assert len(snap.members) == 1
        assert sorted(snap.members[0].assigned) == [(topic, 0), (topic, 1), (topic, 2)]
    assert ours[f"{topic}-never-seen"].missing_topics == ("no-such-topic",)
    assert wire.not_spoken == {} and wire.clusters == 1


def test_scram_over_tls_and_a_wrong_password(stack: dict[str, Any], unique_name: str,
                                             wire: WireLagCollector) -> None:
    if "KAFKA_SASL_BOOTSTRAP_SERVERS" not in stack:
        pytest.fail("this stack predates its SASL_SSL listener: make down && make up")
    bootstrap = str(stack["KAFKA_BOOTSTRAP_SERVERS"])
    groups = topic_with_committed_groups(bootstrap, unique_name, [5], [3])
    with open(stack["KAFKA_CA_FILE"]) as ca:
        auth = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                "sasl.username": str(stack["KAFKA_SASL_USERNAME"]),
                "sasl.password": str(stack["KAFKA_SASL_PASSWORD"]), "ssl.ca.pem": ca.read()}
    sasl = str(stack["KAFKA_SASL_BOOTSTRAP_SERVERS"])
    request = [GroupRequest(groups[0], (unique_name,))]
    snap = wire.sweep(ClusterKey.of(sasl, auth), request, auth)[groups[0]]
    assert snap.broker_ok, snap.error
    assert snap.offsets[(unique_name, 0)] == (5, 3)

    wrong = {**auth, "sasl.password": "not-the-password"}
    refused = wire.sweep(ClusterKey.of(sasl, wrong), request, wrong)[groups[0]]
    assert not refused.broker_ok and refused.auth_failed
    assert "Authentication failed" in (refused.error or "")
    assert "SCRAM-SHA-512" in (refused.error or "")
    assert "not-the-password" not in (refused.error or "")
    assert wire.not_spoken == {}


def test_settings_it_does_not_speak_go_to_librdkafka(stack: dict[str, Any],
                                                      wire: WireLagCollector) -> None:
    bootstrap = str(stack["KAFKA_BOOTSTRAP_SERVERS"])
    auth = {"security.protocol": "bogus"}
    key = ClusterKey.of(bootstrap, auth)
    snap = wire.sweep(key, [GroupRequest("g", ("t",))], auth)["g"]
    # librdkafka's own verdict on the setting, from the child process.
    assert not snap.broker_ok
    assert (snap.error or "").startswith("client settings:") and "security.protocol" in \
        (snap.error or "")
    assert key in wire.not_spoken


def test_an_unreachable_broker_is_reported_not_raised(wire: WireLagCollector) -> None:
    snaps = wire.sweep(ClusterKey.of("127.0.0.1:9"), [GroupRequest("g", ("t",))])
    assert snaps["g"].broker_ok is False
    assert "connect to 127.0.0.1:9" in (snaps["g"].error or "")
    assert wire.requests_failed == 1
