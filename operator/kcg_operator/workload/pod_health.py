"""Whether the consumer pods really run, and if not, the pod's own reason.

The Deployment's ready count says *that* pods are missing, never *why*. The kubelet and
the scheduler say why in each pod's status: a container waiting in ImagePullBackOff or
CrashLoopBackOff, a last termination OOMKilled, PodScheduled=False/Unschedulable. This
module turns the pods of one group into one verdict that the status, the STATUS column
and an Event can show as is. Pure: the controller lists the pods and passes `now`.

Rules, in order:

1. Pods being deleted (deletionTimestamp) and finished pods (phase Succeeded or Failed,
   e.g. Evicted) are ignored, as the ReplicaSet ignores them: they are on their way out
   and a replacement is counted instead.
2. A container that waits for a reason other than the normal start-up ones
   (ContainerCreating, PodInitializing) is a problem at once, with its reason and the
   kubelet's message: ImagePullBackOff, ErrImagePull, CrashLoopBackOff,
   CreateContainerConfigError, ... A crash loop whose last termination was OOMKilled is
   reported as OOMKilled, because that names the fix (the memory limit).
3. A container that terminated is a problem at once (its reason: Error, OOMKilled,
   Completed: a consumer must not exit), except a plain init container that exited 0.
   Init containers and native sidecars (initContainers with restartPolicy Always, such as
   the `kcg relay` sidecar) are checked like the app's containers.
4. A pod with no such problem that is not Ready is still starting until the grace period
   has passed since it last became not ready (or was created); then it is a problem:
   Unschedulable when the scheduler said so, else PodsNotReady. The scheduler also says
   Unschedulable while a cluster autoscaler adds a node, the normal path of a scale-up on
   such clusters, which is why that reason waits for the grace period too.

The verdict names the worst problem: immediate ones (rules 2-3) before grace-period ones
(rule 4), then by pod and container name, so the order the API lists pods in never
changes it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from kcg_operator.api.models import CONDITION_REASON_PATTERN

Pod = Mapping[str, Any]
"""A core/v1 Pod as the API serves it: JSON, camelCase keys."""

#: How long a pod may be Pending or Running-but-not-Ready before it counts as a problem:
#: long enough for a slow image pull or a JVM's warm-up, half the Deployment's default
#: progressDeadlineSeconds. Failures the kubelet names (rules 2-3) do not wait for it.
DEFAULT_READY_GRACE_SECONDS: Final = 300.0

#: Verdict reasons when nothing is wrong (the PodsHealthy condition's True reasons).
PODS_READY: Final = "PodsReady"
PODS_STARTING: Final = "PodsStarting"
NO_PODS: Final = "NoPods"
#: A pod not Ready for longer than the grace period, with no more specific reason.
PODS_NOT_READY: Final = "PodsNotReady"
UNSCHEDULABLE: Final = "Unschedulable"
OOM_KILLED: Final = "OOMKilled"
CRASH_LOOP: Final = "CrashLoopBackOff"

#: Waiting reasons of a container on its normal way to running.
STARTING_REASONS: Final = frozenset({"ContainerCreating", "PodInitializing"})
#: The kubelet's messages can quote whole image references or commands; a condition
#: message must stay readable in `kubectl describe`.
MAX_DETAIL: Final = 512
_REASON = re.compile(CONDITION_REASON_PATTERN)

# Problem ranks: lower is worse and wins.
_IMMEDIATE: Final = 0
_AFTER_GRACE: Final = 1


@dataclass(frozen=True, order=True)
class PodProblem:
    """Why one pod does not run. Fields in sort order: rank, then names."""

    rank: int
    pod: str
    container: str  # "" for a pod-level problem
    kind: str  # "container", "init container" or "sidecar"
    reason: str
    detail: str  # the kubelet's or scheduler's message

    def describe(self) -> str:
        """`pod orders-7d9-abc container consumer: ImagePullBackOff: Back-off pulling ...`"""
        where = f"pod {self.pod}" + (f" {self.kind} {self.container}" if self.container else "")
        return f"{where}: {self.reason}" + (f": {self.detail}" if self.detail else "")


@dataclass(frozen=True)
class PodHealth:
    """The verdict on a group's pods."""

    healthy: bool
    reason: str  # PodsReady, PodsStarting, NoPods; else the worst problem's reason
    message: str
    ready: int
    total: int  # pods counted: not terminating, not finished
    unhealthy: int = 0  # pods with a problem
    problem: PodProblem | None = None


def deployment_pods(deployment: Mapping[str, Any]) -> int | None:
    """status.replicas of a Deployment (its pods not terminating), once its controller has
    observed the current spec; None before (the counts may be an older spec's). The field
    is left out at zero.

    One exception: a Deployment that wants no pods and whose controller last counted none
    (or never counted: just created) has none, whatever the generation, since its
    controller only removes pods on the way to zero. At start-up every such group would
    otherwise cost a pod LIST before the controller catches up (thousands of them)."""
    meta, status = deployment.get("metadata") or {}, deployment.get("status") or {}
    generation = meta.get("generation")
    counted = int(status.get("replicas") or 0)
    if generation is None or status.get("observedGeneration") != generation:
        wanted = (deployment.get("spec") or {}).get("replicas")
        return 0 if wanted == 0 and counted == 0 else None
    return counted


def judge_by_deployment(wanted: int, ready: int, pods: int | None) -> PodHealth | None:
    """The verdict without listing the pods, when the Deployment's own counts settle it:
    it has the pods it wants and every one is ready (a ready pod has no problem this module
    reports: each one keeps it from being ready). None: the pods must be looked at."""
    if pods is None or not wanted == ready == pods:
        return None
    if pods == 0:
        return PodHealth(True, NO_PODS, "no pods", 0, 0)
    return PodHealth(True, PODS_READY, f"{ready}/{pods} pods ready", ready, pods)


def judge_pods(pods: Iterable[Pod], now: float,
               grace_seconds: float = DEFAULT_READY_GRACE_SECONDS) -> PodHealth:
    """The verdict on the pods of one group's Deployment at `now` (epoch seconds)."""
    active = [p for p in pods if _counts(p)]
    total = len(active)
    ready = sum(1 for p in active if _is_ready(p))
    problems = sorted(p for p in (_problem(pod, now, grace_seconds) for pod in active)
                      if p is not None)
    counts = f"{ready}/{total} pods ready"
    if problems:
        worst = problems[0]
        others = len(problems) - 1
        message = worst.describe() + f"; {counts}" + (
            f"; {others} more pod{'s' if others > 1 else ''} unhealthy" if others else "")
        return PodHealth(False, worst.reason, message, ready, total, len(problems), worst)
    if total == 0:
        return PodHealth(True, NO_PODS, "no pods", 0, 0)
    if ready < total:
        return PodHealth(True, PODS_STARTING,
                         f"{counts}; {total - ready} starting (within the {grace_seconds:g}s "
                         "grace period)", ready, total)
    return PodHealth(True, PODS_READY, counts, ready, total)


# ----------------------------------------------------------------------------- one pod


def _counts(pod: Pod) -> bool:
    meta = pod.get("metadata") or {}
    phase = (pod.get("status") or {}).get("phase")
    return not meta.get("deletionTimestamp") and phase not in ("Succeeded", "Failed")


def _condition(pod: Pod, type_: str) -> Mapping[str, Any] | None:
    for cond in (pod.get("status") or {}).get("conditions") or ():
        if isinstance(cond, Mapping) and cond.get("type") == type_:
            return cond
    return None


def _is_ready(pod: Pod) -> bool:
    cond = _condition(pod, "Ready")
    return cond is not None and cond.get("status") == "True"


def _problem(pod: Pod, now: float, grace: float) -> PodProblem | None:
    name = str((pod.get("metadata") or {}).get("name") or "?")
    for kind, container, cs in _container_statuses(pod):
        found = _container_problem(name, kind, container, cs)
        if found is not None:
            return found
    if _is_ready(pod):
        return None
    since = _not_ready_since(pod)
    age = now - since if since is not None else 0.0
    if age <= grace:
        return None
    scheduled = _condition(pod, "PodScheduled")
    if scheduled is not None and scheduled.get("status") == "False":
        reason = _safe_reason(str(scheduled.get("reason") or ""), UNSCHEDULABLE)
        return PodProblem(_AFTER_GRACE, name, "", "", reason,
                          _clip(str(scheduled.get("message") or "")))
    kind, container, detail = _not_ready_detail(pod)
    return PodProblem(_AFTER_GRACE, name, container, kind, PODS_NOT_READY,
                      f"not ready for {age:.0f}s (grace {grace:g}s)"
                      + (f": {detail}" if detail else ""))


def _container_statuses(pod: Pod) -> list[tuple[str, str, Mapping[str, Any]]]:
    """(kind, name, containerStatus): init containers and sidecars first, as they run."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    sidecars = {c.get("name") for c in spec.get("initContainers") or ()
                if isinstance(c, Mapping) and c.get("restartPolicy") == "Always"}
    out: list[tuple[str, str, Mapping[str, Any]]] = []
    for cs in status.get("initContainerStatuses") or ():
        if isinstance(cs, Mapping):
            name = str(cs.get("name") or "?")
            out.append(("sidecar" if name in sidecars else "init container", name, cs))
    for cs in status.get("containerStatuses") or ():
        if isinstance(cs, Mapping):
            out.append(("container", str(cs.get("name") or "?"), cs))
    return out


def _container_problem(pod: str, kind: str, container: str,
                       cs: Mapping[str, Any]) -> PodProblem | None:
    state = cs.get("state") or {}
    waiting, terminated = state.get("waiting"), state.get("terminated")
    last = (cs.get("lastState") or {}).get("terminated") or {}
    if isinstance(waiting, Mapping):
        reason = str(waiting.get("reason") or "")
        if not reason or reason in STARTING_REASONS:
            return None
        detail = str(waiting.get("message") or "")
        if reason == CRASH_LOOP and last.get("reason") == OOM_KILLED:
            reason = OOM_KILLED
            detail = f"last terminated OOMKilled (exit code {last.get('exitCode')})" + (
                f"; {detail}" if detail else "")
        return PodProblem(_IMMEDIATE, pod, container, kind,
                          _safe_reason(reason, PODS_NOT_READY), _clip(detail))
    if isinstance(terminated, Mapping):
        code = terminated.get("exitCode")
        if kind == "init container" and code == 0:
            return None  # a plain init container is meant to finish
        reason = _safe_reason(str(terminated.get("reason") or ""), "Terminated")
        detail = str(terminated.get("message") or "") or f"exit code {code}"
        return PodProblem(_IMMEDIATE, pod, container, kind, reason, _clip(detail))
    return None


def _not_ready_detail(pod: Pod) -> tuple[str, str, str]:
    """(kind, container, what) of the first container that holds the pod back."""
    for kind, container, cs in _container_statuses(pod):
        state = cs.get("state") or {}
        waiting = state.get("waiting")
        if isinstance(waiting, Mapping):
            return kind, container, str(waiting.get("reason") or "waiting")
        if kind == "init container":
            if isinstance(state.get("running"), Mapping):
                return kind, container, "still running"
            continue  # finished: the terminated case was judged before
        if not cs.get("ready"):
            started = cs.get("started")
            return kind, container, ("running but not ready" if started is not False
                                     else "running, startup probe not passed")
    ready = _condition(pod, "Ready") or {}
    phase = (pod.get("status") or {}).get("phase") or "Pending"
    text = str(ready.get("message") or "")
    if _condition(pod, "PodScheduled") is None and phase == "Pending":
        text = text or "Pending, not scheduled to a node yet"
    return "", "", _clip(text or phase)


def _not_ready_since(pod: Pod) -> float | None:
    """When the pod last became not ready: its Ready condition's transition, else when it
    started or was created."""
    ready = _condition(pod, "Ready") or {}
    for stamp in (ready.get("lastTransitionTime"),
                  (pod.get("status") or {}).get("startTime"),
                  (pod.get("metadata") or {}).get("creationTimestamp")):
        when = _epoch(stamp)
        if when is not None:
            return when
    return None


def _epoch(stamp: Any) -> float | None:
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    # The API writes UTC with a Z; a stamp without a zone is read as UTC too, never as
    # this machine's local time.
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _safe_reason(reason: str, fallback: str) -> str:
    """The reason goes into a condition whose schema has a pattern: a reason it refuses
    would fail the whole status write."""
    return reason if reason and len(reason) <= 128 and _REASON.match(reason) else fallback


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"
