"""`kcg simulate`: replay a traffic scenario against a scaling policy, one second per tick.

The world (:mod:`kcg_operator.scaling.world`): a topic with ``partitions`` partitions,
producers at the scenario's rate, consumer replicas of ``per_replica_rate`` messages/s
each, a start-up delay for new replicas, a cooperative-sticky rebalance that pauses only
the moved partitions, commits every second. With a noise seed
(:mod:`kcg_operator.scaling.noise`), traffic jitters, replicas differ in speed and the
policy sees offsets some seconds late.

The policy sees only what the operator sees: end and committed offsets, Burrow statuses
and the group's assignment, every poll interval (the scaling spec's, or the HPA's 15 s
for the keda policy), and each partition's lag and seconds behind computed as the
operator computes them, by :func:`lag.partition_lags` from an (end offset, time) history
kept per poll and the timestamps of the first unconsumed messages the operator would
read (:func:`lag.positions_to_read`). The oracle policy is different on purpose: it knows
the whole future and replays the cheapest schedule that meets the SLO (:mod:`.oracle`).

Scenario file (YAML)::

    partitions: 12
    duration_seconds: 3600
    initial_replicas: 2
    initial_backlog: 0             # messages at t=0, spread like production
    slo_seconds: 60                # oldest unconsumed message must be younger than this
    per_replica_rate: 100          # messages/s one replica can process
    startup_seconds: 20
    rebalance_pause_seconds: 5
    rate: [{at: 0, rate: 300}, {at: 600, rate: 1100}]
    weights: [1, 1, 4, ...]        # optional, one per partition
    broker_errors: [{from: 900, to: 960}]   # optional: seconds the broker cannot be asked
    poison: [{partition: 3, from: 600, to: 3600}]  # optional: a consumer stuck on a message
    scaling: {minReplicas: 1, maxReplicas: 12, lagPerReplica: 3000, maxTimeLagSeconds: 60}
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kcg_operator.scaling import health, timelag
from kcg_operator.scaling import lag as lagmath
from kcg_operator.scaling.keda import KedaPolicy
from kcg_operator.scaling.noise import Noise, measurement_delays
from kcg_operator.scaling.oracle import OraclePolicy
from kcg_operator.scaling.policy import KcgPolicy, Observation, PartitionKey, ScalingPolicy
from kcg_operator.scaling.scenario import (
    RateStep,
    Scenario,
    ScenarioError,
    load_scenario,
    parse_scenario,
)
from kcg_operator.scaling.world import Traffic, World, build_traffic, fair_share, sticky_assign

TOPIC = "sim"

#: The per-second records of a :class:`SimResult` (left out of its JSON).
TIMELINES = ("replicas_timeline", "produced_timeline", "lag_timeline", "age_timeline")

PolicyFactory = Callable[[Scenario, Noise | None], ScalingPolicy]

POLICIES: dict[str, PolicyFactory] = {
    "kcg": lambda scenario, noise: KcgPolicy(),
    "keda": lambda scenario, noise: KedaPolicy(),
    "oracle": lambda scenario, noise: OraclePolicy.plan(scenario, noise),
}


@dataclass
class SimResult:
    """What one run measured (the --json object)."""

    scenario: str
    policy: str
    slo_seconds: float
    slo_violation_seconds: int
    max_time_lag_seconds: float
    max_lag: int
    final_lag: int
    replica_seconds: int
    scale_events: int
    max_replicas: int
    min_replicas: int
    produced: int
    consumed: int
    last_reason: str
    seed: int | None = None
    replicas_timeline: list[int] = field(default_factory=list, repr=False)
    """Replicas of the Deployment during second t (index t)."""
    produced_timeline: list[int] = field(default_factory=list, repr=False)
    """Messages produced during second t."""
    lag_timeline: list[int] = field(default_factory=list, repr=False)
    """Messages not yet consumed at the end of second t (what ``max_lag`` is the max of)."""
    age_timeline: list[float] = field(default_factory=list, repr=False)
    """Age of the oldest judged message at the end of second t: what the SLO is judged on."""


@dataclass(frozen=True)
class _Snapshot:
    """Offsets and the assignment at one second, for a policy that sees them late."""

    time: int
    end: tuple[int, ...]
    committed: tuple[int | None, ...]
    members: tuple[str, ...]
    layout: tuple[tuple[int, ...], ...]

    @property
    def assignment(self) -> dict[str, tuple[int, ...]]:
        return dict(zip(self.members, self.layout, strict=True))


def _snapshot(world: World) -> _Snapshot:
    count = world.member_count
    return _Snapshot(
        world.time,
        tuple(world.end),
        tuple(world.committed),
        tuple(p.name for p in world.pods[:count]),
        tuple(world.owned(i) for i in range(count)),
    )


History = dict[PartitionKey, tuple[timelag.Point, ...]]
"""The (end offset, time) tables the operator keeps per partition, one point per poll."""


def _observe(
    world: World,
    tracker: health.HealthTracker[PartitionKey] | None,
    ok: bool,
    seen: _Snapshot | None = None,
    from_log_start: bool = True,
    history: History | None = None,
) -> Observation:
    """What the operator would see now; ``seen`` holds offsets that arrive late.

    Lag and seconds behind come from :func:`lag.partition_lags`, as in the operator:
    ``history`` (updated in place with this poll's end offsets) gives the interpolated
    ages, and the timestamps :func:`lag.positions_to_read` asks for are read from the
    traffic, as the collector reads them from the topic. With ``from_log_start`` a
    partition the group never committed on waits from the log start (offset 0 here), as
    for consumers that reset to earliest; otherwise from the end (``latest``).
    """
    sc = world.scenario
    if not ok:
        return Observation(
            time_s=float(world.time),
            end_offsets={},
            committed={},
            replicas=world.replicas,
            partitions=sc.partitions,
            broker_ok=False,
        )
    now = float(world.time)
    snap = seen if seen is not None else _snapshot(world)
    offsets: dict[PartitionKey, tuple[int, int | None]] = {
        (TOPIC, p): (snap.end[p], c) for p, c in enumerate(snap.committed)
    }
    starts = dict.fromkeys(offsets, 0)
    known = {} if history is None else history
    # An end offset goes into the history with the time it was the end: the broker
    # answers ListOffsets with the present, so the operator's (end offset, time) pairs are
    # exact; what arrives late is the group's progress.
    ends = {k: end for k, (end, _) in offsets.items()}
    known.update(timelag.updated(known, float(snap.time), ends))
    wanted = lagmath.positions_to_read(
        offsets, log_starts=starts, from_earliest=from_log_start, history=known
    )
    stamps = {(k, at): float(world.traffic.produced_at(k[1], at)) for k, at in wanted}
    lags = lagmath.partition_lags(
        offsets,
        now_s=now,
        log_starts=starts,
        from_earliest=from_log_start,
        history=known,
        produced_at=stamps,
    )
    owned = {(TOPIC, p) for ps in snap.assignment.values() for p in ps}
    statuses = (
        tracker.observe(now, {k: (p.end, p.position) for k, p in lags.items()}, owned)
        if tracker is not None
        else {}
    )
    return Observation.from_lags(
        now,
        lags,
        world.replicas,
        partitions=sc.partitions,
        statuses=statuses,
        assignment={m: [(TOPIC, p) for p in ps] for m, ps in snap.assignment.items()},
        ready_replicas=len(world.members()),
    )


def simulate(
    scenario: Scenario,
    policy: ScalingPolicy,
    noise: Noise | None = None,
    traffic: Traffic | None = None,
) -> SimResult:
    """Run ``scenario`` under ``policy`` (with ``noise`` if given) and measure it.

    ``traffic`` may pass production already built for this scenario and noise (the
    benchmark shares it between runs).
    """
    world = World(scenario, noise, traffic)
    spec = scenario.scaling
    poll = policy.poll_interval_seconds(spec)
    delays = measurement_delays(noise, scenario.duration_seconds // poll + 1)
    keep = max(delays, default=0)
    history: list[_Snapshot] = []
    tables: History = {}
    tracker: health.HealthTracker[PartitionKey] | None = (
        health.HealthTracker() if policy.observes_health else None
    )
    violation = 0
    max_age = 0.0
    max_lag = world.lag()
    replica_seconds = 0
    events = 0
    timeline: list[int] = []
    lag_timeline: list[int] = []
    age_timeline: list[float] = []
    last_reason = ""
    last_seen = -1
    for t in range(scenario.duration_seconds):
        if keep:
            history.append(_snapshot(world))
            if len(history) > keep + 1:
                history.pop(0)
        if t % poll == 0:
            seen: _Snapshot | None = None
            if keep:
                # Offsets from `delay` seconds ago, never older than the last ones seen.
                back = min(delays[t // poll], len(history) - 1, t - last_seen - 1)
                seen = history[-1 - max(back, 0)]
                last_seen = t - max(back, 0)
            observation = _observe(
                world,
                tracker,
                scenario.broker_ok_at(t),
                seen,
                policy.counts_from_log_start,
                tables,
            )
            decision = policy.decide(observation, spec)
            last_reason = decision.reason
            if decision.should_patch and decision.desired != world.replicas:
                world.scale(decision.desired)
                events += 1
        replica_seconds += world.replicas
        timeline.append(world.replicas)
        world.step()
        age = world.oldest_age()
        age_timeline.append(age)
        max_age = max(max_age, age)
        if age > scenario.slo_seconds:
            violation += 1
        lag_timeline.append(world.lag())
        max_lag = max(max_lag, lag_timeline[-1])
    return SimResult(
        scenario=scenario.name,
        policy=policy.name,
        slo_seconds=scenario.slo_seconds,
        slo_violation_seconds=violation,
        max_time_lag_seconds=max_age,
        max_lag=max_lag,
        final_lag=world.lag(),
        replica_seconds=replica_seconds,
        scale_events=events,
        max_replicas=max(timeline) if timeline else world.replicas,
        min_replicas=min(timeline) if timeline else world.replicas,
        produced=world.produced_total,
        consumed=world.consumed_total,
        last_reason=last_reason,
        seed=None if noise is None else noise.seed,
        replicas_timeline=timeline,
        produced_timeline=_produced_per_second(world.traffic),
        lag_timeline=lag_timeline,
        age_timeline=age_timeline,
    )


def _produced_per_second(traffic: Traffic) -> list[int]:
    totals = [sum(ends) for ends in zip(*traffic.cum, strict=True)]
    starts = [sum(traffic.base), *totals]
    return [after - before for before, after in zip(starts, totals, strict=False)]


def result_json(result: SimResult) -> dict[str, Any]:
    data = asdict(result)
    for name in TIMELINES:
        del data[name]
    return data


def _summary(result: SimResult) -> str:
    seed = "" if result.seed is None else f" (noise seed {result.seed})"
    lines = [
        f"scenario {result.scenario} with policy {result.policy}{seed}",
        f"  SLO ({result.slo_seconds:g} s) violated for {result.slo_violation_seconds} s;"
        f" oldest message waited at most {result.max_time_lag_seconds:g} s",
        f"  replicas: {result.min_replicas}..{result.max_replicas},"
        f" {result.scale_events} scale events, {result.replica_seconds} replica-seconds",
        f"  lag: max {result.max_lag}, final {result.final_lag}",
        f"  last decision: {result.last_reason}",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="kcg simulate",
        description="Replay a traffic scenario against a scaling policy (one-second ticks).",
    )
    parser.add_argument("--scenario", required=True, type=Path, help="scenario YAML file")
    parser.add_argument("--policy", choices=sorted(POLICIES), default="kcg")
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="add the benchmark's noise (rate jitter, replica speeds, late offsets), seeded",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="FILE.png",
        help="also draw traffic, lag, seconds behind and replicas over time into a PNG: kcg"
        " and KEDA on the same axes, whatever --policy is (needs matplotlib:"
        " pip install 'kcg-operator[plot]')",
    )
    parser.add_argument(
        "--plot-keda",
        choices=("installed", "best"),
        default="installed",
        help="the KEDA drawn: 'installed' (its defaults, lagThreshold = lagPerReplica, as"
        " --policy keda runs it) or 'best' (lagThreshold swept as make bench-scaling does:"
        " the cheapest run at kcg's SLO-violation seconds; some seconds more)",
    )
    parser.add_argument(
        "--plot-oracle",
        action="store_true",
        help="draw the oracle too (it searches the schedule: can take a minute;"
        " free with --policy oracle)",
    )
    args = parser.parse_args(argv)
    if args.plot is not None:
        # Checked before the run, so a typo or a missing library costs no simulation.
        try:
            from kcg_operator.scaling import plot
        except ImportError as exc:
            print(
                f"kcg simulate: --plot needs {(exc.name or 'matplotlib').split('.')[0]}:"
                " pip install 'kcg-operator[plot]'",
                file=sys.stderr,
            )
            return 2
        problem = plot.check_path(args.plot)
        if problem is not None:
            print(f"kcg simulate: --plot {args.plot}: {problem}", file=sys.stderr)
            return 2
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        print(f"kcg simulate: {args.scenario}: {exc}", file=sys.stderr)
        return 2
    noise = None if args.seed is None else Noise(seed=args.seed)
    policy = POLICIES[args.policy](scenario, noise)
    result = simulate(scenario, policy, noise)
    if args.json:
        print(json.dumps(result_json(result), sort_keys=True))
    else:
        print(_summary(result))
    if args.plot is not None:
        return _plot(args, scenario, noise, policy, result)
    return 0


def _plot(
    args: argparse.Namespace,
    scenario: Scenario,
    noise: Noise | None,
    policy: ScalingPolicy,
    result: SimResult,
) -> int:
    """Draw kcg and KEDA (and the oracle) for ``--plot``, reusing the run just made."""
    from kcg_operator.scaling import plot
    from kcg_operator.scaling.bench import comparison_runs

    runs = comparison_runs(
        scenario,
        noise,
        keda=args.plot_keda,
        oracle=args.plot_oracle,
        known={args.policy: result},
        plan=policy.chosen if isinstance(policy, OraclePolicy) else None,
    )
    try:
        written = plot.plot(scenario, runs, args.plot)
    except plot.PlotError as exc:
        print(f"kcg simulate: --plot: {exc}", file=sys.stderr)
        return 2
    drawn = "; ".join(run.label for run in runs)
    print(f"kcg simulate: wrote {written} ({drawn})", file=sys.stderr if args.json else sys.stdout)
    return 0


__all__ = [
    "POLICIES",
    "RateStep",
    "Scenario",
    "ScenarioError",
    "SimResult",
    "World",
    "build_traffic",
    "fair_share",
    "load_scenario",
    "main",
    "parse_scenario",
    "result_json",
    "simulate",
    "sticky_assign",
]
