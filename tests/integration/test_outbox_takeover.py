"""Shards on the real PostgreSQL: the advisory lock gives a shard to one session at a time,
and when a relay dies the survivors take its shards within a rebalance tick.

The README says: "A dead relay's locks go with its session and the others take its shards
within one rebalance tick (1 s)". Here a relay is SIGKILLed (its connection closes with
the process) and the time until its shards are owned again, and until an event of one of
its keys written after its death is published, is measured, with the default 1 s tick.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from kcg_operator.outbox.claim import OutboxStore
from kcg_operator.outbox.config import load_config
from kcg_operator.outbox.shards import ALL_SHARDS, SHARDS, lock_keys
from tests.integration.outbox_support import (
    RelayProcess,
    fresh_outbox,
    insert_events,
    pending,
    start_relay,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TICK_SECONDS = 1.0  # OUTBOX_REBALANCE_INTERVAL_MS's default
# What PostgreSQL needs to notice the closed connection and what a round needs, on top of
# the tick; the measured times are printed.
MARGIN_SECONDS = 0.5
KILLS = 3


@pytest.fixture
def outbox(stack: dict[str, Any]) -> Iterator[tuple[str, str]]:
    with fresh_outbox(stack) as table_and_topic:
        yield table_and_topic


def _store(stack: dict[str, Any], table: str) -> OutboxStore:
    store = OutboxStore(load_config({"OUTBOX_DSN": str(stack["OUTBOX_DSN"]),
                                     "KAFKA_BOOTSTRAP_SERVERS": "unused:9092",
                                     "OUTBOX_TABLE": table}))
    store.connect()
    return store


def test_a_shard_lock_has_one_holder_at_a_time(
    stack: dict[str, Any], outbox: tuple[str, str]
) -> None:
    table, _ = outbox
    first, second = _store(stack, table), _store(stack, table)
    try:
        wanted = sorted(ALL_SHARDS)
        got_first = first.try_lock_shards(wanted)
        got_second = second.try_lock_shards(wanted)
        assert got_first == ALL_SHARDS and got_second == frozenset()
        view = second.lock_view()
        assert view.members == {first.backend_pid, second.backend_pid}
        assert set(view.holders.values()) == {first.backend_pid}
        # Released shards go to whoever asks next; the others stay where they are.
        first.unlock_shards(list(range(10)))
        assert second.try_lock_shards(wanted) == frozenset(range(10))
        first.close()  # the session ends: its locks with it
        # The backend exits after the client hangs up, not with it: wait until its
        # locks are gone (observed in pg_locks) before asking for its shards.
        def released() -> bool:
            view = second.lock_view()
            return first.backend_pid not in view.members | set(view.holders.values())

        wait_until(released, 10, "the closed session's backend to release its locks")
        rest = sorted(ALL_SHARDS - frozenset(range(10)))
        assert second.try_lock_shards(rest) == frozenset(rest)
        assert set(second.lock_view().holders.values()) == {second.backend_pid}
    finally:
        first.close()
        second.close()


def _owned(relay: RelayProcess) -> int:
    return int(relay.status()[1]["ownedShards"])


def _shards_of(dsn: str, table: str, relay_id: str) -> list[int]:
    """The shards relay `relay_id` holds a lock on (pg_locks, by its session)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        qualified = conn.execute(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s::regclass",
            (table,),
        ).fetchone()
        assert qualified is not None
        rows = conn.execute(
            "SELECT l.objid::bigint FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 "
            "AND l.classid = %s::bigint::oid AND a.application_name = %s",
            (lock_keys(str(qualified[0])).shard, f"kcg-relay {relay_id}"),
        ).fetchall()
        return sorted(int(str(r[0])) for r in rows)


def _key_in(dsn: str, shards: list[int]) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT k FROM (SELECT 'key-' || g AS k FROM generate_series(1, 10000) g) x "
            f"WHERE (hashtext(k) & {SHARDS - 1}) = ANY(%s) LIMIT 1", (shards,),
        ).fetchone()
        assert row is not None
        return str(row[0])


def test_a_killed_relays_shards_are_taken_within_a_tick(
    stack: dict[str, Any], outbox: tuple[str, str], tmp_path: Path
) -> None:
    table, topic = outbox
    dsn = str(stack["OUTBOX_DSN"])
    tick = {"OUTBOX_REBALANCE_INTERVAL_MS": str(int(TICK_SECONDS * 1000))}
    survivor = start_relay(stack, table, tmp_path, "survivor", **tick)
    owned_after: list[float] = []
    published_after: list[float] = []
    try:
        survivor.wait_ready()
        for attempt in range(KILLS):
            name = f"victim-{attempt}"
            victim = start_relay(stack, table, tmp_path, name, **tick)
            try:
                victim.wait_ready()
                wait_until(lambda v=victim: _owned(survivor) == SHARDS // 2  # type: ignore[misc]
                           and _owned(v) == SHARDS // 2, 15, "the shards shared")
                key = _key_in(dsn, _shards_of(dsn, table, name))
                victim.kill()
                killed = time.monotonic()
                with psycopg.connect(dsn, autocommit=True) as conn:
                    insert_events(conn, table, [(topic, key, "AfterTheKill", "{}")])
                owned_at = published_at = None
                while time.monotonic() - killed < 10 and (owned_at is None
                                                          or published_at is None):
                    now = time.monotonic()
                    if owned_at is None and _owned(survivor) == SHARDS:
                        owned_at = now
                    if published_at is None and pending(dsn, table) == 0:
                        published_at = now
                    time.sleep(0.01)
                assert owned_at is not None and published_at is not None, (
                    f"not taken over within 10 s: {survivor.tail()}")
                owned_after.append(owned_at - killed)
                published_after.append(published_at - killed)
            finally:
                if victim.proc.poll() is None:
                    victim.kill()
    finally:
        survivor.terminate()
    print(f"shards owned again after {[round(t, 3) for t in owned_after]} s; the dead relay's "
          f"key published after {[round(t, 3) for t in published_after]} s")
    assert max(owned_after) <= TICK_SECONDS + MARGIN_SECONDS, owned_after
    assert max(published_after) <= TICK_SECONDS + MARGIN_SECONDS, published_after
