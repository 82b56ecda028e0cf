"""Sharing the key space between relays: fair shares, convergence, no shard owned twice."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kcg_operator.outbox.shards import SHARDS, fair_share, lock_keys, plan_rebalance

pytestmark = pytest.mark.unit


@given(st.sets(st.integers(1, 1_000_000), min_size=1, max_size=100))
def test_fair_shares_cover_every_shard_exactly(members: set[int]) -> None:
    shares = [fair_share(members, m) for m in members]
    assert sum(shares) == SHARDS
    assert max(shares) - min(shares) <= 1


def test_a_relay_alone_owns_everything() -> None:
    assert fair_share([], 7) == SHARDS
    plan = plan_rebalance(frozenset(), {}, 7, [7])
    assert sorted(plan.acquire) == list(range(SHARDS)) and plan.release == ()


def test_over_share_releases_highest_shards() -> None:
    owned = frozenset(range(SHARDS))
    plan = plan_rebalance(owned, dict.fromkeys(owned, 1), 1, [1, 2])
    assert plan.acquire == ()
    assert plan.release == tuple(range(32, 64))


def test_only_free_shards_are_taken() -> None:
    holders = {s: 1 for s in range(40)}  # relay 1 still holds more than its share
    plan = plan_rebalance(frozenset(), holders, 2, [1, 2])
    assert set(plan.acquire) == set(range(40, 64))


def _simulate(members: list[int], ticks: int, rng: random.Random) -> dict[int, frozenset[int]]:
    """Relays ticking in random order against a shared lock table; returns ownership."""
    owned: dict[int, frozenset[int]] = {m: frozenset() for m in members}
    for _ in range(ticks):
        for me in rng.sample(members, len(members)):
            holders = {s: m for m, shards in owned.items() for s in shards}
            plan = plan_rebalance(owned[me], holders, me, members)
            mine = set(owned[me]) - set(plan.release)
            for shard in plan.acquire:
                current = {s for m, shards in owned.items() if m != me for s in shards}
                if shard not in current:  # pg_try_advisory_lock
                    mine.add(shard)
            owned[me] = frozenset(mine)
            every = [s for shards in owned.values() for s in shards]
            assert len(every) == len(set(every)), "a shard is owned twice"
    return owned


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 10_000), min_size=1, max_size=12, unique=True), st.randoms())
def test_relays_converge_to_a_balanced_partition(members: list[int], rng: random.Random) -> None:
    owned = _simulate(members, 4, rng)
    assert sorted(s for shards in owned.values() for s in shards) == list(range(SHARDS))
    sizes = [len(s) for s in owned.values()]
    assert max(sizes) - min(sizes) <= 1


def test_a_dead_relays_shards_are_taken_over() -> None:
    rng = random.Random(1)
    owned = _simulate([1, 2, 3], 3, rng)
    survivors = {m: owned[m] for m in (1, 2)}
    for _ in range(2):
        for me in (1, 2):
            holders = {s: m for m, shards in survivors.items() for s in shards}
            plan = plan_rebalance(survivors[me], holders, me, [1, 2])
            survivors[me] = (survivors[me] - set(plan.release)) | set(plan.acquire)
    assert sorted(s for shards in survivors.values() for s in shards) == list(range(SHARDS))


def test_lock_keys_are_stable_positive_and_distinct() -> None:
    keys = lock_keys("public.outbox")
    assert keys == lock_keys("public.outbox")
    assert 0 < keys.shard < 2**31 and 0 < keys.member < 2**31
    assert keys.shard != keys.member
    assert lock_keys("public.other") != keys
