"""The lag collector's admin client in a child process, against the real broker: the same
snapshots as in-process, and a child that aborts (as librdkafka does, librdkafka#4605)
costs one sweep of one cluster, not the operator."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
from prometheus_client import REGISTRY

from kcg_operator.scaling.collector import ClusterKey, GroupRequest, LagCollector
from kcg_operator.scaling.contained import ContainedLagCollector
from tests.integration.lag_support import topic_with_committed_groups

pytestmark = pytest.mark.integration


def _restarts(cluster: str) -> float:
    value = REGISTRY.get_sample_value("kcg_kafka_client_restarts_total", {"cluster": cluster})
    return value or 0.0


def test_a_child_that_aborts_costs_one_sweep_and_is_replaced(
    stack: dict[str, Any], unique_name: str
) -> None:
    bootstrap = str(stack["KAFKA_BOOTSTRAP_SERVERS"])
    topic = unique_name
    groups = topic_with_committed_groups(bootstrap, topic, [5, 10, 15], list(range(5)))
    key = ClusterKey.of(bootstrap)
    requests = [GroupRequest(g, (topic,)) for g in groups]

    contained = ContainedLagCollector()
    try:
        snaps = contained.sweep(key, requests)
        local = LagCollector().sweep(key, requests)
        # The same answers as the in-process collector (times aside).
        for g in groups:
            assert snaps[g].broker_ok, snaps[g].error
            assert snaps[g].offsets == local[g].offsets
            assert (snaps[g].state, snaps[g].members) == (local[g].state, local[g].members)
        assert snaps[groups[3]].offsets[(topic, 0)] == (5, 3)

        first = contained.child_pid(key)
        assert first is not None
        before = _restarts(bootstrap)
        os.kill(first, signal.SIGABRT)  # what librdkafka's failed assertion does
        failed = contained.sweep(key, requests)
        assert all(not s.broker_ok for s in failed.values())
        error = failed[groups[0]].error or ""
        assert "Kafka client process failed" in error and "-6" in error, error
        assert _restarts(bootstrap) == before + 1

        again = contained.sweep(key, requests)
        assert all(s.broker_ok for s in again.values()), [s.error for s in again.values()]
        assert again[groups[3]].offsets == snaps[groups[3]].offsets
        assert contained.child_pid(key) not in (None, first)
    finally:
        contained.close()
    assert contained.clusters == 0
