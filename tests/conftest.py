"""Shared fixtures: the local stack of real programs, brought up once per test session.

If a stack is already up (`make up`), the tests use it and leave it running; otherwise the
session starts one, tied to this process (it dies with the runner, even on SIGKILL), and
stops it at the end, also when tests fail or the run is interrupted.
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "stack"))

import localstack  # noqa: E402


@pytest.fixture(scope="session")
def stack() -> Iterator[dict[str, Any]]:
    """Settings of the running stack: KUBECONFIG, KAFKA_BOOTSTRAP_SERVERS, OUTBOX_DSN."""
    existing = localstack.read_state()
    if existing is not None:
        yield existing
        return
    try:
        state = localstack.up(owned=True)
    except localstack.StackError as exc:
        pytest.exit(f"local stack: {exc}", returncode=3)
    try:
        yield state
    finally:
        localstack.down(quiet=True)


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A DNS-1123 name unique to this test, for topics, groups and namespaces."""
    base = request.node.name.lower().replace("_", "-")[:40].strip("-")
    return f"{base}-{uuid.uuid4().hex[:6]}"


@contextlib.contextmanager
def fresh_namespace(api: Any, name: str) -> Iterator[str]:
    """A namespace for one test, deleted afterwards (its objects with it)."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        core.delete_namespace(name)
