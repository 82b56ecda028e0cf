"""The status of a KafkaConsumerGroup: a pure function of what one check observed.

The controller loop (kcg_operator.controller) gathers an :class:`Observed` per group and
check (the broker's snapshot, lag per partition from kcg_operator.scaling.lag, Burrow's
verdicts, the scaling decision, the pods' verdict) and writes what :func:`render_status`
returns when it differs from what it wrote last, and exports what :func:`metric_figures`
returns: the status and the metrics are two views of one Observed. Nothing here does I/O
or keeps state, so every status can be reproduced from its inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kcg_operator.api.models import KafkaConsumerGroup, RebalanceProtocol
from kcg_operator.conditions import condition
from kcg_operator.metrics import STATUS_CODES, GroupFigures, PartitionFigures
from kcg_operator.registry import GroupObject
from kcg_operator.scaling import health
from kcg_operator.scaling import lag as lagmath
from kcg_operator.scaling.collector import GroupSnapshot
from kcg_operator.scaling.lag import PartitionKey, PartitionLag
from kcg_operator.scaling.policy import Decision
from kcg_operator.workload.pod_health import PodHealth

COMPLIANT_ASSIGNOR = "cooperative-sticky"
#: Members listed in status; a group with more shows the first ones.
STATUS_MEMBERS = 50


@dataclass(frozen=True)
class Observed:
    """What one check found for one group."""

    snap: GroupSnapshot
    lags: Mapping[PartitionKey, PartitionLag] = field(default_factory=dict)
    statuses: Mapping[PartitionKey, str] = field(default_factory=dict)  # Burrow's
    decision: Decision | None = None
    current: int | None = None  # the Deployment's replicas after this check
    ready: int | None = None  # its ready replicas; None: no Deployment
    pods: PodHealth | None = None  # None: not listed (no Deployment) or the LIST failed
    pods_error: str | None = None
    # Other KafkaConsumerGroups ("namespace/name") naming the same group on the cluster.
    shared_with: tuple[str, ...] = ()

    @property
    def total_lag(self) -> int:
        return lagmath.total(self.lags)

    @property
    def max_seconds(self) -> float | None:
        known = lagmath.max_seconds(self.lags)
        return None if known is None else round(known, 1)

    @property
    def rebalance_compliant(self) -> bool | None:
        return compliance(self.snap)

    @property
    def group_status(self) -> str:
        return health.group_status(self.statuses.values()) if self.statuses else health.OK


def rebalance_condition(
    kcg: KafkaConsumerGroup, snap: GroupSnapshot, previous: Sequence[Mapping[str, Any]] | None
) -> dict[str, Any]:
    """RebalanceCompliant from what the broker says the group really uses."""
    gen = kcg.metadata.generation
    if not snap.broker_ok:
        return condition("RebalanceCompliant", None, "BrokerUnreachable",
                         f"could not describe group {kcg.group_id}: {snap.error}", gen, previous)
    if snap.group_type == "CONSUMER":
        return condition("RebalanceCompliant", True, "ServerSideAssignment",
                         "group uses the KIP-848 consumer protocol (server-side assignment)",
                         gen, previous)
    if not snap.members:
        return condition("RebalanceCompliant", None, "NoMembers",
                         f"group {kcg.group_id} has no members to check", gen, previous)
    if snap.state != "STABLE":
        # Outside Stable the broker reports no protocol: nothing to judge until it settles.
        return condition("RebalanceCompliant", None, "Rebalancing",
                         f"group {kcg.group_id} is {snap.state}; checked once it is stable",
                         gen, previous)
    if snap.assignor == COMPLIANT_ASSIGNOR:
        return condition("RebalanceCompliant", True, "CooperativeSticky",
                         f"{len(snap.members)} members use cooperative-sticky", gen, previous)
    offenders = ", ".join(f"{m.client_id}@{m.host} ({m.member_id})" for m in snap.members[:10])
    wanted = ("the consumer protocol" if kcg.spec.rebalance_protocol is RebalanceProtocol.CONSUMER
              else "partition.assignment.strategy=cooperative-sticky")
    return condition(
        "RebalanceCompliant", False, "WrongAssignor",
        f"group {kcg.group_id} uses assignor {snap.assignor!r}, not {wanted}; members using "
        f"it: {offenders}. Use the properties file the operator mounts "
        "($KCG_CONSUMER_PROPERTIES) instead of hard-coded client settings.",
        gen, previous)


def group_id_condition(kcg: KafkaConsumerGroup, shared_with: Sequence[str],
                       previous: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    """GroupIdUnique: another object naming this Kafka group on this cluster puts both
    Deployments' consumers in one group (their partitions split, their scaling fights)."""
    gen = kcg.metadata.generation
    if not shared_with:
        return condition("GroupIdUnique", True, "Unique",
                         f"no other KafkaConsumerGroup uses group {kcg.group_id} on "
                         f"{kcg.spec.kafka.bootstrap_servers}", gen, previous)
    return condition(
        "GroupIdUnique", False, "SharedGroupId",
        f"KafkaConsumerGroup {', '.join(sorted(shared_with))} also uses group "
        f"{kcg.group_id} on {kcg.spec.kafka.bootstrap_servers}: both Deployments' consumers "
        "join one group and split its partitions. Recreate one of them with its own "
        "spec.groupId (it is immutable).",
        gen, previous)


def compliance(snap: GroupSnapshot) -> bool | None:
    """Whether the group rebalances the way the operator enforces; None while it cannot
    be told (no answer, no members, or mid-rebalance, when the broker names no protocol)."""
    if not snap.broker_ok:
        return None
    if snap.group_type == "CONSUMER":
        return True
    if not snap.members or snap.state != "STABLE":
        return None
    return snap.assignor == COMPLIANT_ASSIGNOR


def wrong_assignor(snap: GroupSnapshot) -> bool:
    """A stable classic group whose members agreed on an assignor other than ours."""
    return compliance(snap) is False


def outbox_condition(replicas: tuple[int, int] | None, generation: int | None,
                     previous: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    """OutboxReady from the Deployment's ready pods: the relay sidecar's readiness probe
    (connected to PostgreSQL and Kafka) gates each pod's readiness, so the Deployment's
    ready count is enough here; PodsHealthy says why a pod is not ready."""
    if replicas is None:
        return condition("OutboxReady", None, "NoDeployment",
                         "the consumer Deployment is not there yet", generation, previous)
    wanted, ready = replicas
    if wanted == 0:
        return condition("OutboxReady", None, "ScaledToZero",
                         "no replicas, so no relay runs", generation, previous)
    if ready >= wanted:
        return condition("OutboxReady", True, "RelaysReady",
                         f"{ready}/{wanted} pods ready with their outbox relay", generation,
                         previous)
    return condition("OutboxReady", False, "RelaysNotReady",
                     f"{ready}/{wanted} pods ready; a pod is ready only when its outbox relay "
                     "reaches PostgreSQL and Kafka (see the relay's /readyz and logs)",
                     generation, previous)


def pods_condition(verdict: PodHealth | None, error: str | None,
                   replicas: tuple[int, int] | None, generation: int | None,
                   previous: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    """PodsHealthy: False with the pod's own reason (ImagePullBackOff, CrashLoopBackOff,
    ...) when a pod does not run; see kcg_operator.workload.pod_health for the rules."""
    if error is not None:
        return condition("PodsHealthy", None, "PodListFailed",
                         f"could not list the consumer pods: {error}", generation, previous)
    if replicas is None or verdict is None:
        return condition("PodsHealthy", None, "NoDeployment",
                         "the consumer Deployment is not there yet", generation, previous)
    if not verdict.healthy:
        return condition("PodsHealthy", False, verdict.reason, verdict.message, generation,
                         previous)
    wanted = replicas[0]
    if verdict.total == 0 and wanted == 0:
        return condition("PodsHealthy", True, "ScaledToZero", "no replicas, so no pods",
                         generation, previous)
    if verdict.total == 0:
        # No pod to judge: the ReplicaSet could not create one (a quota, an admission
        # policy) or has not yet. Its events say which; the pods cannot.
        return condition("PodsHealthy", None, "NoPods",
                         f"the Deployment wants {wanted} pods and none exists yet; "
                         "`kubectl describe replicaset` shows why", generation, previous)
    return condition("PodsHealthy", True, verdict.reason, verdict.message, generation, previous)


def pods_event(was_unhealthy: bool, verdict: PodHealth) -> tuple[str, str, str] | None:
    """(type, reason, message) of the Event for a change of verdict, None when it holds.
    Only healthy <-> unhealthy counts: the kubelet itself alternates ErrImagePull and
    ImagePullBackOff (or Error and CrashLoopBackOff) every few seconds."""
    if not verdict.healthy and not was_unhealthy:
        return "Warning", "PodsUnhealthy", verdict.message
    if verdict.healthy and was_unhealthy:
        return "Normal", "PodsRecovered", f"the consumer pods recovered: {verdict.message}"
    return None


def _lag_condition(observed: Observed, generation: int | None,
                   previous: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    group = observed.group_status
    seconds = observed.max_seconds
    behind = "time lag unknown" if seconds is None else f"{seconds}s behind"
    bad = sorted(f"{t}[{p}]={s}" for (t, p), s in observed.statuses.items() if s != health.OK)
    return condition(
        "LagHealthy", group == health.OK,
        "LagOK" if group == health.OK else f"Lag{group.title()}",
        f"lag {observed.total_lag} messages, {behind}"
        + (f"; partitions: {', '.join(bad[:12])}" if bad else ""), generation, previous)


def _scaling_condition(kcg: KafkaConsumerGroup, snap: GroupSnapshot,
                       decision: Decision | None, generation: int | None,
                       previous: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    if kcg.spec.scaling is None:
        return condition("Scaling", False, "Disabled",
                         "spec.scaling is not set: replicas follow spec.replicas",
                         generation, previous)
    if decision is None:
        return None
    if decision.paused:
        return condition("Scaling", False, "Paused", decision.reason, generation, previous)
    if snap.broker_ok and snap.missing_topics:
        # The policy held the replicas as on a broker error; say what really happened.
        return condition("Scaling", False, "TopicNotFound",
                         f"topics {', '.join(snap.missing_topics)} do not exist: keeping "
                         f"{decision.desired} replicas", generation, previous)
    if not decision.broker_ok:
        return condition("Scaling", False, "BrokerUnreachable", decision.reason, generation,
                         previous)
    return condition("Scaling", True, "Active", decision.reason, generation, previous)


def metric_figures(kcg: KafkaConsumerGroup, observed: Observed) -> GroupFigures:
    """The group's gauges from the same figures as its status (None: not known this check;
    metrics.merged keeps the last value then)."""
    snap, decision = observed.snap, observed.decision
    partitions = tuple(
        PartitionFigures(topic, partition, p.lag, p.seconds,
                         STATUS_CODES.get(observed.statuses.get((topic, partition), "")))
        for (topic, partition), p in sorted(observed.lags.items()))
    scaling = kcg.spec.scaling
    compliant = observed.rebalance_compliant
    return GroupFigures(
        partitions=partitions,
        total_lag=observed.total_lag if snap.broker_ok else None,
        max_lag_seconds=(observed.max_seconds or 0.0) if snap.broker_ok else None,
        partition_count=snap.partitions if snap.broker_ok else None,
        members=len(snap.members) if snap.broker_ok else None,
        rebalance_compliant=compliant,
        desired=decision.desired if decision is not None else None,
        production_rate=decision.production_rate if decision is not None else None,
        replica_rate=decision.per_replica_rate if decision is not None else None,
        current=observed.current,
        slo_seconds=scaling.max_time_lag_seconds if scaling is not None else None,
        # One relay sidecar per consumer pod; none expected without spec.outbox.
        expected_relays=observed.current if kcg.spec.outbox is not None else None,
    )


def render_status(obj: GroupObject, observed: Observed | None,
                  previous: Sequence[Mapping[str, Any]],
                  last_scale_time: str | None = None) -> dict[str, Any]:
    """The status subresource for one object; ``previous`` are the conditions written last
    (their transition times hold while their status does)."""
    generation = obj.generation
    rec = obj.reconciled
    status: dict[str, Any] = {}
    conditions: list[dict[str, Any]] = []
    kcg = obj.kcg
    if (rec is None or rec.generation != generation or not rec.ok or observed is None
            or kcg is None):
        if rec is not None:
            current = rec.generation == generation
            conditions.append(condition("Ready", rec.ok if current else None, rec.reason,
                                        rec.message, generation, previous))
            status["observedGeneration"] = rec.generation
            if not rec.ok and current:
                status["health"] = rec.reason  # e.g. InvalidSpec in the STATUS column
        status["conditions"] = conditions
        return status

    snap, decision = observed.snap, observed.decision
    replicas = (None if observed.current is None
                else (observed.current, observed.ready or 0))
    status["observedGeneration"] = generation
    if rec.selector:
        status["selector"] = rec.selector
    if snap.auth_failed:
        ready = condition("Ready", False, "KafkaAuthenticationFailed",
                          f"Kafka refused the credentials of spec.kafka.secretRef: {snap.error}",
                          generation, previous)
    elif not snap.broker_ok:
        ready = condition("Ready", False, "KafkaUnreachable",
                          f"Kafka did not answer: {snap.error}", generation, previous)
    elif snap.missing_topics:
        ready = condition("Ready", False, "TopicNotFound",
                          f"topics {', '.join(snap.missing_topics)} do not exist: create "
                          "them or fix spec.topics", generation, previous)
    elif observed.pods is not None and not observed.pods.healthy:
        # The workload is applied but does not run: Ready says so with the pod's reason.
        ready = condition("Ready", False, observed.pods.reason, observed.pods.message,
                          generation, previous)
    else:
        ready = condition("Ready", True, rec.reason, rec.message, generation, previous)
    conditions += [ready,
                   pods_condition(observed.pods, observed.pods_error, replicas, generation,
                                  previous),
                   rebalance_condition(kcg, snap, previous),
                   group_id_condition(kcg, observed.shared_with, previous)]
    if snap.broker_ok:
        status.update(partitions=snap.partitions, totalLag=observed.total_lag,
                      lagStatus=observed.group_status, health=observed.group_status)
        if observed.max_seconds is not None:
            status["maxTimeLagSeconds"] = observed.max_seconds
        conditions.append(_lag_condition(observed, generation, previous))
    else:
        conditions.append(condition("LagHealthy", None, "BrokerUnreachable",
                                    f"no lag measured: {snap.error}", generation, previous))
    if snap.assignor:
        status["assignor"] = snap.assignor
    elif snap.group_type == "CONSUMER":
        status["assignor"] = "server-side"
    status["members"] = [
        {"clientId": m.client_id, "host": m.host, "partitions": m.partitions,
         **({"assignor": snap.assignor} if snap.assignor else {})}
        for m in snap.members[:STATUS_MEMBERS]
    ]
    if observed.current is not None:
        status["replicas"] = observed.current
    if kcg.spec.scaling is None:
        status["desiredReplicas"] = kcg.spec.replicas
    elif decision is not None:
        status["desiredReplicas"] = decision.desired
    scaling = _scaling_condition(kcg, snap, decision, generation, previous)
    if scaling is not None:
        conditions.append(scaling)
    if kcg.spec.outbox is not None:
        conditions.append(outbox_condition(replicas, generation, previous))
    if last_scale_time:
        status["lastScaleTime"] = last_scale_time
    if ready["status"] != "True":
        # The STATUS column names the first problem rather than a lag verdict that
        # says OK while no consumer runs.
        status["health"] = ready["reason"]
    status["conditions"] = conditions
    return status
