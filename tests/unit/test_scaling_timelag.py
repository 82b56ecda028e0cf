"""Time lag from a partition's (end offset, time) history, kafka-lag-exporter style."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kcg_operator.scaling.timelag import (
    EndOffsetHistory,
    OffsetTimeTable,
    add_point,
    produced_at,
    time_lag_seconds,
    updated,
)

pytestmark = pytest.mark.unit


def test_interpolates_between_the_bracketing_points() -> None:
    points = [(0, 0.0), (100, 10.0), (200, 20.0)]
    assert produced_at(points, 150) == pytest.approx(15.0)
    assert time_lag_seconds(points, 150, now_s=20.0) == pytest.approx(5.0)


def test_uneven_rates_use_their_own_segment() -> None:
    points = [(0, 0.0), (1000, 10.0), (1100, 20.0)]
    assert produced_at(points, 1050) == pytest.approx(15.0)
    assert produced_at(points, 500) == pytest.approx(5.0)


def test_extrapolates_below_the_table_along_its_trend() -> None:
    points = [(100, 10.0), (200, 20.0)]
    assert time_lag_seconds(points, 50, now_s=20.0) == pytest.approx(15.0)


def test_caught_up_is_zero_and_unknown_is_none() -> None:
    points = [(100, 10.0), (200, 20.0)]
    assert time_lag_seconds(points, 200, now_s=25.0) == 0.0
    assert time_lag_seconds(points, None, now_s=25.0) is None
    assert time_lag_seconds([], 10, now_s=25.0) is None


def test_single_point_gives_a_lower_bound() -> None:
    assert time_lag_seconds([(500, 30.0)], 100, now_s=45.0) == pytest.approx(15.0)


def test_flat_stretch_is_one_segment_whose_right_end_moves() -> None:
    table = add_point([], (100, 0.0))
    table = add_point(table, (200, 10.0))
    table = add_point(table, (200, 20.0))
    table = add_point(table, (200, 30.0))
    assert table == [(100, 0.0), (200, 10.0), (200, 30.0)]
    # The waiting message at offset 200 came after the flat stretch: it is young.
    table = add_point(table, (300, 40.0))
    assert produced_at(table, 200) == pytest.approx(30.0)
    assert produced_at(table, 150) == pytest.approx(5.0)


def test_out_of_order_and_decreasing_points_are_dropped() -> None:
    table = add_point([(100, 10.0)], (90, 20.0))
    assert table == [(100, 10.0)]
    table = add_point(table, (150, 5.0))
    assert table == [(100, 10.0)]


@given(st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=300))
def test_table_memory_is_bounded_and_monotonic(steps: list[int]) -> None:
    table = OffsetTimeTable(limit=20)
    offset = 0
    for i, step in enumerate(steps):
        offset += step
        table.add(offset, float(i))
    assert len(table.points) <= 20
    pts = list(table.points)
    assert all(a[0] <= b[0] and a[1] < b[1] for a, b in pairwise(pts))


@given(
    st.lists(st.integers(min_value=1, max_value=100), min_size=2, max_size=60),
    st.data(),
)
def test_estimate_lies_within_the_table_when_interpolating(
    steps: list[int], data: st.DataObject
) -> None:
    table = OffsetTimeTable(limit=60)
    offset = 0
    for i, step in enumerate(steps):
        offset += step
        table.add(offset, float(i))
    first, last = table.points[0][0], table.points[-1][0]
    committed = data.draw(st.integers(min_value=first, max_value=last))
    lag = table.time_lag(committed, now_s=float(len(steps) - 1))
    assert lag is not None
    assert 0.0 <= lag <= len(steps) - 1


def test_the_history_of_a_sweep_follows_the_topic() -> None:
    history: dict[str, tuple[tuple[int, float], ...]] = {}
    for i in range(10):
        # 10 messages/s on "a"; "b" gets nothing.
        history = updated(history, float(i * 10), {"a": i * 100, "b": 0}, limit=10)
    # The group stopped at offset 200 on "a", produced at t=20.
    assert time_lag_seconds(history["a"], 200, now_s=90.0) == pytest.approx(70.0)
    assert len(history["b"]) == 2  # a flat stretch stays one segment
    # A partition the sweep no longer sees is forgotten.
    assert set(updated(history, 100.0, {"a": 1000})) == {"a"}


def test_groups_on_one_partition_share_one_table_fed_once_per_sweep() -> None:
    shared: EndOffsetHistory[tuple[str, int]] = EndOffsetHistory(limit=10)
    for sweep in range(5):
        ends = {("orders", 0): sweep * 100, ("orders", 1): sweep * 50}
        for _group in range(1000):  # every group's snapshot of the same sweep
            shared.feed(float(sweep * 10), ends, seen_at=float(sweep))
    assert len(shared.tables) == 2
    assert shared.of([("orders", 0)]) == {("orders", 0): tuple(
        (sweep * 100, float(sweep * 10)) for sweep in range(5))}
    # A group reads only its own partitions' tables, and unknown ones are absent.
    assert set(shared.of([("orders", 1), ("payments", 0)])) == {("orders", 1)}
    # The same table as one group alone would have kept.
    alone = OffsetTimeTable(limit=10)
    for sweep in range(5):
        alone.add(sweep * 100, float(sweep * 10))
    assert shared.tables[("orders", 0)].points == alone.points


def test_a_table_nobody_feeds_goes_after_the_idle_time() -> None:
    shared: EndOffsetHistory[str] = EndOffsetHistory()
    shared.feed(0.0, {"old": 1, "kept": 1}, seen_at=0.0)
    shared.feed(5.0, {"kept": 2}, seen_at=500.0)
    shared.forget_idle(now=650.0, idle_s=600.0)
    assert set(shared.tables) == {"kept"} and set(shared.fed) == {"kept"}
