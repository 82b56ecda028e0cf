"""Events the apiserver cannot take now (a restarting one answers 503, or nothing) are
kept and sent later with their own time; refusals that will not change are not retried.

The apiserver here is a stand-in for one call (the Event POST) so each answer can be
chosen; tests/e2e/test_fault_matrix.py restarts the real one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import MaxRetryError

from kcg_operator import kube as kube_module
from kcg_operator.kube import Kube

pytestmark = pytest.mark.unit

GROUP = {"apiVersion": "kcg.dev/v1alpha1", "kind": "KafkaConsumerGroup",
         "metadata": {"name": "orders", "namespace": "shop", "uid": "u1"}}


class _Events:
    """The Event POST answering from `answers` (an exception, or None: taken)."""

    def __init__(self) -> None:
        self.answers: list[Exception | None] = []
        self.taken: list[dict[str, Any]] = []

    def request(self, method: str, path: str, body: Any = None, *_: Any) -> None:
        assert (method, path) == ("POST", f"/api/v1/namespaces/{body['metadata']['namespace']}"
                                          "/events")
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer
        self.taken.append(body)


def _kube(leader: list[bool] | None = None) -> tuple[Kube, _Events]:
    state = leader if leader is not None else [True]

    class Gate:
        """Leads while state[0] says so."""

        def leading(self) -> bool:
            return state[0]

        @contextlib.contextmanager
        def writing(self) -> Iterator[bool]:
            yield state[0]

    kube = Kube(None, Gate())  # type: ignore[arg-type]
    events = _Events()
    kube._request = events.request  # type: ignore[method-assign]
    return kube, events


def test_an_event_refused_while_the_apiserver_restarts_is_sent_later_once_in_order() -> None:
    kube, events = _kube()
    events.answers = [ApiException(status=503, reason="Service Unavailable"),
                      MaxRetryError(None, "/api", "connection refused")]  # type: ignore[arg-type]
    kube.event(GROUP, "Warning", "BrokerUnreachable", "first")
    kube.event(GROUP, "Normal", "Scaled", "second")
    assert events.taken == []
    events.answers = [ApiException(status=503, reason="Service Unavailable")]
    assert kube.retry_events() == 0  # still down: both stay, in order
    assert kube.retry_events() == 2
    assert [e["message"] for e in events.taken] == ["first", "second"]
    assert events.taken[0]["firstTimestamp"] <= events.taken[1]["firstTimestamp"]
    assert kube.retry_events() == 0 and len(events.taken) == 2  # nothing twice


def test_a_refusal_that_will_not_change_is_not_retried() -> None:
    kube, events = _kube()
    events.answers = [ApiException(status=422, reason="Unprocessable Entity")]
    kube.event(GROUP, "Warning", "BrokerUnreachable", "bad")
    assert kube.retry_events() == 0 and events.taken == []


def test_a_replica_that_stopped_leading_does_not_send_what_it_kept() -> None:
    leading = [True]
    kube, events = _kube(leading)
    events.answers = [ApiException(status=429, reason="Too Many Requests")]
    kube.event(GROUP, "Normal", "Scaled", "kept")
    leading[0] = False
    assert kube.retry_events() == 0 and events.taken == []


def test_kept_events_are_bounded_the_oldest_go_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube_module, "PENDING_EVENTS", 3)
    kube, events = _kube()
    events.answers = [ApiException(status=503, reason="down")] * 5
    for i in range(5):
        kube.event(GROUP, "Normal", "Scaled", f"e{i}")
    assert kube.retry_events() == 3
    assert [e["message"] for e in events.taken] == ["e2", "e3", "e4"]
