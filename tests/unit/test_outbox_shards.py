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


def _tick(owned: dict[int, frozenset[int]], me: int, members: list[int],
          view: dict[int, int]) -> tuple[int, ...]:
    """One rebalance tick of `me` planned from `view` (shard -> holder, as pg_locks showed
    it); applies the plan as the relay does and returns the shards it asked for."""
    plan = plan_rebalance(owned[me], view, me, members)
    owned[me] = owned[me] - frozenset(plan.release) | frozenset(plan.acquire)
    return plan.acquire


def _holders(owned: dict[int, frozenset[int]]) -> dict[int, int]:
    return {s: m for m, shards in owned.items() for s in shards}


def _assert_disjoint(owned: dict[int, frozenset[int]]) -> None:
    every = [s for shards in owned.values() for s in shards]
    assert len(every) == len(set(every)), f"a shard is owned twice: {owned}"


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 10_000), min_size=1, max_size=12, unique=True), st.randoms())
def test_sequential_ticks_never_ask_for_a_held_shard(members: list[int],
                                                     rng: random.Random) -> None:
    """Relays ticking one after another, each seeing the locks as they are: the plan alone
    keeps shards disjoint (no lock arbitrates here: the acquisitions are applied as
    planned, so a plan that asked for a held shard fails the check), and four ticks reach
    full coverage with balanced shares."""
    owned: dict[int, frozenset[int]] = {m: frozenset() for m in members}
    for _ in range(4):
        for me in rng.sample(members, len(members)):
            _tick(owned, me, members, _holders(owned))
            _assert_disjoint(owned)
    assert sorted(s for shards in owned.values() for s in shards) == list(range(SHARDS))
    sizes = [len(s) for s in owned.values()]
    assert max(sizes) - min(sizes) <= 1


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 10_000), min_size=2, max_size=12, unique=True), st.randoms())
def test_concurrent_ticks_converge_once_the_lock_arbitrates(members: list[int],
                                                             rng: random.Random) -> None:
    """All relays plan from the same stale snapshot (they tick at the same time), so two
    may ask for one shard; pg_try_advisory_lock grants it to one (modelled here, in the
    relay's order; the real lock is tested on PostgreSQL in
    tests/integration/test_outbox_takeover.py). What this checks is the plan's part: the
    relays still converge to full, balanced coverage, in a bounded number of rounds."""
    owned: dict[int, frozenset[int]] = {m: frozenset() for m in members}
    collisions = 0
    for _ in range(8):
        snapshot = _holders(owned)
        for me in rng.sample(members, len(members)):
            asked = _tick(owned, me, members, snapshot)
            taken = _holders({m: s for m, s in owned.items() if m != me})
            refused = frozenset(s for s in asked if s in taken)
            collisions += len(refused)
            owned[me] = owned[me] - refused
    _assert_disjoint(owned)
    assert sorted(s for shards in owned.values() for s in shards) == list(range(SHARDS)), (
        f"not converged after 8 concurrent rounds ({collisions} refused lock attempts)"
    )
    sizes = [len(s) for s in owned.values()]
    assert max(sizes) - min(sizes) <= 1


def test_plans_only_name_free_shards() -> None:
    """Direct check of the rule the sequential test relies on."""
    rng = random.Random(7)
    for _ in range(500):
        members = rng.sample(range(1, 50), rng.randint(1, 6))
        me = rng.choice(members)
        holders = {s: rng.choice(members) for s in rng.sample(range(SHARDS), rng.randint(0, 64))}
        mine = frozenset(s for s, m in holders.items() if m == me)
        plan = plan_rebalance(mine, holders, me, members)
        assert not set(plan.acquire) & set(holders), (plan, holders)
        assert set(plan.release) <= mine
        assert len(mine) - len(plan.release) + len(plan.acquire) <= fair_share(members, me)


def test_a_dead_relays_shards_are_taken_over() -> None:
    rng = random.Random(1)
    owned: dict[int, frozenset[int]] = {m: frozenset() for m in (1, 2, 3)}
    for _ in range(3):
        for me in rng.sample([1, 2, 3], 3):
            _tick(owned, me, [1, 2, 3], _holders(owned))
    assert owned[3], "relay 3 never got a share"
    del owned[3]  # its session ends: its locks are gone
    for _ in range(2):
        for me in (1, 2):
            _tick(owned, me, [1, 2], _holders(owned))
    _assert_disjoint(owned)
    assert sorted(s for shards in owned.values() for s in shards) == list(range(SHARDS))


def test_lock_keys_are_stable_positive_and_distinct() -> None:
    keys = lock_keys("public.outbox")
    assert keys == lock_keys("public.outbox")
    assert 0 < keys.shard < 2**31 and 0 < keys.member < 2**31
    assert keys.shard != keys.member
    assert lock_keys("public.other") != keys
