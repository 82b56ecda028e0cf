"""How many replicas a consumer group should run: a pure function of what was observed.

``decide(observation, spec, state) -> (Decision, new_state)``. The caller (the operator's
sweep, or the simulator) keeps one :class:`PolicyState` per group and hands it back on the
next poll; nothing else is remembered anywhere, so every decision can be replayed.

**One road for lag.** The policy computes no lag and no seconds behind of its own. Each
partition's lag, position (the committed offset, or where ``auto.offset.reset`` starts a
group that never committed) and seconds behind arrive in ``Observation.lags``, computed
by :func:`lag.partition_lags` from the snapshot the status and the metrics show (the
controller and the simulator build observations that way). The policy keeps an (end
offset, time) history per partition only for what one snapshot cannot say: production
rates, and when the messages *behind* the first waiting one were produced.

How a decision is made, in order:

1. **Broker trouble never lowers replicas.** An observation the broker did not answer (or
   one without partitions) keeps the current count, only clamped into the spec's bounds
   (a group scaled to zero stays there; a running one is kept at least at its floor).
2. **Lag rule.** Each partition asks for ``lag / lagPerReplica`` replicas, but never more
   than one: a backlog on one partition is drained by one consumer, whatever its size.
   With ``maxTimeLagSeconds`` set, the lag rule speaks only until one replica's rate has
   been measured under load: the SLO is what the user asked for, and a lag threshold
   would buy capacity for backlog the SLO lets wait.
3. **Time rule** (``maxTimeLagSeconds`` set). Per partition, the consumption rate needed so
   that no message waits longer than 90 % of ``maxTimeLagSeconds``:

   * *Drain.* Replicas asked for now consume only after the group's *reaction time* (pod
     start-up plus rebalance, measured from this group's own scale-ups; 30 s until then).
     Until then the partition goes on at its current progress, and what arrives meanwhile
     at the current rate joins the queue. Every waiting message must still be consumed
     before its deadline: the first one at the age the observation brings, the ones
     behind it at the production times the policy's (end offset, time) history records.
   * *Keep up.* At least the production rate (the lower of the last five minutes' and the
     last minute's averages, so a burst shorter than that is carried by the backlog) —
     but only once the oldest message has used the slack the deadline leaves beyond the
     reaction time. Before that, running a little short of production is allowed: it is
     how 2.5 replicas of work run on whole replicas (two for a while, then three). Never
     by more than that fraction: the whole replicas production fills are the floor.

   The sum over partitions divided by one replica's rate gives replicas. Partitions
   spread over replicas by count (cooperative-sticky balances counts, not load), so the
   count must also leave the busiest partition's consumer enough room (for its
   neighbours' production too, once the busiest must keep up); and when a member of the
   current assignment owns more work than a replica does, the count now is shown too
   small, whatever the average says (unless pods asked for are still joining: the
   assignment is then the old one). The reaction time is measured from the last raise
   of the count to the members all joining. One replica's rate is the median loaded member's,
   measured from committed offsets over the last minute (it follows a slower app down
   smoothly); until a member is seen under load, the best observed rate is a lower bound.
4. **Stalled partitions do not scale.** Lag on partitions Burrow calls STOP or STALL is
   ignored: their consumer is not progressing, more replicas would not help. A partition
   with a backlog that got nothing at all during a poll while its owner kept it is
   ignored at once (STUCK): it is stuck on a message, not short of capacity. Except a
   starved one: while its owner progressed on another partition's backlog, and for at
   most a minute, it waits its turn (a consumer works through one fetched batch at a
   time), and it counts.
5. **Bounds.** Never above the partition count nor ``maxReplicas``; never below
   ``minReplicas`` (at least one while there is traffic); zero only with ``scaleToZero``,
   after ``idleSeconds`` without lag or new messages, on a poll the broker answered; a
   group at zero stays there until lag or new messages appear.
6. **Stabilization.** Up at once; down only to the highest recommendation of the last
   ``scaleDownStabilizationSeconds`` (the HPA's scale-down rule), so a dip does not flap.
   The window guards against traffic, not backlog: with the time rule, each
   recommendation also records what production alone asked for then, and once the
   backlog is drained (no partition has more waiting than one poll of its production)
   each counts only for that part. A first step guessed before any rate was measured
   leaves the window at the first measurement.
7. **Paused** computes and explains but asks for no patch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from kcg_operator.api.models import ScalingSpec
from kcg_operator.scaling import health, timelag
from kcg_operator.scaling import lag as lagmath
from kcg_operator.scaling.lag import PartitionLag

PartitionKey = tuple[str, int]
"""(topic, partition)."""

#: Fraction of maxTimeLagSeconds the time rule aims for: the rest absorbs offsets that
#: arrive late and production that jitters (the start-up of new replicas is planned for
#: explicitly, see DEFAULT_REACTION_SECONDS).
SLO_TARGET_FRACTION = 0.9
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
#: (end offset, time) points kept per partition for production rates and the ages of the
#: messages inside a backlog (the head's seconds behind come with the observation).
HISTORY_POINTS = 40
#: Production is averaged over this long for the rate the group must keep up with: a
#: burst shorter than this is carried by the backlog (the SLO allows it), a longer one
#: raises the average. Five minutes is the HPA's default scale-down window: capacity
#: bought for a burst is held about that long anyway.
SUSTAINED_WINDOW_SECONDS = 300.0
#: Production over the last minute: the rate to keep up with when it is lower than the
#: sustained one (traffic fell; no need to keep capacity for the average of the past).
RECENT_WINDOW_SECONDS = 60.0
#: Time from asking for more replicas to their consuming, until the policy has measured it
#: on this group (pod start-up plus the rebalance).
DEFAULT_REACTION_SECONDS = 30.0
#: Polls beyond the reaction time over which arrivals at the current rate are projected.
ARRIVAL_POLLS = 0
#: Share of the slack (deadline minus reaction time) the oldest message may use before
#: the policy insists on keeping up with production.
LEAN_FRACTION = 1.0
#: Rates are measured over this long (several polls): committed offsets move in steps
#: (the commit interval) and arrive late, which over one poll can mislead by half.
RATE_WINDOW_SECONDS = 60.0
#: Longest a backlogged partition may wait for its busy owner before it counts as stuck
#: (within the rate window, whose oldest observation is this old or older).
STARVED_LIMIT_SECONDS = 45.0
#: Production rate used to project what arrives while new replicas start: short enough to
#: see a burst within two polls, long enough to average out late offsets.
PROJECTION_WINDOW_SECONDS = 45.0
#: A member's rate counts only over a span this long: over one poll, offsets that arrive
#: a few seconds late make a rate wrong by half.
MIN_RATE_SPAN_SECONDS = 45.0


@dataclass(frozen=True)
class Observation:
    """What one poll saw of one group.

    ``end_offsets`` and ``committed`` are keyed by (topic, partition); a committed offset is
    None when the group never committed on that partition (the OffsetFetch answer).
    ``lags`` are the partitions' lag and seconds behind as :func:`lag.partition_lags`
    computed them for this snapshot (the caller's one computation, shared with the status
    and the metrics; :meth:`from_lags`, :meth:`from_offsets`). The policy reads lag,
    position and seconds behind from there only. Left out, they are computed from the
    offsets alone: never-committed partitions wait from ``latest``, seconds are unknown.
    ``replicas`` is the Deployment's current spec.replicas. ``partitions`` defaults to the
    number of end offsets. ``broker_ok`` is False when the broker could not be asked (then
    offsets may be empty). ``statuses`` are Burrow statuses per partition (see
    :mod:`health`), ``assignment`` the group's members and their partitions (describe
    group), ``ready_replicas`` the Deployment's ready count; all three are optional
    refinements.
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
    lags: Mapping[PartitionKey, PartitionLag] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = {
            k: (end, self.committed.get(k))
            for k, end in self.end_offsets.items()
            if k not in self.lags
        }
        if missing:
            computed = lagmath.partition_lags(missing, now_s=self.time_s)
            object.__setattr__(self, "lags", {**self.lags, **computed})

    @classmethod
    def from_lags(
        cls,
        time_s: float,
        lags: Mapping[PartitionKey, PartitionLag],
        replicas: int,
        *,
        partitions: int | None = None,
        broker_ok: bool = True,
        statuses: Mapping[PartitionKey, str] | None = None,
        assignment: Mapping[str, Sequence[PartitionKey]] | None = None,
        ready_replicas: int | None = None,
    ) -> Observation:
        """Build from the snapshot's :func:`lag.partition_lags`."""
        return cls(
            time_s=time_s,
            end_offsets={k: p.end for k, p in lags.items()},
            committed={k: p.committed for k, p in lags.items()},
            replicas=replicas,
            partitions=partitions,
            broker_ok=broker_ok,
            statuses=statuses or {},
            assignment=assignment,
            ready_replicas=ready_replicas,
            lags=dict(lags),
        )

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
        log_starts: Mapping[PartitionKey, int] | None = None,
        from_earliest: bool = False,
        history: Mapping[PartitionKey, Sequence[timelag.Point]] | None = None,
        produced_at: Mapping[tuple[PartitionKey, int], float] | None = None,
    ) -> Observation:
        """Build from a (topic, partition) -> (end offset, committed or None) mapping; the
        lags come from :func:`lag.partition_lags` with the other keywords."""
        lags = lagmath.partition_lags(
            offsets,
            now_s=time_s,
            log_starts=log_starts,
            from_earliest=from_earliest,
            history=history,
            produced_at=produced_at,
        )
        return cls.from_lags(
            time_s,
            lags,
            replicas,
            partitions=partitions,
            broker_ok=broker_ok,
            statuses=statuses,
            assignment=assignment,
            ready_replicas=ready_replicas,
        )

    @property
    def partition_count(self) -> int:
        return len(self.end_offsets) if self.partitions is None else self.partitions

    def lag(self, key: PartitionKey) -> int:
        p = self.lags.get(key)
        return 0 if p is None else p.lag

    def position(self, key: PartitionKey) -> int | None:
        """The offset the group reads next (see :mod:`lag`); None: not observed."""
        p = self.lags.get(key)
        return None if p is None else p.position

    def seconds_behind(self, key: PartitionKey) -> float | None:
        p = self.lags.get(key)
        return None if p is None else p.seconds


@dataclass(frozen=True)
class PolicyState:
    """What the policy remembers between polls of one group (keep one per group)."""

    last: Observation | None = None
    #: Earlier observations of the last RATE_WINDOW_SECONDS (oldest first), so rates are
    #: measured over more than one poll.
    earlier: tuple[Observation, ...] = ()
    history: Mapping[PartitionKey, tuple[timelag.Point, ...]] = field(default_factory=dict)
    recommendations: tuple[tuple[float, int], ...] = ()
    #: Recommendations made while no replica rate was known: they hold like the others
    #: until the first measurement at full load, which overrules them.
    guesses: tuple[tuple[float, int], ...] = ()
    #: (when, replicas that production alone asked for then), for the window's entries.
    keep_ups: tuple[tuple[float, int], ...] = ()
    per_replica_rate: float | None = None
    rate_saturated: bool = False
    idle_since: float | None = None
    last_scale_time: float | None = None
    #: Measured seconds from a scale-up to the new members in the group (None: not yet).
    reaction_seconds: float | None = None
    #: (when, members wanted) of a scale-up whose members have not all joined yet.
    awaiting: tuple[float, int] | None = None


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
    #: Whether the simulator should judge partitions with Burrow's rules for this policy
    #: (the statuses cost time and only the kcg policy reads them).
    observes_health: bool
    #: Whether a partition the group never committed on counts from the log start (the
    #: operator's lag for consumers that reset to earliest), or arrives as None (the raw
    #: OffsetFetch answer, which KEDA interprets with its offsetResetPolicy).
    counts_from_log_start: bool

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
    # Asleep stays asleep (nothing says traffic came back), but a running group is never
    # left below minReplicas just because scale-to-zero is enabled.
    lowest = 0 if spec.scale_to_zero.enabled and current == 0 else floor
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
    #: Replicas that keep up with sustained production alone (None: the time rule is off).
    keep_up: int | None = None
    #: Whether what waits is no more than one poll of sustained production.
    drained: bool = False


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
    reaction, state = _updated_reaction(state, obs)
    needs = _needs(
        obs,
        spec,
        last,
        history,
        per_replica,
        saturated,
        reaction if reaction is not None else DEFAULT_REACTION_SECONDS,
        state.earlier,
    )

    idle_since = _idle_since(state, obs, last)
    to_zero = (
        spec.scale_to_zero.enabled
        and idle_since is not None
        and now - idle_since >= spec.scale_to_zero.idle_seconds
    )
    # Asleep at zero with nothing waiting and no new messages (on a first look, nothing
    # waiting): nothing says traffic came back, so there is no reason to wake the group.
    # idleSeconds is how long a running group waits before sleeping, not a reason to wake
    # a sleeping one for a while.
    asleep = (
        spec.scale_to_zero.enabled and current == 0 and needs.total_lag == 0 and needs.helpful == 0
    )

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
    recent = tuple((t, r) for t, r in seeded if t > now - window)
    # The window guards against traffic that comes and goes. Capacity asked for beyond
    # what production needed at the time was for a backlog: once that backlog is drained,
    # each recommendation in the window counts only for the production of its time.
    keep_ups = tuple((t, k) for t, k in state.keep_ups if t > now - window)
    if needs.keep_up is not None:
        keep_ups = (*keep_ups, (now, max(floor, min(needs.keep_up, cap))))
    before_release = max((r for _, r in recent), default=0)
    if needs.drained:
        production_part = dict(keep_ups)
        recent = tuple((t, min(r, production_part.get(t, r))) for t, r in recent)
    released = False
    # The window keeps informed recommendations from flapping. A guess (made while no
    # replica rate was known at all, e.g. a first step sized by lagPerReplica alone) that
    # the first measurement at full load overrules says nothing about the traffic: it is
    # dropped then.
    guesses = () if saturated else tuple((t, r) for t, r in state.guesses if t > now - window)
    if per_replica is None:
        recommendations, guesses = recent, (*guesses, (now, recommendation))
    else:
        recommendations = (*recent, (now, recommendation))
    if recommendation >= current or to_zero or asleep:
        desired = recommendation
    else:
        held = max(r for _, r in (*recommendations, *guesses))
        desired = min(current, held, cap)
        released = desired < min(current, before_release, cap)
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
        released,
    )
    should_patch = desired != current and not spec.paused
    if spec.paused:
        reason = f"paused: {reason}"

    statuses = [s for k, s in obs.statuses.items() if k in obs.end_offsets]
    # Seconds behind as lag.py computed them for this snapshot (status and metrics show
    # the same figures).
    time_lags = {k: obs.seconds_behind(k) for k in obs.end_offsets}
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
    awaiting = state.awaiting
    if should_patch and desired > current:
        awaiting = (now, desired)
    elif should_patch and awaiting is not None and desired < awaiting[1]:
        awaiting = None
    earlier = tuple(
        o
        for o in (*state.earlier, *((state.last,) if state.last is not None else ()))
        if o.broker_ok and o.time_s < now and now - o.time_s <= RATE_WINDOW_SECONDS
    )
    new_state = PolicyState(
        last=obs,
        earlier=earlier,
        history=history,
        recommendations=recommendations,
        guesses=guesses,
        keep_ups=keep_ups,
        per_replica_rate=per_replica,
        rate_saturated=saturated,
        idle_since=idle_since,
        last_scale_time=now if should_patch else state.last_scale_time,
        reaction_seconds=reaction,
        awaiting=awaiting,
    )
    return decision, new_state


def _updated_history(
    history: Mapping[PartitionKey, tuple[timelag.Point, ...]], obs: Observation
) -> dict[PartitionKey, tuple[timelag.Point, ...]]:
    return timelag.updated(history, obs.time_s, obs.end_offsets, HISTORY_POINTS)


def _updated_rate(
    state: PolicyState, obs: Observation, last: Observation | None
) -> tuple[float | None, bool]:
    """One replica's consumption rate (messages/s), and whether it was seen at full load.

    A member that kept its partitions and had a real backlog on partitions it progressed
    on shows what a replica can do: the typical (median) such member of this poll is a
    sample, and the estimate follows samples smoothly, so one odd poll does not swing it.
    Replicas are not all equally fast, and planning with the fastest would leave the slow
    ones behind. Until a member is seen under load, observed rates are lower bounds: the
    estimate is the best of them. Rates are measured over the last RATE_WINDOW_SECONDS.
    """
    if last is None:
        return state.per_replica_rate, state.rate_saturated
    samples = _member_rates(obs, (*state.earlier, last))
    if not samples:
        return state.per_replica_rate, state.rate_saturated
    remembered = state.per_replica_rate
    loaded = [rate for rate, saturated in samples if saturated and rate > 0]
    if loaded:
        typical = _median(loaded)
        if remembered is None or not state.rate_saturated:
            # The first measurement under load; a lower bound seen before still holds.
            return max(typical, remembered or 0.0), True
        return remembered + CAPACITY_DECAY * (typical - remembered), True
    if state.rate_saturated and remembered is not None:
        return remembered, True
    # Any member's rate is one a replica achieves: the best is the tightest lower bound.
    # A member that just joined or lost partitions counts only from its settled spans
    # (_member_rates marks those by leaving them unsaturated with rate 0 when unknown).
    best = max(rate for rate, _ in samples)
    if best <= 0:
        return remembered, False
    if remembered is None or best > remembered:
        return best, False
    return remembered, False


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _members(obs: Observation) -> int | None:
    if obs.assignment is not None:
        return len(obs.assignment)
    return obs.ready_replicas


def _updated_reaction(state: PolicyState, obs: Observation) -> tuple[float | None, PolicyState]:
    """Seconds from a scale-up to its members joining, measured on this group.

    Polls only see the group every interval, so a measurement is at most one interval
    long; half the old estimate is kept so one slow pod does not set the plan alone.
    """
    awaiting = state.awaiting
    members = _members(obs)
    if awaiting is None or members is None or members < awaiting[1]:
        return state.reaction_seconds, state
    measured = obs.time_s - awaiting[0]
    old = state.reaction_seconds
    reaction = measured if old is None else (old + measured) / 2
    return reaction, replace(state, awaiting=None, reaction_seconds=reaction)


def _member_rates(obs: Observation, before: Sequence[Observation]) -> list[tuple[float, bool]]:
    """(messages/s, at full load) of each member over the longest recent span it kept its
    partitions (``before`` holds earlier observations, oldest first, the last poll last).

    Full load: the member's backlog, on partitions that progressed, stayed above a few
    seconds of its own consumption at both ends of the span (a stuck partition or a
    partition of a member that just keeps up says nothing about a replica's speed).
    """
    last = before[-1]
    progressing = [k for k in obs.end_offsets if obs.statuses.get(k) not in health.NOT_PROGRESSING]
    if obs.assignment is None:
        dt = obs.time_s - last.time_s
        total = 0.0
        for k in progressing:
            now_c, last_c = obs.position(k), last.position(k)
            if now_c is not None and last_c is not None:
                total += max(0, now_c - last_c) / dt
        consumers = obs.ready_replicas if obs.ready_replicas is not None else obs.replicas
        consumers = min(consumers, len(progressing))
        if consumers <= 0 or total <= 0:
            return []
        rate = total / consumers
        backlog = sum(obs.lag(k) for k in progressing) / consumers
        previous = sum(last.lag(k) for k in progressing) / consumers
        return [(rate, min(backlog, previous) > rate * IN_FLIGHT_SECONDS)]
    wanted = set(progressing)
    samples: list[tuple[float, bool]] = []
    for member, owned in obs.assignment.items():
        mine = sorted(k for k in owned if k in wanted)
        if not mine:
            continue
        # The farthest observation since which this member owned exactly these partitions.
        base: Observation | None = None
        for earlier in reversed(before):
            if earlier.assignment is None:
                break
            if sorted(earlier.assignment.get(member, ())) != sorted(owned):
                break
            base = earlier
        if base is None:
            # It joined or its partitions changed since the last poll: part of the span
            # went to starting or to the rebalance, so its rate says little.
            continue
        dt = obs.time_s - base.time_s
        if dt < min(MIN_RATE_SPAN_SECONDS, obs.time_s - before[0].time_s):
            continue
        moved: list[PartitionKey] = []
        done = 0.0
        for k in mine:
            now_c, then_c = obs.position(k), base.position(k)
            if now_c is None or then_c is None:
                continue
            done += max(0, now_c - then_c)
            if now_c > then_c:
                moved.append(k)
        rate = done / dt
        threshold = rate * IN_FLIGHT_SECONDS
        loaded = (
            bool(moved)
            and sum(obs.lag(k) for k in moved) > threshold
            and sum(base.lag(k) for k in moved) > threshold
        )
        samples.append((rate, loaded))
    return samples


def _needs(
    obs: Observation,
    spec: ScalingSpec,
    last: Observation | None,
    history: Mapping[PartitionKey, tuple[timelag.Point, ...]],
    per_replica: float | None,
    saturated: bool,
    reaction: float = DEFAULT_REACTION_SECONDS,
    earlier: Sequence[Observation] = (),
) -> _Needs:
    # Statuses only mean something while consumers run: at zero replicas every partition
    # with new messages looks stopped, and that must not keep the group asleep.
    judging = obs.replicas > 0
    # A busy consumer works through one partition's fetched batch before the next one's:
    # those wait without being stuck, and another replica would take them.
    starved = _starved(obs, last, earlier[0] if earlier else last) if last else set()
    ignored = [
        (k, s)
        for k, s in sorted(obs.statuses.items())
        if judging and k in obs.end_offsets and s in health.NOT_PROGRESSING and obs.lag(k) > 0
        and k not in starved
    ]
    if judging and last is not None:
        known = {k for k, _ in ignored}
        ignored += [(k, "STUCK") for k in _stuck(obs, last) if k not in known | starved]
        ignored.sort()
    skipped = {k for k, _ in ignored}
    active = [k for k in sorted(obs.end_offsets) if k not in skipped]

    lags = {k: obs.lag(k) for k in active}
    total_lag = sum(obs.lag(k) for k in obs.end_offsets)
    lag_units = sum(min(1.0, lag / spec.lag_per_replica) for lag in lags.values())
    by_lag = math.ceil(lag_units - 1e-9)

    rates: dict[PartitionKey, float] | None = None
    progress: dict[PartitionKey, float] = {}
    if last is not None:
        dt = obs.time_s - last.time_s
        rates = {
            k: max(0, obs.end_offsets[k] - last.end_offsets.get(k, obs.end_offsets[k])) / dt
            for k in active
        }
        for k in active:
            now_c, last_c = obs.position(k), last.position(k)
            if now_c is not None and last_c is not None:
                progress[k] = max(0, now_c - last_c) / dt
    production = None if rates is None else sum(rates.values())
    helpful = sum(1 for k in active if lags[k] > 0 or (rates is not None and rates[k] > 0))

    by_time: int | None = None
    required: float | None = None
    keep_up: int | None = None
    drained = False
    target = spec.max_time_lag_seconds
    if target is not None and rates is not None and per_replica is not None and per_replica > 0:
        deadline = target * SLO_TARGET_FRACTION
        # Replicas asked for now consume only after `reaction`: what arrives meanwhile at
        # the current rate must fit too. Beyond that, the next polls decide again.
        arriving = reaction + ARRIVAL_POLLS * spec.poll_interval_seconds
        sustained = {
            k: _sustained_rate(history.get(k, ()), obs.time_s, rates[k]) for k in active
        }
        want = {
            k: _required_rate(
                history.get(k, ()),
                obs.lags[k],
                _rate_since(history.get(k, ()), obs.time_s, PROJECTION_WINDOW_SECONDS) or rates[k],
                sustained[k],
                progress.get(k, 0.0),
                obs.time_s,
                deadline,
                reaction,
                arriving,
            )
            for k in active
        }
        required = sum(want.values())
        # A rate never seen under full load is a lower bound, already short of what a
        # replica can do: the utilization margin is for a measured rate only.
        utilization = TARGET_UTILIZATION if saturated else 1.0
        # A consumer not yet seen under load consumed just its partitions' production:
        # as a bound on its rate, that says nothing about room for more.
        by_time = _replicas_for(
            want, obs.partition_count, per_replica, helpful, utilization,
            sustained if saturated else {},
        )
        # Running short of production is for the fraction of a replica that whole replicas
        # cannot use (2.5 replicas of work run as 2, then 3), never more: deeper, the
        # backlog that forms needs a larger scale-up soon, held for the whole window.
        by_time = max(by_time, math.floor(sum(sustained.values()) / per_replica + RATE_TOLERANCE))
        # While pods asked for have not joined, the assignment is the old one: what its
        # members carry says nothing about the count already on its way.
        members = _members(obs)
        settled = members is None or members >= obs.replicas
        if settled and _overloaded(obs, want, per_replica):
            # Spreading by count put too much on one member (a hot partition next to
            # others): the count now is shown not to be enough, whatever the average says.
            by_time = max(by_time, min(obs.replicas + 1, helpful))
        # The SLO is what the user asked for: once a replica's rate is known, the time
        # rule alone decides. A lag threshold would buy capacity for backlog that the SLO
        # lets wait.
        by_lag = 0 if saturated else by_lag
        # What production alone asks for, and whether what waits is no more than one poll
        # of each partition's production: then capacity added for a backlog has done its
        # work (see the window in _decide_observed).
        keep_up = _replicas_for(
            sustained, obs.partition_count, per_replica, helpful, utilization,
            sustained if saturated else {},
        )
        drained = all(lags[k] <= sustained[k] * spec.poll_interval_seconds for k in active)

    return _Needs(
        by_lag=by_lag,
        by_time=by_time,
        helpful=helpful,
        total_lag=total_lag,
        lag_partitions=sum(1 for lag in lags.values() if lag > 0),
        production=production,
        required_rate=required,
        ignored=tuple(ignored),
        keep_up=keep_up,
        drained=drained,
    )


def _overloaded(obs: Observation, want: Mapping[PartitionKey, float], per_replica: float) -> bool:
    """Whether a member of the current assignment owns more than one partition and more
    work than one replica does (the rate each of its partitions needs, summed)."""
    if obs.assignment is None:
        return False
    for owned in obs.assignment.values():
        mine = [k for k in owned if k in want]
        if len(mine) < 2:
            continue
        load = sum(min(want[k], per_replica) for k in mine)
        if load > per_replica * (1 + RATE_TOLERANCE) and any(obs.lag(k) > 0 for k in mine):
            return True
    return False


def _stuck(obs: Observation, last: Observation) -> list[PartitionKey]:
    """Partitions with a backlog that made no progress at all though their owner kept them.

    A consumer fetches from every partition it owns that has data, so a backlogged
    partition that gets nothing for a whole poll is stuck on a message (or its consumer
    is), not short of capacity: more replicas would not help. Burrow calls it STALL after
    a full window; this sees it after one poll. Partitions that just moved are left out:
    a rebalance pauses them.
    """
    if obs.assignment is None or last.assignment is None:
        return []
    stuck: list[PartitionKey] = []
    for member, owned in obs.assignment.items():
        if sorted(last.assignment.get(member, ())) != sorted(owned):
            continue
        for k in owned:
            now_c, last_c = obs.position(k), last.position(k)
            if now_c is None or last_c is None:
                continue
            if now_c == last_c and obs.lag(k) > 0 and last.lag(k) > 0:
                stuck.append(k)
    return stuck


def _starved(obs: Observation, last: Observation, oldest: Observation) -> set[PartitionKey]:
    """Partitions that got nothing because their owner is busy with another backlog.

    A consumer processes what it fetched partition by partition: while it works through
    one partition's backlog, its other partitions wait, for a while if it is slow. Such a
    partition is not stuck: its owner progressed on another partition that had a backlog
    (a consumer stuck on a message progresses nowhere). One that got nothing for the
    rate window (at least STARVED_LIMIT_SECONDS; `oldest` is the window's first
    observation) though it had a backlog all along is taken for stuck even so: a consumer
    that sets a partition aside (paused on a poison message) and works on the rest looks
    starved for that long. Known only with the assignment, for owners that kept their
    partitions since the last poll.
    """
    if obs.assignment is None or last.assignment is None:
        return set()
    starved: set[PartitionKey] = set()
    for member, owned in obs.assignment.items():
        if sorted(last.assignment.get(member, ())) != sorted(owned):
            continue
        progressed: set[PartitionKey] = set()
        for k in owned:
            now_c, last_c = obs.position(k), last.position(k)
            if now_c is not None and last_c is not None and now_c > last_c:
                progressed.add(k)
        busy = {k for k in progressed if last.lag(k) > 0 and obs.lag(k) > 0}
        for k in owned:
            now_c, old_c = obs.position(k), oldest.position(k)
            waited_all_window = (now_c is not None and old_c is not None and now_c == old_c
                                 and oldest.lag(k) > 0
                                 and obs.time_s - oldest.time_s >= STARVED_LIMIT_SECONDS)
            if k not in progressed and busy - {k} and not waited_all_window:
                starved.add(k)
    return starved


def _rate_since(points: Sequence[timelag.Point], now: float, window: float) -> float | None:
    """Production rate over the last ``window`` seconds, from the (offset, time) history."""
    if len(points) < 2:
        return None
    newest_offset, newest_time = points[-1]
    since = now - window
    older = [(o, t) for o, t in points if t <= since]
    if older:
        (o0, t0), after = older[-1], [(o, t) for o, t in points if t > since]
        o1, t1 = after[0] if after else points[-1]
        start = o0 if t1 <= t0 else o0 + (o1 - o0) * (since - t0) / (t1 - t0)
        span = newest_time - since
    else:
        start, span = points[0][0], newest_time - points[0][1]
    if span <= 0:
        return None
    return max(0.0, (newest_offset - start) / span)


def _sustained_rate(points: Sequence[timelag.Point], now: float, current: float) -> float:
    """The production rate to keep up with: the lower of the last five minutes' and the
    last minute's averages (the current interval's while history is short)."""
    long = _rate_since(points, now, SUSTAINED_WINDOW_SECONDS)
    recent = _rate_since(points, now, RECENT_WINDOW_SECONDS)
    if long is None or recent is None:
        return current
    return min(long, recent)


def _required_rate(
    points: Sequence[timelag.Point],
    head: PartitionLag,
    production: float,
    sustained: float,
    progress: float,
    now: float,
    deadline: float,
    reaction: float,
    arriving: float,
) -> float:
    """Messages/s this partition's consumer must do so nothing waits beyond ``deadline``.

    Two needs. Keep up: at least the sustained production rate. Drain: a message produced
    at t must be consumed by t + deadline. A change of replicas takes ``reaction`` seconds
    to act, and the partition goes on at its current ``progress`` until then: consuming
    at x afterwards, the message q positions behind is consumed at now + reaction +
    (q - progress * reaction) / x. The bound peaks where the production times are known:
    the first waiting message (``head``: its position and seconds behind as
    :mod:`lag` computed them, from its own timestamp or the history), the (end offset,
    time) points after it, and the messages arriving at the current ``production`` rate
    over the next ``arriving`` seconds (no poll can help them sooner). The same is asked
    as if the change acted at once, from the current position: that covers scaling down.
    """
    need = 0.0
    position = head.position
    newest_offset = points[-1][0] if points else head.end
    # Keeping up is required only once the oldest message has used a good part of the
    # slack the deadline leaves beyond the reaction time: below that, running a little
    # short of production and letting a small backlog form is what lets the group use
    # whole replicas fully (2.5 replicas of work run as 2 for a while, then 3). An
    # unknown age (no history, no timestamp) counts as old.
    age = head.seconds
    if age is None or age >= LEAN_FRACTION * max(0.0, deadline - reaction):
        need = sustained
    candidates: list[tuple[float, float]] = [(offset, produced) for offset, produced in points]
    if head.lag > 0 and head.seconds is not None:
        # Consuming the first waiting message is consuming one message past the position.
        candidates.append((position + 1, now - head.seconds))
    candidates.append((newest_offset + production * arriving, now + arriving))
    for delay, done in ((reaction, progress * reaction), (0.0, 0.0)):
        base = position + done
        for offset, produced in candidates:
            waiting = offset - base
            if waiting <= 0:
                continue
            horizon = max(produced + deadline - now - delay, MIN_HORIZON_SECONDS)
            need = max(need, waiting / horizon)
    return need


def _replicas_for(
    want: Mapping[PartitionKey, float],
    partitions: int,
    per_replica: float,
    helpful: int,
    utilization: float,
    sustained: Mapping[PartitionKey, float],
) -> int:
    """Fewest replicas that serve ``want`` when partitions are spread evenly by count.

    The busiest partition's consumer also carries others. Once that partition must keep
    up with its own production (its need is at least its ``sustained`` production), so
    must its neighbours: each counts at least at its sustained production, since no
    consumer with a full partition to serve can leave the others short for long.
    """
    total = sum(want.values())
    if total <= 0:
        return 0
    hot = max(want, key=lambda k: want[k])
    if want[hot] >= sustained.get(hot, 0.0) * (1 - RATE_TOLERANCE):
        rest = sum(max(need, sustained.get(k, 0.0)) for k, need in want.items() if k != hot)
    else:
        rest = total - want[hot]
    budget = per_replica * utilization
    least = max(1, math.ceil(total / budget - RATE_TOLERANCE))
    most = max(least, helpful)
    busiest = want[hot]
    others = rest / (partitions - 1) if partitions > 1 else 0.0
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
    released: bool = False,
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
    if released:
        parts.append("backlog drained: the window keeps only what production asked for")
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
    observes_health = True
    counts_from_log_start = True

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
