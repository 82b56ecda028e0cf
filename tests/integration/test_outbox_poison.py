"""Rows Kafka cannot take go to the dead-letter table and the rest flow on; rows for a topic
that does not exist yet wait for it instead of being dead-lettered."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from tests.integration.outbox_support import (
    consume,
    create_topic,
    dead_letters,
    fresh_outbox,
    insert_events,
    pending,
    relays,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def outbox(stack: dict[str, Any]) -> Iterator[tuple[str, str]]:
    with fresh_outbox(stack, partitions=1, extra_topics=["-later", "-small"]) as table_and_topic:
        yield table_and_topic


def _event(topic: str, key: str, n: int, pad: int = 0) -> tuple[str, str, str, str]:
    return (topic, key, "Numbered", json.dumps({"k": key, "n": n, "pad": "x" * pad}))


def test_oversized_row_is_dead_lettered_and_the_rest_published(
    stack: dict[str, Any], outbox: tuple[str, str], tmp_path: Path
) -> None:
    table, topic = outbox
    dsn, bootstrap = str(stack["OUTBOX_DSN"]), str(stack["KAFKA_BOOTSTRAP_SERVERS"])
    later = f"{topic}-later"
    rows = [
        _event(topic, "k", 0),
        _event(topic, "k", 1, pad=2_000_000),  # over message.max.bytes (1 MB)
        _event(topic, "k", 2),
        ("bad topic!", "j", "Numbered", '{"k": "j", "n": 0}'),  # not a legal topic name
        _event(later, "m", 0),  # its topic does not exist yet
        *[_event(topic, f"other-{i}", 0) for i in range(50)],
        _event(later, "m", 1),
    ]
    with psycopg.connect(dsn, autocommit=True) as conn:
        insert_events(conn, table, rows)

    with relays(stack, table, tmp_path) as (relay,):
        relay.wait_ready()
        # Everything but the rows routed to the missing topic is settled.
        wait_until(lambda: pending(dsn, table) == 2, 30, "all but the held rows to settle")
        letters = dead_letters(dsn, table)
        assert [(r[1], r[3]) for r in letters] == [("k", topic), ("j", "bad topic!")]
        assert letters[0][4].startswith("MSG_SIZE_TOO_LARGE")
        assert "not a valid Kafka topic name" in letters[1][4]
        assert relay.metric("kcg_outbox_events_dead_lettered_total") == 2

        # The topic appears: its held rows follow, in order, without a restart.
        create_topic(bootstrap, later, partitions=1)
        wait_until(lambda: pending(dsn, table) == 0, 30, "the held rows to be published")
        assert relay.metric("kcg_outbox_events_published_total") == 54

    published = sorted(consume(bootstrap, topic, 52, timeout=20, partitions=1),
                       key=lambda m: m.offset)
    # Later events of the dead-lettered row's key are still published (a gap at n=1).
    assert [m.value["n"] for m in published if m.key == "k" and m.value] == [0, 2]
    assert len({m.event_id for m in published}) == 52
    held = sorted(consume(bootstrap, later, 2, timeout=20, partitions=1), key=lambda m: m.offset)
    assert [m.value["n"] for m in held if m.value] == [0, 1]


def test_a_batch_the_broker_refuses_costs_only_its_guilty_row(
    stack: dict[str, Any], outbox: tuple[str, str], tmp_path: Path
) -> None:
    """The broker refuses a whole batch when one message in it is over the topic's
    max.message.bytes; the relay must dead-letter that row only, publish the others (in
    order), and never mark a refused row as published."""
    table, topic = outbox
    dsn, bootstrap = str(stack["OUTBOX_DSN"]), str(stack["KAFKA_BOOTSTRAP_SERVERS"])
    small = f"{topic}-small"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(
        small, num_partitions=1, replication_factor=1, config={"max.message.bytes": "2048"},
    )])[small].result(30)
    # Random hex: lz4 cannot shrink it under the limit, and the client's own limit (1 MB)
    # lets it through, so the refusal comes from the broker, for the batch.
    big = {"k": "big", "n": 0, "pad": secrets.token_hex(10_000)}
    rows = [
        *[_event(small, f"k{i}", 0) for i in range(20)],
        (small, "big", "Numbered", json.dumps(big)),
        *[_event(small, f"k{i}", 1) for i in range(20)],
    ]
    with psycopg.connect(dsn, autocommit=True) as conn:
        insert_events(conn, table, rows)

    with relays(stack, table, tmp_path) as (relay,):
        relay.wait_ready()
        wait_until(lambda: pending(dsn, table) == 0, 30, f"every row to settle: {relay.tail()}")
        letters = dead_letters(dsn, table)
        assert [(r[1], r[3]) for r in letters] == [("big", small)], letters
        assert letters[0][4].startswith("MSG_SIZE_TOO_LARGE"), letters[0][4]
        assert relay.metric("kcg_outbox_events_published_total") == 40

    published = sorted(consume(bootstrap, small, 40, timeout=20, partitions=1),
                       key=lambda m: m.offset)
    assert len({m.event_id for m in published}) == 40
    for i in range(20):
        assert [m.value["n"] for m in published if m.key == f"k{i}" and m.value] == [0, 1]
