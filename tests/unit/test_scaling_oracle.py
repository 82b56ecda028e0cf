"""The oracle is a floor: on cases small enough to try every schedule, nothing beats it."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kcg_operator.scaling import oracle
from kcg_operator.scaling.keda import KedaConfig, KedaPolicy
from kcg_operator.scaling.noise import Noise
from kcg_operator.scaling.policy import KcgPolicy
from kcg_operator.scaling.scenario import Scenario, parse_scenario
from kcg_operator.scaling.simulator import simulate
from kcg_operator.scaling.world import World, build_traffic, fair_share

pytestmark = pytest.mark.unit

GRID = 15


def small(**overrides: Any) -> Scenario:
    data: dict[str, Any] = {
        "partitions": 2,
        "duration_seconds": 75,
        "initial_replicas": 1,
        "initial_backlog": 400,
        "slo_seconds": 30,
        "per_replica_rate": 10,
        "startup_seconds": 10,
        "rebalance_pause_seconds": 3,
        "rate": [{"at": 0, "rate": 12}, {"at": 30, "rate": 4}],
        "scaling": {
            "minReplicas": 1,
            "maxReplicas": 2,
            "lagPerReplica": 50,
            "maxTimeLagSeconds": 30,
            "scaleDownStabilizationSeconds": 15,
            "pollIntervalSeconds": GRID,
        },
    }
    data.update(overrides)
    return parse_scenario(data, name="small")


def brute_force(scenario: Scenario, noise: Noise | None = None) -> tuple[int | None, int]:
    """(fewest replica-seconds with no violation or None, fewest violation seconds) over
    every schedule the oracle may choose."""
    traffic = build_traffic(scenario, noise)
    low, high = oracle.replica_bounds(scenario)
    ticks = math.ceil(scenario.duration_seconds / GRID)
    best: int | None = None
    least_violation = math.inf
    for schedule in itertools.product(range(low, high + 1), repeat=ticks):
        if not oracle.admissible(scenario, schedule, GRID, noise, traffic):
            continue
        cost, violations = oracle.replay(scenario, schedule, GRID, noise, traffic)
        least_violation = min(least_violation, violations)
        if violations == 0 and (best is None or cost < best):
            best = cost
    return best, int(least_violation)


CASES = {
    "backlog then quiet": small(),
    "three partitions, burst": small(
        partitions=3,
        initial_backlog=0,
        rate=[{"at": 0, "rate": 8}, {"at": 15, "rate": 26}, {"at": 45, "rate": 6}],
        scaling={"minReplicas": 1, "maxReplicas": 3, "scaleDownStabilizationSeconds": 30},
    ),
    "scale to zero": small(
        initial_replicas=0,
        initial_backlog=150,
        rate=[{"at": 0, "rate": 0}, {"at": 45, "rate": 10}],
        scaling={"minReplicas": 0, "maxReplicas": 2, "scaleToZero": {"enabled": True}},
    ),
    "hot partition": small(
        weights=[3, 1],
        initial_backlog=0,
        rate=[{"at": 0, "rate": 12}],
        slo_seconds=20,
        scaling={"minReplicas": 1, "maxReplicas": 2, "scaleDownStabilizationSeconds": 0},
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("seed", [None, 3])
def test_exhaustive_search_finds_what_trying_every_schedule_finds(
    name: str, seed: int | None
) -> None:
    scenario = CASES[name]
    noise = None if seed is None else Noise(seed=seed, measurement_delay_seconds=0)
    best, least_violation = brute_force(scenario, noise)
    plan = oracle.search(scenario, noise, grid=GRID, beam=None)
    assert plan.exact
    assert plan.violation_seconds == least_violation
    if best is not None:
        assert plan.replica_seconds == best
        assert plan.floor == best
    # Its schedule is real: replayed, it costs what the search says.
    replayed = oracle.replay(scenario, plan.schedule, GRID, noise)
    assert replayed == (plan.replica_seconds, plan.violation_seconds)


@pytest.mark.parametrize("name", sorted(CASES))
def test_no_policy_meets_the_slo_for_less_than_the_floor(name: str) -> None:
    scenario = CASES[name]
    plan = oracle.search(scenario, grid=GRID, beam=None)
    policies = [KcgPolicy(), KedaPolicy()] + [
        KedaPolicy(KedaConfig.careful(scenario.scaling, threshold)) for threshold in (5, 20, 80)
    ]
    met = 0
    for policy in policies:
        result = simulate(scenario, policy)
        if result.slo_violation_seconds == 0:
            met += 1
            assert plan.floor is not None
            assert result.replica_seconds >= plan.floor, policy.name
        assert result.slo_violation_seconds >= plan.violation_seconds
    assert met > 0  # the comparison is not vacuous


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    backlog=st.integers(0, 300),
    first=st.integers(0, 25),
    second=st.integers(0, 25),
    startup=st.integers(0, 20),
    pause=st.integers(0, 5),
    slo=st.integers(15, 50),
    hold=st.sampled_from([0, 15, 30]),
    zero=st.booleans(),
)
def test_exhaustive_search_matches_brute_force_on_random_small_cases(
    backlog: int,
    first: int,
    second: int,
    startup: int,
    pause: int,
    slo: int,
    hold: int,
    zero: bool,
) -> None:
    scenario = small(
        duration_seconds=60,
        initial_backlog=backlog,
        initial_replicas=0 if zero else 1,
        startup_seconds=startup,
        rebalance_pause_seconds=pause,
        slo_seconds=slo,
        rate=[{"at": 0, "rate": first}, {"at": 30, "rate": second}],
        scaling={
            "minReplicas": 0 if zero else 1,
            "maxReplicas": 2,
            "scaleDownStabilizationSeconds": hold,
            "scaleToZero": {"enabled": zero},
        },
    )
    best, least_violation = brute_force(scenario)
    plan = oracle.search(scenario, grid=GRID, beam=None)
    assert plan.violation_seconds == least_violation
    if best is not None:
        assert plan.replica_seconds == best


def test_the_beam_never_ends_worse_than_the_schedules_it_starts_from() -> None:
    scenario = small(
        partitions=4,
        duration_seconds=300,
        initial_backlog=600,
        rate=[{"at": 0, "rate": 20}, {"at": 120, "rate": 35}, {"at": 200, "rate": 10}],
        scaling={"minReplicas": 1, "maxReplicas": 4, "scaleDownStabilizationSeconds": 60},
    )
    plan = oracle.search(scenario, grid=GRID, beam=3)
    assert not plan.exact
    traffic = build_traffic(scenario)
    hold = oracle.hold_ticks(scenario, GRID)
    for window in (60, 120, 240):
        seed = oracle._greedy(scenario, None, traffic, GRID, hold, window)
        cost, violations = oracle.replay(scenario, seed, GRID, None, traffic)
        assert (plan.violation_seconds, plan.replica_seconds) <= (violations, cost)
    assert oracle.admissible(scenario, plan.schedule, GRID)


def test_the_oracle_obeys_the_stabilization_window() -> None:
    # A backlog wants two replicas for a while, then one is enough; with a 45 s window
    # the second replica must stay three ticks after it was added (the backlog is not
    # drained before then).
    scenario = small(scaling={"minReplicas": 1, "maxReplicas": 2,
                              "scaleDownStabilizationSeconds": 45})  # fmt: skip
    plan = oracle.search(scenario, grid=GRID, beam=None)
    schedule = plan.schedule
    for i in range(1, len(schedule)):
        if schedule[i] > schedule[i - 1]:
            assert all(n >= schedule[i] for n in schedule[i : i + 3])
    assert not oracle.admissible(scenario, (1, 2, 1, 1, 1), GRID)
    assert oracle.admissible(scenario, (1, 2, 2, 2, 1), GRID)


def test_the_window_stops_binding_the_oracle_once_the_backlog_is_drained() -> None:
    # As kcg lets go of replicas it added for a backlog once that backlog is gone, the
    # floor may too: a second replica added for 200 waiting messages may leave at the
    # first tick after they are consumed (t=30), not only after the 60 s window; while
    # messages still wait (t=15: 60 of them, four times a tick of production), it may not.
    scenario = small(initial_backlog=200, duration_seconds=120, rate=[{"at": 0, "rate": 2}],
                     scaling={"minReplicas": 1, "maxReplicas": 2,
                              "scaleDownStabilizationSeconds": 60})  # fmt: skip
    world = World(scenario)
    world.scale(2)
    drained_at = []
    for _ in range(30):
        world.step()
        drained_at.append(oracle.drained(world, GRID))
    assert not drained_at[14] and drained_at[-1]
    assert oracle.admissible(scenario, (2, 2, 1, 1, 1, 1, 1, 1), GRID)
    assert not oracle.admissible(scenario, (2, 1, 1, 1, 1, 1, 1, 1), GRID)


@settings(max_examples=300, deadline=None)
@given(
    budget=st.integers(0, 60),
    available=st.lists(st.integers(0, 40), min_size=1, max_size=5),
    less=st.lists(st.integers(0, 10), min_size=5, max_size=5),
)
def test_fair_share_is_monotone_which_makes_dominance_pruning_exact(
    budget: int, available: list[int], less: list[int]
) -> None:
    # A world that consumed more everywhere is left with no more anywhere after a second.
    ahead = [max(0, a - d) for a, d in zip(available, less, strict=False)]
    left_behind = [a - s for a, s in zip(available, fair_share(budget, available), strict=True)]
    left_ahead = [a - s for a, s in zip(ahead, fair_share(budget, ahead), strict=True)]
    assert all(x <= y for x, y in zip(left_ahead, left_behind, strict=True))
