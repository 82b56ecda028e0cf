"""kcg_scale_events_total says why each replica change happened, from a bounded set of
reasons (the dashboard's scale-events panel groups by it), and a deleted group's series go."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from kcg_operator import metrics
from kcg_operator.controller import Controller
from kcg_operator.registry import Registry
from tests.unit.test_controller_status import _FakeKube, _scaled_object, _snap

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("desired", "capped_by", "reason"), [
    (3, None, "lag"),
    (6, "partitions", "partitions"),
    (10, "maxReplicas", "maxReplicas"),
    (1, "minReplicas", "minReplicas"),
    (4, "stabilization", "stabilization"),
    (6, "brokerUnavailable", "brokerUnavailable"),
    (0, None, "scaleToZero"),
    (0, "minReplicas", "scaleToZero"),
    (2, "something new", "lag"),
])
def test_reason_is_the_bound_that_set_the_count_or_the_lag_rules(
    desired: int, capped_by: str | None, reason: str,
) -> None:
    assert metrics.scale_reason(desired, capped_by) == reason
    assert reason in metrics.SCALE_REASONS


def _scale_samples(name: str) -> list[dict[str, str]]:
    return [s.labels for m in REGISTRY.collect() for s in m.samples
            if s.name == "kcg_scale_events_total" and s.labels.get("name") == name]


def test_a_scale_event_is_counted_with_its_reason_and_forgotten_with_its_group() -> None:
    kube = _FakeKube()
    registry = Registry()
    registry.deployment_seen(("shop", "why"), (1, 1))
    ctl = Controller(kube, registry)  # type: ignore[arg-type]
    ctl.evaluate(("shop", "why"), _scaled_object("why"),
                 _snap(offsets={("orders", 0): (100, 0), ("orders", 1): (100, 0)}))
    assert kube.scaled
    (labels,) = _scale_samples("why")
    assert labels["direction"] == "up"
    # 200 messages over 5 per replica, on 2 partitions with lag: the lag rule asks for 2,
    # within every bound.
    assert kube.scaled == [2]
    assert labels["reason"] == "lag"
    ctl.pass_once()  # the object is gone from the registry
    assert _scale_samples("why") == []
