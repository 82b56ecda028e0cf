"""Per-partition lag and seconds behind: the one place they are computed.

Everything that shows or uses lag (the status, the metrics, the scaling policy, the
simulator) reads it from :func:`partition_lags`, so a partition has one lag and one time
lag whichever way it is looked at. Pure: the caller brings the offsets, the partition's
(end offset, time) history and whatever message timestamps it has read.

The conventions, in one place:

- The group's **position** on a partition is the offset its consumer reads next: the
  committed offset; on a partition the group never committed, where ``auto.offset.reset``
  starts a consumer: the log start offset with ``earliest`` (the whole retained log
  waits), the end offset with ``latest`` (nothing waits).
- **Lag** is end offset minus position, never negative.
- **Seconds behind** is how long the message at the position has waited: now minus its
  production time, 0 when nothing waits. The production time is the message's own
  timestamp when the caller read it (:func:`positions_to_read` says which ones are worth a
  read), else it is interpolated in the partition's (end offset, time) history, as
  kafka-lag-exporter does. With no history and no timestamp it is unknown (None).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kcg_operator.scaling import timelag

PartitionKey = tuple[str, int]
"""(topic, partition)."""


@dataclass(frozen=True)
class PartitionLag:
    """One partition's lag as everything else reads it."""

    end: int
    committed: int | None
    position: int  # the offset the group reads next
    lag: int  # messages
    seconds: float | None  # seconds the message at `position` has waited; None: unknown


def position(end: int, committed: int | None, log_start: int | None,
             from_earliest: bool) -> int:
    """The offset the group reads next on one partition (see the module docstring)."""
    if committed is not None:
        return committed
    if not from_earliest:
        return end
    return min(log_start if log_start is not None else 0, end)


def partition_lag(
    end: int,
    committed: int | None,
    *,
    now_s: float,
    log_start: int | None = None,
    from_earliest: bool = False,
    history: Sequence[timelag.Point] = (),
    produced_at: float | None = None,
) -> PartitionLag:
    """Lag and seconds behind of one partition.

    ``produced_at`` is the timestamp (seconds) of the message at the position, when read.
    """
    at = position(end, committed, log_start, from_earliest)
    lag = max(end - at, 0)
    seconds: float | None
    if lag == 0:
        seconds = 0.0
    elif produced_at is not None:
        seconds = max(0.0, now_s - produced_at)
    else:
        seconds = timelag.time_lag_seconds(history, at, now_s)
    return PartitionLag(end, committed, at, lag, seconds)


def partition_lags(
    offsets: Mapping[PartitionKey, tuple[int, int | None]],
    *,
    now_s: float,
    log_starts: Mapping[PartitionKey, int] | None = None,
    from_earliest: bool = False,
    history: Mapping[PartitionKey, Sequence[timelag.Point]] | None = None,
    produced_at: Mapping[tuple[PartitionKey, int], float] | None = None,
) -> dict[PartitionKey, PartitionLag]:
    """:func:`partition_lag` for every partition of one snapshot.

    ``offsets`` maps (topic, partition) to (end offset, committed offset or None), as the
    collector's snapshot has them; ``produced_at`` maps ((topic, partition), offset) to the
    timestamp of the message at that offset.
    """
    starts, points, stamps = log_starts or {}, history or {}, produced_at or {}
    out: dict[PartitionKey, PartitionLag] = {}
    for key, (end, committed) in offsets.items():
        at = position(end, committed, starts.get(key), from_earliest)
        out[key] = partition_lag(
            end, committed, now_s=now_s, log_start=starts.get(key),
            from_earliest=from_earliest, history=points.get(key, ()),
            produced_at=stamps.get((key, at)),
        )
    return out


def positions_to_read(
    offsets: Mapping[PartitionKey, tuple[int, int | None]],
    *,
    log_starts: Mapping[PartitionKey, int] | None = None,
    from_earliest: bool = False,
    history: Mapping[PartitionKey, Sequence[timelag.Point]] | None = None,
) -> list[tuple[PartitionKey, int]]:
    """The (partition, position) pairs whose message timestamp the history cannot give.

    A position older than the oldest (end offset, time) point would only be extrapolated:
    a partition never committed, or a backlog older than the history (a restarted
    operator). Reading that one message's timestamp gives the real time lag.
    """
    starts, points = log_starts or {}, history or {}
    wanted = []
    for key, (end, committed) in sorted(offsets.items()):
        at = position(end, committed, starts.get(key), from_earliest)
        if at >= end:
            continue
        known = points.get(key, ())
        # Two points bracket an offset; one point only says "no later than".
        if len(known) < 2 or at < known[0][0]:
            wanted.append((key, at))
    return wanted


def total(lags: Mapping[PartitionKey, PartitionLag]) -> int:
    """Messages of lag over all partitions."""
    return sum(p.lag for p in lags.values())


def max_seconds(lags: Mapping[PartitionKey, PartitionLag]) -> float | None:
    """The largest known seconds behind, None when no partition's is known."""
    known = [p.seconds for p in lags.values() if p.seconds is not None]
    return max(known) if known else None
