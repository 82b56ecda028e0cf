"""A topic with messages and groups with committed offsets on the real broker, for the
tests of the lag collector (in-process and in its child process)."""

from __future__ import annotations

from collections.abc import Sequence

from confluent_kafka import ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]


def topic_with_committed_groups(bootstrap: str, topic: str, messages: Sequence[int],
                                commits: Sequence[int]) -> list[str]:
    """Create `topic` with `messages[p]` messages on partition p, and group `{topic}-g{i}`
    with offset `commits[i]` committed on partition 0 (nothing elsewhere). Returns the
    group ids, in order."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, len(messages), 1)])[topic].result()
    producer = Producer({"bootstrap.servers": bootstrap})
    for partition, count in enumerate(messages):
        for i in range(count):
            producer.produce(topic, value=b"x", partition=partition, key=str(i))
    producer.flush(10)
    groups = [f"{topic}-g{i}" for i in range(len(commits))]
    for group, offset in zip(groups, commits, strict=True):
        tps = [TopicPartition(topic, 0, offset)]
        admin.alter_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group, tps)])[group].result()
    return groups
