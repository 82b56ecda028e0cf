"""bench-sweep: lag collection for 1 000 KafkaConsumerGroups on one cluster.

Real apiserver, real broker, real operator (`kcg run` as a child process). Compared in the
same run with one-client-per-object collection as KEDA's Kafka scaler does it: each
ScaledObject owns a librdkafka client and, every poll, asks for its topic's metadata, its
group's committed offsets and the partitions' end offsets; every object's scale loop runs
concurrently. The baseline runs in a child process, so its memory is measured on its own.

Measured:
- one full lag sweep of all groups, with the operator's collector (the Kafka protocol,
  many groups per request, one connection per broker), with librdkafka's admin client
  shared by all groups (one request per group: the operator's road for settings its own
  client does not speak), and with one client per object, all objects at once;
- open TCP connections to the broker while each is in use;
- the operator's RSS and its broker connections once it serves every object;
- API writes per minute in steady state (nothing changes), counted by the operator and,
  as an upper bound including every other client, by the apiserver.

    python benchmarks/bench_sweep.py [--objects 1000] [--steady-seconds 60]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "stack"))

from confluent_kafka import ConsumerGroupTopicPartitions, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402
from kubernetes import client, config, watch  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402

import localstack  # noqa: E402
from kcg_operator.scaling.collector import (  # noqa: E402
    LATEST,
    ClusterKey,
    GroupRequest,
    LagCollector,
)
from kcg_operator.scaling.contained import ContainedLagCollector  # noqa: E402
from kcg_operator.scaling.kafka_wire import WireLagCollector  # noqa: E402

TOPICS, PARTITIONS = 10, 6


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (the operator's Kafka client runs in a child process)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(current := todo.pop())
        todo += children.get(current, [])
    return tree


def broker_connections(pid: int, port: int) -> int:
    """Established TCP connections from `pid` and its children to the broker's port."""
    inodes = set()
    for member in process_tree(pid):
        for fd in Path(f"/proc/{member}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].split(":")[1], 16)
            if fields[3] == "01" and remote_port == port and fields[9] in inodes:
                count += 1
    return count


def rss_mb(pid: int, children: bool = False) -> float:
    """Resident memory of `pid` (and, with `children`, of its descendants too)."""
    total = 0.0
    for member in process_tree(pid) if children else [pid]:
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare_kafka(bootstrap: str, run: str, objects: int) -> tuple[list[str], list[str]]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = [f"bench-{run}-{i}" for i in range(TOPICS)]
    for fut in admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in topics]).values():
        fut.result()
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for t in topics:
        for i in range(600):
            producer.produce(t, key=str(i), value=b"x")
    producer.flush(60)
    groups = [f"bench-{run}-g{i:04d}" for i in range(objects)]
    ends = admin.list_offsets({TopicPartition(t, p): LATEST for t in topics
                               for p in range(PARTITIONS)})
    end = {(tp.topic, tp.partition): f.result().offset for tp, f in ends.items()}
    # Commit every group at the end of its topic: lag 0, a steady state.
    futures = []
    with ThreadPoolExecutor(16) as pool:
        for i, g in enumerate(groups):
            topic = topics[i % TOPICS]
            tps = [TopicPartition(topic, p, end[(topic, p)]) for p in range(PARTITIONS)]
            futures.append(pool.submit(
                lambda g=g, tps=tps: admin.alter_consumer_group_offsets(
                    [ConsumerGroupTopicPartitions(g, tps)])[g].result()))
        for f in futures:
            f.result()
    return topics, groups


def time_shared_sweep(bootstrap: str, requests: list[GroupRequest],
                      collector: LagCollector) -> tuple[float, int]:
    key = ClusterKey.of(bootstrap)
    # Connect and warm up first (steady-state sweeps reuse the client): a broker that has
    # just taken 10 000 groups' commits timed out a whole first sweep here twice, which the
    # operator rides out as one sweep of BrokerUnreachable and a new client.
    for _ in range(3):
        if all(s.broker_ok for s in collector.sweep(key, requests).values()):
            break
    times = []
    for _ in range(3):
        started = time.perf_counter()
        snaps = collector.sweep(key, requests)
        times.append(time.perf_counter() - started)
        assert all(s.broker_ok for s in snaps.values()), "shared sweep failed"
    connections = broker_connections(os.getpid(), int(bootstrap.rsplit(":", 1)[1]))
    collector.close()
    return statistics.median(times), connections


def keda_style_poll(admin: AdminClient, group: str, topic: str) -> int:
    """What KEDA's Kafka scaler asks per ScaledObject and poll, with that object's own
    client: the topic's partitions (metadata), the group's committed offsets (OffsetFetch)
    and the partitions' end offsets (ListOffsets); returns the group's total lag."""
    meta = admin.list_topics(topic, timeout=60).topics[topic]
    tps = [TopicPartition(topic, p) for p in sorted(meta.partitions)]
    committed_f = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, tps)], request_timeout=60)[group]
    ends_f = admin.list_offsets({tp: LATEST for tp in tps}, request_timeout=60)
    committed = {(tp.topic, tp.partition): tp.offset
                 for tp in committed_f.result(60).topic_partitions}
    total = 0
    for tp, fut in ends_f.items():
        total += max(fut.result(60).offset - max(committed[(tp.topic, tp.partition)], 0), 0)
    return total


def keda_baseline_worker(bootstrap: str, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """In its own process (so its memory is its own): one librdkafka client per object,
    every object polled concurrently (KEDA runs one scale loop per ScaledObject)."""
    base_rss = rss_mb(os.getpid())
    admins = [AdminClient({"bootstrap.servers": bootstrap, "log_level": 2}) for _ in pairs]
    work = list(zip(admins, pairs, strict=True))
    with ThreadPoolExecutor(len(work)) as pool:
        list(pool.map(lambda a: keda_style_poll(a[0], *a[1]), work))  # connect, warm up
        times = []
        for _ in range(3):
            started = time.perf_counter()
            list(pool.map(lambda a: keda_style_poll(a[0], *a[1]), work))
            times.append(time.perf_counter() - started)
    return {"seconds": statistics.median(times),
            "connections": broker_connections(os.getpid(), int(bootstrap.rsplit(":", 1)[1])),
            "rss_mb": round(rss_mb(os.getpid()) - base_rss, 1),
            "threads": len(os.listdir(f"/proc/{os.getpid()}/task"))}


def time_per_object_sweep(bootstrap: str, requests: list[GroupRequest]) -> dict[str, Any]:
    """The one-client-per-object baseline, in a child process (see keda_baseline_worker)."""
    pairs = [(r.group_id, r.topics[0]) for r in requests]
    out = subprocess.run([sys.executable, __file__, "--keda-baseline", bootstrap],
                         input=json.dumps(pairs), capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def apiserver_mutations(state: dict[str, Any]) -> dict[str, float]:
    """Mutating requests the apiserver has served so far (all clients), by verb/resource."""
    pki = Path(str(state["KCG_STACK_DIR"])) / "pki"
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    server = json.loads(Path(str(state["KUBECONFIG"])).read_text())["clusters"][0]["cluster"][
        "server"]
    with urllib.request.urlopen(f"{server}/metrics", context=ctx, timeout=30) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if labels.get("verb") in ("POST", "PUT", "PATCH", "DELETE", "APPLY"):
            key = "/".join(x for x in (labels["verb"], labels.get("resource", ""),
                                       labels.get("subresource", "")) if x)
            out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


class Scrape:
    """One scrape of the operator's /metrics: how long it took, how big it was, and the
    first sample of each metric name (the unlabelled counters read here)."""

    def __init__(self, port: int) -> None:
        started = time.perf_counter()
        # Prometheus gives up after its scrape timeout (10 s by default); the benchmark
        # waits longer so that a slow endpoint is measured, not lost.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=180) as r:
            text = r.read()
        self.seconds = time.perf_counter() - started
        self.megabytes = len(text) / 1e6
        self.values: dict[str, float] = {}
        for line in text.decode().splitlines():
            if line and not line.startswith("#"):
                name = line.split("{", 1)[0].split(" ", 1)[0]
                self.values.setdefault(name, float(line.rsplit(" ", 1)[1]))

    def __getitem__(self, name: str) -> float:
        return self.values.get(name, 0.0)


def _is_ready(obj: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


def wait_all_ready(custom: client.CustomObjectsApi, ns: str, total: int, deadline: float,
                   op: subprocess.Popen[bytes]) -> int:
    """Until every object is Ready (returns how many are). One LIST, then a watch: a LIST
    of 10 000 objects every few seconds would load the apiserver the operator is timed on."""
    args = ("kcg.dev", "v1alpha1", ns, "kafkaconsumergroups")
    ready: set[str] = set()
    version = None
    while len(ready) < total and time.monotonic() < deadline and op.poll() is None:
        if version is None:
            listing = custom.list_namespaced_custom_object(*args)
            ready = {o["metadata"]["name"] for o in listing["items"] if _is_ready(o)}
            version = listing["metadata"]["resourceVersion"]
        try:
            for event in watch.Watch().stream(custom.list_namespaced_custom_object, *args,
                                              resource_version=version, timeout_seconds=20):
                obj = event["object"]
                if event["type"] == "ERROR":  # e.g. 410 Gone in the stream: list again
                    version = None
                    break
                version = obj["metadata"]["resourceVersion"]
                name = obj["metadata"]["name"]
                if event["type"] != "DELETED" and _is_ready(obj):
                    ready.add(name)
                else:
                    ready.discard(name)
                if len(ready) == total:
                    break
        except ApiException as exc:
            if exc.status != 410:
                raise
            version = None  # expired: list again
    return len(ready)


def status_changes(custom: client.CustomObjectsApi, ns: str, stop: threading.Event,
                   tally: Counter[str]) -> None:
    """Count, until `stop`, which part of the objects' status changes (a condition's
    type:status:reason, or another field): what each status write in the window was for."""
    args = ("kcg.dev", "v1alpha1", ns, "kafkaconsumergroups")
    listing = custom.list_namespaced_custom_object(*args)
    last = {o["metadata"]["name"]: o.get("status") or {} for o in listing["items"]}
    version = listing["metadata"]["resourceVersion"]
    while not stop.is_set():
        for event in watch.Watch().stream(custom.list_namespaced_custom_object, *args,
                                          resource_version=version, timeout_seconds=5):
            obj = event["object"]
            if event["type"] == "ERROR":
                return
            version = obj["metadata"]["resourceVersion"]
            name, now = obj["metadata"]["name"], obj.get("status") or {}
            before = last.get(name, {})
            last[name] = now
            old = {c["type"]: c for c in before.get("conditions") or []}
            for cond in now.get("conditions") or []:
                prev = old.get(cond["type"], {})
                if (prev.get("status"), prev.get("reason")) != (cond["status"], cond["reason"]):
                    tally[f"{cond['type']}:{prev.get('reason')}->{cond['reason']}"] += 1
                elif prev.get("message") != cond.get("message"):
                    tally[f"{cond['type']} message"] += 1
            for field_ in sorted(set(now) | set(before)):
                if field_ != "conditions" and now.get(field_) != before.get(field_):
                    tally[f"status.{field_}"] += 1
            if stop.is_set():
                break


def print_window_events(core: client.CoreV1Api, ns: str,
                        since: datetime.datetime) -> None:
    """What the operator said in the steady window, by reason (writes there need a why)."""
    reasons: Counter[str] = Counter()
    sample: dict[str, str] = {}
    token = None
    while True:
        page = core.list_namespaced_event(ns, limit=2000, _continue=token)
        for ev in page.items:
            stamp = ev.last_timestamp or ev.event_time
            if stamp is not None and stamp >= since:
                reasons[ev.reason or ""] += 1
                sample.setdefault(ev.reason or "", f"{ev.involved_object.name}: {ev.message}")
        token = page.metadata._continue
        if not token:
            break
    print(f"Events in the steady window by reason: {dict(reasons.most_common(8))}",
          file=sys.stderr)
    for reason, _ in reasons.most_common(3):
        print(f"  e.g. {reason}: {sample[reason][:300]}", file=sys.stderr)


def run_operator(api: client.ApiClient, state: dict[str, Any], bootstrap: str, ns: str,
                 topics: list[str], groups: list[str], steady_seconds: int,
                 log: Path) -> dict[str, Any]:
    custom = client.CustomObjectsApi(api)
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda ig: custom.create_namespaced_custom_object(
            "kcg.dev", "v1alpha1", ns, "kafkaconsumergroups", {
                "apiVersion": "kcg.dev/v1alpha1", "kind": "KafkaConsumerGroup",
                "metadata": {"name": f"g{ig[0]:04d}"},
                "spec": {"groupId": ig[1], "topics": [topics[ig[0] % TOPICS]],
                         "kafka": {"bootstrapServers": bootstrap}, "replicas": 0,
                         "template": {"spec": {"containers": [
                             {"name": "app", "image": "example/app:1"}]}}}}),
            enumerate(groups)))
    create_s = time.monotonic() - started
    metrics_port = free_port()
    out = open(log, "wb")  # noqa: SIM115 - closed below
    op = subprocess.Popen(
        [sys.executable, "-m", "kcg_operator.cli", "run", "-n", ns, "--liveness-port", "0",
         "--metrics-port", str(metrics_port)],
        stdout=out, stderr=subprocess.STDOUT,
        env={**os.environ, "KUBECONFIG": str(state["KUBECONFIG"]),
             "KCG_CHECK_INTERVAL_SECONDS": "10"})
    try:
        started = time.monotonic()
        ready = wait_all_ready(custom, ns, len(groups), started + 900, op)
        if ready < len(groups):
            raise SystemExit(f"operator served only {ready}/{len(groups)}; log: {log}")
        all_ready_s = time.monotonic() - started
        # The controller-manager creates a ReplicaSet per Deployment at its own pace; the
        # steady state starts when it has caught up with every Deployment.
        apps = client.AppsV1Api(api)
        while True:
            deps = apps.list_namespaced_deployment(ns).items
            if len(deps) == len(groups) and all(
                    d.status and d.status.observed_generation == d.metadata.generation
                    for d in deps):
                break
            time.sleep(2)
        time.sleep(15)  # let the last sweeps settle
        w0 = Scrape(metrics_port)["kcg_api_writes_total"]
        m0 = apiserver_mutations(state)
        window_start = datetime.datetime.now(datetime.UTC)
        stop, changes = threading.Event(), Counter[str]()
        watcher = threading.Thread(target=status_changes, args=(custom, ns, stop, changes),
                                   daemon=True)
        watcher.start()
        time.sleep(steady_seconds)
        stop.set()
        watcher.join(10)
        end = Scrape(metrics_port)
        w1 = end["kcg_api_writes_total"]
        m1 = apiserver_mutations(state)
        delta = {k: v - m0.get(k, 0.0) for k, v in m1.items() if v - m0.get(k, 0.0) > 0}
        print("apiserver mutations in the steady window, by verb/resource:",
              dict(sorted(delta.items(), key=lambda kv: -kv[1])[:8]), file=sys.stderr)
        print_window_events(client.CoreV1Api(api), ns, window_start)
        print(f"status changes in the steady window: {dict(changes.most_common(8))}",
              file=sys.stderr)
        for name in ("kcg_kafka_request_errors_total", "kcg_kafka_client_restarts_total"):
            print(f"{name} at the end: {end[name]}", file=sys.stderr)
        sweep_sum = end["kcg_lag_sweep_duration_seconds_sum"]
        sweep_count = end["kcg_lag_sweep_duration_seconds_count"]
        return {
            "create_seconds": round(create_s, 1),
            "all_ready_seconds": round(all_ready_s, 1),
            "rss_mb": round(rss_mb(op.pid, children=True), 1),
            "operator_broker_connections": broker_connections(
                op.pid, int(bootstrap.rsplit(":", 1)[1])),
            "api_writes_per_min": round((w1 - w0) * 60 / steady_seconds, 1),
            "apiserver_mutations_per_min_all_clients": round(
                sum(delta.values()) * 60 / steady_seconds, 1),
            "operator_mean_sweep_seconds": round(sweep_sum / max(sweep_count, 1), 3),
            "metrics_scrape_seconds": round(end.seconds, 2),
            "metrics_scrape_mb": round(end.megabytes, 1),
        }
    finally:
        op.terminate()
        try:
            op.wait(20)
        except subprocess.TimeoutExpired:
            op.kill()
        out.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--baseline-objects", type=int, default=1000,
                        help="objects for the one-client-per-object baseline (at most --objects)")
    parser.add_argument("--steady-seconds", type=int, default=60)
    parser.add_argument("--keda-baseline", metavar="BOOTSTRAP", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.keda_baseline:
        print(json.dumps(keda_baseline_worker(args.keda_baseline, json.load(sys.stdin))))
        return 0

    state = localstack.read_state()
    owned = state is None
    if state is None:
        state = localstack.up(owned=True)
    bootstrap = str(state["KAFKA_BOOTSTRAP_SERVERS"])
    api = config.new_client_from_config(config_file=str(state["KUBECONFIG"]))
    run = uuid.uuid4().hex[:6]
    ns = f"bench-sweep-{run}"
    core = client.CoreV1Api(api)
    try:
        subprocess.run([str(localstack.K8S_BIN / "kubectl"), "apply", "--server-side",
                        "--force-conflicts", "-f", str(REPO / "crds")], check=True,
                       capture_output=True, env={**os.environ,
                                                 "KUBECONFIG": str(state["KUBECONFIG"])})
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        print(f"preparing {args.objects} groups with committed offsets ...", file=sys.stderr)
        topics, groups = prepare_kafka(bootstrap, run, args.objects)
        requests = [GroupRequest(g, (topics[i % TOPICS],)) for i, g in enumerate(groups)]
        # As the operator sweeps (the Kafka protocol, many groups per request), and as it
        # does for settings that protocol client does not speak (librdkafka's admin client,
        # one request per group, in a child process).
        shared_s, shared_conns = time_shared_sweep(bootstrap, requests,
                                                   WireLagCollector(timeout_s=30))
        librdkafka_s, _ = time_shared_sweep(bootstrap, requests,
                                            ContainedLagCollector(timeout_s=30))
        print(f"shared sweep {shared_s:.3f}s (librdkafka {librdkafka_s:.3f}s); "
              "per-object sweep ...", file=sys.stderr)
        baseline_objects = min(args.baseline_objects, len(requests))
        baseline = time_per_object_sweep(bootstrap, requests[:baseline_objects])
        base_s, base_conns = baseline["seconds"], baseline["connections"]
        print(f"starting the operator on {args.objects} objects ...", file=sys.stderr)
        log = Path(tempfile.mkdtemp(prefix="bench-sweep-")) / "operator.log"
        op = run_operator(api, state, bootstrap, ns, topics, groups, args.steady_seconds, log)
    finally:
        with contextlib.suppress(ApiException):
            core.delete_namespace(ns)
        if owned:
            localstack.down(quiet=True)

    rows = [
        ("one full lag sweep (s)", f"{shared_s:.3f}", f"{base_s:.3f}"),
        ("one full lag sweep, librdkafka admin client (s)", f"{librdkafka_s:.3f}", "-"),
        ("broker connections during sweeps", str(shared_conns), str(base_conns)),
        ("operator broker connections (serving all)", str(op["operator_broker_connections"]),
         "-"),
        ("operator RSS (MB) / baseline clients' RSS (MB)", str(op["rss_mb"]),
         str(baseline["rss_mb"])),
        ("threads (baseline: one scale loop per object)", "-", str(baseline["threads"])),
        ("API writes/min, steady state (operator)", str(op["api_writes_per_min"]), "-"),
        ("API mutations/min, steady state (apiserver, all clients)",
         str(op["apiserver_mutations_per_min_all_clients"]), "-"),
        ("time until every object is Ready (s)", str(op["all_ready_seconds"]), "-"),
        ("one scrape of the operator's /metrics (s / MB)",
         f"{op['metrics_scrape_seconds']} / {op['metrics_scrape_mb']}", "-"),
    ]
    print(f"\nbench-sweep: {args.objects} KafkaConsumerGroups, {TOPICS} topics x {PARTITIONS} "
          "partitions, one broker (Kafka 4.1.1), kube-apiserver v1.34.4, 2 cores\n")
    width = max(len(r[0]) for r in rows)
    print(f"{'':<{width}}  {'kcg (shared client)':>20}  {'one client per object':>22}")
    print(f"{'objects':<{width}}  {args.objects:>20}  {baseline_objects:>22}")
    for name, ours, theirs in rows:
        print(f"{name:<{width}}  {ours:>20}  {theirs:>22}")
    print(json.dumps({
        "objects": args.objects,
        "sweep_seconds": round(shared_s, 3),
        "librdkafka_sweep_seconds": round(librdkafka_s, 3),
        "broker_connections": op["operator_broker_connections"],
        "sweep_broker_connections": shared_conns,
        "rss_mb": op["rss_mb"],
        "api_writes_per_min": op["api_writes_per_min"],
        "apiserver_mutations_per_min_all_clients": op["apiserver_mutations_per_min_all_clients"],
        "all_ready_seconds": op["all_ready_seconds"],
        "operator_mean_sweep_seconds": op["operator_mean_sweep_seconds"],
        "metrics_scrape_seconds": op["metrics_scrape_seconds"],
        "metrics_scrape_mb": op["metrics_scrape_mb"],
        "baseline_objects": baseline_objects,
        "baseline_sweep_seconds": round(base_s, 3),
        "baseline_broker_connections": base_conns,
        "baseline_rss_mb": baseline["rss_mb"],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
