"""Noise is a pure function of its seed: the same seed, the same world for every policy."""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kcg_operator.scaling.noise import (
    SPEED_FACTOR_BOUNDS,
    Noise,
    measurement_delays,
    rate_multipliers,
    speed_factors,
)

pytestmark = pytest.mark.unit


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31), seconds=st.integers(1, 400), slots=st.integers(1, 30))
def test_the_same_seed_draws_the_same_noise(seed: int, seconds: int, slots: int) -> None:
    noise = Noise(seed=seed)
    assert rate_multipliers(noise, seconds) == rate_multipliers(Noise(seed=seed), seconds)
    assert speed_factors(noise, slots) == speed_factors(Noise(seed=seed), slots)
    assert measurement_delays(noise, slots) == measurement_delays(Noise(seed=seed), slots)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_different_seeds_draw_different_noise(seed: int) -> None:
    assert rate_multipliers(Noise(seed=seed), 50) != rate_multipliers(Noise(seed=seed + 1), 50)
    assert speed_factors(Noise(seed=seed), 10) != speed_factors(Noise(seed=seed + 1), 10)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31), slots=st.integers(1, 40), more=st.integers(0, 40))
def test_draws_are_prefix_stable_and_within_bounds(seed: int, slots: int, more: int) -> None:
    noise = Noise(seed=seed)
    # Growing the table of replica speeds never changes the speed of an existing slot.
    assert speed_factors(noise, slots + more)[:slots] == speed_factors(noise, slots)
    low, high = SPEED_FACTOR_BOUNDS
    assert all(low <= f <= high for f in speed_factors(noise, slots + more))
    delays = measurement_delays(noise, slots)
    assert all(0 <= d <= noise.measurement_delay_seconds for d in delays)
    assert all(m > 0 for m in rate_multipliers(noise, slots))


def test_jitter_keeps_the_mean_rate_and_has_the_requested_spread() -> None:
    noise = Noise(seed=1, rate_jitter=0.15, jitter_seconds=30)
    draws = rate_multipliers(noise, 200_000)
    assert statistics.fmean(draws) == pytest.approx(1.0, abs=0.02)
    spread = statistics.pstdev(math.log(m) for m in draws)
    assert spread == pytest.approx(0.15, rel=0.1)
    # Correlated over tens of seconds: neighbours are close, distant seconds are not.
    logs = [math.log(m) for m in draws[:20_000]]
    near = statistics.correlation(logs[:-1], logs[1:])
    far = statistics.correlation(logs[:-300], logs[300:])
    assert near > 0.9
    assert abs(far) < 0.2


def test_no_noise_is_the_clean_world() -> None:
    assert rate_multipliers(None, 5) == (1.0,) * 5
    assert speed_factors(None, 3) == (1.0,) * 3
    assert measurement_delays(None, 4) == (0,) * 4
    quiet = Noise(seed=3, rate_jitter=0, speed_spread=0, measurement_delay_seconds=0)
    assert rate_multipliers(quiet, 5) == (1.0,) * 5
    assert speed_factors(quiet, 3) == (1.0,) * 3
    assert measurement_delays(quiet, 4) == (0,) * 4
