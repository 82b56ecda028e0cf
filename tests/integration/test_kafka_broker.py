"""The local Kafka broker: topics, keyed production, a cooperative-sticky group, lag."""

from __future__ import annotations

import time
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

pytestmark = pytest.mark.integration


def _lag_by_partition(admin: AdminClient, group: str, topic: str, partitions: int) -> list[int]:
    from confluent_kafka import ConsumerGroupTopicPartitions

    tps = [TopicPartition(topic, p) for p in range(partitions)]
    committed_future = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)])
    result = committed_future[group].result()
    committed = {tp.partition: tp.offset for tp in result.topic_partitions}
    ends = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps})
    return [ends[tp].result().offset - max(committed[tp.partition], 0) for tp in tps]


def _produce(bootstrap: str, topic: str, count: int, start: int = 0) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(start, start + count):
        producer.produce(topic, key=f"key-{i % 37}", value=f"message-{i}")
    assert producer.flush(30) == 0


def test_topic_keyed_messages_cooperative_group_and_lag(
    stack: dict[str, Any], unique_name: str
) -> None:
    bootstrap = str(stack["KAFKA_BOOTSTRAP_SERVERS"])
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic, group = unique_name, f"{unique_name}-group"
    admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=1)])[topic].result()
    _produce(bootstrap, topic, 1000)

    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": group,
        "partition.assignment.strategy": "cooperative-sticky",
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    seen = 0
    deadline = time.monotonic() + 60
    try:
        while seen < 1000 and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=1.0):
                assert msg.error() is None, msg.error()
                seen += 1
        consumer.commit(asynchronous=False)
        assert seen == 1000
        group_desc = admin.describe_consumer_groups([group])[group].result()
        assert group_desc.partition_assignor == "cooperative-sticky"
    finally:
        consumer.close()

    assert _lag_by_partition(admin, group, topic, 6) == [0] * 6
    _produce(bootstrap, topic, 50, start=1000)
    assert sum(_lag_by_partition(admin, group, topic, 6)) == 50
