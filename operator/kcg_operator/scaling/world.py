"""The simulated topic, consumer group and Deployment, one second per step.

The world: a topic with ``partitions`` partitions; producers write the scenario's rate
(times the noise's jitter) spread over partitions by ``weights``; each consumer replica
processes up to its speed (``per_replica_rate`` times its slot's noise factor) in messages
per second, shared max-min fairly over the partitions it owns (a consumer's poll returns
whatever partitions have data, so spare share flows to the busy ones); a new replica
consumes only after ``startup_seconds``; when group membership changes, partitions move
with a cooperative-sticky assignment (balanced by count, as few moves as possible) and
only the moved ones pause for ``rebalance_pause_seconds``; replicas beyond the partition
count own nothing and idle; consumers commit every second. A poisoned partition's consumer
cannot get past one message: it consumes nothing there while other partitions proceed.

Production does not depend on the policy, so it is computed once (:class:`Traffic`): the
end offset of every partition after every second. The production time of any message
follows from its offset, so the SLO is judged on the true age of the oldest unconsumed
message without keeping the messages.

The ReplicaSet removes the newest pods first (not-ready pods are the newest), so the k-th
oldest pod keeps rank k all its life: its "slot", which fixes its noise speed, and the
group's members are always the oldest M pods. The assignment is the sticky assignor's
answer for M members reached one member at a time (:func:`canonical_assignments`): going
from M to M+1 members moves only the partitions the new member takes, and going back
returns exactly those, as the sticky assignor does from a balanced group. A real assignor
also remembers longer histories (which partitions share a member after 3→7→5 may differ
from 3→5); we leave that out on purpose, so that a world's future depends on its member
count and not on its whole past, which is what lets the oracle search exactly.

Everything the future depends on is in a World's fields, and :meth:`World.copy` is cheap:
the oracle (:mod:`kcg_operator.scaling.oracle`) searches over replica schedules by copying
worlds, so it models start-up and rebalance costs exactly as the simulator does.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from kcg_operator.scaling.noise import Noise, rate_multipliers, speed_factors
from kcg_operator.scaling.scenario import Scenario

#: Name prefix of simulated pods (and group members).
POD_PREFIX = "consumer-"


@dataclass(frozen=True)
class Traffic:
    """What producers write, independent of any policy.

    ``base[p]`` is partition p's end offset before the first second (the initial backlog);
    ``cum[p][t]`` its end offset after second t's production.
    """

    base: tuple[int, ...]
    cum: tuple[list[int], ...]

    def end_at(self, p: int, time: int) -> int:
        """End offset of partition p as seen at ``time`` (before second ``time`` runs)."""
        return self.cum[p][time - 1] if time > 0 else self.base[p]

    def produced_at(self, p: int, offset: int) -> int:
        """The second in which the message at ``offset`` of partition p was produced."""
        return bisect_right(self.cum[p], offset)


def build_traffic(scenario: Scenario, noise: Noise | None = None) -> Traffic:
    """Every partition's end offsets for the whole run (messages are whole)."""
    n = scenario.partitions
    duration = scenario.duration_seconds
    multipliers = rate_multipliers(noise, duration)
    pending = [0.0] * n
    end = [0] * n

    def produce(count: float) -> None:
        for p, weight in enumerate(scenario.weights):
            pending[p] += count * weight
            whole = int(pending[p])
            if whole:
                pending[p] -= whole
                end[p] += whole

    produce(scenario.initial_backlog)
    base = tuple(end)
    cum: tuple[list[int], ...] = tuple([] for _ in range(n))
    steps = sorted(scenario.rate, key=lambda s: s.at)
    index = -1
    for t in range(duration):
        while index + 1 < len(steps) and steps[index + 1].at <= t:
            index += 1
        rate = steps[index].rate if index >= 0 else 0.0
        produce(rate * multipliers[t])
        for p in range(n):
            cum[p].append(end[p])
    return Traffic(base=base, cum=cum)


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
    """Split ``budget`` messages over partitions max-min fairly, none above what it has.

    Monotone (a property test checks it): with less available anywhere, no partition is
    left with more afterwards. The oracle's floor relies on that.
    """
    n = len(available)
    order = sorted(range(n), key=lambda i: available[i])
    base, extra = divmod(budget, n)
    if min(available) >= base + (1 if extra else 0):
        # Nobody is short: an even split, the remainder to the fullest (what the general
        # loop below gives in this case, only faster; the simulator calls this a lot).
        even = [base] * n
        for i in order[n - extra :]:
            even[i] += 1
        return even
    out = [0] * n
    remaining = budget
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


@lru_cache(maxsize=64)
def canonical_assignments(partitions: int) -> tuple[tuple[tuple[int, ...], ...], ...]:
    """Partitions owned by each member slot, for every member count 0..partitions.

    Built by adding members one at a time with :func:`sticky_assign`; member names are
    zero-padded slot numbers so that the assignor's name order is slot order.
    """
    out: list[tuple[tuple[int, ...], ...]] = [()]
    previous: dict[str, list[int]] = {}
    for members in range(1, partitions + 1):
        names = [f"{slot:06d}" for slot in range(members)]
        previous = sticky_assign(previous, names, partitions)
        out.append(tuple(tuple(previous[name]) for name in names))
    return tuple(out)


@dataclass(frozen=True)
class Pod:
    name: str
    ready_at: float


StateKey = tuple[tuple[float, ...], int, tuple[int, ...]]
"""Everything but the consumed offsets that the future of a World depends on."""


class World:
    """The simulated topic, group and Deployment; advance it with :meth:`step`."""

    def __init__(
        self,
        scenario: Scenario,
        noise: Noise | None = None,
        traffic: Traffic | None = None,
    ) -> None:
        self.scenario = scenario
        self.noise = noise
        self.traffic = traffic if traffic is not None else build_traffic(scenario, noise)
        n = scenario.partitions
        self.time = 0
        self.consumed = [0] * n
        #: Whether the group ever committed on each partition: a consumer commits its
        #: position for every partition it owns, so from its first second owning it. A
        #: scenario that starts with replicas starts with a group that has committed
        #: (at the log start, offset 0); one that starts at zero is a new group.
        self.started = [scenario.initial_replicas > 0] * n
        self.paused_until = [0] * n
        self.pods: list[Pod] = []
        self.member_count = 0
        self._serial = 0
        #: Second from which membership may differ from member_count (a pod got ready, or
        #: the Deployment was scaled): the rebalance check runs only from then on.
        self._next_change: float = 0.0
        self._pause_horizon = 0
        self._fresh = not all(self.started)
        self._speeds: tuple[float, ...] = ()
        #: Slots whose speed is a whole number of messages per second (no rounding).
        self._whole: dict[int, float] = {}
        self._poison_start = {p: min(s for q, s, _ in scenario.poison if q == p)
                              for p, _, _ in scenario.poison}  # fmt: skip
        self._layouts = canonical_assignments(n)
        for _ in range(scenario.initial_replicas):
            self._add_pod(ready_at=-math.inf)
        self.member_count = len(self.pods)

    def copy(self) -> World:
        """An independent world in the same state (traffic and speeds are shared)."""
        other = World.__new__(World)
        other.scenario = self.scenario
        other.noise = self.noise
        other.traffic = self.traffic
        other.time = self.time
        other.consumed = list(self.consumed)
        other.started = list(self.started)
        other.paused_until = list(self.paused_until)
        other.pods = list(self.pods)
        other.member_count = self.member_count
        other._layouts = self._layouts
        other._serial = self._serial
        other._next_change = self._next_change
        other._pause_horizon = self._pause_horizon
        other._fresh = self._fresh
        other._speeds = self._speeds
        other._whole = self._whole
        other._poison_start = self._poison_start
        return other

    # -- the Deployment ---------------------------------------------------------------------

    @property
    def replicas(self) -> int:
        return len(self.pods)

    def members(self) -> list[str]:
        return [p.name for p in self.pods if p.ready_at <= self.time]

    def speed(self, slot: int) -> float:
        """Messages/s of the replica in ``slot``."""
        if slot >= len(self._speeds):
            # Draws are prefix-stable, so growing the table never changes earlier slots.
            wanted = max(2 * slot + 2, self.scenario.partitions + 1)
            factors = speed_factors(self.noise, wanted)
            self._speeds = tuple(self.scenario.per_replica_rate * f for f in factors)
        return self._speeds[slot]

    def _add_pod(self, ready_at: float) -> None:
        self._serial += 1
        self.pods.append(Pod(f"{POD_PREFIX}{self._serial:06d}", ready_at))

    def scale(self, replicas: int) -> None:
        """Set the Deployment's replicas: new pods start, surplus pods (newest first) stop."""
        while len(self.pods) < replicas:
            self._add_pod(ready_at=self.time + self.scenario.startup_seconds)
        del self.pods[max(replicas, 0) :]
        self._next_change = min(self._next_change, self.time)

    def resume(self, kept: Sequence[Pod], replicas: int, started_at: int) -> None:
        """Append ``kept`` pods (up to ``replicas``), then start new ones as ``scale`` at
        ``started_at`` would have: for the oracle, which runs a stretch without pods that
        cannot join within it and puts them back afterwards."""
        self.pods.extend(kept[: max(0, replicas - len(self.pods))])
        while len(self.pods) < replicas:
            self._add_pod(ready_at=started_at + self.scenario.startup_seconds)
        self._next_change = min(self._next_change, self.time)

    def owned(self, slot: int, members: int | None = None) -> tuple[int, ...]:
        """Partitions of the member in ``slot`` when the group has ``members`` members."""
        count = self.member_count if members is None else members
        if slot >= count:
            return ()
        layout = self._layouts[min(count, self.scenario.partitions)]
        return layout[slot] if slot < len(layout) else ()

    @property
    def assignment(self) -> dict[str, list[int]]:
        """The group's assignment by member name (what describe group shows)."""
        return {self.pods[i].name: list(self.owned(i)) for i in range(self.member_count)}

    def _rebalance(self) -> None:
        # Members are the oldest pods that are ready: a prefix of the slots.
        members = 0
        for pod in self.pods:
            if pod.ready_at > self.time:
                break
            members += 1
        self._next_change = next(
            (pod.ready_at for pod in self.pods[members:] if pod.ready_at > self.time), math.inf
        )
        before = self.member_count
        if members == before:
            return
        n = self.scenario.partitions
        owner_before = self._owners(before)
        owner_after = self._owners(members)
        until = self.time + self.scenario.rebalance_pause_seconds
        for p in range(n):
            if owner_after[p] is not None and owner_after[p] != owner_before[p]:
                self.paused_until[p] = until
                self._pause_horizon = max(self._pause_horizon, until)
        self.member_count = members

    def _owners(self, members: int) -> list[int | None]:
        owners: list[int | None] = [None] * self.scenario.partitions
        layout = self._layouts[min(members, self.scenario.partitions)]
        for slot, ps in enumerate(layout):
            for p in ps:
                owners[p] = slot
        return owners

    # -- one second --------------------------------------------------------------------------

    def step(self) -> None:
        """Simulate the second [time, time + 1)."""
        t = self.time
        if t >= self._next_change:
            self._rebalance()
        poisoned = self.scenario.poisoned_at(t) if self.scenario.poison else frozenset()
        cum = self.traffic.cum
        consumed = self.consumed
        started = self.started
        paused = self.paused_until
        # Pauses are rare and short: skip the check when none can be running.
        filtered = bool(poisoned) or t < self._pause_horizon
        layout = self._layouts[min(self.member_count, self.scenario.partitions)]
        for slot, owned in enumerate(layout):
            rate = self.speed(slot)
            if rate == self._whole.get(slot):
                budget = int(rate)
            elif rate.is_integer():
                self._whole[slot] = rate
                budget = int(rate)
            else:
                budget = math.floor(rate * (t + 1)) - math.floor(rate * t)
            if filtered:
                active: Sequence[int] = [p for p in owned if paused[p] <= t and p not in poisoned]
            else:
                active = owned
            if self._fresh:
                # A member commits the position of everything it owns, paused or not.
                for p in owned:
                    started[p] = True
            if len(active) == 1:
                p = active[0]
                consumed[p] += min(budget, cum[p][t] - consumed[p])
                continue
            if not active:
                continue
            available = [cum[p][t] - consumed[p] for p in active]
            if sum(available) <= budget:
                for p, count in zip(active, available, strict=True):
                    consumed[p] += count
            else:
                for p, share in zip(active, fair_share(budget, available), strict=True):
                    consumed[p] += share
        self.time = t + 1
        if self._fresh and all(started):
            self._fresh = False

    # -- what can be measured ----------------------------------------------------------------

    @property
    def end(self) -> list[int]:
        return [self.traffic.end_at(p, self.time) for p in range(self.scenario.partitions)]

    @property
    def committed(self) -> list[int | None]:
        """What OffsetFetch returns: None on a partition the group never committed on."""
        # Consumers commit every second, right after processing.
        return [c if s else None for c, s in zip(self.consumed, self.started, strict=True)]

    @property
    def produced_total(self) -> int:
        return sum(self.end)

    @property
    def consumed_total(self) -> int:
        return sum(self.consumed)

    def lag(self) -> int:
        return sum(e - c for e, c in zip(self.end, self.consumed, strict=True))

    def oldest_age(self) -> float:
        """Age of the oldest unconsumed message (0 when nothing waits).

        A poisoned partition is left out from the poison's start on: no number of replicas
        gets its consumer past the message, so it is an incident, not a scaling miss.
        """
        now = self.time
        if now == 0:
            return 0.0
        oldest = 0
        traffic = self.traffic
        for p, c in enumerate(self.consumed):
            start = self._poison_start.get(p)
            if start is not None and start < now:
                continue
            if c < traffic.cum[p][now - 1]:
                oldest = max(oldest, now - traffic.produced_at(p, c))
        return float(oldest)

    def judged(self) -> list[int]:
        """Partitions the SLO is judged on now: all but those poisoned by now."""
        now = self.time
        return [
            p for p in range(self.scenario.partitions)
            if (start := self._poison_start.get(p)) is None or start >= now
        ]

    def violates(self, slo: float) -> bool:
        """Whether a judged message is older than ``slo`` now (as ``oldest_age() > slo``,
        without computing the age: the oracle asks this every simulated second)."""
        now = self.time
        # Messages produced in seconds up to `last` are older than the SLO at `now`.
        last = math.ceil(now - slo) - 1
        if last < 0:
            return False
        cum = self.traffic.cum
        for p, c in enumerate(self.consumed):
            if c < cum[p][last]:
                start = self._poison_start.get(p)
                if start is None or start >= now:
                    return True
        return False

    def state_key(self) -> StateKey:
        """What, besides the consumed offsets, decides this world's future (for the oracle).

        Relative times are enough: production is fixed in advance, and slots (not names)
        decide speeds and the assignor's order.
        """
        now = self.time
        ready = tuple(max(0.0, p.ready_at - now) for p in self.pods)
        paused = tuple(max(0, u - now) for u in self.paused_until)
        return ready, self.member_count, paused


__all__ = [
    "POD_PREFIX",
    "Pod",
    "StateKey",
    "Traffic",
    "World",
    "build_traffic",
    "canonical_assignments",
    "fair_share",
    "sticky_assign",
]
