"""The lag collector against the real broker: one shared client, batched, fresh metadata."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # not in its __all__
    AdminClient,
    NewPartitions,
)

from kcg_operator.scaling import collector as collector_module
from kcg_operator.scaling.collector import ClusterKey, GroupRequest, LagCollector
from tests.integration.lag_support import topic_with_committed_groups

pytestmark = pytest.mark.integration


# The default window, and one that splits the 40 groups into 14 batches (the last one
# short): every group is described and fetched exactly as when all go at once.
@pytest.mark.parametrize("in_flight", [collector_module.GROUP_REQUESTS_IN_FLIGHT, 6])
def test_one_client_sweeps_many_groups_and_notices_a_growing_topic(
    stack: dict[str, Any], unique_name: str, in_flight: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(collector_module, "GROUP_REQUESTS_IN_FLIGHT", in_flight)
    bootstrap = str(stack["KAFKA_BOOTSTRAP_SERVERS"])
    topic = unique_name
    # Group i committed i messages on partition 0 (at most 10, all there are).
    groups = topic_with_committed_groups(bootstrap, topic, [10, 20, 30],
                                         [min(i, 10) for i in range(40)])
    admin = AdminClient({"bootstrap.servers": bootstrap})
    collector = LagCollector()
    key = ClusterKey.of(bootstrap)
    requests = [GroupRequest(g, (topic, "no-such-topic")) for g in groups]
    snaps = collector.sweep(key, requests)
    assert collector.clusters == 1
    for i, g in enumerate(groups):
        snap = snaps[g]
        assert snap.broker_ok and snap.partitions == 3
        assert snap.offsets[(topic, 0)] == (10, min(i, 10))
        assert snap.offsets[(topic, 1)] == (20, None)  # never committed there
        assert snap.missing_topics == ("no-such-topic",)

    admin.create_partitions([NewPartitions(topic, 5)])[topic].result()
    # The broker's metadata shows the new partitions to a client that never saw the topic;
    # the collector, which cached nothing, sees them at its next sweep.
    # ... once each new partition has a leader: before that, its end offset cannot be read
    # and the sweep rightly reports the group's offsets as unknown.
    def grown_and_led() -> bool:
        parts = AdminClient({"bootstrap.servers": bootstrap}).list_topics(
            topic, timeout=5).topics[topic].partitions
        return len(parts) == 5 and all(p.leader >= 0 for p in parts.values())

    _until(grown_and_led, "the broker to report 5 partitions, each with a leader")
    grown = collector.sweep(key, requests[:1])[groups[0]]
    assert grown.partitions == 5, "a topic that grows is noticed within one sweep"
    assert collector.clusters == 1


def _until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


def test_an_unreachable_broker_is_reported_not_raised() -> None:
    collector = LagCollector(timeout_s=2)
    snaps = collector.sweep(ClusterKey.of("127.0.0.1:9"), [GroupRequest("g", ("t",))])
    assert snaps["g"].broker_ok is False
    assert snaps["g"].error
    assert collector.requests_failed == 1
