"""Partition and group health, judged the way Burrow judges it.

Ported from linkedin/Burrow at commit ced55ba90f6b833a45a124d411fd5eef63a70933 (2025-10-03):

- ``core/internal/evaluator/caching.go``: ``calculatePartitionStatus`` and its helpers,
  ``evaluatePartitionStatus`` (the "complete window" rule) and the group aggregation of
  ``evaluateConsumerStatus``. The evaluator file last changed in 2676759d (2022-09-11); its
  rules date from d69a8ec0 (2021-09-29, "Detect rewinds when consumer has any rewind in
  history") and fef3b376 (allowed-lag).
- ``core/internal/evaluator/caching_test.go``: every case of its rule table is ported to
  ``tests/unit/test_burrow_parity.py`` and passes against :func:`calculate_partition_status`
  and against the operator's own entry points.
- ``core/protocol/evaluator.go``: status names and their order.
- ``core/internal/storage/inmemory.go``: how a commit's lag and the broker-offset history are
  kept (mirrored by :class:`CommitWindow`).

Burrow's partition rules, in the order :func:`calculate_partition_status` applies them:

0. Current lag at or below ``allowed_lag``: OK, whatever the history says.
1. STOP: the time since the last commit is longer than the window's own span (last commit -
   first commit), unless one of the recent broker end offsets was at or below the last
   committed offset (the consumer was caught up moments ago on a quiet topic). Checked
   first because an old zero-lag commit must not hide a consumer that died since.
2. REWIND: the first place in the window where the committed offset went backwards, unless
   a later commit reached the offset from before the rewind again (a rebalance that re-commits
   old work and then recovers is not held against the consumer). Checked before rule 3
   because a consumer often had zero lag and then rewound to earliest.
3. If any commit's lag was at or below ``allowed_lag``, the partition is OK.
4. STALL: the committed offset never changed across the window (lag is known to be > 0).
5. WARN: the lag never decreased between two commits with a known lag.
6. Otherwise OK.

Before those rules Burrow's ``evaluatePartitionStatus`` drops the empty slots of a window that
is not yet full and reports how full it is (``complete``); a partition whose window is less
complete than ``minimum_complete`` is OK without judging (Burrow's default: 0, judge always).

The group (``evaluateConsumerStatus``): the worst partition status, anything worse than ERR
(STOP, STALL, REWIND) reported as ERR; ``total_lag`` the sum of current lags; ``maxlag`` the
first partition with the highest current lag; ``complete`` the share of partitions whose
window is full.

Extensions, each off or neutral for every case of Burrow's table:

- E1, movement needs two commits (:data:`MOVEMENT_COMMITS`): with a single commit Burrow's
  stall check is vacuously true, so a consumer's very first commit would read STALL. The
  operator evaluates in the same sweep that records a commit, so that would hit every lagging
  partition on the first sweep and the policy would ignore its lag. :func:`partition_status`
  and :class:`CommitWindow` therefore report OK instead of STALL/WARN for a one-commit window
  (STOP still applies). Every window in Burrow's table has at least three commits.
  :func:`calculate_partition_status` and :func:`evaluate_partition_status` are Burrow exactly.
- E2, the sweep stands in for the commit (:meth:`CommitWindow.record`): Kafka's OffsetFetch
  has no commit times, so a sweep records a commit when the offset moved or a live member owns
  the partition (a live consumer re-commits on every auto-commit interval, as Burrow would
  see). This is how the window is fed, not a rule; the rules never see ``owner_alive``.
- Time: Burrow's "now" is whole seconds and commit timestamps are milliseconds. Here "now" may
  be fractional and both sides are rounded to the same millisecond, so a commit recorded at
  ``now_s`` is exactly 0 ms old when judged at ``now_s`` (integer seconds give Burrow's value).
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

NOTFOUND = "NOTFOUND"
OK = "OK"
WARN = "WARN"
ERR = "ERR"
STOP = "STOP"
STALL = "STALL"
REWIND = "REWIND"

#: Burrow's StatusConstant order (protocol/evaluator.go). NOTFOUND is a group that does not
#: exist; ERR is a group status only; STOP, STALL and REWIND are partition statuses only.
SEVERITY: dict[str, int] = {NOTFOUND: 0, OK: 1, WARN: 2, ERR: 3, STOP: 4, STALL: 5, REWIND: 6}

#: Partition statuses that mean "the consumer is not making progress": adding replicas does
#: not help these partitions, so the scaling policy ignores their lag.
NOT_PROGRESSING: frozenset[str] = frozenset({STOP, STALL})

#: Extension E1: commits a window needs before STALL or WARN can be reported.
MOVEMENT_COMMITS = 2

Commit = tuple[int, int, int | None]
"""A commit in the window: (offset, timestamp in ms, lag at that time or None if unknown).

Burrow's ConsumerOffset also carries Order (the __consumer_offsets position) and an observed
timestamp; only storage uses them, the evaluator never does.
"""


def _ms(time_s: float) -> int:
    # One conversion for recording and judging, so "just recorded" is exactly 0 ms old.
    return round(time_s * 1000)


# --------------------------------------------------------------------- Burrow's rules


def is_lag_always_not_zero(offsets: Sequence[Commit], allowed_lag: int) -> bool:
    """Burrow rule 1 (isLagAlwaysNotZero): no commit with a known lag at or below allowed."""
    return all(lag is None or lag > allowed_lag for _, _, lag in offsets)


def check_if_offsets_rewind(offsets: Sequence[Commit]) -> int:
    """Burrow rule 2 (checkIfOffsetsRewind): index of the first backwards commit, else -1."""
    for i in range(1, len(offsets)):
        if offsets[i][0] < offsets[i - 1][0]:
            return i
    return -1


def check_if_rewind_recovered(offsets: Sequence[Commit], reset_index: int) -> bool:
    """Burrow rule 2, part 2 (checkIfRewindRecovered).

    True when a commit at or after ``reset_index`` reached the offset committed just before
    the rewind. Like Burrow, only the first rewind of the window is examined.
    """
    previous = offsets[reset_index - 1][0]
    return any(offset >= previous for offset, _, _ in offsets[reset_index:])


def check_if_offsets_stopped(offsets: Sequence[Commit], time_now: float) -> bool:
    """Burrow rule 3 (checkIfOffsetsStopped); ``time_now`` in seconds, timestamps in ms."""
    return _stopped_ms(offsets, _ms(time_now))


def _stopped_ms(offsets: Sequence[Commit], now_ms: int) -> bool:
    first, last = offsets[0][1], offsets[-1][1]
    return now_ms - last > last - first


def check_if_offsets_stalled(offsets: Sequence[Commit]) -> bool:
    """Burrow rule 4 (checkIfOffsetsStalled): the committed offset never changed."""
    return all(offsets[i][0] == offsets[i - 1][0] for i in range(1, len(offsets)))


def check_if_lag_not_decreasing(offsets: Sequence[Commit]) -> bool:
    """Burrow rule 5 (checkIfLagNotDecreasing): no known lag is below the known lag before it."""
    last: int | None = None
    for _, _, lag in offsets:
        if lag is None:
            continue
        if last is not None and lag < last:
            return False
        last = lag
    return True


def check_if_recent_lag_zero(offsets: Sequence[Commit], broker_offsets: Sequence[int]) -> bool:
    """Burrow's checkIfRecentLagZero: a recent end offset was at or below the last commit.

    As in Burrow, ``allowed_lag`` plays no part here.
    """
    last_offset = offsets[-1][0]
    return any(end <= last_offset for end in broker_offsets)


def _judge(
    offsets: Sequence[Commit],
    broker_offsets: Sequence[int],
    current_lag: int,
    now_ms: int,
    allowed_lag: int,
    movement_commits: int,
) -> str:
    # Burrow's calculatePartitionStatus, line for line, plus extension E1 (movement_commits).
    if not offsets:
        # Burrow never calls the rules without commits (evaluatePartitionStatus returns OK).
        return OK
    if current_lag > allowed_lag:
        if _stopped_ms(offsets, now_ms) and not check_if_recent_lag_zero(offsets, broker_offsets):
            return STOP
        rewind_index = check_if_offsets_rewind(offsets)
        if rewind_index > 0 and not check_if_rewind_recovered(offsets, rewind_index):
            return REWIND
        if is_lag_always_not_zero(offsets, allowed_lag) and len(offsets) >= movement_commits:
            if check_if_offsets_stalled(offsets):
                return STALL
            if check_if_lag_not_decreasing(offsets):
                return WARN
    return OK


def calculate_partition_status(
    offsets: Sequence[Commit],
    broker_offsets: Sequence[int],
    current_lag: int,
    time_now: float,
    allowed_lag: int = 0,
) -> str:
    """Burrow's calculatePartitionStatus exactly (no extensions).

    ``offsets`` oldest first, timestamps in ms; ``broker_offsets`` the recent end offsets;
    ``time_now`` in seconds.
    """
    return _judge(offsets, broker_offsets, current_lag, _ms(time_now), allowed_lag, 1)


def partition_status(
    window: Sequence[Commit],
    broker_offsets: Sequence[int],
    current_lag: int,
    now_s: float,
    allowed_lag: int = 0,
) -> str:
    """The operator's status of one partition: Burrow's rules plus extension E1.

    ``window`` holds the partition's recent commits, oldest first, as (offset, timestamp_ms,
    lag_or_None); ``broker_offsets`` the recent end offsets of the partition, oldest first;
    ``current_lag`` the lag now; ``now_s`` the time now in seconds.
    """
    return _judge(window, broker_offsets, current_lag, _ms(now_s), allowed_lag, MOVEMENT_COMMITS)


# ----------------------------------------------------------- partition and group results


@dataclass(frozen=True)
class PartitionStatus:
    """Burrow's PartitionStatus without the topic/partition/owner labels (the key has them)."""

    status: str
    current_lag: int
    #: Share of the window's slots that hold a commit (0.0 when there are none).
    complete: float
    #: Oldest and newest commit of the window, or None without commits.
    start: Commit | None = None
    end: Commit | None = None


def evaluate_partition_status(
    offsets: Sequence[Commit | None],
    broker_offsets: Sequence[int],
    current_lag: int,
    time_now: float,
    minimum_complete: float = 0.0,
    allowed_lag: int = 0,
    movement_commits: int = 1,
) -> PartitionStatus:
    """Burrow's evaluatePartitionStatus: the "complete window" rule, then the partition rules.

    ``offsets`` are the window's slots, oldest first, with None for slots not filled yet (a
    window that is not full has them at the start, as Burrow's ring has). The defaults are
    Burrow's; ``movement_commits=MOVEMENT_COMMITS`` adds extension E1.
    """
    if not offsets:
        return PartitionStatus(OK, current_lag, 0.0)
    first = next((i for i, slot in enumerate(offsets) if slot is not None), None)
    if first is None:
        # Burrow would dereference a nil commit here; a window of empty slots has no commits.
        return PartitionStatus(OK, current_lag, 0.0)
    commits: list[Commit] = []
    for slot in offsets[first:]:
        if slot is None:
            raise ValueError("empty slots may only precede the window's commits")
        commits.append(slot)
    complete = len(commits) / len(offsets)
    status = OK
    # Below the completeness threshold the partition is OK without judging, as in Burrow.
    if complete >= minimum_complete:
        status = _judge(
            commits, broker_offsets, current_lag, _ms(time_now), allowed_lag, movement_commits
        )
    return PartitionStatus(status, current_lag, complete, commits[0], commits[-1])


@dataclass(frozen=True)
class GroupStatus(Generic[K]):
    """Burrow's ConsumerGroupStatus without cluster and group names."""

    status: str
    #: Share of partitions whose window is complete (0.0 for a group without partitions).
    complete: float
    #: Every partition's status, or only those worse than OK when not ``show_all``.
    partitions: dict[K, PartitionStatus]
    total_partitions: int
    #: The partition with the highest current lag (the first one on a tie), None if none.
    maxlag: tuple[K, PartitionStatus] | None
    total_lag: int


def group_status(partition_statuses: Iterable[str]) -> str:
    """The worst partition status, anything above ERR reported as ERR (Burrow's group rule)."""
    worst = OK
    for status in partition_statuses:
        if SEVERITY[status] > SEVERITY[worst]:
            worst = status
    return ERR if SEVERITY[worst] > SEVERITY[ERR] else worst


def evaluate_group(
    partitions: Mapping[K, PartitionStatus], show_all: bool = True
) -> GroupStatus[K]:
    """Burrow's evaluateConsumerStatus over partitions already evaluated.

    ``maxlag`` is the first partition (in ``partitions``' order) with the highest current lag;
    Burrow walks a Go map, so its choice on a tie is arbitrary.
    """
    maxlag: tuple[K, PartitionStatus] | None = None
    for key, part in partitions.items():
        if maxlag is None or part.current_lag > maxlag[1].current_lag:
            maxlag = (key, part)
    total = len(partitions)
    complete_count = sum(1 for part in partitions.values() if part.complete == 1.0)
    shown = {
        key: part
        for key, part in partitions.items()
        if show_all or SEVERITY[part.status] > SEVERITY[OK]
    }
    return GroupStatus(
        status=group_status(part.status for part in partitions.values()),
        complete=complete_count / total if total else 0.0,
        partitions=shown,
        total_partitions=total,
        maxlag=maxlag,
        total_lag=sum(part.current_lag for part in partitions.values()),
    )


# ------------------------------------------------------------ the operator's windows


@dataclass(slots=True)
class CommitWindow:
    """Bounded commit history of one partition, fed once per sweep by the collector.

    It keeps what Burrow's in-memory storage keeps per partition: the last ``intervals``
    commits with the lag each had when recorded (end offset - committed, floored at 0, as
    storage computes it against the latest broker offset) and the last ``intervals`` broker
    end offsets. Kafka's OffsetFetch gives committed offsets without commit times, so the
    sweep stands in for the commit (extension E2): a sweep records a commit when the offset
    moved, or when a live member owns the partition. When the offset is unchanged and nobody
    owns the partition, no commit is recorded, the window's last timestamp ages, and the STOP
    rule fires once that age exceeds the window's span.

    ``intervals`` is Burrow's storage "intervals" (default 10); ``minimum_complete`` is the
    evaluator's "minimum-complete" (default 0: judge even a window that is not full).
    """

    intervals: int = 10
    minimum_complete: float = 0.0
    # Tuples, not deques: a deque allocates a 64-slot block, and an operator keeps one
    # window per partition of every group (60 000 at 10 000 groups).
    commits: tuple[Commit, ...] = ()
    broker_offsets: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.intervals < 1:
            raise ValueError("intervals must be at least 1")
        if not 0.0 <= self.minimum_complete <= 1.0:
            raise ValueError("minimum_complete must be between 0 and 1")
        self.commits = self.commits[-self.intervals:]
        self.broker_offsets = self.broker_offsets[-self.intervals:]

    def record(
        self,
        committed: int | None,
        end_offset: int,
        now_s: float,
        owner_alive: bool = True,
    ) -> None:
        """Record one sweep's view of the partition."""
        self.broker_offsets = (*self.broker_offsets, end_offset)[-self.intervals:]
        if committed is None:
            return
        moved = not self.commits or self.commits[-1][0] != committed
        if moved or owner_alive:
            lag = max(0, end_offset - committed)
            self.commits = (*self.commits, (committed, _ms(now_s), lag))[-self.intervals:]

    def evaluate(self, current_lag: int, now_s: float, allowed_lag: int = 0) -> PartitionStatus:
        """The partition's Burrow evaluation from this window (with extension E1)."""
        # Burrow's ring has empty slots before the commits until it is full.
        slots: list[Commit | None] = [None] * (self.intervals - len(self.commits))
        slots.extend(self.commits)
        return evaluate_partition_status(
            slots,
            list(self.broker_offsets),
            current_lag,
            now_s,
            minimum_complete=self.minimum_complete,
            allowed_lag=allowed_lag,
            movement_commits=MOVEMENT_COMMITS,
        )

    def status(self, current_lag: int, now_s: float, allowed_lag: int = 0) -> str:
        """The partition's Burrow status from this window."""
        return self.evaluate(current_lag, now_s, allowed_lag).status


class HealthTracker(Generic[K]):
    """Commit windows for every partition of one group; call :meth:`observe` each sweep.

    ``offsets`` maps a partition key to (end offset, committed offset or None), as the
    collector's snapshot has them; ``owned`` is the set of partitions a live member owns
    (from describe group), or None when unknown (then every partition counts as owned).
    Partitions that disappear from ``offsets`` are forgotten.
    """

    def __init__(
        self, intervals: int = 10, allowed_lag: int = 0, minimum_complete: float = 0.0
    ) -> None:
        self.intervals = intervals
        self.allowed_lag = allowed_lag
        self.minimum_complete = minimum_complete
        self.windows: dict[K, CommitWindow] = {}
        #: The latest evaluation of every partition, as :meth:`observe` left it.
        self.partitions: dict[K, PartitionStatus] = {}

    def observe(
        self,
        time_s: float,
        offsets: Mapping[K, tuple[int, int | None]],
        owned: Collection[K] | None = None,
    ) -> dict[K, str]:
        """Record one sweep and return each partition's status."""
        for gone in set(self.windows) - set(offsets):
            del self.windows[gone]
        self.partitions = {}
        for key, (end, committed) in offsets.items():
            window = self.windows.get(key)
            if window is None:
                window = self.windows[key] = CommitWindow(self.intervals, self.minimum_complete)
            window.record(committed, end, time_s, owned is None or key in owned)
            # Burrow's current lag: latest end offset - latest commit, floored at 0.
            lag = 0 if committed is None else max(0, end - committed)
            self.partitions[key] = window.evaluate(lag, time_s, self.allowed_lag)
        return {key: part.status for key, part in self.partitions.items()}

    def group(self, show_all: bool = True) -> GroupStatus[K]:
        """The group's Burrow status from the latest :meth:`observe`."""
        return evaluate_group(self.partitions, show_all)
