"""Partition and group health, judged the way Burrow judges it.

Burrow (linkedin/Burrow, its caching evaluator and the wiki page "Consumer Lag Evaluation
Rules") looks at a sliding window of a partition's recent commits instead of a lag
threshold. Users who know Burrow should read our statuses the same way, so the rules and
their order follow Burrow's current evaluator:

1. No commits in the window: OK (nothing to judge). A window of one commit can still be
   STOP, but the movement rules (5-7) need at least two commits: one commit shows no
   movement, so a consumer that just joined is not called stalled.
2. Current lag within ``allowed_lag``: OK, whatever the history says.
3. STOP: the consumer stopped committing. The time since the last commit is longer than
   the window's own span (last commit - first commit), unless one of the recent broker end
   offsets shows the consumer was caught up recently. STOP is checked before rule 4 on
   purpose: an old zero-lag commit must not hide a consumer that died since.
4. If any commit in the window had zero lag, the partition is OK.
5. REWIND: a committed offset went backwards.
6. STALL: the offset never moved across the window while lag stayed above zero.
7. WARN: offsets move but the lag never decreased between two commits.
8. Otherwise OK.

``allowed_lag`` is Burrow's allowed-lag setting (added for exactly-once producers whose
transaction markers leave a permanent lag of one): a lag at or below it counts as zero.

The group status is the worst partition status, with anything worse than ERR (STOP, STALL,
REWIND) reported as ERR, as Burrow does for groups. Order: OK < WARN < ERR < STOP < STALL <
REWIND.

``CommitWindow`` is the bounded history the collector keeps per partition; it turns what
the operator can see (committed offsets fetched every sweep, no commit timestamps) into
the window the rules need.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

OK = "OK"
WARN = "WARN"
ERR = "ERR"
STOP = "STOP"
STALL = "STALL"
REWIND = "REWIND"

#: Burrow's severity order (NOTFOUND is not used here).
SEVERITY: dict[str, int] = {OK: 1, WARN: 2, ERR: 3, STOP: 4, STALL: 5, REWIND: 6}

#: Partition statuses that mean "the consumer is not making progress": adding replicas does
#: not help these partitions, so the scaling policy ignores their lag.
NOT_PROGRESSING: frozenset[str] = frozenset({STOP, STALL})

Commit = tuple[int, int, int | None]
"""A commit in the window: (offset, timestamp in ms, lag at that time or None if unknown)."""


def partition_status(
    window: Sequence[Commit],
    broker_offsets: Sequence[int],
    current_lag: int,
    now_s: float,
    allowed_lag: int = 0,
) -> str:
    """Burrow's status of one partition.

    ``window`` holds the partition's recent commits, oldest first, as (offset, timestamp_ms,
    lag_or_None); ``broker_offsets`` the recent end offsets of the partition (any order);
    ``current_lag`` the lag now; ``now_s`` the time now in seconds.
    """
    if not window:
        return OK
    if current_lag <= allowed_lag:
        return OK
    if _stopped(window, now_s) and not _recently_caught_up(window, broker_offsets, allowed_lag):
        return STOP
    if not _lag_always_above(window, allowed_lag) or len(window) < 2:
        return OK
    if _rewound(window):
        return REWIND
    if _stalled(window):
        return STALL
    if _lag_never_decreasing(window):
        return WARN
    return OK


def group_status(partition_statuses: Iterable[str]) -> str:
    """The worst partition status, anything above ERR reported as ERR (Burrow's group rule)."""
    worst = OK
    for status in partition_statuses:
        if SEVERITY[status] > SEVERITY[worst]:
            worst = status
    return ERR if SEVERITY[worst] > SEVERITY[ERR] else worst


def _stopped(window: Sequence[Commit], now_s: float) -> bool:
    first_ms, last_ms = window[0][1], window[-1][1]
    return (now_s * 1000.0 - last_ms) > (last_ms - first_ms)


def _recently_caught_up(
    window: Sequence[Commit], broker_offsets: Sequence[int], allowed_lag: int
) -> bool:
    # A slow topic: the last commit may be old simply because nothing arrived until a
    # moment ago. If a recent end offset was at (or within allowed_lag of) the last commit,
    # give the consumer time to see the new message before calling it stopped.
    last_offset = window[-1][0]
    return any(end - allowed_lag <= last_offset for end in broker_offsets)


def _lag_always_above(window: Sequence[Commit], allowed_lag: int) -> bool:
    return all(lag is None or lag > allowed_lag for _, _, lag in window)


def _rewound(window: Sequence[Commit]) -> bool:
    return any(later[0] < earlier[0] for earlier, later in pairwise(window))


def _stalled(window: Sequence[Commit]) -> bool:
    first = window[0][0]
    return all(offset == first for offset, _, _ in window)


def _lag_never_decreasing(window: Sequence[Commit]) -> bool:
    previous: int | None = None
    for _, _, lag in window:
        if lag is None:
            continue
        if previous is not None and lag < previous:
            return False
        previous = lag
    return True


@dataclass
class CommitWindow:
    """Bounded commit history of one partition, fed once per sweep by the collector.

    Kafka's OffsetFetch gives committed offsets without commit times, so the sweep stands in
    for the commit: a sweep records a commit when the offset moved, or when a live member
    owns the partition (a live consumer keeps committing, as Burrow would see it). When the
    offset is unchanged and nobody owns the partition, no commit is recorded, the window's
    last timestamp ages, and the STOP rule fires once that age exceeds the window's span.

    ``intervals`` is Burrow's storage "intervals" (window length, default 10); the broker
    end offsets of the same sweeps are kept for the "recently caught up" exemption.
    """

    intervals: int = 10
    commits: deque[Commit] = field(init=False)
    broker_offsets: deque[int] = field(init=False)

    def __post_init__(self) -> None:
        if self.intervals < 1:
            raise ValueError("intervals must be at least 1")
        self.commits = deque(maxlen=self.intervals)
        self.broker_offsets = deque(maxlen=self.intervals)

    def record(
        self,
        committed: int | None,
        end_offset: int,
        now_s: float,
        owner_alive: bool = True,
    ) -> None:
        """Record one sweep's view of the partition."""
        self.broker_offsets.append(end_offset)
        if committed is None:
            return
        moved = not self.commits or self.commits[-1][0] != committed
        if moved or owner_alive:
            lag = max(0, end_offset - committed)
            self.commits.append((committed, int(now_s * 1000), lag))

    def status(self, current_lag: int, now_s: float, allowed_lag: int = 0) -> str:
        """The partition's Burrow status from this window."""
        return partition_status(
            list(self.commits), list(self.broker_offsets), current_lag, now_s, allowed_lag
        )


class HealthTracker(Generic[K]):
    """Commit windows for every partition of one group; call :meth:`observe` each sweep.

    ``offsets`` maps a partition key to (end offset, committed offset or None), as the
    collector's snapshot has them; ``owned`` is the set of partitions a live member owns
    (from describe group), or None when unknown (then every partition counts as owned).
    Partitions that disappear from ``offsets`` are forgotten.
    """

    def __init__(self, intervals: int = 10, allowed_lag: int = 0) -> None:
        self.intervals = intervals
        self.allowed_lag = allowed_lag
        self.windows: dict[K, CommitWindow] = {}

    def observe(
        self,
        time_s: float,
        offsets: Mapping[K, tuple[int, int | None]],
        owned: Collection[K] | None = None,
    ) -> dict[K, str]:
        """Record one sweep and return each partition's status."""
        for gone in set(self.windows) - set(offsets):
            del self.windows[gone]
        statuses: dict[K, str] = {}
        for key, (end, committed) in offsets.items():
            window = self.windows.get(key)
            if window is None:
                window = self.windows[key] = CommitWindow(self.intervals)
            window.record(committed, end, time_s, owned is None or key in owned)
            lag = 0 if committed is None else max(0, end - committed)
            statuses[key] = window.status(lag, time_s, self.allowed_lag)
        return statuses
