"""Where a round's scan may start: the lowest seq that can still be pending (pure).

Why: rows are deleted once published, and PostgreSQL keeps their index entries until
VACUUM. A scan that starts at seq 0 walks every one of them, each round: with autovacuum
at its default once a minute, 100 000 events/s leave up to six million entries to walk,
and a transaction held open anywhere in the database keeps them from being vacuumed at
all (measured: the relay fell from 100 000 to 300 events/s). So the relay keeps a floor:
every row of its shards below it is final (its transaction has ended) and not pending.

How the floor rises without skipping a late commit (a row whose transaction took a low
seq and commits later):

  1. A probe reads V, the identity sequence's last value, and then W, the transactions
     holding a write lock on the outbox table (pg_locks). Every row with seq <= V was
     given its seq inside an INSERT of a transaction that has ended or is in W (the
     table's RowExclusiveLock is taken before the INSERT evaluates its defaults, and held
     to the end of the transaction).
  2. Once none of W holds the lock any more (checked before a round's snapshot is taken),
     every row with seq <= V is final in that snapshot: committed and visible, or gone.
  3. That round's scan starts at the old floor; its first row F is the lowest pending row
     at or above it, so nothing in [floor, min(F, V + 1)) can ever be pending: the floor
     moves there, and the next probe starts.

The floor is only as good as its premises, so it is off when the seq column is not
filled by a sequence with CACHE 1 (cached values are handed out out of order across
sessions) that the relay may read; it goes back to 0 when the relay takes new shards, when
the sequence goes backwards (a restart), and once every FULL_SCAN_SECONDS, a full scan
that also checks the invariant (a row found below the floor is logged as a bug).
A writer that keeps its transaction open only holds the floor where it is: rounds then
walk the entries deleted since, as every round did before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

FULL_SCAN_SECONDS: Final = 60.0


@dataclass(frozen=True)
class Probe:
    last_value: int  # V: the sequence's last value when the probe started
    writers: frozenset[str]  # W: virtual transaction ids holding a write lock then


@dataclass
class ScanFloor:
    floor: int = 0
    probe: Probe | None = None
    shards: frozenset[int] = frozenset()
    last_full_scan: float = float("-inf")

    def reset(self) -> None:
        self.floor = 0
        self.probe = None

    def track(self, owned: frozenset[int]) -> None:
        """Every round, before it scans: the shards it scans."""
        if not owned <= self.shards:
            # New shards: their rows below the floor were never looked at.
            self.reset()
        self.shards = owned

    def before_snapshot(self, last_value: int | None, writers: frozenset[str]) -> int | None:
        """Called with V and W read (in that order) just before a round's snapshot.

        Returns the V of a probe that has ripened (every row with seq <= V is final in the
        snapshot about to be taken), or None."""
        value = last_value or 0
        if self.probe is not None and value < self.probe.last_value:
            self.reset()  # the sequence went backwards (ALTER SEQUENCE ... RESTART)
        if self.probe is None:
            self.probe = Probe(value, writers)
            return None
        if self.probe.writers & writers:
            return None  # some transaction of the probe is still open
        ripe = self.probe.last_value
        self.probe = Probe(value, writers)
        return ripe

    def start(self, now: float) -> tuple[int, bool]:
        """Where this round's scan starts (the first seq it may return) and whether it is
        a full scan from the beginning."""
        if now - self.last_full_scan >= FULL_SCAN_SECONDS:
            self.last_full_scan = now
            return 0, True
        return self.floor, False

    def after_scan(self, ripe: int | None, first_seq: int | None, complete: bool) -> None:
        """After the round's scan: raise the floor to min(first pending row, V + 1).

        `complete`: the scan returned every pending row of the owned shards from its
        start on (no topic was held back); otherwise the first row says nothing about the
        held rows and the floor stays."""
        if ripe is None or not complete:
            return
        bound = ripe + 1 if first_seq is None else min(first_seq, ripe + 1)
        self.floor = max(self.floor, bound)
