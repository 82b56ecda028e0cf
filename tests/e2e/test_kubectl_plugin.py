"""`kubectl kcg describe` through real kubectl plugin discovery, held against Kafka's own
kafka-consumer-groups and against the operator's status and metrics (issue 11.5); the
Scaled Events `kubectl describe kcg` shows carry the figures the decision used (11.6).

The groups here are quiet: their consumers committed some offsets and then stopped, so
Kafka's tool, the plugin and the operator must all see the same numbers. Two groups keep a
live member that no longer commits (it owns every partition, one of them never
committed), one on the classic protocol with cooperative-sticky, one on the KIP-848
consumer protocol (server-side assignor); the third has no members left.

What the comparison translates, and why:

- kafka-consumer-groups prints '-' as CURRENT-OFFSET and LAG on a partition the group
  never committed. The plugin (like the operator) shows committedOffset null and counts
  lag from where a consumer would start (scaling/lag.py): the log start offset with
  auto.offset.reset=earliest, the end offset (lag 0) with latest.
- For a group without members Kafka's tool lists only committed partitions; the plugin
  lists every partition of spec.topics, the never-committed ones with no owner.
- Kafka spells the state "Stable"/"Empty", the admin API (and so the plugin) "STABLE"/
  "EMPTY"; an absent assignor is '-' there and null here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin import OffsetSpec as _OffsetSpec  # type: ignore[attr-defined]
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from .conftest import RunningOperator, eventually

pytestmark = pytest.mark.e2e

OffsetSpec: Any = _OffsetSpec
PARTITIONS = 4
PER_PARTITION = 100
KAFKA_TOOL = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"
#: What the live group committed (partition 3: never) and what the empty group committed.
LIVE_COMMITS = {0: 10, 1: 50, 2: PER_PARTITION}
GONE_COMMITS = {0: 20, 1: 60}
CLIENT_ID = "kcg-plugin-test"
#: Burrow's numbering, as the operator's kcg_consumergroup_partition_status exports it.
STATUS_CODES = {1: "OK", 2: "WARN", 3: "ERR", 4: "STOP", 5: "STALL", 6: "REWIND"}


# --------------------------------------------------------------------------- helpers


def _kcg(name: str, group: str, topic: str, bootstrap: str, **spec: Any) -> str:
    body = {
        "apiVersion": "kcg.dev/v1alpha1", "kind": "KafkaConsumerGroup",
        "metadata": {"name": name},
        "spec": {
            "groupId": group, "topics": [topic], "kafka": {"bootstrapServers": bootstrap},
            "template": {"spec": {"containers": [{"name": "c", "image": "example/app:1"}]}},
            **spec,
        },
    }
    return yaml.safe_dump(body)


def _status(api: client.ApiClient, ns: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "kcg.dev", "v1alpha1", ns, "kafkaconsumergroups", name)  # type: ignore[assignment]
    return dict(obj.get("status") or {})


def _produce(bootstrap: str, topic: str) -> dict[tuple[int, int], float]:
    """PER_PARTITION messages on every partition; each one's timestamp (seconds)."""
    stamps: dict[tuple[int, int], float] = {}

    def delivered(err: Any, msg: Message) -> None:
        assert err is None, err
        partition, offset = msg.partition(), msg.offset()
        assert partition is not None and offset is not None
        stamps[(partition, offset)] = msg.timestamp()[1] / 1000.0

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(PER_PARTITION):
        for partition in range(PARTITIONS):
            producer.produce(topic, f"m{i}".encode(), partition=partition, on_delivery=delivered)
        if i == PER_PARTITION // 2:
            time.sleep(0.3)  # two waves, so positions differ in age
    assert producer.flush(30) == 0
    return stamps


def _consumer(bootstrap: str, group: str, topic: str, protocol: str = "classic") -> Consumer:
    """A member of `group` that owns every partition of `topic`: cooperative-sticky on the
    classic protocol, the broker's assignor on the consumer protocol."""
    settings: dict[str, Any] = {
        "bootstrap.servers": bootstrap, "group.id": group, "client.id": CLIENT_ID,
        "enable.auto.commit": False, "auto.offset.reset": "earliest", "group.protocol": protocol,
    }
    if protocol == "classic":
        settings["partition.assignment.strategy"] = "cooperative-sticky"
    consumer = Consumer(settings)
    consumer.subscribe([topic])
    deadline = time.monotonic() + 30
    while len(consumer.assignment()) < PARTITIONS:
        assert time.monotonic() < deadline, "the consumer got no assignment"
        consumer.poll(0.2)
    return consumer


def _commit(consumer: Consumer, topic: str, commits: dict[int, int]) -> None:
    consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in commits.items()],
                    asynchronous=False)


@dataclass
class LiveMember:
    """A member that committed, then stopped committing but stays in the group: it is
    paused and keeps polling, so it neither fetches nor leaves."""

    consumer: Consumer
    stop: threading.Event
    thread: threading.Thread

    @classmethod
    def start(cls, bootstrap: str, group: str, topic: str,
              protocol: str = "classic") -> LiveMember:
        consumer = _consumer(bootstrap, group, topic, protocol)
        _commit(consumer, topic, LIVE_COMMITS)
        consumer.pause(consumer.assignment())
        stop = threading.Event()

        def keep_polling() -> None:
            while not stop.is_set():
                consumer.poll(0.2)

        thread = threading.Thread(target=keep_polling, daemon=True)
        thread.start()
        return cls(consumer, stop, thread)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.consumer.close()


def _kafka_consumer_groups(bootstrap: str, *args: str) -> str:
    """Kafka's own kafka-consumer-groups, from the stack's Kafka jars."""
    import localstack

    if not (localstack.KAFKA_LIBS / f"kafka-tools-{localstack.KAFKA_VERSION}.jar").exists():
        pytest.fail(f"{localstack.KAFKA_LIBS} lacks kafka-tools: run `make setup`")
    java = shutil.which("java")
    if java is None:
        pytest.fail("java not found (the stack's Kafka needs it too)")
    proc = subprocess.run(
        [java, "-cp", f"{localstack.KAFKA_LIBS}/*", KAFKA_TOOL, "--bootstrap-server",
         bootstrap, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _describe_rows(text: str) -> dict[int, dict[str, str]]:
    """kafka-consumer-groups --describe's table, by partition (no value has a space)."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    header = next(cols for cols in lines if cols[:2] == ["GROUP", "TOPIC"])
    rows = [dict(zip(header, cols, strict=True)) for cols in lines
            if len(cols) == len(header) and cols != header]
    return {int(row["PARTITION"]): row for row in rows}


STATE_ROW = re.compile(r"^(?P<group>\S+)\s+(?P<host>\S+)\s+\((?P<id>\d+)\)\s+"
                       r"(?P<assignor>\S+)\s+(?P<state>\S+)\s+(?P<members>\d+)\s*$")


def _state_row(text: str) -> dict[str, str]:
    """kafka-consumer-groups --describe --state: the group's one row."""
    rows = [m.groupdict() for line in text.splitlines() if (m := STATE_ROW.match(line))]
    assert len(rows) == 1, text
    return rows[0]


def _metrics(operator: RunningOperator, ns: str, name: str) -> dict[str, dict[str, float]]:
    """The operator's per-group series of this object: metric -> partition ('' for the
    group's own series) -> value."""
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(operator.metrics()):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("namespace") == ns and labels.get("name") == name:
                out.setdefault(sample.name, {})[labels.get("partition", "")] = sample.value
    return out


@pytest.fixture
def plugin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """kubectl finds `kubectl-kcg` on PATH, as after `pip install` into a venv."""
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "kubectl-kcg").exists(), "pip install -e '.[test]' installs kubectl-kcg"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")


@dataclass
class QuietGroups:
    topic: str
    live_group: str
    gone_group: str
    next_group: str  # KIP-848
    stamps: dict[tuple[int, int], float]
    log_starts: dict[int, int]


@pytest.fixture
def quiet_groups(operator: RunningOperator, cluster: dict[str, str],
                 topic: Callable[..., str], ns: str,
                 kubectl: Callable[..., Any]) -> Iterator[QuietGroups]:
    bootstrap = cluster["KAFKA_BOOTSTRAP_SERVERS"]
    name = topic(PARTITIONS)
    stamps = _produce(bootstrap, name)
    suffix = uuid.uuid4().hex[:6]
    live_group, gone_group = f"plugin-live-{suffix}", f"plugin-gone-{suffix}"
    next_group = f"plugin-next-{suffix}"
    gone = _consumer(bootstrap, gone_group, name)
    _commit(gone, name, GONE_COMMITS)
    gone.close()
    live = LiveMember.start(bootstrap, live_group, name)
    kip848 = LiveMember.start(bootstrap, next_group, name, protocol="consumer")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    starts = admin.list_offsets({TopicPartition(name, p): OffsetSpec.earliest()
                                 for p in range(PARTITIONS)}, request_timeout=10)
    log_starts = {tp.partition: f.result().offset for tp, f in starts.items()}
    spec_bootstrap = cluster["SPEC_BOOTSTRAP"]
    kubectl("apply", "-n", ns, "-f", "-", stdin=_kcg(
        "live", live_group, name, spec_bootstrap, replicas=0,
        consumerConfig={"auto.offset.reset": "earliest"}))
    kubectl("apply", "-n", ns, "-f", "-", stdin=_kcg(
        "gone", gone_group, name, spec_bootstrap, replicas=0,
        consumerConfig={"auto.offset.reset": "latest"}))
    kubectl("apply", "-n", ns, "-f", "-", stdin=_kcg(
        "next", next_group, name, spec_bootstrap, replicas=0, rebalanceProtocol="consumer",
        consumerConfig={"auto.offset.reset": "earliest"}))
    try:
        yield QuietGroups(name, live_group, gone_group, next_group, stamps, log_starts)
    finally:
        live.close()
        kip848.close()


def _plugin(kubectl: Callable[..., Any], *args: str,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    """`kubectl kcg ...`: kubectl finds the plugin on PATH and runs it."""
    proc: subprocess.CompletedProcess[str] = kubectl("kcg", *args, check=check)
    return proc


# --------------------------------------------------------------------------- 11.5


def test_describe_equals_kafka_consumer_groups_and_the_operator(
    quiet_groups: QuietGroups, plugin_env: None, operator: RunningOperator,
    cluster: dict[str, str], kube_api: client.ApiClient, kubectl: Callable[..., Any],
    ns: str,
) -> None:
    g = quiet_groups
    bootstrap = cluster["KAFKA_BOOTSTRAP_SERVERS"]
    ends = dict.fromkeys(range(PARTITIONS), PER_PARTITION)
    # What each object's lag must be, by the project's convention (scaling/lag.py).
    expected = {
        "live": {p: ends[p] - LIVE_COMMITS.get(p, g.log_starts[p]) for p in ends},  # earliest
        "gone": {p: ends[p] - GONE_COMMITS.get(p, ends[p]) for p in ends},  # latest (set)
    }
    expected["next"] = expected["live"]
    for name in ("live", "gone", "next"):
        want = sum(expected[name].values())

        def published(name: str = name, want: int = want) -> bool:
            status = _status(kube_api, ns, name)
            assert status.get("totalLag") == want, status
            return True

        def judged(name: str = name) -> bool:
            # The operator judges a partition from its second sweep: partition 0 (lag,
            # no progress) is STALL (a member owns it) or STOP (no members) by then.
            verdicts = _metrics(operator, ns, name).get("kcg_consumergroup_partition_status")
            return (verdicts or {}).get("0") in (4, 5)

        eventually(published, timeout=60, what=f"the operator's status of {name}")
        eventually(judged, timeout=60, what=f"the operator's Burrow verdict on {name}")

    for name, group, commits, protocol in (("live", g.live_group, LIVE_COMMITS, "classic"),
                                           ("gone", g.gone_group, GONE_COMMITS, "classic"),
                                           ("next", g.next_group, LIVE_COMMITS, "consumer")):
        before = time.time()
        doc = json.loads(_plugin(kubectl, "describe", name, "-n", ns, "-o", "json").stdout)
        after = time.time()
        kafka = _describe_rows(_kafka_consumer_groups(bootstrap, "--describe", "--group",
                                                      group))
        state = _state_row(_kafka_consumer_groups(bootstrap, "--describe", "--group", group,
                                                  "--state"))
        rows = {p["partition"]: p for p in doc["partitions"]}
        assert doc["groupId"] == group and sorted(rows) == list(range(PARTITIONS))

        # Per partition, the plugin and Kafka's own tool agree.
        for partition, row in kafka.items():
            mine = rows[partition]
            assert row["LOG-END-OFFSET"] == str(mine["endOffset"]) == str(PER_PARTITION)
            if row["CURRENT-OFFSET"] == "-":
                assert mine["committedOffset"] is None and row["LAG"] == "-"
                assert mine["lag"] == expected[name][partition]
            else:
                assert row["CURRENT-OFFSET"] == str(mine["committedOffset"])
                assert row["LAG"] == str(mine["lag"])
            assert row["CONSUMER-ID"] == (mine["memberId"] or "-")
            assert row["HOST"] == (mine["host"] or "-")
            assert row["CLIENT-ID"] == (mine["clientId"] or "-")
        # Kafka's tool lists the owned partitions, or without members the committed ones;
        # those it leaves out are the never-committed ones nobody owns.
        assert set(kafka) == (set(rows) if doc["group"]["members"] else set(commits))
        for partition in set(rows) - set(kafka):
            assert rows[partition]["committedOffset"] is None
            assert rows[partition]["memberId"] is None
        assert {p: r["committedOffset"] for p, r in rows.items()
                if r["committedOffset"] is not None} == commits
        assert {p: r["lag"] for p, r in rows.items()} == expected[name]

        # The group: state, assignor and members as --state prints them.
        assert re.sub("[^A-Z]", "", doc["group"]["state"]) == state["state"].upper()
        assert (doc["group"]["assignor"] or "-") == state["assignor"]
        assert len(doc["group"]["members"]) == int(state["members"])
        assert doc["group"]["protocol"] == protocol

        # Seconds behind: now minus the timestamp of the message at the position.
        for partition, mine in rows.items():
            if mine["lag"] == 0:
                assert mine["secondsBehind"] == 0.0
                continue
            produced = g.stamps[(partition, mine["position"])]
            assert before - produced - 0.1 <= mine["secondsBehind"] <= after - produced + 0.1

        # The operator's status and metrics say the same.
        status = _status(kube_api, ns, name)
        assert status["totalLag"] == doc["totalLag"] == sum(expected[name].values())
        assert status.get("assignor") == doc["group"]["assignor"]
        oldest = min(g.stamps[(p, r["position"])] for p, r in rows.items() if r["lag"])
        # The status is rewritten every check (2 s here) while seconds grow.
        assert time.time() - oldest - 10 <= status["maxTimeLagSeconds"] <= time.time() - oldest
        assert before - oldest - 0.1 <= doc["maxSecondsBehind"] <= after - oldest + 0.1
        metrics = _metrics(operator, ns, name)
        assert metrics["kcg_consumergroup_group_sum_lag"][""] == doc["totalLag"]
        assert metrics["kcg_consumergroup_members"][""] == len(doc["group"]["members"])
        for partition, mine in rows.items():
            assert metrics["kcg_consumergroup_group_lag"][str(partition)] == mine["lag"]
            verdict = STATUS_CODES[int(metrics["kcg_consumergroup_partition_status"]
                                       [str(partition)])]
            assert verdict == mine["status"], (name, partition)
        # Quiet partitions with a backlog do not progress: Burrow's STALL while a member
        # owns them, STOP in a group with no members (its consumers are gone), OK else.
        stuck = "STOP" if not doc["group"]["members"] else "STALL"
        assert {p: r["status"] for p, r in rows.items()} == {
            p: stuck if p in commits and expected[name][p] else "OK" for p in rows}
        assert doc["status"]["samples"] == 3

    # The human table shows the same rows as Kafka's, with the header block above it.
    text = _plugin(kubectl, "describe", "live", "-n", ns, "--samples", "1").stdout
    assert f"Group:       {g.live_group} on " in text
    assert "State:       STABLE   protocol classic   assignor cooperative-sticky" in text
    table = [line.split() for line in text.splitlines() if line.startswith(g.topic)]
    assert [(int(c[1]), c[2], c[3], c[4]) for c in table] == [
        (p, str(LIVE_COMMITS.get(p, "-")), str(PER_PARTITION), str(expected["live"][p]))
        for p in range(PARTITIONS)]


def test_describe_honours_namespace_context_and_kubeconfig(
    quiet_groups: QuietGroups, plugin_env: None, cluster: dict[str, str],
    kubectl: Callable[..., Any], ns: str, tmp_path: Path,
) -> None:
    """Like kubectl: -n, or else the context's namespace; --context; --kubeconfig."""
    config = yaml.safe_load(Path(cluster["KUBECONFIG"]).read_text())
    current = config["current-context"]
    context = next(c for c in config["contexts"] if c["name"] == current)
    config["contexts"].append({"name": "plugin-test", "context": {**context["context"],
                                                                  "namespace": ns}})
    other = tmp_path / "kubeconfig"
    other.write_text(yaml.safe_dump(config))

    missing = _plugin(kubectl, "describe", "gone", "--samples", "1", check=False)
    assert missing.returncode == 1
    assert 'kafkaconsumergroups.kcg.dev "gone" not found in namespace default' in missing.stderr
    for args in (("-n", ns), ("--namespace", ns),
                 ("--kubeconfig", str(other), "--context", "plugin-test")):
        doc = json.loads(_plugin(kubectl, "describe", "gone", *args, "--samples", "1",
                                 "-o", "json").stdout)
        assert (doc["namespace"], doc["groupId"]) == (ns, quiet_groups.gone_group)


def test_watch_redraws_until_interrupted(
    quiet_groups: QuietGroups, plugin_env: None, cluster: dict[str, str],
    kubectl: Callable[..., Any], ns: str, tmp_path: Path,
) -> None:
    import localstack

    binary = str(localstack.K8S_BIN / "kubectl")
    # The kubernetes client writes the kubeconfig's embedded CA, certificate and key to
    # temporary files: an interrupt must not leave them behind.
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    proc = subprocess.Popen(
        [binary, "kcg", "describe", "gone", "-n", ns, "-o", "json", "--watch", "--samples", "1",
         "--interval", "0.5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "KUBECONFIG": cluster["KUBECONFIG"], "TMPDIR": str(scratch)},
        # As from a terminal. A suite started in the background (CI, `make test &`) runs
        # with SIGINT ignored, children inherit that through exec, and Python then leaves
        # Ctrl-C ignored: the plugin would rightly go on (this failed CI twice).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout is not None
        first, second = json.loads(proc.stdout.readline()), json.loads(proc.stdout.readline())
        # kubectl execs the plugin, so Ctrl-C reaches it directly. Both pipes are drained
        # while it ends: a writer blocked on a full pipe would never see its exit.
        proc.send_signal(signal.SIGINT)
        _, errors = proc.communicate(timeout=30)
        assert proc.returncode == 130, errors
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert list(scratch.iterdir()) == [], "the interrupted plugin left temporary files"
    assert (first["status"]["samples"], second["status"]["samples"]) == (1, 2)
    assert second["time"] >= first["time"]
    assert first["totalLag"] == second["totalLag"] == sum(
        PER_PARTITION - o for o in GONE_COMMITS.values())
    # Tables too: each frame is a whole picture (a bounded run for scripts and tests).
    text = _plugin(kubectl, "describe", "gone", "-n", ns, "--watch", "--samples", "1",
                   "--interval", "0.2", "--frames", "2").stdout
    assert text.count("Name:        ") == 2
    assert text.count(f"{quiet_groups.topic}   ") == 2 * PARTITIONS


# --------------------------------------------------------------------------- 11.6


def test_scaled_events_show_the_numbers_the_decision_used(
    operator: RunningOperator, cluster: dict[str, str], topic: Callable[..., str],
    kube_api: client.ApiClient, kubectl: Callable[..., Any], ns: str,
) -> None:
    """No consumer runs (the image does not exist): 6 partitions x 500 messages from the
    log start wait, 1 000 per replica asks for half a replica per partition: 1 -> 3."""
    bootstrap = cluster["KAFKA_BOOTSTRAP_SERVERS"]
    name = topic(6)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    first: dict[int, float] = {}

    def delivered(err: Any, msg: Message) -> None:
        assert err is None, err
        if msg.offset() == 0 and msg.partition() is not None:
            first[int(msg.partition())] = msg.timestamp()[1] / 1000.0  # type: ignore[arg-type]

    for i in range(500):
        for partition in range(6):
            producer.produce(name, f"m{i}".encode(), partition=partition, on_delivery=delivered)
    assert producer.flush(30) == 0
    kubectl("apply", "-n", ns, "-f", "-", stdin=_kcg(
        "scaled", f"scaled-{uuid.uuid4().hex[:6]}", name, cluster["SPEC_BOOTSTRAP"],
        consumerConfig={"auto.offset.reset": "earliest"},
        scaling={"minReplicas": 1, "maxReplicas": 6, "lagPerReplica": 1000,
                 "pollIntervalSeconds": 2}))

    def scaled() -> list[client.CoreV1Event]:
        return [e for e in client.CoreV1Api(kube_api).list_namespaced_event(ns).items
                if e.reason == "Scaled" and e.involved_object.name == "scaled"]

    events = eventually(scaled, timeout=90, what="a Scaled Event")
    event = min(events, key=lambda e: e.first_timestamp)  # the scale from 1
    message = event.message
    found = re.search(r"\[([^\[\]]*)\]$", message)
    assert found, message
    figures = dict(pair.split("=", 1) for pair in found[1].split())
    assert message.startswith("scaled 1→3: lag 3 000 over 1 000/replica on 6 partitions")
    assert figures["lag"] == "3000" and figures["replicas"] == "1->3"
    assert figures["recommended"] == "3" and figures["partitions"] == "6"
    assert figures["lagStatus"] == "OK"
    # The first look has no rates yet; seconds behind is the oldest waiting message's age
    # when the decision was taken (the Event's time has whole seconds).
    assert figures["productionRate"] == "unknown" == figures["perReplicaRate"]
    created = (event.event_time or event.first_timestamp).timestamp()
    age = created - min(first.values())
    assert age - 3 <= float(figures["secondsBehind"]) <= age + 1, (figures, age)
    # `kubectl describe kcg` shows it, the reason and every figure.
    described = kubectl("describe", "kcg", "scaled", "-n", ns).stdout
    events_block = described[described.index("Events:"):]
    assert "Scaled" in events_block
    for key in ("lag=3000", "secondsBehind=", "productionRate=unknown", "replicas=1->3",
                "recommended=3", "partitions=6"):
        assert key in events_block, events_block


def test_describe_connects_with_the_referenced_secrets_settings(
    plugin_env: None, cluster: dict[str, str], topic: Callable[..., str],
    kubectl: Callable[..., Any], ns: str,
) -> None:
    """Credentials come only from the Secret named by spec.kafka.secretRef, passed as the
    operator passes them: its settings are what the plugin connects with."""
    name, group = topic(2), f"plugin-auth-{uuid.uuid4().hex[:6]}"

    def apply(secret: str) -> None:
        kubectl("apply", "-n", ns, "-f", "-", stdin=_kcg(
            "auth", group, name, cluster["SPEC_BOOTSTRAP"],
            replicas=0, kafka={"bootstrapServers": cluster["SPEC_BOOTSTRAP"],
                               "secretRef": {"name": secret}}))

    apply("kafka-auth")
    missing = _plugin(kubectl, "describe", "auth", "-n", ns, check=False)
    assert missing.returncode == 1
    assert ("Secret 'kafka-auth' named by spec.kafka.secretRef does not exist in namespace "
            f"{ns}") in missing.stderr
    for secret, protocol in (("plain", "PLAINTEXT"), ("tls", "SSL")):
        kubectl("create", "secret", "generic", secret, "-n", ns,
                f"--from-literal=security.protocol={protocol}")
    apply("plain")
    doc = json.loads(_plugin(kubectl, "describe", "auth", "-n", ns, "--samples", "1",
                             "-o", "json").stdout)
    assert doc["brokerOk"] and len(doc["partitions"]) == 2
    # The stack's broker speaks plaintext only: TLS from the Secret cannot reach it.
    apply("tls")
    refused = _plugin(kubectl, "describe", "auth", "-n", ns, "--samples", "1",
                      "--request-timeout", "3", check=False)
    assert refused.returncode == 1
    assert "Error:       Kafka did not answer:" in refused.stdout
