"""`kcg simulate`: replay a traffic scenario against a scaling policy, one second per tick.

The world: a topic with ``partitions`` partitions; producers write ``rate`` messages/s
(piecewise constant, spread over partitions by ``weights``); each consumer replica
processes up to ``per_replica_rate`` messages/s shared over the partitions it owns (a
consumer's poll returns whatever partitions have data, so spare share flows to the busy
ones); a new replica consumes only after ``startup_seconds``; when group membership
changes, partitions move with a cooperative-sticky assignment (as few as possible) and only
the moved ones pause for ``rebalance_pause_seconds``; replicas beyond the partition count
own nothing and idle; consumers commit every second. Every message's production time is
kept (in per-partition batches), so the SLO is judged on the true age of the oldest
unconsumed message.

The policy sees only what the operator sees: end and committed offsets, Burrow statuses
and the group's assignment, every poll interval (the scaling spec's, or the HPA's 15 s
for the keda policy).

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
    scaling: {minReplicas: 1, maxReplicas: 12, lagPerReplica: 3000, maxTimeLagSeconds: 60}
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kcg_operator.api.models import ScalingSpec
from kcg_operator.scaling import health
from kcg_operator.scaling.keda import KedaPolicy
from kcg_operator.scaling.policy import KcgPolicy, Observation, PartitionKey, ScalingPolicy

TOPIC = "sim"

POLICIES: dict[str, Callable[[], ScalingPolicy]] = {"kcg": KcgPolicy, "keda": KedaPolicy}


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


_KEYS = {
    "name", "description", "partitions", "duration_seconds", "initial_replicas",
    "initial_backlog", "slo_seconds", "per_replica_rate", "startup_seconds",
    "rebalance_pause_seconds", "rate", "weights", "broker_errors", "scaling",
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


def sticky_assign(
    previous: Mapping[str, Sequence[int]], members: Sequence[str], partitions: int
) -> dict[str, list[int]]:
    """Cooperative-sticky style assignment: balanced by count, moving as few as possible.

    Members that already own partitions keep as many as their quota allows; the members
    owning the most get the larger quotas, so fewer partitions move. Freed partitions and
    those of departed members go to the members below quota.
    """
    if not members:
        return {}
    ordered = sorted(members, key=lambda m: (-len(previous.get(m, ())), m))
    base, extra = divmod(partitions, len(ordered))
    quota = {m: base + (1 if i < extra else 0) for i, m in enumerate(ordered)}
    result: dict[str, list[int]] = {}
    taken: set[int] = set()
    for m in ordered:
        keep = [p for p in sorted(previous.get(m, ())) if p < partitions and p not in taken]
        keep = keep[: quota[m]]
        result[m] = keep
        taken.update(keep)
    free = [p for p in range(partitions) if p not in taken]
    for m in sorted(members):
        while len(result[m]) < quota[m]:
            result[m].append(free.pop(0))
        result[m].sort()
    return result


def fair_share(budget: int, available: Sequence[int]) -> list[int]:
    """Split ``budget`` messages over partitions max-min fairly, none above what it has."""
    n = len(available)
    out = [0] * n
    remaining = budget
    order = sorted(range(n), key=lambda i: available[i])
    for rank, i in enumerate(order):
        give = min(available[i], remaining // (n - rank))
        out[i] = give
        remaining -= give
    for i in reversed(order):
        if remaining <= 0:
            break
        if out[i] < available[i]:
            out[i] += 1
            remaining -= 1
    return out


@dataclass
class Pod:
    name: str
    ready_at: float


@dataclass
class World:
    """The simulated topic, group and Deployment; advance it with :meth:`step`."""

    scenario: Scenario
    time: int = 0
    end: list[int] = field(init=False)
    consumed: list[int] = field(init=False)
    committed: list[int] = field(init=False)
    batches: list[deque[list[int]]] = field(init=False)
    pods: list[Pod] = field(init=False)
    assignment: dict[str, list[int]] = field(init=False)
    paused_until: list[int] = field(init=False)
    produced_total: int = 0
    consumed_total: int = 0
    _pending: list[float] = field(init=False)
    _carry: dict[str, float] = field(init=False)
    _serial: int = 0

    def __post_init__(self) -> None:
        sc = self.scenario
        n = sc.partitions
        self.end = [0] * n
        self.consumed = [0] * n
        self.committed = [0] * n
        self.batches = [deque() for _ in range(n)]
        self.paused_until = [0] * n
        self._pending = [0.0] * n
        self._carry = {}
        self.pods = []
        self.assignment = {}
        self._produce(sc.initial_backlog, produced_at=0)
        for _ in range(sc.initial_replicas):
            self._add_pod(ready_at=-math.inf)
        self.assignment = sticky_assign({}, self.members(), n)

    # -- the Deployment ---------------------------------------------------------------------

    @property
    def replicas(self) -> int:
        return len(self.pods)

    def members(self) -> list[str]:
        return [p.name for p in self.pods if p.ready_at <= self.time]

    def _add_pod(self, ready_at: float) -> None:
        self._serial += 1
        self.pods.append(Pod(f"consumer-{self._serial}", ready_at))

    def scale(self, replicas: int) -> None:
        """Set the Deployment's replicas: new pods start, surplus pods (newest first) stop."""
        while len(self.pods) < replicas:
            self._add_pod(ready_at=self.time + self.scenario.startup_seconds)
        if len(self.pods) > replicas:
            # The ReplicaSet deletes pods that are not ready first, then the newest.
            victims = sorted(self.pods, key=lambda p: (p.ready_at <= self.time, -p.ready_at))
            drop = {p.name for p in victims[: len(self.pods) - replicas]}
            self.pods = [p for p in self.pods if p.name not in drop]

    def _rebalance(self) -> None:
        members = self.members()
        if sorted(members) == sorted(self.assignment):
            return
        previous = self.assignment
        self.assignment = sticky_assign(previous, members, self.scenario.partitions)
        owner_before = {p: m for m, ps in previous.items() for p in ps}
        for m, ps in self.assignment.items():
            for p in ps:
                if owner_before.get(p) != m:
                    self.paused_until[p] = self.time + self.scenario.rebalance_pause_seconds
        for gone in set(self._carry) - set(members):
            del self._carry[gone]

    # -- one second --------------------------------------------------------------------------

    def _produce(self, count: float, produced_at: int) -> None:
        for p, weight in enumerate(self.scenario.weights):
            self._pending[p] += count * weight
            whole = int(self._pending[p])
            if whole:
                self._pending[p] -= whole
                self.end[p] += whole
                self.produced_total += whole
                self.batches[p].append([produced_at, whole])

    def _consume(self, p: int, count: int) -> None:
        self.consumed[p] += count
        self.consumed_total += count
        queue = self.batches[p]
        while count:
            head = queue[0]
            take = min(count, head[1])
            head[1] -= take
            count -= take
            if head[1] == 0:
                queue.popleft()

    def step(self) -> None:
        """Simulate the second [time, time + 1)."""
        self._rebalance()
        self._produce(self.scenario.rate_at(self.time), produced_at=self.time)
        rate = self.scenario.per_replica_rate
        for member, owned in self.assignment.items():
            active = [p for p in owned if self.paused_until[p] <= self.time]
            if not active:
                continue
            budget_f = rate + self._carry.get(member, 0.0)
            budget = int(budget_f)
            available = [self.end[p] - self.consumed[p] for p in active]
            shares = fair_share(budget, available)
            for p, share in zip(active, shares, strict=True):
                if share:
                    self._consume(p, share)
            used = sum(shares)
            self._carry[member] = budget_f - budget if used == budget else 0.0
        self.committed = list(self.consumed)
        self.time += 1

    # -- what can be measured ----------------------------------------------------------------

    def lag(self) -> int:
        return sum(e - c for e, c in zip(self.end, self.committed, strict=True))

    def oldest_age(self) -> float:
        """Age of the oldest unconsumed message (0 when nothing waits)."""
        heads = [q[0][0] for q in self.batches if q]
        return float(self.time - min(heads)) if heads else 0.0


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
    replicas_timeline: list[int] = field(default_factory=list, repr=False)


def _observe(world: World, tracker: health.HealthTracker[PartitionKey], ok: bool) -> Observation:
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
    offsets: dict[PartitionKey, tuple[int, int | None]] = {
        (TOPIC, p): (world.end[p], world.committed[p]) for p in range(sc.partitions)
    }
    owned = {(TOPIC, p) for ps in world.assignment.values() for p in ps}
    return Observation.from_offsets(
        float(world.time),
        offsets,
        world.replicas,
        partitions=sc.partitions,
        statuses=tracker.observe(float(world.time), offsets, owned),
        assignment={m: [(TOPIC, p) for p in ps] for m, ps in world.assignment.items()},
        ready_replicas=len(world.members()),
    )


def simulate(scenario: Scenario, policy: ScalingPolicy) -> SimResult:
    """Run ``scenario`` under ``policy`` and measure it."""
    world = World(scenario)
    spec = scenario.scaling
    poll = policy.poll_interval_seconds(spec)
    tracker: health.HealthTracker[PartitionKey] = health.HealthTracker()
    violation = 0
    max_age = 0.0
    max_lag = world.lag()
    replica_seconds = 0
    events = 0
    timeline: list[int] = []
    last_reason = ""
    for t in range(scenario.duration_seconds):
        if t % poll == 0:
            decision = policy.decide(_observe(world, tracker, scenario.broker_ok_at(t)), spec)
            last_reason = decision.reason
            if decision.should_patch and decision.desired != world.replicas:
                world.scale(decision.desired)
                events += 1
        replica_seconds += world.replicas
        timeline.append(world.replicas)
        world.step()
        age = world.oldest_age()
        max_age = max(max_age, age)
        if age > scenario.slo_seconds:
            violation += 1
        max_lag = max(max_lag, world.lag())
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
        replicas_timeline=timeline,
    )


def result_json(result: SimResult) -> dict[str, Any]:
    data = asdict(result)
    del data["replicas_timeline"]
    return data


def _summary(result: SimResult) -> str:
    lines = [
        f"scenario {result.scenario} with policy {result.policy}",
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
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        print(f"kcg simulate: {args.scenario}: {exc}", file=sys.stderr)
        return 2
    result = simulate(scenario, POLICIES[args.policy]())
    if args.json:
        print(json.dumps(result_json(result), sort_keys=True))
    else:
        print(_summary(result))
    return 0
