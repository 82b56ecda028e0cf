"""KEDA tuned as a careful user tunes it: on recorded days, judged on another."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kcg_operator.scaling import bench
from kcg_operator.scaling.keda_tuning import (
    EQUAL,
    KCG_BETTER,
    KEDA_BETTER,
    TRADE_OFF,
    Score,
    Setting,
    compare,
    score_of,
    tune,
)
from kcg_operator.scaling.noise import Noise
from kcg_operator.scaling.scenario import load_scenario
from kcg_operator.scaling.world import build_traffic

from .test_scaling_bench import TINY as BENCH_TINY

pytestmark = pytest.mark.unit


def test_tune_refines_up_to_the_largest_threshold_that_still_holds() -> None:
    seen: dict[Setting, Score] = {}

    def evaluate(s: Setting) -> Score:
        seen[s] = Score(max(0, s.threshold - 1000), 1_000_000 // s.threshold)
        return seen[s]

    best, score = tune(evaluate, ["careful"], [100, 400, 1600, 6400])
    # Between the swept 400 (holds) and 1600 (violates) the bisection finds 951 (holds)
    # and 1037 (violates): the user deploys 951, not the swept 400 at 2.4x the cost.
    assert best == Setting("careful", 951)
    assert score == Score(0, 1_000_000 // 951)
    assert seen[Setting("careful", 1037)].worst_violation_seconds > 0


def test_the_worst_recorded_day_decides_not_the_average() -> None:
    # Threshold 500 is cheap and clean on day one but over the SLO on day two.
    days = {
        100: [(0, 900), (0, 950)],
        500: [(0, 300), (40, 320)],
        2000: [(300, 100), (900, 120)],
    }
    best, score = tune(lambda s: score_of(days[s.threshold]), ["careful"], sorted(days), steps=0)
    assert best.threshold == 100 and score == Score(0, 1850)


def test_when_no_setting_meets_the_slo_the_fewest_worst_day_violations_win() -> None:
    days = {100: Score(30, 900), 500: Score(30, 500), 2000: Score(400, 100)}
    best, _ = tune(lambda s: days[s.threshold], ["careful"], sorted(days), steps=0)
    assert best.threshold == 500


def test_presets_compete_and_the_cheaper_wins() -> None:
    costs = {"careful": 700, "defaults": 600}
    best, _ = tune(lambda s: Score(0, costs[s.preset]), ["careful", "defaults"], [10], steps=0)
    assert best.preset == "defaults"
    best, _ = tune(lambda s: Score(0, 700), ["careful", "defaults"], [10], steps=0)
    assert best.preset == "careful"


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.integers(min_value=1, max_value=100_000),
        st.tuples(st.integers(0, 50), st.integers(1, 10_000)),
        min_size=1,
        max_size=12,
    )
)
def test_tune_deploys_the_cheapest_of_the_settings_it_saw_at_the_best_worst_day(
    table: dict[int, tuple[int, int]],
) -> None:
    seen: dict[Setting, Score] = {}

    def evaluate(s: Setting) -> Score:
        # Thresholds between the swept ones take the nearest swept one's figures.
        nearest = min(table, key=lambda th: (abs(th - s.threshold), th))
        seen[s] = Score(*table[nearest])
        return seen[s]

    best, score = tune(evaluate, ["careful"], sorted(table))
    target = min(s.worst_violation_seconds for s in seen.values())
    assert score == seen[best]
    assert score.worst_violation_seconds == target
    assert score.replica_seconds == min(
        s.replica_seconds for s in seen.values() if s.worst_violation_seconds == target
    )


def test_compare_names_who_is_no_worse_on_both() -> None:
    assert compare((0, 100), (0, 120)) == KCG_BETTER
    assert compare((0, 130), (0, 120)) == KEDA_BETTER
    assert compare((5, 100), (0, 120)) == TRADE_OFF
    assert compare((0, 100), (0, 100)) == EQUAL
    assert compare((0, 100), (3, 100)) == KCG_BETTER


def test_score_of_needs_a_recorded_day() -> None:
    with pytest.raises(ValueError, match="at least one recorded day"):
        score_of([])


# The bench tests' small scenario, longer and with a step down, so that days differ.
TINY = {
    **BENCH_TINY,
    "name": "tiny",
    "duration_seconds": 300,
    "rate": [{"at": 0, "rate": 25}, {"at": 60, "rate": 50}, {"at": 200, "rate": 20}],
}


def test_bench_tunes_each_day_on_the_other_days_only(tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    scenario = load_scenario(path)
    days: list[int | None] = [None, 3, 4]
    tuned = bench.tune_elsewhere((str(path), days, {d: [] for d in days}))
    assert set(tuned) == set(days)
    for day in days:
        others = [d for d in days if d != day]
        entry = tuned[day]
        assert entry["tuned_on"] == [bench._variant(d) for d in others]
        # The same choice as tuning on the other days alone: the day judged never
        # enters its own tuning.
        alone = bench.Replays(scenario, {d: [] for d in others})
        expected, _ = tune(
            lambda s, alone=alone, others=others: alone.score(others, s),
            bench.PRESETS,
            bench.sweep_thresholds(scenario),
        )
        assert (entry["preset"], entry["lag_threshold"]) == (expected.preset, expected.threshold)
        # Its figures on the day are a real KEDA run with that setting on that day's traffic.
        noise = None if day is None else Noise(seed=day)
        fresh = bench._keda_run(
            scenario, noise, build_traffic(scenario, noise), expected.preset, expected.threshold
        )
        assert (entry["slo_violation_seconds"], entry["replica_seconds"]) == (
            fresh.violation_seconds,
            fresh.replica_seconds,
        )
