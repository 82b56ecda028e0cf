"""A round reads its slices from one snapshot: a row that commits between two slices with a
seq below the round's position must not be overtaken by a later event of its key.

Driven at the store level (real PostgreSQL), so that the commits land exactly between two
slices: with OUTBOX_FETCH_SIZE 1, slice n+1's SELECT goes out when slice n is asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from kcg_operator.outbox import claim
from kcg_operator.outbox.claim import OutboxStore, Row
from kcg_operator.outbox.config import load_config
from kcg_operator.outbox.shards import ALL_SHARDS
from tests.integration.outbox_support import create_tables, drop_tables, insert_events

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def table(stack: dict[str, Any], unique_name: str) -> Iterator[str]:
    name = "snap_" + unique_name.replace("-", "_")[-20:]
    create_tables(str(stack["OUTBOX_DSN"]), name)
    try:
        yield name
    finally:
        drop_tables(str(stack["OUTBOX_DSN"]), name)


def _event(key: str, label: str) -> tuple[str, str, str, str]:
    return ("t", key, label, "{}")


def _rounds_with_a_commit_between_slices(stack: dict[str, Any], table: str) -> list[list[str]]:
    """Returns the labels of the rows of two rounds.

    L (key K) takes seq 1 and stays uncommitted; X2 and X3 (other keys) commit. Round 1
    reads X2; its second SELECT (X3) is already on its way. Then L commits, and R (key K)
    is written after it: K's order is L, R. Round 1's third SELECT goes out after that.
    """
    dsn = str(stack["OUTBOX_DSN"])
    config = load_config({"OUTBOX_DSN": dsn, "KAFKA_BOOTSTRAP_SERVERS": "unused:9092",
                          "OUTBOX_TABLE": table})
    store = OutboxStore(config)
    store.connect()
    try:
        with psycopg.connect(dsn) as late, psycopg.connect(dsn, autocommit=True) as writer:
            insert_events(late, table, [_event("K", "L")])
            insert_events(writer, table, [_event("x2", "X2")])
            insert_events(writer, table, [_event("x3", "X3")])
            slices = store.fetch_round(ALL_SHARDS, (), 1, 10, lambda: True)
            first = next(slices)
            late.commit()
            insert_events(writer, table, [_event("K", "R")])
            round_one: list[Row] = [*first, *(row for part in slices for row in part)]
        store.finish_round([row[0] for row in round_one], [])  # as if Kafka acked them
        round_two = [row for part in store.fetch_round(ALL_SHARDS, (), 10, 10, lambda: True)
                     for row in part]
        return [[str(row[4]) for row in round_one], [str(row[4]) for row in round_two]]
    finally:
        store.close()


def test_a_round_does_not_publish_past_a_row_that_committed_during_it(
    stack: dict[str, Any], table: str
) -> None:
    round_one, round_two = _rounds_with_a_commit_between_slices(stack, table)
    assert round_one == ["X2", "X3"]
    assert round_two == ["L", "R"]  # K in commit order


def test_control_with_a_snapshot_per_slice_the_key_is_reordered(
    stack: dict[str, Any], table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same steps with a fresh snapshot per SELECT (READ COMMITTED, what the relay did
    before): R is published in round one, L only in round two. This shows the scenario
    above really puts the commit between two slices."""
    monkeypatch.setattr(claim, "ROUND_BEGIN", b"BEGIN READ ONLY")
    round_one, round_two = _rounds_with_a_commit_between_slices(stack, table)
    assert round_one == ["X2", "X3", "R"]
    assert round_two == ["L"]
