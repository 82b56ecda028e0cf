"""A relay killed with SIGKILL in the middle of a batch, then started again: every event
arrives, and the only duplicates are from the batch that was in flight."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.integration.outbox_support import (
    assert_complete_and_ordered,
    consume,
    copy_events,
    first_occurrences,
    fresh_outbox,
    keyed_events,
    pending,
    start_relay,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

KEYS, PER_KEY, BATCH, PARTITIONS = 100, 400, 2000, 8


@pytest.fixture
def outbox(stack: dict[str, Any]) -> Iterator[tuple[str, str]]:
    with fresh_outbox(stack, PARTITIONS) as table_and_topic:
        yield table_and_topic


def _published_in_kafka(consumer: Consumer, topic: str) -> int:
    return sum(
        consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
        for p in range(PARTITIONS)
    )


def test_sigkill_mid_batch_then_restart(
    stack: dict[str, Any], outbox: tuple[str, str], tmp_path: Path
) -> None:
    table, topic = outbox
    dsn, bootstrap = str(stack["OUTBOX_DSN"]), str(stack["KAFKA_BOOTSTRAP_SERVERS"])
    total = KEYS * PER_KEY
    copy_events(dsn, table, keyed_events(topic, KEYS, PER_KEY))
    # Small fetches and rounds keep the relay slow enough to be caught mid-batch.
    env = {"OUTBOX_BATCH_SIZE": str(BATCH), "OUTBOX_FETCH_SIZE": "250"}
    offsets = Consumer({"bootstrap.servers": bootstrap, "group.id": f"offsets-{topic}"})

    def acked_not_done() -> int:
        in_kafka = _published_in_kafka(offsets, topic)  # first: it only grows
        return in_kafka - (total - pending(dsn, table))

    expected_duplicates = 0
    try:
        for attempt in range(5):
            relay = start_relay(stack, table, tmp_path, f"killed-{attempt}", **env)
            try:
                goal = total - (attempt + 1) * 5000
                wait_until(lambda g=goal: pending(dsn, table) < g, 60,
                           "some rounds to be published")
                # Mid-batch: Kafka acknowledged rows the relay has not marked done yet.
                wait_until(lambda: acked_not_done() > 0, 60, "a batch in flight", step=0.005)
                relay.kill()  # SIGKILL: no chance to finish the round
            finally:
                if relay.proc.poll() is None:
                    relay.kill()
            time.sleep(1.0)  # let the broker append whatever was already on the wire
            in_flight = acked_not_done()
            assert 0 <= in_flight <= BATCH, in_flight
            expected_duplicates += in_flight
            if in_flight > 0:
                break  # caught mid-batch (else the round committed just before the kill)
        assert expected_duplicates > 0, "never caught the relay in the middle of a batch"
        left_at_kill = pending(dsn, table)
        assert 0 < left_at_kill < total

        second = start_relay(stack, table, tmp_path, "restarted", **env)
        try:
            wait_until(lambda: pending(dsn, table) == 0, 60, "the rest to be published")
        finally:
            second.terminate()
    finally:
        offsets.close()

    report = first_occurrences(consume(bootstrap, topic, total, partitions=PARTITIONS))
    assert_complete_and_ordered(report, {f"key-{k}": PER_KEY for k in range(KEYS)})
    # The only duplicates: rows of the killed round that Kafka had acknowledged before the
    # kill, which the relay had not marked done yet.
    print(f"killed mid-batch with {left_at_kill} pending: {report.duplicates} duplicate(s)")
    assert report.duplicates == expected_duplicates, (report.duplicates, expected_duplicates)
