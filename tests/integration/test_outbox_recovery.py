"""The relay rides out a Kafka broker restart and a PostgreSQL restart in the middle of the
stream, by itself: nothing lost, every key still in order (after dropping duplicates).

These restart shared components of the local stack (stack/localstack.py `restart`), which
brings each back on the same port and data before returning.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import localstack
from tests.integration.outbox_support import (
    assert_complete_and_ordered,
    consume,
    copy_events,
    first_occurrences,
    fresh_outbox,
    insert_events,
    keyed_events,
    pending,
    start_relay,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

BATCH = 2000


@pytest.fixture
def outbox(stack: dict[str, Any]) -> Iterator[tuple[str, str]]:
    with fresh_outbox(stack) as table_and_topic:
        yield table_and_topic


def test_kafka_broker_restart_mid_stream(
    stack: dict[str, Any], outbox: tuple[str, str], tmp_path: Path
) -> None:
    table, topic = outbox
    dsn, bootstrap = str(stack["OUTBOX_DSN"]), str(stack["KAFKA_BOOTSTRAP_SERVERS"])
    counters: dict[str, int] = defaultdict(int)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        """About 1 000 events/s in small transactions, through the whole outage."""
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                i = 0
                while not stop.is_set():
                    rows = []
                    for _ in range(10):
                        key = f"key-{i % 50}"
                        rows.append((topic, key, "Numbered",
                                     json.dumps({"k": key, "n": counters[key]})))
                        counters[key] += 1
                        i += 1
                    insert_events(conn, table, rows)
                    time.sleep(0.01)
        except BaseException as exc:
            errors.append(exc)

    relay = start_relay(stack, table, tmp_path, "relay", OUTBOX_BATCH_SIZE=str(BATCH))
    thread = threading.Thread(target=writer)

    def written() -> int:
        return sum(counters.values())

    try:
        relay.wait_ready()
        thread.start()
        wait_until(lambda: relay.metric("kcg_outbox_events_published_total") >= 500, 30,
                   "the relay to publish while the writer runs")
        assert relay.metric("kcg_outbox_kafka_outages_total") == 0
        localstack.restart("kafka")  # returns once the broker answers again
        # The relay noticed: every broker connection was lost (librdkafka's all-brokers-down).
        wait_until(lambda: relay.metric("kcg_outbox_kafka_outages_total") >= 1, 30,
                   f"the relay to see the outage: {relay.tail()}")
        back_at = written()
        wait_until(lambda: written() >= back_at + 1000, 30, "more writes after the restart")
        stop.set()
        thread.join(10)
        assert not errors, errors
        wait_until(lambda: pending(dsn, table) == 0, 60, f"the outbox to drain: {relay.tail()}")
        relay.assert_running()
        assert relay.wait_ready()["kafka"] is True
    finally:
        stop.set()
        relay.terminate()

    total = sum(counters.values())
    report = first_occurrences(consume(bootstrap, topic, total))
    assert_complete_and_ordered(report, counters)
    assert report.duplicates <= BATCH


def test_postgres_restart_mid_stream(
    stack: dict[str, Any], outbox: tuple[str, str], tmp_path: Path
) -> None:
    table, topic = outbox
    dsn, bootstrap = str(stack["OUTBOX_DSN"]), str(stack["KAFKA_BOOTSTRAP_SERVERS"])
    keys, before, after = 100, 300, 50
    copy_events(dsn, table, keyed_events(topic, keys, before))
    relay = start_relay(stack, table, tmp_path, "relay", OUTBOX_BATCH_SIZE=str(BATCH),
                        OUTBOX_FETCH_SIZE="250")
    try:
        wait_until(lambda: pending(dsn, table) < keys * before * 3 // 4, 60, "rows to flow")
        # Fast shutdown: the relay's session dies in the middle of a round.
        localstack.restart("postgres", pause=1.0)
        with psycopg.connect(dsn, autocommit=True) as conn:
            insert_events(conn, table, [
                (topic, f"key-{k}", "Numbered", json.dumps({"k": f"key-{k}", "n": n}))
                for n in range(before, before + after) for k in range(keys)
            ])
        wait_until(lambda: pending(dsn, table) == 0, 60, f"the outbox to drain: {relay.tail()}")
        relay.assert_running()
        assert relay.wait_ready()["database"] is True
        assert relay.metric("kcg_outbox_database_reconnects_total") >= 1
    finally:
        relay.terminate()

    report = first_occurrences(consume(bootstrap, topic, keys * (before + after)))
    assert_complete_and_ordered(report, {f"key-{k}": before + after for k in range(keys)})
    assert report.duplicates <= BATCH
