"""KEDA's Kafka scaler behind a default HorizontalPodAutoscaler, as a policy to compare with.

Modelled on KEDA's pkg/scalers/kafka_scaler.go and the HPA controller
(pkg/controller/podautoscaler) with its default behavior, so the simulator can put the
two side by side. Kept faithful on purpose, including the known rough edges:

* **Metric.** KEDA reports the group's total lag (end offset - committed offset summed over
  partitions) as an External metric with an AverageValue target of ``lagThreshold``.
  With ``allowIdleConsumers`` false (the default), it caps the lag so the HPA does not go
  past the partition count: ``if totalLag / lagThreshold > partitions { totalLag =
  partitions * lagThreshold }``, with Go's integer division. A lag between
  P*threshold and (P+1)*threshold - 1 is therefore not capped, and the HPA asks for P+1
  replicas (keda issue 4483).
* **HPA.** Every 15 s: usageRatio = metric / (threshold * currentReplicas); within 10%
  tolerance of 1 nothing changes, else desired = ceil(metric / threshold). With the
  metric capped at P*threshold and P-1 replicas running, the ratio is P/(P-1), inside the
  tolerance from P = 11 on: the HPA stays at P-1 while the lag grows (keda issue 2908).
* **Behavior** (HPA defaults): scale up at most max(+4 pods, +100%) per 15 s, no up
  stabilization; scale down to the highest recommendation of the last 300 s, 100% per 15 s.
* **Bounds and zero.** minReplicaCount/maxReplicaCount from the spec (KEDA does not cap at
  partitions beyond the metric). With scale to zero, KEDA activates 0→1 when any partition
  has lag and scales to 0 after ``cooldownPeriod`` (mapped to idleSeconds) without lag.
* **Errors.** A failed metric read leaves the HPA where it is (our generous reading: old
  KEDA versions could scale to zero on broker errors, keda issue 4098).

``lagThreshold`` is the spec's lagPerReplica; the HPA sync period stands in for the poll.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kcg_operator.api.models import ScalingSpec
from kcg_operator.scaling import health
from kcg_operator.scaling.policy import Decision, Observation

HPA_SYNC_SECONDS = 15
HPA_TOLERANCE = 0.1
SCALE_UP_PODS = 4
SCALE_UP_PERCENT = 100
SCALE_UP_PERIOD_SECONDS = 15
SCALE_DOWN_STABILIZATION_SECONDS = 300
SCALE_DOWN_PERCENT = 100
SCALE_DOWN_PERIOD_SECONDS = 15


def kafka_metric(observation: Observation, lag_threshold: int) -> int:
    """The lag KEDA's Kafka scaler reports, capped as kafka_scaler.go caps it."""
    total = 0
    for key, end in observation.end_offsets.items():
        committed = observation.committed.get(key)
        # No committed offset with offsetResetPolicy=latest: KEDA counts a lag of 1 so that
        # a fresh group can activate.
        total += 1 if committed is None else end - committed
    partitions = observation.partition_count
    if total // lag_threshold > partitions:
        total = partitions * lag_threshold
    return total


def hpa_proposal(metric: int, target_per_pod: int, status_replicas: int) -> int:
    """The HPA's replica count for an External AverageValue metric (replica calculator)."""
    ratio = metric / (target_per_pod * status_replicas)
    if abs(1.0 - ratio) > HPA_TOLERANCE:
        return math.ceil(metric / target_per_pod)
    return status_replicas


@dataclass(frozen=True)
class KedaState:
    """The HPA's memory (recommendations, scale events) and KEDA's last active time."""

    recommendations: tuple[tuple[float, int], ...] = ()
    scale_up_events: tuple[tuple[float, int], ...] = ()
    scale_down_events: tuple[tuple[float, int], ...] = ()
    last_active: float | None = None


def _changes_since(events: tuple[tuple[float, int], ...], cutoff: float) -> int:
    return sum(change for when, change in events if when > cutoff)


def _scale_up_limit(current: int, state: KedaState, now: float) -> int:
    cutoff = now - SCALE_UP_PERIOD_SECONDS
    start = (
        current
        - _changes_since(state.scale_up_events, cutoff)
        + _changes_since(state.scale_down_events, cutoff)
    )
    by_pods = start + SCALE_UP_PODS
    by_percent = math.ceil(start * (1 + SCALE_UP_PERCENT / 100))
    return max(by_pods, by_percent, current)


def _scale_down_limit(current: int, state: KedaState, now: float) -> int:
    cutoff = now - SCALE_DOWN_PERIOD_SECONDS
    start = (
        current
        - _changes_since(state.scale_up_events, cutoff)
        + _changes_since(state.scale_down_events, cutoff)
    )
    return min(math.ceil(start * (1 - SCALE_DOWN_PERCENT / 100)), current)


def decide(
    observation: Observation, spec: ScalingSpec, state: KedaState | None = None
) -> tuple[Decision, KedaState]:
    """One KEDA polling + HPA sync for the group."""
    state = state or KedaState()
    now = observation.time_s
    current = observation.replicas
    threshold = spec.lag_per_replica
    keda_min = 0 if spec.scale_to_zero.enabled else spec.min_replicas
    hpa_min = max(1, keda_min)
    hpa_max = max(spec.max_replicas, hpa_min)

    def result(
        desired: int, reason: str, metric: int, new: KedaState
    ) -> tuple[Decision, KedaState]:
        if desired > current:
            new = _record(new, now, desired - current, up=True)
        elif desired < current:
            new = _record(new, now, current - desired, up=False)
        decision = Decision(
            desired=desired,
            current=current,
            reason=reason,
            should_patch=desired != current and not spec.paused,
            recommendation=desired,
            capped_by=None,
            partitions=observation.partition_count,
            total_lag=metric,
            lag_status=health.OK,
            paused=spec.paused,
            broker_ok=observation.broker_ok,
        )
        return decision, new

    if not observation.broker_ok:
        return result(current, "keda: metric unavailable, HPA keeps replicas", 0, state)

    metric = kafka_metric(observation, threshold)
    active = any(
        observation.committed.get(k) is None or end - (observation.committed.get(k) or 0) > 0
        for k, end in observation.end_offsets.items()
    )
    if active:
        state = KedaState(
            state.recommendations, state.scale_up_events, state.scale_down_events, now
        )

    if current == 0:
        if active and keda_min == 0:
            return result(hpa_min, f"keda: activated on lag {metric}", metric, state)
        if keda_min > 0:
            return result(hpa_min, "keda: below minReplicaCount", metric, state)
        return result(0, "keda: inactive at zero", metric, state)

    if keda_min == 0 and not active:
        since = state.last_active
        if since is None or now - since >= spec.scale_to_zero.idle_seconds:
            return result(0, "keda: inactive past cooldownPeriod, scale to zero", metric, state)

    if current > hpa_max:
        return result(hpa_max, "hpa: above maxReplicas", metric, state)
    if current < hpa_min:
        return result(hpa_min, "hpa: below minReplicas", metric, state)

    proposal = hpa_proposal(metric, threshold, current)
    cutoff = now - SCALE_DOWN_STABILIZATION_SECONDS
    window = [r for t, r in state.recommendations if t > cutoff]
    down_recommendation = max([proposal, *window])
    stabilized = current
    if stabilized < proposal:
        stabilized = proposal
    if stabilized > down_recommendation:
        stabilized = down_recommendation
    recommendations = (*((t, r) for t, r in state.recommendations if t > cutoff), (now, proposal))
    state = KedaState(
        recommendations, state.scale_up_events, state.scale_down_events, state.last_active
    )

    desired = stabilized
    if desired > current:
        desired = min(desired, hpa_max, _scale_up_limit(current, state, now))
    elif desired < current:
        desired = max(desired, hpa_min, _scale_down_limit(current, state, now))
    reason = (
        f"hpa: metric {metric} / target {threshold} with {current} replicas"
        f" proposes {proposal}, stabilized {stabilized}, scaled to {desired}"
    )
    return result(desired, reason, metric, state)


def _record(state: KedaState, now: float, change: int, up: bool) -> KedaState:
    keep = now - max(SCALE_UP_PERIOD_SECONDS, SCALE_DOWN_PERIOD_SECONDS)
    ups = tuple(e for e in state.scale_up_events if e[0] > keep)
    downs = tuple(e for e in state.scale_down_events if e[0] > keep)
    if up:
        ups += ((now, change),)
    else:
        downs += ((now, change),)
    return KedaState(state.recommendations, ups, downs, state.last_active)


class KedaPolicy:
    """KEDA + HPA with its state kept inside, for the simulator."""

    name = "keda"

    def __init__(self) -> None:
        self.state = KedaState()

    def poll_interval_seconds(self, spec: ScalingSpec) -> int:
        return HPA_SYNC_SECONDS

    def decide(self, observation: Observation, spec: ScalingSpec) -> Decision:
        decision, self.state = decide(observation, spec, self.state)
        return decision
