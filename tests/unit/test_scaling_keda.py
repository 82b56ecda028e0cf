"""The KEDA + HPA model: each option does what kafka_scaler.go and the HPA make it do.

Every expected figure below is computed by hand from KEDA's code (getLagForPartition,
getTotalLag, GetMetricsAndActivity, RequestScale) and the HPA's replica calculator.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kcg_operator.api.models import ScalingSpec
from kcg_operator.scaling.keda import (
    EARLIEST,
    KedaConfig,
    KedaConfigError,
    KedaState,
    decide,
    hpa_proposal,
    kafka_metric,
    partition_lag,
)
from kcg_operator.scaling.policy import Observation

pytestmark = pytest.mark.unit

END = 10_000_000


def observation(t: float, lags: Sequence[int | None], replicas: int, end: int = END) -> Observation:
    """Partitions with the given lags (None: the group never committed there)."""
    return Observation(
        time_s=t,
        end_offsets={("t", p): end for p in range(len(lags))},
        committed={("t", p): None if lag is None else end - lag for p, lag in enumerate(lags)},
        replicas=replicas,
    )


def config(threshold: int = 5, **options: object) -> KedaConfig:
    return KedaConfig(lag_threshold=threshold, max_replica_count=100, **options)  # type: ignore[arg-type]


# -- the metric (getTotalLag) -------------------------------------------------------------


def test_metric_cap_uses_integer_division() -> None:
    # 5 partitions, threshold 5: lag 29 is 5 "replicas" by integer division, not capped.
    assert kafka_metric(observation(0, [29, 0, 0, 0, 0], 1), config()).metric == 29
    # lag 30 is 6 > 5: capped at 5 x 5.
    assert kafka_metric(observation(0, [30, 0, 0, 0, 0], 1), config()).metric == 25


def test_allow_idle_consumers_removes_the_cap() -> None:
    read = kafka_metric(observation(0, [300, 0], 1), config(allow_idle_consumers=True))
    assert read.metric == 300
    assert kafka_metric(observation(0, [300, 0], 1), config()).metric == 2 * 5


def test_limit_to_partitions_with_lag_caps_at_the_partitions_that_have_lag() -> None:
    # 6 partitions, 2 with lag: total 100, 100 // 5 = 20 > 2, so 2 x 5.
    lags = [60, 40, 0, 0, 0, 0]
    assert (
        kafka_metric(observation(0, lags, 1), config(limit_to_partitions_with_lag=True)).metric
        == 10
    )
    # Without the option the cap is the partition count: 6 x 5.
    assert kafka_metric(observation(0, lags, 1), config()).metric == 30


def test_keda_refuses_allow_idle_consumers_with_limit_to_partitions_with_lag() -> None:
    with pytest.raises(KedaConfigError, match="cannot be set simultaneously"):
        config(allow_idle_consumers=True, limit_to_partitions_with_lag=True)
    with pytest.raises(KedaConfigError, match="lagThreshold"):
        config(threshold=0)


def test_offset_reset_policy_decides_the_lag_of_a_never_committed_partition() -> None:
    # latest: KEDA counts 1 so that the group can activate; earliest: the whole log.
    assert partition_lag(5000, None, None, config()) == (1, 1)
    assert partition_lag(5000, None, None, config(offset_reset_policy=EARLIEST)) == (5000, 5000)
    # scaleToZeroOnInvalidOffset makes it 0 with either policy.
    assert partition_lag(5000, None, None, config(scale_to_zero_on_invalid_offset=True)) == (0, 0)
    assert partition_lag(
        5000, None, None, config(offset_reset_policy=EARLIEST, scale_to_zero_on_invalid_offset=True)
    ) == (0, 0)
    fresh = observation(0, [None, None, None], 0, end=4000)
    assert kafka_metric(fresh, config()).metric == 3
    assert kafka_metric(fresh, config(1000, offset_reset_policy=EARLIEST)).metric == 3000


def test_exclude_persistent_lag_drops_a_partition_whose_offset_did_not_move() -> None:
    options = config(1000, exclude_persistent_lag=True)
    first = observation(0, [500, 40], 1)
    read = kafka_metric(first, options)
    # First read: no previous offsets, everything counts.
    assert read.metric == 540
    # Partition 0 is stuck (same committed offset), partition 1 moved on.
    second = Observation(
        15,
        {("t", 0): END + 300, ("t", 1): END + 300},
        {("t", 0): END - 500, ("t", 1): END + 280},
        replicas=1,
    )
    again = kafka_metric(second, options, read.previous_offsets)
    assert again.metric == 20
    # The stuck lag still counts for activity (lagWithPersistent).
    assert again.lag_with_persistent == 800 + 20
    assert again.active
    # Without the option, the stuck partition drives the metric.
    assert kafka_metric(second, config(1000), read.previous_offsets).metric == 820


def test_activation_lag_threshold_decides_when_zero_wakes_up() -> None:
    spec = ScalingSpec.model_validate(
        {"minReplicas": 0, "maxReplicas": 5, "scaleToZero": {"enabled": True}}
    )
    quiet = config(100, activation_lag_threshold=50)
    d, _ = decide(observation(0, [30, 20], 0), spec, None, quiet)
    assert d.desired == 0  # 50 is not above 50
    d, _ = decide(observation(0, [30, 21], 0), spec, None, quiet)
    assert d.desired == 1


def test_activation_and_cooldown_happen_only_on_the_polling_interval() -> None:
    spec = ScalingSpec.model_validate(
        {"minReplicas": 0, "maxReplicas": 5, "scaleToZero": {"enabled": True}}
    )
    options = config(100, polling_interval_seconds=30, cooldown_period_seconds=60)
    d, state = decide(observation(0, [0, 0], 0), spec, None, options)
    assert d.desired == 0
    # Lag appears at the HPA's sync (15 s), but KEDA's loop polls at 30 s only.
    d, state = decide(observation(15, [10, 0], 0), spec, state, options)
    assert d.desired == 0
    d, state = decide(observation(30, [10, 0], 0), spec, state, options)
    assert d.desired == 1
    # Active last at 30; inactive polls at 60 (30 s < cooldown) and 90 (60 s: scale in).
    d, state = decide(observation(45, [0, 0], 1), spec, state, options)
    assert d.desired == 1
    d, state = decide(observation(60, [0, 0], 1), spec, state, options)
    assert d.desired == 1
    d, state = decide(observation(75, [0, 0], 1), spec, state, options)
    assert d.desired == 1
    d, state = decide(observation(90, [0, 0], 1), spec, state, options)
    assert d.desired == 0


def test_careful_preset_sets_the_options_from_the_spec() -> None:
    spec = ScalingSpec.model_validate(
        {
            "minReplicas": 0,
            "maxReplicas": 7,
            "scaleDownStabilizationSeconds": 120,
            "scaleToZero": {"enabled": True, "idleSeconds": 400},
        }
    )
    careful = KedaConfig.careful(spec, 3000)
    assert careful.exclude_persistent_lag and careful.limit_to_partitions_with_lag
    assert careful.offset_reset_policy == EARLIEST
    assert careful.cooldown_period_seconds == 400
    assert careful.scale_down_stabilization_seconds == 120
    assert (careful.min_replica_count, careful.max_replica_count) == (0, 7)
    defaults = KedaConfig.defaults(spec)
    assert defaults.lag_threshold == spec.lag_per_replica
    assert (defaults.polling_interval_seconds, defaults.cooldown_period_seconds) == (30, 300)
    assert defaults.scale_down_stabilization_seconds == 300


@settings(max_examples=200, deadline=None)
@given(
    lags=st.lists(st.integers(0, 5000), min_size=1, max_size=12),
    threshold=st.integers(1, 2000),
    limit=st.booleans(),
)
def test_the_capped_metric_never_asks_for_more_than_one_past_the_bound(
    lags: list[int], threshold: int, limit: bool
) -> None:
    read = kafka_metric(
        observation(0, lags, 1), config(threshold, limit_to_partitions_with_lag=limit)
    )
    bound = sum(1 for lag in lags if lag > 0) if limit else len(lags)
    # Integer division lets a lag just under (bound + 1) x threshold through: P + 1 at most.
    assert -(-read.metric // threshold) <= bound + 1
    assert read.metric <= sum(lags)


# -- the HPA ---------------------------------------------------------------------------------


def test_hpa_reaches_partitions_plus_one() -> None:
    # keda issue 4483: ceil(29 / 5) = 6 replicas for a 5-partition topic.
    assert hpa_proposal(29, 5, status_replicas=5) == 6


def test_hpa_stalls_one_short_of_the_partitions() -> None:
    # keda issue 2908: metric capped at 12 x threshold, 11 replicas: ratio 12/11 < 1.1.
    assert hpa_proposal(12 * 1000, 1000, status_replicas=11) == 11
    # With fewer partitions the ratio leaves the tolerance and the HPA reaches P.
    assert hpa_proposal(6 * 1000, 1000, status_replicas=5) == 6


def test_hpa_tolerance_is_ten_percent() -> None:
    assert hpa_proposal(1090, 100, status_replicas=10) == 10
    assert hpa_proposal(910, 100, status_replicas=10) == 10
    assert hpa_proposal(1101, 100, status_replicas=10) == 12
    assert hpa_proposal(890, 100, status_replicas=10) == 9


def test_scale_up_is_limited_to_four_pods_or_double_per_period() -> None:
    spec = ScalingSpec(max_replicas=100, lag_per_replica=100)
    d, state = decide(observation(0, [100_000] * 50, 2), spec)
    assert d.desired == 6  # max(2 + 4, 2 * 2)
    d, state = decide(observation(15, [100_000] * 50, 6), spec, state)
    assert d.desired == 12  # max(6 + 4, 6 * 2)
    d, _ = decide(observation(15, [100_000] * 50, 12), spec, KedaState())
    assert d.desired == 24


@pytest.mark.parametrize("window", [300, 60])
def test_scale_down_waits_for_the_stabilization_window(window: int) -> None:
    spec = ScalingSpec(max_replicas=10, lag_per_replica=100)
    options = KedaConfig(lag_threshold=100, min_replica_count=1, max_replica_count=10,
                         scale_down_stabilization_seconds=window)  # fmt: skip
    d, state = decide(observation(0, [100] * 10, 10), spec, None, options)
    assert d.desired == 10
    for t in range(15, window, 15):
        d, state = decide(observation(t, [0] * 10, 10), spec, state, options)
        assert d.desired == 10, t
    d, state = decide(observation(window, [0] * 10, 10), spec, state, options)
    assert d.desired == 1


def test_broker_error_keeps_replicas() -> None:
    spec = ScalingSpec(max_replicas=10)
    failed = Observation(0, {}, {}, replicas=4, broker_ok=False)
    d, _ = decide(failed, spec)
    assert d.desired == 4
    assert not d.should_patch
