"""Lag in seconds, estimated from a partition's (end offset, time) history.

Offsets say how many messages a group is behind, not how old the oldest one is. Like
kafka-lag-exporter, we keep per partition a small lookup table of (end offset, time) points,
one per sweep, and ask: when was the partition's end offset equal to the group's committed
offset? That moment is when the oldest unconsumed message was produced; now minus that
moment is the time lag. Inside the table we interpolate linearly between the two points
that bracket the offset; below the table we extrapolate along the table's overall trend.

The table stays small and monotonic: points out of time order or with a lower offset are
dropped, and a flat stretch (no new messages) is kept as one segment whose right end moves
forward, so an idle topic does not flush the useful history out of the table.

This module is the arithmetic; a partition's seconds behind, as the status, the metrics,
the scaling policy and the simulator use them, come from :func:`lag.partition_lags`,
which applies :func:`time_lag_seconds` at the group's position (or the message's own
timestamp when it was read).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

Point = tuple[int, float]
"""(end offset, time in seconds)."""

DEFAULT_LIMIT = 60


def add_point(points: Sequence[Point], point: Point, limit: int = DEFAULT_LIMIT) -> list[Point]:
    """The table after adding ``point``, with kafka-lag-exporter's rules (pure)."""
    table = list(points)
    if table:
        last_offset, last_time = table[-1]
        offset, time_s = point
        if time_s <= last_time or offset < last_offset:
            return table
        if offset == last_offset and len(table) > 1 and table[-2][0] == offset:
            table[-1] = point
            return table
    table.append(point)
    if len(table) > limit:
        del table[: len(table) - limit]
    return table


def updated(
    history: Mapping[K, Sequence[Point]],
    time_s: float,
    ends: Mapping[K, int],
    limit: int = DEFAULT_LIMIT,
) -> dict[K, tuple[Point, ...]]:
    """Every partition's table after a sweep saw end offsets ``ends`` at ``time_s`` (pure).

    Partitions the sweep did not see are dropped, so memory follows the topic.
    """
    return {
        key: tuple(add_point(history.get(key, ()), (end, time_s), limit))
        for key, end in ends.items()
    }


def produced_at(points: Sequence[Point], offset: int) -> float | None:
    """When the partition's end offset was ``offset``, or None when the table cannot say.

    Returns the time of the newest point when ``offset`` is at or beyond it (nothing is
    waiting). With a single point and an older offset, that point's time is returned: the
    waiting messages were produced no later than that, which makes the lag a lower bound.
    """
    if not points:
        return None
    newest_offset, newest_time = points[-1]
    if offset >= newest_offset:
        return newest_time
    if len(points) == 1:
        return newest_time
    # Search from the newest segment: on a flat stretch the same offset appears twice and
    # the later time is the right one (the message at that offset came after it).
    for (left_offset, left_time), (right_offset, right_time) in zip(
        reversed(points[:-1]), reversed(points[1:]), strict=True
    ):
        if left_offset <= offset <= right_offset and right_offset > left_offset:
            slope = (right_time - left_time) / (right_offset - left_offset)
            return right_time - (right_offset - offset) * slope
    oldest_offset, oldest_time = points[0]
    if newest_offset == oldest_offset:
        return oldest_time
    slope = (newest_time - oldest_time) / (newest_offset - oldest_offset)
    return newest_time - (newest_offset - offset) * slope


def time_lag_seconds(points: Sequence[Point], committed: int | None, now_s: float) -> float | None:
    """Seconds the oldest unconsumed message has waited, or None when unknown.

    None when there is no history or no committed offset; 0 when the group is caught up.
    """
    if committed is None or not points:
        return None
    if committed >= points[-1][0]:
        return 0.0
    when = produced_at(points, committed)
    if when is None:
        return None
    return max(0.0, now_s - when)


@dataclass(slots=True)
class OffsetTimeTable:
    """The bounded (end offset, time) table of one partition; feed it once per sweep."""

    limit: int = DEFAULT_LIMIT
    # A tuple, not a deque: one table per partition of every group (see CommitWindow).
    points: tuple[Point, ...] = ()

    def __post_init__(self) -> None:
        if self.limit < 2:
            raise ValueError("limit must be at least 2 to interpolate")

    def add(self, end_offset: int, time_s: float) -> None:
        """Record the partition's end offset at ``time_s``."""
        self.points = tuple(add_point(self.points, (end_offset, time_s), self.limit))

    def time_lag(self, committed: int | None, now_s: float) -> float | None:
        """Seconds behind for a group at ``committed``; see :func:`time_lag_seconds`."""
        return time_lag_seconds(self.points, committed, now_s)


#: Seconds a partition's table is kept without being fed (its topic left every group).
IDLE_TABLE_SECONDS = 600.0


@dataclass
class EndOffsetHistory(Generic[K]):
    """The (end offset, time) tables of one cluster's partitions, fed by every sweep and
    read by every group on them: a partition's end offsets are its topic's, not a group's,
    so 10 000 groups on one topic share one table per partition instead of keeping 10 000.
    Each table is a tuple replaced whole, so readers on other threads see a whole table."""

    limit: int = DEFAULT_LIMIT
    tables: dict[K, OffsetTimeTable] = field(default_factory=dict)
    fed: dict[K, float] = field(default_factory=dict)

    def feed(self, time_s: float, ends: Mapping[K, int], seen_at: float) -> None:
        """A sweep saw end offsets ``ends`` at ``time_s`` (feeding the same twice adds
        nothing); ``seen_at`` is the caller's clock, for :meth:`forget_idle`."""
        for key, end in ends.items():
            table = self.tables.get(key)
            if table is None:
                table = self.tables[key] = OffsetTimeTable(self.limit)
            table.add(end, time_s)
            self.fed[key] = seen_at

    def of(self, keys: Iterable[K]) -> dict[K, tuple[Point, ...]]:
        """The tables of ``keys``, as lag.partition_lags takes them."""
        return {key: self.tables[key].points for key in keys if key in self.tables}

    def forget_idle(self, now: float, idle_s: float = IDLE_TABLE_SECONDS) -> None:
        """Drop the tables not fed for ``idle_s`` by ``now`` (the clock of ``seen_at``):
        memory follows the topics."""
        for key in [k for k, when in self.fed.items() if when < now - idle_s]:
            del self.tables[key], self.fed[key]
