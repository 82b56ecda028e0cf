"""The operator's kopf set-up: only watching handlers, so the diff base it skips is never
read (kopf would deep-copy every watched body to build one)."""

from __future__ import annotations

import kopf
import pytest

import kcg_operator.handlers.workload  # noqa: F401  (registers the handlers)
from kcg_operator.runtime import API_RETRY_BACKOFFS, WatchOnlyDiffBase

pytestmark = pytest.mark.unit


def test_the_operator_registers_watching_handlers_only() -> None:
    registry = kopf.get_default_registry()
    watched = {h.id for h in registry._watching.get_all_handlers()}
    assert {"track", "track_deployment", "track_configmap"} <= watched
    # A changing (on.create/update/delete/resume/field) or daemon handler would read the
    # diff base that WatchOnlyDiffBase never builds: it would see no change, ever.
    assert list(registry._changing.get_all_handlers()) == []
    assert list(registry._spawning.get_all_handlers()) == []


def test_the_diff_base_is_neither_built_nor_read() -> None:
    storage = WatchOnlyDiffBase(prefix="kcg.dev", key="last-handled-configuration")
    body = kopf.Body({"metadata": {"name": "orders", "annotations": {
        "kcg.dev/last-handled-configuration": '{"spec": {"groupId": "g"}}'}},
        "spec": {"groupId": "g"}})
    assert storage.build(body=body) == {}
    assert storage.fetch(body=body) is None


def test_failed_api_requests_are_retried_often_and_for_two_minutes() -> None:
    # Between retries at most 5 s: a watch resumes within 5 s of the apiserver's return.
    assert max(API_RETRY_BACKOFFS) <= 5.0
    # Only after two minutes of failures does kopf give a request (a watch stream) up.
    assert sum(API_RETRY_BACKOFFS) >= 120.0
