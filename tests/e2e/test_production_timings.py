"""The production timings, as they are: a 15 s poll and a 300 s scale-down stabilization.

Every other e2e test shortens them (polls of 1-2 s, windows of seconds). This one leaves
`pollIntervalSeconds` and `scaleDownStabilizationSeconds` unset, so the CRD's defaults apply,
and shows on the real operator pod: a scale-up at the first poll that sees the backlog, polls
15 s apart, and a scale-down no sooner than 300 s after the last poll that recommended more
(and not much later either). It takes about seven minutes.

The test plays the consumer itself: the group's pods run but never join the group, and the
test commits the group's offsets. That puts the end of the backlog at a moment it chooses,
half-way between two polls, so "the last poll that recommended more" is known to the poll.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from confluent_kafka import ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .conftest import RunningOperator

pytestmark = pytest.mark.e2e

PARTITIONS = 6
LAG_PER_REPLICA = 100
BACKLOG = 3000  # messages per partition
DRAIN_PER_SECOND = 5  # per partition, committed by the test while the backlog lasts
POLL_SECONDS = 15  # the CRD's defaults, asserted on the stored object below
STABILIZATION_SECONDS = 300
SLACK = 3.0  # seconds: sweep and write latency, and this test's sampling (every 0.25 s)


@dataclass
class Timeline:
    """What the test saw, sampled every 0.25 s: when the status was rewritten (each poll
    that saw a different lag rewrites it) and the Deployment's replicas."""

    api: client.ApiClient
    ns: str
    name: str
    writes: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    replicas: list[tuple[float, int]] = field(default_factory=list)
    ready: int = 0

    def sample(self) -> None:
        now = time.monotonic()
        obj: dict[str, Any] = client.CustomObjectsApi(self.api).get_namespaced_custom_object(
            "kcg.dev", "v1alpha1", self.ns, "kafkaconsumergroups", self.name)  # type: ignore[assignment]
        status = dict(obj.get("status") or {})
        if status and (not self.writes or status != self.writes[-1][1]):
            self.writes.append((now, status))
        try:
            deployment = client.AppsV1Api(self.api).read_namespaced_deployment(
                self.name, self.ns)
        except ApiException as exc:
            if exc.status == 404:
                return  # not made yet
            raise
        assert deployment.spec is not None and deployment.spec.replicas is not None
        replicas = deployment.spec.replicas
        if not self.replicas or replicas != self.replicas[-1][1]:
            self.replicas.append((now, replicas))
        self.ready = (deployment.status.ready_replicas if deployment.status else None) or 0

    @property
    def status(self) -> dict[str, Any]:
        return self.writes[-1][1] if self.writes else {}

    @property
    def current(self) -> int:
        return self.replicas[-1][1] if self.replicas else -1


class Committer:
    """The group's consumer, played by the test: commits offsets for every partition."""

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self.group, self.topic = group, topic
        self.offsets = [0] * PARTITIONS
        self.last = 0.0

    def commit(self, offsets: list[int]) -> None:
        self.offsets = offsets
        tps = [TopicPartition(self.topic, p, o) for p, o in enumerate(offsets)]
        self.admin.alter_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(self.group, tps)])[self.group].result(10)
        self.last = time.monotonic()

    def drain_a_little(self) -> None:
        """Every second, DRAIN_PER_SECOND more per partition: lag shrinks, commits move."""
        if time.monotonic() - self.last >= 1.0:
            self.commit([min(o + DRAIN_PER_SECOND, BACKLOG) for o in self.offsets])


def _until(timeline: Timeline, done: Callable[[], bool], timeout: float, what: str,
           each: Callable[[], None] = lambda: None) -> float:
    """Samples (and runs `each`) every 0.25 s until `done`; returns when it was first true."""
    deadline = time.monotonic() + timeout
    while True:
        each()
        timeline.sample()
        if done():
            return time.monotonic()
        assert time.monotonic() < deadline, (
            f"timed out after {timeout:.0f}s waiting for {what}; status: {timeline.status}, "
            f"replicas: {timeline.replicas}")
        time.sleep(0.25)


@pytest.mark.timeout(900)
def test_default_timings_scale_up_at_the_next_15s_poll_and_down_300s_after_the_last_need(
    operator: RunningOperator, kubectl: Callable[..., Any], kube_api: client.ApiClient,
    cluster: dict[str, str], examples_image: str, ns: str, topic: Callable[..., str],
) -> None:
    orders = topic(PARTITIONS)
    name = f"prod-{orders[2:]}"  # the group id: unique on the shared broker
    kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "kcg.dev/v1alpha1", "kind": "KafkaConsumerGroup",
        "metadata": {"name": name},
        "spec": {
            "topics": [orders],
            "kafka": {"bootstrapServers": cluster["SPEC_BOOTSTRAP"]},
            # No pollIntervalSeconds, no scaleDownStabilizationSeconds: the defaults.
            "scaling": {"minReplicas": 1, "maxReplicas": 12, "lagPerReplica": LAG_PER_REPLICA},
            "template": {"spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "consumer", "image": examples_image, "imagePullPolicy": "Never",
                    # Runs, never joins the group: the test commits the offsets.
                    "command": ["python", "-c", "import time; time.sleep(10**6)"]}]}},
        },
    }))
    stored: dict[str, Any] = client.CustomObjectsApi(kube_api).get_namespaced_custom_object(
        "kcg.dev", "v1alpha1", ns, "kafkaconsumergroups", name)  # type: ignore[assignment]
    assert stored["spec"]["scaling"]["pollIntervalSeconds"] == POLL_SECONDS
    assert stored["spec"]["scaling"]["scaleDownStabilizationSeconds"] == STABILIZATION_SECONDS

    timeline = Timeline(kube_api, ns, name)
    committer = Committer(cluster["KAFKA_BOOTSTRAP_SERVERS"], name, orders)
    committer.commit([0] * PARTITIONS)
    _until(timeline, lambda: timeline.status.get("partitions") == PARTITIONS
           and timeline.current == 1, timeout=POLL_SECONDS + 30, what="the first poll")

    # A backlog on every partition: each asks for a replica; the next poll scales 1 -> 6.
    producer = Producer({"bootstrap.servers": cluster["KAFKA_BOOTSTRAP_SERVERS"],
                         "linger.ms": 20})
    for p in range(PARTITIONS):
        for i in range(BACKLOG):
            producer.produce(orders, value=b"x", partition=p, key=f"k{i}")
    assert producer.flush(30) == 0
    produced = time.monotonic()
    scaled_up = _until(timeline, lambda: timeline.current == PARTITIONS,
                       timeout=POLL_SECONDS + 2 * SLACK, what="the scale-up 1->6",
                       each=committer.drain_a_little)
    assert scaled_up - produced <= POLL_SECONDS + SLACK, "not scaled up at the next poll"

    # Polls every 15 s: once the new pods are ready (their events trigger extra passes),
    # each poll sees the lag the test keeps lowering and rewrites the status.
    _until(timeline, lambda: timeline.ready == PARTITIONS, timeout=120,
           what="six ready pods", each=committer.drain_a_little)
    first = len(timeline.writes)
    _until(timeline, lambda: len(timeline.writes) >= first + 4, timeout=5 * POLL_SECONDS,
           what="four more polls", each=committer.drain_a_little)
    times = [t for t, _ in timeline.writes[first:]]
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(times)]
    assert all(abs(g - POLL_SECONDS) <= SLACK for g in gaps), f"polls {gaps} s apart"
    assert all(s.get("totalLag", 0) >= LAG_PER_REPLICA * PARTITIONS
               for _, s in timeline.writes[first:]), "the backlog ran out too early"

    # The backlog ends half-way between two polls: everything committed at once.
    last_write = timeline.writes[-1][0]
    _until(timeline, lambda: time.monotonic() >= last_write + POLL_SECONDS / 2,
           timeout=POLL_SECONDS, what="half a poll", each=committer.drain_a_little)
    committer.commit([BACKLOG] * PARTITIONS)
    drained = time.monotonic()
    last_need = max(t for t, s in timeline.writes if t < drained and s.get("totalLag"))
    caught_up = _until(timeline, lambda: timeline.status.get("totalLag") == 0,
                       timeout=POLL_SECONDS + SLACK, what="the poll that sees no lag")
    assert abs(caught_up - last_need - POLL_SECONDS) <= SLACK, \
        "the last poll with a backlog and the first without are one poll apart"
    scaling = {c["type"]: c for c in timeline.status["conditions"]}["Scaling"]
    assert f"wants 1, held by {STABILIZATION_SECONDS} s stabilization" in scaling["message"]

    # Held at 6 for the whole window, then straight down to minReplicas.
    scaled_down = _until(timeline, lambda: timeline.current != PARTITIONS,
                         timeout=STABILIZATION_SECONDS + POLL_SECONDS + 2 * SLACK,
                         what="the scale-down")
    assert timeline.current == 1, timeline.replicas
    held = scaled_down - last_need
    print(f"scale-up {scaled_up - produced:.1f}s after the backlog appeared; polls {gaps} s "
          f"apart; scale-down {held:.1f}s after the last poll that needed 6")
    assert held >= STABILIZATION_SECONDS - SLACK, f"scaled down after {held:.1f}s"
    assert held <= STABILIZATION_SECONDS + POLL_SECONDS + SLACK, f"scaled down after {held:.1f}s"
    assert [r for _, r in timeline.replicas] == [1, PARTITIONS, 1]

    events = [e.message or "" for e in client.CoreV1Api(kube_api).list_namespaced_event(ns).items
              if e.reason == "Scaled" and e.involved_object.name == name]
    assert any(m.startswith(f"scaled 1→{PARTITIONS}:") for m in events), events
    assert any(m.startswith(f"scaled {PARTITIONS}→1:") for m in events), events
