"""Burrow parity: every case of Burrow's own evaluator test table, ported.

Source: linkedin/Burrow core/internal/evaluator/caching_test.go at commit
ced55ba90f6b833a45a124d411fd5eef63a70933 (the file last changed in 2676759d, 2022-09-11):
``var tests = []testset{...}`` and ``TestCachingEvaluator_CheckRules``, plus the group-level
tests of the same file (SingleRequest_NoShowAll, _ShowAll, _Incomplete, TopicDeleted) built on
Burrow's storage fixture (core/internal/storage/fixtures.go). Not ported: the tests of module
plumbing (Configure, Start/Stop, the cache) and TestCachingEvaluator_Start's NOTFOUND for an
unknown group, since looking groups up is the collector's job, not this module's.

The table below is a transcription: offsets are (Offset, Order, Timestamp, Lag) as in the Go
source, Lag None where Go has nil, comments copied with their case numbers. Order is kept for
a faithful diff against the Go table; Burrow's evaluator never reads it. As in Burrow,
timestamps are milliseconds and ``time_now`` is seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from kcg_operator.scaling.health import (
    ERR,
    OK,
    REWIND,
    STALL,
    STOP,
    WARN,
    Commit,
    CommitWindow,
    GroupStatus,
    HealthTracker,
    PartitionStatus,
    calculate_partition_status,
    check_if_lag_not_decreasing,
    check_if_offsets_rewind,
    check_if_offsets_stalled,
    check_if_offsets_stopped,
    check_if_recent_lag_zero,
    evaluate_group,
    evaluate_partition_status,
    is_lag_always_not_zero,
    partition_status,
)

pytestmark = pytest.mark.unit


@dataclass(frozen=True)
class BurrowCase:
    """One ``testset`` of Burrow's table, field for field."""

    offsets: list[tuple[int, int, int, int | None]]
    broker_offsets: list[int]
    current_lag: int
    time_now: int
    allowed_lag: int
    is_lag_always_not_zero: bool
    check_if_offsets_rewind: int
    check_if_offsets_stopped: bool
    check_if_offsets_stalled: bool
    check_if_lag_not_decreasing: bool
    check_if_recent_lag_zero: bool
    status: str

    @property
    def commits(self) -> list[Commit]:
        # The evaluator's view of a ConsumerOffset: Order dropped.
        return [(offset, timestamp, lag) for offset, _order, timestamp, lag in self.offsets]


# This section is the "correctness" proof for the evaluator (Burrow's words).
TABLE: list[BurrowCase] = [
    # 0 - returns OK because there is zero lag somewhere
    BurrowCase(
        offsets=[
            (1000, 1, 100000, 0),
            (2000, 2, 200000, 50),
            (3000, 3, 300000, 100),
            (4000, 4, 400000, 150),
            (5000, 5, 500000, 200),
        ],
        broker_offsets=[5200],
        current_lag=200,
        time_now=600,
        allowed_lag=0,
        is_lag_always_not_zero=False,
        check_if_offsets_rewind=-1,
        check_if_offsets_stopped=False,
        check_if_offsets_stalled=False,
        check_if_lag_not_decreasing=True,
        check_if_recent_lag_zero=False,
        status=OK,
    ),
    # 1 - same status. does not return true for stop because time since last commit (400s)
    #   is equal to the difference (500-100), not greater than
    BurrowCase(
        offsets=[
            (1000, 1, 100000, 0),
            (2000, 2, 200000, 50),
            (3000, 3, 300000, 100),
            (4000, 4, 400000, 150),
            (5000, 5, 500000, 200),
        ],
        broker_offsets=[5200],
        current_lag=200,
        time_now=900,
        allowed_lag=0,
        is_lag_always_not_zero=False,
        check_if_offsets_rewind=-1,
        check_if_offsets_stopped=False,
        check_if_offsets_stalled=False,
        check_if_lag_not_decreasing=True,
        check_if_recent_lag_zero=False,
        status=OK,
    ),
    # 2 - status is now STOP because the time since last commit is great enough (500s), even
    #   though lag is zero at the start (fixed due to #290)
    BurrowCase(
        offsets=[
            (1000, 1, 100000, 0),
            (2000, 2, 200000, 50),
            (3000, 3, 300000, 100),
            (4000, 4, 400000, 150),
            (5000, 5, 500000, 200),
        ],
        broker_offsets=[5200],
        current_lag=200,
        time_now=1000,
        allowed_lag=0,
        is_lag_always_not_zero=False,
        check_if_offsets_rewind=-1,
        check_if_offsets_stopped=True,
        check_if_offsets_stalled=False,
        check_if_lag_not_decreasing=True,
        check_if_recent_lag_zero=False,
        status=STOP,
    ),
    # 3 - status is STOP when lag is always non-zero as well
    BurrowCase(
        offsets=[
            (1000, 1, 100000, 50),
            (2000, 2, 200000, 100),
            (3000, 3, 300000, 150),
            (4000, 4, 400000, 200),
            (5000, 5, 500000, 250),
        ],
        broker_offsets=[5250],
        current_lag=250,
        time_now=1000,
        allowed_lag=0,
        is_lag_always_not_zero=True,
        check_if_offsets_rewind=-1,
        check_if_offsets_stopped=True,
        check_if_offsets_stalled=False,
        check_if_lag_not_decreasing=True,
        check_if_recent_lag_zero=False,
        status=STOP,
    ),
    # 4 - status is OK because of zero lag, but stall is true because the offset is always
    #   the same and there is lag (another commit with turn this to stall)
    BurrowCase(
        offsets=[
            (1000, 1, 100000, 0),
            (1000, 2, 200000, 50),
            (1000, 3, 300000, 100),
            (1000, 4, 400000, 150),
            (1000, 5, 500000, 200),
        ],
        broker_offsets=[1200],
        current_lag=200,
        time_now=600,
        allowed_lag=0,
        is_lag_always_not_zero=False,
        check_if_offsets_rewind=-1,
        check_if_offsets_stopped=False,
        check_if_offsets_stalled=True,
        check_if_lag_not_decreasing=True,
        check_if_recent_lag_zero=False,
        status=OK,
    ),
    # 5 - status is now STALL because the lag is always non-zero
    BurrowCase(
        offsets=[
            (1000, 1, 100000, 100),
            (1000, 2, 200000, 150),
            (1000, 3, 300000, 200),
            (1000, 4, 400000, 250),
            (1000, 5, 500000, 300),
        ],
        broker_offsets=[1300],
        current_lag=300,
        time_now=600,
        allowed_lag=0,
        is_lag_always_not_zero=True,
        check_if_offsets_rewind=-1,
        check_if_offsets_stopped=False,
        check_if_offsets_stalled=True,
        check_if_lag_not_decreasing=True,
        check_if_recent_lag_zero=False,
        status=STALL,
    ),
    # 6 - status is still STALL even when the lag stays the same
    BurrowCase(
        offsets=[
            (1000, 1, 100000, 100),
            (1000, 2, 200000, 100),
            (1000, 3, 300000, 100),
            (1000, 4, 400000, 100),
            (1000, 5, 500000, 100),
        ],
        broker_offsets=[1100],
        current_lag=100,
        time_now=600,
        allowed_lag=0,
        is_lag_always_not_zero=True,
        check_if_offsets_rewind=-1,
        check_if_offsets_stopped=False,
        check_if_offsets_stalled=True,
        check_if_lag_not_decreasing=True,
        check_if_recent_lag_zero=False,
        status=STALL,
    ),
    # 7 - status is OK because the offsets go backwards, but though the lag does decrease
    #   within the window (caught up the rewind)
    BurrowCase(
        offsets=[
            (1000, 1, 100000, 100),
            (2000, 2, 200000, 150),
            (3000, 3, 300000, 200),
            (2000, 4, 400000, 1250),
            (4000, 5, 500000, 300),
        ],
        broker_offsets=[4300],
        current_lag=300,
        time_now=600,
        allowed_lag=0,
        is_lag_always_not_zero=True,
        check_if_offsets_rewind=3,
        check_if_offsets_stopped=False,
        check_if_offsets_stalled=False,
        check_if_lag_not_decreasing=False,
        check_if_recent_lag_zero=False,
        status=OK,
    ),
    # 8 - status is OK because the current lag is 0 (even though the offsets show lag), even
    #   though it would be considered stopped due to timestamps
    BurrowCase(
        offsets=[
            (1000, 1, 100000, 50),
            (2000, 2, 200000, 100),
            (3000, 3, 300000, 150),
            (4000, 4, 400000, 200),
            (5000, 5, 500000, 250),
        ],
        broker_offsets=[5250],
        current_lag=0,
        time_now=1000,
        allowed_lag=0,
        is_lag_always_not_zero=True,
        check_if_offsets_rewind=-1,
        check_if_offsets_stopped=True,
        check_if_offsets_stalled=False,
        check_if_lag_not_decreasing=True,
        check_if_recent_lag_zero=False,
        status=OK,
    ),
    # 9 - status is STOP due to timestamps because the current lag is non-zero, even though
    #   lag is always zero in offsets, only because there is new data (#290)
    BurrowCase(
        offsets=[
            (792748079, 1, 1512224618356, 0),
            (792748080, 2, 1512224619362, 0),
            (792748081, 3, 1512224620366, 0),
            (792748082, 4, 1512224621367, 0),
            (792748083, 5, 1512224622370, 0),
            (792748084, 6, 1512224623373, 0),
            (792748085, 7, 1512224624378, 0),
            (792748086, 8, 1512224625379, 0),
            (792748087, 9, 1512224626383, 0),
            (792748088, 10, 1512224627383, 0),
            (792748089, 11, 1512224628383, 0),
            (792748090, 12, 1512224629388, 0),
            (792748091, 13, 1512224630391, 0),
            (792748092, 14, 1512224631394, 0),
            (792748093, 15, 1512224632397, 0),
        ],
        broker_offsets=[792749024, 792749000, 792748800, 792748600, 792748500],
        current_lag=931,
        time_now=1512224650,
        allowed_lag=0,
        is_lag_always_not_zero=False,
        check_if_offsets_rewind=-1,
        check_if_offsets_stopped=True,
        check_if_offsets_stalled=False,
        check_if_lag_not_decreasing=True,
        check_if_recent_lag_zero=False,
        status=STOP,
    ),
    # 10 - status is OK, even though it would be stop due to timestamps, as within the
    #   recent broker offset window the lag was zero (#303)
    BurrowCase(
        offsets=[
            (792748079, 1, 1512224618356, 0),
            (792748080, 2, 1512224619362, 0),
            (792748081, 3, 1512224620366, 0),
            (792748082, 4, 1512224621367, 0),
            (792748083, 5, 1512224622370, 0),
            (792748084, 6, 1512224623373, 0),
            (792748085, 7, 1512224624378, 0),
            (792748086, 8, 1512224625379, 0),
            (792748087, 9, 1512224626383, 0),
            (792748088, 10, 1512224627383, 0),
            (792748089, 11, 1512224628383, 0),
            (792748090, 12, 1512224629388, 0),
            (792748091, 13, 1512224630391, 0),
            (792748092, 14, 1512224631394, 0),
            (792748093, 15, 1512224632397, 0),
        ],
        broker_offsets=[792748094, 792748093, 792748093, 792748093],
        current_lag=1,
        time_now=1512224650,
        allowed_lag=0,
        is_lag_always_not_zero=False,
        check_if_offsets_rewind=-1,
        check_if_offsets_stopped=True,
        check_if_offsets_stalled=False,
        check_if_lag_not_decreasing=True,
        check_if_recent_lag_zero=True,
        status=OK,
    ),
    # 11 - same case as test 0 with additional `nil` lag entries which should not affect results
    BurrowCase(
        offsets=[
            (1000, 10, 100000, 0),
            (1500, 15, 150000, None),
            (2000, 20, 200000, 50),
            (2500, 25, 250000, None),
            (3000, 30, 300000, 100),
            (3500, 35, 350000, None),
            (4000, 40, 400000, 150),
            (4500, 45, 450000, None),
            (5000, 50, 500000, 200),
            (5500, 55, 550000, None),
        ],
        broker_offsets=[5700],
        current_lag=200,
        time_now=600,
        allowed_lag=0,
        is_lag_always_not_zero=False,
        check_if_offsets_rewind=-1,
        check_if_offsets_stopped=False,
        check_if_offsets_stalled=False,
        check_if_lag_not_decreasing=True,
        check_if_recent_lag_zero=False,
        status=OK,
    ),
    # 12 - status is OK despite the fact that the current lag is greater zero and the time
    #   since last commit is great enough because of the configured allowed lag
    BurrowCase(
        offsets=[
            (1000, 1, 100000, 2),
            (2000, 2, 200000, 1),
            (2000, 2, 300000, 1),
        ],
        broker_offsets=[2001],
        current_lag=1,
        time_now=550,
        allowed_lag=1,
        is_lag_always_not_zero=False,
        check_if_offsets_rewind=-1,
        check_if_offsets_stopped=True,
        check_if_offsets_stalled=False,
        check_if_lag_not_decreasing=False,
        check_if_recent_lag_zero=False,
        status=OK,
    ),
    # 13 - same as 5 but with an allowed lag
    BurrowCase(
        offsets=[
            (1000, 1, 100000, 100),
            (1000, 2, 200000, 150),
            (1000, 3, 300000, 200),
            (1000, 4, 400000, 250),
            (1000, 5, 500000, 300),
        ],
        broker_offsets=[1300],
        current_lag=300,
        time_now=600,
        allowed_lag=99,
        is_lag_always_not_zero=True,
        check_if_offsets_rewind=-1,
        check_if_offsets_stopped=False,
        check_if_offsets_stalled=True,
        check_if_lag_not_decreasing=True,
        check_if_recent_lag_zero=False,
        status=STALL,
    ),
    # 14 - same as 7 but with an allowed lag
    BurrowCase(
        offsets=[
            (1000, 1, 100000, 100),
            (2000, 2, 200000, 150),
            (3000, 3, 300000, 200),
            (2000, 4, 400000, 1250),
            (4000, 5, 500000, 300),
        ],
        broker_offsets=[4300],
        current_lag=300,
        time_now=600,
        allowed_lag=99,
        is_lag_always_not_zero=True,
        check_if_offsets_rewind=3,
        check_if_offsets_stopped=False,
        check_if_offsets_stalled=False,
        check_if_lag_not_decreasing=False,
        check_if_recent_lag_zero=False,
        status=OK,
    ),
    # 15 - Rewind, but we did not catch up to the previous point
    BurrowCase(
        offsets=[
            (1000, 1, 100000, 100),
            (2000, 2, 200000, 150),
            (3000, 3, 300000, 200),
            (2000, 4, 400000, 1250),
            (2500, 5, 500000, 300),
        ],
        broker_offsets=[4300],
        current_lag=300,
        time_now=600,
        allowed_lag=0,
        is_lag_always_not_zero=True,
        check_if_offsets_rewind=3,
        check_if_offsets_stopped=False,
        check_if_offsets_stalled=False,
        check_if_lag_not_decreasing=False,
        check_if_recent_lag_zero=False,
        status=REWIND,
    ),
]

CASE_IDS = [f"burrow-{i:02d}" for i in range(len(TABLE))]


def test_every_case_of_burrows_table_is_ported() -> None:
    # Burrow's table has cases 0..15; losing one here would silently weaken the parity claim.
    assert len(TABLE) == 16
    assert {case.status for case in TABLE} == {OK, STOP, STALL, REWIND}


@pytest.mark.parametrize("case", TABLE, ids=CASE_IDS)
def test_rule_helpers_match_burrows_table(case: BurrowCase) -> None:
    # TestCachingEvaluator_CheckRules runs every helper on every case, not only the verdict.
    commits = case.commits
    assert is_lag_always_not_zero(commits, case.allowed_lag) == case.is_lag_always_not_zero
    assert check_if_offsets_rewind(commits) == case.check_if_offsets_rewind
    assert check_if_offsets_stopped(commits, case.time_now) == case.check_if_offsets_stopped
    assert check_if_offsets_stalled(commits) == case.check_if_offsets_stalled
    assert check_if_lag_not_decreasing(commits) == case.check_if_lag_not_decreasing
    assert check_if_recent_lag_zero(commits, case.broker_offsets) == case.check_if_recent_lag_zero


@pytest.mark.parametrize("case", TABLE, ids=CASE_IDS)
def test_calculate_partition_status_matches_burrows_table(case: BurrowCase) -> None:
    status = calculate_partition_status(
        case.commits, case.broker_offsets, case.current_lag, case.time_now, case.allowed_lag
    )
    assert status == case.status


@pytest.mark.parametrize("case", TABLE, ids=CASE_IDS)
def test_the_operators_partition_status_matches_burrows_table(case: BurrowCase) -> None:
    # partition_status carries the operator's extensions; they must not change Burrow's cases.
    status = partition_status(
        case.commits, case.broker_offsets, case.current_lag, case.time_now, case.allowed_lag
    )
    assert status == case.status


@pytest.mark.parametrize("case", TABLE, ids=CASE_IDS)
def test_the_operators_commit_window_matches_burrows_table(case: BurrowCase) -> None:
    # The window the controller keeps, loaded with Burrow's commits and broker offsets.
    window = CommitWindow(intervals=len(case.offsets), commits=tuple(case.commits),
                          broker_offsets=tuple(case.broker_offsets))
    result = window.evaluate(case.current_lag, case.time_now, case.allowed_lag)
    assert result.status == case.status
    assert window.status(case.current_lag, case.time_now, case.allowed_lag) == case.status


@pytest.mark.parametrize("case", TABLE, ids=CASE_IDS)
def test_evaluate_partition_status_on_a_full_window(case: BurrowCase) -> None:
    result = evaluate_partition_status(
        case.commits,
        case.broker_offsets,
        case.current_lag,
        case.time_now,
        allowed_lag=case.allowed_lag,
    )
    assert result == PartitionStatus(
        case.status, case.current_lag, 1.0, case.commits[0], case.commits[-1]
    )


@pytest.mark.parametrize("case", TABLE, ids=CASE_IDS)
def test_an_incomplete_window_is_judged_unless_minimum_complete_asks_for_more(
    case: BurrowCase,
) -> None:
    # evaluatePartitionStatus: nil slots lead the ring until it is full; "complete" is the
    # filled share, and only a window below minimum-complete escapes judgment (as OK).
    slots: list[Commit | None] = [None] * len(case.offsets)
    slots.extend(case.commits)
    judged = evaluate_partition_status(
        slots, case.broker_offsets, case.current_lag, case.time_now, 0.5, case.allowed_lag
    )
    assert (judged.status, judged.complete) == (case.status, 0.5)
    assert (judged.start, judged.end) == (case.commits[0], case.commits[-1])
    skipped = evaluate_partition_status(
        slots, case.broker_offsets, case.current_lag, case.time_now, 0.51, case.allowed_lag
    )
    assert (skipped.status, skipped.complete) == (OK, 0.5)


# ------------------------------------------------ group-level tests of caching_test.go

TopicPartition = tuple[str, int]
TOPIC_PARTITION: TopicPartition = ("testtopic", 0)
BROKER_OFFSET = 4321  # storage fixture: the one broker offset of testtopic[0]
START_S = 1_700_000_000  # storage fixture: startTime = now - 100 s (whole seconds)


def _fixture_group(commits: int, show_all: bool) -> GroupStatus[TopicPartition]:
    """Burrow's storage fixture (CoordinatorWithOffsets) fed through the HealthTracker.

    ``commits`` offsets 1000 + 100 i at startTime + 10 s * i against broker offset 4321, in a
    ring of 10 intervals; Burrow evaluates about 100 s after startTime. The last sweep sees no
    new commit and no live owner, so it only ages the window, as Burrow's clock does.
    """
    tracker: HealthTracker[TopicPartition] = HealthTracker(intervals=10)
    for i in range(commits):
        tracker.observe(START_S + 10 * i, {TOPIC_PARTITION: (BROKER_OFFSET, 1000 + 100 * i)})
    last = 1000 + 100 * (commits - 1)
    tracker.observe(START_S + 100, {TOPIC_PARTITION: (BROKER_OFFSET, last)}, owned=set())
    return tracker.group(show_all)


def test_single_request_no_show_all() -> None:
    # testgroup: a full ring of 10 commits, lag falling 3321 -> 2421: OK, nothing listed.
    group = _fixture_group(10, show_all=False)
    assert group.status == OK
    assert group.complete == 1.0
    assert group.total_partitions == 1
    assert group.total_lag == 2421
    assert group.partitions == {}


def test_single_request_show_all() -> None:
    group = _fixture_group(10, show_all=True)
    assert (group.status, group.complete, group.total_partitions) == (OK, 1.0, 1)
    assert group.total_lag == 2421
    assert list(group.partitions) == [TOPIC_PARTITION]


def test_single_request_incomplete() -> None:
    # testgroup2: 5 commits in a ring of 10, the last 60 s ago over a 40 s span: STOP, and the
    # group reports it as ERR; no partition is complete, so the group's complete is 0.
    group = _fixture_group(5, show_all=False)
    assert group.status == ERR
    assert group.complete == 0.0
    assert group.total_partitions == 1
    assert group.total_lag == 2921
    assert list(group.partitions) == [TOPIC_PARTITION]
    part = group.partitions[TOPIC_PARTITION]
    assert (part.complete, part.status) == (0.5, STOP)
    assert group.maxlag is not None
    maxlag = group.maxlag[1]
    assert maxlag.start is not None and maxlag.start[0] == 1000
    assert maxlag.end is not None and maxlag.end[0] == 1400


def test_topic_deleted() -> None:
    # A group left without partitions is OK with nothing listed and complete 0.
    group: GroupStatus[TopicPartition] = evaluate_group({}, show_all=True)
    assert (group.status, group.partitions, group.complete) == (OK, {}, 0.0)
    assert (group.total_partitions, group.total_lag, group.maxlag) == (0, 0, None)


def test_group_status_is_the_worst_partition_with_stop_stall_rewind_as_err() -> None:
    # evaluateConsumerStatus: statuses above ERR become ERR; maxlag is the highest current lag.
    def part(status: str, lag: int) -> PartitionStatus:
        return PartitionStatus(status, lag, 1.0, (0, 0, lag), (0, 0, lag))

    for bad in (STOP, STALL, REWIND):
        group = evaluate_group(
            {("t", 0): part(OK, 5), ("t", 1): part(bad, 3), ("t", 2): part(WARN, 9)}, show_all=False
        )
        assert group.status == ERR
        assert sorted(group.partitions) == [("t", 1), ("t", 2)]
        assert group.maxlag is not None and group.maxlag[0] == ("t", 2)
        assert group.total_lag == 17
    warn_only = evaluate_group({("t", 0): part(OK, 5), ("t", 1): part(WARN, 3)})
    assert warn_only.status == WARN
    assert warn_only.maxlag is not None and warn_only.maxlag[0] == ("t", 0)
