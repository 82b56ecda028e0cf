"""KEDA's Kafka scaler behind a HorizontalPodAutoscaler, as a policy to compare with.

Modelled on KEDA's pkg/scalers/kafka_scaler.go (getLagForPartition, getTotalLag,
GetMetricsAndActivity), its scale loop (pkg/scaling/executor/scale_scaledobjects.go:
RequestScale, activation and cooldown) and the HPA controller with its behavior. Kept
faithful on purpose, including the known rough edges, and configurable the way a careful
user configures it (:class:`KedaConfig`):

* **Per-partition lag** (getLagForPartition). end offset - committed offset. A partition
  without a committed offset counts 1 with ``offsetResetPolicy: latest`` (0 with
  ``scaleToZeroOnInvalidOffset``), and its whole end offset with ``earliest``. With
  ``excludePersistentLag``, a partition whose committed offset has not moved since the
  previous metric read counts 0 in the metric (but still in the activity check): KEDA
  keeps the previous offsets inside the scaler and updates them on every read.
* **Metric** (getTotalLag). The sum of partition lags, then, unless ``allowIdleConsumers``
  (which KEDA refuses together with ``limitToPartitionsWithLag``), capped at
  ``upperBound * lagThreshold`` when ``totalLag / lagThreshold > upperBound`` with Go's
  integer division: upperBound is the partition count, or with ``limitToPartitionsWithLag``
  the number of partitions whose (metric) lag is above 0. A lag between P*threshold and
  (P+1)*threshold - 1 is not capped, so the HPA can ask for P+1 (keda issue 4483).
* **Activity** (GetMetricsAndActivity): the total lag including persistent lag is above
  ``activationLagThreshold``. Every ``pollingInterval`` (30 s by default) KEDA's loop
  scales 0 -> max(minReplicaCount, 1) when active, and back to 0 when it has not been
  active for ``cooldownPeriod`` (300 s by default) and minReplicaCount is 0.
* **HPA** (AverageValue target = lagThreshold), every 15 s while replicas > 0:
  usageRatio = metric / (threshold * currentReplicas); within the 10 % tolerance nothing
  changes, else desired = ceil(metric / threshold). With the metric capped at
  P*threshold and P-1 replicas, the ratio P/(P-1) is inside the tolerance from P = 11 on:
  the HPA stays at P-1 while the lag grows (keda issue 2908).
* **Behavior**: scale up at most max(+4 pods, +100 %) per 15 s with no up stabilization;
  scale down to the highest recommendation of the last ``scaleDownStabilizationSeconds``
  (HPA default 300 s; a careful user sets the same window as kcg's), 100 % per 15 s.
* **Errors.** A failed metric read leaves replicas as they are (the generous reading:
  old KEDA versions could scale to zero on broker errors, keda issue 4098).

One metric read serves both the HPA and the loop at an instant (as with KEDA's
``useCachedMetrics``): two reads milliseconds apart would see unchanged offsets and, with
``excludePersistentLag``, zero every partition, which is not KEDA at its best.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from kcg_operator.api.models import ScalingSpec
from kcg_operator.scaling import health
from kcg_operator.scaling.policy import Decision, Observation, PartitionKey

HPA_SYNC_SECONDS = 15
HPA_TOLERANCE = 0.1
SCALE_UP_PODS = 4
SCALE_UP_PERCENT = 100
SCALE_UP_PERIOD_SECONDS = 15
SCALE_DOWN_PERCENT = 100
SCALE_DOWN_PERIOD_SECONDS = 15
#: KEDA's defaults (ScaledObject pollingInterval and cooldownPeriod, HPA stabilization).
DEFAULT_POLLING_INTERVAL_SECONDS = 30
DEFAULT_COOLDOWN_SECONDS = 300
DEFAULT_SCALE_DOWN_STABILIZATION_SECONDS = 300

LATEST = "latest"
EARLIEST = "earliest"


class KedaConfigError(ValueError):
    """A combination KEDA itself refuses (kafkaMetadata.Validate)."""


@dataclass(frozen=True)
class KedaConfig:
    """A ScaledObject with one Kafka trigger, and the HPA behavior it creates."""

    lag_threshold: int
    min_replica_count: int = 0
    max_replica_count: int = 100
    activation_lag_threshold: int = 0
    offset_reset_policy: str = LATEST
    allow_idle_consumers: bool = False
    exclude_persistent_lag: bool = False
    limit_to_partitions_with_lag: bool = False
    scale_to_zero_on_invalid_offset: bool = False
    polling_interval_seconds: int = DEFAULT_POLLING_INTERVAL_SECONDS
    cooldown_period_seconds: int = DEFAULT_COOLDOWN_SECONDS
    scale_down_stabilization_seconds: int = DEFAULT_SCALE_DOWN_STABILIZATION_SECONDS

    def __post_init__(self) -> None:
        if self.lag_threshold <= 0:
            raise KedaConfigError('"lagThreshold" must be positive number')
        if self.activation_lag_threshold < 0:
            raise KedaConfigError('"activationLagThreshold" must be a non-negative number')
        if self.offset_reset_policy not in (LATEST, EARLIEST):
            raise KedaConfigError(f"err offsetResetPolicy policy {self.offset_reset_policy}")
        if self.allow_idle_consumers and self.limit_to_partitions_with_lag:
            raise KedaConfigError(
                "allowIdleConsumers and limitToPartitionsWithLag cannot be set simultaneously"
            )

    @classmethod
    def defaults(cls, spec: ScalingSpec, lag_threshold: int | None = None) -> KedaConfig:
        """KEDA as installed: its defaults, the spec's bounds, lagThreshold = lagPerReplica."""
        return cls(
            lag_threshold=lag_threshold or spec.lag_per_replica,
            min_replica_count=0 if spec.scale_to_zero.enabled else spec.min_replicas,
            max_replica_count=spec.max_replicas,
        )

    @classmethod
    def careful(cls, spec: ScalingSpec, lag_threshold: int) -> KedaConfig:
        """What a careful user sets: poison partitions and idle partitions do not scale,
        new groups count their whole backlog, the HPA forgets as fast as kcg does, and
        scale to zero waits as long as kcg's idleSeconds."""
        return cls(
            lag_threshold=lag_threshold,
            min_replica_count=0 if spec.scale_to_zero.enabled else spec.min_replicas,
            max_replica_count=spec.max_replicas,
            activation_lag_threshold=0,
            offset_reset_policy=EARLIEST,
            exclude_persistent_lag=True,
            limit_to_partitions_with_lag=True,
            cooldown_period_seconds=(
                spec.scale_to_zero.idle_seconds
                if spec.scale_to_zero.enabled
                else DEFAULT_COOLDOWN_SECONDS
            ),
            scale_down_stabilization_seconds=spec.scale_down_stabilization_seconds,
        )

    def describe(self) -> str:
        options = [f"lagThreshold={self.lag_threshold}"]
        if self.activation_lag_threshold:
            options.append(f"activationLagThreshold={self.activation_lag_threshold}")
        if self.offset_reset_policy != LATEST:
            options.append(f"offsetResetPolicy={self.offset_reset_policy}")
        for name, on in (
            ("allowIdleConsumers", self.allow_idle_consumers),
            ("excludePersistentLag", self.exclude_persistent_lag),
            ("limitToPartitionsWithLag", self.limit_to_partitions_with_lag),
            ("scaleToZeroOnInvalidOffset", self.scale_to_zero_on_invalid_offset),
        ):
            if on:
                options.append(f"{name}=true")
        return ", ".join(options)


@dataclass(frozen=True)
class KafkaMetric:
    """One read of the scaler: what the HPA gets and what the activity check uses."""

    metric: int
    lag_with_persistent: int
    partitions_with_lag: int
    active: bool
    previous_offsets: Mapping[PartitionKey, int]


def partition_lag(
    end: int,
    committed: int | None,
    previous: int | None,
    config: KedaConfig,
) -> tuple[int, int]:
    """(lag, lagWithPersistent) of one partition, as getLagForPartition computes them."""
    if committed is None:
        if config.offset_reset_policy == LATEST:
            value = 0 if config.scale_to_zero_on_invalid_offset else 1
            return value, value
        if config.scale_to_zero_on_invalid_offset:
            return 0, 0
        return end, end
    lag = end - committed
    if config.exclude_persistent_lag and previous is not None and previous == committed:
        # Same offset as at the previous read: maybe a message the consumer cannot get
        # past; KEDA leaves it out of the metric but not out of the activity check.
        return 0, lag
    return lag, lag


def kafka_metric(
    observation: Observation,
    config: KedaConfig,
    previous_offsets: Mapping[PartitionKey, int] | None = None,
) -> KafkaMetric:
    """The scaler's metric and activity for one read, and the offsets it remembers."""
    previous = dict(previous_offsets or {})
    total = with_persistent = with_lag = 0
    for key, end in observation.end_offsets.items():
        committed = observation.committed.get(key)
        lag, lag_persistent = partition_lag(end, committed, previous.get(key), config)
        if config.exclude_persistent_lag and committed is not None:
            previous[key] = committed
        total += lag
        with_persistent += lag_persistent
        if lag > 0:
            with_lag += 1
    if not config.allow_idle_consumers or config.limit_to_partitions_with_lag:
        upper = with_lag if config.limit_to_partitions_with_lag else observation.partition_count
        # Go's integer division: the cap applies only from (upper + 1) * threshold on.
        if total // config.lag_threshold > upper:
            total = upper * config.lag_threshold
    return KafkaMetric(
        metric=total,
        lag_with_persistent=with_persistent,
        partitions_with_lag=with_lag,
        active=with_persistent > config.activation_lag_threshold,
        previous_offsets=previous,
    )


def hpa_proposal(metric: int, target_per_pod: int, status_replicas: int) -> int:
    """The HPA's replica count for an External AverageValue metric (replica calculator)."""
    ratio = metric / (target_per_pod * status_replicas)
    if abs(1.0 - ratio) > HPA_TOLERANCE:
        return math.ceil(metric / target_per_pod)
    return status_replicas


@dataclass(frozen=True)
class KedaState:
    """The scaler's previous offsets, the HPA's memory and KEDA's loop timing."""

    recommendations: tuple[tuple[float, int], ...] = ()
    scale_up_events: tuple[tuple[float, int], ...] = ()
    scale_down_events: tuple[tuple[float, int], ...] = ()
    last_active: float | None = None
    last_poll: float | None = None
    previous_offsets: Mapping[PartitionKey, int] = field(default_factory=dict)


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


def _record(state: KedaState, now: float, change: int, up: bool) -> KedaState:
    keep = now - max(SCALE_UP_PERIOD_SECONDS, SCALE_DOWN_PERIOD_SECONDS)
    ups = tuple(e for e in state.scale_up_events if e[0] > keep)
    downs = tuple(e for e in state.scale_down_events if e[0] > keep)
    if up:
        ups += ((now, change),)
    else:
        downs += ((now, change),)
    return replace(state, scale_up_events=ups, scale_down_events=downs)


def decide(
    observation: Observation,
    spec: ScalingSpec,
    state: KedaState | None = None,
    config: KedaConfig | None = None,
) -> tuple[Decision, KedaState]:
    """One HPA sync (and, when due, one KEDA loop) for the group."""
    state = state or KedaState()
    config = config or KedaConfig.defaults(spec)
    now = observation.time_s
    current = observation.replicas
    threshold = config.lag_threshold
    keda_min = config.min_replica_count
    hpa_min = max(1, keda_min)
    hpa_max = max(config.max_replica_count, hpa_min)

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
        return result(current, "keda: metric unavailable, replicas kept", 0, state)

    read = kafka_metric(observation, config, state.previous_offsets)
    metric = read.metric
    state = replace(state, previous_offsets=read.previous_offsets)

    # KEDA's own loop, every pollingInterval: activation (0 -> 1) and cooldown (-> 0).
    if state.last_poll is None or now - state.last_poll >= config.polling_interval_seconds:
        state = replace(state, last_poll=now)
        if read.active:
            if current == 0:
                state = replace(state, last_active=now)
                return result(hpa_min, f"keda: activated on lag {read.lag_with_persistent}",
                              metric, state)  # fmt: skip
            state = replace(state, last_active=now)
        elif current > 0 and keda_min == 0:
            since = state.last_active
            if since is None or now - since >= config.cooldown_period_seconds:
                return result(0, "keda: inactive past cooldownPeriod, scale to zero", metric,
                              state)  # fmt: skip
        elif current < keda_min:
            return result(keda_min, "keda: below minReplicaCount", metric, state)

    if current == 0:
        # The HPA does not act on a target at zero replicas.
        return result(0, "keda: inactive at zero", metric, state)
    if current > hpa_max:
        return result(hpa_max, "hpa: above maxReplicas", metric, state)
    if current < hpa_min:
        return result(hpa_min, "hpa: below minReplicas", metric, state)

    proposal = hpa_proposal(metric, threshold, current)
    cutoff = now - config.scale_down_stabilization_seconds
    window = [r for t, r in state.recommendations if t > cutoff]
    down_recommendation = max([proposal, *window])
    stabilized = current
    if stabilized < proposal:
        stabilized = proposal
    if stabilized > down_recommendation:
        stabilized = down_recommendation
    recommendations = (*((t, r) for t, r in state.recommendations if t > cutoff), (now, proposal))
    state = replace(state, recommendations=recommendations)

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


class KedaPolicy:
    """KEDA + HPA with its state kept inside, for the simulator.

    Without a config it is KEDA as installed, with lagThreshold = the spec's lagPerReplica.
    """

    name = "keda"
    observes_health = False
    counts_from_log_start = False

    def __init__(self, config: KedaConfig | None = None) -> None:
        self.config = config
        self.state = KedaState()

    def poll_interval_seconds(self, spec: ScalingSpec) -> int:
        return HPA_SYNC_SECONDS

    def decide(self, observation: Observation, spec: ScalingSpec) -> Decision:
        decision, self.state = decide(observation, spec, self.state, self.config)
        return decision


__all__ = [
    "EARLIEST",
    "LATEST",
    "KafkaMetric",
    "KedaConfig",
    "KedaConfigError",
    "KedaPolicy",
    "KedaState",
    "decide",
    "hpa_proposal",
    "kafka_metric",
    "partition_lag",
]
