"""The scan floor (floor.py): where a round may start scanning without skipping a row that
can still become pending."""

from __future__ import annotations

import pytest

from kcg_operator.outbox.floor import FULL_SCAN_SECONDS, ScanFloor
from kcg_operator.outbox.shards import ALL_SHARDS

pytestmark = pytest.mark.unit


def _ready(floor: ScanFloor) -> ScanFloor:
    floor.track(ALL_SHARDS)
    floor.start(0.0)  # the first round is a full scan
    return floor


def test_the_floor_rises_only_after_the_probes_writers_are_gone() -> None:
    floor = _ready(ScanFloor())
    # Probe: V=100 while transactions 3/7 and 4/2 hold write locks.
    assert floor.before_snapshot(100, frozenset({"3/7", "4/2"})) is None
    floor.after_scan(None, first_seq=40, complete=True)
    assert floor.floor == 0
    # 4/2 still open: not ripe, whatever else changed.
    assert floor.before_snapshot(150, frozenset({"4/2", "5/1"})) is None
    floor.after_scan(None, first_seq=60, complete=True)
    assert floor.floor == 0
    # Both gone: every row with seq <= 100 is final in the coming snapshot.
    assert floor.before_snapshot(180, frozenset({"5/1"})) == 100
    floor.after_scan(100, first_seq=70, complete=True)
    assert floor.floor == 70  # the first pending row, below V + 1
    # The next probe started at V=180 with 5/1 open.
    assert floor.before_snapshot(200, frozenset()) == 180
    floor.after_scan(180, first_seq=None, complete=True)
    assert floor.floor == 181  # nothing pending up to V: the floor passes it


def test_a_scan_that_held_rows_back_does_not_move_the_floor() -> None:
    floor = _ready(ScanFloor())
    floor.before_snapshot(100, frozenset())
    ripe = floor.before_snapshot(120, frozenset())
    assert ripe == 100
    # Rows of a missing topic were excluded from the SELECT: its first row says nothing
    # about them.
    floor.after_scan(ripe, first_seq=90, complete=False)
    assert floor.floor == 0


def test_the_floor_never_goes_down_by_itself() -> None:
    floor = _ready(ScanFloor())
    floor.before_snapshot(100, frozenset())
    floor.after_scan(floor.before_snapshot(100, frozenset()), first_seq=None, complete=True)
    assert floor.floor == 101
    floor.after_scan(floor.before_snapshot(100, frozenset()), first_seq=50, complete=True)
    assert floor.floor == 101


def test_new_shards_and_a_restarted_sequence_start_over() -> None:
    floor = _ready(ScanFloor())
    floor.track(frozenset(range(32)))  # gave shards away: still valid
    floor.before_snapshot(100, frozenset())
    floor.after_scan(floor.before_snapshot(100, frozenset()), None, True)
    assert floor.floor == 101
    floor.track(frozenset(range(32)))
    assert floor.floor == 101
    floor.track(frozenset(range(40)))  # took shards whose rows were never scanned
    assert floor.floor == 0 and floor.probe is None

    floor.before_snapshot(500, frozenset())
    floor.after_scan(floor.before_snapshot(500, frozenset()), None, True)
    assert floor.floor == 501
    assert floor.before_snapshot(3, frozenset()) is None  # ALTER SEQUENCE ... RESTART
    assert floor.floor == 0


def test_a_full_scan_comes_round_regularly() -> None:
    floor = ScanFloor()
    floor.track(ALL_SHARDS)
    floor.floor = 77
    assert floor.start(10.0) == (0, True)
    assert floor.start(11.0) == (77, False)
    assert floor.start(10.0 + FULL_SCAN_SECONDS) == (0, True)
