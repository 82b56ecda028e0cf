"""How many replicas a consumer group should run: a pure function of what was observed.

``decide(observation, spec, state) -> (Decision, new_state)``. The caller (the operator's
sweep, or the simulator) keeps one :class:`PolicyState` per group and hands it back on the
next poll; nothing else is remembered anywhere, so every decision can be replayed.

How a decision is made, in order:

1. **Broker trouble never lowers replicas.** An observation the broker did not answer (or
   one without partitions) keeps the current count, only clamped into the spec's bounds.
2. **Lag rule.** Each partition asks for ``lag / lagPerReplica`` replicas, but never more
   than one: a backlog on one partition is drained by one consumer, whatever its size.
3. **Time rule** (``maxTimeLagSeconds`` set). Per partition, the consumption rate needed so
   that every waiting message is consumed before it is ``maxTimeLagSeconds`` old (using the
   partition's (end offset, time) history, kafka-lag-exporter style) and at least the
   production rate; the sum over partitions divided by one replica's measured rate gives
   replicas. Partitions spread over replicas by count (cooperative-sticky balances counts,
   not load), so the count must also leave the busiest partition's consumer enough room.
   One replica's rate is measured from the group's own progress (committed offsets per
   member); until it is known, only the lag rule speaks.
4. **Stalled partitions do not scale.** Lag on partitions Burrow calls STOP or STALL is
   ignored: their consumer is not progressing, more replicas would not help.
5. **Bounds.** Never above the partition count nor ``maxReplicas``; never below
   ``minReplicas`` (at least one while there is traffic); zero only with ``scaleToZero``,
   after ``idleSeconds`` without lag or new messages, on a poll the broker answered.
6. **Stabilization.** Up at once; down only to the highest recommendation of the last
   ``scaleDownStabilizationSeconds`` (the HPA's scale-down rule), so a dip does not flap.
7. **Paused** computes and explains but asks for no patch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kcg_operator.api.models import ScalingSpec
from kcg_operator.scaling import health, timelag

PartitionKey = tuple[str, int]
"""(topic, partition)."""

#: Fraction of maxTimeLagSeconds the time rule aims for: the rest absorbs the poll
#: interval and the start-up of new replicas, which the policy cannot see.
SLO_TARGET_FRACTION = 0.8
#: Shortest horizon the time rule plans over, so late messages ask for a lot but not infinity.
MIN_HORIZON_SECONDS = 10.0
#: Share of a replica's measured rate the time rule plans to use: headroom for noise.
TARGET_UTILIZATION = 0.9
#: Rates measured from integer offsets over one poll interval carry rounding noise; a
#: requirement within this fraction of a whole replica count is met by that count.
RATE_TOLERANCE = 0.02
#: Commits trail consumption by up to the commit interval (5 s by default in Kafka
#: clients); lag below this many seconds of production is in flight, not a backlog.
IN_FLIGHT_SECONDS = 5.0
#: How fast a lower rate observed under full load replaces the remembered per-replica rate.
CAPACITY_DECAY = 0.3
#: (end offset, time) points kept per partition for the time rule and time-lag estimates.
HISTORY_POINTS = 40


@dataclass(frozen=True)
class Observation:
    """What one poll saw of one group.

    ``end_offsets`` and ``committed`` are keyed by (topic, partition); a committed offset is
    None when the group never committed on that partition. ``replicas`` is the Deployment's
    current spec.replicas. ``partitions`` defaults to the number of end offsets.
    ``broker_ok`` is False when the broker could not be asked (then offsets may be empty).
    ``statuses`` are Burrow statuses per partition (see :mod:`health`), ``assignment`` the
    group's members and their partitions (describe group), ``ready_replicas`` the
    Deployment's ready count; all three are optional refinements.
    """

    time_s: float
    end_offsets: Mapping[PartitionKey, int]
    committed: Mapping[PartitionKey, int | None]
    replicas: int
    partitions: int | None = None
    broker_ok: bool = True
    statuses: Mapping[PartitionKey, str] = field(default_factory=dict)
    assignment: Mapping[str, Sequence[PartitionKey]] | None = None
    ready_replicas: int | None = None

    @classmethod
    def from_offsets(
        cls,
        time_s: float,
        offsets: Mapping[PartitionKey, tuple[int, int | None]],
        replicas: int,
        *,
        partitions: int | None = None,
        broker_ok: bool = True,
        statuses: Mapping[PartitionKey, str] | None = None,
        assignment: Mapping[str, Sequence[PartitionKey]] | None = None,
        ready_replicas: int | None = None,
    ) -> Observation:
        """Build from a (topic, partition) -> (end offset, committed or None) mapping."""
        return cls(
            time_s=time_s,
            end_offsets={k: end for k, (end, _) in offsets.items()},
            committed={k: committed for k, (_, committed) in offsets.items()},
            replicas=replicas,
            partitions=partitions,
            broker_ok=broker_ok,
            statuses=statuses or {},
            assignment=assignment,
            ready_replicas=ready_replicas,
        )

    @property
    def partition_count(self) -> int:
        return len(self.end_offsets) if self.partitions is None else self.partitions

    def lag(self, key: PartitionKey) -> int:
        committed = self.committed.get(key)
        if committed is None:
            return 0
        return max(0, self.end_offsets[key] - committed)


@dataclass(frozen=True)
class PolicyState:
    """What the policy remembers between polls of one group (keep one per group)."""

    last: Observation | None = None
    history: Mapping[PartitionKey, tuple[timelag.Point, ...]] = field(default_factory=dict)
    recommendations: tuple[tuple[float, int], ...] = ()
    per_replica_rate: float | None = None
    rate_saturated: bool = False
    idle_since: float | None = None
    last_scale_time: float | None = None


@dataclass(frozen=True)
class Decision:
    """The outcome of one poll: what to set, why, and the figures behind it."""

    desired: int
    current: int
    reason: str
    should_patch: bool
    recommendation: int
    capped_by: str | None
    partitions: int
    total_lag: int
    lag_status: str
    max_time_lag_seconds: float | None = None
    time_lag_seconds: Mapping[PartitionKey, float | None] = field(default_factory=dict)
    production_rate: float | None = None
    per_replica_rate: float | None = None
    paused: bool = False
    broker_ok: bool = True


class ScalingPolicy(Protocol):
    """A stateful adapter around a pure policy, as the simulator drives it."""

    name: str

    def poll_interval_seconds(self, spec: ScalingSpec) -> int: ...

    def decide(self, observation: Observation, spec: ScalingSpec) -> Decision: ...


def decide(
    observation: Observation, spec: ScalingSpec, state: PolicyState | None = None
) -> tuple[Decision, PolicyState]:
    """The desired replicas for one poll, and the state to pass to the next poll."""
    state = state or PolicyState()
    if not observation.broker_ok or observation.partition_count <= 0:
        return _hold_on_error(observation, spec, state), state
    return _decide_observed(observation, spec, state)


def _bounds(spec: ScalingSpec, partitions: int) -> tuple[int, int, str]:
    """(floor while active, cap, what the cap is) for ``partitions`` partitions."""
    if partitions > 0 and partitions <= spec.max_replicas:
        cap, cap_name = partitions, "partitions"
    else:
        cap, cap_name = spec.max_replicas, "maxReplicas"
    floor = min(max(spec.min_replicas, 1), cap)
    return floor, cap, cap_name


def _hold_on_error(observation: Observation, spec: ScalingSpec, state: PolicyState) -> Decision:
    current = observation.replicas
    known = observation.partition_count
    if known <= 0 and state.last is not None:
        known = state.last.partition_count
    floor, cap, cap_name = _bounds(spec, known)
    lowest = 0 if spec.scale_to_zero.enabled else floor
    desired = max(lowest, min(current, cap))
    if desired < current:
        capped_by = cap_name
    elif desired > current:
        capped_by = "minReplicas"
    else:
        capped_by = "brokerUnavailable"
    why = "broker unreachable" if not observation.broker_ok else "no partitions reported"
    if desired == current:
        reason = f"{why}: keeping {current} replicas"
    else:
        reason = f"{why}: {current}→{desired} only to stay within {lowest}..{cap} replicas"
    if spec.paused:
        reason = f"paused: {reason}"
    return Decision(
        desired=desired,
        current=current,
        reason=reason,
        should_patch=desired != current and not spec.paused,
        recommendation=desired,
        capped_by=capped_by,
        partitions=known,
        total_lag=0,
        lag_status=health.OK,
        per_replica_rate=state.per_replica_rate,
        paused=spec.paused,
        broker_ok=observation.broker_ok,
    )


@dataclass(frozen=True)
class _Needs:
    """Per-rule replica counts and the figures that explain them."""

    by_lag: int
    by_time: int | None
    helpful: int
    total_lag: int
    lag_partitions: int
    production: float | None
    required_rate: float | None
    ignored: tuple[tuple[PartitionKey, str], ...]


def _decide_observed(
    obs: Observation, spec: ScalingSpec, state: PolicyState
) -> tuple[Decision, PolicyState]:
    now = obs.time_s
    current = obs.replicas
    partitions = obs.partition_count
    floor, cap, cap_name = _bounds(spec, partitions)

    history = _updated_history(state.history, obs)
    last = state.last if state.last is not None and obs.time_s > state.last.time_s else None
    per_replica, saturated = _updated_rate(state, obs, last)
    needs = _needs(obs, spec, last, history, per_replica, saturated)

    idle_since = _idle_since(state, obs, last)
    to_zero = (
        spec.scale_to_zero.enabled
        and idle_since is not None
        and now - idle_since >= spec.scale_to_zero.idle_seconds
    )
    # Asleep at zero with nothing waiting, on a first look (no rates yet): nothing says
    # traffic came back, so there is no reason to wake the group.
    asleep = spec.scale_to_zero.enabled and current == 0 and last is None and needs.total_lag == 0

    raw = max(needs.by_lag, needs.by_time or 0)
    if raw == 0 and (needs.helpful > 0 or current > 0):
        raw = 1
    capped_by: str | None = None
    if to_zero or asleep:
        recommendation = 0
    elif raw > cap:
        recommendation, capped_by = cap, cap_name
    elif raw < floor:
        recommendation, capped_by = floor, "minReplicas"
    else:
        recommendation = raw

    window = spec.scale_down_stabilization_seconds
    seeded = state.recommendations
    if state.last is None and not seeded:
        # A fresh state (a new group, or the operator restarted) has not watched the group
        # for a window yet: count the replicas it found as a recent recommendation, so a
        # restart never causes a scale-down before a full window of evidence.
        seeded = ((now, current),)
    recommendations = (*((t, r) for t, r in seeded if t > now - window), (now, recommendation))
    if recommendation >= current or to_zero or asleep:
        desired = recommendation
    else:
        held = max(r for _, r in recommendations)
        desired = min(current, held, cap)
        if desired > recommendation:
            capped_by = "stabilization"

    reason = _explain(
        obs,
        spec,
        current,
        desired,
        recommendation,
        capped_by,
        cap,
        needs,
        per_replica,
        saturated,
        to_zero,
        idle_since,
    )
    should_patch = desired != current and not spec.paused
    if spec.paused:
        reason = f"paused: {reason}"

    statuses = [s for k, s in obs.statuses.items() if k in obs.end_offsets]
    time_lags = _time_lags(obs, history)
    known = [lag for lag in time_lags.values() if lag is not None]
    decision = Decision(
        desired=desired,
        current=current,
        reason=reason,
        should_patch=should_patch,
        recommendation=recommendation,
        capped_by=capped_by,
        partitions=partitions,
        total_lag=needs.total_lag,
        lag_status=health.group_status(statuses),
        max_time_lag_seconds=max(known) if known else None,
        time_lag_seconds=time_lags,
        production_rate=needs.production,
        per_replica_rate=per_replica,
        paused=spec.paused,
    )
    new_state = PolicyState(
        last=obs,
        history=history,
        recommendations=recommendations,
        per_replica_rate=per_replica,
        rate_saturated=saturated,
        idle_since=idle_since,
        last_scale_time=now if should_patch else state.last_scale_time,
    )
    return decision, new_state


def _updated_history(
    history: Mapping[PartitionKey, tuple[timelag.Point, ...]], obs: Observation
) -> dict[PartitionKey, tuple[timelag.Point, ...]]:
    updated: dict[PartitionKey, tuple[timelag.Point, ...]] = {}
    for key, end in obs.end_offsets.items():
        points = timelag.add_point(history.get(key, ()), (end, obs.time_s), HISTORY_POINTS)
        updated[key] = tuple(points)
    return updated


def _updated_rate(
    state: PolicyState, obs: Observation, last: Observation | None
) -> tuple[float | None, bool]:
    """One replica's consumption rate (messages/s), and whether it was seen at full load.

    Every member's observed rate is a lower bound of what a replica can do, so the
    remembered rate only rises with observations; it falls only when a member that had a
    real backlog throughout the interval still consumed less (the app got slower).
    """
    if last is None:
        return state.per_replica_rate, state.rate_saturated
    samples = _member_rates(obs, last)
    if not samples:
        return state.per_replica_rate, state.rate_saturated
    best, best_saturated = max(samples)
    remembered = state.per_replica_rate
    if remembered is None or best >= remembered:
        return best, best_saturated or state.rate_saturated
    # A member with a backlog and no progress at all is stuck (a poison message), not
    # slow: it says nothing about what a working replica can do.
    loaded = [rate for rate, saturated in samples if saturated and rate > 0]
    if loaded:
        lowered = remembered + CAPACITY_DECAY * (max(loaded) - remembered)
        return lowered, True
    return remembered, state.rate_saturated


def _member_rates(obs: Observation, last: Observation) -> list[tuple[float, bool]]:
    dt = obs.time_s - last.time_s
    progress: dict[PartitionKey, float] = {}
    backlogged: dict[PartitionKey, bool] = {}
    for key in obs.end_offsets:
        now_c, last_c = obs.committed.get(key), last.committed.get(key)
        if now_c is None or last_c is None or key not in last.end_offsets:
            continue
        if obs.statuses.get(key) in health.NOT_PROGRESSING:
            continue
        progress[key] = max(0, now_c - last_c) / dt
        produced = max(0, obs.end_offsets[key] - last.end_offsets[key]) / dt
        in_flight = produced * IN_FLIGHT_SECONDS
        backlogged[key] = obs.lag(key) > in_flight and last.lag(key) > in_flight
    if not progress:
        return []
    if obs.assignment is not None:
        before = last.assignment or {}
        samples = []
        for member, owned in obs.assignment.items():
            mine = [k for k in owned if k in progress]
            if mine:
                rate = sum(progress[k] for k in mine)
                # A member whose partitions changed since the last poll lost time to the
                # rebalance (or to starting up): its rate counts as a lower bound only.
                settled = sorted(before.get(member, ())) == sorted(owned)
                samples.append((rate, settled and any(backlogged[k] for k in mine)))
        return samples
    # Without the assignment, the average member is all we can know.
    consumers = obs.ready_replicas if obs.ready_replicas is not None else obs.replicas
    consumers = min(consumers, len(progress))
    if consumers <= 0:
        return []
    busy = [k for k in progress if obs.end_offsets[k] > last.end_offsets[k] or progress[k] > 0]
    saturated = bool(busy) and all(backlogged[k] for k in busy)
    return [(sum(progress.values()) / consumers, saturated)]


def _needs(
    obs: Observation,
    spec: ScalingSpec,
    last: Observation | None,
    history: Mapping[PartitionKey, tuple[timelag.Point, ...]],
    per_replica: float | None,
    saturated: bool,
) -> _Needs:
    # Statuses only mean something while consumers run: at zero replicas every partition
    # with new messages looks stopped, and that must not keep the group asleep.
    judging = obs.replicas > 0
    ignored = tuple(
        (k, s)
        for k, s in sorted(obs.statuses.items())
        if judging and k in obs.end_offsets and s in health.NOT_PROGRESSING and obs.lag(k) > 0
    )
    skipped = {k for k, _ in ignored}
    active = [k for k in sorted(obs.end_offsets) if k not in skipped]

    lags = {k: obs.lag(k) for k in active}
    total_lag = sum(obs.lag(k) for k in obs.end_offsets)
    lag_units = sum(min(1.0, lag / spec.lag_per_replica) for lag in lags.values())
    by_lag = math.ceil(lag_units - 1e-9)

    rates: dict[PartitionKey, float] | None = None
    if last is not None:
        dt = obs.time_s - last.time_s
        rates = {
            k: max(0, obs.end_offsets[k] - last.end_offsets.get(k, obs.end_offsets[k])) / dt
            for k in active
        }
    production = None if rates is None else sum(rates.values())
    helpful = sum(1 for k in active if lags[k] > 0 or (rates is not None and rates[k] > 0))

    by_time: int | None = None
    required: float | None = None
    target = spec.max_time_lag_seconds
    if target is not None and rates is not None and per_replica is not None and per_replica > 0:
        want = {
            k: _required_rate(
                history.get(k, ()),
                obs.committed.get(k),
                rates[k],
                obs.time_s,
                target * SLO_TARGET_FRACTION,
            )
            for k in active
        }
        required = sum(want.values())
        # A rate never seen under full load is a lower bound, already short of what a
        # replica can do: the utilization margin is for a measured rate only.
        utilization = TARGET_UTILIZATION if saturated else 1.0
        by_time = _replicas_for(want, obs.partition_count, per_replica, helpful, utilization)

    return _Needs(
        by_lag=by_lag,
        by_time=by_time,
        helpful=helpful,
        total_lag=total_lag,
        lag_partitions=sum(1 for lag in lags.values() if lag > 0),
        production=production,
        required_rate=required,
        ignored=ignored,
    )


def _required_rate(
    points: Sequence[timelag.Point],
    committed: int | None,
    production: float,
    now: float,
    deadline: float,
) -> float:
    """Messages/s this partition's consumer must do so nothing waits beyond ``deadline``.

    A message produced at t must be consumed by t + deadline. Consuming at x from now, the
    message q positions behind the committed offset is consumed at now + q/x, so
    x >= q / (t + deadline - now) for every waiting message; the (end offset, time) points
    are where that bound peaks. And in the long run, x must keep up with production.
    """
    need = production
    if committed is None:
        return need
    for offset, produced in points:
        waiting = offset - committed
        if waiting <= 0:
            continue
        horizon = max(produced + deadline - now, MIN_HORIZON_SECONDS)
        need = max(need, waiting / horizon)
    return need


def _replicas_for(
    want: Mapping[PartitionKey, float],
    partitions: int,
    per_replica: float,
    helpful: int,
    utilization: float,
) -> int:
    """Fewest replicas that serve ``want`` when partitions are spread evenly by count."""
    total = sum(want.values())
    if total <= 0:
        return 0
    budget = per_replica * utilization
    least = max(1, math.ceil(total / budget - RATE_TOLERANCE))
    most = max(least, helpful)
    busiest = max(want.values())
    others = (total - busiest) / (partitions - 1) if partitions > 1 else 0.0
    # A partition that needs more than one replica can give still gets at most one
    # consumer; the best we can do is not make that consumer share much with others.
    busiest = min(busiest, budget)
    for replicas in range(least, most + 1):
        per_consumer = math.ceil(partitions / replicas)
        if busiest + (per_consumer - 1) * others <= per_replica * (1 + RATE_TOLERANCE):
            return replicas
    return most


def _idle_since(state: PolicyState, obs: Observation, last: Observation | None) -> float | None:
    if last is None:
        return state.idle_since
    quiet = all(
        obs.lag(k) == 0 and obs.end_offsets[k] == last.end_offsets.get(k) for k in obs.end_offsets
    )
    if not quiet:
        return None
    return state.idle_since if state.idle_since is not None else last.time_s


def _time_lags(
    obs: Observation, history: Mapping[PartitionKey, tuple[timelag.Point, ...]]
) -> dict[PartitionKey, float | None]:
    return {
        k: timelag.time_lag_seconds(history.get(k, ()), obs.committed.get(k), obs.time_s)
        for k in obs.end_offsets
    }


def _num(value: float) -> str:
    """48000 -> '48 000': thousands apart, as the design's examples write them."""
    return f"{round(value):,}".replace(",", " ")


def _explain(
    obs: Observation,
    spec: ScalingSpec,
    current: int,
    desired: int,
    recommendation: int,
    capped_by: str | None,
    cap: int,
    needs: _Needs,
    per_replica: float | None,
    saturated: bool,
    to_zero: bool,
    idle_since: float | None,
) -> str:
    head = f"scaled {current}→{desired}" if desired != current else f"holding {current}"

    if to_zero:
        idle = obs.time_s - (idle_since if idle_since is not None else obs.time_s)
        body = f"idle {_num(idle)} s (no lag, no new messages), scale to zero enabled"
        return f"{head}: {body}"

    parts: list[str] = []
    lag_text = f"lag {_num(needs.total_lag)} over {_num(spec.lag_per_replica)}/replica"
    if needs.lag_partitions:
        lag_text += f" on {needs.lag_partitions} partition" + (
            "s" if needs.lag_partitions != 1 else ""
        )
    if needs.by_time is not None and needs.by_time > needs.by_lag:
        measured = "measured" if saturated else "at least"
        parts.append(
            f"drain within {spec.max_time_lag_seconds} s needs {_num(needs.required_rate or 0)}/s"
            f" at {_num(per_replica or 0)}/s per replica ({measured})"
        )
        parts.append(lag_text)
    else:
        parts.append(lag_text)
    if needs.ignored:
        names = ", ".join(f"{t}/{p} {s}" for (t, p), s in needs.ignored)
        parts.append(f"ignoring lag on non-progressing {names}")
    if capped_by == "stabilization":
        parts.append(
            f"wants {recommendation}, held by {spec.scale_down_stabilization_seconds} s"
            " stabilization"
        )
    elif capped_by == "minReplicas":
        parts.append(f"floor {desired} (minReplicas {spec.min_replicas})")
    elif capped_by == "maxReplicas":
        parts.append(f"cap {cap} (maxReplicas)")
    parts.append(f"cap {obs.partition_count} partitions")
    return f"{head}: " + "; ".join(parts)


class KcgPolicy:
    """The kcg policy with its state kept inside, for the simulator."""

    name = "kcg"

    def __init__(self) -> None:
        self.state = PolicyState()

    def poll_interval_seconds(self, spec: ScalingSpec) -> int:
        return spec.poll_interval_seconds

    def decide(self, observation: Observation, spec: ScalingSpec) -> Decision:
        decision, self.state = decide(observation, spec, self.state)
        return decision


__all__ = [
    "Decision",
    "KcgPolicy",
    "Observation",
    "PartitionKey",
    "PolicyState",
    "ScalingPolicy",
    "decide",
]
