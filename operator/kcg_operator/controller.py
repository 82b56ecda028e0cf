"""The controller loop: sweep lag for all due groups, decide, scale, and write status.

One thread. Each pass takes the groups whose poll is due (or that changed), sweeps each
Kafka cluster once for all of them (kcg_operator.scaling.collector), then per group:
health and time lag (pure), the scaling decision (pure), the replica patch, one LIST of
the group's pods and their verdict (kcg_operator.workload.pod_health, pure), Events on
transitions, and the status when (and only when) it changed. It is the only writer of
status, so conditions never race.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kcg_operator import metrics
from kcg_operator.api.models import KafkaConsumerGroup, RebalanceProtocol
from kcg_operator.conditions import condition, now_rfc3339
from kcg_operator.kube import Kube
from kcg_operator.registry import Entry, Key, Registry
from kcg_operator.scaling import health
from kcg_operator.scaling.collector import ClusterKey, GroupRequest, GroupSnapshot, LagCollector
from kcg_operator.scaling.health import CommitWindow
from kcg_operator.scaling.policy import Decision, Observation, PartitionKey, decide
from kcg_operator.scaling.timelag import OffsetTimeTable
from kcg_operator.workload.pod_health import DEFAULT_READY_GRACE_SECONDS, PodHealth, judge_pods
from kcg_operator.workload.render import deployment_name

log = logging.getLogger(__name__)
COMPLIANT_ASSIGNOR = "cooperative-sticky"


def rebalance_condition(
    kcg: KafkaConsumerGroup, snap: GroupSnapshot, previous: list[dict[str, Any]] | None
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


def outbox_condition(replicas: tuple[int, int] | None, generation: int | None,
                     previous: list[dict[str, Any]] | None) -> dict[str, Any]:
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
                   previous: list[dict[str, Any]] | None) -> dict[str, Any]:
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


@dataclass(frozen=True)
class Observed:
    """What one sweep found for one group, as the status shows it."""

    snap: GroupSnapshot
    statuses: dict[PartitionKey, str] = field(default_factory=dict)  # Burrow, per partition
    lags: dict[PartitionKey, int] = field(default_factory=dict)  # messages
    lag_seconds: dict[PartitionKey, float] = field(default_factory=dict)
    decision: Decision | None = None
    current: int | None = None  # the Deployment's replicas after this sweep
    pods: PodHealth | None = None  # None: not listed (no Deployment) or the LIST failed
    pods_error: str | None = None


class Controller:
    def __init__(self, kube: Kube, registry: Registry, check_interval_s: float = 15.0,
                 collector: LagCollector | None = None,
                 pod_ready_grace_s: float = DEFAULT_READY_GRACE_SECONDS) -> None:
        self.kube = kube
        self.registry = registry
        self.check_interval_s = check_interval_s
        self.pod_ready_grace_s = pod_ready_grace_s
        self.collector = collector or LagCollector()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kcg-sweep")
        self.last_pass = time.monotonic()  # for the liveness probe

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.pass_once()
            except Exception:  # one bad pass must not end the loop for every group
                log.exception("controller pass failed; retrying")
                stop.wait(1.0)
            wait = min(max(self.registry.next_due() - time.time(), 0.05), 1.0)
            self.registry.wake.wait(wait)
            self.registry.wake.clear()

    def pass_once(self) -> None:
        self.last_pass = time.monotonic()
        due = self.registry.due()
        metrics.groups_watched.set(len(self.registry))
        by_cluster: dict[ClusterKey, list[tuple[Key, Entry]]] = defaultdict(list)
        now = time.time()
        for key, entry in due:
            entry.dirty = False
            kcg = entry.kcg
            scaling = kcg.spec.scaling if kcg else None
            interval = scaling.poll_interval_seconds if scaling else self.check_interval_s
            # Aligned to the interval, so groups with the same interval share one sweep.
            entry.next_poll = (math.floor(now / interval) + 1) * interval
            if entry.reconciled is None:
                continue  # not reconciled by this process yet: keep the status it has
            if kcg is None or entry.cluster is None or not entry.reconciled.ok:
                self._safe(self.write_status, key, entry, None)
                continue
            by_cluster[entry.cluster].append((key, entry))
        list(self._pool.map(lambda item: self._sweep_cluster_safely(*item), by_cluster.items()))

    def _sweep_cluster_safely(self, cluster: ClusterKey,
                              entries: list[tuple[Key, Entry]]) -> None:
        try:
            self._sweep_cluster(cluster, entries)
        except Exception:  # one cluster's trouble never stops the others
            log.exception("sweeping %s failed", cluster.bootstrap_servers)
            for _, entry in entries:
                entry.dirty = True

    def _sweep_cluster(self, cluster: ClusterKey, entries: list[tuple[Key, Entry]]) -> None:
        started = time.monotonic()
        # Objects that name the same group on one cluster share one request for the union
        # of their topics; each then sees only its own topics (for_topics).
        topics: dict[str, set[str]] = defaultdict(set)
        for _, e in entries:
            if e.kcg is not None:
                topics[e.kcg.group_id].update(e.kcg.spec.topics)
        requests = [GroupRequest(g, tuple(sorted(t))) for g, t in topics.items()]
        failed_before = self.collector.requests_failed
        snaps = self.collector.sweep(cluster, requests, auth=entries[0][1].auth)
        label = cluster.bootstrap_servers
        metrics.sweep_duration.labels(label).observe(time.monotonic() - started)
        errors = self.collector.requests_failed - failed_before
        if errors:
            metrics.kafka_request_errors.labels(label).inc(errors)
        for key, entry in entries:
            if entry.kcg is not None:
                snap = snaps[entry.kcg.group_id].for_topics(entry.kcg.spec.topics)
                self._safe(self.evaluate, key, entry, snap)

    def _safe(self, fn: Any, key: Key, entry: Entry, arg: Any) -> None:
        try:
            fn(key, entry, arg)
        except Exception:  # one object's failure never stops the others
            log.exception("handling %s/%s failed", *key)
            entry.dirty = True

    # ------------------------------------------------------------------ one group

    def evaluate(self, key: Key, entry: Entry, snap: GroupSnapshot) -> None:
        kcg = entry.kcg
        assert kcg is not None
        now = snap.time_s
        observed = self._observe_partitions(entry, snap)
        current, ready = entry.replicas or (None, None)
        decision: Decision | None = None
        if kcg.spec.scaling is not None and current is not None:
            obs = Observation(
                time_s=now,
                end_offsets={tp: end for tp, (end, _) in snap.offsets.items()},
                committed={tp: (0 if c is None and entry.starts_from_earliest else c)
                           for tp, (_, c) in snap.offsets.items()},
                replicas=current, partitions=snap.partitions or None,
                broker_ok=snap.broker_ok and not snap.missing_topics,
                statuses=observed.statuses, ready_replicas=ready,
                assignment={m.member_id: list(m.assigned) for m in snap.members} or None,
            )
            decision, entry.policy = decide(obs, kcg.spec.scaling, entry.policy)
            if decision.should_patch and decision.desired != current:
                self._scale(key, entry, kcg, current, decision)
                current = decision.desired
        self._transition_events(entry, kcg, snap)
        pods, pods_error = self._observe_pods(key, entry)
        self.write_status(key, entry, replace(observed, decision=decision, current=current,
                                              pods=pods, pods_error=pods_error))

    def _observe_pods(self, key: Key, entry: Entry) -> tuple[PodHealth | None, str | None]:
        """One LIST of the group's pods by the Deployment's selector, the verdict on them,
        and an Event when it turns unhealthy or recovers."""
        rec = entry.reconciled
        if entry.replicas is None or rec is None or not rec.selector:
            return None, None  # no Deployment, so no pods to ask about
        try:
            pods = self.kube.list_pods(key[0], rec.selector)
        except (ApiException, HTTPError, OSError) as exc:
            # The rest of the status still holds; say it in PodsHealthy, log it once.
            error = (f"{exc.status} {exc.reason}" if isinstance(exc, ApiException)
                     else f"{type(exc).__name__}: {exc}")
            if entry.last_events.get("pods-list") != error:
                log.warning("%s/%s: listing pods (%s) failed: %s", *key, rec.selector, error)
            entry.last_events["pods-list"] = error
            return None, error
        entry.last_events["pods-list"] = ""
        verdict = judge_pods(pods, time.time(), self.pod_ready_grace_s)
        event = pods_event(bool(entry.last_events.get("pods")), verdict)
        if event is not None:
            self.kube.event(entry.body, *event)
        entry.last_events["pods"] = "" if verdict.healthy else verdict.reason
        return verdict, None

    def _observe_partitions(
        self, entry: Entry, snap: GroupSnapshot
    ) -> Observed:
        observed = Observed(snap)
        if not snap.broker_ok:
            return observed
        kcg = entry.kcg
        assert kcg is not None
        # Assignments are only known in a stable group; mid-rebalance, assume owners are alive.
        owned = ({tp for m in snap.members for tp in m.assigned} if snap.state == "STABLE"
                 else None)
        labels = (kcg.metadata.namespace or "", kcg.metadata.name, kcg.group_id)
        for tp, (end, committed) in snap.offsets.items():
            window = entry.windows.setdefault(tp, CommitWindow())
            window.record(committed, end, snap.time_s,
                          owner_alive=owned is None or tp in owned)
            # A partition never committed is consumed from where auto.offset.reset says.
            start = 0 if entry.starts_from_earliest else end
            lag = max(end - (start if committed is None else committed), 0)
            observed.lags[tp] = lag
            observed.statuses[tp] = window.status(lag, snap.time_s)
            table = entry.timelag.setdefault(tp, OffsetTimeTable())
            table.add(end, snap.time_s)
            seconds = observed.lag_seconds[tp] = table.time_lag(committed, snap.time_s) or 0.0
            entry.partition_series.add((tp[0], str(tp[1])))
            metrics.partition_lag.labels(*labels, tp[0], str(tp[1])).set(lag)
            metrics.partition_lag_seconds.labels(*labels, tp[0], str(tp[1])).set(seconds)
        return observed

    def _scale(self, key: Key, entry: Entry, kcg: KafkaConsumerGroup, current: int,
               decision: Decision) -> None:
        with entry.lock:
            self.kube.scale_deployment(key[0], deployment_name(kcg), decision.desired)
        entry.replicas = (decision.desired, entry.replicas[1] if entry.replicas else 0)
        entry.last_scale_time = now_rfc3339()
        direction = "up" if decision.desired > current else "down"
        metrics.scale_events.labels(key[0], key[1], kcg.group_id, direction).inc()
        self.kube.event(entry.body, "Normal", "Scaled", decision.reason)
        log.info("%s/%s: %s", *key, decision.reason)

    def _transition_events(self, entry: Entry, kcg: KafkaConsumerGroup,
                           snap: GroupSnapshot) -> None:
        """Warnings once per transition, not once per sweep."""
        checks = {
            "broker": ("BrokerUnreachable",
                       f"Kafka at {kcg.spec.kafka.bootstrap_servers} did not answer: "
                       f"{snap.error}; replicas are left as they are") if not snap.broker_ok
            else None,
            "topics": ("TopicNotFound",
                       f"topics {', '.join(snap.missing_topics)} do not exist on "
                       f"{kcg.spec.kafka.bootstrap_servers}: create them or fix spec.topics")
            if snap.missing_topics else None,
            "assignor": ("RebalanceNonCompliant",
                         f"group {kcg.group_id} uses assignor {snap.assignor!r}")
            if snap.broker_ok and snap.group_type != "CONSUMER" and snap.members
            and snap.state == "STABLE" and snap.assignor != COMPLIANT_ASSIGNOR else None,
        }
        for name, problem in checks.items():
            reason = problem[0] if problem else ""
            if entry.last_events.get(name, "") != reason and problem is not None:
                self.kube.event(entry.body, "Warning", problem[0], problem[1])
            entry.last_events[name] = reason

    # ------------------------------------------------------------------ status

    def write_status(self, key: Key, entry: Entry, observed: Observed | None) -> None:
        status = self.render_status(entry, observed)
        if status == entry.last_status:
            return
        self.kube.apply_status(key[0], key[1], status)
        entry.last_status = status

    def render_status(self, entry: Entry, observed: Observed | None) -> dict[str, Any]:
        body = entry.body
        previous = (body.get("status") or {}).get("conditions") or []
        if entry.last_status is not None:
            previous = entry.last_status.get("conditions", previous)
        generation = body.get("metadata", {}).get("generation")
        rec = entry.reconciled
        status: dict[str, Any] = {}
        conditions: list[dict[str, Any]] = []
        if rec is None or rec.generation != generation or not rec.ok or observed is None:
            if rec is not None:
                conditions.append(condition("Ready", rec.ok if rec.generation == generation
                                            else None, rec.reason, rec.message, generation,
                                            previous))
                status["observedGeneration"] = rec.generation
                if not rec.ok and rec.generation == generation:
                    status["health"] = rec.reason  # e.g. InvalidSpec in the STATUS column
            status["conditions"] = conditions
            return status

        snap, statuses, lag_seconds = observed.snap, observed.statuses, observed.lag_seconds
        decision, current = observed.decision, observed.current
        kcg = entry.kcg
        assert kcg is not None
        status["observedGeneration"] = generation
        if rec.selector:
            status["selector"] = rec.selector
        if not snap.broker_ok:
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
        conditions.append(ready)
        conditions.append(pods_condition(observed.pods, observed.pods_error, entry.replicas,
                                         generation, previous))
        conditions.append(rebalance_condition(kcg, snap, previous))
        if snap.broker_ok:
            group = health.group_status(statuses.values()) if statuses else "OK"
            total = decision.total_lag if decision else sum(observed.lags.values())
            max_seconds = round(max(lag_seconds.values(), default=0.0), 1)
            status.update(partitions=snap.partitions, totalLag=total, lagStatus=group,
                          maxTimeLagSeconds=max_seconds)
            status["health"] = group
            bad = sorted(f"{t}[{p}]={s}" for (t, p), s in statuses.items() if s != "OK")
            conditions.append(condition(
                "LagHealthy", group == "OK", "LagOK" if group == "OK" else f"Lag{group.title()}",
                f"lag {total} messages, {max_seconds}s behind" + (
                    f"; partitions: {', '.join(bad[:12])}" if bad else ""), generation, previous))
            labels = (key_ns(kcg), kcg.metadata.name, kcg.group_id)
            metrics.group_total_lag.labels(*labels).set(total)
            metrics.group_max_lag_seconds.labels(*labels).set(max_seconds)
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
            for m in snap.members[:50]
        ]
        if current is not None:
            status["replicas"] = current
        scaling = kcg.spec.scaling
        if scaling is None:
            status["desiredReplicas"] = kcg.spec.replicas
            conditions.append(condition("Scaling", False, "Disabled",
                                        "spec.scaling is not set: replicas follow spec.replicas",
                                        generation, previous))
        elif decision is not None:
            status["desiredReplicas"] = decision.desired
            if decision.paused:
                conditions.append(condition("Scaling", False, "Paused", decision.reason,
                                            generation, previous))
            elif not decision.broker_ok:
                conditions.append(condition("Scaling", False, "BrokerUnreachable",
                                            decision.reason, generation, previous))
            else:
                conditions.append(condition("Scaling", True, "Active", decision.reason,
                                            generation, previous))
            labels = (key_ns(kcg), kcg.metadata.name, kcg.group_id)
            metrics.desired_replicas.labels(*labels).set(decision.desired)
        if current is not None:
            metrics.current_replicas.labels(key_ns(kcg), kcg.metadata.name, kcg.group_id).set(
                current)
        if kcg.spec.outbox is not None:
            conditions.append(outbox_condition(entry.replicas, generation, previous))
        if entry.last_scale_time:
            status["lastScaleTime"] = entry.last_scale_time
        if ready["status"] != "True":
            # The STATUS column names the first problem rather than a lag verdict that
            # says OK while no consumer runs.
            status["health"] = ready["reason"]
        status["conditions"] = conditions
        return status


def key_ns(kcg: KafkaConsumerGroup) -> str:
    return kcg.metadata.namespace or ""
