"""Who relays which keys: the key space in shards owned through advisory locks (pure).

Why shards and not `FOR UPDATE SKIP LOCKED`: with SKIP LOCKED, relay B skips rows relay A
has locked and publishes the *next* event of the same key before A's event reaches
Kafka, so a key's events interleave between relays and arrive out of order. Here a key
belongs to exactly one shard (`hashtext(aggregateid) & 63`), a shard to at most one relay
at a time (a session-level `pg_try_advisory_lock(namespace, shard)`), and a relay
publishes a shard's rows in `seq` order. Each relay also holds a membership lock keyed by
its backend pid, so every relay can count the live relays from `pg_locks` and take its
fair share. A relay hands a shard over only between rounds, when nothing of it is in
flight; a relay that dies (or loses its connection) loses its locks with its session,
and the others take its shards at their next rebalance tick (OUTBOX_REBALANCE_INTERVAL_MS).

Why not one active relay: the sidecar runs in every consumer pod, so the table usually has
several relays; sharing shards uses them all (one Python relay tops out well below what
PostgreSQL and Kafka can take), and a dead relay costs only its share of the keys a
second of latency, not the whole stream.

The shard count is a fixed part of the protocol, not a setting: relays with different
counts would map one key to two shards and both publish it.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

SHARDS: Final = 64
SHARD_SQL: Final = f"(hashtext(aggregateid) & {SHARDS - 1})"
ALL_SHARDS: Final = frozenset(range(SHARDS))


@dataclass(frozen=True)
class LockKeys:
    """First int4 of the two-key advisory locks, per table: one for shards, one for members."""

    shard: int
    member: int


def lock_keys(qualified_table: str) -> LockKeys:
    """Stable across processes and versions (crc32, not Python's salted hash); positive so
    that pg_locks.classid (an oid) compares equal without sign games."""

    def key(role: str) -> int:
        return zlib.crc32(f"kcg-outbox/{role}/{qualified_table}".encode()) & 0x7FFFFFFF

    return LockKeys(shard=key("shard"), member=key("member"))


def fair_share(members: Iterable[int], me: int, shards: int = SHARDS) -> int:
    """How many shards relay `me` should own, given the live relays' member ids.

    Deterministic and summing to `shards` over all members: the first `shards % n` members
    (by id) take one more. Every relay computes the same split from the same pg_locks view.
    """
    ordered = sorted(set(members) | {me})
    base, extra = divmod(shards, len(ordered))
    return base + (1 if ordered.index(me) < extra else 0)


@dataclass(frozen=True)
class RebalancePlan:
    acquire: tuple[int, ...]
    release: tuple[int, ...]


def plan_rebalance(
    owned: frozenset[int],
    holders: Mapping[int, int],
    me: int,
    members: Iterable[int],
    shards: int = SHARDS,
) -> RebalancePlan:
    """Shards to try to lock and to give up so that `me` converges to its fair share.

    `holders` maps each locked shard to the member holding it (from pg_locks). Only free
    shards are candidates; shards another relay must release are taken on a later tick.
    A relay over its share releases its highest-numbered shards, so that shard lists stay
    compact and two relays never trade the same shards back and forth.
    """
    target = fair_share(members, me, shards)
    if len(owned) > target:
        return RebalancePlan(acquire=(), release=tuple(sorted(owned)[target:]))
    free = [s for s in range(shards) if s not in holders and s not in owned]
    # Start at an offset derived from `me`, so that relays starting together try
    # different shards instead of racing for shard 0.
    if free:
        offset = me % len(free)
        free = free[offset:] + free[:offset]
    return RebalancePlan(acquire=tuple(free[: target - len(owned)]), release=())
