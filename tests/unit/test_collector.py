"""The collector's request discipline, with a recording stand-in for librdkafka's admin
client (the real broker is exercised in tests/integration/test_lag_collector.py and
test_time_lag.py; these cases need a broker that misbehaves on cue)."""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from kcg_operator.scaling import collector as collector_module
from kcg_operator.scaling.collector import ClusterKey, GroupRequest, LagCollector

pytestmark = pytest.mark.unit
KEY = ClusterKey.of("broker:9092")


def _done(value: Any) -> Future[Any]:
    f: Future[Any] = Future()
    f.set_result(value)
    return f


def _failed(message: str) -> Future[Any]:
    f: Future[Any] = Future()
    f.set_exception(KafkaException(KafkaError(KafkaError.NOT_COORDINATOR, message)))
    return f


class RecordingAdmin:
    """Answers like a broker with topic `t` (2 partitions, end offset 10 each); groups
    in `no_coordinator` fail DescribeGroups. Records every request."""

    def __init__(self, no_coordinator: set[str]) -> None:
        self.no_coordinator = no_coordinator
        self.offset_fetches: list[str] = []
        self.calls: list[str] = []

    def list_topics(self, timeout: float) -> Any:
        self.calls.append("metadata")
        return SimpleNamespace(topics={"t": SimpleNamespace(error=None, partitions={0: 0, 1: 1})})

    def list_offsets(self, request: dict[Any, Any], request_timeout: float) -> Any:
        self.calls.append("list_offsets")
        return {tp: _done(SimpleNamespace(offset=10)) for tp in request}

    def describe_consumer_groups(self, groups: list[str], request_timeout: float) -> Any:
        self.calls.append("describe")
        return {g: _failed("coordinator moving") if g in self.no_coordinator else _done(
            SimpleNamespace(state=SimpleNamespace(name="STABLE"), type=None,
                            partition_assignor="cooperative-sticky", members=[]))
            for g in groups}

    def list_consumer_group_offsets(self, requests: list[Any], request_timeout: float) -> Any:
        group = requests[0].group_id
        self.calls.append("offset_fetch")
        self.offset_fetches.append(group)
        parts = [SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=4)
                 for tp in requests[0].topic_partitions]
        return {group: _done(SimpleNamespace(topic_partitions=parts))}


def test_offsets_are_fetched_only_for_groups_whose_coordinator_answered() -> None:
    """librdkafka's admin client crashes the process on an OffsetFetch answered with
    NOT_COORDINATOR; a group whose DescribeGroups failed is never asked for offsets."""
    admin = RecordingAdmin(no_coordinator={"moving"})
    collector = LagCollector()
    collector._clients[KEY] = admin  # type: ignore[assignment]
    snaps = collector.sweep(KEY, [GroupRequest("ok", ("t",)), GroupRequest("moving", ("t",))])
    assert admin.offset_fetches == ["ok"]
    assert admin.calls.index("describe") < admin.calls.index("offset_fetch")
    assert snaps["ok"].broker_ok and snaps["ok"].offsets == {("t", 0): (10, 4), ("t", 1): (10, 4)}
    assert not snaps["moving"].broker_ok and "coordinator moving" in (snaps["moving"].error or "")


def test_a_secret_the_client_cannot_use_is_reported_with_the_error() -> None:
    collector = LagCollector(timeout_s=1)
    key = ClusterKey.of("127.0.0.1:9", {"security.protocol": "bogus"})
    snap = collector.sweep(key, [GroupRequest("g", ("t",))],
                           auth={"security.protocol": "bogus"})["g"]
    assert not snap.broker_ok
    assert snap.error is not None and snap.error.startswith("client settings:")
    assert "security.protocol" in snap.error


def test_timestamp_reads_are_bounded_per_call_and_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    read_batches: list[int] = []

    def fake_read(self: LagCollector, key: ClusterKey, auth: Any,
                  todo: list[tuple[tuple[str, int], int]]) -> dict[Any, float]:
        read_batches.append(len(todo))
        return {pair: 1.0 for pair in todo}

    monkeypatch.setattr(LagCollector, "_read_timestamps", fake_read)
    collector = LagCollector()
    wanted = [(("t", p), 0) for p in range(600)]
    first = collector.produced_at(KEY, wanted)
    assert len(first) == collector_module.MAX_TIMESTAMP_READS == 500
    second = collector.produced_at(KEY, wanted)
    assert len(second) == 600  # 500 from the cache, the other 100 read now
    assert read_batches == [500, 100]
    assert collector.timestamps_read == 600
