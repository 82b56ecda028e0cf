"""Prometheus metrics on /metrics, named in the style of kafka-lag-exporter and kminion."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

GROUP_LABELS = ("namespace", "name", "group")

partition_lag = Gauge(
    "kcg_consumergroup_group_lag", "Messages of lag of a group on one partition.",
    (*GROUP_LABELS, "topic", "partition"))
partition_lag_seconds = Gauge(
    "kcg_consumergroup_group_lag_seconds", "Estimated seconds a group is behind on a partition.",
    (*GROUP_LABELS, "topic", "partition"))
group_total_lag = Gauge(
    "kcg_consumergroup_group_sum_lag", "Messages of lag of a group, all partitions.", GROUP_LABELS)
group_max_lag_seconds = Gauge(
    "kcg_consumergroup_group_max_lag_seconds", "Largest time lag of any partition of a group.",
    GROUP_LABELS)
desired_replicas = Gauge(
    "kcg_desired_replicas", "Replicas the scaling policy wants.", GROUP_LABELS)
current_replicas = Gauge(
    "kcg_current_replicas", "spec.replicas of the consumer Deployment.", GROUP_LABELS)
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
partition_status = Gauge(
    "kcg_consumergroup_partition_status",
    "Burrow's verdict on a partition, as Burrow numbers it: 1 OK, 2 WARN, 3 ERR, 4 STOP, "
    "5 STALL, 6 REWIND.", (*GROUP_LABELS, "topic", "partition"))
group_partitions = Gauge(
    "kcg_consumergroup_partitions", "Partitions of the group's topics (the replica cap).",
    GROUP_LABELS)
group_members = Gauge(
    "kcg_consumergroup_members", "Members of the group, as the broker describes it.",
    GROUP_LABELS)
slo_seconds = Gauge(
    "kcg_consumergroup_max_time_lag_target_seconds",
    "spec.scaling.maxTimeLagSeconds of the group (absent when not set).", GROUP_LABELS)
production_rate = Gauge(
    "kcg_consumergroup_production_rate",
    "Messages per second produced to the group's partitions, as the policy measured them.",
    GROUP_LABELS)
replica_rate = Gauge(
    "kcg_consumergroup_replica_rate",
    "Messages per second one replica consumes, as the policy measured it.", GROUP_LABELS)
rebalance_compliant = Gauge(
    "kcg_consumergroup_rebalance_compliant",
    "1 when the group's assignor is compliant, 0 when not (absent while unknown).",
    GROUP_LABELS)
outbox_expected_relays = Gauge(
    "kcg_outbox_expected_relays",
    "Outbox relays that should run for a group with spec.outbox: spec.replicas of its "
    "consumer Deployment, one relay sidecar per pod (absent without spec.outbox).",
    GROUP_LABELS)
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


def forget_group(namespace: str, name: str, group: str,
                 partitions: Iterable[tuple[str, str]] = ()) -> None:
    """Drop a deleted group's series so dashboards and alerts do not show ghosts."""
    for gauge in (group_total_lag, group_max_lag_seconds, desired_replicas, current_replicas,
                  group_partitions, group_members, slo_seconds, production_rate,
                  replica_rate, rebalance_compliant, outbox_expected_relays):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name, group)
    for direction in ("up", "down"):
        for reason in SCALE_REASONS:
            with contextlib.suppress(KeyError):
                scale_events.remove(namespace, name, group, direction, reason)
    for topic, partition in partitions:
        for series in (partition_lag, partition_lag_seconds, partition_status):
            with contextlib.suppress(KeyError):
                series.remove(namespace, name, group, topic, partition)


def export_expected_relays(namespace: str, name: str, group: str, has_outbox: bool,
                           replicas: int | None) -> None:
    """kcg_outbox_expected_relays of one group: the Deployment's replicas while the group
    has spec.outbox, no series once it has none (its relays are gone on purpose). Unknown
    replicas (no Deployment seen) keep the last figure, as kcg_current_replicas does."""
    if not has_outbox:
        with contextlib.suppress(KeyError):
            outbox_expected_relays.remove(namespace, name, group)
    elif replicas is not None:
        outbox_expected_relays.labels(namespace, name, group).set(replicas)


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
