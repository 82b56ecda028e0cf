"""The controller loop: sweep lag for all due groups, decide, scale, and write status.

One loop. Each pass first reconciles the workloads that need it (kcg_operator.reconciler:
a new generation, a due retry, a Deployment or ConfigMap deleted by hand, a new leader),
then takes the groups whose check is due (or that changed), sweeps each
Kafka cluster once for all of them (kcg_operator.scaling.collector), then per group: lag
per partition (kcg_operator.scaling.lag), Burrow's verdicts, the scaling decision
(kcg_operator.scaling.policy), the replica patch, one LIST of the group's pods and their
verdict (kcg_operator.workload.pod_health), Events on transitions, the metrics, and the
status (kcg_operator.status) when (and only when) it changed. It is the only writer of
the workload, status, replicas and metrics, so none of them race.

With leader election (kcg_operator.leader) a standby replica runs the same loop, warm: it
reads and renders every workload, sweeps lag and keeps every group's policy state, but
writes nothing and exports no group metrics; ``leading`` (the Kube client's write gate)
decides at every step, so a promotion takes effect at the next pass.

The controller owns what it learns about each group (:class:`GroupState`); what the kopf
handlers know of the objects it reads from the registry, never writes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kcg_operator import metrics, reconciler
from kcg_operator.api.models import KafkaConsumerGroup
from kcg_operator.conditions import now_rfc3339
from kcg_operator.kube import Kube
from kcg_operator.registry import DeploymentReplicas, GroupObject, Key, Reconciled, Registry
from kcg_operator.scaling import lag as lagmath
from kcg_operator.scaling.collector import ClusterKey, GroupRequest, GroupSnapshot, LagCollector
from kcg_operator.scaling.health import CommitWindow
from kcg_operator.scaling.kafka_wire import WireLagCollector
from kcg_operator.scaling.lag import PartitionKey
from kcg_operator.scaling.policy import Decision, Observation, PolicyState, decide
from kcg_operator.scaling.timelag import EndOffsetHistory, Point
from kcg_operator.status import (
    Observed,
    metric_figures,
    pods_event,
    render_status,
    wrong_assignor,
)
from kcg_operator.workload.pod_health import (
    DEFAULT_READY_GRACE_SECONDS,
    PodHealth,
    judge_by_deployment,
    judge_pods,
)
from kcg_operator.workload.render import deployment_name
from kcg_operator.written_status import WrittenStatus

log = logging.getLogger(__name__)
#: Clusters swept at once. Each cluster has at most one sweep in flight and the loop never
#: waits for it, so a cluster that does not answer delays only its own groups.
SWEEP_WORKERS = 16
#: Workloads read and applied at once (Secret reads, server-side applies): each waits on
#: the apiserver most of its time. 3 000 new objects were all Ready after 109 s with 4,
#: 91-97 s with 12 (three runs).
RECONCILE_WORKERS = 12
#: Groups evaluated at once after a sweep (scale, pod LIST, status write: API round trips).
EVALUATE_WORKERS = 8
#: How long a patched replica count stands in for a Deployment watch that has not shown it.
STALE_WATCH_SECONDS = 60.0
#: Workloads reconciled per pass at most.
RECONCILE_BATCH = 200

Stamps = Mapping[tuple[PartitionKey, int], float]
#: The (end offset, time) tables of a group's partitions, as lag.partition_lags takes them.
Histories = dict[PartitionKey, tuple[Point, ...]]


@dataclass(slots=True)
class GroupState:
    """What the controller remembers of one group between checks; only it touches this."""

    next_poll: float = 0.0
    policy: PolicyState = field(default_factory=PolicyState)
    windows: dict[PartitionKey, CommitWindow] = field(default_factory=dict)  # Burrow
    written: WrittenStatus | None = None  # the status this replica wrote last
    last_events: dict[str, str] = field(default_factory=dict)
    last_scale_time: str | None = None
    metric_labels: tuple[str, str, str] | None = None
    # Replicas this controller set, until the Deployment's watch has caught up with them.
    scaled_to: int | None = None
    scaled_at: float = 0.0
    scaled_from_generation: int | None = None  # the Deployment's generation before the patch
    # The workload: the generation last prepared, whether this replica applied it, and
    # when a refused reconcile that may heal is tried again (0: not waiting).
    workload_generation: Any = None
    applied: bool = False
    retry_at: float = 0.0
    secret_checked: float = 0.0  # when its spec.kafka.secretRef was last read for rotation
    force_apply: bool = False  # a ConfigMap or Deployment was deleted: apply even if unchanged


#: Longest Event message the apiserver keeps whole (kube.event cuts at this length).
EVENT_MESSAGE_LIMIT = 1024


def scale_event_message(decision: Decision, seconds_behind: float | None = None) -> str:
    """The Scaled Event: the policy's reason, then every figure the decision used as
    key=value, so `kubectl describe kcg` shows the numbers behind each scale (and a script
    can read them). The figures come first when cut, since the reason restates them.

    ``seconds_behind`` is the check's largest seconds behind from lag.partition_lags (the
    number the status and metrics show); without it, the decision's own estimate."""

    def rate(value: float | None) -> str:
        return "unknown" if value is None else f"{value:.1f}/s"

    seconds = decision.max_time_lag_seconds if seconds_behind is None else seconds_behind
    figures = (
        f"lag={decision.total_lag} "
        f"secondsBehind={'unknown' if seconds is None else f'{seconds:.1f}'} "
        f"productionRate={rate(decision.production_rate)} "
        f"perReplicaRate={rate(decision.per_replica_rate)} "
        f"replicas={decision.current}->{decision.desired} "
        f"recommended={decision.recommendation} partitions={decision.partitions} "
        f"lagStatus={decision.lag_status}"
    )
    room = EVENT_MESSAGE_LIMIT - len(figures) - len(" [] ")
    reason = decision.reason
    if len(reason) > room:
        reason = reason[: room - 1] + "…"
    return f"{reason} [{figures}]"


class Controller:
    def __init__(self, kube: Kube, registry: Registry, check_interval_s: float = 15.0,
                 collector: LagCollector | None = None,
                 pod_ready_grace_s: float = DEFAULT_READY_GRACE_SECONDS,
                 relay_image: str = reconciler.DEFAULT_RELAY_IMAGE) -> None:
        self.kube = kube
        self.registry = registry
        self.relay_image = relay_image
        self.check_interval_s = check_interval_s
        self.pod_ready_grace_s = pod_ready_grace_s
        # librdkafka's admin client can hang or abort the process: it runs in a child.
        self.collector = collector or WireLagCollector()
        self.states: dict[Key, GroupState] = {}
        self._pool = ThreadPoolExecutor(max_workers=SWEEP_WORKERS,
                                        thread_name_prefix="kcg-sweep")
        self._reconcilers = ThreadPoolExecutor(max_workers=RECONCILE_WORKERS,
                                               thread_name_prefix="kcg-reconcile")
        self._evaluators = ThreadPoolExecutor(max_workers=EVALUATE_WORKERS,
                                              thread_name_prefix="kcg-evaluate")
        # The sweep in flight per cluster, and the groups it holds (only its thread touches
        # their state until it is done).
        self._inflight: dict[ClusterKey, tuple[Future[None], frozenset[Key]]] = {}
        self._deferred: set[Key] = set()  # changed while their cluster's sweep was out
        # Each cluster's (end offset, time) tables, shared by the groups on its partitions.
        self._histories: dict[ClusterKey | None, EndOffsetHistory[PartitionKey]] = {}
        self._histories_lock = threading.Lock()
        self.last_pass = time.monotonic()  # for the liveness probe

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.pass_once()
            except Exception:  # one bad pass must not end the loop for every group
                log.exception("controller pass failed; retrying")
                stop.wait(1.0)
            next_due = min((s.next_poll for s in self.states.values()),
                           default=time.time() + 1.0)
            self.registry.wake.wait(min(max(next_due - time.time(), 0.05), 1.0))
            self.registry.wake.clear()

    def leading(self) -> bool:
        """Whether this replica may write (always, without leader election)."""
        return self.kube.may_write()

    def promoted(self) -> None:
        """This replica just became the leader: look at every object now."""
        for key in self.registry.objects():
            self.registry.mark_dirty(key)

    def demoted(self) -> None:
        """This replica no longer leads: its group metrics would go stale beside the new
        leader's, so they go (a standby exports none)."""
        for state in list(self.states.values()):
            self._forget(state)

    def pass_once(self) -> None:
        self.last_pass = time.monotonic()
        if self.leading():
            self.kube.retry_events()
        objects = self.registry.objects()
        for gone in set(self.states) - set(objects):
            self._forget(self.states.pop(gone))
        self._forget_histories({obj.cluster for obj in objects.values()})
        busy: set[Key] = set()
        for cluster, (future, keys) in list(self._inflight.items()):
            if future.done():
                del self._inflight[cluster]
            else:
                busy |= keys
        secrets: dict[Key, Mapping[str, str] | None] = {}  # each Secret read once a pass
        due = [(key, obj) for key, obj in objects.items()
               if key not in busy and (self._workload_due(key, obj)
                                       or self._secret_rotated(key, obj, secrets))]
        if due:
            # A bounded batch per pass: with thousands due at start-up, sweeps and status
            # of the groups already reconciled go on between batches.
            list(self._reconcilers.map(lambda item: self._safe(self.reconcile_workload, *item),
                                       due[:RECONCILE_BATCH]))
            if len(due) > RECONCILE_BATCH:
                self.registry.wake.set()
            objects = self.registry.objects()
        metrics.groups_watched.set(len(objects))
        dirty = self.registry.take_dirty() | self._deferred
        self._deferred = set()
        by_cluster: dict[ClusterKey, list[tuple[Key, GroupObject]]] = defaultdict(list)
        now = time.time()
        for key, obj in objects.items():
            if obj.reconciled is None:
                continue  # not reconciled by this process yet: keep the status it has
            if key in busy or obj.cluster in self._inflight:
                # Its cluster's sweep is still out: looked at when it is back.
                if key in dirty:
                    self._deferred.add(key)
                continue
            state = self.states.setdefault(key, GroupState())
            if key not in dirty and state.next_poll > now:
                continue
            scaling = obj.kcg.spec.scaling if obj.kcg else None
            interval = scaling.poll_interval_seconds if scaling else self.check_interval_s
            # Aligned to the interval, so groups with the same interval share one sweep.
            state.next_poll = (math.floor(now / interval) + 1) * interval
            if obj.kcg is None or obj.cluster is None or not obj.reconciled.ok:
                self._safe(self.write_status, key, obj, None)
                continue
            by_cluster[obj.cluster].append((key, obj))
        for cluster, groups in by_cluster.items():
            future = self._pool.submit(self._sweep_cluster_safely, cluster, groups)
            self._inflight[cluster] = (future, frozenset(key for key, _ in groups))
            future.add_done_callback(lambda _: self.registry.wake.set())

    def _note_offsets(self, cluster: ClusterKey | None,
                      snaps: Iterable[GroupSnapshot]) -> None:
        """One sweep's end offsets into the cluster's shared (end offset, time) tables,
        once per partition however many groups read it (a repeat adds nothing)."""
        answered = [snap for snap in snaps if snap.broker_ok]
        if not answered:
            return
        ends = {tp: end for snap in answered for tp, (end, _) in snap.offsets.items()}
        with self._histories_lock:
            history = self._histories.setdefault(cluster, EndOffsetHistory())
            # A sweep's snapshots share its time (the collector's, taken once per sweep).
            history.feed(answered[0].time_s, ends, seen_at=time.monotonic())

    def _history_of(self, cluster: ClusterKey | None, snap: GroupSnapshot) -> Histories:
        """The group's partitions' tables, as lag.partition_lags takes them."""
        with self._histories_lock:
            history = self._histories.get(cluster)
            return history.of(snap.offsets) if history is not None else {}

    def _forget_histories(self, clusters: set[ClusterKey | None]) -> None:
        """Tables of clusters no group names any more, and of partitions nobody swept for
        a while, go."""
        now = time.monotonic()
        with self._histories_lock:
            for cluster in set(self._histories) - clusters:
                del self._histories[cluster]
            for history in self._histories.values():
                history.forget_idle(now)

    def wait_for_sweeps(self, timeout: float | None = None) -> None:
        """Until the sweeps in flight are done (for tests and a clean stop)."""
        futures = [future for future, _ in self._inflight.values()]
        concurrent.futures.wait(futures, timeout=timeout)

    def _sweep_cluster_safely(self, cluster: ClusterKey,
                              groups: list[tuple[Key, GroupObject]]) -> None:
        try:
            self._sweep_cluster(cluster, groups)
        except Exception:  # one cluster's trouble never stops the others
            log.exception("sweeping %s failed", cluster.bootstrap_servers)
            for key, _ in groups:
                self.registry.mark_dirty(key)

    def _sweep_cluster(self, cluster: ClusterKey, groups: list[tuple[Key, GroupObject]]) -> None:
        started = time.monotonic()
        # Objects that name the same group on one cluster share one request for the union
        # of their topics; each then sees only its own topics (for_topics).
        topics: dict[str, set[str]] = defaultdict(set)
        for _, obj in groups:
            assert obj.kcg is not None
            topics[obj.kcg.group_id].update(obj.kcg.spec.topics)
        requests = [GroupRequest(g, tuple(sorted(t))) for g, t in topics.items()]
        failed_before = self.collector.requests_failed
        auth = groups[0][1].auth
        snaps = self.collector.sweep(cluster, requests, auth=auth)
        metrics.kafka_up.labels(cluster.bootstrap_servers).set(
            int(any(s.broker_ok for s in snaps.values())))
        self._note_offsets(cluster, snaps.values())
        mine: list[tuple[Key, GroupObject, GroupSnapshot, Histories]] = []
        wanted: list[tuple[PartitionKey, int]] = []
        for key, obj in groups:
            assert obj.kcg is not None
            snap = snaps[obj.kcg.group_id].for_topics(obj.kcg.spec.topics)
            history = self._history_of(cluster, snap) if snap.broker_ok else {}
            mine.append((key, obj, snap, history))
            if snap.broker_ok:
                wanted += lagmath.positions_to_read(
                    snap.offsets, log_starts=snap.log_starts,
                    from_earliest=obj.starts_from_earliest, history=history)
        stamps = self.collector.produced_at(cluster, wanted, auth=auth) if wanted else {}
        label = cluster.bootstrap_servers
        metrics.sweep_duration.labels(label).observe(time.monotonic() - started)
        errors = self.collector.requests_failed - failed_before
        if errors:
            metrics.kafka_request_errors.labels(label).inc(errors)
        sharing: dict[str, list[Key]] = defaultdict(list)
        for key, obj in groups:
            assert obj.kcg is not None
            sharing[obj.kcg.group_id].append(key)
        def evaluate(item: tuple[Key, GroupObject, GroupSnapshot, Histories]) -> None:
            key, obj, snap, history = item
            assert obj.kcg is not None
            others = tuple(f"{ns}/{name}" for ns, name in sharing[obj.kcg.group_id]
                           if (ns, name) != key)
            self._safe(self.evaluate, key, obj, snap, stamps, others, history)

        # Groups are independent once swept: their decisions, scales and status writes go
        # out in parallel (one API round trip each; thousands of groups on one cluster).
        list(self._evaluators.map(evaluate, mine))

    def _safe(self, fn: Any, key: Key, *args: Any) -> None:
        try:
            fn(key, *args)
        except Exception:  # one object's failure never stops the others
            log.exception("handling %s/%s failed", *key)
            self.registry.mark_dirty(key)

    # ------------------------------------------------------------------ the workload

    def _workload_due(self, key: Key, obj: GroupObject) -> bool:
        if (obj.body.get("metadata") or {}).get("deletionTimestamp"):
            return False  # being deleted: its owned objects go with it
        state = self.states.setdefault(key, GroupState())
        if state.workload_generation != obj.generation:
            return True
        if state.retry_at:
            return time.time() >= state.retry_at
        if not self.leading():
            return False
        # Promoted (prepared, never applied here), or its Deployment/ConfigMap was deleted.
        if obj.reconciled is not None and obj.reconciled.ok and self.registry.take_missing(key):
            state.force_apply = True
        return not state.applied or state.force_apply

    def _secret_rotated(self, key: Key, obj: GroupObject,
                        read: dict[Key, Mapping[str, str] | None]) -> bool:
        """Whether the Secret named by spec.kafka.secretRef changed since the workload was
        prepared: read once per check interval, so a rotation reaches the operator's own
        Kafka client (its key is the credentials' digest) within one interval."""
        ref = obj.kcg.spec.kafka.secret_ref if obj.kcg is not None else None
        state = self.states.get(key)
        if ref is None or state is None or obj.cluster is None:
            return False
        now = time.time()
        if now < state.secret_checked + self.check_interval_s:
            return False
        state.secret_checked = now
        name = (key[0], ref.name)
        if name not in read:
            read[name] = self.kube.secret_data(*name)
        assert obj.kcg is not None
        return ClusterKey.of(obj.kcg.spec.kafka.bootstrap_servers, read[name]) != obj.cluster

    def reconcile_workload(self, key: Key, obj: GroupObject) -> None:
        """Read and render the workload; the leader also applies it."""
        state = self.states.setdefault(key, GroupState())
        body = obj.body
        state.workload_generation = obj.generation
        state.retry_at, state.applied = 0.0, False
        state.secret_checked = time.time()
        prepared = reconciler.prepare(self.kube, key, obj, self.relay_image)
        if isinstance(prepared, reconciler.Prepared) and self.leading():
            unchanged = (None if state.force_apply
                         else reconciler.up_to_date(self.registry, key, body, prepared))
            outcome = unchanged or reconciler.apply(self.kube, self.registry, key, body,
                                                    prepared)
            if isinstance(outcome, Reconciled):
                reconciler.record(self.registry, key, body, prepared, outcome)
                state.applied, state.force_apply = True, False
                state.last_events["workload"] = ""
                if unchanged is None:
                    self.kube.event(body, "Normal", "Applied", outcome.message)
                return
            refused = outcome
        elif isinstance(prepared, reconciler.Prepared):
            # Standby: what a sweep needs, so lag and policy state are warm at promotion.
            reconciler.record(self.registry, key, body, prepared, Reconciled(
                state.workload_generation, True, "Standby", "prepared by a standby replica"))
            return
        else:
            refused = prepared
        reconciler.record(self.registry, key, body, refused)
        if refused.retry:
            state.retry_at = time.time() + reconciler.RETRY_SECONDS
        outcome_ = refused.outcome
        if self.leading() and state.last_events.get("workload") != outcome_.reason:
            self.kube.event(body, "Warning", outcome_.reason, outcome_.message)
            log.warning("%s/%s: %s", *key, outcome_.message)
        state.last_events["workload"] = outcome_.reason

    # ------------------------------------------------------------------ one group

    def evaluate(self, key: Key, obj: GroupObject, snap: GroupSnapshot,
                 stamps: Stamps | None = None, shared_with: tuple[str, ...] = (),
                 history: Histories | None = None) -> None:
        """One group's sweep result: lag, verdicts, decision, scale, pods, status.
        `history` is the group's (end offset, time) tables the sweep read (read here when
        not given)."""
        kcg = obj.kcg
        assert kcg is not None
        state = self.states.setdefault(key, GroupState())
        if history is None:
            history = self._history_of(obj.cluster, snap) if snap.broker_ok else {}
        lags, statuses = self._observe_partitions(state, snap, stamps or {}, history,
                                                  obj.starts_from_earliest)
        seen = self.registry.deployment(key)  # one read: replicas and pods agree
        replicas = self._replicas(state, seen)
        current, ready = replicas if replicas is not None else (None, None)
        decision: Decision | None = None
        if kcg.spec.scaling is not None and current is not None:
            # The policy reads lag and seconds behind from these lags: the status's.
            obs = Observation.from_lags(
                snap.time_s, lags, current, partitions=snap.partitions or None,
                broker_ok=snap.broker_ok and not snap.missing_topics,
                statuses=statuses, ready_replicas=ready,
                assignment={m.member_id: list(m.assigned) for m in snap.members} or None,
            )
            decision, state.policy = decide(obs, kcg.spec.scaling, state.policy)
            if not self.leading():
                # A standby keeps its policy state warm and writes nothing. The replicas the
                # leader set count as a recommendation of its window: its own may be lower
                # (it saw less), and after a takeover its first decision must not scale
                # below them before a whole stabilization window.
                state.policy = dataclasses.replace(state.policy, recommendations=(
                    *state.policy.recommendations, (snap.time_s, current)))
                return
            if decision.should_patch and decision.desired != current:
                self._scale(key, obj, state, current, decision, lagmath.max_seconds(lags))
                current = decision.desired
        if not self.leading():
            return
        self._transition_events(state, obj, snap, shared_with)
        pods, pods_error = self._observe_pods(key, obj, state, seen)
        observed = Observed(snap, lags, statuses, decision, current, ready, pods, pods_error,
                            shared_with)
        self._export_metrics(state, kcg, observed)
        self.write_status(key, obj, observed)

    def _observe_partitions(
        self, state: GroupState, snap: GroupSnapshot, stamps: Stamps, history: Histories,
        from_earliest: bool,
    ) -> tuple[dict[PartitionKey, lagmath.PartitionLag], dict[PartitionKey, str]]:
        """Lag per partition (the one computation everything reads) and Burrow's verdicts."""
        if not snap.broker_ok:
            return {}, {}
        lags = lagmath.partition_lags(
            snap.offsets, now_s=snap.time_s, log_starts=snap.log_starts,
            from_earliest=from_earliest, history=history, produced_at=stamps)
        # Assignments are only known in a stable group; mid-rebalance, assume owners are alive.
        owned = snap.owned_partitions()
        statuses: dict[PartitionKey, str] = {}
        for tp, p in lags.items():
            window = state.windows.setdefault(tp, CommitWindow())
            window.record(p.committed, p.end, snap.time_s,
                          owner_alive=owned is None or tp in owned)
            statuses[tp] = window.status(p.lag, snap.time_s)
        return lags, statuses

    @staticmethod
    def _replicas(state: GroupState, seen: DeploymentReplicas | None) -> tuple[int, int] | None:
        """(spec.replicas, ready) of the Deployment: the watch's, unless it has not yet
        shown the patch this controller made (then the patched count)."""
        if seen is None:
            return None
        if state.scaled_to is not None:
            if seen.generation is not None and state.scaled_from_generation is not None:
                # A watch event can arrive after the patch yet predate it: only a newer
                # generation shows the patch (or a later change by someone else). A watch
                # that never shows it is given up after a while, not waited for forever.
                stale = (seen.generation <= state.scaled_from_generation
                         and time.monotonic() - state.scaled_at < STALE_WATCH_SECONDS)
            else:
                stale = seen.seen_at < state.scaled_at
            if stale:
                return state.scaled_to, seen.ready
        state.scaled_to = None
        return seen.wanted, seen.ready

    def _observe_pods(self, key: Key, obj: GroupObject, state: GroupState,
                      seen: DeploymentReplicas | None) -> tuple[PodHealth | None, str | None]:
        """One LIST of the group's pods by the Deployment's selector, the verdict on them,
        and an Event when it turns unhealthy or recovers."""
        rec = obj.reconciled
        if seen is None or rec is None or not rec.selector:
            return None, None  # no Deployment, so no pods to ask about
        settled = judge_by_deployment(seen.wanted, seen.ready, seen.pods)
        if settled:
            # All its pods ready, by the Deployment's own counts: no LIST (at 10 000
            # groups, one per group and check interval would load the apiserver most).
            return self._pods_verdict(obj, state, settled), None
        try:
            pods = self.kube.list_pods(key[0], rec.selector)
        except (ApiException, HTTPError, OSError) as exc:
            # The rest of the status still holds; say it in PodsHealthy, log it once.
            error = (f"{exc.status} {exc.reason}" if isinstance(exc, ApiException)
                     else f"{type(exc).__name__}: {exc}")
            if state.last_events.get("pods-list") != error:
                log.warning("%s/%s: listing pods (%s) failed: %s", *key, rec.selector, error)
            state.last_events["pods-list"] = error
            return None, error
        state.last_events["pods-list"] = ""
        verdict = judge_pods(pods, time.time(), self.pod_ready_grace_s)
        return self._pods_verdict(obj, state, verdict), None

    def _pods_verdict(self, obj: GroupObject, state: GroupState,
                      verdict: PodHealth) -> PodHealth:
        """An Event when the pods turn unhealthy or recover."""
        event = pods_event(bool(state.last_events.get("pods")), verdict)
        if event is not None:
            self.kube.event(obj.body, *event)
        state.last_events["pods"] = "" if verdict.healthy else verdict.reason
        return verdict

    def _scale(self, key: Key, obj: GroupObject, state: GroupState, current: int,
               decision: Decision, seconds_behind: float | None = None) -> None:
        kcg = obj.kcg
        assert kcg is not None
        before = self.registry.deployment(key)
        with self.registry.workload_lock(key):
            self.kube.scale_deployment(key[0], deployment_name(kcg), decision.desired)
        state.scaled_to, state.scaled_at = decision.desired, time.monotonic()
        state.scaled_from_generation = before.generation if before is not None else None
        state.last_scale_time = now_rfc3339()
        direction = "up" if decision.desired > current else "down"
        metrics.scale_events.labels(
            key[0], key[1], kcg.group_id, direction,
            metrics.scale_reason(decision.desired, decision.capped_by)).inc()
        message = scale_event_message(decision, seconds_behind)
        self.kube.event(obj.body, "Normal", "Scaled", message)
        log.info("%s/%s: %s", *key, message)

    def _transition_events(self, state: GroupState, obj: GroupObject,
                           snap: GroupSnapshot, shared_with: tuple[str, ...] = ()) -> None:
        """Warnings once per transition, not once per sweep."""
        kcg = obj.kcg
        assert kcg is not None
        checks = {
            "broker": ("KafkaAuthenticationFailed" if snap.auth_failed else "BrokerUnreachable",
                       f"Kafka at {kcg.spec.kafka.bootstrap_servers} did not answer: "
                       f"{snap.error}; replicas are left as they are") if not snap.broker_ok
            else None,
            "topics": ("TopicNotFound",
                       f"topics {', '.join(snap.missing_topics)} do not exist on "
                       f"{kcg.spec.kafka.bootstrap_servers}: create them or fix spec.topics")
            if snap.missing_topics else None,
            "assignor": ("RebalanceNonCompliant",
                         f"group {kcg.group_id} uses assignor {snap.assignor!r}")
            if wrong_assignor(snap) else None,
            "group-id": ("SharedGroupId",
                         f"KafkaConsumerGroup {', '.join(sorted(shared_with))} also uses group "
                         f"{kcg.group_id} on {kcg.spec.kafka.bootstrap_servers}: recreate one "
                         "of them with its own spec.groupId")
            if shared_with else None,
        }
        for name, problem in checks.items():
            reason = problem[0] if problem else ""
            if state.last_events.get(name, "") != reason and problem is not None:
                self.kube.event(obj.body, "Warning", problem[0], problem[1])
            state.last_events[name] = reason

    def _export_metrics(self, state: GroupState, kcg: KafkaConsumerGroup,
                        observed: Observed) -> None:
        """The metrics of one check, from the same figures as the status."""
        labels = (kcg.metadata.namespace or "", kcg.metadata.name, kcg.group_id)
        if state.metric_labels not in (None, labels):
            self._forget(state)
        state.metric_labels = labels
        metrics.groups.update(labels, metric_figures(kcg, observed), relays_known=(
            kcg.spec.outbox is None or observed.current is not None))

    @staticmethod
    def _forget(state: GroupState) -> None:
        """Drop a group's series so dashboards and alerts do not show ghosts."""
        if state.metric_labels is not None:
            metrics.forget_group(state.metric_labels)
        state.metric_labels = None

    # ------------------------------------------------------------------ status

    def write_status(self, key: Key, obj: GroupObject, observed: Observed | None) -> None:
        if not self.leading():
            return
        state = self.states.setdefault(key, GroupState())
        # Until this replica has written it, the status is what the last leader wrote.
        last = state.written or obj.status
        scaled = state.last_scale_time or (last.last_scale_time if last else None)
        status = render_status(obj, observed, last.conditions if last else (), scaled)
        written = WrittenStatus.of(status)
        if last is not None and written.digest == last.digest:
            return
        self.kube.apply_status(key[0], key[1], status)
        state.written = written
