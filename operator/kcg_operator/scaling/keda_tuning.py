"""KEDA's lagThreshold as a careful user tunes it: on recorded traffic, then deployed.

The benchmark's front picks KEDA's threshold for each trace in hindsight, which no user
can do: the threshold is set before the traffic comes. A careful user replays the traffic
they have recorded (in the benchmark: the scenario's other noise variants, the same shape
on other days) through a sweep, keeps the settings whose worst recorded day has the fewest
SLO-violation seconds, refines the threshold between the last setting that holds and the
next one that does not, and deploys the cheapest setting over those days. How that
setting does on the day it was not tuned on is what KEDA gives that user.

Pure: the replays come in through ``evaluate``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

#: Bisection steps between the largest swept threshold that holds and the next one up.
#: With the benchmark's sweep (about 1.5x between samples) four steps leave 2.5 %.
TUNE_STEPS = 4


@dataclass(frozen=True, order=True)
class Score:
    """One setting over the recorded days."""

    worst_violation_seconds: int
    replica_seconds: int


@dataclass(frozen=True)
class Setting:
    preset: str
    threshold: int


def score_of(runs: Iterable[tuple[int, int]]) -> Score:
    """(violation s, replica-s) per recorded day -> the worst day's violations, total cost."""
    days = list(runs)
    if not days:
        raise ValueError("a setting is scored on at least one recorded day")
    return Score(max(v for v, _ in days), sum(r for _, r in days))


def tune(
    evaluate: Callable[[Setting], Score],
    presets: Sequence[str],
    thresholds: Sequence[int],
    steps: int = TUNE_STEPS,
) -> tuple[Setting, Score]:
    """The setting a careful user deploys, and its score on the recorded days.

    Lower thresholds mean more replicas. Per preset, the sweep is refined by bisection
    between the largest threshold whose worst day is as good as any setting's and the next
    threshold up, then the cheapest setting at that worst day wins (ties: the larger
    threshold, then the preset listed first).
    """
    if not presets or not thresholds:
        raise ValueError("nothing to tune: no presets or no thresholds")
    scores = {Setting(p, th): evaluate(Setting(p, th)) for p in presets for th in thresholds}
    target = min(s.worst_violation_seconds for s in scores.values())
    for preset in presets:
        swept = sorted(s.threshold for s in scores if s.preset == preset)
        holding = [
            th for th in swept if scores[Setting(preset, th)].worst_violation_seconds <= target
        ]
        if not holding or holding[-1] == swept[-1]:
            continue
        low = holding[-1]
        high = next(th for th in swept if th > low)
        for _ in range(steps):
            mid = round(math.sqrt(low * high))
            if mid in (low, high):
                break
            setting = Setting(preset, mid)
            scores[setting] = evaluate(setting)
            if scores[setting].worst_violation_seconds <= target:
                low = mid
            else:
                high = mid
    order = {p: i for i, p in enumerate(presets)}
    best = min(
        (s for s, sc in scores.items() if sc.worst_violation_seconds <= target),
        key=lambda s: (scores[s].replica_seconds, -s.threshold, order[s.preset]),
    )
    return best, scores[best]


Outcome = str
KCG_BETTER: Outcome = "kcg better"
KEDA_BETTER: Outcome = "KEDA better"
EQUAL: Outcome = "equal"
TRADE_OFF: Outcome = "trade-off"
OUTCOMES = (KCG_BETTER, EQUAL, TRADE_OFF, KEDA_BETTER)


def compare(kcg: tuple[int, int], keda: tuple[int, int]) -> Outcome:
    """kcg's (violation s, replica-s) against KEDA's on the same day: who is no worse on
    both, or a trade-off (fewer violations for more replicas, or the other way)."""
    if kcg == keda:
        return EQUAL
    if kcg[0] <= keda[0] and kcg[1] <= keda[1]:
        return KCG_BETTER
    if keda[0] <= kcg[0] and keda[1] <= kcg[1]:
        return KEDA_BETTER
    return TRADE_OFF
