"""Pictures of simulated runs: traffic, lag, seconds behind and replicas over time.

Four stacked panels share the time axis, every run on the same axes:

1. **traffic**: messages produced per second (the same for every run: policies are
   compared on identical traffic);
2. **lag**: messages not yet consumed;
3. **seconds behind**: age of the oldest message the SLO judges, with the SLO
   (``maxTimeLagSeconds``) as a horizontal line;
4. **replicas**: the Deployment's replicas, a marker at every scale event, and the
   partition count (replicas above it idle; kcg never goes past it).

Everything drawn is the simulator's own per-second record (:class:`SimResult`'s
``*_timeline`` fields); nothing here computes lag, ages or replicas again, so a picture
and the figures printed beside it cannot disagree. Broker outages and poisoned
partitions of the scenario are shaded on every panel.

Drawing uses matplotlib's Agg canvas on a bare :class:`Figure` (no pyplot, no display,
no global state), so it works in the benchmark's worker processes and on headless
machines. :func:`figure` builds the figure (tests read its lines back); :func:`write_png`
saves it.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator, MultipleLocator

from kcg_operator.scaling.scenario import Scenario
from kcg_operator.scaling.simulator import SimResult

#: Panel names, top to bottom (each Axes carries its name as its label).
PANELS = ("traffic", "lag", "seconds", "replicas")
#: One colour and line style per policy, so kcg looks the same in every picture.
STYLES: dict[str, tuple[str, str]] = {
    "kcg": ("#1f77b4", "-"),
    "keda": ("#ff7f0e", "-"),
    "oracle": ("#2ca02c", "--"),
}
_OTHER_STYLE = ("#7f7f7f", ":")
SLO_COLOUR = "#d62728"
CAP_COLOUR = "#000000"
BROKER_COLOUR = "#7f7f7f"
#: SLO and cap lines go under the runs' lines (2): a run sitting at the cap stays visible.
REFERENCE_Z = 1.5
POISON_COLOUR = "#9467bd"
#: Figure size in inches at DPI: 1 300 x 1 000 pixels, readable when a README scales it.
SIZE_INCHES = (13.0, 10.0)
DPI = 100
#: Tick spacings for the time axis, in minutes: the first that gives at most 12 ticks.
_TICK_MINUTES = (1, 2, 5, 10, 15, 20, 30, 60, 120, 240)
#: Characters per legend line: about the panels' width at the legend's font size.
LEGEND_WIDTH = 130


class PlotError(ValueError):
    """Runs that cannot share one picture, or a path a PNG cannot be written to."""


@dataclass(frozen=True)
class Run:
    """One simulated run and how the legend names it."""

    result: SimResult
    label: str

    @property
    def key(self) -> str:
        """The policy's name: it picks the style and names the lines (``lag:kcg``)."""
        return self.result.policy


@dataclass(frozen=True)
class ScaleEvent:
    second: int
    before: int
    after: int


def scale_events(replicas: Sequence[int], initial: int) -> list[ScaleEvent]:
    """Where the replicas timeline changes: the run's scale events.

    The simulator patches the Deployment only to change its replicas, at most once a
    second, so every change of the timeline is one event and every event is a change.
    """
    events: list[ScaleEvent] = []
    before = initial
    for second, count in enumerate(replicas):
        if count != before:
            events.append(ScaleEvent(second, before, count))
        before = count
    return events


def check_path(path: Path) -> str | None:
    """Why a PNG cannot be written to ``path`` (None: it looks writable).

    Checked before a run so a typo does not cost a whole simulation first.
    """
    if path.suffix.lower() != ".png":
        return "the picture is a PNG: give a path ending in .png"
    if path.is_dir():
        return "is a directory"
    parent = path.parent
    if not parent.is_dir():
        return f"directory {parent} does not exist"
    return None


def title(scenario: Scenario, seed: int | None) -> str:
    noise = "clean, no noise" if seed is None else f"noise seed {seed}"
    return f"scenario {scenario.name} ({noise})"


def _subtitle(scenario: Scenario) -> str:
    spec = scenario.scaling
    return (
        f"{scenario.partitions} partitions, {scenario.per_replica_rate:g} msgs/s per replica,"
        f" start-up {scenario.startup_seconds} s, rebalance pause"
        f" {scenario.rebalance_pause_seconds} s; replicas {spec.min_replicas}..{spec.max_replicas},"
        f" lagPerReplica {spec.lag_per_replica:,}"
    )


def run_label(run: Run) -> str:
    """The legend's line for a run: its name, then the figures the benchmark compares."""
    r = run.result
    text = (
        f"{run.label}: {r.slo_violation_seconds:,} s over the SLO,"
        f" {r.replica_seconds:,} replica-s, {r.scale_events} scale events,"
        f" {r.min_replicas}..{r.max_replicas} replicas"
    )
    # A legend wider than the panels would squeeze them (constrained layout).
    return textwrap.fill(text, LEGEND_WIDTH, subsequent_indent="    ")


def slo_seconds(scenario: Scenario) -> float:
    """The SLO line: the spec's maxTimeLagSeconds, else the scenario's judged SLO."""
    spec_slo = scenario.scaling.max_time_lag_seconds
    return float(spec_slo) if spec_slo is not None else scenario.slo_seconds


def _tick_seconds(duration: int) -> int:
    for minutes in _TICK_MINUTES:
        if duration / (minutes * 60) <= 12:
            return minutes * 60
    return _TICK_MINUTES[-1] * 60


def _shade(ax: Axes, scenario: Scenario) -> None:
    for start, end in scenario.broker_errors:
        ax.axvspan(start, end, color=BROKER_COLOUR, alpha=0.15, linewidth=0, gid="broker-error")
    for partition, start, end in scenario.poison:
        end = min(end, scenario.duration_seconds)
        ax.axvspan(
            start, end, color=POISON_COLOUR, alpha=0.1, linewidth=0, gid=f"poison:{partition}"
        )


def _check(scenario: Scenario, runs: Sequence[Run]) -> None:
    if not runs:
        raise PlotError("nothing to draw: no runs")
    for run in runs:
        r = run.result
        if r.scenario != scenario.name:
            raise PlotError(f"run of scenario {r.scenario!r} drawn as {scenario.name!r}")
        lengths = {
            len(r.replicas_timeline),
            len(r.produced_timeline),
            len(r.lag_timeline),
            len(r.age_timeline),
        }
        if lengths != {scenario.duration_seconds}:
            raise PlotError(
                f"{run.label}: timelines of {sorted(lengths)} seconds for a"
                f" {scenario.duration_seconds} s scenario (a result without its timelines?)"
            )
    first = runs[0].result
    for run in runs[1:]:
        if run.result.produced_timeline != first.produced_timeline or run.result.seed != first.seed:
            # One traffic panel for all runs is only honest if they saw the same traffic.
            raise PlotError(f"{run.label} ran on other traffic than {runs[0].label}")


def figure(scenario: Scenario, runs: Sequence[Run]) -> Figure:
    """The four panels for ``runs`` of ``scenario`` (all with the same noise seed)."""
    _check(scenario, runs)
    seed = runs[0].result.seed
    duration = scenario.duration_seconds
    seconds = list(range(duration))
    # Lag and ages are measured at the end of each second; replicas and traffic hold
    # during it (drawn as steps from its start).
    ends = list(range(1, duration + 1))

    fig = Figure(figsize=SIZE_INCHES, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(4, 1, sharex=True, height_ratios=(2, 3, 3, 3))
    traffic, lag, behind, replicas = axes
    for ax, name in zip(axes, PANELS, strict=True):
        ax.set_label(name)
        ax.grid(True, alpha=0.3)
        _shade(ax, scenario)

    traffic.step(
        seconds,
        runs[0].result.produced_timeline,
        where="post",
        color="#444444",
        linewidth=0.7,
        gid="traffic",
    )
    traffic.set_ylabel("traffic\n(msgs/s produced)")
    traffic.set_ylim(bottom=0)

    run_handles: list[Line2D] = []
    for run in runs:
        colour, style = STYLES.get(run.key, _OTHER_STYLE)
        r = run.result
        (handle,) = lag.plot(
            ends, r.lag_timeline, color=colour, linestyle=style, linewidth=1.2, gid=f"lag:{run.key}"
        )
        run_handles.append(handle)
        behind.plot(
            ends,
            r.age_timeline,
            color=colour,
            linestyle=style,
            linewidth=1.2,
            gid=f"seconds:{run.key}",
        )
        replicas.step(
            seconds,
            r.replicas_timeline,
            where="post",
            color=colour,
            linestyle=style,
            linewidth=1.5,
            gid=f"replicas:{run.key}",
        )
        events = scale_events(r.replicas_timeline, scenario.initial_replicas)
        for gid, marker, chosen in (
            (f"scale-up:{run.key}", "^", [e for e in events if e.after > e.before]),
            (f"scale-down:{run.key}", "v", [e for e in events if e.after < e.before]),
        ):
            if chosen:
                replicas.plot(
                    [e.second for e in chosen],
                    [e.after for e in chosen],
                    linestyle="none",
                    marker=marker,
                    markersize=6,
                    color=colour,
                    gid=gid,
                )

    lag.set_ylabel("lag\n(messages)")
    lag.set_ylim(bottom=0)
    lag.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))

    slo = slo_seconds(scenario)
    slo_text = (
        f"SLO: maxTimeLagSeconds {slo:g} s"
        if scenario.scaling.max_time_lag_seconds is not None
        else f"SLO: {slo:g} s (the scenario's; the spec sets no maxTimeLagSeconds)"
    )
    behind.axhline(
        slo,
        color=SLO_COLOUR,
        linestyle="--",
        linewidth=1.2,
        zorder=REFERENCE_Z,
        gid="slo",
        label=slo_text,
    )
    if scenario.slo_seconds != slo:
        behind.axhline(
            scenario.slo_seconds,
            color=SLO_COLOUR,
            linestyle=":",
            linewidth=1.0,
            zorder=REFERENCE_Z,
            gid="slo-judged",
            label=f"violations counted above {scenario.slo_seconds:g} s (scenario slo_seconds)",
        )
        judged = f"violations counted above {scenario.slo_seconds:g} s"
        _line_note(behind, scenario.slo_seconds, judged, SLO_COLOUR, right=True)
    behind.set_ylabel("seconds behind\n(age of oldest message, s)")
    peak_age = max(max(r.result.age_timeline) for r in runs)
    behind.set_ylim(bottom=0, top=max(slo * 1.3, scenario.slo_seconds * 1.3, peak_age * 1.1))
    _line_note(behind, slo, slo_text, SLO_COLOUR)

    spec = scenario.scaling
    replicas.axhline(
        scenario.partitions,
        color=CAP_COLOUR,
        linestyle=":",
        linewidth=1.2,
        zorder=REFERENCE_Z,
        gid="partition-cap",
        label=f"partition cap: {scenario.partitions} partitions (more replicas would idle)",
    )
    if spec.max_replicas < scenario.partitions:
        replicas.axhline(
            spec.max_replicas,
            color=CAP_COLOUR,
            linestyle="-.",
            linewidth=1.0,
            zorder=REFERENCE_Z,
            gid="max-replicas",
            label=f"maxReplicas {spec.max_replicas}",
        )
    _line_note(
        replicas,
        scenario.partitions,
        f"partition cap: {scenario.partitions} (replicas above it idle)",
        CAP_COLOUR,
    )
    if spec.max_replicas < scenario.partitions:
        _line_note(replicas, spec.max_replicas, f"maxReplicas {spec.max_replicas}", CAP_COLOUR)
    top = max(scenario.partitions, *(r.result.max_replicas for r in runs))
    replicas.set_ylim(bottom=0, top=top + max(2, math.ceil(top * 0.15)))
    replicas.yaxis.set_major_locator(MaxNLocator(integer=True))
    replicas.set_ylabel("replicas\n(\u25b2 scale up, \u25bc down)")

    replicas.set_xlim(0, duration)
    replicas.xaxis.set_major_locator(MultipleLocator(_tick_seconds(duration)))
    replicas.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 60:g}"))
    replicas.set_xlabel("time (minutes)")

    handles: list[Artist] = list(run_handles)
    labels = [run_label(run) for run in runs]
    if scenario.broker_errors:
        handles.append(Patch(color=BROKER_COLOUR, alpha=0.3))
        labels.append("broker unreachable (policies hold)")
    if scenario.poison:
        parts = ", ".join(str(p) for p in sorted({p for p, _, _ in scenario.poison}))
        handles.append(Patch(color=POISON_COLOUR, alpha=0.3))
        labels.append(
            f"partition {parts} poisoned (its lag counts, its age is left out of the SLO)"
        )
    # Above the top panel rather than a figure legend: constrained layout then keeps it
    # clear of the title.
    traffic.legend(
        handles,
        labels,
        loc="lower left",
        bbox_to_anchor=(0.0, 1.02),
        borderaxespad=0.0,
        fontsize="medium",
        frameon=False,
    )
    fig.suptitle(f"{title(scenario, seed)}\n{_subtitle(scenario)}", fontsize="large")
    return fig


def _line_note(ax: Axes, y: float, text: str, colour: str, *, right: bool = False) -> None:
    """Name a horizontal line where it is drawn (at one end, just above it): nearer the
    eye than a legend, and never on top of the data's peaks at the right."""
    ax.annotate(
        text,
        xy=(0.995 if right else 0.005, y),
        xycoords=("axes fraction", "data"),
        xytext=(0, 2),
        textcoords="offset points",
        color=colour,
        fontsize="small",
        va="bottom",
        ha="right" if right else "left",
    )


def write_png(fig: Figure, path: Path) -> Path:
    """Save ``fig`` as a PNG at ``path``; a path that cannot be written is a PlotError."""
    problem = check_path(path)
    if problem is not None:
        raise PlotError(f"cannot write {path}: {problem}")
    try:
        fig.savefig(path, format="png", dpi=DPI)
    except OSError as exc:
        raise PlotError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def plot(scenario: Scenario, runs: Sequence[Run], path: Path) -> Path:
    """Draw ``runs`` of ``scenario`` and write the PNG to ``path``."""
    return write_png(figure(scenario, runs), path)


__all__ = [
    "PANELS",
    "PlotError",
    "Run",
    "ScaleEvent",
    "check_path",
    "figure",
    "plot",
    "run_label",
    "scale_events",
    "slo_seconds",
    "title",
    "write_png",
]
