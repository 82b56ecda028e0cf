"""make bench-failover: how long groups go unserved when the operator's leader goes away.

On the local node (make up): the chart as users install it (2 replicas, leader election on
a Lease), consumer groups of the example app that scale up and down under a producer whose
rate swings, and then, while they scale:

- ``KILLS`` crashes: SIGKILL of the leader's process (no API call: the Lease is left to
  expire), then the crashed pod is force-deleted so the ReplicaSet starts a fresh standby
  (a container killed again and again would wait out the kubelet's crash back-off);
- ``HANDOVERS`` graceful stops: the leader's pod is deleted (SIGTERM; it releases the
  Lease on the way out), as a node drain or a rolling upgrade does.

Per round: seconds from the kill to the new leader's first Kubernetes write (a reconcile,
a scale or a status; its kcg_api_writes_total, scraped every 50 ms through the apiserver's
pod proxy, so the figure includes up to one scrape of delay).

standby_writes counts Kubernetes API writes made by an operator pod while it did not lead:
from the apiserver's audit log, where every request names the pod whose token made it
(Lease writes excluded: taking a free lease is how a standby becomes the leader). A pod
leads from its first Lease write after the previous holder to its kill (a crash) or its
last Lease write (the release, on a graceful stop). On a stack without an audit log the
standbys' own counters are used instead (the header says which).

Anchors, not run here: controller-runtime's defaults (15 s lease) take 15-17 s; kopf's
peering, 60 s by default. Last line: one JSON object.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "stack"))

from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402
from kubernetes import client, config  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402

import localstack  # noqa: E402
import node  # noqa: E402

KILLS = int(os.environ.get("KILLS", "10"))
HANDOVERS = int(os.environ.get("HANDOVERS", "10"))
GROUPS = 2
PARTITIONS = 4
CONSUMER_RATE = 150  # messages/s one consumer pod handles
SWING = (20.0, 500.0, 40.0)  # producer rate per topic: low, high, period (s)
ROUND_TIMEOUT = 60.0
GOALS = {"failover_max_s": 10.0, "graceful_max_s": 2.0, "standby_writes": 0}


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@dataclass
class Round:
    kind: str  # "crash" or "graceful"
    old: str
    new: str
    killed_at: float
    first_write_s: float


class Bench:
    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.api = config.new_client_from_config(config_file=str(state["KUBECONFIG"]))
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.leases = client.CoordinationV1Api(self.api)
        run = uuid.uuid4().hex[:6]
        self.ns, self.release = f"kcg-bench-failover-{run}", f"bf-{run}"
        self.lease = f"{self.release}-kcg-operator"
        self.env = {**os.environ, "KUBECONFIG": str(state["KUBECONFIG"])}
        self.bootstrap = str(state["KAFKA_BOOTSTRAP_SERVERS"])
        self.stop = threading.Event()
        self.pod_uids: dict[str, str] = {}
        self.counted_standby_writes = 0

    # -- setup ---------------------------------------------------------------------------

    def install(self) -> None:
        images = dict(self.state["KCG_IMAGES"])
        repository, tag = str(images["operator"]).rsplit(":", 1)
        kubectl = str(localstack.K8S_BIN / "kubectl")
        subprocess.run([kubectl, "apply", "--server-side", "--force-conflicts", "-f",
                        str(REPO / "crds")], check=True, capture_output=True, env=self.env)
        subprocess.run(
            [str(localstack.HELM_BIN / "helm"), "install", self.release,
             str(REPO / "charts" / "kcg-operator"), "--namespace", self.ns,
             "--create-namespace", "--set", f"image.repository={repository}",
             "--set", f"image.tag={tag}", "--set", "image.pullPolicy=Never",
             "--set", "logFormat=plain"],
            check=True, capture_output=True, env=self.env, timeout=120)
        examples = str(images["examples"])
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        self.topics = [f"failover-{self.release}-{i}" for i in range(GROUPS)]
        for future in admin.create_topics(
                [NewTopic(t, PARTITIONS, 1) for t in self.topics]).values():
            future.result()
        custom = client.CustomObjectsApi(self.api)
        for topic in self.topics:
            custom.create_namespaced_custom_object("kcg.dev", "v1alpha1", self.ns,
                                                   "kafkaconsumergroups", {
                "apiVersion": "kcg.dev/v1alpha1", "kind": "KafkaConsumerGroup",
                "metadata": {"name": topic},
                "spec": {
                    "topics": [topic], "kafka": {"bootstrapServers": self.bootstrap},
                    "consumerConfig": {"auto.offset.reset": "earliest"},
                    "scaling": {"minReplicas": 1, "maxReplicas": PARTITIONS,
                                "lagPerReplica": 1000, "pollIntervalSeconds": 2,
                                "scaleDownStabilizationSeconds": 10},
                    "template": {"spec": {"terminationGracePeriodSeconds": 5, "containers": [{
                        "name": "consumer", "image": examples, "imagePullPolicy": "Never",
                        "command": ["python", "/app/consumer.py"],
                        "args": ["--rate", str(CONSUMER_RATE)]}]}}}})

    def produce(self) -> None:
        """A rate that swings between SWING's low and high, so groups keep scaling."""
        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 20})
        low, high, period = SWING
        started, sent = time.monotonic(), 0.0
        while not self.stop.is_set():
            elapsed = time.monotonic() - started
            rate = low + (high - low) * (0.5 - 0.5 * math.cos(2 * math.pi * elapsed / period))
            sent += rate * 0.1
            for topic in self.topics:
                for i in range(int(sent)):
                    producer.produce(topic, key=str(i % 97), value=b"x" * 100)
            sent -= int(sent)
            producer.poll(0)
            self.stop.wait(0.1)
        producer.flush(10)

    # -- the operator's pods ---------------------------------------------------------------

    def pods(self) -> list[client.V1Pod]:
        items = self.core.list_namespaced_pod(
            self.ns, label_selector=f"app.kubernetes.io/instance={self.release}").items
        for pod in items:
            self.pod_uids[pod.metadata.name] = pod.metadata.uid
        return [p for p in items if p.metadata.deletion_timestamp is None]

    def holder(self) -> str | None:
        try:
            lease = self.leases.read_namespaced_lease(self.lease, self.ns)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        identity = lease.spec.holder_identity
        return identity.rsplit("_", 1)[0] if identity else None

    def metrics(self, pod: str) -> str | None:
        try:
            out = self.core.connect_get_namespaced_pod_proxy_with_path(
                f"{pod}:9090", self.ns, "metrics", _preload_content=False,
                _request_timeout=2)
            return str(out.data.decode())
        except Exception:  # not serving (starting, or gone)
            return None

    def settled(self, timeout: float = 180.0) -> tuple[str, str]:
        """Two Ready pods, one leading (and saying so), the other a standby: (leader,
        standby)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pods = self.pods()
            ready = [p.metadata.name for p in pods if p.status.container_statuses
                     and all(c.ready for c in p.status.container_statuses)]
            leader = self.holder()
            if len(pods) == 2 and len(ready) == 2 and leader in ready:
                standby = next(n for n in ready if n != leader)
                text = self.metrics(standby)
                lead_text = self.metrics(leader)
                if (text is not None and lead_text is not None
                        and _metric(lead_text, "kcg_operator_leader") == 1
                        and _metric(text, "kcg_groups") >= GROUPS):
                    return leader, standby
            time.sleep(0.5)
        raise RuntimeError("the operator's two pods did not settle with one leader")

    def first_write(self, standby: str, since: float) -> float:
        """Seconds from ``since`` until the standby (now leader) has written."""
        deadline = since + ROUND_TIMEOUT
        while time.monotonic() < deadline:
            text = self.metrics(standby)
            if text is not None and _metric(text, "kcg_api_writes_total") > 0:
                return time.monotonic() - since
            time.sleep(0.05)
        raise RuntimeError(f"{standby} did not write within {ROUND_TIMEOUT}s of the kill")

    def round(self, kind: str) -> Round:
        leader, standby = self.settled()
        pod = next(p for p in self.pods() if p.metadata.name == leader)
        # What the standby wrote (or tried to) before it led: its own counters.
        text = self.metrics(standby) or ""
        self.counted_standby_writes += int(_metric(text, "kcg_api_writes_total")
                                           + _metric(text, "kcg_operator_writes_refused_total"))
        if kind == "crash":
            (pid,) = node.pod_processes(pod.metadata.uid, "run")
            started, wall = time.monotonic(), time.time()
            os.kill(pid, signal.SIGKILL)
        else:
            started, wall = time.monotonic(), time.time()
            self.core.delete_namespaced_pod(leader, self.ns)
        took = self.first_write(standby, started)
        if kind == "crash":  # a fresh pod instead of a restart under crash back-off
            self.core.delete_namespaced_pod(leader, self.ns, grace_period_seconds=0)
        return Round(kind, leader, standby, wall, took)

    # -- the audit log -----------------------------------------------------------------------

    def standby_writes(self, rounds: list[Round], ended: float) -> tuple[int, list[str]]:
        path = Path(str(self.state.get("KCG_AUDIT_LOG") or ""))
        if not path.is_file():
            return -1, []
        account = f"system:serviceaccount:{self.ns}:{self.release}-kcg-operator"
        writes: list[tuple[float, str, str, str]] = []  # (time, pod, resource, verb)
        lease_writes: list[tuple[float, str]] = []
        for line in path.read_text(errors="replace").splitlines():
            if account not in line:
                continue
            event = json.loads(line)
            user = event.get("user") or {}
            if user.get("username") != account:
                continue
            pod = ((user.get("extra") or {}).get("authentication.kubernetes.io/pod-name")
                   or ["?"])[0]
            at = datetime.fromisoformat(
                event["stageTimestamp"].replace("Z", "+00:00")).timestamp()
            code = (event.get("responseStatus") or {}).get("code", 0)
            resource = (event.get("objectRef") or {}).get("resource", "")
            if resource == "leases":
                if code in (200, 201):
                    lease_writes.append((at, pod))
            else:
                writes.append((at, pod, resource, event["verb"]))
        # Leading intervals: from a pod's first Lease write after another pod's, to its kill
        # (crash), its last Lease write (graceful release), or the end.
        lease_writes.sort()
        intervals: list[tuple[str, float, float]] = []
        for i, (at, pod) in enumerate(lease_writes):
            if intervals and intervals[-1][0] == pod:
                continue
            end = next((t for t, p in lease_writes[i:] if p != pod), ended)
            intervals.append((pod, at, end))
        ends = {r.old: (r.killed_at if r.kind == "crash" else None) for r in rounds}
        bounded = []
        for pod, start, end in intervals:
            if pod in ends:
                own = [t for t, p in lease_writes if p == pod and start <= t <= end]
                end = ends[pod] or (own[-1] if own else end)
            bounded.append((pod, start, end))
        outside = [f"{pod} {verb} {res} at {t:.3f}" for t, pod, res, verb in writes
                   if not any(p == pod and s <= t <= e for p, s, e in bounded)]
        return len(outside), outside

    # -- the run -----------------------------------------------------------------------------

    def cleanup(self) -> None:
        self.stop.set()
        subprocess.run([str(localstack.HELM_BIN / "helm"), "uninstall", self.release,
                        "--namespace", self.ns], capture_output=True, env=self.env)
        self.core.delete_namespace(self.ns)
        AdminClient({"bootstrap.servers": self.bootstrap}).delete_topics(self.topics)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    state = localstack.read_state()
    if state is None or not state.get("KCG_NODE"):
        print("bench-failover: needs the local stack with its node: make up", file=sys.stderr)
        return 2
    bench = Bench(state)
    started = time.time()
    audit = Path(str(state.get("KCG_AUDIT_LOG") or "")).is_file()
    print(f"bench-failover: {KILLS} crashes (SIGKILL) and {HANDOVERS} graceful stops of the "
          f"leader; {GROUPS} groups scaling under a swinging producer; non-leader writes from "
          f"{'the apiserver audit log' if audit else 'the standbys own counters (no audit log)'}")
    try:
        bench.install()
        producer = threading.Thread(target=bench.produce, daemon=True)
        producer.start()
        bench.settled()
        rounds: list[Round] = []
        for kind in ["crash"] * KILLS + ["graceful"] * HANDOVERS:
            r = bench.round(kind)
            rounds.append(r)
            print(f"  {kind:8} {r.old} -> {r.new}: first write by the new leader "
                  f"{r.first_write_s:.2f} s after the kill", flush=True)
        bench.settled()
        scales = sum(1 for e in bench.core.list_namespaced_event(bench.ns).items
                     if e.reason == "Scaled")
        time.sleep(2)  # the audit log is written as requests complete; let the last land
        standby_writes, outside = bench.standby_writes(rounds, time.time())
        if not audit:
            standby_writes = bench.counted_standby_writes
    finally:
        bench.cleanup()
    crash = [r.first_write_s for r in rounds if r.kind == "crash"]
    graceful = [r.first_write_s for r in rounds if r.kind == "graceful"]
    result = {
        "failover_p50_s": round(statistics.median(crash), 2),
        "failover_max_s": round(max(crash), 2),
        "graceful_p50_s": round(statistics.median(graceful), 2),
        "graceful_max_s": round(max(graceful), 2),
        "standby_writes": standby_writes,
        "standby_writes_source": "audit" if audit else "metrics",
        "crashes": len(crash), "handovers": len(graceful),
        "scale_events": scales,
        "seconds": round(time.time() - started, 1),
        "anchors": {"controller_runtime_default_s": "15-17", "kopf_peering_default_s": 60},
        "goals": GOALS,
        "goals_met": (max(crash) <= GOALS["failover_max_s"]
                      and max(graceful) <= GOALS["graceful_max_s"] and standby_writes == 0),
    }
    print()
    print(f"{'':24}{'p50 s':>8}{'max s':>8}   goal")
    print(f"{'crash (SIGKILL)':24}{result['failover_p50_s']:>8}{result['failover_max_s']:>8}"
          f"   max <= {GOALS['failover_max_s']}")
    print(f"{'graceful (SIGTERM)':24}{result['graceful_p50_s']:>8}{result['graceful_max_s']:>8}"
          f"   max <= {GOALS['graceful_max_s']}")
    print(f"standby writes: {standby_writes} ({result['standby_writes_source']})")
    for line in outside[:10]:
        print(f"  non-leader write: {line}")
    print("anchors: controller-runtime defaults 15-17 s; kopf peering 60 s by default")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
