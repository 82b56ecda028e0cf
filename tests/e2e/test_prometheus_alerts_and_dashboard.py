"""The chart's alert rules and Grafana dashboard against a real Prometheus (Debian's) that
scrapes the operator pod and the relay sidecars on the node (stack/prometheus.py).

One busy stack for the module: the orders app (examples/orders-outbox.yaml) as a scaling
KafkaConsumerGroup with the outbox relay sidecar, fed orders by a producer thread. First every
dashboard panel's queries must answer with data; then real outages must fire the alerts
through Prometheus' own rule evaluation (/api/v1/alerts), and the recoveries resolve them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from confluent_kafka import Producer
from kubernetes import client

from tests.conftest import fresh_namespace
from tests.integration.outbox_support import create_topic, delete_topics
from tests.integration.test_orders_app import PARTITIONS, Names, as_record, order

from .conftest import REPO, Operator, OperatorPod, RunningOperator, eventually
from .test_outbox_pods import orders_app_body

sys.path.insert(0, str(REPO / "stack"))

import prometheus as prom_stack

pytestmark = pytest.mark.e2e

RULES = REPO / "charts" / "kcg-operator" / "files" / "prometheus"
DASHBOARD = REPO / "charts" / "kcg-operator" / "files" / "grafana" / "kcg-operator.json"
SCRAPE_SECONDS = 2.0
# The shipped rules wait minutes (`for: 10m` ...) before firing, as production should; the
# test copy waits this long instead. Everything else, the expressions above all, is the
# shipped text (test_test_rules_differ_from_the_shipped_ones_only_in_for checks it).
TEST_FOR = "4s"
# What a panel's $__rate_interval / $__interval become: four scrapes, as Grafana computes
# $__rate_interval from a 2 s scrape interval (max(4 x scrape, interval + scrape)).
RATE_WINDOW = "8s"
TARGET_SECONDS = 5  # the group's maxTimeLagSeconds: KcgTimeLagAboveTarget's threshold
APP_RATE = 100  # orders/s one orders-app pod processes
TRAFFIC_RATE = 30  # orders/s the producer thread writes
MAX_REPLICAS = 2


def shortened_rule_files(directory: Path) -> list[Path]:
    """The shipped rule files with every `for:` set to TEST_FOR, written to `directory`."""
    out = []
    for path in sorted(RULES.glob("*.rules.yaml")):
        text = re.sub(r"^(\s+for: )\S+$", rf"\g<1>{TEST_FOR}", path.read_text(), flags=re.M)
        copy = directory / path.name
        copy.write_text(text)
        out.append(copy)
    return out


def _rules(path: Path) -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]


def test_test_rules_differ_from_the_shipped_ones_only_in_for(tmp_path: Path) -> None:
    for shipped, copy in zip(sorted(RULES.glob("*.rules.yaml")), shortened_rule_files(tmp_path),
                             strict=True):
        for original, changed in zip(_rules(shipped), _rules(copy), strict=True):
            assert changed["expr"] == original["expr"], original.get("alert")  # byte-identical
            assert {k: v for k, v in changed.items() if k != "for"} == \
                {k: v for k, v in original.items() if k != "for"}
            assert changed.get("for", TEST_FOR) == TEST_FOR


# ----------------------------------------------------------------------------- the stack


@dataclass
class Busy:
    ns: str
    name: str  # the KafkaConsumerGroup (its relays' kcg_dev_group)
    names: Names
    prom: prom_stack.Prometheus
    dsn: str
    bootstrap: str
    kube: client.ApiClient
    busy_since: float


class Traffic:
    """Orders at a steady rate from a thread, until stopped."""

    def __init__(self, bootstrap: str, topic: str, rate: float) -> None:
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
        self.topic, self.rate = topic, rate
        self.sent = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="orders-traffic")

    def burst(self, count: int) -> None:
        for _ in range(count):
            self._one()
        self.producer.flush(30)

    def _one(self) -> None:
        key, value = as_record(order(self.sent))
        self.producer.produce(self.topic, key=key, value=value)
        self.sent += 1

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.wait(0.05):
            due = int((time.monotonic() - start) * self.rate)
            while self.sent < due + self._burst_offset:
                self._one()
            self.producer.poll(0)

    def start(self) -> None:
        self._burst_offset = self.sent
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)
        self.producer.flush(30)


def _series(prom: prom_stack.Prometheus, expr: str) -> float | None:
    result = prom.query(expr)
    return float(result[0]["value"][1]) if result else None


@pytest.fixture(scope="module")
def busy(operator: RunningOperator, kubectl: Callable[..., Any], kube_api: client.ApiClient,
         cluster: dict[str, str], stack: dict[str, Any], examples_image: str,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Busy]:
    bootstrap, dsn = str(stack["KAFKA_BOOTSTRAP_SERVERS"]), str(stack["OUTBOX_DSN"])
    names = Names.fresh()
    create_topic(bootstrap, names.topic, PARTITIONS)
    create_topic(bootstrap, names.output_topic, PARTITIONS)
    ns_name = f"prom-{uuid.uuid4().hex[:8]}"
    with fresh_namespace(kube_api, ns_name) as ns, contextlib.ExitStack() as cleanup:
        cleanup.callback(delete_topics, bootstrap, names.topic, names.output_topic)
        client.CoreV1Api(kube_api).create_namespaced_secret(ns, client.V1Secret(
            metadata=client.V1ObjectMeta(name="orders-db"),
            data={"dsn": base64.b64encode(dsn.encode()).decode()}))
        body = orders_app_body(names, cluster["SPEC_BOOTSTRAP"], examples_image)
        spec = body["spec"]
        spec["scaling"] = {
            "minReplicas": 1, "maxReplicas": MAX_REPLICAS, "lagPerReplica": 100,
            "maxTimeLagSeconds": TARGET_SECONDS, "pollIntervalSeconds": 2,
            # Stays at its peak: the outage below must not be undone by a scale-down.
            "scaleDownStabilizationSeconds": 3600}
        # A member that stops heartbeating is out of the group after 6 s (the broker's
        # minimum) instead of the default 45 s.
        spec["consumerConfig"]["session.timeout.ms"] = "6000"
        spec["template"]["spec"]["containers"][0]["args"] += ["--rate", str(APP_RATE)]
        name = body["metadata"]["name"]
        kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(body))

        if isinstance(operator, OperatorPod):
            namespaces, static = [ns, operator.namespace], []
        else:
            assert isinstance(operator, Operator)
            namespaces, static = [ns], [f"127.0.0.1:{operator.metrics_port}"]
        prom = prom_stack.start(
            cluster["KUBECONFIG"], interval_seconds=SCRAPE_SECONDS, namespaces=namespaces,
            static_operator_targets=static,
            rule_files=shortened_rule_files(tmp_path_factory.mktemp("rules")))
        cleanup.callback(prom.stop)

        traffic = Traffic(bootstrap, names.topic, TRAFFIC_RATE)
        cleanup.callback(traffic.stop)
        # A backlog the one first pod cannot take alone: the operator scales to the cap.
        traffic.burst(1500)
        traffic.start()
        sel = f'namespace="{ns}"'
        eventually(lambda: (_series(prom, f'sum(kcg_scale_events_total{{{sel}}})') or 0) >= 1,
                   timeout=180, interval=1, what="a scale event, in Prometheus")
        eventually(lambda: _series(prom, f'count(up{{job="kcg-outbox-relay", {sel}}} == 1)')
                   == MAX_REPLICAS, timeout=180, interval=1, what="both relays scraped")
        eventually(lambda: (_series(
            prom, f'sum(rate(kcg_outbox_events_published_total{{{sel}}}[{RATE_WINDOW}]))')
            or 0) > 0, timeout=120, interval=1, what="the relays publishing, in Prometheus")
        # The policy measures a replica's rate once it has seen the pods consume a while.
        eventually(lambda: _series(prom, f'kcg_consumergroup_replica_rate{{{sel}}}'),
                   timeout=120, interval=1, what="a measured per-replica rate, in Prometheus")
        yield Busy(ns, name, names, prom, dsn, bootstrap, kube_api, time.time())
        print(f"prometheus log:\n{prom.log_text()[-3000:]}")


# ----------------------------------------------------------------------------- dashboard


def panel_queries(dashboard: dict[str, Any], namespace: str,
                  group: str) -> list[tuple[str, str]]:
    """(panel title, expr) of every target, variables replaced as Grafana would."""
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = str(target["expr"])
            for var, value in (("$__rate_interval", RATE_WINDOW), ("$__interval", "2s"),
                               ("${datasource}", ""), ("$namespace", namespace),
                               ("$group", group)):
                expr = expr.replace(var, value)
            assert "$" not in expr, f"{panel['title']}: unreplaced variable in {expr}"
            out.append((f"{panel['title']} ({target['refId']})", expr))
    return out


def test_every_dashboard_query_answers_with_data_on_the_busy_stack(busy: Busy) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = panel_queries(dashboard, busy.ns, busy.name)
    assert len(queries) >= 20
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    for var in ("namespace", "group"):
        query = str(variables[var]["definition"]).replace("$namespace", busy.ns)
        match = re.fullmatch(r"label_values\((.*), (\w+)\)", query)
        assert match, query
        values = {s["metric"].get(match[2]) for s in busy.prom.query(match[1])}
        assert {busy.ns, busy.name} & values, f"variable {var}: {query} gave {values}"
    problems = []
    window = max(60.0, time.time() - busy.busy_since + 30)
    for title, expr in queries:
        try:
            if not busy.prom.query_range(expr, window, SCRAPE_SECONDS):
                problems.append(f"{title}: no data for {expr}")
        except prom_stack.PrometheusError as exc:
            problems.append(f"{title}: {exc}")
    assert not problems, "dashboard panels without data:\n" + "\n".join(problems)


# ----------------------------------------------------------------------------- alerts


def _alert_states(busy: Busy) -> dict[str, str]:
    return {a["labels"]["alertname"]: a["state"] for a in busy.prom.alerts()
            if a["labels"].get("namespace") == busy.ns}


def _firing(busy: Busy, *alerts: str, timeout: float) -> None:
    eventually(lambda: all(_alert_states(busy).get(a) == "firing" for a in alerts),
               timeout=timeout, interval=1, what=f"{', '.join(alerts)} firing")
    print(f"firing: {alerts}")


def _resolved(busy: Busy, *alerts: str, timeout: float) -> None:
    eventually(lambda: not set(alerts) & set(_alert_states(busy)), timeout=timeout,
               interval=1, what=f"{', '.join(alerts)} resolved")


def _netns_of(ip: str) -> str:
    """The node's network namespace (made by CNI) that holds the pod address `ip`."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           check=True).stdout.split()
    for netns in (n for n in names if n.startswith("cni-")):
        out = subprocess.run(["ip", "-n", netns, "-4", "-o", "addr"], capture_output=True,
                             text=True).stdout
        if f" {ip}/" in out:
            return netns
    raise AssertionError(f"no network namespace holds {ip}")


def _cut_kafka(netns: str, bootstrap: str) -> None:
    """From inside the pod's network namespace, every connection to the broker is refused
    (TCP reset): the pod has lost Kafka, as behind a broken network path; PostgreSQL and
    the apiserver on the same host stay reachable."""
    host, port = bootstrap.rsplit(":", 1)
    script = (f"table inet kcg_test_cut {{\n  chain out {{\n"
              f"    type filter hook output priority 0;\n"
              f"    ip daddr {host} tcp dport {port} reject with tcp reset\n  }}\n}}\n")
    proc = subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=script,
                          text=True, capture_output=True)
    assert proc.returncode == 0, f"nft in {netns}: {proc.stderr}"


def _heal(netns: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, "nft", "delete", "table", "inet",
                    "kcg_test_cut"], check=False, capture_output=True)


def _write_event(busy: Busy, topic: str, age_seconds: float = 0.0) -> None:
    """An event as another writer of the service commits it; `age_seconds` dates its
    created_at back (the relay measures the age as clock_timestamp() - created_at)."""
    with psycopg.connect(busy.dsn, autocommit=True) as conn:
        conn.execute(
            f"INSERT INTO {busy.names.outbox} (aggregatetype, aggregateid, type, payload, "
            f"created_at) VALUES (%s, 'audit', 'Audited', '{{}}', "
            f"clock_timestamp() - make_interval(secs => %s))".encode(), (topic, age_seconds))


def _date_back_pending(busy: Busy, seconds: float) -> int:
    """Make every pending event `seconds` older, as if the outage had lasted that long (the
    relay measures the age as clock_timestamp() - created_at); returns how many."""
    with psycopg.connect(busy.dsn, autocommit=True) as conn:
        cur = conn.execute(
            f"UPDATE {busy.names.outbox} SET created_at = created_at - "
            f"make_interval(secs => %s)".encode(), (seconds,))
        return cur.rowcount


def _relays_missing(busy: Busy) -> float | None:
    """KcgOutboxRelayDown's arm for relays without a target, on the real scrape labels: the
    operator's expected relays minus the relay targets up, joined as the rule joins them."""
    return _series(busy.prom, (
        f'max by (namespace, name, group) (kcg_outbox_expected_relays{{namespace="{busy.ns}"}})'
        ' - on (namespace, name) group_left () label_replace(count by (namespace, '
        f'kcg_dev_group) (up{{job="{prom_stack.RELAY_JOB}",namespace="{busy.ns}"}} == 1), '
        '"name", "$1", "kcg_dev_group", "(.+)")'))


def test_pods_that_lose_kafka_fire_the_lag_and_relay_alerts_which_resolve_after(
    busy: Busy,
) -> None:
    pods = client.CoreV1Api(busy.kube).list_namespaced_pod(
        busy.ns, label_selector=f"kcg.dev/group={busy.name}").items
    ips = [str(p.status.pod_ip) for p in pods
           if p.metadata is not None and p.metadata.deletion_timestamp is None
           and p.status is not None]
    assert len(ips) == MAX_REPLICAS, "the group sits at its cap: no new pod can take over"
    netns = [_netns_of(ip) for ip in ips]
    # The first burst may have put the group behind its target for a while: start quiet.
    eventually(lambda: not _alert_states(busy), timeout=120, interval=1,
               what="no alert before the outage")
    # The operator's expected relays and the relays' own targets join on the labels the
    # scrapes really give: every expected relay is up, none missing.
    eventually(lambda: _relays_missing(busy) == 0, timeout=30, interval=1,
               what="the expected relays all up, joined on the scrape labels")
    try:
        for n in netns:
            _cut_kafka(n, busy.bootstrap)
        # Events keep being written while Kafka is away; dated back as if the outage had
        # lasted 310 s (over the alert's 300 s), while the relays' rounds wait for Kafka.
        _write_event(busy, busy.names.output_topic)
        assert _date_back_pending(busy, 310) >= 1
        _firing(busy, "KcgTimeLagAboveTarget", "KcgLagWithoutMembers", "KcgOutboxRelayDown",
                "KcgOutboxEventsDelayed", timeout=120)
        desired = _series(busy.prom, f'kcg_desired_replicas{{namespace="{busy.ns}"}}')
        assert desired == MAX_REPLICAS
    finally:
        for n in netns:
            _heal(n)
    _resolved(busy, "KcgTimeLagAboveTarget", "KcgLagWithoutMembers", "KcgOutboxRelayDown",
              "KcgOutboxEventsDelayed", timeout=180)


def test_events_waiting_for_a_missing_topic_fire_the_outbox_age_alert_until_it_exists(
    busy: Busy,
) -> None:
    missing = f"audit-{uuid.uuid4().hex[:8]}"
    # Five minutes over the threshold would take five minutes; the event is written as if
    # it had waited 310 s already (the threshold is in the expression, kept as shipped).
    _write_event(busy, missing, age_seconds=310)
    try:
        _firing(busy, "KcgOutboxEventsDelayed", timeout=60)
        age = _series(busy.prom, f'max(kcg_outbox_oldest_pending_event_age_seconds'
                                 f'{{namespace="{busy.ns}"}})')
        assert age is not None and age > 300
        # The other rows keep flowing past the held one.
        assert (_series(busy.prom, f'sum(rate(kcg_outbox_events_published_total'
                                   f'{{namespace="{busy.ns}"}}[{RATE_WINDOW}]))') or 0) > 0
        create_topic(busy.bootstrap, missing, 1)
        _resolved(busy, "KcgOutboxEventsDelayed", timeout=60)
    finally:
        delete_topics(busy.bootstrap, missing)

