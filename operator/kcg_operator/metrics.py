"""Prometheus metrics on /metrics, named in the style of kafka-lag-exporter and kminion.

The per-group and per-partition gauges are not prometheus_client children: at 10 000
groups those were ~170 MB of objects (a lock and a value per series). The controller hands
each group's figures to `groups` after every check, and they are turned into samples only
when Prometheus scrapes."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import ThreadingHTTPServer

from prometheus_client import Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from kcg_operator import http_endpoint
from kcg_operator.http_endpoint import Answer

GROUP_LABELS = ("namespace", "name", "group")

scale_events = Counter(
    "kcg_scale_events_total",
    "Replica changes made by the operator, by direction and by what decided the new count "
    "(reason: lag, partitions, maxReplicas, minReplicas, stabilization, brokerUnavailable, "
    "scaleToZero).", (*GROUP_LABELS, "direction", "reason"))
#: The values of kcg_scale_events_total's reason label: the lag rules (messages or time)
#: alone, or the bound that set the count (Decision.capped_by), or scale to zero.
SCALE_REASONS = ("lag", "partitions", "maxReplicas", "minReplicas", "stabilization",
                 "brokerUnavailable", "scaleToZero")
sweep_duration = Histogram(
    "kcg_lag_sweep_duration_seconds", "Duration of one lag sweep of one Kafka cluster.",
    ("cluster",), buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
kafka_request_errors = Counter(
    "kcg_kafka_request_errors_total", "Kafka admin requests that failed.", ("cluster",))
kafka_client_restarts = Counter(
    "kcg_kafka_client_restarts_total",
    "Kafka admin client processes replaced because they aborted, hung or stopped answering.",
    ("cluster",))
groups_watched = Gauge("kcg_groups", "KafkaConsumerGroups the operator serves.")
kafka_up = Gauge(
    "kcg_kafka_up", "1 when the cluster answered the last lag sweep, 0 when not.",
    ("cluster",))
#: Burrow's numbering of statuses (core/protocol/evaluator.go), for the status metric.
STATUS_CODES = {"NOTFOUND": 0, "OK": 1, "WARN": 2, "ERR": 3, "STOP": 4, "STALL": 5,
                "REWIND": 6}


def scale_reason(desired: int, capped_by: str | None) -> str:
    """The reason label of a scale event: a bounded set, so the series stay few (the
    policy's free-text reason goes into the Scaled Event instead)."""
    if desired == 0:
        return "scaleToZero"
    if capped_by in SCALE_REASONS:
        return capped_by
    return "lag"


GroupLabels = tuple[str, str, str]  # namespace, name, group


@dataclass(frozen=True, slots=True)
class PartitionFigures:
    topic: str
    partition: int
    lag: int
    seconds: float | None  # None: unknown, no sample
    status: int | None  # STATUS_CODES; None: no verdict


@dataclass(frozen=True, slots=True)
class GroupFigures:
    """One group's gauges after a check; None means no sample."""

    partitions: tuple[PartitionFigures, ...] = ()
    total_lag: int | None = None
    max_lag_seconds: float | None = None
    partition_count: int | None = None
    members: int | None = None
    rebalance_compliant: bool | None = None
    desired: int | None = None
    production_rate: float | None = None
    replica_rate: float | None = None
    current: int | None = None
    slo_seconds: float | None = None  # from the spec: absent when not set
    expected_relays: int | None = None  # absent without spec.outbox


#: Figures a check may not learn (Kafka did not answer, no Deployment seen, no decision):
#: the last known value stays, as a labelled gauge that is not set again would keep it;
#: kcg_kafka_up says whether it is current. The spec-given ones are set every time.
_KEPT_WHEN_UNKNOWN = ("total_lag", "max_lag_seconds", "partition_count", "members",
                      "rebalance_compliant", "desired", "production_rate", "replica_rate",
                      "current")


def merged(previous: GroupFigures | None, latest: GroupFigures,
           relays_known: bool = True) -> GroupFigures:
    """`latest`, with what it does not know taken from `previous` (see _KEPT_WHEN_UNKNOWN;
    partitions: an empty set is unknown). `relays_known` False: the group has spec.outbox
    but its replicas are not known this time (no Deployment seen): the expected relays
    keep their last figure."""
    if previous is None:
        return latest
    kept = {name: getattr(previous, name) for name in _KEPT_WHEN_UNKNOWN
            if getattr(latest, name) is None}
    if not latest.partitions:
        kept["partitions"] = previous.partitions
    if not relays_known:
        kept["expected_relays"] = previous.expected_relays
    return dataclasses.replace(latest, **kept) if kept else latest


#: (metric name, help, GroupFigures field) of the per-group gauges.
_GROUP_GAUGES = (
    ("kcg_consumergroup_group_sum_lag", "Messages of lag of a group, all partitions.",
     "total_lag"),
    ("kcg_consumergroup_group_max_lag_seconds",
     "Largest time lag of any partition of a group.", "max_lag_seconds"),
    ("kcg_desired_replicas", "Replicas the scaling policy wants.", "desired"),
    ("kcg_current_replicas", "spec.replicas of the consumer Deployment.", "current"),
    ("kcg_consumergroup_partitions", "Partitions of the group's topics (the replica cap).",
     "partition_count"),
    ("kcg_consumergroup_members", "Members of the group, as the broker describes it.",
     "members"),
    ("kcg_consumergroup_max_time_lag_target_seconds",
     "spec.scaling.maxTimeLagSeconds of the group (absent when not set).", "slo_seconds"),
    ("kcg_consumergroup_production_rate",
     "Messages per second produced to the group's partitions, as the policy measured them.",
     "production_rate"),
    ("kcg_consumergroup_replica_rate",
     "Messages per second one replica consumes, as the policy measured it.", "replica_rate"),
    ("kcg_consumergroup_rebalance_compliant",
     "1 when the group's assignor is compliant, 0 when not (absent while unknown).",
     "rebalance_compliant"),
    ("kcg_outbox_expected_relays",
     "Outbox relays that should run for a group with spec.outbox: spec.replicas of its "
     "consumer Deployment, one relay sidecar per pod (absent without spec.outbox).",
     "expected_relays"),
)
_PARTITION_LABELS = [*GROUP_LABELS, "topic", "partition"]


class GroupGauges(Collector):
    """Every group's figures, turned into samples at scrape time. The controller is the
    only writer; the scrape thread reads a copy of the mapping."""

    def __init__(self) -> None:
        self._groups: dict[GroupLabels, GroupFigures] = {}
        self._lock = threading.Lock()

    def update(self, labels: GroupLabels, latest: GroupFigures,
               relays_known: bool = True) -> GroupFigures:
        with self._lock:
            figures = merged(self._groups.get(labels), latest, relays_known)
            self._groups[labels] = figures
        return figures

    def forget(self, labels: GroupLabels) -> None:
        with self._lock:
            self._groups.pop(labels, None)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families()

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily("kcg_consumergroup_group_lag",
                              "Messages of lag of a group on one partition.",
                              labels=_PARTITION_LABELS),
            GaugeMetricFamily("kcg_consumergroup_group_lag_seconds",
                              "Estimated seconds a group is behind on a partition.",
                              labels=_PARTITION_LABELS),
            GaugeMetricFamily("kcg_consumergroup_partition_status",
                              "Burrow's verdict on a partition, as Burrow numbers it: 1 OK, "
                              "2 WARN, 3 ERR, 4 STOP, 5 STALL, 6 REWIND.",
                              labels=_PARTITION_LABELS),
            *(GaugeMetricFamily(name, help_, labels=list(GROUP_LABELS))
              for name, help_, _ in _GROUP_GAUGES),
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            groups = list(self._groups.items())
        lag, seconds, status, *per_group = self._families()
        for labels, figures in groups:
            for p in figures.partitions:
                series = [*labels, p.topic, str(p.partition)]
                lag.add_metric(series, p.lag)
                if p.seconds is not None:
                    seconds.add_metric(series, p.seconds)
                if p.status is not None:
                    status.add_metric(series, p.status)
            for family, (_, _, field_) in zip(per_group, _GROUP_GAUGES, strict=True):
                value = getattr(figures, field_)
                if value is not None:
                    family.add_metric(list(labels), float(value))
        yield lag
        yield seconds
        yield status
        yield from per_group

    def exposition(self) -> str:
        """Every group's samples in Prometheus's text format (0.0.4), written directly.
        The same samples as `collect`, but at 10 000 groups (about 300 000 series)
        building prometheus_client's sample objects and formatting them took longer than
        a scrape may (Prometheus gives up after 10 s by default)."""
        with self._lock:
            groups = list(self._groups.items())
        lag: list[str] = []
        seconds: list[str] = []
        status: list[str] = []
        per_group: list[list[str]] = [[] for _ in _GROUP_GAUGES]
        for labels, figures in groups:
            # Label names in prometheus_client's order (sorted), so the text is the same
            # byte for byte: group, name, namespace, then partition, topic.
            group, name, namespace = (_escape(labels[GROUP_LABELS.index(k)])
                                      for k in ("group", "name", "namespace"))
            base = f'group="{group}",name="{name}",namespace="{namespace}"'
            for p in figures.partitions:
                series = f'{{{base},partition="{p.partition}",topic="{_escape(p.topic)}"}} '
                lag.append(series + _value(p.lag))
                if p.seconds is not None:
                    seconds.append(series + _value(p.seconds))
                if p.status is not None:
                    status.append(series + _value(p.status))
            for lines, (_, _, field_) in zip(per_group, _GROUP_GAUGES, strict=True):
                value = getattr(figures, field_)
                if value is not None:
                    lines.append(f"{{{base}}} {_value(value)}")
        out: list[str] = []
        for family, lines in zip(self._families(), (lag, seconds, status, *per_group),
                                 strict=True):
            help_ = family.documentation.replace("\\", "\\\\").replace("\n", "\\n")
            out.append(f"# HELP {family.name} {help_}\n# TYPE {family.name} gauge\n")
            out.extend(f"{family.name}{line}\n" for line in lines)
        return "".join(out)


def _value(value: float) -> str:
    """A sample's value as prometheus_client writes it."""
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text


def _escape(label_value: str) -> str:
    return label_value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


groups = GroupGauges()
#: The per-group gauges as a prometheus_client registry, for tests and tools; /metrics
#: (`serve`) writes them with `GroupGauges.exposition` after the process's own metrics.
GROUP_REGISTRY = CollectorRegistry()
GROUP_REGISTRY.register(groups)


def serve(port: int, address: str = "0.0.0.0") -> ThreadingHTTPServer:
    """/metrics (any path, as prometheus_client's server): the process's metrics, then
    every group's gauges; text format 0.0.4, which Prometheus takes whatever it asks for."""

    def answer(_path: str) -> Answer:
        body = generate_latest(REGISTRY) + groups.exposition().encode()
        return 200, body, CONTENT_TYPE_PLAIN_0_0_4

    return http_endpoint.serve(answer, address, port, "kcg-metrics")


def forget_group(labels: GroupLabels) -> None:
    """Drop a deleted group's series so dashboards and alerts do not show ghosts."""
    groups.forget(labels)
    for direction in ("up", "down"):
        for reason in SCALE_REASONS:
            with contextlib.suppress(KeyError):
                scale_events.remove(*labels, direction, reason)


api_writes = Counter(
    "kcg_api_writes_total",
    "Writes the controller loop and reconciler made to the Kubernetes API (apply, status, "
    "scale, events).")
leader = Gauge(
    "kcg_operator_leader",
    "1 while this operator replica holds the leader lease (it alone writes), else 0.")
leader_transitions = Counter(
    "kcg_operator_leader_transitions",
    "Times this operator replica became the leader.")
lease_writes = Counter(
    "kcg_operator_lease_writes",
    "Writes to the leader Lease (acquire, renew, release); not counted in kcg_api_writes.")
writes_refused = Counter(
    "kcg_operator_writes_refused",
    "Kubernetes API writes refused before they were sent because this replica does not "
    "lead.")
