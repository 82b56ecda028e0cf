"""The scan floor (floor.py) on the real PostgreSQL: it rises past published rows, it does not
pass a row whose transaction is still open, and that row, once committed, is published at
once and before the later events of its key.

The relay runs in this process (a thread) so that the test can see its floor and, in the
control run, blind its probe to open transactions: then the floor passes the open row and
the key's later event overtakes it, which is what the first test would catch.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from kcg_operator.outbox import claim
from kcg_operator.outbox.config import load_config
from kcg_operator.outbox.floor import ScanFloor
from kcg_operator.outbox.relay import Relay
from tests.integration.outbox_support import (
    consume,
    fresh_outbox,
    insert_events,
    pending,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PUBLISH_WITHIN = 5.0  # far below the full scan every 60 s that would also find the row


@pytest.fixture
def outbox(stack: dict[str, Any]) -> Iterator[tuple[str, str]]:
    with fresh_outbox(stack) as table_and_topic:
        yield table_and_topic


class RelayThread:
    def __init__(self, stack: dict[str, Any], table: str) -> None:
        self.relay = Relay(load_config({
            "OUTBOX_DSN": str(stack["OUTBOX_DSN"]),
            "KAFKA_BOOTSTRAP_SERVERS": str(stack["KAFKA_BOOTSTRAP_SERVERS"]),
            "OUTBOX_TABLE": table, "OUTBOX_RELAY_ID": "floor-test",
        }))
        self.probes = 0
        floor: ScanFloor = self.relay.store.floor
        before = floor.before_snapshot

        def counted(last_value: int | None, writers: frozenset[str]) -> int | None:
            self.probes += 1
            return before(last_value, writers)

        floor.before_snapshot = counted  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.relay.run, daemon=True)

    @property
    def floor(self) -> int:
        return self.relay.store.floor.floor

    def __enter__(self) -> RelayThread:
        self.thread.start()
        wait_until(lambda: self.relay.health.snapshot().owned_shards == 64, 30,
                   "the relay to own the shards")
        return self

    def __exit__(self, *_: object) -> None:
        self.relay.stop()
        self.thread.join(30)


def _event(topic: str, key: str, n: int) -> tuple[str, str, str, str]:
    return (topic, key, "Numbered", json.dumps({"k": key, "n": n}))


def _late_row_scenario(stack: dict[str, Any], table: str, topic: str) -> dict[str, Any]:
    """Rows published; L (key K) written in a transaction left open; more rows published
    meanwhile; then L commits and R (key K) follows. Returns what was seen."""
    dsn = str(stack["OUTBOX_DSN"])
    seen: dict[str, Any] = {}
    with RelayThread(stack, table) as relay, psycopg.connect(dsn) as late, \
            psycopg.connect(dsn, autocommit=True) as writer:
        insert_events(writer, table, [_event(topic, f"pre-{i}", 0) for i in range(2000)])
        wait_until(lambda: pending(dsn, table) == 0, 30, "the first rows to be published")
        wait_until(lambda: relay.floor > 0, 10, "the floor to rise past published rows")
        seen["floor_before"] = relay.floor

        insert_events(late, table, [_event(topic, "K", 0)])
        row = late.execute(f"SELECT max(seq) FROM {table}".encode()).fetchone()
        assert row is not None
        seen["late_seq"] = int(row[0])
        for batch in range(10):
            insert_events(writer, table,
                          [_event(topic, f"mid-{batch}-{i}", 0) for i in range(500)])
        wait_until(lambda: pending(dsn, table) == 0, 30, "the other rows to be published")
        # Give the relay's probe every chance to move the floor past L.
        probes = relay.probes
        wait_until(lambda: relay.probes >= probes + 5, 10, "more probes")
        seen["floor_while_open"] = relay.floor

        late.commit()
        insert_events(writer, table, [_event(topic, "K", 1)])
        try:
            wait_until(lambda: pending(dsn, table) == 0, PUBLISH_WITHIN, "L and R published")
            seen["published"] = True
            # And it moves on afterwards.
            wait_until(lambda: relay.floor > seen["late_seq"], 10, "the floor to pass L")
        except AssertionError:
            seen["published"] = False
            seen["left"] = pending(dsn, table)
        seen["floor_after"] = relay.floor
    seen["k"] = [m.value["n"] for m in sorted(consume(str(stack["KAFKA_BOOTSTRAP_SERVERS"]),
                                                      topic, 7002, timeout=30),
                                               key=lambda m: (m.partition, m.offset))
                 if m.key == "K" and m.value is not None]
    return seen


def test_the_floor_waits_for_an_open_transaction(
    stack: dict[str, Any], outbox: tuple[str, str]
) -> None:
    table, topic = outbox
    seen = _late_row_scenario(stack, table, topic)
    assert seen["floor_while_open"] <= seen["late_seq"], seen
    assert seen["published"], seen
    assert seen["k"] == [0, 1], seen
    assert seen["floor_after"] > seen["late_seq"], seen


def test_control_a_probe_blind_to_open_transactions_skips_the_row(
    stack: dict[str, Any], outbox: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the list of transactions holding a write lock, the floor passes L while L's
    transaction is open: L is left behind and R, its key's later event, goes first."""
    monkeypatch.setattr(claim, "WRITERS_SQL", "SELECT '{}'::text[] WHERE %s::text IS NOT NULL")
    table, topic = outbox
    seen = _late_row_scenario(stack, table, topic)
    assert seen["floor_while_open"] > seen["late_seq"], seen
    assert not seen["published"] and seen["left"] == 1, seen
    assert seen["k"] == [1], seen
