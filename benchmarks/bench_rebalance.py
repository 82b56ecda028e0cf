"""make bench-rebalance: what a rebalance costs, eager against cooperative-sticky and KIP-848.

The seed's claim: "Cooperative Sticky minimizes downtime during rolling restarts: consumers
do not stop processing while rebalance is in progress." Measured here on real pods of the
local node: one consumer Deployment (examples/consumer/consumer.py, --stats) is scaled
3 -> 6 -> 3 and then rolled (`kubectl rollout restart`), under steady traffic, with

- eager assignment: `partition.assignment.strategy=range` (classic protocol), set outside
  the operator, which refuses it: the ConfigMap is the operator's rendering with that one
  key changed;
- cooperative-sticky: the operator's rendering as it is;
- KIP-848: the operator's rendering with `rebalanceProtocol: consumer` (the broker assigns).

The objects are rendered by the operator's own code (workload/render.py) and applied
directly, and the bench itself scales them, so the three runs differ in the assignment
only (no lag policy in the way). Per step it prints partitions revoked, consumer-seconds
without processing (summed over consumers: gaps of more than 0.1 s between two deliveries,
which steady traffic makes milliseconds apart), messages delivered twice and seconds until
the group is stable with every partition owned. Last line: one JSON object.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "stack"))

from confluent_kafka import ConsumerGroupState, Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402
from kubernetes import client, config  # noqa: E402

import localstack  # noqa: E402
from kcg_operator.api.models import parse_kafka_consumer_group  # noqa: E402
from kcg_operator.workload.render import render_workload  # noqa: E402

PARTITIONS = 12
RATE = 1200  # messages/s, steady, over all partitions
SETTLE = 5.0  # seconds of steady state after each step
STEP_TIMEOUT = 180.0
NAMESPACE = "kcg-bench-rebalance"
EXAMPLES_IMAGE = "ghcr.io/kcg-dev/kcg-example-apps:0.1.0"
MODES = ("eager-range", "cooperative-sticky", "kip848-consumer")


@dataclass
class PodLog:
    """One pod's stats lines, followed with `kubectl logs -f` until the pod exits."""

    name: str
    stats: list[dict[str, Any]] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None


class Pods:
    """Follows the logs of every pod of the Deployment as soon as it runs."""

    def __init__(self, kubectl: list[str], env: dict[str, str], core: client.CoreV1Api,
                 selector: str) -> None:
        self.kubectl, self.env, self.core, self.selector = kubectl, env, core, selector
        self.logs: dict[str, PodLog] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self.stop.is_set():
            for pod in self.core.list_namespaced_pod(NAMESPACE, label_selector=self.selector).items:
                statuses = pod.status.container_statuses or []
                if pod.metadata.name not in self.logs and any(
                        s.state.running or s.state.terminated for s in statuses):
                    self._follow(pod.metadata.name)
            time.sleep(0.3)

    def _follow(self, name: str) -> None:
        log = PodLog(name)
        log.proc = subprocess.Popen([*self.kubectl, "logs", "-f", "-n", NAMESPACE, name],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    text=True, env=self.env)
        self.logs[name] = log

        def read() -> None:
            assert log.proc is not None and log.proc.stdout is not None
            for line in log.proc.stdout:
                if " stats " in line:
                    log.stats.append(json.loads(line.split(" stats ", 1)[1]))

        threading.Thread(target=read, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        for log in self.logs.values():
            if log.proc is not None:
                try:
                    log.proc.wait(30)
                except subprocess.TimeoutExpired:
                    log.proc.kill()


def workload(mode: str, topic: str, group: str, bootstrap: str) -> tuple[dict[str, Any], ...]:
    spec: dict[str, Any] = {
        "topics": [topic], "kafka": {"bootstrapServers": bootstrap}, "replicas": 3,
        "consumerConfig": {"auto.offset.reset": "earliest"},
        "template": {"spec": {"terminationGracePeriodSeconds": 30, "containers": [{
            "name": "consumer", "image": EXAMPLES_IMAGE,
            "command": ["python", "/app/consumer.py"], "args": ["--stats"]}]}},
    }
    if mode == "kip848-consumer":
        spec["rebalanceProtocol"] = "consumer"
    kcg = parse_kafka_consumer_group({
        "metadata": {"name": group, "namespace": NAMESPACE, "uid": str(uuid.uuid4())},
        "spec": spec})
    rendered = render_workload(kcg, replicas=3)
    config_map, deployment = rendered.config_map, rendered.deployment
    for obj in (config_map, deployment):
        obj["metadata"].pop("ownerReferences", None)  # no CR: nothing may collect them
    if mode == "eager-range":
        ((key, text),) = [(k, v) for k, v in config_map["data"].items()
                          if k.endswith("consumer.properties")]
        config_map["data"][key] = text.replace(
            "partition.assignment.strategy=cooperative-sticky",
            "partition.assignment.strategy=range")
        assert "strategy=range" in config_map["data"][key]
    return config_map, deployment


def stable(admin: AdminClient, group: str, members: Callable[[], set[str]]) -> bool:
    desc = admin.describe_consumer_groups([group], request_timeout=5)[group].result()
    if desc.state != ConsumerGroupState.STABLE:
        return False
    owned = sum(len(m.assignment.topic_partitions) for m in desc.members if m.assignment)
    return {m.client_id for m in desc.members} == members() and owned == PARTITIONS


def run_mode(mode: str, state: dict[str, Any], api: client.ApiClient,
             kubectl: list[str], env: dict[str, str]) -> dict[str, Any]:
    bootstrap = str(state["KAFKA_BOOTSTRAP_SERVERS"])
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = f"rebalance-{mode}-{uuid.uuid4().hex[:6]}"
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result()
    group = f"bench-{mode}-{uuid.uuid4().hex[:6]}"
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    config_map, deployment = workload(mode, topic, group, bootstrap)
    core.create_namespaced_config_map(NAMESPACE, config_map)
    apps.create_namespaced_deployment(NAMESPACE, deployment)
    name = deployment["metadata"]["name"]
    selector = ",".join(f"{k}={v}" for k, v in
                        deployment["spec"]["selector"]["matchLabels"].items())
    pods = Pods(kubectl, env, core, selector)
    pods.thread.start()

    produced = 0
    stop_producing = threading.Event()

    def produce() -> None:
        nonlocal produced
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        started = time.monotonic()
        while not stop_producing.is_set():
            due = int((time.monotonic() - started) * RATE)
            while produced < due:
                producer.produce(topic, key=f"k{produced % 512}", value=b"x" * 100)
                produced += 1
            producer.poll(0)
            time.sleep(0.01)
        assert producer.flush(30) == 0

    def running_pods() -> set[str]:
        items = core.list_namespaced_pod(NAMESPACE, label_selector=selector).items
        return {p.metadata.name for p in items if p.metadata.deletion_timestamp is None
                and p.status.phase == "Running"
                and all(s.ready for s in p.status.container_statuses or [])}

    def wait_stable(replicas: int) -> float:
        started = time.monotonic()
        while time.monotonic() - started < STEP_TIMEOUT:
            dep = apps.read_namespaced_deployment(name, NAMESPACE)
            done = (dep.status.updated_replicas == replicas
                    and (dep.status.replicas or 0) == replicas
                    and dep.status.observed_generation == dep.metadata.generation)
            if done and len(running_pods()) == replicas and stable(admin, group, running_pods):
                return time.monotonic() - started
            time.sleep(0.2)
        raise SystemExit(f"bench-rebalance: {mode}: the group did not settle at {replicas} "
                         f"replicas within {STEP_TIMEOUT:.0f}s")

    producer = threading.Thread(target=produce, daemon=True)
    steps: list[dict[str, Any]] = []
    try:
        wait_stable(3)
        producer.start()
        time.sleep(SETTLE)
        for step, replicas in (("scale 3->6", 6), ("scale 6->3", 3), ("rolling restart", 3)):
            begin = time.time()
            if step == "rolling restart":
                apps.patch_namespaced_deployment(name, NAMESPACE, {"spec": {"template": {
                    "metadata": {"annotations": {"kcg.dev/restartedAt": str(begin)}}}}})
            else:
                apps.patch_namespaced_deployment_scale(name, NAMESPACE,
                                                       {"spec": {"replicas": replicas}})
            to_stable = wait_stable(replicas)
            time.sleep(SETTLE)
            steps.append({"step": step, "begin": begin, "end": time.time(),
                          "stable_s": round(to_stable, 1)})
        stop_producing.set()
        producer.join()
        # Drain: every message delivered at least once, then stop the pods.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _delivered(pods) < produced:
            time.sleep(0.5)
    finally:
        stop_producing.set()
        apps.delete_namespaced_deployment(name, NAMESPACE)
        core.delete_namespaced_config_map(config_map["metadata"]["name"], NAMESPACE)
        _wait_gone(core, selector)
        pods.close()
        admin.delete_topics([topic])
    for s in steps:
        s.update(_step_costs(pods, s["begin"], s["end"]))
    delivered = sum(_final(log)["delivered"] for log in pods.logs.values() if log.stats)
    return {"mode": mode, "produced": produced, "delivered": delivered,
            "duplicates": delivered - produced, "steps": steps}


def _final(log: PodLog) -> dict[str, Any]:
    return log.stats[-1]


def _delivered(pods: Pods) -> int:
    return sum(log.stats[-1]["delivered"] for log in list(pods.logs.values()) if log.stats)


def _wait_gone(core: client.CoreV1Api, selector: str) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and core.list_namespaced_pod(
            NAMESPACE, label_selector=selector).items:
        time.sleep(0.5)


def _step_costs(pods: Pods, begin: float, end: float) -> dict[str, Any]:
    """Partitions revoked and consumer-seconds without processing in [begin, end]: the
    consumers' own count of gaps over STALL_GAP_SECONDS between deliveries (a gap is
    counted when it ends, so a pod that leaves for good adds nothing after its last one)."""
    stalled = 0.0
    revoked = 0
    for log in pods.logs.values():
        for prev, cur in zip(log.stats, log.stats[1:], strict=False):
            if begin <= cur["t"] <= end:
                revoked += cur["revoked"] - prev["revoked"]
                stalled += cur["stalled"] - prev["stalled"]
    return {"revoked": revoked, "idle_consumer_s": round(stalled, 2)}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def main() -> int:
    state = localstack.read_state()
    if state is None or not state.get("KCG_NODE"):
        print("bench-rebalance: needs the local stack with its node: make up", file=sys.stderr)
        return 2
    repeat = int(os.environ.get("REPEAT", "3"))
    env = {**os.environ, "KUBECONFIG": str(state["KUBECONFIG"])}
    kubectl = [str(localstack.K8S_BIN / "kubectl")]
    api = config.new_client_from_config(config_file=str(state["KUBECONFIG"]))
    core = client.CoreV1Api(api)
    if not any(n.metadata.name == NAMESPACE for n in core.list_namespace().items):
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
    # Modes interleaved run by run, so drift on the machine touches each alike.
    runs = [run_mode(mode, state, api, kubectl, env) for _ in range(repeat) for mode in MODES]

    print(f"{PARTITIONS} partitions, {RATE} msg/s steady; one Deployment of "
          f"examples/consumer/consumer.py on the local node; {repeat} runs per mode, "
          f"median [min-max]\n")
    print(f"{'mode':<20} {'step':<16} {'revoked':>8} {'idle consumer-s':>22} {'stable s':>18}")
    summary: dict[str, Any] = {"partitions": PARTITIONS, "rate": RATE, "repeat": repeat}
    medians: dict[tuple[str, str], float] = {}
    for mode in MODES:
        mine = [r for r in runs if r["mode"] == mode]
        for index, step in enumerate(s["step"] for s in mine[0]["steps"]):
            cells = []
            for key in ("revoked", "idle_consumer_s", "stable_s"):
                values = [float(r["steps"][index][key]) for r in mine]
                med = _median(values)
                medians[(mode, f"{step}:{key}")] = med
                name = step.replace(" ", "_").replace("->", "to")
                summary[f"{mode}_{name}_{key}"] = round(med, 2)
                cells.append(f"{med:g} [{min(values):g}-{max(values):g}]")
            print(f"{mode:<20} {step:<16} {cells[0]:>8} {cells[1]:>22} {cells[2]:>18}")
        duplicates = [r["duplicates"] for r in mine]
        summary[f"{mode}_duplicates_max"] = max(duplicates)
        print(f"{mode:<20} {'duplicates':<16} max {max(duplicates)} "
              f"(of ~{mine[0]['produced']} produced per run)")
    eager = medians[("eager-range", "rolling restart:idle_consumer_s")]
    for mode in MODES[1:]:
        mine = medians[(mode, "rolling restart:idle_consumer_s")]
        ratio = mine / eager if eager else None
        summary[f"rolling_idle_ratio_{mode}"] = None if ratio is None else round(ratio, 3)
        verdict = "meets" if ratio is not None and ratio <= 0.2 else "misses"
        print(f"rolling restart idle consumer-s, {mode} / eager: "
              f"{'n/a (eager idle 0)' if ratio is None else f'{ratio:.2f}'} "
              f"({verdict} the goal <= 0.20)")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
