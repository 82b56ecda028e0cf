"""The oracle: the fewest replica-seconds that meet the SLO, knowing the whole future.

It is the floor a policy is measured against. It searches over replica schedules on the
policies' decision grid (every ``grid`` seconds: kcg polls every 15 s and the HPA syncs
every 15 s, the only moments either can change replicas), knowing the true future
traffic (jitter included), and it runs every candidate in the simulator's own
:class:`~kcg_operator.scaling.world.World`: start-up, rebalance pauses, the assignment,
replica speeds and poisoned partitions cost it exactly what they cost the policies.

It obeys what the spec imposes on every policy: ``minReplicas``, ``maxReplicas`` (and
never more replicas than partitions: those would idle) and the scale-down stabilization
window while a backlog waits (a count reached by scaling up is not left downwards before
``scaleDownStabilizationSeconds``, unless the backlog is drained: :func:`window_now`;
the HPA holds every recommendation that long, kcg lets go of what it added for a backlog
once the backlog is gone). So it is the floor for policies under the same spec, not a
physics bound a user could only reach by also dropping the stabilization window.

The search is a forward dynamic programme over decision ticks. A world is a *state key*
(pods and their start-up, the member count, paused partitions, the scale-ups still in the
stabilization window) plus each partition's consumed offset, the violation seconds and
the replica-seconds so far. Two worlds with the same key are compared by dominance: one
that consumed at least as much on every partition, with no more violations nor cost, is
at least as good from here on (consumption is monotone in what is left to consume:
``fair_share`` is, and a property test checks it; the oldest message's age only falls
when more is consumed), so the other is dropped. Dropping only dominated worlds keeps the
search exact: the result is the optimum on the grid, a genuine floor.

Exactness costs time that grows with the run, so past ``beam`` worlds per tick the search
keeps the most promising (fewest violations, then replica-seconds plus the backlog's
worth of replica-seconds) and reports that it did (``exact`` False): its schedule is
then the best found, an upper bound of the floor. Tests compare the exact search with
brute force over every schedule on small cases; the benchmark prints where the search was
cut and checks that no policy run beat it.

Objective: fewest SLO-violation seconds first, then fewest replica-seconds; so where the
SLO cannot be met at all (not enough partitions, say) the oracle still shows the least
violation any schedule gets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kcg_operator.api.models import ScalingSpec
from kcg_operator.scaling import health
from kcg_operator.scaling.keda import DEFAULT_SCALE_DOWN_STABILIZATION_SECONDS
from kcg_operator.scaling.noise import Noise
from kcg_operator.scaling.policy import (
    RECENT_WINDOW_SECONDS,
    SUSTAINED_WINDOW_SECONDS,
    Decision,
    Observation,
)
from kcg_operator.scaling.scenario import Scenario
from kcg_operator.scaling.world import StateKey, Traffic, World, build_traffic

#: Decision grid (seconds): kcg polls every 15 s by default and the HPA syncs every 15 s.
DEFAULT_GRID_SECONDS = 15
#: Worlds kept per tick before the search stops being exhaustive.
DEFAULT_BEAM = 16
#: Worlds kept per state key (the rest of the beam goes to other keys).
PER_KEY = 2

Stairs = tuple[tuple[int, int], ...]
"""(level, ticks it still binds) of the scale-ups inside the stabilization window."""


@dataclass(frozen=True)
class Plan:
    """The oracle's answer for one scenario and noise seed."""

    schedule: tuple[int, ...]
    """Replicas set at each decision tick (tick i is second i * grid)."""
    grid: int
    replica_seconds: int
    violation_seconds: int
    exact: bool
    """The search was exhaustive up to dominance: no schedule on the grid does better."""
    states: int
    """Largest number of worlds the search held after one tick."""

    @property
    def floor(self) -> int | None:
        """Replica-seconds no zero-violation schedule beats (None: not proven or not met)."""
        return self.replica_seconds if self.exact and self.violation_seconds == 0 else None


@dataclass
class _Node:
    cost: int
    violations: int
    consumed: tuple[int, ...]
    world: World
    stairs: Stairs
    parent: _Node | None
    replicas: int
    #: Indices of the seed schedules this node still follows (see :func:`_greedy`).
    seeds: frozenset[int] = frozenset()

    def score(self, rate: float, high: int, low: int, grid: int, ahead: int) -> tuple[int, float]:
        """Rank for the beam: violations this world cannot avoid any more, then a guess of
        its total cost: replica-seconds spent, plus what the next ``ahead`` seconds cost
        at least (the counts the stabilization window already holds, or the work waiting
        and arriving, whichever is more)."""
        return self.violations + _doomed(self.world, high), self.cost + _ahead(
            self, rate, low, grid, ahead
        )


def _ahead(node: _Node, rate: float, low: int, grid: int, ahead: int) -> float:
    ticks = max(1, ahead // grid)
    held = 0
    for i in range(ticks):
        level = max((lv for lv, left in node.stairs if left > i), default=0)
        held += max(level, low) * grid
    world = node.world
    end = min(world.time + ahead, world.scenario.duration_seconds) - 1
    arriving = sum(world.traffic.cum[p][end] for p in range(world.scenario.partitions))
    work = (arriving - sum(node.consumed)) / rate if rate > 0 else 0.0
    return max(float(held), work)


def replica_bounds(scenario: Scenario) -> tuple[int, int]:
    """Replica counts worth trying: within the spec and never above the partition count.

    Replicas beyond the partition count own nothing, so they never make a world faster.
    """
    spec = scenario.scaling
    high = max(1, min(spec.max_replicas, scenario.partitions))
    low = 0 if spec.scale_to_zero.enabled else min(max(spec.min_replicas, 1), high)
    return low, high


def _run(world: World, seconds: int, slo: float) -> int:
    """Advance ``world`` by ``seconds``; the seconds the SLO was broken."""
    broken = 0
    for _ in range(seconds):
        world.step()
        if world.violates(slo):
            broken += 1
    return broken


def _doomed(world: World, high: int) -> int:
    # (Counts violations until the first one only: any is enough to rank a world last.)
    """Violations still ahead even if every allowed replica started now.

    The time a new replica needs to help (start-up and pause) plus the SLO is as far as
    the backlog of now can reach. Looking ahead keeps the beam from filling with worlds
    that look cheap only because their violations have not happened yet.
    """
    sc = world.scenario
    ahead = min(
        sc.startup_seconds + sc.rebalance_pause_seconds + math.ceil(sc.slo_seconds),
        sc.duration_seconds - world.time,
    )
    # A young backlog is never doomed: new replicas arrive while the oldest message still
    # has more than half the SLO left (a guess, which is all the beam needs).
    if world.oldest_age() + sc.startup_seconds + sc.rebalance_pause_seconds <= sc.slo_seconds / 2:
        return 0
    trial = world.copy()
    trial.scale(max(high, trial.replicas))
    return 0 if _clean_for(trial, ahead, sc.slo_seconds) else 1


def _transitions(
    world: World, choices: range, seconds: int, slo: float
) -> list[tuple[int, World, int]]:
    """Each replica count at this tick, the world ``seconds`` later and its violations.

    Pods that neither are nor become members within these seconds (not ready yet, or
    started now when start-up outlasts the stretch) change nothing in it: the counts that
    differ only by such pods share one run, and the pods are put back afterwards.
    """
    now = world.time
    startup = world.scenario.startup_seconds
    pods = list(world.pods)
    joining = sum(1 for p in pods if p.ready_at < now + seconds)
    silent = pods[joining:]
    shared: tuple[World, int] | None = None
    out: list[tuple[int, World, int]] = []
    for n in choices:
        if n >= joining and (n <= len(pods) or startup >= seconds):
            if shared is None:
                base = world.copy()
                base.scale(joining)
                shared = (base, _run(base, seconds, slo))
            after = shared[0].copy()
            after.resume(silent, n, now)
            out.append((n, after, shared[1]))
            continue
        trial = world.copy()
        trial.scale(n)
        out.append((n, trial, _run(trial, seconds, slo)))
    return out


def _stairs_after(stairs: Stairs, previous: int, chosen: int, hold: int) -> Stairs:
    """The stabilization window one tick later, after choosing ``chosen`` replicas."""
    steps = [(level, left - 1) for level, left in stairs if left > 1]
    if chosen > previous and hold > 1:
        steps.append((chosen, hold - 1))
    # Keep only steps that can still bind: a lower level that ends sooner never does.
    steps.sort(key=lambda s: (-s[0], -s[1]))
    out: list[tuple[int, int]] = []
    for level, left in steps:
        if not out or left > out[-1][1]:
            out.append((level, left))
    return tuple(out)


def drained(world: World, seconds: int) -> bool:
    """Whether no judged partition has more waiting than ``seconds`` of its production, at
    the highest of its average rates over kcg's two windows and the last ``seconds`` (all
    of them while the run is younger).

    kcg calls a backlog drained when no partition has more waiting than one poll of its
    sustained rate, the lower of the two windows' averages: so this is never stricter,
    and the oracle may let go of whatever kcg lets go of.
    """
    now = world.time
    traffic = world.traffic
    for p in world.judged():
        end = traffic.end_at(p, now)
        waiting = end - world.consumed[p]
        if waiting <= 0:
            continue
        rate = 0.0
        for span in (SUSTAINED_WINDOW_SECONDS, RECENT_WINDOW_SECONDS, seconds):
            since = max(0, now - int(span))
            if now > since:
                rate = max(rate, (end - traffic.end_at(p, since)) / (now - since))
        if waiting > rate * seconds:
            return False
    return True


def window_now(world: World, stairs: Stairs, grid: int) -> Stairs:
    """The stabilization window as it binds now: not at all once the backlog is drained,
    since kcg then lets go of replicas it added for a backlog.

    Wider than kcg's rule (kcg keeps what production asked for): the floor must stay
    below every policy the benchmark measures.
    """
    return () if drained(world, grid) else stairs


def _dominates(a: _Node, b: _Node) -> bool:
    return (
        a.violations <= b.violations
        and a.cost <= b.cost
        and all(x >= y for x, y in zip(a.consumed, b.consumed, strict=True))
    )


def _insert(bucket: list[_Node], node: _Node) -> None:
    for other in bucket:
        if _dominates(other, node):
            # The survivor is at least as good from here on, so it may follow the
            # dropped node's seed schedules: they stay in the search.
            other.seeds = other.seeds | node.seeds
            return
    kept = []
    for other in bucket:
        if _dominates(node, other):
            node.seeds = node.seeds | other.seeds
        else:
            kept.append(other)
    kept.append(node)
    bucket[:] = kept


def _best(
    nodes: list[_Node], beam: int, rate: float, high: int, low: int, grid: int, ahead: int
) -> list[_Node]:
    """The most promising nodes: the best for each replica count, then the best overall.

    Nodes are taken in order of their cost guess; one whose violations are already
    certain goes behind every node without, so the look-ahead runs only as far as needed.
    Keeping the best node of every replica count keeps the search from giving up early
    on capacity whose price (the stabilization window) shows before its benefit.
    """
    guess = {id(n): (n.violations, n.cost + _ahead(n, rate, low, grid, ahead)) for n in nodes}
    cheap = sorted(nodes, key=lambda n: guess[id(n)])
    # Nodes on a seed schedule always stay: the search then never ends worse than a seed.
    chosen: list[_Node] = [n for n in cheap if n.seeds]
    taken: set[int] = {id(n) for n in chosen}
    champions: dict[int, _Node] = {}
    doomed: list[tuple[tuple[int, float], _Node]] = []
    clean = 0
    looked = 0
    for node in cheap:
        if id(node) in taken:
            continue
        count = node.world.replicas
        if clean >= beam and count in champions:
            continue
        looked += 1
        if looked > 3 * beam:
            # The look-ahead is the costly part: past this many, trust the cheap guess.
            if count not in champions:
                champions[count] = node
                chosen.append(node)
            continue
        score = node.score(rate, high, low, grid, ahead)
        if score[0] > 0:
            doomed.append((score, node))
            continue
        if count not in champions:
            champions[count] = node
            chosen.append(node)
            taken.add(id(node))
        elif clean < beam:
            chosen.append(node)
            taken.add(id(node))
        clean += 1
    doomed.sort(key=lambda d: d[0])
    return chosen + [node for _, node in doomed][: max(0, beam - len(chosen))]


def _schedule(node: _Node) -> tuple[int, ...]:
    out: list[int] = []
    current: _Node | None = node
    while current is not None and current.parent is not None:
        out.append(current.replicas)
        current = current.parent
    return tuple(reversed(out))


def hold_ticks(scenario: Scenario, grid: int) -> int:
    """Ticks a scale-up binds: the spec's stabilization window, or the HPA's default if
    shorter (KEDA as installed keeps the HPA default, and the floor must hold for it)."""
    window = min(
        scenario.scaling.scale_down_stabilization_seconds,
        DEFAULT_SCALE_DOWN_STABILIZATION_SECONDS,
    )
    return math.ceil(window / grid)


def choices_at(scenario: Scenario, stairs: Stairs) -> range:
    """Replica counts a policy under this spec may set now (see the module's docstring).

    Zero needs scaleToZero but not idleSeconds: policies wait differently before sleeping
    (kcg's idleSeconds without lag nor traffic, KEDA's cooldownPeriod without lag), and
    the floor must hold for all of them.
    """
    low, high = replica_bounds(scenario)
    held = max((level for level, _ in stairs), default=0)
    return range(max(low, min(held, high)), high + 1)


def admissible(
    scenario: Scenario,
    schedule: tuple[int, ...],
    grid: int = DEFAULT_GRID_SECONDS,
    noise: Noise | None = None,
    traffic: Traffic | None = None,
) -> bool:
    """Whether ``schedule`` is one the oracle may choose (bounds, stabilization, idle)."""
    world = World(scenario, noise, traffic)
    hold = hold_ticks(scenario, grid)
    stairs: Stairs = ()
    duration = scenario.duration_seconds
    for index, tick in enumerate(range(0, duration, grid)):
        if index >= len(schedule):
            return False
        n = schedule[index]
        stairs = window_now(world, stairs, grid)
        if n not in choices_at(scenario, stairs):
            return False
        stairs = _stairs_after(stairs, world.replicas, n, hold)
        world.scale(n)
        for _ in range(min(grid, duration - tick)):
            world.step()
    return len(schedule) == math.ceil(duration / grid)


def _greedy(
    scenario: Scenario,
    noise: Noise | None,
    traffic: Traffic,
    grid: int,
    hold: int,
    window: int,
) -> tuple[int, ...]:
    """A schedule from a controller that knows the future but looks only ``window`` ahead.

    At each tick it takes the fewest replicas (that the stabilization window allows)
    whose world, held at that count, breaks no SLO for ``window`` seconds. Myopic, so not
    optimal, but never far off: it gives the search a good schedule to start from.
    """
    slo = scenario.slo_seconds
    world = World(scenario, noise, traffic)
    stairs: Stairs = ()
    schedule: list[int] = []
    duration = scenario.duration_seconds
    for tick in range(0, duration, grid):
        horizon = min(window, duration - tick)
        stairs = window_now(world, stairs, grid)
        allowed = choices_at(scenario, stairs)
        # More replicas rarely make things worse: bisect for the fewest that stay clean.
        low, high = allowed[0], allowed[-1]
        while low < high:
            middle = (low + high) // 2
            trial = world.copy()
            trial.scale(middle)
            if _clean_for(trial, horizon, slo):
                high = middle
            else:
                low = middle + 1
        chosen = low
        stairs = _stairs_after(stairs, world.replicas, chosen, hold)
        world.scale(chosen)
        _run(world, min(grid, duration - tick), slo)
        schedule.append(chosen)
    return tuple(schedule)


def _clean_for(world: World, seconds: int, slo: float) -> bool:
    for _ in range(seconds):
        world.step()
        if world.violates(slo):
            return False
    return True


def search(
    scenario: Scenario,
    noise: Noise | None = None,
    *,
    grid: int = DEFAULT_GRID_SECONDS,
    beam: int | None = DEFAULT_BEAM,
    traffic: Traffic | None = None,
) -> Plan:
    """The cheapest schedule (fewest violations first); exhaustive when ``beam`` is None.

    With a beam, the schedules of a few far-sighted greedy controllers (:func:`_greedy`)
    are kept in the search from start to end, so the result is never worse than theirs.
    """
    traffic = traffic if traffic is not None else build_traffic(scenario, noise)
    low, high = replica_bounds(scenario)
    hold = hold_ticks(scenario, grid)
    reaction = (
        scenario.startup_seconds
        + scenario.rebalance_pause_seconds
        + math.ceil(scenario.slo_seconds)
    )
    # How far the beam's cost guess looks: the stabilization window, or at least long
    # enough for a new replica to start and a message to age past the SLO.
    ahead = max(hold * grid, reaction)
    seeds: list[tuple[int, ...]] = []
    if beam is not None:
        for window in (reaction + grid, ahead + reaction):
            seeds.append(_greedy(scenario, noise, traffic, grid, hold, window))
    slo = scenario.slo_seconds
    rate = scenario.per_replica_rate
    start = World(scenario, noise, traffic)
    root = _Node(
        0, 0, tuple(start.consumed), start, (), None, start.replicas, frozenset(range(len(seeds)))
    )
    frontier: list[_Node] = [root]
    peak = 1
    exact = True
    duration = scenario.duration_seconds
    for index, tick in enumerate(range(0, duration, grid)):
        seconds = min(grid, duration - tick)
        buckets: dict[tuple[StateKey, Stairs], list[_Node]] = {}
        for node in frontier:
            binding = window_now(node.world, node.stairs, grid)
            choices = choices_at(scenario, binding)
            for n, after, broken in _transitions(node.world, choices, seconds, slo):
                stairs = _stairs_after(binding, node.world.replicas, n, hold)
                follows = frozenset(i for i in node.seeds if seeds[i][index] == n)
                child = _Node(
                    node.cost + n * seconds,
                    node.violations + broken,
                    tuple(after.consumed),
                    after,
                    stairs,
                    node,
                    n,
                    follows,
                )
                _insert(buckets.setdefault((after.state_key(), stairs), []), child)
        frontier = [n for b in buckets.values() for n in b]
        if beam is not None and len(frontier) > beam:
            exact = False
            kept: list[_Node] = []
            for bucket in buckets.values():
                bucket.sort(
                    key=lambda n: (n.violations, n.cost + _ahead(n, rate, low, grid, ahead))
                )
                kept.extend(bucket[:PER_KEY])
                kept.extend(n for n in bucket[PER_KEY:] if n.seeds)
            frontier = _best(kept, beam, rate, high, low, grid, ahead)
        peak = max(peak, len(frontier))
    best = min(frontier, key=lambda n: (n.violations, n.cost))
    return Plan(_schedule(best), grid, best.cost, best.violations, exact, peak)


def replay(
    scenario: Scenario,
    schedule: tuple[int, ...],
    grid: int,
    noise: Noise | None = None,
    traffic: Traffic | None = None,
) -> tuple[int, int]:
    """(replica-seconds, SLO-violation seconds) of ``schedule`` in a fresh world."""
    world = World(scenario, noise, traffic)
    cost = violations = 0
    for t in range(scenario.duration_seconds):
        if t % grid == 0 and t // grid < len(schedule):
            world.scale(schedule[t // grid])
        cost += world.replicas
        world.step()
        if world.oldest_age() > scenario.slo_seconds:
            violations += 1
    return cost, violations


plan = search


class OraclePolicy:
    """Replays a :class:`Plan` in the simulator (it decides nothing from observations)."""

    name = "oracle"
    observes_health = False
    counts_from_log_start = False

    def __init__(self, chosen: Plan) -> None:
        self.chosen = chosen

    @classmethod
    def plan(cls, scenario: Scenario, noise: Noise | None = None) -> OraclePolicy:
        return cls(plan(scenario, noise))

    def poll_interval_seconds(self, spec: ScalingSpec) -> int:
        return self.chosen.grid

    def decide(self, observation: Observation, spec: ScalingSpec) -> Decision:
        tick = int(observation.time_s) // self.chosen.grid
        schedule = self.chosen.schedule
        desired = schedule[min(tick, len(schedule) - 1)] if schedule else observation.replicas
        how = "optimal" if self.chosen.exact else "best found"
        return Decision(
            desired=desired,
            current=observation.replicas,
            reason=(
                f"oracle: {desired} replicas by plan ({how}:"
                f" {self.chosen.replica_seconds} replica-seconds,"
                f" {self.chosen.violation_seconds} s over the SLO)"
            ),
            should_patch=desired != observation.replicas,
            recommendation=desired,
            capped_by=None,
            partitions=observation.partition_count,
            total_lag=sum(observation.lag(k) for k in observation.end_offsets),
            lag_status=health.OK,
        )


__all__ = [
    "DEFAULT_GRID_SECONDS",
    "OraclePolicy",
    "Plan",
    "plan",
    "replay",
    "replica_bounds",
    "search",
]
