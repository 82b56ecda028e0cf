"""The fault matrix on the real node (issue 10.2): one test per fault, each printing what
it counted (`fault-matrix <fault>: ...`, past pytest's capture, so in the CI log too) and asserting
that nothing was lost.

Each test restores what it broke and waits, even when it fails, until the stack is whole
again: the restarted process answers, the node is Ready, the operator's pods are Ready
with one leader. The stack is shared, so a test never leaves a fault behind.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from confluent_kafka import Producer
from kubernetes import client

from tests.integration.outbox_support import (
    assert_complete_and_ordered,
    consume,
    first_occurrences,
    insert_events,
    pending,
)
from tests.integration.test_orders_app import PARTITIONS as OUTPUT_PARTITIONS
from tests.integration.test_orders_app import (  # noqa: F401 - names: a fixture
    Names,
    as_record,
    counts,
    names,
    order,
    produce,
)

from .conftest import REPO, OperatorPod, RunningOperator, eventually
from .test_outbox_pods import orders_app_body
from .test_scaling_loop import consumer_group_body

sys.path.insert(0, str(REPO / "stack"))
import localstack
import node

pytestmark = pytest.mark.e2e

PARTITIONS = 6
# Each loaded partition holds this backlog; a consumer pod drains RATE/s of it, so a loaded
# partition asks for one replica (lag >= LAG_PER_REPLICA) for the whole test: the group
# scales one replica per loaded partition, step by step, as the test loads them.
BACKLOG = 3000
LAG_PER_REPLICA = 500
RATE = 10
# The README's bound for a relay whose host vanished without closing its connection:
# PostgreSQL's keepalive (10 s idle + 3 x 5 s) gives up after about 25 s, then the next
# rebalance tick (1 s) hands the shards over. A few seconds of slack for a busy machine.
RELAY_TAKEOVER_SECONDS = 35
SHARDS = 64

_capture: Any = None


@pytest.fixture(autouse=True)
def _terminal(pytestconfig: pytest.Config) -> None:
    global _capture
    _capture = pytestconfig.pluginmanager.getplugin("capturemanager")


def say(line: str) -> None:
    """Print what a fault test counted past pytest's capture: CI runs pytest without -s,
    and the counts are the record of the run."""
    if _capture is None:
        print(line, flush=True)
        return
    with _capture.global_and_fixture_disabled():
        print(line, flush=True)


# ----------------------------------------------------------------------- observation


class Sampler:
    """Calls `read` every `interval` seconds in a thread and keeps (seconds since start,
    value) pairs; a read that fails (the apiserver away) is recorded as None."""

    def __init__(self, read: Callable[[], Any], interval: float = 0.3) -> None:
        self.read, self.interval = read, interval
        self.samples: list[tuple[float, Any]] = []
        self.start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                value = self.read()
            except Exception:  # an unanswered read is a sample too
                value = None
            self.samples.append((time.monotonic() - self.start, value))
            self._stop.wait(self.interval)

    def values(self) -> list[Any]:
        return [v for _, v in self.samples if v is not None]

    def stop(self) -> list[Any]:
        self._stop.set()
        self._thread.join(10)
        return self.values()


@contextlib.contextmanager
def sampling(read: Callable[[], Any], interval: float = 0.3) -> Iterator[Sampler]:
    sampler = Sampler(read, interval)
    try:
        yield sampler
    finally:
        sampler.stop()


def _kcg(api: client.ApiClient, ns: str, name: str) -> dict[str, Any]:
    return dict(client.CustomObjectsApi(api).get_namespaced_custom_object(
        "kcg.dev", "v1alpha1", ns, "kafkaconsumergroups", name))


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}


def _spec_replicas(api: client.ApiClient, ns: str, name: str) -> int:
    # A bounded read: a sampler thread stuck on one request would stop sampling.
    return int(client.AppsV1Api(api).read_namespaced_deployment(
        name, ns, _request_timeout=5).spec.replicas)


def _scaled(api: client.ApiClient, ns: str, name: str) -> list[tuple[int, int]]:
    """The from→to of every Scaled Event of the group, in the order they were created."""
    events = [e for e in client.CoreV1Api(api).list_namespaced_event(ns).items
              if e.reason == "Scaled" and e.involved_object.name == name]
    events.sort(key=lambda e: int(e.metadata.resource_version))
    out = []
    for e in events:
        match = re.search(r"(\d+)→(\d+)", e.message or "")
        assert match, f"a Scaled Event without a transition: {e.message}"
        out.extend([(int(match.group(1)), int(match.group(2)))] * (e.count or 1))
    return out


def _answers(api: client.ApiClient) -> bool:
    """The apiserver serves the core API and the CRD's (a restarted one answers 503 for a
    while, until every path is installed)."""
    try:
        client.CoreV1Api(api).list_namespace(limit=1, _request_timeout=3)
        client.CustomObjectsApi(api).list_cluster_custom_object(
            "kcg.dev", "v1alpha1", "kafkaconsumergroups", limit=1, _request_timeout=3)
    except Exception:  # refused, reset, timed out: not answering yet
        return False
    return True


def _node_ready_since(api: client.ApiClient, since: datetime) -> bool:
    """The node Ready, with a heartbeat after `since` (its kubelet is the one now running)."""
    status = client.CoreV1Api(api).read_node(node.NODE_NAME).status
    ready = next(c for c in status.conditions if c.type == "Ready")
    return bool(ready.status == "True" and ready.last_heartbeat_time >= since)


def _stack_whole(api: client.ApiClient, operator: RunningOperator) -> None:
    """What every test leaves behind: the apiserver answering, the node Ready, the
    operator's pods Ready with one leader."""
    eventually(lambda: _answers(api), timeout=120, what="the apiserver to answer")
    eventually(lambda: _node_ready_since(api, datetime.min.replace(tzinfo=UTC)),
               timeout=120, what="the node Ready")
    if isinstance(operator, OperatorPod):
        operator.wait_ready(timeout=180)


@pytest.fixture
def chart_operator(operator: RunningOperator) -> OperatorPod:
    if not isinstance(operator, OperatorPod):
        pytest.fail("the fault matrix runs on the chart's pods (the local node runs them)")
    operator.wait_ready()
    return operator


def _load(bootstrap: str, topic: str, partitions: list[int], producer: Producer | None = None,
          flush: bool = True) -> Producer:
    """BACKLOG messages into each of `partitions`."""
    producer = producer or Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for p in partitions:
        for i in range(BACKLOG):
            producer.produce(topic, partition=p, key=f"k{i}", value=f"m-{p}-{i}")
    if flush:
        assert producer.flush(60) == 0
    return producer


def _stepping_group(kubectl: Callable[..., Any], kube_api: client.ApiClient, ns: str,
                    name: str, topic: str, bootstrap: str, image: str) -> None:
    """A group that scales one replica per LAG_PER_REPLICA of lag, slow consumers; returns
    once its Deployment runs at 1."""
    body = consumer_group_body(name, topic, bootstrap, image, maxReplicas=PARTITIONS,
                               lagPerReplica=LAG_PER_REPLICA, pollIntervalSeconds=1,
                               scaleDownStabilizationSeconds=300)
    body["spec"]["template"]["spec"]["containers"][0]["args"] = ["--rate", str(RATE)]
    kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(body))
    eventually(lambda: _spec_replicas(kube_api, ns, name) == 1, timeout=60,
               what="the Deployment at 1")


def _non_decreasing(values: list[int]) -> bool:
    return all(b >= a for a, b in itertools.pairwise(values))


def _changes(values: list[Any]) -> list[Any]:
    """The sequence without consecutive repeats: what was seen, in order."""
    return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]


# ----------------------------------------------------------------------- 1. Kafka restart


def test_kafka_restart_during_a_scale_up_holds_replicas_and_resumes(
    chart_operator: OperatorPod, kubectl: Callable[..., Any], kube_api: client.ApiClient,
    cluster: dict[str, str], examples_image: str, ns: str, topic: Callable[..., str],
) -> None:
    started = time.monotonic()
    t = topic(PARTITIONS)
    name = f"kr-{t[2:]}"
    bootstrap = cluster["KAFKA_BOOTSTRAP_SERVERS"]
    _stepping_group(kubectl, kube_api, ns, name, t, cluster["SPEC_BOOTSTRAP"], examples_image)
    producer = _load(bootstrap, t, [0, 1, 2])
    eventually(lambda: _spec_replicas(kube_api, ns, name) == 3, timeout=40,
               what="the scale-up to 3 (three loaded partitions)")
    reasons: list[tuple[str, str]] = []
    restart_error: list[BaseException] = []

    def restart() -> None:
        try:
            localstack.restart("kafka", pause=8.0)
        except BaseException as exc:  # reported by the test's thread
            restart_error.append(exc)

    def reasons_now() -> tuple[str, str]:
        cond = _conditions(_kcg(kube_api, ns, name))
        return cond["Ready"]["reason"], cond["Scaling"]["reason"]

    restarter = threading.Thread(target=restart)
    try:
        with sampling(lambda: _spec_replicas(kube_api, ns, name)) as replicas, \
                sampling(reasons_now, 0.25) as seen_reasons:
            down = time.monotonic()
            restarter.start()
            eventually(lambda: reasons_now() == ("KafkaUnreachable", "BrokerUnreachable"),
                       timeout=60, what="Ready=KafkaUnreachable and Scaling=BrokerUnreachable")
            unreachable_after = time.monotonic() - down
            # The rest of the backlog arrives while the broker is away (buffered by the
            # producer): the policy wants more once it can see it.
            _load(bootstrap, t, [3, 4, 5], producer, flush=False)
            restarter.join(180)
            back = time.monotonic() - down
            assert not restart_error, f"the broker did not come back: {restart_error}"
            assert producer.flush(60) == 0
            eventually(lambda: _spec_replicas(kube_api, ns, name) == PARTITIONS, timeout=60,
                       what="the scale-up to resume and complete")
            eventually(lambda: (r := reasons_now())[0] != "KafkaUnreachable"
                       and r[1] == "Active", timeout=30, what="the conditions to clear")
            cleared = time.monotonic() - down
        seen = replicas.values()
        reasons = _changes(seen_reasons.values())
        transitions = _scaled(kube_api, ns, name)
        replaced = [line for line in chart_operator.metrics().splitlines()
                    if line.startswith("kcg_kafka_client_restarts_total{")]
        say(f"fault-matrix kafka-restart: Kafka client processes replaced {replaced}; "
            f"replicas seen {_changes(seen)} "
            f"({len(seen)} samples), "
            f"conditions (Ready, Scaling) seen {reasons}, scale decisions {transitions}; "
            f"unreachable reported after {unreachable_after:.1f}s, broker back after "
            f"{back:.1f}s, cleared after {cleared:.1f}s; "
            f"test took {time.monotonic() - started:.0f}s")
        assert seen and min(seen) >= 3, f"replicas fell during the outage: {_changes(seen)}"
        assert _non_decreasing(seen), f"replicas went backwards: {_changes(seen)}"
        assert ("KafkaUnreachable", "BrokerUnreachable") in reasons
        assert transitions and transitions[-1][1] == PARTITIONS
        assert all(b > a for a, b in transitions), f"a Scaled Event went down: {transitions}"
        events = client.CoreV1Api(kube_api).list_namespaced_event(ns).items
        assert any(e.reason == "BrokerUnreachable" and e.involved_object.name == name
                   for e in events)
    finally:
        restarter.join(180)
        eventually(lambda: localstack._kafka_ready(bootstrap), timeout=120,
                   what="the broker to answer")
        _stack_whole(kube_api, chart_operator)


# ----------------------------------------------------------------------- 2. PostgreSQL restart


@dataclass
class OrderStream:
    """Orders produced at a steady pace from a thread, numbered from `first`."""

    bootstrap: str
    topic: str
    first: int
    per_second: int = 100
    produced: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        producer = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True})
        n = self.first
        while not self.stop.is_set():
            for _ in range(self.per_second // 10):
                key, value = as_record(order(n))
                producer.produce(self.topic, key=key, value=value)
                n += 1
                self.produced = n - self.first
            producer.poll(0)
            self.stop.wait(0.1)
        assert producer.flush(60) == 0


def _orders_app(kube_api: client.ApiClient, kubectl: Callable[..., Any], ns: str,
                made: Names, dsn: str, bootstrap: str, image: str) -> str:
    client.CoreV1Api(kube_api).create_namespaced_secret(ns, client.V1Secret(
        metadata=client.V1ObjectMeta(name="orders-db"),
        data={"dsn": base64.b64encode(dsn.encode()).decode()}))
    body = orders_app_body(made, bootstrap, image)
    kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(body))
    name = str(body["metadata"]["name"])
    eventually(lambda: (c := _conditions(_kcg(kube_api, ns, name)).get("OutboxReady"))
               and c["status"] == "True", timeout=180, what="OutboxReady=True")
    return name


def _pods(api: client.ApiClient, ns: str, name: str) -> list[client.V1Pod]:
    pods = client.CoreV1Api(api).list_namespaced_pod(
        ns, label_selector=f"kcg.dev/group={name}").items
    return sorted((p for p in pods if p.metadata.deletion_timestamp is None),
                  key=lambda p: p.metadata.name)


def _restarts(pod: client.V1Pod) -> dict[str, int]:
    statuses = (pod.status.init_container_statuses or []) + (pod.status.container_statuses or [])
    return {s.name: s.restart_count for s in statuses}


def _relay_metric(api: client.ApiClient, ns: str, pod: str, metric: str) -> float:
    text = client.CoreV1Api(api).connect_get_namespaced_pod_proxy_with_path(
        f"{pod}:9310", ns, "metrics", _preload_content=False, _request_timeout=5).data.decode()
    match = re.search(rf"^{re.escape(metric)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _check_orders_published(messages: list[Any], distinct: int) -> tuple[int, int]:
    """test_outbox_pods' check: every order's event, a duplicate only ever a repeat of the
    same event, each key's events first seen in order. Returns (events, duplicates)."""
    by_id: dict[str, Any] = {}
    for m in messages:
        assert m.value is not None
        assert by_id.setdefault(m.event_id, m.value) == m.value, \
            f"event {m.event_id} published with two different values"
    assert len(by_id) == distinct, f"{len(by_id)} distinct events of {distinct}"
    first_seen: dict[str, list[int]] = {}
    seen: set[str] = set()
    for m in sorted(messages, key=lambda m: (m.partition, m.offset)):
        if m.event_id not in seen:
            seen.add(m.event_id)
            first_seen.setdefault(m.key, []).append(int(str(m.value["orderId"])[2:]))
    for key, numbers in first_seen.items():
        assert numbers == sorted(numbers), f"{key} published out of order"
    return len(by_id), len(messages) - len(by_id)


def test_postgres_restart_under_relay_load_loses_no_event_and_keeps_key_order(
    operator: RunningOperator, kubectl: Callable[..., Any], kube_api: client.ApiClient,
    cluster: dict[str, str], stack: dict[str, Any], examples_image: str, ns: str,
    names: Names,  # noqa: F811 - the fixture imported above
) -> None:
    started = time.monotonic()
    bootstrap, dsn = str(stack["KAFKA_BOOTSTRAP_SERVERS"]), str(stack["OUTBOX_DSN"])
    produce(bootstrap, names.topic, [as_record(order(n)) for n in range(200)])
    name = _orders_app(kube_api, kubectl, ns, names, dsn, cluster["SPEC_BOOTSTRAP"],
                       examples_image)
    pods = [p.metadata.name for p in _pods(kube_api, ns, name)]
    stream = OrderStream(bootstrap, names.topic, first=200)
    writer = threading.Thread(target=stream.run)
    writer.start()
    down = 0.0
    try:
        # Under load: the relays are publishing while the database goes away.
        eventually(lambda: counts(dsn, names)[0] >= 300, timeout=60,
                   what="the app writing events from the stream")
        processed_before = counts(dsn, names)[0]
        t0 = time.monotonic()
        localstack.restart("postgres", pause=2.0)
        down = time.monotonic() - t0
        processed_at_return = counts(dsn, names)[0]
        eventually(lambda: counts(dsn, names)[0] >= processed_at_return + 200, timeout=60,
                   what="the app and relays to carry on after the restart")
    finally:
        stream.stop.set()
        writer.join(90)
        eventually(lambda: localstack._postgres_ready(dsn), timeout=120,
                   what="PostgreSQL to answer")
    try:
        distinct = 200 + stream.produced
        eventually(lambda: counts(dsn, names)[0] == distinct and counts(dsn, names)[2] == 0,
                   timeout=90, what="every order processed and the outbox drained")
        messages = consume(bootstrap, names.output_topic, distinct, partitions=OUTPUT_PARTITIONS)
        events, duplicates = _check_orders_published(messages, distinct)
        reconnects = {p: _relay_metric(kube_api, ns, p,
                                       "kcg_outbox_database_reconnects_total") for p in pods}
        restarts = {p.metadata.name: _restarts(p) for p in _pods(kube_api, ns, name)}
        say(f"fault-matrix postgres-restart: {distinct} orders, {events} events, "
            f"{len(messages)} messages, {duplicates} duplicates (repeats of the same event "
            f"id); {processed_before} processed before the restart, database away "
            f"{down:.1f}s; relay reconnects {reconnects}; container restarts {restarts}; "
            f"test took {time.monotonic() - started:.0f}s")
        # The relays noticed the restart and reconnected (the fault really hit them).
        assert all(v >= 1 for v in reconnects.values()), reconnects
    finally:
        _stack_whole(kube_api, operator)


# ----------------------------------------------------------------------- 3. apiserver restart


def _env(api: client.ApiClient, ns: str, name: str) -> dict[str, str]:
    dep = client.AppsV1Api(api).read_namespaced_deployment(name, ns)
    return {e.name: e.value for e in dep.spec.template.spec.containers[0].env or []}


def _set_env(api: client.ApiClient, ns: str, name: str, value: str) -> int:
    """Changes the group's container env (a spec change); returns the new generation."""
    obj = client.CustomObjectsApi(api).patch_namespaced_custom_object(
        "kcg.dev", "v1alpha1", ns, "kafkaconsumergroups", name,
        {"spec": {"template": {"spec": {"containers": [{
            "name": "consumer", "image": "example/unused:1",
            "env": [{"name": "FAULT_MATRIX", "value": value}]}]}}}})
    return int(obj["metadata"]["generation"])


def _reconciled(api: client.ApiClient, ns: str, name: str, generation: int) -> bool:
    status = _kcg(api, ns, name).get("status") or {}
    return bool(status.get("observedGeneration") == generation
                and _conditions({"status": status})["Ready"]["status"] != "Unknown")


def test_apiserver_restart_watches_resume_and_a_change_made_at_once_is_applied(
    chart_operator: OperatorPod, kubectl: Callable[..., Any], kube_api: client.ApiClient,
    cluster: dict[str, str], ns: str, topic: Callable[..., str],
) -> None:
    started = time.monotonic()
    t = topic(3)
    name = f"ar-{t[2:]}"
    # No pod of it needs to run: the test is about what reaches the Deployment.
    body = consumer_group_body(name, t, cluster["SPEC_BOOTSTRAP"], "example/unused:1",
                               minReplicas=1, maxReplicas=1)
    kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(body))
    generation = int(_kcg(kube_api, ns, name)["metadata"]["generation"])
    eventually(lambda: _reconciled(kube_api, ns, name, generation), timeout=30,
               what="the group reconciled")
    leader_before = chart_operator.leader_name()
    try:
        t0 = time.monotonic()
        # A clean stop: the apiserver closes its listener at once, empties the kubernetes
        # Service's endpoints, and closes open watches within 5 s (the stack sets
        # --shutdown-watch-termination-grace-period), so clients must watch again.
        localstack.restart("kube-apiserver")
        eventually(lambda: _answers(kube_api), timeout=90, interval=0.1,
                   what="the apiserver to answer again")
        away = time.monotonic() - t0
        # At once: the operator's watches are still broken or relisting.
        changed = time.monotonic()
        generation = _set_env(kube_api, ns, name, "after-restart")
        eventually(lambda: _env(kube_api, ns, name).get("FAULT_MATRIX") == "after-restart",
                   timeout=90, what="the change made at once to reach the Deployment")
        applied = time.monotonic() - changed
        eventually(lambda: _reconciled(kube_api, ns, name, generation), timeout=30,
                   what="the leader's status write for the new generation")
        # The watch itself is live again (not only one relist): a second change.
        again = time.monotonic()
        generation = _set_env(kube_api, ns, name, "second")
        eventually(lambda: _env(kube_api, ns, name).get("FAULT_MATRIX") == "second",
                   timeout=30, what="a second change to reach the Deployment")
        eventually(lambda: _reconciled(kube_api, ns, name, generation), timeout=30,
                   what="the status of the second change")
        second = time.monotonic() - again
        chart_operator.wait_ready(timeout=120)
        say(f"fault-matrix apiserver-restart: apiserver away {away:.1f}s; change made at "
            f"once applied after {applied:.1f}s, a second one after {second:.1f}s; leader "
            f"{leader_before} -> {chart_operator.leader_name()}; "
            f"test took {time.monotonic() - started:.0f}s")
    finally:
        _stack_whole(kube_api, chart_operator)


# ----------------------------------------------------------------------- 4. kubelet restart


def _containers(pod: client.V1Pod) -> dict[str, tuple[str, int, str]]:
    """Per container: (container id, restarts, started at): what a kept container keeps."""
    return {s.name: (s.container_id, s.restart_count,
                     str(s.state.running.started_at if s.state.running else None))
            for s in pod.status.container_statuses or []}


def test_kubelet_restart_keeps_the_pods_running_and_the_status_right(
    chart_operator: OperatorPod, kubectl: Callable[..., Any], kube_api: client.ApiClient,
    cluster: dict[str, str], examples_image: str, ns: str, topic: Callable[..., str],
) -> None:
    started = time.monotonic()
    t = topic(PARTITIONS)
    name = f"kl-{t[2:]}"
    body = consumer_group_body(name, t, cluster["SPEC_BOOTSTRAP"], examples_image,
                               minReplicas=2, maxReplicas=2)
    kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(body))

    def healthy() -> bool:
        obj = _kcg(kube_api, ns, name)
        cond = _conditions(obj)
        pods = _pods(kube_api, ns, name)
        return bool(cond.get("PodsHealthy", {}).get("reason") == "PodsReady"
                    and cond["PodsHealthy"]["status"] == "True"
                    and obj["status"].get("replicas") == 2 and len(pods) == 2
                    and all(s.ready for p in pods for s in p.status.container_statuses or []))

    eventually(healthy, timeout=120, what="two ready consumer pods and PodsReady")
    before = {p.metadata.uid: _containers(p) for p in _pods(kube_api, ns, name)}
    try:
        with sampling(lambda: all(node.pod_processes(uid) for uid in before)) as alive:
            # Heartbeats have whole seconds: the new kubelet's is later than the next one.
            since = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
            t0 = time.monotonic()
            localstack.restart("kubelet")
            eventually(lambda: _node_ready_since(kube_api, since), timeout=60,
                       what="the node Ready, heartbeat from the new kubelet")
            back = time.monotonic() - t0
            eventually(healthy, timeout=60, what="PodsReady and two ready pods afterwards")
        after = {p.metadata.uid: _containers(p) for p in _pods(kube_api, ns, name)}
        samples = alive.values()
        status = _kcg(kube_api, ns, name)["status"]
        kept = sum(after.get(uid) == containers for uid, containers in before.items())
        say(f"fault-matrix kubelet-restart: kubelet back (node Ready) after {back:.1f}s; "
            f"pod processes checked {len(samples)} times, all alive: {all(samples)}; "
            f"{kept} of {len(before)} pods kept with the same containers, restarts and start "
            f"times; status replicas {status['replicas']}, "
            f"PodsHealthy {_conditions({'status': status})['PodsHealthy']['reason']}; "
            f"test took {time.monotonic() - started:.0f}s")
        assert samples and all(samples), "a pod's processes vanished during the restart"
        assert after == before, f"pods or containers replaced or restarted: {before} -> {after}"
    finally:
        _stack_whole(kube_api, chart_operator)


# ----------------------------------------------------------------------- 5. leader SIGKILL


def test_leader_sigkill_mid_scale_loses_no_decision_and_makes_none_twice(
    chart_operator: OperatorPod, kubectl: Callable[..., Any], kube_api: client.ApiClient,
    cluster: dict[str, str], examples_image: str, ns: str, topic: Callable[..., str],
) -> None:
    started = time.monotonic()
    t = topic(PARTITIONS)
    name = f"lk-{t[2:]}"
    bootstrap = cluster["KAFKA_BOOTSTRAP_SERVERS"]
    _stepping_group(kubectl, kube_api, ns, name, t, cluster["SPEC_BOOTSTRAP"], examples_image)
    try:
        with sampling(lambda: _spec_replicas(kube_api, ns, name)) as replicas:
            producer = _load(bootstrap, t, [0, 1])
            eventually(lambda: _spec_replicas(kube_api, ns, name) == 2, timeout=40,
                       what="the scale-up to 2")
            _load(bootstrap, t, [2], producer)
            eventually(lambda: _spec_replicas(kube_api, ns, name) == 3, timeout=40,
                       what="the scale-up to 3")
            # The next step is due as the leader dies: its poll is at most a second away.
            _load(bootstrap, t, [3], producer)
            leader = chart_operator.pod()
            (pid,) = node.pod_processes(leader.metadata.uid, "run")
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            eventually(lambda: chart_operator.leader_name() not in (None,
                                                                    leader.metadata.name),
                       timeout=30, what="the standby to take the lease")
            takeover = time.monotonic() - killed
            _load(bootstrap, t, [4, 5], producer)
            eventually(lambda: _spec_replicas(kube_api, ns, name) == PARTITIONS, timeout=60,
                       what="the new leader to finish the scale-up")
            eventually(lambda: _kcg(kube_api, ns, name)["status"].get("desiredReplicas")
                       == PARTITIONS and _conditions(_kcg(kube_api, ns, name))["Scaling"]
                       ["reason"] == "Active", timeout=30, what="the status to say so")
        seen = replicas.values()
        transitions = eventually(lambda: (s := _scaled(kube_api, ns, name))
                                 and s[-1][1] == PARTITIONS and s, timeout=15,
                                 what="the last Scaled Event")
        say(f"fault-matrix leader-sigkill: replicas seen {_changes(seen)}; Scaled Events "
            f"{' '.join(f'{a}→{b}' for a, b in transitions)}; leader "
            f"{leader.metadata.name} killed, standby {chart_operator.leader_name()} led "
            f"after {takeover:.1f}s; test took {time.monotonic() - started:.0f}s")
        assert _non_decreasing(seen), f"replicas went backwards: {_changes(seen)}"
        assert _spec_replicas(kube_api, ns, name) == PARTITIONS
        assert all(b > a for a, b in transitions), f"a Scaled Event went down: {transitions}"
        # Made twice: the same transition decided by both leaders, one after the other.
        assert all(x != y for x, y in itertools.pairwise(transitions)), \
            f"a decision made twice: {transitions}"
        # Each decision starts from what the previous one left.
        assert all(x[1] == y[0] for x, y in itertools.pairwise(transitions)), \
            f"a Scaled Event missing between decisions: {transitions}"
    finally:
        _stack_whole(kube_api, chart_operator)


# ----------------------------------------------------------------------- 6. relay cut off


@dataclass
class OutboxWriter:
    """Writes numbered events for KEYS keys into the outbox table from the test's own
    connection (on the host, never cut off): one event per key per statement."""

    dsn: str
    table: str
    topic: str
    keys: int = 32
    per_key: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                self.write_one(conn)
                self.stop.wait(0.05)

    def write_one(self, conn: Any) -> None:
        import json

        n = self.per_key
        insert_events(conn, self.table, [
            (self.topic, f"key-{k}", "Numbered", json.dumps({"k": f"key-{k}", "n": n}))
            for k in range(self.keys)])
        self.per_key = n + 1


def _relay_sessions(dsn: str, pod_ip: str) -> str:
    """What the database and the host's TCP stack say of the relays' sessions: why a
    takeover waits (a session the server still holds, its socket's retransmissions)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            b"SELECT client_addr::text, state, wait_event, backend_start::text "
            b"FROM pg_stat_activity WHERE application_name LIKE 'kcg-relay%'").fetchall()
    sockets = subprocess.run(["ss", "-tnio", "dst", pod_ip], capture_output=True,
                             text=True).stdout
    return f"relay sessions {rows}; host sockets to {pod_ip}: {sockets!r}"


def _routes(uid: str) -> set[str]:
    out = node.pod_net_run(uid, "ip", "-4", "route", "show")
    assert out.returncode == 0, out.stderr
    return {line.strip() for line in out.stdout.splitlines() if line.strip()}


def _heal(uid: str, routes: set[str]) -> None:
    """The interface up again, with the routes that went with it when it went down."""
    node.pod_net_run(uid, "ip", "link", "set", "eth0", "up")
    for route in sorted(routes - _routes(uid), key=lambda r: "via" in r):
        node.pod_net_run(uid, "ip", "route", "replace", *route.split())


def test_relay_pod_cut_off_the_network_hands_its_shards_over_and_loses_nothing(
    operator: RunningOperator, kubectl: Callable[..., Any], kube_api: client.ApiClient,
    cluster: dict[str, str], stack: dict[str, Any], examples_image: str, ns: str,
    names: Names,  # noqa: F811 - the fixture imported above
) -> None:
    started = time.monotonic()
    bootstrap, dsn = str(stack["KAFKA_BOOTSTRAP_SERVERS"]), str(stack["OUTBOX_DSN"])
    name = _orders_app(kube_api, kubectl, ns, names, dsn, cluster["SPEC_BOOTSTRAP"],
                       examples_image)
    cut, survivor = _pods(kube_api, ns, name)
    cut_name, survivor_name = str(cut.metadata.name), str(survivor.metadata.name)
    uid = str(cut.metadata.uid)

    def shards(pod: str) -> int:
        """-1 while the relay does not answer (the cut-off one)."""
        try:
            return int(_relay_metric(kube_api, ns, pod, "kcg_outbox_owned_shards"))
        except Exception:  # timed out, refused: not answering
            return -1

    eventually(lambda: shards(cut_name) > 0 and shards(survivor_name) > 0
               and shards(cut_name) + shards(survivor_name) == SHARDS, timeout=60,
               what="the two relays to share the shards")
    before = (shards(cut_name), shards(survivor_name))
    writer = OutboxWriter(dsn, names.outbox, names.output_topic)
    thread = threading.Thread(target=writer.run)
    thread.start()
    routes = _routes(uid)
    healed = False
    try:
        eventually(lambda: writer.per_key >= 20, timeout=30, what="events flowing")
        down = node.pod_net_run(uid, "ip", "link", "set", "eth0", "down")
        assert down.returncode == 0, down.stderr
        t0 = time.monotonic()
        try:
            eventually(lambda: shards(survivor_name) == SHARDS,
                       timeout=RELAY_TAKEOVER_SECONDS + 30, interval=0.5,
                       what="the other relay to take every shard")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {_relay_sessions(dsn, cut.status.pod_ip)}") from None
        takeover = time.monotonic() - t0
        # Everything written so far, the cut-off relay's keys included, is published by the
        # survivor alone.
        written = writer.per_key
        eventually(lambda: writer.per_key >= written + 20 and pending(dsn, names.outbox) < 64,
                   timeout=30, what="the survivor publishing every key")
        _heal(uid, routes)
        healed = True
        t1 = time.monotonic()
        eventually(lambda: shards(cut_name) > 0
                   and shards(cut_name) + shards(survivor_name) == SHARDS,
                   timeout=60, interval=0.5, what="the healed relay to take its share again")
        rejoined = time.monotonic() - t1
        written = writer.per_key
        eventually(lambda: writer.per_key >= written + 20, timeout=30,
                   what="events written after the relay rejoined")
    finally:
        writer.stop.set()
        thread.join(30)
        if not healed:
            with contextlib.suppress(Exception):
                _heal(uid, routes)
    try:
        eventually(lambda: pending(dsn, names.outbox) == 0, timeout=60,
                   what="the outbox drained")
        total = writer.per_key * writer.keys
        messages = consume(bootstrap, names.output_topic, total, partitions=OUTPUT_PARTITIONS)
        by_id: dict[str, Any] = {}
        for m in messages:
            assert by_id.setdefault(m.event_id, m.value) == m.value, \
                f"event {m.event_id} published with two different values"
        report = first_occurrences(messages)
        restarts = {p.metadata.name: _restarts(p) for p in _pods(kube_api, ns, name)}
        say(f"fault-matrix relay-cut-off: shards {before} (cut, survivor) before; survivor "
            f"held all {SHARDS} {takeover:.1f}s after the cut (bound "
            f"{RELAY_TAKEOVER_SECONDS}s); cut-off relay shared again {rejoined:.1f}s after "
            f"the heal; {total} events written, {report.distinct} published, "
            f"{len(messages)} messages, {report.duplicates} duplicates (repeats of the same "
            f"event id); container restarts {restarts}; "
            f"test took {time.monotonic() - started:.0f}s")
        assert_complete_and_ordered(report, {f"key-{k}": writer.per_key
                                             for k in range(writer.keys)})
        assert takeover <= RELAY_TAKEOVER_SECONDS, \
            f"the takeover took {takeover:.1f}s, over the README's {RELAY_TAKEOVER_SECONDS}s"
        assert routes == _routes(uid), "the pod's routes were not restored"
    finally:
        _stack_whole(kube_api, operator)
