"""`make bench-scaling`: KEDA's Pareto front, the goals, and the report's shape."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kcg_operator.scaling import bench, simulator
from kcg_operator.scaling.bench import Point, beats, judge, pareto_front, sweep_thresholds
from kcg_operator.scaling.scenario import parse_scenario

pytestmark = pytest.mark.unit

TINY: dict[str, Any] = {
    "partitions": 3,
    "duration_seconds": 150,
    "initial_replicas": 1,
    "initial_backlog": 300,
    "slo_seconds": 40,
    "per_replica_rate": 20,
    "startup_seconds": 10,
    "rebalance_pause_seconds": 2,
    "rate": [{"at": 0, "rate": 25}, {"at": 60, "rate": 45}],
    "scaling": {"minReplicas": 1, "maxReplicas": 3, "lagPerReplica": 400, "maxTimeLagSeconds": 40},
}


def point(violations: int, cost: int, threshold: int = 1) -> Point:
    return Point("careful", threshold, violations, cost)


def test_pareto_front_keeps_exactly_the_undominated_runs() -> None:
    runs = [point(0, 100), point(0, 120), point(5, 90), point(5, 95), point(3, 110), point(9, 90)]
    front = pareto_front(runs)
    assert [(p.violation_seconds, p.replica_seconds) for p in front] == [(0, 100), (5, 90)]


@settings(max_examples=200, deadline=None)
@given(runs=st.lists(st.tuples(st.integers(0, 50), st.integers(1, 50)), min_size=1, max_size=20))
def test_pareto_front_properties(runs: list[tuple[int, int]]) -> None:
    points = [point(v, c, i) for i, (v, c) in enumerate(runs)]
    front = pareto_front(points)
    # No run beats a front point on both counts, and every run is matched by the front.
    for p in front:
        assert not any(
            (q.violation_seconds <= p.violation_seconds and q.replica_seconds < p.replica_seconds)
            or (
                q.violation_seconds < p.violation_seconds and q.replica_seconds <= p.replica_seconds
            )
            for q in points
        )
    for q in points:
        assert any(
            p.violation_seconds <= q.violation_seconds and p.replica_seconds <= q.replica_seconds
            for p in front
        )
    # Along the front, more violation buys strictly fewer replica-seconds.
    for a, b in pairwise(front):
        assert a.violation_seconds < b.violation_seconds
        assert a.replica_seconds > b.replica_seconds


def test_beats_means_kcg_slo_at_no_more_cost() -> None:
    assert beats(point(0, 99), 0, 100)
    assert beats(point(0, 100), 0, 100)  # equal cost is a loss too
    assert not beats(point(1, 50), 0, 100)
    assert beats(point(3, 80), 5, 100)


def test_sweep_is_geometric_and_wide() -> None:
    sc = parse_scenario(TINY)
    thresholds = sweep_thresholds(sc)
    assert thresholds == sorted(set(thresholds))
    assert thresholds[0] <= 20 * 2
    assert thresholds[-1] >= 20 * 40 * 4 - 1
    ratios = [b / a for a, b in pairwise(thresholds)]
    assert max(ratios) / min(ratios) < 1.3


def case(
    kcg: tuple[int, int], keda: list[tuple[int, int]], oracle: tuple[int, int]
) -> dict[str, Any]:
    return {
        "scenario": "x",
        "seed": None,
        "slo_seconds": 60,
        "kcg": {"slo_violation_seconds": kcg[0], "replica_seconds": kcg[1]},
        "keda": [point(v, c, i).__dict__ for i, (v, c) in enumerate(keda)],
        "oracle": {
            "slo_violation_seconds": oracle[0],
            "replica_seconds": oracle[1],
            "exact": False,
            "states": 1,
        },
        "seconds": 0.0,
    }


def test_judge_says_where_kcg_wins_and_loses() -> None:
    won = judge(case((0, 1000), [(0, 1100), (40, 800)], (0, 900)))
    assert won["goal_front"] and won["goal_oracle"]
    assert won["kcg_over_keda_best"] == pytest.approx(1000 / 1100, abs=1e-3)
    lost = judge(case((0, 1000), [(0, 990), (40, 800)], (0, 800)))
    assert not lost["goal_front"] and lost["goal_oracle"] is False
    # The oracle goal applies only where the oracle meets the SLO, and asks kcg to as well.
    assert judge(case((10, 1000), [], (5, 900)))["goal_oracle"] is None
    assert judge(case((10, 1000), [], (0, 900)))["goal_oracle"] is False
    # The oracle is checked, not trusted: a run that meets its SLO for less is reported.
    assert judge(case((0, 1000), [(0, 850)], (0, 900)))["oracle_beaten_by"] == [["careful", 0, 850]]
    assert judge(case((0, 880), [], (0, 900)))["oracle_beaten_by"] == [["kcg", 0, 880]]
    assert judge(case((0, 1000), [(1, 850)], (0, 900)))["oracle_beaten_by"] == []


def test_summary_counts_the_goals_and_sets_kcg_beside_keda_tuned_in_hindsight() -> None:
    def verdict(kcg: tuple[int, int], keda: list[tuple[int, int]],
                oracle: tuple[int, int]) -> dict[str, Any]:
        c = case(kcg, keda, oracle)
        return {"kcg": c["kcg"], **judge(c)}

    verdicts = [
        # On the front, 1.1x the oracle; KEDA's 0-violation threshold costs 1.2x.
        verdict((0, 1100), [(0, 1200), (30, 900)], (0, 1000)),
        # Off the front, 2x; KEDA's hindsight pick is 1.05x.
        verdict((0, 2000), [(0, 1050)], (0, 1000)),
        # The oracle misses the SLO: no ratio counts; KEDA never reaches 0 violations.
        verdict((5, 900), [(7, 800)], (3, 700)),
    ]
    summary = bench.summarize(verdicts)
    assert summary["runs"] == 3 and summary["on_keda_front"] == 2
    assert summary["kcg_over_oracle"] == {"runs": 2, "geomean": pytest.approx(1.483, abs=1e-3),
                                          "within_goal": 1}
    assert summary["oracle_goal_met"] == 1
    assert summary["keda_hindsight_over_oracle"] == {
        "runs": 2, "geomean": pytest.approx(1.122, abs=1e-3), "within_goal": 1}
    text = "\n".join(bench.summary_lines(summary))
    assert "2 of 3 runs" in text and "geometric mean 1.122, <= 1.15 on 1 of 2" in text


def test_summary_sets_kcg_beside_keda_tuned_on_other_days() -> None:
    def verdict(kcg: tuple[int, int], tuned: tuple[int, int] | None) -> dict[str, Any]:
        c = case(kcg, [(0, 1000)], (0, 500))
        if tuned is not None:
            c["keda_tuned"] = {"slo_violation_seconds": tuned[0], "replica_seconds": tuned[1],
                               "preset": "careful", "lag_threshold": 9, "tuned_on": ["seed 1"]}
        return {"kcg": c["kcg"], **judge(c)}

    verdicts = [
        verdict((0, 900), (0, 1000)),  # kcg no worse on both
        verdict((0, 900), (40, 700)),  # fewer violations, more replicas
        verdict((10, 900), (0, 800)),  # KEDA no worse on both
        verdict((0, 900), None),  # a scenario run without other variants
    ]
    assert [v["kcg_vs_keda_tuned"] for v in verdicts] == [
        "kcg better", "trade-off", "KEDA better", None]
    # Tied with the swept run (0, 1000), the first stays on the front; a replica-second
    # more and it does not.
    assert [v["keda_tuned_on_front"] for v in verdicts] == [True, True, True, None]
    worse = verdict((0, 900), (0, 1001))
    assert worse["keda_tuned_on_front"] is False
    tuned = bench.summarize(verdicts)["keda_tuned_elsewhere"]
    assert tuned["runs"] == 3
    assert tuned["outcomes"] == {"kcg better": 1, "equal": 0, "trade-off": 1, "KEDA better": 1}
    assert tuned["kcg"] == {"slo_violation_seconds": 10, "replica_seconds": 2700}
    assert tuned["keda"] == {"slo_violation_seconds": 40, "replica_seconds": 2500}
    text = "\n".join(bench.summary_lines(bench.summarize(verdicts)))
    assert "3 runs: kcg better 1, equal 0, trade-off 1, KEDA better 1" in text
    assert "hindsight front (no swept threshold strictly better on the trace) in 3 of 3" in text


def test_bench_prints_a_table_and_json_last(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("one", "two"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({**TINY, "name": name}))
    argv = ["--scenarios", str(tmp_path), "--seeds", "3", "--jobs", "1", "--beam", "4"]
    assert bench.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("scenario") for line in lines)
    figures = json.loads(lines[-1])
    assert figures["seeds"] == [3]
    assert set(figures["scenarios"]) == {"one", "two"}
    for variants in figures["scenarios"].values():
        assert set(variants) == {"clean", "seed 3"}
        for v in variants.values():
            assert isinstance(v["kcg"]["replica_seconds"], int)
            assert v["keda_front"]
            assert isinstance(v["goal_front"], bool)
    assert set(figures["goals"]["one"]["seed 3"]) == {"front", "oracle"}
    assert figures["summary"]["runs"] == 4
    # Each variant also meets KEDA tuned on the other variant of its scenario.
    for variants in figures["scenarios"].values():
        assert variants["clean"]["keda_tuned"]["tuned_on"] == ["seed 3"]
        assert variants["seed 3"]["keda_tuned"]["tuned_on"] == ["clean"]
    assert sum(figures["summary"]["keda_tuned_elsewhere"]["outcomes"].values()) == 4
    assert any(line.startswith("KEDA tuned on the scenario's other variants") for line in lines)
    assert any(line.startswith("KEDA's cheapest 0-violation threshold") for line in lines)


def test_bench_figures_are_what_kcg_simulate_reports_for_the_same_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The bench must not print numbers the simulator did not produce: its kcg and oracle
    # figures, in the table and the JSON, are those of `kcg simulate --json` run on the
    # same scenario file, seed and policy.
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump({**TINY, "name": "one"}))
    assert bench.main(["--scenarios", str(tmp_path), "--seeds", "3", "--jobs", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    figures = json.loads(lines[-1])
    for variant, seed in (("clean", []), ("seed 3", ["--seed", "3"])):
        shown = figures["scenarios"]["one"][variant]
        runs = {}
        for policy in ("kcg", "oracle"):
            argv = ["--scenario", str(path), "--policy", policy, "--json", *seed]
            assert simulator.main(argv) == 0
            runs[policy] = json.loads(capsys.readouterr().out)
        kcg, oracle = runs["kcg"], runs["oracle"]
        for key in ("slo_violation_seconds", "replica_seconds", "max_replicas", "scale_events"):
            assert shown["kcg"][key] == kcg[key], key
        assert shown["kcg"]["max_time_lag_seconds"] == kcg["max_time_lag_seconds"]
        assert shown["oracle"]["replica_seconds"] == oracle["replica_seconds"]
        assert shown["oracle"]["slo_violation_seconds"] == oracle["slo_violation_seconds"]
        row = next(line.split() for line in lines if line.startswith("one ") and variant in line)
        figures_in_row = row[len(variant.split()) + 1 :]
        assert figures_in_row[:3] == [
            f"{TINY['slo_seconds']:g}",
            str(kcg["slo_violation_seconds"]),
            str(kcg["replica_seconds"]),
        ]
        assert f"{oracle['replica_seconds']}" in " ".join(row)


def test_bench_refuses_an_empty_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench.main(["--scenarios", str(tmp_path)]) == 2
    assert "no *.yaml" in capsys.readouterr().err
