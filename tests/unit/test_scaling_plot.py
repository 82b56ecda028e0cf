"""Pictures of simulated runs (`kcg simulate --plot`, `make bench-scaling`).

What a reader of the picture relies on: every line is the simulator's own record of the
run whose figures the legend and the bench print, the SLO and cap lines sit at the
spec's values, and the file is a PNG one can open.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import imread
from matplotlib.lines import Line2D

from kcg_operator import cli
from kcg_operator.scaling import bench, plot
from kcg_operator.scaling.bench import Point, keda_pick
from kcg_operator.scaling.keda import KedaPolicy
from kcg_operator.scaling.noise import Noise
from kcg_operator.scaling.plot import PlotError, Run, ScaleEvent, scale_events
from kcg_operator.scaling.policy import KcgPolicy
from kcg_operator.scaling.scenario import Scenario, parse_scenario
from kcg_operator.scaling.simulator import SimResult, simulate

pytestmark = pytest.mark.unit

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Small and short, but with a step the policies must scale for, a broker outage and a
# poisoned partition; maxTimeLagSeconds differs from the judged SLO on purpose, so a
# line drawn at the wrong one shows.
SMALL: dict[str, Any] = {
    "name": "small",
    "partitions": 4,
    "duration_seconds": 240,
    "initial_replicas": 1,
    "initial_backlog": 200,
    "slo_seconds": 30,
    "per_replica_rate": 20,
    "startup_seconds": 10,
    "rebalance_pause_seconds": 2,
    "rate": [{"at": 0, "rate": 15}, {"at": 60, "rate": 70}, {"at": 150, "rate": 20}],
    "broker_errors": [{"from": 100, "to": 115}],
    "poison": [{"partition": 3, "from": 200, "to": 400}],
    "scaling": {
        "minReplicas": 1,
        "maxReplicas": 3,
        "lagPerReplica": 300,
        "maxTimeLagSeconds": 45,
        "scaleDownStabilizationSeconds": 30,
    },
}


def small(**changes: Any) -> Scenario:
    return parse_scenario({**SMALL, **changes})


def runs_of(scenario: Scenario, seed: int | None = 3) -> list[Run]:
    noise = None if seed is None else Noise(seed=seed)
    kcg = simulate(scenario, KcgPolicy(), noise)
    keda = simulate(scenario, KedaPolicy(), noise)
    return [Run(kcg, "kcg"), Run(keda, "KEDA as installed")]


def panels(fig: Figure) -> dict[str, Axes]:
    return {str(ax.get_label()): ax for ax in fig.axes}


def line(fig: Figure, panel: str, gid: str) -> Line2D:
    found = [ln for ln in panels(fig)[panel].get_lines() if ln.get_gid() == gid]
    assert len(found) == 1, (panel, gid, [ln.get_gid() for ln in panels(fig)[panel].get_lines()])
    return found[0]


def xs(ln: Line2D) -> list[float]:
    return [float(x) for x in np.asarray(ln.get_xdata(), dtype=float)]


def ys(ln: Line2D) -> list[float]:
    return [float(y) for y in np.asarray(ln.get_ydata(), dtype=float)]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def check_png(path: Path) -> None:
    width, height = png_size(path)
    assert (width, height) == (1300, 1000)
    assert 20_000 < path.stat().st_size < 1_000_000
    pixels = imread(str(path))
    # Something was drawn: the picture is not one flat colour.
    assert pixels.shape[:2] == (height, width)
    assert float(pixels[..., :3].std()) > 0.05


# -- the record the picture draws -------------------------------------------------------


def test_the_timelines_add_up_to_the_figures_the_simulator_reports() -> None:
    # The picture draws these lists; the bench prints the run's figures. They must be the
    # same run seen two ways, not two computations.
    sc = small()
    for run in runs_of(sc):
        r = run.result
        assert len(r.lag_timeline) == len(r.age_timeline) == sc.duration_seconds
        assert sum(r.replicas_timeline) == r.replica_seconds
        assert sum(1 for age in r.age_timeline if age > sc.slo_seconds) == r.slo_violation_seconds
        assert max(r.age_timeline) == r.max_time_lag_seconds
        assert max(r.lag_timeline) <= r.max_lag
        assert r.lag_timeline[-1] == r.final_lag
        assert SMALL["initial_backlog"] + sum(r.produced_timeline) == r.produced
        assert len(scale_events(r.replicas_timeline, sc.initial_replicas)) == r.scale_events


def test_scale_events_are_the_changes_of_the_replicas_timeline() -> None:
    assert scale_events([1, 1, 3, 3, 2, 2], initial=1) == [
        ScaleEvent(2, 1, 3),
        ScaleEvent(4, 3, 2),
    ]
    # A patch at the first second is an event too.
    assert scale_events([2, 2], initial=1) == [ScaleEvent(0, 1, 2)]
    assert scale_events([], initial=4) == []


# -- the figure ---------------------------------------------------------------------------


def test_every_line_is_the_simulators_own_numbers() -> None:
    sc = small()
    runs = runs_of(sc)
    fig = plot.figure(sc, runs)
    assert list(panels(fig)) == ["traffic", "lag", "seconds", "replicas"]
    seconds = [float(t) for t in range(sc.duration_seconds)]
    ends = [t + 1.0 for t in seconds]
    traffic = line(fig, "traffic", "traffic")
    assert xs(traffic) == seconds
    assert ys(traffic) == runs[0].result.produced_timeline
    for run in runs:
        r, key = run.result, run.key
        assert (xs(line(fig, "lag", f"lag:{key}")), ys(line(fig, "lag", f"lag:{key}"))) == (
            ends,
            r.lag_timeline,
        )
        age = line(fig, "seconds", f"seconds:{key}")
        assert (xs(age), ys(age)) == (ends, r.age_timeline)
        replicas = line(fig, "replicas", f"replicas:{key}")
        assert (xs(replicas), ys(replicas)) == (seconds, r.replicas_timeline)
        assert replicas.get_drawstyle() == "steps-post"
        # Scale events: one marker per event, at the second and the new count.
        markers = [
            (x, y)
            for gid in (f"scale-up:{key}", f"scale-down:{key}")
            for ln in panels(fig)["replicas"].get_lines()
            if ln.get_gid() == gid
            for x, y in zip(xs(ln), ys(ln), strict=True)
        ]
        events = scale_events(r.replicas_timeline, sc.initial_replicas)
        assert r.scale_events > 0
        assert sorted(markers) == sorted((float(e.second), float(e.after)) for e in events)
    # The two policies must differ here, or the test could not tell them apart.
    assert runs[0].result.replicas_timeline != runs[1].result.replicas_timeline


def test_slo_line_is_max_time_lag_seconds_and_the_cap_the_partition_count() -> None:
    sc = small()
    fig = plot.figure(sc, runs_of(sc))
    slo = line(fig, "seconds", "slo")
    assert ys(slo) == [45.0, 45.0]
    assert "maxTimeLagSeconds 45 s" in str(slo.get_label())
    # Violations are counted at the scenario's slo_seconds (30): drawn too, as it differs.
    assert ys(line(fig, "seconds", "slo-judged")) == [30.0, 30.0]
    assert ys(line(fig, "replicas", "partition-cap")) == [4.0, 4.0]
    # maxReplicas (3) is below the partition count: the lower cap is drawn as well.
    assert ys(line(fig, "replicas", "max-replicas")) == [3.0, 3.0]
    top = panels(fig)["seconds"].get_ylim()[1]
    assert top > 45


def test_without_max_time_lag_seconds_the_slo_line_is_the_scenarios() -> None:
    scaling = {k: v for k, v in SMALL["scaling"].items() if k != "maxTimeLagSeconds"}
    sc = small(scaling={**scaling, "maxReplicas": 6})
    fig = plot.figure(sc, runs_of(sc))
    assert ys(line(fig, "seconds", "slo")) == [30.0, 30.0]
    gids = {ln.get_gid() for ln in panels(fig)["seconds"].get_lines()}
    assert "slo-judged" not in gids
    assert "max-replicas" not in {ln.get_gid() for ln in panels(fig)["replicas"].get_lines()}


def test_title_names_scenario_and_seed_and_the_legend_the_figures() -> None:
    sc = small()
    runs = runs_of(sc, seed=3)
    fig = plot.figure(sc, runs)
    suptitle = fig.get_suptitle()
    assert "scenario small" in suptitle and "noise seed 3" in suptitle
    legend = panels(fig)["traffic"].get_legend()
    assert legend is not None
    texts = [" ".join(t.get_text().split()) for t in legend.get_texts()]
    for run, text in zip(runs, texts, strict=False):
        r = run.result
        assert text.startswith(f"{run.label}:")
        assert f"{r.replica_seconds:,} replica-s" in text
        assert f"{r.slo_violation_seconds:,} s over the SLO" in text
    assert any("broker unreachable" in t for t in texts)
    assert any("partition 3 poisoned" in t for t in texts)
    clean = plot.figure(sc, runs_of(sc, seed=None))
    assert "clean, no noise" in clean.get_suptitle()
    assert [ax.get_xlabel() for ax in fig.axes][-1] == "time (minutes)"
    assert [ax.get_ylabel() for ax in fig.axes][:2] == [
        "traffic\n(msgs/s produced)",
        "lag\n(messages)",
    ]


def test_runs_that_cannot_share_a_picture_are_refused() -> None:
    sc = small()
    kcg = simulate(sc, KcgPolicy(), Noise(seed=3))
    other_seed = simulate(sc, KedaPolicy(), Noise(seed=4))
    with pytest.raises(PlotError, match="other traffic"):
        plot.figure(sc, [Run(kcg, "kcg"), Run(other_seed, "KEDA")])
    bare = SimResult(**{**plot_fields(kcg), "lag_timeline": []})
    with pytest.raises(PlotError, match="timelines"):
        plot.figure(sc, [Run(bare, "kcg")])
    with pytest.raises(PlotError, match="no runs"):
        plot.figure(sc, [])


def plot_fields(result: SimResult) -> dict[str, Any]:
    return dict(result.__dict__)


def test_png_is_written_and_sane(tmp_path: Path) -> None:
    sc = small()
    out = plot.plot(sc, runs_of(sc), tmp_path / "small.png")
    assert out == tmp_path / "small.png"
    check_png(out)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("missing/x.png", "does not exist"),
        ("x.svg", "ending in .png"),
        ("adir.png", "is a directory"),
    ],
)
def test_write_png_refuses_a_bad_path(tmp_path: Path, name: str, problem: str) -> None:
    (tmp_path / "adir.png").mkdir()
    sc = small()
    fig = plot.figure(sc, runs_of(sc))
    with pytest.raises(PlotError, match=problem):
        plot.write_png(fig, tmp_path / name)


# -- kcg simulate --plot ------------------------------------------------------------------


@pytest.fixture
def scenario_file(tmp_path: Path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    return path


Drawn = list[tuple[Scenario, list[Run], Figure]]


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> Drawn:
    """Every figure drawn, with its runs (a spy: the real figure is still drawn)."""
    seen: Drawn = []
    real: Callable[[Scenario, Sequence[Run]], Figure] = plot.figure

    def spy(scenario: Scenario, runs: Sequence[Run]) -> Figure:
        fig = real(scenario, runs)
        seen.append((scenario, list(runs), fig))
        return fig

    monkeypatch.setattr(plot, "figure", spy)
    return seen


def test_cli_plot_draws_kcg_and_keda_whatever_the_policy(
    tmp_path: Path,
    scenario_file: Path,
    drawn: Drawn,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out.png"
    argv = ["simulate", "--scenario", str(scenario_file), "--seed", "3", "--policy", "keda"]
    assert cli.main([*argv, "--json", "--plot", str(out)]) == 0
    captured = capsys.readouterr()
    # --json still prints one JSON object on stdout; the note about the picture is on stderr.
    printed = json.loads(captured.out)
    assert printed["policy"] == "keda"
    assert f"wrote {out}" in captured.err
    check_png(out)
    [(scenario, runs, fig)] = drawn
    assert [run.key for run in runs] == ["kcg", "keda"]
    # The KEDA drawn is the run just printed; kcg is the same as `kcg simulate` runs it.
    assert runs[1].result.replica_seconds == printed["replica_seconds"]
    kcg = simulate(scenario, KcgPolicy(), Noise(seed=3))
    assert ys(line(fig, "lag", "lag:kcg")) == kcg.lag_timeline
    assert ys(line(fig, "replicas", "replicas:kcg")) == kcg.replicas_timeline


def test_cli_plot_best_keda_and_oracle(
    tmp_path: Path,
    scenario_file: Path,
    drawn: Drawn,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "best.png"
    argv = ["simulate", "--scenario", str(scenario_file), "--plot", str(out)]
    assert cli.main([*argv, "--plot-keda", "best", "--plot-oracle"]) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("scenario small with policy kcg")
    assert f"wrote {out}" in stdout
    check_png(out)
    [(_, runs, fig)] = drawn
    assert [run.key for run in runs] == ["kcg", "keda", "oracle"]
    assert "lagThreshold" in runs[1].label and "kcg's SLO-violation seconds" in runs[1].label
    assert runs[2].label.startswith("oracle")
    assert ys(line(fig, "seconds", "seconds:oracle")) == runs[2].result.age_timeline


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("missing/out.png", "does not exist"),
        ("out.jpg", "ending in .png"),
        ("adir.png", "is a directory"),
    ],
)
def test_cli_bad_plot_path_is_a_clear_error_before_any_run(
    tmp_path: Path,
    scenario_file: Path,
    drawn: Drawn,
    capsys: pytest.CaptureFixture[str],
    name: str,
    problem: str,
) -> None:
    (tmp_path / "adir.png").mkdir()
    target = tmp_path / name
    argv = ["simulate", "--scenario", str(scenario_file), "--plot", str(target)]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"kcg simulate: --plot {target}: ")
    assert problem in captured.err
    # Refused before simulating: nothing printed, nothing drawn, nothing written.
    assert captured.out == ""
    assert drawn == []
    assert not (tmp_path / "missing").exists() and not (tmp_path / "out.jpg").exists()


def test_cli_plot_without_matplotlib_says_how_to_get_it(
    scenario_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # As on a machine with `pip install kcg-operator` only (the operator's image).
    import kcg_operator.scaling

    monkeypatch.delattr(kcg_operator.scaling, "plot")
    monkeypatch.delitem(sys.modules, "kcg_operator.scaling.plot")
    for name in [m for m in sys.modules if m.split(".")[0] == "matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    argv = ["simulate", "--scenario", str(scenario_file), "--plot", str(tmp_path / "x.png")]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        "kcg simulate: --plot needs matplotlib: pip install 'kcg-operator[plot]'"
    )
    assert captured.out == ""
    # Without --plot the simulator needs no matplotlib at all.
    assert cli.main(argv[:3]) == 0
    assert capsys.readouterr().out.startswith("scenario small with policy kcg")


# -- make bench-scaling ------------------------------------------------------------------


def test_keda_pick_is_the_tables_keda_best_else_the_closest_front_point() -> None:
    points = [
        Point("careful", 100, 0, 900),
        Point("defaults", 200, 0, 800),
        Point("careful", 400, 12, 500),
        Point("careful", 800, 30, 400),
    ]
    chosen, why = keda_pick(points, kcg_violations=5)
    assert chosen == Point("defaults", 200, 0, 800)
    assert "cheapest" in why
    # Where KEDA never gets down to kcg's violations: the front point nearest to them.
    far = [Point("careful", 400, 12, 500), Point("careful", 800, 30, 400)]
    chosen, why = keda_pick(far, kcg_violations=5)
    assert chosen == Point("careful", 400, 12, 500)
    assert "closest" in why


def test_bench_writes_one_picture_per_scenario_and_lists_them_in_its_json(
    tmp_path: Path, drawn: Drawn, capsys: pytest.CaptureFixture[str]
) -> None:
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    for name in ("one", "two"):
        (scenarios / f"{name}.yaml").write_text(yaml.safe_dump({**SMALL, "name": name}))
    pictures = tmp_path / "pictures"
    argv = ["--scenarios", str(scenarios), "--seeds", "3,4", "--jobs", "1", "--beam", "4"]
    assert bench.main([*argv, "--plot-dir", str(pictures)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    figures = json.loads(lines[-1])
    expected = {name: str(pictures / f"{name}-seed3.png") for name in ("one", "two")}
    assert figures["plots"] == expected
    assert sorted(p.name for p in pictures.iterdir()) == ["one-seed3.png", "two-seed3.png"]
    for path in expected.values():
        check_png(Path(path))
    assert any(f"2 PNGs in {pictures}/" in line for line in lines)
    # The KEDA drawn is the table's "KEDA best" run, the kcg and oracle the table's too.
    for scenario, runs, _ in drawn:
        shown = figures["scenarios"][scenario.name]["seed 3"]
        kcg, keda, oracle = (run.result for run in runs)
        assert kcg.replica_seconds == shown["kcg"]["replica_seconds"]
        assert kcg.slo_violation_seconds == shown["kcg"]["slo_violation_seconds"]
        best = shown["keda_best_at_kcg_slo"]
        assert best is not None
        assert keda.replica_seconds == best["replica_seconds"]
        assert f"lagThreshold {best['lag_threshold']:,}" in runs[1].label
        assert oracle.replica_seconds == shown["oracle"]["replica_seconds"]
    assert len(drawn) == 2


def test_bench_draws_nothing_without_a_plot_dir_and_checks_plot_seed(
    tmp_path: Path, drawn: Drawn, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "one.yaml").write_text(yaml.safe_dump({**SMALL, "name": "one"}))
    argv = ["--scenarios", str(tmp_path), "--seeds", "", "--jobs", "1", "--beam", "4"]
    assert bench.main(argv) == 0
    assert "plots" not in json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert drawn == []
    refused = [*argv[:3], "3", "--plot-dir", str(tmp_path / "p"), "--plot-seed", "9"]
    assert bench.main(refused) == 2
    assert "--plot-seed" in capsys.readouterr().err
