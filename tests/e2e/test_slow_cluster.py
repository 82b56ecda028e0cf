"""A Kafka cluster that does not answer delays no other cluster's poll (issue 10.3): each
cluster's sweep runs on its own, and the controller loop never waits for it."""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from .conftest import RunningOperator, eventually

pytestmark = pytest.mark.e2e


@contextlib.contextmanager
def black_hole(host: str) -> Iterator[str]:
    """A broker address that accepts connections and never answers a request: the
    kernel completes the handshake into the backlog, nobody ever reads."""
    sock = socket.socket()
    sock.bind((host, 0))
    sock.listen(64)
    try:
        yield f"{host}:{sock.getsockname()[1]}"
    finally:
        sock.close()


def _sweeps(operator: RunningOperator, cluster: str) -> int:
    match = re.search(rf'^kcg_lag_sweep_duration_seconds_count{{cluster="{re.escape(cluster)}"}}'
                      r" (\S+)$", operator.metrics(), re.MULTILINE)
    return int(float(match.group(1))) if match else 0


def _group(name: str, topic: str, bootstrap: str) -> dict[str, Any]:
    return {
        "apiVersion": "kcg.dev/v1alpha1", "kind": "KafkaConsumerGroup",
        "metadata": {"name": name},
        "spec": {
            "topics": [topic], "kafka": {"bootstrapServers": bootstrap},
            "scaling": {"minReplicas": 1, "maxReplicas": 2, "pollIntervalSeconds": 2},
            "template": {"spec": {"containers": [{"name": "c", "image": "example/app:1"}]}},
        },
    }


def test_a_cluster_that_does_not_answer_holds_only_its_own_groups(
    operator: RunningOperator, kubectl: Callable[..., Any], kube_api: client.ApiClient,
    cluster: dict[str, str], ns: str, topic: Callable[..., str],
) -> None:
    live = cluster["SPEC_BOOTSTRAP"]
    custom = client.CustomObjectsApi(kube_api)
    with black_hole(live.rsplit(":", 1)[0]) as dark:
        for name, bootstrap in (("lively", live), ("dark", dark)):
            kubectl("apply", "-n", ns, "-f", "-",
                    stdin=yaml.safe_dump(_group(name, topic(2), bootstrap)))

        def dark_unreachable() -> bool:
            status = custom.get_namespaced_custom_object(
                "kcg.dev", "v1alpha1", ns, "kafkaconsumergroups", "dark").get("status") or {}
            return any(c["type"] == "Ready" and c["reason"] == "KafkaUnreachable"
                       for c in status.get("conditions") or [])

        eventually(dark_unreachable, timeout=90, what="the dark cluster's first sweep to fail")
        # While the dark cluster's next sweep waits out its timeouts (10 s per request
        # kind), the live cluster is swept at its own 2 s interval.
        dark_before, live_before = _sweeps(operator, dark), _sweeps(operator, live)
        eventually(lambda: _sweeps(operator, dark) > dark_before, timeout=90,
                   what="one more sweep of the dark cluster")
        live_during = _sweeps(operator, live) - live_before
        print(f"slow-cluster: {live_during} sweeps of the live cluster during one sweep of "
              "the dark one")
        assert live_during >= 3, (
            f"the live cluster was swept {live_during} times while the dark one was out")
