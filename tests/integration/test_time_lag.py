"""Lag and seconds behind of partitions a group never committed, on the real broker.

A group that starts from `earliest` has the whole retained log ahead of it: its lag starts
at the log start offset (not offset 0, once retention or DeleteRecords moved it), and its
seconds behind are the age of the first message it will read, taken from that message's
own timestamp.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from kcg_operator.scaling import lag as lagmath
from kcg_operator.scaling.collector import ClusterKey, GroupRequest, LagCollector

pytestmark = pytest.mark.integration


def test_a_never_committed_group_gets_its_lag_from_the_log_start_and_its_age_from_the_message(
    stack: dict[str, Any], unique_name: str
) -> None:
    bootstrap = str(stack["KAFKA_BOOTSTRAP_SERVERS"])
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = unique_name
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result()
    producer = Producer({"bootstrap.servers": bootstrap})
    now_ms = int(time.time() * 1000)
    # Partition 0: 50 messages stamped 10 minutes ago, then 50 stamped 2 minutes ago.
    for i in range(100):
        age_s = 600 if i < 50 else 120
        producer.produce(topic, value=b"x", partition=0, timestamp=now_ms - age_s * 1000)
    producer.produce(topic, value=b"x", partition=1, timestamp=now_ms - 30_000)
    producer.flush(10)
    # Retention of a kind: the 50 oldest messages of partition 0 are gone.
    admin.delete_records([TopicPartition(topic, 0, 50)])[TopicPartition(topic, 0, 50)].result()

    collector = LagCollector()
    key = ClusterKey.of(bootstrap)
    group = f"{unique_name}-never"
    snap = collector.sweep(key, [GroupRequest(group, (topic,))])[group]
    assert snap.broker_ok
    assert snap.offsets == {(topic, 0): (100, None), (topic, 1): (1, None)}
    assert snap.log_starts == {(topic, 0): 50, (topic, 1): 0}

    wanted = lagmath.positions_to_read(snap.offsets, log_starts=snap.log_starts,
                                       from_earliest=True)
    assert wanted == [((topic, 0), 50), ((topic, 1), 0)]
    stamps = collector.produced_at(key, wanted)
    lags = lagmath.partition_lags(snap.offsets, now_s=snap.time_s, log_starts=snap.log_starts,
                                  from_earliest=True, produced_at=stamps)
    assert lags[(topic, 0)].lag == 50  # not 100: offsets 0..49 no longer exist
    assert lags[(topic, 0)].seconds == pytest.approx(120, abs=5)  # the 2-minute-old message
    assert lags[(topic, 1)].seconds == pytest.approx(30, abs=5)

    # A timestamp never changes: asked again, it comes from the cache without a fetch.
    assert collector.timestamps_read == 2
    assert collector.produced_at(key, wanted) == stamps
    assert collector.timestamps_read == 2

    # Starting from latest, nothing waits.
    latest = lagmath.partition_lags(snap.offsets, now_s=snap.time_s,
                                    log_starts=snap.log_starts, from_earliest=False)
    assert {p.lag for p in latest.values()} == {0}


def test_a_backlog_older_than_the_history_gets_its_age_from_the_message(
    stack: dict[str, Any], unique_name: str
) -> None:
    """A committed group behind by messages older than anything the operator has seen
    (it just started): the history cannot say how old they are, the message can."""
    from confluent_kafka import ConsumerGroupTopicPartitions

    bootstrap = str(stack["KAFKA_BOOTSTRAP_SERVERS"])
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = unique_name
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result()
    producer = Producer({"bootstrap.servers": bootstrap})
    now_ms = int(time.time() * 1000)
    for i in range(100):  # one message per second, the last one 100 s ago
        producer.produce(topic, value=b"x", partition=0, timestamp=now_ms - (200 - i) * 1000)
    producer.flush(10)
    group = f"{unique_name}-behind"
    admin.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, 60)])])[group].result()

    collector = LagCollector()
    key = ClusterKey.of(bootstrap)
    snap = collector.sweep(key, [GroupRequest(group, (topic,))])[group]
    history = {(topic, 0): [(100, snap.time_s)]}  # the operator's first look
    wanted = lagmath.positions_to_read(snap.offsets, history=history)
    assert wanted == [((topic, 0), 60)]
    lags = lagmath.partition_lags(snap.offsets, now_s=snap.time_s, history=history,
                                  produced_at=collector.produced_at(key, wanted))
    assert lags[(topic, 0)].lag == 40
    # Message 60 was produced 140 s ago; the history alone would have said 0 s.
    assert lags[(topic, 0)].seconds == pytest.approx(140, abs=5)
    assert lagmath.partition_lags(snap.offsets, now_s=snap.time_s,
                                  history=history)[(topic, 0)].seconds == pytest.approx(0, abs=1)
