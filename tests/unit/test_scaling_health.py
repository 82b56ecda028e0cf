"""Burrow's rules on hand-built windows (timestamps in ms, now in seconds, as Burrow has it)."""

from __future__ import annotations

import pytest

from kcg_operator.scaling.health import (
    ERR,
    OK,
    REWIND,
    STALL,
    STOP,
    WARN,
    CommitWindow,
    HealthTracker,
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


def test_rewind_when_offset_goes_backwards() -> None:
    window = [
        (1000, 100_000, 100),
        (2000, 200_000, 150),
        (3000, 300_000, 200),
        (2000, 400_000, 1250),
        (4000, 500_000, 300),
    ]
    assert partition_status(window, [4300], current_lag=300, now_s=600) == REWIND


def test_allowed_lag_counts_as_zero() -> None:
    # Exactly-once producers leave a permanent lag of one (transaction markers).
    window = [(1000 + i, 100_000 * (i + 1), 1) for i in range(5)]
    assert partition_status(window, [1005], current_lag=1, now_s=2000, allowed_lag=1) == OK
    assert partition_status(window, [1005], current_lag=1, now_s=2000) == STOP


def test_a_single_commit_is_not_a_stall_but_can_be_a_stop() -> None:
    assert partition_status([(10, 100_000, 5)], [15], current_lag=5, now_s=100) == OK
    assert partition_status([(10, 100_000, 5)], [15], current_lag=5, now_s=130) == STOP


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
