"""`make bench-scaling`: kcg against KEDA at its best and against the oracle, per scenario.

For every scenario in ``examples/scenarios`` and every noise variant (clean, then each
seed of :mod:`.noise`), one run of kcg, a sweep of KEDA's ``lagThreshold`` and one oracle
search, all on the same traffic:

* **KEDA's front.** KEDA is run with two configurations at every threshold of a geometric
  sweep (``sweep_thresholds``): as installed, and as a careful user sets it
  (:meth:`KedaConfig.careful`: excludePersistentLag, limitToPartitionsWithLag,
  offsetResetPolicy earliest, the spec's stabilization window and idle time). Around the
  thresholds where KEDA reaches kcg's SLO-violation seconds the sweep is refined by
  bisection, so a good threshold between two samples is not missed. The Pareto front of
  (SLO-violation seconds, replica-seconds) over all these runs is KEDA at its best.
  Goal 1 holds when no KEDA run has at most kcg's violation seconds for at most kcg's
  replica-seconds.
* **KEDA as a user can deploy it** (:func:`tune_elsewhere`): no user picks the threshold
  after seeing the day's traffic. Each variant is also run with the setting a careful user
  tunes on the scenario's *other* variants (:mod:`.keda_tuning`: the fewest violations on
  the worst recorded day, then the cheapest), and kcg is set beside it: better, worse or a
  trade-off. Not a goal of issue 12; it says how far the front's hindsight is from what
  KEDA gives in practice, and whether that KEDA meets goal 1's yardstick itself.
* **The oracle** (:mod:`.oracle`): the fewest replica-seconds that meet the SLO under the
  same spec, knowing the future. Goal 2, where the oracle meets the SLO: kcg meets it too,
  at no more than 1.15 times the oracle's replica-seconds.

Prints a table per variant, KEDA's fronts, where kcg loses, and, as its very last line,
one JSON object with every figure and, per scenario and variant, whether each goal holds.

With ``--plot-dir`` (``make bench-scaling`` passes ``benchmarks/out/scaling``) it also
draws one picture per scenario (:mod:`.plot`), for one noise variant (``--plot-seed``,
the first seed by default): kcg, the KEDA run :func:`keda_pick` chooses from the sweep
(the one the table's "KEDA best" column shows) and the oracle's schedule, on the same
traffic. The JSON's ``plots`` maps each scenario to its file.

    python -m kcg_operator.scaling.bench [--scenarios DIR] [--seeds 1,2] [--jobs 2]
                                         [--plot-dir DIR] [--plot-seed N|clean]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kcg_operator.scaling.keda import KedaConfig, KedaPolicy
from kcg_operator.scaling.keda_tuning import (
    KEDA_BETTER,
    OUTCOMES,
    TRADE_OFF,
    Score,
    Setting,
    compare,
    score_of,
    tune,
)
from kcg_operator.scaling.noise import Noise
from kcg_operator.scaling.oracle import DEFAULT_BEAM, OraclePolicy, Plan, search
from kcg_operator.scaling.policy import KcgPolicy
from kcg_operator.scaling.scenario import Scenario, ScenarioError, load_scenario
from kcg_operator.scaling.simulator import SimResult, simulate
from kcg_operator.scaling.world import Traffic, build_traffic

if TYPE_CHECKING:
    # Imported where used: matplotlib is only needed when pictures are asked for.
    from kcg_operator.scaling.plot import Run

DEFAULT_DIR = Path("examples/scenarios")
DEFAULT_SEEDS = (1, 2)
#: Goal 2: kcg's replica-seconds at most this multiple of the oracle's.
GOAL_ORACLE_RATIO = 1.15
#: Thresholds swept, as seconds of one replica's work (threshold = rate x seconds).
SWEEP_SECONDS_LOW = 2.0
SWEEP_POINTS = 14
#: Bisection steps around where KEDA's violations reach kcg's.
REFINE_STEPS = 3
#: Where ``make bench-scaling`` writes its pictures (git-ignored).
DEFAULT_PLOT_DIR = Path("benchmarks/out/scaling")


@dataclass(frozen=True)
class Point:
    """One KEDA run on the front's plane."""

    preset: str
    threshold: int
    violation_seconds: int
    replica_seconds: int


def sweep_thresholds(scenario: Scenario) -> list[int]:
    """Geometric lagThresholds from 2 s to 4 SLOs of one replica's work.

    The careful user's choice (the backlog one replica clears in half the SLO) sits in the
    middle; the ends give KEDA every chance, from many replicas to very few.
    """
    rate = max(scenario.per_replica_rate, 1e-9)
    low = max(1, round(rate * SWEEP_SECONDS_LOW))
    high = max(low + 1, round(rate * scenario.slo_seconds * 4))
    ratio = (high / low) ** (1 / (SWEEP_POINTS - 1))
    return sorted({max(1, round(low * ratio**i)) for i in range(SWEEP_POINTS)})


def _config(scenario: Scenario, preset: str, threshold: int) -> KedaConfig:
    if preset == "careful":
        return KedaConfig.careful(scenario.scaling, threshold)
    return KedaConfig.defaults(scenario.scaling, threshold)


PRESETS = ("careful", "defaults")


def pareto_front(points: Iterable[Point]) -> list[Point]:
    """The runs no other run beats on both violation seconds and replica-seconds.

    Sorted by violation seconds; of equal runs, the first (lowest threshold) stays.
    """
    ordered = sorted(points, key=lambda p: (p.violation_seconds, p.replica_seconds, p.threshold))
    front: list[Point] = []
    for point in ordered:
        if not front or point.replica_seconds < front[-1].replica_seconds:
            if front and point.violation_seconds == front[-1].violation_seconds:
                continue
            front.append(point)
    return front


def beats(point: Point, violation_seconds: int, replica_seconds: int) -> bool:
    """KEDA reaches kcg's SLO (no more violation seconds) at no more cost."""
    return point.violation_seconds <= violation_seconds and point.replica_seconds <= replica_seconds


def strictly_better(point: Point, violation_seconds: int, replica_seconds: int) -> bool:
    """No worse on both and better on one."""
    return beats(point, violation_seconds, replica_seconds) and (
        point.violation_seconds,
        point.replica_seconds,
    ) != (violation_seconds, replica_seconds)


def _keda_run(scenario: Scenario, noise: Noise | None, traffic: Any, preset: str, th: int) -> Point:
    result = simulate(scenario, KedaPolicy(_config(scenario, preset, th)), noise, traffic)
    return Point(preset, th, result.slo_violation_seconds, result.replica_seconds)


def keda_sweep(
    scenario: Scenario, noise: Noise | None, traffic: Any, kcg_violations: int
) -> list[Point]:
    """Every KEDA run of the sweep, refined where KEDA crosses kcg's violation level."""
    points: list[Point] = []
    for preset in PRESETS:
        runs = [
            _keda_run(scenario, noise, traffic, preset, th) for th in sweep_thresholds(scenario)
        ]
        points += runs
        # Lower thresholds mean more replicas: find the largest threshold that still
        # reaches kcg's violations and the next one up, and bisect between them.
        ok = [p for p in runs if p.violation_seconds <= kcg_violations]
        above = [p for p in runs if p.violation_seconds > kcg_violations]
        if not ok or not above:
            continue
        low = max(ok, key=lambda p: p.threshold).threshold
        higher = [p.threshold for p in above if p.threshold > low]
        if not higher:
            continue
        high = min(higher)
        for _ in range(REFINE_STEPS):
            mid = round(math.sqrt(low * high))
            if mid in (low, high):
                break
            point = _keda_run(scenario, noise, traffic, preset, mid)
            points.append(point)
            if point.violation_seconds <= kcg_violations:
                low = mid
            else:
                high = mid
    return points


class Replays:
    """KEDA runs of one scenario on each of its noise variants, each run simulated once.

    Seeded with the sweep's runs; the runs it adds are kept apart (``added``) so that they
    join the variant's front too.
    """

    def __init__(self, scenario: Scenario, known: dict[int | None, list[Point]]) -> None:
        self.scenario = scenario
        self._runs = {(seed, p.preset, p.threshold): p for seed, ps in known.items() for p in ps}
        self._traffic: dict[int | None, Traffic] = {}
        self.added: dict[int | None, list[Point]] = {seed: [] for seed in known}

    def run(self, seed: int | None, setting: Setting) -> Point:
        key = (seed, setting.preset, setting.threshold)
        if key not in self._runs:
            noise = None if seed is None else Noise(seed=seed)
            if seed not in self._traffic:
                self._traffic[seed] = build_traffic(self.scenario, noise)
            point = _keda_run(
                self.scenario, noise, self._traffic[seed], setting.preset, setting.threshold
            )
            self._runs[key] = point
            self.added.setdefault(seed, []).append(point)
        return self._runs[key]

    def score(self, days: Sequence[int | None], setting: Setting) -> Score:
        """The setting over the recorded ``days``, as :func:`.keda_tuning.tune` sees it."""
        runs = (self.run(day, setting) for day in days)
        return score_of((r.violation_seconds, r.replica_seconds) for r in runs)


def tune_elsewhere(
    job: tuple[str, list[int | None], dict[int | None, list[dict[str, Any]]]],
) -> dict[int | None, dict[str, Any]]:
    """Per noise variant, KEDA tuned by a careful user on the scenario's other variants
    (:func:`.keda_tuning.tune`) and run on this one: KEDA as a user can deploy it, beside
    the threshold picked for this very trace in hindsight."""
    path, variants, known = job
    scenario = load_scenario(Path(path))
    replays = Replays(scenario, {s: [Point(**p) for p in ps] for s, ps in known.items()})
    tuned: dict[int | None, dict[str, Any]] = {}
    for day in variants:
        others = [v for v in variants if v != day]
        if not others:
            continue
        setting, score = tune(
            functools.partial(replays.score, others),
            PRESETS,
            sweep_thresholds(scenario),
        )
        result = replays.run(day, setting)
        tuned[day] = {
            "preset": setting.preset,
            "lag_threshold": setting.threshold,
            "tuned_on": [_variant(v) for v in others],
            "tuned_worst_violation_seconds": score.worst_violation_seconds,
            "slo_violation_seconds": result.violation_seconds,
            "replica_seconds": result.replica_seconds,
        }
    for day, points in replays.added.items():
        if day in tuned:
            tuned[day]["runs_added"] = [p.__dict__ for p in points]
    return tuned


def cheapest_reaching(points: Iterable[Point], violation_seconds: int) -> Point | None:
    """The KEDA run with the fewest replica-seconds among those with at most
    ``violation_seconds`` over the SLO: KEDA at its best at kcg's SLO."""
    reach = [p for p in points if p.violation_seconds <= violation_seconds]
    return min(reach, key=lambda p: p.replica_seconds) if reach else None


def keda_pick(points: Sequence[Point], kcg_violations: int) -> tuple[Point, str]:
    """The KEDA run to draw beside kcg, and why that one.

    The table's "KEDA best" run (:func:`cheapest_reaching`) when KEDA reaches kcg's
    violation seconds at all; otherwise the front point whose violations come closest.
    """
    cheapest = cheapest_reaching(points, kcg_violations)
    if cheapest is not None:
        return cheapest, "the cheapest swept run at kcg's SLO-violation seconds"
    if not points:
        raise ValueError("no KEDA runs to pick from")
    closest = min(
        pareto_front(points),
        key=lambda p: (abs(p.violation_seconds - kcg_violations), p.replica_seconds),
    )
    return closest, "the front point closest to kcg's SLO-violation seconds"


_PRESET_WORDS = {"careful": "set carefully", "defaults": "as installed"}
KedaMode = Literal["installed", "best"]
KEDA_MODES: tuple[KedaMode, ...] = ("installed", "best")


def keda_label(preset: str, threshold: int, why: str = "") -> str:
    words = _PRESET_WORDS.get(preset, preset)
    return f"KEDA {words}, lagThreshold {threshold:,}" + (f" ({why})" if why else "")


def oracle_label(plan: Plan) -> str:
    found = "optimal" if plan.exact else "best schedule found"
    return f"oracle ({found}; knows the future)"


def comparison_runs(
    scenario: Scenario,
    noise: Noise | None,
    *,
    keda: KedaMode = "installed",
    oracle: bool = False,
    known: dict[str, SimResult] | None = None,
    traffic: Traffic | None = None,
    points: Sequence[Point] | None = None,
    plan: Plan | None = None,
) -> list[Run]:
    """kcg, KEDA and (with ``oracle`` or a ``plan``) the oracle, on the same traffic.

    ``keda``: "installed" is KEDA with its defaults and lagThreshold = lagPerReplica (what
    ``kcg simulate --policy keda`` runs); "best" sweeps lagThreshold as the benchmark does
    (or takes the sweep's ``points``) and draws :func:`keda_pick`'s run. ``known`` reuses
    runs already simulated with those settings, by policy name; ``plan`` reuses an oracle
    search.
    """
    from kcg_operator.scaling.plot import Run

    known = known or {}
    traffic = traffic if traffic is not None else build_traffic(scenario, noise)
    kcg = known.get("kcg") or simulate(scenario, KcgPolicy(), noise, traffic)
    runs = [Run(kcg, "kcg")]
    if keda == "best":
        if points is None:
            points = keda_sweep(scenario, noise, traffic, kcg.slo_violation_seconds)
        chosen, why = keda_pick(points, kcg.slo_violation_seconds)
        config = _config(scenario, chosen.preset, chosen.threshold)
        keda_run = simulate(scenario, KedaPolicy(config), noise, traffic)
        runs.append(Run(keda_run, keda_label(chosen.preset, chosen.threshold, why)))
    else:
        installed = KedaConfig.defaults(scenario.scaling)
        keda_run = known.get("keda") or simulate(scenario, KedaPolicy(installed), noise, traffic)
        runs.append(Run(keda_run, keda_label("defaults", installed.lag_threshold)))
    if plan is None and oracle:
        plan = search(scenario, noise, traffic=traffic)
    if plan is not None:
        oracle_run = known.get("oracle") or simulate(scenario, OraclePolicy(plan), noise, traffic)
        runs.append(Run(oracle_run, oracle_label(plan)))
    return runs


def plot_file(directory: Path, scenario: str, seed: int | None) -> Path:
    return directory / f"{scenario}-{'clean' if seed is None else f'seed{seed}'}.png"


def run_case(job: tuple[str, int | None, int | None, str | None]) -> dict[str, Any]:
    """kcg, KEDA's sweep and the oracle on one scenario file and noise seed; with a
    picture directory, the picture of the three."""
    path, seed, beam, plot_dir = job
    started = time.monotonic()
    scenario = load_scenario(Path(path))
    noise = None if seed is None else Noise(seed=seed)
    traffic = build_traffic(scenario, noise)
    kcg = simulate(scenario, KcgPolicy(), noise, traffic)
    points = keda_sweep(scenario, noise, traffic, kcg.slo_violation_seconds)
    plan = search(scenario, noise, beam=beam, traffic=traffic)
    seconds = round(time.monotonic() - started, 1)
    pictures: dict[str, Any] = {}
    if plot_dir is not None:
        from kcg_operator.scaling import plot

        drawing = time.monotonic()
        runs = comparison_runs(
            scenario,
            noise,
            keda="best",
            known={"kcg": kcg},
            traffic=traffic,
            points=points,
            plan=plan,
        )
        written = plot.plot(scenario, runs, plot_file(Path(plot_dir), scenario.name, seed))
        pictures = {"plot": str(written), "plot_seconds": round(time.monotonic() - drawing, 1)}
    return {
        "scenario": scenario.name,
        "seed": seed,
        "slo_seconds": scenario.slo_seconds,
        "kcg": _result(kcg),
        "keda": [p.__dict__ for p in points],
        "oracle": {
            "replica_seconds": plan.replica_seconds,
            "slo_violation_seconds": plan.violation_seconds,
            "exact": plan.exact,
            "states": plan.states,
        },
        "seconds": seconds,
        **pictures,
    }


def _result(result: SimResult) -> dict[str, Any]:
    return {
        "slo_violation_seconds": result.slo_violation_seconds,
        "replica_seconds": result.replica_seconds,
        "max_replicas": result.max_replicas,
        "max_time_lag_seconds": result.max_time_lag_seconds,
        "scale_events": result.scale_events,
    }


def judge(case: dict[str, Any]) -> dict[str, Any]:
    """The goals for one case, with the figures that decide them."""
    kcg = case["kcg"]
    kv, kr = kcg["slo_violation_seconds"], kcg["replica_seconds"]
    points = [Point(**p) for p in case["keda"]]
    front = pareto_front(points)
    winners = [p for p in points if beats(p, kv, kr)]
    cheapest = cheapest_reaching(points, kv)
    oracle = case["oracle"]
    applies = oracle["slo_violation_seconds"] == 0
    # The oracle is a floor only if no run did better: check it rather than assume it
    # (its search is exhaustive only on small cases).
    ov, orc = oracle["slo_violation_seconds"], oracle["replica_seconds"]
    beaten = [p for p in points if p.violation_seconds <= ov and p.replica_seconds < orc]
    if kv <= ov and kr < orc:
        beaten.append(Point("kcg", 0, kv, kr))
    ratio = kr / oracle["replica_seconds"] if oracle["replica_seconds"] else None
    # The same ratio for KEDA's threshold picked for this very trace in hindsight: how far
    # a reactive policy tuned with foresight of the trace stays from the floor.
    keda_clean = cheapest_reaching(points, 0)
    keda_ratio = (
        keda_clean.replica_seconds / orc
        if applies and keda_clean is not None and orc
        else None
    )
    tuned = case.get("keda_tuned")
    return {
        "keda_front": [
            [p.violation_seconds, p.replica_seconds, p.preset, p.threshold] for p in front
        ],
        "keda_tuned": tuned,
        "kcg_vs_keda_tuned": (
            None
            if tuned is None
            else compare((kv, kr), (tuned["slo_violation_seconds"], tuned["replica_seconds"]))
        ),
        # Whether KEDA as deployed meets goal 1's yardstick itself: no swept threshold does
        # strictly better on this trace (ties spared, unlike kcg's test above).
        "keda_tuned_on_front": (
            None
            if tuned is None
            else not any(
                strictly_better(p, tuned["slo_violation_seconds"], tuned["replica_seconds"])
                for p in points
            )
        ),
        "keda_best_at_kcg_slo": (
            None
            if cheapest is None
            else {
                "replica_seconds": cheapest.replica_seconds,
                "slo_violation_seconds": cheapest.violation_seconds,
                "preset": cheapest.preset,
                "lag_threshold": cheapest.threshold,
            }
        ),
        "kcg_over_keda_best": (
            None if cheapest is None else round(kr / cheapest.replica_seconds, 3)
        ),
        "goal_front": not winners,
        "kcg_over_oracle": None if ratio is None else round(ratio, 3),
        "keda_hindsight_over_oracle": None if keda_ratio is None else round(keda_ratio, 3),
        "oracle_meets_slo": applies,
        "oracle_exact": oracle["exact"],
        "oracle_beaten_by": [[p.preset, p.threshold, p.replica_seconds] for p in beaten],
        "goal_oracle": (ratio is not None and ratio <= GOAL_ORACLE_RATIO and kv == 0)
        if applies
        else None,
    }


def _variant(seed: int | None) -> str:
    return "clean" if seed is None else f"seed {seed}"


def report(cases: Sequence[dict[str, Any]], seeds: Sequence[int]) -> tuple[str, dict[str, Any]]:
    header = (
        f"{'scenario':<19}{'noise':<8}{'SLO':>5}{'kcg viol':>9}{'kcg rep-s':>10}"
        f"{'KEDA best rep-s':>16}{'(viol, preset, thr)':>27}{'kcg/KEDA':>9}"
        f"{'oracle rep-s':>13}{'kcg/orc':>8}  goals"
    )
    lines = [
        "kcg against KEDA at its best (lagThreshold swept, two presets) and the oracle",
        f"noise seeds {', '.join(map(str, seeds)) or 'none'} ({Noise(seed=0).levels()})",
        "",
        header,
        "-" * len(header),
    ]
    scenarios: dict[str, dict[str, Any]] = {}
    losses: list[str] = []
    tuned_runs: list[str] = []
    for case in cases:
        verdict = judge(case)
        variant = _variant(case["seed"])
        kcg = case["kcg"]
        best = verdict["keda_best_at_kcg_slo"]
        best_text = (
            f"({best['slo_violation_seconds']}, {best['preset']}, {best['lag_threshold']})"
            if best
            else "(never reaches kcg's SLO)"
        )
        oracle = case["oracle"]
        goal_text = (
            ("front ok" if verdict["goal_front"] else "FRONT LOST")
            + ", "
            + (
                "oracle n/a"
                if verdict["goal_oracle"] is None
                else ("oracle ok" if verdict["goal_oracle"] else "ORACLE MISSED")
            )
        )
        lines.append(
            f"{case['scenario']:<19}{variant:<8}{case['slo_seconds']:>5g}"
            f"{kcg['slo_violation_seconds']:>9}{kcg['replica_seconds']:>10}"
            f"{best['replica_seconds'] if best else '-':>16}{best_text:>27}"
            f"{verdict['kcg_over_keda_best'] or '-':>9}"
            f"{oracle['replica_seconds']:>12}{'' if oracle['exact'] else '~'}"
            f"{verdict['kcg_over_oracle'] or '-':>8}  {goal_text}"
        )
        if not verdict["goal_front"]:
            losses.append(
                f"{case['scenario']} ({variant}): KEDA {best_text} reaches kcg's"
                f" {kcg['slo_violation_seconds']} violation s with"
                f" {best['replica_seconds'] if best else '?'} replica-s against kcg's"
                f" {kcg['replica_seconds']}"
            )
        tuned = verdict["keda_tuned"]
        if verdict["kcg_vs_keda_tuned"] in (KEDA_BETTER, TRADE_OFF):
            tuned_runs.append(
                f"  {case['scenario']} ({variant}): {verdict['kcg_vs_keda_tuned']}: KEDA"
                f" {tuned['preset']} {tuned['lag_threshold']} (tuned on"
                f" {' and '.join(tuned['tuned_on'])}) ({tuned['slo_violation_seconds']},"
                f" {tuned['replica_seconds']}), kcg ({kcg['slo_violation_seconds']},"
                f" {kcg['replica_seconds']})"
            )
        if verdict["oracle_beaten_by"]:
            losses.append(
                f"{case['scenario']} ({variant}): the oracle's search missed a cheaper"
                f" schedule: {verdict['oracle_beaten_by']}"
            )
        if verdict["goal_oracle"] is False:
            losses.append(
                f"{case['scenario']} ({variant}): kcg {kcg['replica_seconds']} replica-s,"
                f" {kcg['slo_violation_seconds']} violation s; oracle"
                f" {oracle['replica_seconds']} replica-s (ratio {verdict['kcg_over_oracle']},"
                f" goal <= {GOAL_ORACLE_RATIO} at 0 violation s)"
            )
        entry = scenarios.setdefault(case["scenario"], {})
        entry[variant] = {
            "kcg": kcg,
            "oracle": oracle,
            "keda_runs": len(case["keda"]),
            "seconds": case["seconds"],
            **verdict,
        }
    lines.append("-" * len(header))
    lines.append("~: the oracle's search was cut (beam); its figure is the best schedule found.")
    summary = summarize([v for variants in scenarios.values() for v in variants.values()])
    lines += ["", *summary_lines(summary)]
    lines.append("")
    lines.append("KEDA's Pareto fronts, clean runs: (violation s, replica-s, preset, lagThreshold)")
    for name, variants in scenarios.items():
        if "clean" in variants:
            front = variants["clean"]["keda_front"]
            text = "  ".join(f"({v}, {r}, {preset[0]}, {t})" for v, r, preset, t in front)
            kcg = variants["clean"]["kcg"]
            lines.append(
                f"  {name}: kcg ({kcg['slo_violation_seconds']}, {kcg['replica_seconds']})"
                f"  KEDA {text}"
            )
    if tuned_runs:
        lines.append("")
        lines.append(
            "Where KEDA tuned on the scenario's other variants is not worse than kcg:"
            " (violation s, replica-s)"
        )
        lines += tuned_runs
    lines.append("")
    if losses:
        lines.append("Where kcg loses:")
        lines += [f"  {loss}" for loss in losses]
    else:
        lines.append("kcg loses nowhere: on or beyond KEDA's front, within the oracle goal.")
    goals = {
        name: {
            variant: {"front": v["goal_front"], "oracle": v["goal_oracle"]}
            for variant, v in variants.items()
        }
        for name, variants in scenarios.items()
    }
    figures: dict[str, Any] = {
        "seeds": list(seeds),
        "noise": Noise(seed=0).levels(),
        "goal_oracle_ratio": GOAL_ORACLE_RATIO,
        "goals": goals,
        "goal_front_met": all(v["goal_front"] for vs in scenarios.values() for v in vs.values()),
        "goal_oracle_met": all(
            v["goal_oracle"] is not False for vs in scenarios.values() for v in vs.values()
        ),
        "oracle_never_beaten": not any(
            v["oracle_beaten_by"] for vs in scenarios.values() for v in vs.values()
        ),
        "summary": summary,
        "scenarios": scenarios,
    }
    return "\n".join(lines), figures


def _ratios(values: Iterable[float | None]) -> dict[str, Any]:
    present = [v for v in values if v is not None]
    return {
        "runs": len(present),
        "geomean": round(statistics.geometric_mean(present), 3) if present else None,
        "within_goal": sum(v <= GOAL_ORACLE_RATIO for v in present),
    }


def summarize(verdicts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The goals over all runs, and kcg's distance from the oracle beside that of KEDA's
    threshold chosen per trace in hindsight (both where the oracle meets the SLO)."""
    with_oracle = [v for v in verdicts if v["oracle_meets_slo"]]
    against_tuned = [v for v in verdicts if v["kcg_vs_keda_tuned"] is not None]
    return {
        "runs": len(verdicts),
        "on_keda_front": sum(v["goal_front"] for v in verdicts),
        "keda_tuned_elsewhere": {
            "runs": len(against_tuned),
            "outcomes": {
                outcome: sum(v["kcg_vs_keda_tuned"] == outcome for v in against_tuned)
                for outcome in OUTCOMES
            },
            "kcg": _totals(v["kcg"] for v in against_tuned),
            "keda": _totals(v["keda_tuned"] for v in against_tuned),
            "keda_on_its_hindsight_front": sum(v["keda_tuned_on_front"] for v in against_tuned),
        },
        "kcg_over_oracle": _ratios(v["kcg_over_oracle"] for v in with_oracle),
        "oracle_goal_met": sum(v["goal_oracle"] is True for v in with_oracle),
        "keda_hindsight_over_oracle": _ratios(
            v["keda_hindsight_over_oracle"] for v in with_oracle
        ),
    }


def _totals(runs: Iterable[dict[str, Any]]) -> dict[str, int]:
    totals = {"slo_violation_seconds": 0, "replica_seconds": 0}
    for run in runs:
        for key in totals:
            totals[key] += run[key]
    return totals


def summary_lines(summary: dict[str, Any]) -> list[str]:
    def ratio(figures: dict[str, Any]) -> str:
        return (
            f"geometric mean {figures['geomean']}, <= {GOAL_ORACLE_RATIO} on"
            f" {figures['within_goal']} of {figures['runs']}"
        )

    return [
        f"kcg on or beyond KEDA's front: {summary['on_keda_front']} of {summary['runs']} runs",
        f"kcg / oracle replica-s where the oracle meets the SLO: "
        f"{ratio(summary['kcg_over_oracle'])} (at 0 violation s, the goal: "
        f"{summary['oracle_goal_met']})",
        f"KEDA's cheapest 0-violation threshold per trace (chosen in hindsight) / oracle: "
        f"{ratio(summary['keda_hindsight_over_oracle'])}",
        *tuned_lines(summary["keda_tuned_elsewhere"]),
    ]


def tuned_lines(tuned: dict[str, Any]) -> list[str]:
    """kcg against KEDA tuned on the scenario's other variants, over all runs."""
    if not tuned["runs"]:
        return []
    outcomes = ", ".join(f"{name} {count}" for name, count in tuned["outcomes"].items())
    kcg, keda = tuned["kcg"], tuned["keda"]
    return [
        f"KEDA tuned on the scenario's other variants (deployable), {tuned['runs']} runs:"
        f" {outcomes}; in all, kcg {kcg['slo_violation_seconds']} violation s and"
        f" {kcg['replica_seconds']} replica-s, KEDA {keda['slo_violation_seconds']} and"
        f" {keda['replica_seconds']}",
        f"  ... and that KEDA is on its own hindsight front (no swept threshold strictly"
        f" better on the trace) in {tuned['keda_on_its_hindsight_front']} of {tuned['runs']}",
    ]


class _InProcess:
    """``multiprocessing.Pool``'s ``map`` in this process (``--jobs 1``)."""

    def __enter__(self) -> _InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, fn: Any, items: Iterable[Any], chunksize: int = 1) -> list[Any]:
        return [fn(item) for item in items]


def _plot_variant(text: str | None, seeds: Sequence[int]) -> int | None:
    """The seed whose runs are drawn (None: the clean runs)."""
    if text is None:
        return seeds[0] if seeds else None
    if text == "clean":
        return None
    if text.strip().lstrip("-").isdigit() and int(text) in seeds:
        return int(text)
    raise ValueError(f"'clean' or one of --seeds ({', '.join(map(str, seeds))}), got {text!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench-scaling",
        description="kcg against KEDA's Pareto front and the oracle, with and without noise.",
    )
    parser.add_argument("--scenarios", type=Path, default=DEFAULT_DIR, help="scenario directory")
    parser.add_argument(
        "--seeds",
        default=",".join(map(str, DEFAULT_SEEDS)),
        help="noise seeds, comma-separated ('' for clean runs only)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument(
        "--beam", type=int, default=DEFAULT_BEAM, help="oracle search width per tick"
    )
    parser.add_argument(
        "--plot-dir",
        type=Path,
        default=None,
        help="write one PNG per scenario here: kcg, KEDA's pick and the oracle over time"
        f" (make bench-scaling: {DEFAULT_PLOT_DIR})",
    )
    parser.add_argument(
        "--plot-seed",
        default=None,
        help="the noise variant the pictures show: a seed of --seeds or 'clean'"
        " (default: the first seed, else clean)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        print(f"bench-scaling: --seeds must be integers, got {args.seeds!r}", file=sys.stderr)
        return 2
    try:
        plot_seed = _plot_variant(args.plot_seed, seeds)
    except ValueError as exc:
        print(f"bench-scaling: --plot-seed: {exc}", file=sys.stderr)
        return 2
    plot_dir: Path | None = args.plot_dir
    if plot_dir is not None:
        try:
            plot_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"bench-scaling: --plot-dir {plot_dir}: {exc.strerror}", file=sys.stderr)
            return 2
    files = sorted(args.scenarios.glob("*.yaml"))
    try:
        if not files:
            raise ScenarioError(f"no *.yaml scenarios in {args.scenarios}")
        for path in files:
            load_scenario(path)
    except ScenarioError as exc:
        print(f"bench-scaling: {exc}", file=sys.stderr)
        return 2
    variants: list[int | None] = [None, *seeds]
    jobs = [
        (str(path), seed, args.beam, str(plot_dir) if plot_dir and seed == plot_seed else None)
        for path in files
        for seed in variants
    ]
    # The longest cases first, so the pool does not end on one straggler.
    jobs.sort(key=lambda j: -load_scenario(Path(j[0])).duration_seconds)
    with multiprocessing.Pool(args.jobs) if args.jobs > 1 else _InProcess() as pool:
        cases = pool.map(run_case, jobs, chunksize=1)
        # Then KEDA tuned on each scenario's other variants, which needs their sweeps.
        sweeps: dict[str, dict[int | None, list[dict[str, Any]]]] = {}
        for job, case in zip(jobs, cases, strict=True):
            sweeps.setdefault(job[0], {})[job[1]] = case["keda"]
        tuning = [(str(path), variants, sweeps[str(path)]) for path in files]
        tuned = dict(zip((t[0] for t in tuning), pool.map(tune_elsewhere, tuning, chunksize=1),
                         strict=True))
    for job, case in zip(jobs, cases, strict=True):
        found = tuned[job[0]].get(job[1])
        if found is not None:
            case["keda"] = case["keda"] + found.pop("runs_added", [])
            case["keda_tuned"] = found
    order = {(str(p), s): i for i, (p, s) in enumerate((p, s) for p in files for s in variants)}
    cases = [c for _, c in sorted(zip((order[(j[0], j[1])] for j in jobs), cases, strict=True))]
    table, figures = report(cases, seeds)
    print(table)
    if plot_dir is not None:
        drawn = [c for c in cases if "plot" in c]
        figures["plots"] = {c["scenario"]: c["plot"] for c in drawn}
        print(
            f"\nPictures ({_variant(plot_seed)}; kcg, KEDA's run at kcg's SLO from the sweep,"
            f" the oracle): {len(drawn)} PNGs in {plot_dir}/,"
            f" {sum(c['plot_seconds'] for c in drawn):.0f} s of drawing in all"
        )
    print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
