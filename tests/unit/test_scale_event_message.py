"""The Scaled Event carries the figures the decision used (issue 11.6)."""

from __future__ import annotations

import re

import pytest

from kcg_operator.controller import EVENT_MESSAGE_LIMIT, scale_event_message
from kcg_operator.scaling.policy import Decision

pytestmark = pytest.mark.unit

FIGURES = re.compile(r"\[(?P<body>[^\[\]]*)\]$")


def _decision(**changes: object) -> Decision:
    base: dict[str, object] = dict(
        desired=4,
        current=2,
        reason="scaled 2→4: lag 3 600 over 1 000/replica on 4 partitions; cap 6 partitions",
        should_patch=True,
        recommendation=4,
        capped_by=None,
        partitions=6,
        total_lag=3600,
        lag_status="OK",
        max_time_lag_seconds=42.25,
        production_rate=120.0,
        per_replica_rate=55.5,
    )
    base.update(changes)
    return Decision(**base)  # type: ignore[arg-type]


def _figures(message: str) -> dict[str, str]:
    match = FIGURES.search(message)
    assert match, message
    return dict(pair.split("=", 1) for pair in match["body"].split())


def test_the_event_names_every_number_the_decision_used() -> None:
    message = scale_event_message(_decision())
    assert message.startswith("scaled 2→4: lag 3 600 over 1 000/replica")
    assert _figures(message) == {
        "lag": "3600",
        "secondsBehind": "42.2",
        "productionRate": "120.0/s",
        "perReplicaRate": "55.5/s",
        "replicas": "2->4",
        "recommended": "4",
        "partitions": "6",
        "lagStatus": "OK",
    }


def test_figures_not_measured_yet_say_unknown() -> None:
    figures = _figures(
        scale_event_message(
            _decision(max_time_lag_seconds=None, production_rate=None, per_replica_rate=None)
        )
    )
    assert figures["secondsBehind"] == figures["productionRate"] == "unknown"
    assert figures["perReplicaRate"] == "unknown"


@pytest.mark.parametrize("length", [900, 5000])
def test_a_long_reason_is_cut_and_the_figures_survive(length: int) -> None:
    message = scale_event_message(_decision(reason="scaled 2→4: " + "x" * length))
    assert len(message) <= EVENT_MESSAGE_LIMIT
    assert _figures(message)["lag"] == "3600"
    assert "…" in message


def test_seconds_behind_is_the_checks_own_when_given() -> None:
    """The controller passes lag.partition_lags' largest seconds behind (what the status
    and the metrics show), so the Event never disagrees with them."""
    figures = _figures(scale_event_message(_decision(max_time_lag_seconds=0.0), 73.04))
    assert figures["secondsBehind"] == "73.0"
