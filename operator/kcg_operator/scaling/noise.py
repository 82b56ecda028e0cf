"""Seeded noise for the simulator: jittery traffic, uneven replicas, late measurements.

Real traffic is never the clean piecewise-constant curve a scenario file describes, pods
are not equally fast, and the operator sees offsets some seconds after they happened. A
policy that only works on clean inputs is tuned to the simulator, not to production, so
the benchmark replays every scenario under several seeds of this noise.

Everything here is a pure function of (:class:`Noise`, stream name, index): the same seed
gives the same traffic, the same replica speeds and the same delays to every policy, so
policies are compared on identical worlds, and the oracle can know the whole future.

* **Rate jitter.** Production at second t is the scenario's rate times a multiplier whose
  logarithm is an AR(1) process (correlation time ``jitter_seconds``) with standard
  deviation ``rate_jitter``, corrected so that the multiplier's mean is 1: bursts of
  tens of seconds, as real producers have, rather than independent per-second noise.
* **Replica speed.** The replica in slot k (the k-th oldest pod) runs at the scenario's
  per-replica rate times ``speed_factors[k]`` (lognormal, spread ``speed_spread``, clipped to
  [0.5, 1.5]). The ReplicaSet removes the newest pods first, so a pod's slot never changes
  in its life: one draw per slot is one speed per pod.
* **Measurement delay.** At each poll the policy sees offsets from ``delay`` seconds
  earlier, with ``delay`` drawn uniformly from 0..``measurement_delay_seconds`` per poll
  (collection latency plus the consumers' commit interval).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

#: Bounds of a replica's speed factor: a pod at half speed is sick, not noisy.
SPEED_FACTOR_BOUNDS = (0.5, 1.5)


@dataclass(frozen=True)
class Noise:
    """Noise levels and the seed that fixes their realization."""

    seed: int
    rate_jitter: float = 0.15
    jitter_seconds: float = 30.0
    speed_spread: float = 0.1
    measurement_delay_seconds: int = 10

    def levels(self) -> str:
        """The noise levels, in words (the same for every seed)."""
        return (
            f"rate jitter {self.rate_jitter:g} ({self.jitter_seconds:g} s),"
            f" replica speed spread {self.speed_spread:g},"
            f" measurement delay 0..{self.measurement_delay_seconds} s"
        )

    def describe(self) -> str:
        return f"seed {self.seed}: {self.levels()}"


def _rng(noise: Noise, stream: str) -> random.Random:
    # A string seed goes through SHA-512 in random.seed (version 2), so the draws do not
    # depend on PYTHONHASHSEED or the process: the same seed replays the same world.
    return random.Random(f"kcg-noise:{noise.seed}:{stream}")


def rate_multipliers(noise: Noise | None, seconds: int) -> tuple[float, ...]:
    """One production multiplier per second (mean 1)."""
    if noise is None or noise.rate_jitter <= 0:
        return (1.0,) * seconds
    rng = _rng(noise, "rate")
    phi = math.exp(-1.0 / max(noise.jitter_seconds, 1e-9))
    sigma = noise.rate_jitter
    innovation = sigma * math.sqrt(1.0 - phi * phi)
    # The lognormal's mean is exp(sigma^2 / 2); shifting the log by half the variance
    # keeps the mean production equal to the scenario's.
    shift = -0.5 * sigma * sigma
    level = rng.gauss(0.0, sigma)
    out: list[float] = []
    for _ in range(seconds):
        out.append(math.exp(level + shift))
        level = phi * level + rng.gauss(0.0, innovation)
    return tuple(out)


def speed_factors(noise: Noise | None, slots: int) -> tuple[float, ...]:
    """Speed multiplier of the replica in each slot (0 = the oldest pod)."""
    if noise is None or noise.speed_spread <= 0:
        return (1.0,) * slots
    rng = _rng(noise, "speed")
    low, high = SPEED_FACTOR_BOUNDS
    sigma = noise.speed_spread
    return tuple(
        min(high, max(low, math.exp(rng.gauss(-0.5 * sigma * sigma, sigma)))) for _ in range(slots)
    )


def measurement_delays(noise: Noise | None, polls: int) -> tuple[int, ...]:
    """Delay in seconds of the offsets seen at each poll."""
    if noise is None or noise.measurement_delay_seconds <= 0:
        return (0,) * polls
    rng = _rng(noise, "delay")
    return tuple(rng.randint(0, noise.measurement_delay_seconds) for _ in range(polls))


__all__ = ["Noise", "measurement_delays", "rate_multipliers", "speed_factors"]
