"""The KEDA + HPA model: its metric cap, the HPA's arithmetic and its default behavior."""

from __future__ import annotations

import pytest

from kcg_operator.api.models import ScalingSpec
from kcg_operator.scaling.keda import KedaState, decide, hpa_proposal, kafka_metric
from kcg_operator.scaling.policy import Observation

pytestmark = pytest.mark.unit


def observation(t: float, lags: list[int], replicas: int) -> Observation:
    return Observation(
        time_s=t,
        end_offsets={("t", p): 10_000_000 for p in range(len(lags))},
        committed={("t", p): 10_000_000 - lag for p, lag in enumerate(lags)},
        replicas=replicas,
    )


def test_metric_cap_uses_integer_division() -> None:
    # 5 partitions, threshold 5: lag 29 is 5 "replicas" by integer division, not capped.
    assert kafka_metric(observation(0, [29, 0, 0, 0, 0], 1), 5) == 29
    # lag 30 is 6 > 5: capped at 5 x 5.
    assert kafka_metric(observation(0, [30, 0, 0, 0, 0], 1), 5) == 25


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


def test_scale_down_waits_for_the_300_s_window() -> None:
    spec = ScalingSpec(max_replicas=10, lag_per_replica=100)
    d, state = decide(observation(0, [100] * 10, 10), spec)
    assert d.desired == 10
    for t in range(15, 300, 15):
        d, state = decide(observation(t, [0] * 10, 10), spec, state)
        assert d.desired == 10, t
    d, state = decide(observation(300, [0] * 10, 10), spec, state)
    assert d.desired == 1


def test_broker_error_keeps_replicas() -> None:
    spec = ScalingSpec(max_replicas=10)
    failed = Observation(0, {}, {}, replicas=4, broker_ok=False)
    d, _ = decide(failed, spec)
    assert d.desired == 4
    assert not d.should_patch


def test_scale_to_zero_after_cooldown_and_activation_on_lag() -> None:
    spec = ScalingSpec.model_validate(
        {"minReplicas": 0, "maxReplicas": 5, "scaleToZero": {"enabled": True, "idleSeconds": 60}}
    )
    d, state = decide(observation(0, [10, 0], 2), spec)
    assert d.desired >= 1
    for t in range(15, 75, 15):
        d, state = decide(observation(t, [0, 0], 1), spec, state)
    assert d.desired == 0
    d, state = decide(observation(90, [0, 0], 0), spec, state)
    assert d.desired == 0
    d, _ = decide(observation(105, [3, 0], 0), spec, state)
    assert d.desired == 1
