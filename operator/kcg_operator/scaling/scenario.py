"""Scenario files for `kcg simulate` and `make bench-scaling`: parsing and validation.

A scenario is a topic, its traffic, the consumers' speed and costs, and the CR's
``spec.scaling``; see :mod:`kcg_operator.scaling.simulator` for the format. Parsing is
strict: an unknown or malformed key is an error that names the key, so a typo never
silently changes a benchmark.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kcg_operator.api.models import ScalingSpec


class ScenarioError(ValueError):
    """A scenario file that cannot be run; the message names the key."""


@dataclass(frozen=True)
class RateStep:
    at: int
    rate: float


@dataclass(frozen=True)
class Scenario:
    """A parsed, validated scenario."""

    name: str
    partitions: int
    duration_seconds: int
    initial_replicas: int
    initial_backlog: int
    slo_seconds: float
    per_replica_rate: float
    startup_seconds: int
    rebalance_pause_seconds: int
    rate: tuple[RateStep, ...]
    weights: tuple[float, ...]
    scaling: ScalingSpec
    broker_errors: tuple[tuple[int, int], ...] = ()
    poison: tuple[tuple[int, int, int], ...] = ()
    description: str = ""

    def rate_at(self, t: int) -> float:
        current = 0.0
        for step in self.rate:
            if step.at <= t:
                current = step.rate
            else:
                break
        return current

    def broker_ok_at(self, t: int) -> bool:
        return not any(start <= t < end for start, end in self.broker_errors)

    def poisoned_at(self, t: int) -> frozenset[int]:
        """Partitions whose consumer cannot get past a message at second ``t``."""
        return frozenset(p for p, start, end in self.poison if start <= t < end)


_KEYS = {
    "name", "description", "partitions", "duration_seconds", "initial_replicas",
    "initial_backlog", "slo_seconds", "per_replica_rate", "startup_seconds",
    "rebalance_pause_seconds", "rate", "weights", "broker_errors", "poison", "scaling",
}  # fmt: skip


def _number(
    data: Mapping[str, Any],
    key: str,
    *,
    minimum: float,
    integer: bool,
    default: float | None = None,
) -> float:
    if key not in data:
        if default is None:
            raise ScenarioError(f"missing required key {key!r}")
        return default
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScenarioError(f"{key!r} must be a number, got {value!r}")
    if integer and not float(value).is_integer():
        raise ScenarioError(f"{key!r} must be a whole number, got {value!r}")
    if value < minimum:
        raise ScenarioError(f"{key!r} must be at least {minimum:g}, got {value!r}")
    return float(value)


def parse_scenario(data: Any, name: str = "scenario") -> Scenario:
    """Validate a scenario mapping (as loaded from YAML)."""
    if not isinstance(data, Mapping):
        raise ScenarioError("a scenario must be a mapping of keys to values")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ScenarioError(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(_KEYS))})")

    partitions = int(_number(data, "partitions", minimum=1, integer=True))
    duration = int(_number(data, "duration_seconds", minimum=1, integer=True))
    initial_replicas = int(_number(data, "initial_replicas", minimum=0, integer=True, default=1))
    backlog = int(_number(data, "initial_backlog", minimum=0, integer=True, default=0))
    slo = _number(data, "slo_seconds", minimum=1, integer=False)
    per_replica = _number(data, "per_replica_rate", minimum=0, integer=False)
    startup = int(_number(data, "startup_seconds", minimum=0, integer=True, default=0))
    pause = int(_number(data, "rebalance_pause_seconds", minimum=0, integer=True, default=0))

    steps = data.get("rate")
    if not isinstance(steps, list) or not steps:
        raise ScenarioError("'rate' must be a non-empty list of {at, rate} steps")
    rate: list[RateStep] = []
    for i, step in enumerate(steps):
        where = f"rate[{i}]"
        if not isinstance(step, Mapping) or set(step) != {"at", "rate"}:
            raise ScenarioError(f"{where!r} must be a mapping with exactly 'at' and 'rate'")
        at = int(_number(step, "at", minimum=0, integer=True))
        value = _number(step, "rate", minimum=0, integer=False)
        if rate and at <= rate[-1].at:
            raise ScenarioError(f"{where}.at must be after the previous step's 'at' ({at})")
        rate.append(RateStep(at, value))

    raw_weights = data.get("weights")
    if raw_weights is None:
        weights = tuple(1.0 for _ in range(partitions))
    else:
        if not isinstance(raw_weights, list) or len(raw_weights) != partitions:
            raise ScenarioError(
                f"'weights' must be a list of {partitions} numbers (one per partition)"
            )
        if any(isinstance(w, bool) or not isinstance(w, int | float) or w < 0 for w in raw_weights):
            raise ScenarioError("'weights' must hold numbers that are zero or more")
        if sum(raw_weights) <= 0:
            raise ScenarioError("'weights' must not all be zero")
        weights = tuple(float(w) for w in raw_weights)

    errors: list[tuple[int, int]] = []
    for i, window in enumerate(data.get("broker_errors") or []):
        if not isinstance(window, Mapping) or set(window) != {"from", "to"}:
            raise ScenarioError(f"'broker_errors[{i}]' must be a mapping with 'from' and 'to'")
        start = int(_number(window, "from", minimum=0, integer=True))
        end = int(_number(window, "to", minimum=0, integer=True))
        if end <= start:
            raise ScenarioError(f"broker_errors[{i}].to must be after its 'from'")
        errors.append((start, end))

    poison: list[tuple[int, int, int]] = []
    for i, entry in enumerate(data.get("poison") or []):
        if not isinstance(entry, Mapping) or set(entry) != {"partition", "from", "to"}:
            raise ScenarioError(
                f"'poison[{i}]' must be a mapping with 'partition', 'from' and 'to'"
            )
        partition = int(_number(entry, "partition", minimum=0, integer=True))
        if partition >= partitions:
            raise ScenarioError(f"poison[{i}].partition must be below {partitions}")
        start = int(_number(entry, "from", minimum=0, integer=True))
        end = int(_number(entry, "to", minimum=0, integer=True))
        if end <= start:
            raise ScenarioError(f"poison[{i}].to must be after its 'from'")
        poison.append((partition, start, end))

    raw_scaling = data.get("scaling")
    if not isinstance(raw_scaling, Mapping):
        raise ScenarioError("missing required key 'scaling' (the CR's spec.scaling, camelCase)")
    try:
        scaling = ScalingSpec.model_validate(dict(raw_scaling))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(["scaling", *(str(part) for part in first["loc"])])
        raise ScenarioError(f"{where}: {first['msg']}") from None

    total = sum(weights)
    return Scenario(
        name=str(data.get("name", name)),
        description=str(data.get("description", "")),
        partitions=partitions,
        duration_seconds=duration,
        initial_replicas=initial_replicas,
        initial_backlog=backlog,
        slo_seconds=slo,
        per_replica_rate=per_replica,
        startup_seconds=startup,
        rebalance_pause_seconds=pause,
        rate=tuple(rate),
        weights=tuple(w / total for w in weights),
        scaling=scaling,
        broker_errors=tuple(errors),
        poison=tuple(poison),
    )


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path} is not valid YAML: {exc}") from None
    return parse_scenario(data, name=path.stem)
