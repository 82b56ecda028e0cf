"""The kcg scaling policy: bounds for every input, stabilization, errors, stalls, pause."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kcg_operator.api.models import ScalingSpec
from kcg_operator.scaling import lag as lagmath
from kcg_operator.scaling.health import OK, STALL, STOP
from kcg_operator.scaling.policy import Decision, KcgPolicy, Observation, PolicyState, decide
from kcg_operator.scaling.simulator import parse_scenario, simulate

pytestmark = pytest.mark.unit

T = "orders"


def spec(**kwargs: Any) -> ScalingSpec:
    return ScalingSpec.model_validate(kwargs)


def obs(
    t: float,
    ends: Sequence[int],
    committed: Sequence[int | None],
    replicas: int,
    *,
    broker_ok: bool = True,
    statuses: Mapping[int, str] | None = None,
    assignment: Mapping[str, Sequence[int]] | None = None,
) -> Observation:
    return Observation(
        time_s=t,
        end_offsets={(T, p): e for p, e in enumerate(ends)} if broker_ok else {},
        committed={(T, p): c for p, c in enumerate(committed)} if broker_ok else {},
        replicas=replicas,
        partitions=len(ends),
        broker_ok=broker_ok,
        statuses={(T, p): s for p, s in (statuses or {}).items()},
        assignment=(
            None
            if assignment is None
            else {m: [(T, p) for p in ps] for m, ps in assignment.items()}
        ),
    )


def run(observations: Sequence[Observation], s: ScalingSpec, follow: bool = True) -> list[Decision]:
    """Feed observations in order; with ``follow``, later replicas follow earlier patches."""
    state = PolicyState()
    decisions: list[Decision] = []
    replicas: int | None = None
    for o in observations:
        if follow and replicas is not None:
            o = replace(o, replicas=replicas)
        d, state = decide(o, s, state)
        decisions.append(d)
        replicas = d.desired if d.should_patch else o.replicas
    return decisions


# -- properties ---------------------------------------------------------------------------

specs = st.builds(
    lambda mn, mx, lag, tl, stab, poll, stz, idle, paused: spec(
        # Valid specs only, as the API admits them: min <= max, zero only with scaleToZero.
        minReplicas=mn if mn > 0 or stz else 1,
        maxReplicas=max(mx, mn),
        lagPerReplica=lag,
        maxTimeLagSeconds=tl,
        scaleDownStabilizationSeconds=stab,
        pollIntervalSeconds=poll,
        scaleToZero={"enabled": stz, "idleSeconds": idle},
        paused=paused,
    ),
    st.integers(0, 6),
    st.integers(1, 40),
    st.integers(1, 5000),
    st.one_of(st.none(), st.integers(1, 600)),
    st.integers(0, 600),
    st.integers(1, 60),
    st.booleans(),
    st.integers(30, 900),
    st.booleans(),
)


@st.composite
def histories(draw: st.DrawFn) -> list[Observation]:
    partitions = draw(st.integers(1, 24))
    steps = draw(st.integers(1, 12))
    t = 0.0
    ends = [draw(st.integers(0, 10_000)) for _ in range(partitions)]
    committed: list[int | None] = [draw(st.one_of(st.none(), st.integers(0, e))) for e in ends]
    out: list[Observation] = []
    for _ in range(steps):
        t += draw(st.integers(1, 120))
        ends = [e + draw(st.integers(0, 5000)) for e in ends]
        committed = [
            None if c is None and draw(st.booleans()) else draw(st.integers(c or 0, e))
            for c, e in zip(committed, ends, strict=True)
        ]
        statuses = {
            p: draw(st.sampled_from([OK, OK, "WARN", STOP, STALL, "REWIND"]))
            for p in range(partitions)
        }
        members = draw(st.integers(0, partitions + 3))
        assignment = {f"m{i}": list(range(i, partitions, max(members, 1))) for i in range(members)}
        out.append(
            obs(
                t,
                ends,
                committed,
                replicas=draw(st.integers(0, 50)),
                broker_ok=draw(st.booleans()) or not out,
                statuses=statuses,
                assignment=assignment if draw(st.booleans()) else None,
            )
        )
    return out


def idle_for(history: Sequence[Observation]) -> list[float | None]:
    """Per observation, seconds the group has been idle (no lag, no new messages between
    polls the broker answered), None when it is not; worked out apart from the policy."""
    out: list[float | None] = []
    since: float | None = None
    last: Observation | None = None
    for o in history:
        if o.broker_ok and o.end_offsets:
            quiet = last is not None and all(
                o.lag(k) == 0 and o.end_offsets[k] == last.end_offsets.get(k) for k in o.end_offsets
            )
            if not quiet:
                since = None
            elif since is None:
                assert last is not None
                since = last.time_s
            last = o
        out.append(None if since is None else o.time_s - since)
    return out


@settings(max_examples=150, deadline=None)
@given(specs, histories())
def test_cap_and_floor_hold_for_every_input(s: ScalingSpec, history: list[Observation]) -> None:
    # What a user relies on: never more replicas than partitions or maxReplicas; never
    # fewer than minReplicas (at least one) while running; zero only with scaleToZero, and
    # then only after idleSeconds of idleness or for a group that is at zero already.
    for o, d, idle in zip(history, run(history, s, follow=False), idle_for(history), strict=True):
        cap = min(d.partitions, s.max_replicas)
        floor = min(max(s.min_replicas, 1), cap)
        assert d.desired <= cap
        if d.desired == 0:
            assert s.scale_to_zero.enabled
            assert o.replicas == 0 or (idle is not None and idle >= s.scale_to_zero.idle_seconds)
        else:
            assert d.desired >= floor
        if s.paused:
            assert not d.should_patch
        assert d.reason


@settings(max_examples=100, deadline=None)
@given(specs, histories(), st.integers(0, 50))
def test_broker_errors_never_lower_replicas(
    s: ScalingSpec, history: list[Observation], current: int
) -> None:
    state = PolicyState()
    for o in history:
        _, state = decide(o, s, state)
    partitions = history[-1].partitions or 1
    failed = Observation(
        time_s=history[-1].time_s + 15, end_offsets={}, committed={}, replicas=current,
        partitions=partitions, broker_ok=False,
    )  # fmt: skip
    d, after = decide(failed, s, state)
    if current <= min(partitions, s.max_replicas):
        assert d.desired >= current
    assert d.desired <= min(partitions, s.max_replicas)
    assert after == state


@settings(max_examples=50, deadline=None)
@given(specs.filter(lambda s: s.paused), histories())
def test_paused_computes_but_never_patches(s: ScalingSpec, history: list[Observation]) -> None:
    for d in run(history, s, follow=False):
        assert not d.should_patch
        assert d.paused
        assert d.reason.startswith("paused: ")


@st.composite
def snapshots(draw: st.DrawFn) -> dict[str, Any]:
    """One sweep as the controller has it: offsets, log starts, the (end offset, time)
    history, and the timestamps the collector read."""
    now = 1000.0
    offsets: dict[tuple[str, int], tuple[int, int | None]] = {}
    history: dict[tuple[str, int], list[tuple[int, float]]] = {}
    stamps: dict[tuple[tuple[str, int], int], float] = {}
    starts: dict[tuple[str, int], int] = {}
    for p in range(draw(st.integers(1, 6))):
        key = (T, p)
        end = draw(st.integers(0, 100_000))
        starts[key] = draw(st.integers(0, end))
        committed = draw(st.none() | st.integers(starts[key], end))
        offsets[key] = (end, committed)
        times = sorted(draw(st.lists(st.floats(0, now), max_size=6, unique=True)))
        ends = sorted(draw(st.lists(st.integers(0, end), min_size=len(times),
                                    max_size=len(times))))  # fmt: skip
        history[key] = [*zip(ends, times, strict=True), (end, now)]
        if draw(st.booleans()):
            at = committed if committed is not None else starts[key]
            stamps[(key, at)] = draw(st.floats(0, now))
    return {"offsets": offsets, "log_starts": starts, "history": history,
            "produced_at": stamps, "from_earliest": draw(st.booleans())}  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(snapshots(), specs)
def test_the_policy_reads_lag_and_seconds_behind_from_the_one_computation(
    snap: dict[str, Any], s: ScalingSpec
) -> None:
    # Whatever the history, the never-committed convention or the timestamps read, the
    # decision shows exactly the lag and seconds behind that lag.py gives the status.
    lags = lagmath.partition_lags(snap["offsets"], now_s=1000.0, **{
        k: v for k, v in snap.items() if k != "offsets"})  # fmt: skip
    observation = Observation.from_offsets(1000.0, snap["offsets"], 2, **{
        k: v for k, v in snap.items() if k != "offsets"})  # fmt: skip
    assert observation.lags == lags
    d, _ = decide(observation, s)
    assert d.total_lag == lagmath.total(lags)
    assert d.time_lag_seconds == {k: p.seconds for k, p in lags.items()}
    assert d.max_time_lag_seconds == lagmath.max_seconds(lags)


# -- examples -----------------------------------------------------------------------------


def test_lag_rule_and_the_reason_reads_like_the_design() -> None:
    s = spec(minReplicas=1, maxReplicas=20, lagPerReplica=1000)
    d, _ = decide(obs(0, [10_000] * 12, [5_000] * 12, replicas=3), s)
    assert d.desired == 12
    assert d.should_patch
    assert d.reason == (
        "scaled 3→12: lag 60 000 over 1 000/replica on 12 partitions; cap 12 partitions"
    )


def test_a_backlog_on_one_partition_asks_for_one_replica() -> None:
    s = spec(minReplicas=1, maxReplicas=12, lagPerReplica=100)
    ends = [1_000_000] + [0] * 11
    d, _ = decide(obs(0, ends, [0] * 12, replicas=1), s)
    assert d.desired == 1


def test_never_above_max_replicas_even_with_more_partitions() -> None:
    s = spec(minReplicas=1, maxReplicas=4, lagPerReplica=10)
    d, _ = decide(obs(0, [1000] * 12, [0] * 12, replicas=2), s)
    assert d.desired == 4
    assert d.capped_by == "maxReplicas"


def test_replicas_above_the_cap_come_down_to_it_at_once() -> None:
    s = spec(minReplicas=1, maxReplicas=10, lagPerReplica=10)
    d, _ = decide(obs(0, [1000] * 6, [0] * 6, replicas=9), s)
    assert d.desired == 6


def test_stalled_partition_does_not_raise_replicas() -> None:
    s = spec(minReplicas=1, maxReplicas=12, lagPerReplica=100, maxTimeLagSeconds=60)
    stuck = {0: STALL, 1: STALL, 2: STOP}
    history = []
    for i in range(8):
        # Partitions 0-2: messages keep coming, the committed offset never moves.
        ends = [1000 + 500 * i] * 3 + [1000]
        history.append(obs(15.0 * i, ends, [1000] * 4, replicas=2, statuses=stuck))
    decisions = run(history, s)
    assert all(d.desired <= 2 for d in decisions)
    assert "ignoring lag on non-progressing orders/0 STALL, orders/1 STALL, orders/2 STOP" in (
        decisions[-1].reason
    )
    # The same lag on progressing partitions does scale up.
    plain = [
        obs(o.time_s, list(o.end_offsets.values()), list(o.committed.values()), replicas=2)
        for o in history
    ]
    assert max(d.desired for d in run(plain, s)) == 3


def test_stopped_partitions_do_not_keep_a_scaled_to_zero_group_asleep() -> None:
    s = spec(minReplicas=0, maxReplicas=5, scaleToZero={"enabled": True, "idleSeconds": 60})
    d, _ = decide(obs(0, [50, 0], [0, 0], replicas=0, statuses={0: STOP}), s)
    assert d.desired == 1


def test_scale_up_is_prompt_and_scale_down_waits_for_the_window() -> None:
    s = spec(minReplicas=1, maxReplicas=12, lagPerReplica=1000, scaleDownStabilizationSeconds=300)
    history = [obs(0, [8000] * 6, [0] * 6, replicas=1)]
    history += [obs(15.0 * i, [8000] * 6, [8000] * 6, replicas=1) for i in range(1, 30)]
    decisions = run(history, s)
    assert decisions[0].desired == 6
    # Lag is gone from t=15, but the high recommendation of t=0 holds for 300 s.
    for i, d in enumerate(decisions[1:], start=1):
        t = 15.0 * i
        if t < 300:
            assert d.desired == 6, (t, d.reason)
            assert d.capped_by == "stabilization"
    assert decisions[-1].desired == 1


def test_a_first_step_guessed_from_lag_per_replica_gives_way_to_the_first_measurement() -> None:
    # A backlog of 48 000 and no rate known yet: lagPerReplica sizes the first step (5).
    # 15 s later the one member, busy on all six partitions, shows 100/s per replica: one
    # replica drains the rest within the 900 s allowed, and the guess is not held for the
    # 300 s window. The control: a member that emptied its partitions was not at full
    # load, so its rate measures nothing and the guess is held.
    s = spec(minReplicas=1, maxReplicas=12, lagPerReplica=10_000, maxTimeLagSeconds=900,
             scaleDownStabilizationSeconds=300)
    one = {"a": [0, 1, 2, 3, 4, 5]}
    first = obs(0, [8000] * 6, [0] * 6, replicas=1, assignment=one)
    measured = obs(15, [8000] * 6, [250] * 6, replicas=5, assignment=one)
    guessed, informed = run([first, measured], s, follow=False)
    assert guessed.desired == 5 and informed.per_replica_rate == pytest.approx(100)
    assert informed.desired == 1 and informed.capped_by is None, informed.reason
    unmeasured = obs(15, [8000] * 6, [8000] * 6, replicas=5, assignment=one)
    _, held = run([first, unmeasured], s, follow=False)
    assert held.desired == 5 and held.capped_by == "stabilization", held.reason


def test_zero_stabilization_scales_down_at_once() -> None:
    s = spec(minReplicas=1, maxReplicas=12, lagPerReplica=1000, scaleDownStabilizationSeconds=0)
    decisions = run([obs(0, [8000] * 6, [0] * 6, 1), obs(15, [8000] * 6, [8000] * 6, 1)], s)
    assert [d.desired for d in decisions] == [6, 1]


def test_a_fresh_state_does_not_scale_down_before_a_window() -> None:
    s = spec(minReplicas=1, maxReplicas=12, lagPerReplica=1000)
    d, _ = decide(obs(0, [0] * 6, [0] * 6, replicas=5), s)
    assert d.desired == 5


@pytest.mark.parametrize(("current", "expected"), [(0, 0), (1, 3), (3, 3), (5, 5), (9, 6)])
def test_broker_error_with_scale_to_zero_keeps_a_running_group_at_its_floor(
    current: int, expected: int
) -> None:
    # A group asleep at zero stays there (nothing says traffic came back); a running one
    # is brought up to minReplicas, as without scaleToZero, and never dropped.
    s = spec(minReplicas=3, maxReplicas=6, scaleToZero={"enabled": True, "idleSeconds": 30})
    d, _ = decide(obs(0, [0] * 8, [0] * 8, replicas=current, broker_ok=False), s)
    assert d.desired == expected


def test_broker_error_keeps_replicas_and_says_why() -> None:
    s = spec(minReplicas=0, maxReplicas=12, scaleToZero={"enabled": True, "idleSeconds": 30})
    d, _ = decide(obs(0, [0] * 6, [0] * 6, replicas=4, broker_ok=False), s)
    assert d.desired == 4
    assert not d.should_patch
    assert d.reason == "broker unreachable: keeping 4 replicas"


def test_scale_to_zero_only_when_enabled_idle_long_enough_and_broker_answered() -> None:
    s = spec(
        minReplicas=1,
        maxReplicas=6,
        scaleDownStabilizationSeconds=0,
        scaleToZero={"enabled": True, "idleSeconds": 60},
    )
    quiet = [obs(15.0 * i, [100] * 3, [100] * 3, replicas=1) for i in range(8)]
    decisions = run(quiet, s)
    # Quiet since the first poll (t=0): 60 s idle at t=60, the fifth poll.
    assert [d.desired for d in decisions[:5]] == [1, 1, 1, 1, 0]
    assert "idle 60 s" in decisions[4].reason
    # Broker errors while idle do not scale to zero.
    errors = [obs(15.0 * i, [100] * 3, [100] * 3, replicas=1, broker_ok=i == 0) for i in range(8)]
    assert all(d.desired == 1 for d in run(errors, s))
    # Without scaleToZero, never below the floor.
    off = spec(minReplicas=1, maxReplicas=6, scaleDownStabilizationSeconds=0)
    assert all(d.desired == 1 for d in run(quiet, off))


def test_a_group_asleep_at_zero_stays_asleep_while_nothing_arrives() -> None:
    # At zero with no lag and no new messages, nothing says traffic came back: the group
    # is not woken to minReplicas just because the policy has not watched it idle for
    # idleSeconds yet (the operator restarted, or the group was created asleep).
    s = spec(minReplicas=0, maxReplicas=6, scaleToZero={"enabled": True, "idleSeconds": 300})
    quiet = [obs(15.0 * i, [100] * 3, [100] * 3, replicas=0) for i in range(8)]
    assert [d.desired for d in run(quiet, s)] == [0] * 8
    woken = run([*quiet, obs(120, [100, 130, 100], [100] * 3, replicas=0)], s)
    assert woken[-1].desired == 1


def test_new_messages_wake_a_group_at_zero() -> None:
    s = spec(minReplicas=0, maxReplicas=6, scaleToZero={"enabled": True, "idleSeconds": 60})
    decisions = run(
        [obs(0, [100] * 3, [100] * 3, replicas=0), obs(15, [130, 100, 100], [100] * 3, 0)], s
    )
    assert decisions[0].desired == 0
    assert decisions[1].desired == 1


def backlogged(
    t: float,
    per_partition: float,
    consumed_per_partition: float,
    replicas: int,
    members: Mapping[str, Sequence[int]],
    age: float,
    partitions: int = 12,
    backlog: int = 1500,
) -> Observation:
    """Partitions with a standing backlog whose oldest message is ``age`` seconds old."""
    end = backlog + int(per_partition * t)
    committed = int(consumed_per_partition * t)
    return Observation.from_offsets(
        t,
        {(T, p): (end, committed) for p in range(partitions)},
        replicas,
        partitions=partitions,
        assignment={m: [(T, p) for p in ps] for m, ps in members.items()},
        # The collector read the first waiting message's timestamp.
        produced_at={((T, p), committed): t - age for p in range(partitions)},
    )


def test_time_rule_scales_for_production_with_partitions_spread_by_count() -> None:
    # 12 partitions at 60 msg/s each, consumers do 100 msg/s: two partitions per consumer
    # would be 120/s, so only one partition per consumer keeps up. The oldest message is
    # 30 s old, past the slack (54 s target - 30 s reaction = 24 s): keep up now.
    s = spec(minReplicas=1, maxReplicas=20, lagPerReplica=100_000, maxTimeLagSeconds=60)
    members = {f"m{i}": list(range(i, 12, 6)) for i in range(6)}
    history = [backlogged(t, 60, 50, 6, members, age=30) for t in (0, 15, 30, 45)]
    decisions = run(history, s, follow=False)
    assert decisions[-1].desired == 12
    assert decisions[-1].per_replica_rate == pytest.approx(100)
    assert "drain within 60 s" in decisions[-1].reason


@pytest.mark.parametrize(("age", "expected"), [(30, 3), (5, 2)])
def test_time_rule_uses_the_total_and_lets_a_young_backlog_wait(age: float, expected: int) -> None:
    # 20 msg/s per partition: 240/s in total, 100/s per consumer at 90 %: three consumers,
    # once the oldest message is old enough that the group must keep up (30 s); while it
    # is young (5 s), two consumers running a little short is what uses them fully.
    s = spec(minReplicas=1, maxReplicas=20, lagPerReplica=100_000, maxTimeLagSeconds=60)
    members = {f"m{i}": list(range(i, 12, 2)) for i in range(2)}
    history = [backlogged(t, 20, 100 / 6, 2, members, age, backlog=100) for t in (0, 15, 30, 45)]
    decisions = run(history, s, follow=False)
    assert decisions[-1].desired == expected
    assert decisions[-1].recommendation <= expected


def test_a_partition_that_gets_nothing_while_its_owner_works_is_stuck_at_once() -> None:
    # Partition 0 stops moving; its owner keeps consuming the others. One poll is enough
    # to see it (Burrow's STALL needs a full window): no replica is added for it.
    s = spec(minReplicas=1, maxReplicas=12, lagPerReplica=100_000, maxTimeLagSeconds=60)
    members = {"a": [0, 1, 2], "b": [3, 4, 5]}
    observations = []
    for i in range(6):
        t = 15.0 * i
        ends = [100 + 10 * int(t)] * 6
        committed = [100 if i >= 2 else 100 + 10 * int(t), *(100 + 10 * int(t),) * 5]
        observations.append(obs(t, ends, committed, 2, assignment=members))
    decisions = run(observations, s)
    assert "sim" not in decisions[-1].reason
    assert "orders/0 STUCK" in decisions[-1].reason
    assert max(d.desired for d in decisions) == 2


def test_a_partition_waiting_while_its_owner_works_another_backlog_is_starved() -> None:
    # A slow consumer (10 messages/s) owns two backlogged partitions: it worked on
    # partition 0, then on partition 1's fetched batch, and partition 0 waits, labelled
    # STALL by Burrow, yet another replica would take it. Its lag counts: 1 -> 2.
    s = spec(minReplicas=1, maxReplicas=4, lagPerReplica=500)
    members = {"a": [0, 1]}

    def polls(turns: int) -> list[Observation]:
        out = []
        for i in range(12):
            p0 = 10 * min(i, turns)
            p1 = 10 * max(0, i - turns)
            out.append(obs(5.0 * i, [3000, 3000], [p0, p1], 1, assignment=members,
                           statuses={0: STALL} if i > turns + 2 else None))
        return out

    decisions = run(polls(turns=4), s, follow=False)
    assert all("STUCK" not in d.reason and "STALL" not in d.reason for d in decisions)
    assert decisions[-1].desired == 2
    # Set aside for most of the rate window (a paused partition): ignored again.
    set_aside = run(polls(turns=0), s, follow=False)[-1]
    assert "ignoring lag on non-progressing orders/0 STALL" in set_aside.reason
    assert set_aside.desired == 1
    # The same partition behind a consumer that progresses nowhere: stuck at once.
    stuck = [obs(5.0 * i, [3000, 3000], [10, 10], 1, assignment=members) for i in range(6)]
    assert "orders/0 STUCK" in run(stuck, s, follow=False)[-1].reason


def test_a_hot_partition_that_must_keep_up_leaves_room_for_its_neighbours() -> None:
    # Consumer a owns the hot partition (70/s) and a 40/s one: 110/s against 100/s, while
    # the average says two consumers are plenty (180/s). Partitions spread by count: with
    # three consumers one still has two partitions, and the hot one beside any other is
    # more than a replica does (70 + 35 > 100); four give it a consumer of its own.
    s = spec(minReplicas=1, maxReplicas=4, lagPerReplica=100_000, maxTimeLagSeconds=60)
    members = {"a": [0, 1], "b": [2, 3]}
    rates = [70, 40, 35, 35]
    history = []
    for t in (0, 15, 30, 45):
        ends = [500 + r * int(t) for r in rates[:2]] + [r * int(t) for r in rates[2:]]
        done = [int(t * 100 * 70 / 110), int(t * 100 * 40 / 110), 35 * int(t), 35 * int(t)]
        history.append(
            Observation.from_offsets(
                t,
                {(T, p): (e, c) for p, (e, c) in enumerate(zip(ends, done, strict=True))},
                2,
                partitions=4,
                assignment={m: [(T, p) for p in ps] for m, ps in members.items()},
                produced_at={((T, p), c): t - 30 for p, c in enumerate(done)},
            )
        )
    decisions = run(history, s, follow=False)
    assert decisions[-1].desired == 4


def test_an_old_assignment_does_not_ask_for_more_while_new_pods_join() -> None:
    # One consumer owned all six partitions (a hot one at 70/s and five at 10/s: 120/s
    # against its 100/s) and the Deployment is already at 3; the pods are starting, so
    # the assignment is still the old one. Its overload is what the last scale-up was
    # for: the count rule (two would do, three are coming) decides, not one more.
    s = spec(minReplicas=1, maxReplicas=6, lagPerReplica=100_000, maxTimeLagSeconds=60)
    rates = [70, 10, 10, 10, 10, 10]
    alone = {"a": [(T, p) for p in range(6)]}

    def polls(replicas_at_last: int) -> list[Observation]:
        history = []
        for t in (0, 15, 30, 45):
            ends = [500 + r * int(t) for r in rates]
            done = [int(t * 100 * r / 120) for r in rates]
            history.append(
                Observation.from_offsets(
                    t,
                    {(T, p): (e, c) for p, (e, c) in enumerate(zip(ends, done, strict=True))},
                    replicas_at_last if t == 45 else 1,
                    partitions=6,
                    assignment=alone,
                    produced_at={((T, p), c): t - 30 for p, c in enumerate(done)},
                )
            )
        return history

    starting = run(polls(3), s, follow=False)[-1]
    assert starting.per_replica_rate == pytest.approx(100, rel=0.02)
    assert starting.desired == 3
    # The same overload with the group settled at its one member: more, at once.
    assert run(polls(1), s, follow=False)[-1].desired >= 2


def test_running_short_is_for_a_fraction_of_a_replica_only() -> None:
    # 25 msg/s on each of 12 partitions (300/s), consumers measured at 100/s, and the
    # oldest message young (5 s): running a little short is allowed, but not on two
    # consumers, which fall behind by a whole replica's work: three at least.
    s = spec(minReplicas=1, maxReplicas=20, lagPerReplica=100_000, maxTimeLagSeconds=60)
    members = {f"m{i}": list(range(i, 12, 2)) for i in range(2)}
    history = [backlogged(t, 25, 100 / 6, 2, members, 5, backlog=100) for t in (0, 15, 30, 45)]
    decisions = run(history, s, follow=False)
    assert decisions[-1].per_replica_rate == pytest.approx(100)
    assert decisions[-1].desired == 3


def test_reaction_time_is_measured_from_a_scale_up_to_the_new_members() -> None:
    s = spec(minReplicas=1, maxReplicas=6, lagPerReplica=1000)
    d, state = decide(obs(0, [8000] * 6, [0] * 6, 1, assignment={"a": list(range(6))}), s)
    assert d.desired == 6
    assert state.awaiting == (0, 6)
    six = {f"m{i}": [i] for i in range(6)}
    _, state = decide(obs(15, [8000] * 6, [0] * 6, 6, assignment={"a": list(range(6))}), s, state)
    assert state.reaction_seconds is None
    _, state = decide(obs(45, [8000] * 6, [0] * 6, 6, assignment=six), s, state)
    assert state.reaction_seconds == 45
    assert state.awaiting is None


def test_reaction_time_counts_from_the_last_raise_of_the_target() -> None:
    # 1 -> 2 at t=0, then 2 -> 6 at t=15: the last four pods were asked for at t=15, so
    # the six members seen at t=45 took 30 s, not 45 (counting from the first scale-up
    # measured the polls it took to decide, and the time rule then planned for that).
    s = spec(minReplicas=1, maxReplicas=6, lagPerReplica=1000)
    one = {"a": list(range(6))}
    _, state = decide(obs(0, [1500, 1500, 0, 0, 0, 0], [0] * 6, 1, assignment=one), s)
    assert state.awaiting == (0, 2)
    # (The old member consumed meanwhile: a partition that got nothing would be stuck.)
    d, state = decide(obs(15, [8000] * 6, [100] * 6, 2, assignment=one), s, state)
    assert d.desired == 6
    assert state.awaiting == (15, 6)
    six = {f"m{i}": [i] for i in range(6)}
    _, state = decide(obs(45, [8000] * 6, [200] * 6, 6, assignment=six), s, state)
    assert state.reaction_seconds == 30


def test_paused_reports_what_it_would_do() -> None:
    s = spec(minReplicas=1, maxReplicas=12, lagPerReplica=1000, paused=True)
    d, _ = decide(obs(0, [8000] * 6, [0] * 6, replicas=1), s)
    assert d.desired == 6
    assert not d.should_patch
    assert d.reason.startswith("paused: scaled 1→6")


def test_per_replica_rate_falls_only_on_loaded_settled_members() -> None:
    s = spec(minReplicas=1, maxReplicas=4, lagPerReplica=100_000, maxTimeLagSeconds=600)
    pair = {"a": [0], "b": [1]}
    swapped = {"a": [1], "b": [0]}

    def sweep(t: float, consumed: int, assignment: Mapping[str, Sequence[int]]) -> Observation:
        # A deep backlog on both partitions: every member works flat out.
        return obs(t, [100_000 + 10 * int(t)] * 2, [consumed] * 2, 2, assignment=assignment)

    fast = [sweep(15.0 * i, 1500 * i, pair) for i in range(4)]
    # Then the app gets slower: 50/s per member, for ten minutes.
    slow = [sweep(45.0 + 15 * i, 4500 + 750 * i, pair) for i in range(1, 41)]
    decisions = run(fast + slow, s, follow=False)
    assert decisions[3].per_replica_rate == pytest.approx(100)
    # The estimate follows the slower app down, smoothly, and ends close to it.
    rates = [d.per_replica_rate or 0 for d in decisions[3:]]
    assert all(a >= b for a, b in pairwise(rates))
    assert 50 <= rates[-1] < 55
    # The same slow intervals right after a rebalance are no evidence: members paused.
    moved = [sweep(45.0 + 15 * i, 4500 + 750 * i, swapped) for i in range(1, 3)]
    decisions = run(fast + moved, s, follow=False)
    assert decisions[-1].per_replica_rate == pytest.approx(100)


@pytest.mark.parametrize("labelled", [True, False])
def test_a_poison_partition_does_not_drag_the_rate_down_nor_replicas_up(labelled: bool) -> None:
    # Partition 0 holds a poison message: its consumer commits nothing while messages pile
    # up. Consumers b and c first drain a backlog flat out (100/s measured), then keep up
    # with 20/s. Replicas must not climb toward maxReplicas, whether Burrow has labelled
    # partition 0 STALL yet or not.
    s = spec(minReplicas=1, maxReplicas=12, lagPerReplica=100_000, maxTimeLagSeconds=600)
    members = {"a": [0], "b": [1], "c": [2]}
    history = []
    for i in range(30):
        t = 15 * i
        healthy_end = 5000 + 20 * t
        healthy_committed = min(100 * t, healthy_end)
        ends = [500 + 50 * t, healthy_end, healthy_end]
        committed = [500, healthy_committed, healthy_committed]
        status = {0: STALL} if labelled and i >= 3 else {}
        history.append(obs(t, ends, committed, 3, statuses=status, assignment=members))
    decisions = run(history, s)
    assert decisions[3].per_replica_rate == pytest.approx(100)
    assert decisions[-1].per_replica_rate == pytest.approx(100)
    assert max(d.desired for d in decisions) <= 3


DUMP: dict[str, Any] = {
    "partitions": 6,
    "duration_seconds": 660,
    "initial_replicas": 2,
    "initial_backlog": 30_000,
    "slo_seconds": 120,
    "per_replica_rate": 100,
    "startup_seconds": 10,
    "rebalance_pause_seconds": 3,
    "rate": [{"at": 0, "rate": 100}],
    "scaling": {"minReplicas": 1, "maxReplicas": 6, "lagPerReplica": 100_000,
                "maxTimeLagSeconds": 120, "scaleDownStabilizationSeconds": 300,
                "pollIntervalSeconds": 15},
}


def test_replicas_added_for_a_backlog_go_once_it_is_drained_not_after_the_window() -> None:
    # A dump of 30 000 messages beside 100/s of production: six replicas drain it within
    # the SLO, two keep up with production. Once the dump is gone, holding six for the
    # rest of the 300 s window buys nothing: the window guards against traffic that comes
    # back, and this capacity was never asked for by traffic.
    class Recorded(KcgPolicy):
        decisions: list[Decision] = []

        def decide(self, observation: Observation, spec: ScalingSpec) -> Decision:
            decision = super().decide(observation, spec)
            self.decisions.append(decision)
            return decision

    result = simulate(parse_scenario(DUMP, name="dump"), Recorded())
    timeline = result.replicas_timeline
    drained = next(t for t, lag in enumerate(result.lag_timeline) if t > 0 and lag < 100)
    assert max(timeline[:drained]) == 6
    assert drained < 120
    # Back to production's count by the second poll after the drain, 200 s before the
    # window would have let it go.
    assert timeline[drained + 30] == 2, timeline[drained : drained + 31]
    assert result.slo_violation_seconds == 0
    # The reason says why the window let them go.
    down = next(d for d in Recorded.decisions if d.should_patch and d.desired < d.current)
    assert down.reason.startswith("scaled 6→2:"), down.reason
    assert "backlog drained: the window keeps only what production asked for" in down.reason


def test_the_window_still_holds_replicas_when_production_falls() -> None:
    # The same group with no backlog: 500/s for five minutes, then 100/s. Six replicas
    # were asked for by production itself, so they are held for the whole window.
    fall = {**DUMP, "initial_backlog": 0, "initial_replicas": 6,
            "rate": [{"at": 0, "rate": 500}, {"at": 300, "rate": 100}]}
    result = simulate(parse_scenario(fall, name="fall"), KcgPolicy())
    held = result.replicas_timeline[300:585]
    assert set(held) == {6}
    assert result.replicas_timeline[-1] < 6
