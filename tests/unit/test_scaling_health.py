"""Burrow's rules on hand-built windows (timestamps in ms, now in seconds, as Burrow has it)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kcg_operator.scaling.health import (
    ERR,
    NOT_PROGRESSING,
    OK,
    REWIND,
    STALL,
    STOP,
    WARN,
    Commit,
    CommitWindow,
    HealthTracker,
    PartitionStatus,
    calculate_partition_status,
    check_if_offsets_rewind,
    check_if_offsets_stalled,
    check_if_rewind_recovered,
    evaluate_group,
    evaluate_partition_status,
    group_status,
    partition_status,
)

pytestmark = pytest.mark.unit

ADVANCING_LAG_GROWING = [
    (1000, 100_000, 50),
    (2000, 200_000, 100),
    (3000, 300_000, 150),
    (4000, 400_000, 200),
    (5000, 500_000, 250),
]


def test_empty_window_is_ok() -> None:
    assert partition_status([], [100], current_lag=100, now_s=1000) == OK


def test_no_current_lag_is_ok_even_if_commits_stopped_long_ago() -> None:
    assert partition_status(ADVANCING_LAG_GROWING, [5250], current_lag=0, now_s=10_000) == OK


def test_zero_lag_somewhere_in_the_window_is_ok() -> None:
    window = [(1000, 100_000, 0), *ADVANCING_LAG_GROWING[1:]]
    assert partition_status(window, [5200], current_lag=200, now_s=600) == OK


def test_warn_when_offsets_move_but_lag_never_decreases() -> None:
    assert partition_status(ADVANCING_LAG_GROWING, [5250], current_lag=250, now_s=600) == WARN


def test_ok_when_lag_decreases_somewhere() -> None:
    window = [(1000, 100_000, 300), (2000, 200_000, 200), (3000, 300_000, 250)]
    assert partition_status(window, [3250], current_lag=250, now_s=350) == OK


def test_stop_when_last_commit_is_older_than_the_window_span() -> None:
    # Span 400 s (100 s .. 500 s); now 1000 s is 500 s after the last commit.
    assert partition_status(ADVANCING_LAG_GROWING, [5250], current_lag=250, now_s=1000) == STOP


def test_not_stop_when_silence_equals_the_span() -> None:
    # 400 s since the last commit is not *more* than the 400 s span.
    assert partition_status(ADVANCING_LAG_GROWING, [5250], current_lag=250, now_s=900) == WARN


def test_stop_wins_over_an_old_zero_lag_commit() -> None:
    window = [(1000, 100_000, 0), *ADVANCING_LAG_GROWING[1:]]
    assert partition_status(window, [5200], current_lag=200, now_s=1000) == STOP


def test_not_stop_when_a_recent_broker_offset_shows_it_was_caught_up() -> None:
    # A quiet topic: the end offset was 5000 (the last commit) moments ago.
    assert partition_status(ADVANCING_LAG_GROWING, [5000, 5250], 250, now_s=1000) != STOP


def test_stall_when_offset_never_moves_with_lag() -> None:
    window = [(1000, t * 100_000, 100 + 50 * t) for t in range(1, 6)]
    assert partition_status(window, [1300], current_lag=300, now_s=600) == STALL


REWOUND_THEN_PAST_IT = [
    (1000, 100_000, 100),
    (2000, 200_000, 150),
    (3000, 300_000, 200),
    (2000, 400_000, 1250),
    (4000, 500_000, 300),
]


def test_a_rewind_the_consumer_recovered_from_is_not_held_against_it() -> None:
    # 3000 -> 2000 is a rewind, but 4000 later passes 3000 again: the other rules decide
    # (lag fell 1250 -> 300, so OK). Before Burrow d69a8ec0 this was REWIND.
    assert partition_status(REWOUND_THEN_PAST_IT, [4300], current_lag=300, now_s=600) == OK


def test_rewind_when_the_consumer_has_not_reached_its_old_offset_again() -> None:
    window = [*REWOUND_THEN_PAST_IT[:4], (2999, 500_000, 300)]
    assert partition_status(window, [4300], current_lag=300, now_s=600) == REWIND
    # Reaching exactly the old offset counts as recovered.
    window = [*REWOUND_THEN_PAST_IT[:4], (3000, 500_000, 300)]
    assert partition_status(window, [4300], current_lag=300, now_s=600) == OK


def test_rewind_is_judged_before_an_old_zero_lag_commit() -> None:
    # Caught up, then a rewind to earliest: the zero-lag commit must not make it OK.
    window = [(3000, 100_000, 0), (3100, 200_000, 0), (0, 300_000, 3200), (400, 400_000, 2900)]
    assert partition_status(window, [3200], current_lag=2900, now_s=450) == REWIND


def test_only_the_first_rewind_of_the_window_is_examined() -> None:
    # Burrow's checkIfOffsetsRewind returns the first backwards step only: after the first
    # rewind recovered (2000 -> 4000 passes 3000), the second one (4000 -> 3500) is not REWIND.
    window = [
        (1000, 100_000, 500),
        (3000, 200_000, 400),
        (2000, 300_000, 1500),
        (4000, 400_000, 300),
        (3500, 500_000, 900),
    ]
    assert partition_status(window, [4400], current_lag=900, now_s=600) == OK


def test_stop_is_judged_before_rewind() -> None:
    window = [*REWOUND_THEN_PAST_IT[:4], (2500, 500_000, 1800)]
    assert partition_status(window, [4300], current_lag=1800, now_s=1000) == STOP


def test_allowed_lag_counts_as_zero() -> None:
    # Exactly-once producers leave a permanent lag of one (transaction markers).
    window = [(1000 + i, 100_000 * (i + 1), 1) for i in range(5)]
    assert partition_status(window, [1005], current_lag=1, now_s=2000, allowed_lag=1) == OK
    assert partition_status(window, [1005], current_lag=1, now_s=2000) == STOP


def test_a_single_commit_is_not_a_stall_but_can_be_a_stop() -> None:
    # Extension E1: Burrow's own rules call one commit with lag STALL (nothing moved).
    assert (
        calculate_partition_status([(10, 100_000, 5)], [15], current_lag=5, time_now=100) == STALL
    )
    assert partition_status([(10, 100_000, 5)], [15], current_lag=5, now_s=100) == OK
    assert partition_status([(10, 100_000, 5)], [15], current_lag=5, now_s=130) == STOP


def test_recently_caught_up_ignores_allowed_lag_as_burrow_does() -> None:
    # The last end offsets were one past the last commit (e.g. a transaction marker); with
    # allowed_lag 1 that is "no lag", but Burrow's checkIfRecentLagZero compares exactly.
    window = [(1000 + i, 100_000 * (i + 1), 1) for i in range(5)]
    assert partition_status(window, [1005, 1005, 1008], 4, now_s=2000, allowed_lag=1) == STOP
    assert partition_status(window, [1004, 1005, 1008], 4, now_s=2000, allowed_lag=1) == OK


def test_unknown_lags_do_not_count() -> None:
    window = [(1000, 100_000, None), (2000, 200_000, 100), (3000, 300_000, 150)]
    assert partition_status(window, [3150], current_lag=150, now_s=350) == WARN


def test_group_status_is_the_worst_with_anything_above_err_as_err() -> None:
    assert group_status([]) == OK
    assert group_status([OK, OK]) == OK
    assert group_status([OK, WARN]) == WARN
    for bad in (STOP, STALL, REWIND):
        assert group_status([OK, WARN, bad]) == ERR


def test_commit_window_is_bounded_and_detects_a_stalled_consumer() -> None:
    window = CommitWindow(intervals=4)
    for i in range(10):
        # A live owner keeps committing the same offset while messages pile up.
        window.record(committed=500, end_offset=600 + 10 * i, now_s=15.0 * i, owner_alive=True)
    assert len(window.commits) == 4
    assert window.status(current_lag=190, now_s=135) == STALL


def test_commit_window_detects_a_stopped_consumer() -> None:
    window = CommitWindow()
    for i in range(4):
        window.record(committed=100 * i, end_offset=100 * i + 50, now_s=15.0 * i)
    # The owner is gone: the offset no longer moves and no commit is recorded.
    for i in range(4, 20):
        window.record(committed=300, end_offset=100 * i + 50, now_s=15.0 * i, owner_alive=False)
    assert window.status(current_lag=1650, now_s=285) == STOP


def test_commit_window_waits_while_recent_end_offsets_show_it_caught_up() -> None:
    window = CommitWindow()
    for i in range(4):
        window.record(committed=100 * i, end_offset=100 * i, now_s=15.0 * i)
    # A slow topic: one new message, and the consumer has not committed it yet.
    window.record(committed=300, end_offset=301, now_s=120.0, owner_alive=False)
    assert window.status(current_lag=1, now_s=120) == OK


def test_commit_window_of_a_healthy_consumer_is_ok() -> None:
    window = CommitWindow()
    for i in range(12):
        window.record(committed=100 * i, end_offset=100 * i + (0 if i % 3 else 20), now_s=15.0 * i)
    assert window.status(current_lag=0, now_s=165) == OK


def test_health_tracker_follows_a_group_and_forgets_vanished_partitions() -> None:
    tracker: HealthTracker[tuple[str, int]] = HealthTracker(intervals=5)
    statuses = {}
    for i in range(8):
        offsets = {
            ("t", 0): (100 * i, 100 * i),  # caught up
            ("t", 1): (1000 + 100 * i, 1000),  # owned, committed offset stuck: stalled
            ("t", 2): (1000 + 100 * i, 900),  # owner gone: stopped
        }
        statuses = tracker.observe(15.0 * i, offsets, owned={("t", 0), ("t", 1)})
    assert statuses == {("t", 0): OK, ("t", 1): STALL, ("t", 2): STOP}
    tracker.observe(120.0, {("t", 0): (800, 800)})
    assert set(tracker.windows) == {("t", 0)}


def test_commit_window_first_sweep_of_a_lagging_partition_is_ok() -> None:
    # Judged in the sweep that recorded it, a commit is 0 ms old, also at a fractional time:
    # not STOP, and (E1) not STALL, so the policy does not drop its lag on the first sweep.
    window = CommitWindow()
    window.record(committed=0, end_offset=100, now_s=1_700_000_000.1237)
    assert window.status(current_lag=100, now_s=1_700_000_000.1237) == OK


def test_commit_window_minimum_complete_holds_judgment_until_the_window_fills() -> None:
    window = CommitWindow(intervals=10, minimum_complete=0.5)
    for i in range(4):
        window.record(committed=500, end_offset=600 + 10 * i, now_s=15.0 * i)
    result = window.evaluate(current_lag=630, now_s=45)
    assert (result.status, result.complete) == (OK, 0.4)
    window.record(committed=500, end_offset=640, now_s=60.0)
    result = window.evaluate(current_lag=640, now_s=60)
    assert (result.status, result.complete) == (STALL, 0.5)
    assert result.start == (500, 0, 100)
    assert result.end == (500, 60_000, 140)


def test_commit_window_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="intervals"):
        CommitWindow(intervals=0)
    with pytest.raises(ValueError, match="minimum_complete"):
        CommitWindow(minimum_complete=1.5)


def test_evaluate_partition_status_handles_empty_windows_and_rejects_gaps() -> None:
    assert evaluate_partition_status([], [5], 5, 100).status == OK
    empty = evaluate_partition_status([None, None], [5], 5, 100)
    assert (empty.status, empty.complete, empty.start) == (OK, 0.0, None)
    with pytest.raises(ValueError, match="empty slots"):
        evaluate_partition_status([(1, 0, 0), None, (2, 1000, 0)], [5], 3, 2)


def test_health_tracker_reports_the_group_like_burrow() -> None:
    tracker: HealthTracker[tuple[str, int]] = HealthTracker(intervals=5)
    for i in range(6):
        tracker.observe(
            15.0 * i,
            {("t", 0): (100 * i, 100 * i), ("t", 1): (1000 + 100 * i, 1000)},
        )
    group = tracker.group(show_all=False)
    assert group.status == ERR  # t[1] is STALL
    assert list(group.partitions) == [("t", 1)]
    assert group.partitions[("t", 1)].status == STALL
    assert group.maxlag is not None and group.maxlag[0] == ("t", 1)
    assert group.total_lag == 500  # 1500 - 1000 on t[1], 0 on t[0]
    assert group.complete == 1.0


# ------------------------------------------------------------------- properties

STATUSES = st.sampled_from([OK, WARN, STOP, STALL, REWIND])


@st.composite
def advancing_windows(draw: st.DrawFn) -> list[tuple[int, int, int]]:
    """Sweeps (committed, end offset, time in s): offsets advance, one sweep is caught up."""
    n = draw(st.integers(1, 10))
    steps = draw(st.lists(st.integers(1, 10_000), min_size=n, max_size=n))
    lags = draw(st.lists(st.integers(0, 50_000), min_size=n, max_size=n))
    gaps = draw(st.lists(st.integers(1, 600), min_size=n, max_size=n))
    lags[draw(st.integers(0, n - 1))] = 0
    sweeps, offset, t = [], 0, 1_000
    for step, lag, gap in zip(steps, lags, gaps, strict=True):
        offset, t = offset + step, t + gap
        sweeps.append((offset, offset + lag, t))
    return sweeps


@given(advancing_windows(), st.booleans(), st.integers(0, 10**6))
@settings(max_examples=300, deadline=None)
def test_advancing_commits_that_caught_up_are_ok(
    sweeps: list[tuple[int, int, int]], owner_alive: bool, current_lag: int
) -> None:
    window = CommitWindow(intervals=10)
    for committed, end, t in sweeps:
        window.record(committed, end, t, owner_alive=owner_alive)
    assert window.status(current_lag, now_s=sweeps[-1][2]) == OK


@st.composite
def burrow_windows(draw: st.DrawFn) -> list[Commit]:
    n = draw(st.integers(2, 12))
    offsets = draw(st.lists(st.integers(0, 50), min_size=n, max_size=n))
    gaps = draw(st.lists(st.integers(0, 100_000), min_size=n, max_size=n))
    lags = draw(st.lists(st.none() | st.integers(0, 40), min_size=n, max_size=n))
    times, t = [], 1_000_000
    for gap in gaps:
        t += gap
        times.append(t)
    return list(zip(offsets, times, lags, strict=True))


@given(
    burrow_windows(),
    st.lists(st.integers(0, 100), max_size=5),
    st.integers(0, 60),
    st.integers(1_000, 3_000),
    st.integers(0, 3),
)
@settings(max_examples=500, deadline=None)
def test_the_operators_extensions_leave_windows_of_two_or_more_commits_to_burrow(
    window: list[Commit], broker: list[int], lag: int, now: int, allowed: int
) -> None:
    assert partition_status(window, broker, lag, now, allowed) == calculate_partition_status(
        window, broker, lag, now, allowed
    )


@given(
    burrow_windows(),
    st.lists(st.integers(0, 100), max_size=5),
    st.integers(0, 3),
    st.integers(1_000, 3_000),
)
@settings(max_examples=300, deadline=None)
def test_current_lag_within_allowed_is_always_ok(
    window: list[Commit], broker: list[int], allowed: int, now: int
) -> None:
    for lag in range(allowed + 1):
        assert partition_status(window, broker, lag, now, allowed) == OK


@given(burrow_windows(), st.integers(1, 60))
@settings(max_examples=300, deadline=None)
def test_silence_longer_than_the_span_with_no_recent_catch_up_is_stop(
    window: list[Commit], lag: int
) -> None:
    first_ms, last_ms = window[0][1], window[-1][1]
    now_ms = last_ms + (last_ms - first_ms) + 1000
    broker = [max(offset for offset, _, _ in window) + 1]
    assert partition_status(window, broker, lag, now_ms / 1000) == STOP


@given(
    st.lists(st.integers(1, 1000), min_size=2, max_size=6),
    st.integers(1, 1000),
    st.lists(st.integers(1, 2000), min_size=1, max_size=4),
    st.booleans(),
)
@settings(max_examples=300, deadline=None)
def test_one_rewind_is_rewind_until_the_old_offset_is_reached_again(
    climb: list[int], drop: int, after: list[int], recover: bool
) -> None:
    # Offsets climb, drop once by ``drop``, then climb again; judged at the last commit.
    offsets, offset = [], 10_000
    for step in climb:
        offset += step
        offsets.append(offset)
    peak = offset
    offset -= drop
    offsets.append(offset)
    for step in after:
        offset = min(offset + step, peak - 1)  # stays below the peak ...
        offsets.append(offset)
    if recover:
        offsets.append(peak + 1)  # ... unless it recovers
    window = [(o, 1000 * i, 500) for i, o in enumerate(offsets)]
    status = partition_status(window, [peak + 600], 500, now_s=len(window) - 1)
    assert (status == REWIND) is (not recover)


@given(st.lists(STATUSES, max_size=8))
def test_group_status_is_never_a_partition_only_status(statuses: list[str]) -> None:
    group = group_status(statuses)
    if any(s in (STOP, STALL, REWIND) for s in statuses):
        assert group == ERR
    elif WARN in statuses:
        assert group == WARN
    else:
        assert group == OK


def test_not_progressing_is_stop_and_stall_only() -> None:
    # A rewinding consumer is progressing (re-reading); more replicas can help it.
    assert frozenset({STOP, STALL}) == NOT_PROGRESSING


def test_rule_helpers_on_edge_windows() -> None:
    # Stalled means unchanged, not merely "not advancing": a drop is a rewind, not a stall.
    assert check_if_offsets_stalled([(2, 0, 5), (1, 1000, 6)]) is False
    assert check_if_offsets_stalled([(2, 0, 5)]) is True  # vacuously, as in Burrow
    assert check_if_offsets_rewind([(2, 0, 5), (3, 1000, 5), (1, 2000, 5)]) == 2
    assert check_if_rewind_recovered([(5, 0, 1), (3, 1000, 1), (4, 2000, 1)], 1) is False


def test_group_maxlag_on_a_tie_is_the_first_partition() -> None:
    parts = {("t", p): PartitionStatus(OK, 7, 1.0) for p in (2, 0, 1)}
    group = evaluate_group(parts)
    assert group.maxlag is not None and group.maxlag[0] == ("t", 2)
