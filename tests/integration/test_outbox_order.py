"""Per-key order with several relays, and no event skipped when ids commit out of order."""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from kcg_operator.outbox.schema import notify_trigger_ddl
from tests.integration.outbox_support import (
    assert_complete_and_ordered,
    consume,
    first_occurrences,
    fresh_outbox,
    insert_events,
    pending,
    relays,
    start_relay,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

WRITE_SECONDS = 5.0


@pytest.fixture
def outbox(stack: dict[str, Any]) -> Iterator[tuple[str, str]]:
    with fresh_outbox(stack) as table_and_topic:
        yield table_and_topic


def _writer(dsn: str, table: str, topic: str, keys: list[str], events: int, seed: int,
            counters: dict[str, int], errors: list[BaseException]) -> None:
    """Transactions of 1-20 events over this writer's own keys: each key's events are
    numbered in commit order, because only this writer writes them, one commit at a time."""
    rng = random.Random(seed)
    try:
        with psycopg.connect(dsn) as conn:
            written = 0
            started = time.monotonic()
            while written < events:
                # Paced to last WRITE_SECONDS, so relays joining late still find work.
                ahead = started + WRITE_SECONDS * written / events - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
                batch = []
                for _ in range(min(rng.randint(1, 20), events - written)):
                    key = rng.choice(keys)
                    batch.append((topic, key, "Numbered",
                                  f'{{"k": "{key}", "n": {counters[key]}}}'))
                    counters[key] += 1
                insert_events(conn, table, batch)
                conn.commit()
                written += len(batch)
    except BaseException as exc:
        errors.append(exc)
        raise


def test_four_relays_keep_every_keys_commit_order(
    stack: dict[str, Any], outbox: tuple[str, str], tmp_path: Path
) -> None:
    """4 relays, 200 keys, 50 000 events written by 4 concurrent writers: every key's events
    arrive complete and in commit order, without a single duplicate."""
    table, topic = outbox
    dsn, bootstrap = str(stack["OUTBOX_DSN"]), str(stack["KAFKA_BOOTSTRAP_SERVERS"])
    counters: dict[str, int] = defaultdict(int)
    errors: list[BaseException] = []
    writers = [
        threading.Thread(
            target=_writer,
            args=(dsn, table, topic, [f"key-{w * 50 + i}" for i in range(50)], 12_500, w,
                  counters, errors),
        )
        for w in range(4)
    ]
    with relays(stack, table, tmp_path, count=2) as first_two:
        for w in writers:
            w.start()
        # Two more relays join mid-stream: shards move between relays while rows flow.
        time.sleep(1.0)
        later = [start_relay(stack, table, tmp_path, f"relay-{i}") for i in (2, 3)]
        all_relays = first_two + later
        try:
            for w in writers:
                w.join(60)
            assert not errors, errors
            wait_until(lambda: pending(dsn, table) == 0, 60, "the outbox to drain")
            statuses = [r.wait_ready()["ownedShards"] for r in all_relays]
            published = [r.metric("kcg_outbox_events_published_total") for r in all_relays]
        finally:
            for relay in later:
                relay.terminate()
    assert sum(counters.values()) == 50_000 and len(counters) == 200
    # The key space ended up shared by all four, and all four did part of the work.
    assert sum(statuses) == 64 and min(statuses) >= 15, statuses
    assert all(p > 0 for p in published), published
    assert sum(published) == 50_000, published

    report = first_occurrences(consume(bootstrap, topic, 50_000))
    assert_complete_and_ordered(report, counters)
    assert report.duplicates == 0


def test_lower_id_committed_later_is_published(
    stack: dict[str, Any], outbox: tuple[str, str], tmp_path: Path
) -> None:
    """Transaction A takes the lower seq and commits after B: the relay publishes B while A
    is open, then A's event once it commits -- never skipped, and for one key in commit
    order (B, then A)."""
    table, topic = outbox
    dsn, bootstrap = str(stack["OUTBOX_DSN"]), str(stack["KAFKA_BOOTSTRAP_SERVERS"])
    with relays(stack, table, tmp_path) as (relay,), psycopg.connect(dsn) as a, \
            psycopg.connect(dsn) as b:
        relay.wait_ready()
        insert_events(a, table, [(topic, "k", "A", '{"k": "k", "n": 1, "tx": "A"}')])
        insert_events(b, table, [(topic, "k", "B", '{"k": "k", "n": 0, "tx": "B"}'),
                                 (topic, "other", "B", '{"k": "other", "n": 0, "tx": "B"}')])
        b.commit()
        seqs = a.execute(f"SELECT seq, type FROM {table} ORDER BY seq".encode()).fetchall()
        assert [t for _, t in seqs] == ["A", "B", "B"]  # A holds the lowest seq
        first = consume(bootstrap, topic, 2, timeout=20)
        assert sorted(m.type for m in first) == ["B", "B"]  # published while A is open
        a.commit()
        wait_until(lambda: pending(dsn, table) == 0, 20, "A's event to be published")

    messages = consume(bootstrap, topic, 3, timeout=20)
    for_k = [m.value["tx"] for m in sorted(messages, key=lambda m: m.offset)
             if m.key == "k" and m.value is not None]
    assert for_k == ["B", "A"]


def test_no_event_skipped_under_interleaved_commits(
    stack: dict[str, Any], outbox: tuple[str, str], tmp_path: Path
) -> None:
    """Eight writers hold their transactions open for random times, so seqs commit in a
    scrambled order all the time; every event is still published."""
    table, topic = outbox
    dsn, bootstrap = str(stack["OUTBOX_DSN"]), str(stack["KAFKA_BOOTSTRAP_SERVERS"])
    errors: list[BaseException] = []
    counters: dict[str, int] = defaultdict(int)

    def writer(w: int) -> None:
        rng = random.Random(w)
        try:
            with psycopg.connect(dsn) as conn:
                for _ in range(60):
                    key = f"w{w}-{rng.randint(0, 4)}"
                    rows = []
                    for _ in range(rng.randint(1, 5)):
                        rows.append((topic, key, "Numbered",
                                     f'{{"k": "{key}", "n": {counters[key]}}}'))
                        counters[key] += 1
                    insert_events(conn, table, rows)
                    time.sleep(rng.random() * 0.03)
                    conn.commit()
        except BaseException as exc:
            errors.append(exc)

    with relays(stack, table, tmp_path, count=2):
        threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        wait_until(lambda: pending(dsn, table) == 0, 30, "the outbox to drain")

    total = sum(counters.values())
    report = first_occurrences(consume(bootstrap, topic, total))
    assert_complete_and_ordered(report, counters)


LONG_POLL_MS = "60000"  # an idle relay would not poll again for a minute
WAKE_WINDOW = 3.0


def _publish_one_while_idle(stack: dict[str, Any], table: str, topic: str, log_dir: Path,
                            name: str, **env: str) -> tuple[float | None, float]:
    """A relay polling at most once a minute, asleep after an empty poll, gets one row.

    Returns (seconds until the row was published, or None if it was still pending after
    WAKE_WINDOW; the relay's NOTIFY wake-up counter)."""
    dsn = str(stack["OUTBOX_DSN"])
    relay = start_relay(stack, table, log_dir, name, OUTBOX_POLL_INTERVAL_MS=LONG_POLL_MS,
                        **env)
    try:
        relay.wait_ready()
        # It has polled the empty table: from here on it sleeps (the rebalance ticks every
        # 300 ms wake it without polling).
        wait_until(lambda: relay.metric("kcg_outbox_empty_polls_total") >= 1, 10,
                   "a first empty poll")
        with psycopg.connect(dsn, autocommit=True) as conn:
            insert_events(conn, table, [(topic, "k", "Numbered", '{"k": "k", "n": 0}')])
        started = time.monotonic()
        took: float | None = None
        while time.monotonic() - started < WAKE_WINDOW:
            if pending(dsn, table) == 0:
                took = time.monotonic() - started
                break
            time.sleep(0.01)
        return took, relay.metric("kcg_outbox_notify_wakeups_total")
    finally:
        relay.terminate()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DELETE FROM {table}".encode())


def test_notify_wakes_an_idle_relay(
    stack: dict[str, Any], outbox: tuple[str, str], tmp_path: Path
) -> None:
    """Opt-in wake-ups: with the statement-level NOTIFY trigger and OUTBOX_NOTIFY_CHANNEL, a
    relay that would not poll for a minute publishes a new row at once, and counts the
    wake-up. Two control runs show what the assertions rest on: without the trigger the
    same relay leaves the row pending; without the channel nothing is counted."""
    table, topic = outbox
    dsn = str(stack["OUTBOX_DSN"])
    channel = f"{table}_wake"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(notify_trigger_ddl(table, channel).encode())

    took, wakeups = _publish_one_while_idle(stack, table, topic, tmp_path, "notified",
                                            OUTBOX_NOTIFY_CHANNEL=channel)
    assert took is not None and took < 1.0, took
    assert wakeups >= 1

    # Control 1: the trigger is gone, nothing sends a NOTIFY: the row waits for the poll.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TRIGGER {table}_notify ON {table}".encode())
    took, wakeups = _publish_one_while_idle(stack, table, topic, tmp_path, "no-trigger",
                                            OUTBOX_NOTIFY_CHANNEL=channel)
    assert took is None, f"published after {took:.2f}s without any NOTIFY"
    assert wakeups == 0

    # Control 2: the trigger is back but the relay does not LISTEN: it polls as usual
    # (its back-off decides when), and no wake-up is counted.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(notify_trigger_ddl(table, channel).encode())
    _, wakeups = _publish_one_while_idle(stack, table, topic, tmp_path, "not-listening")
    assert wakeups == 0
