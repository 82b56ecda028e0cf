"""One road for lag: per-partition lag and seconds behind from one snapshot."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kcg_operator.scaling import lag as lagmath
from kcg_operator.scaling.lag import partition_lag, partition_lags, position, positions_to_read

pytestmark = pytest.mark.unit
TP = ("orders", 0)


def test_a_never_committed_partition_starts_where_auto_offset_reset_says() -> None:
    # earliest: from the log start (retention deleted offsets 0..399), not from offset 0
    assert position(1000, None, 400, from_earliest=True) == 400
    assert partition_lag(1000, None, now_s=0, log_start=400, from_earliest=True).lag == 600
    # latest: nothing waits
    assert partition_lag(1000, None, now_s=0, log_start=400, from_earliest=False).lag == 0
    # committed: the commit, whatever the reset policy
    assert partition_lag(1000, 900, now_s=0, log_start=400, from_earliest=True).lag == 100


def test_a_never_committed_partition_gets_a_real_time_lag_from_its_first_message() -> None:
    # The history only knows the end offset now; the first unconsumed message's own
    # timestamp says it has waited 300 s.
    p = partition_lag(1000, None, now_s=1000.0, log_start=0, from_earliest=True,
                      history=[(1000, 1000.0)], produced_at=700.0)
    assert (p.lag, p.seconds) == (1000, 300.0)


def test_seconds_behind_interpolate_the_history_when_no_timestamp_was_read() -> None:
    history = [(0, 0.0), (100, 10.0), (200, 20.0)]
    p = partition_lag(200, 150, now_s=20.0, history=history)
    assert p.lag == 50 and p.seconds == pytest.approx(5.0)
    assert partition_lag(200, 200, now_s=20.0, history=history).seconds == 0.0
    assert partition_lag(200, 150, now_s=20.0).seconds is None  # nothing to go by


def test_the_positions_worth_reading_are_those_the_history_cannot_bracket() -> None:
    offsets = {("t", 0): (1000, None), ("t", 1): (500, 450), ("t", 2): (300, 300),
               ("t", 3): (800, 10)}
    history = {("t", 0): [(1000, 5.0)], ("t", 1): [(400, 1.0), (500, 5.0)],
               ("t", 2): [(300, 5.0)], ("t", 3): [(400, 1.0), (800, 5.0)]}
    wanted = positions_to_read(offsets, log_starts={("t", 0): 100}, from_earliest=True,
                               history=history)
    # t0: never committed, one point; t1: inside the history; t2: caught up; t3: older
    assert wanted == [(("t", 0), 100), (("t", 3), 10)]


def test_totals_read_the_same_per_partition_figures() -> None:
    lags = partition_lags({("t", 0): (10, 4), ("t", 1): (7, None), ("t", 2): (3, 3)},
                          now_s=50.0, from_earliest=True,
                          produced_at={(("t", 0), 4): 20.0, (("t", 1), 0): 10.0})
    assert lagmath.total(lags) == 6 + 7 + 0
    assert lagmath.max_seconds(lags) == 40.0
    assert lagmath.max_seconds({}) is None


@given(end=st.integers(0, 10**9), committed=st.none() | st.integers(0, 10**9),
       start=st.none() | st.integers(0, 10**9), earliest=st.booleans())
def test_lag_is_never_negative_nor_beyond_the_retained_log(
        end: int, committed: int | None, start: int | None, earliest: bool) -> None:
    p = partition_lag(end, committed, now_s=0.0, log_start=start, from_earliest=earliest)
    assert p.lag >= 0
    assert p.lag == max(end - p.position, 0)
    if committed is None:
        assert p.lag <= end - min(start or 0, end)
        assert p.lag == 0 or earliest


@given(history=st.lists(st.tuples(st.integers(0, 10_000), st.floats(0, 1000)), max_size=8),
       committed=st.integers(0, 10_000), stamp=st.none() | st.floats(0, 1000))
def test_seconds_behind_are_zero_exactly_when_nothing_waits(
        history: list[tuple[int, float]], committed: int, stamp: float | None) -> None:
    end = 10_000
    p = partition_lag(end, committed, now_s=1000.0, history=sorted(history),
                      produced_at=stamp)
    if p.lag == 0:
        assert p.seconds == 0.0
    if stamp is not None and p.lag > 0:
        assert p.seconds == 1000.0 - stamp
    assert p.seconds is None or p.seconds >= 0.0
