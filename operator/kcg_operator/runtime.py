"""Process-wide objects of a running operator, handed to every handler as kopf's ``memo``.

`kcg run` passes an :class:`OperatorMemo` to kopf; kopf gives each handler a shallow copy,
so the registry, the Kubernetes client and the controller are the same objects everywhere
and nothing lives in module globals. kopf's startup and cleanup handlers start and stop the
controller loop, so `kcg run` and an operator embedded with kopf's test runner behave the
same.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Final

import kopf

from kcg_operator.api.models import GROUP_LABEL
from kcg_operator.controller import Controller
from kcg_operator.kube import Kube, load_client
from kcg_operator.leader import LeaderElector
from kcg_operator.registry import Registry
from kcg_operator.workload.pod_health import DEFAULT_READY_GRACE_SECONDS
from kcg_operator.workload.render import DEFAULT_RELAY_IMAGE

log = logging.getLogger(__name__)
#: A controller pass older than this fails /healthz, so the kubelet restarts a stuck loop.
STALE_PASS_SECONDS = 300.0


@dataclass(frozen=True)
class LeaderElection:
    """Where the leader Lease lives and who this replica is (`kcg run --leader-elect`)."""

    namespace: str
    name: str
    identity: str


@dataclass
class OperatorMemo:
    """What every handler of one operator process shares (kopf's ``memo``)."""

    registry: Registry = field(default_factory=Registry)
    kube: Kube | None = None
    controller: Controller | None = None
    # Image of the outbox relay sidecar: the chart sets KCG_RELAY_IMAGE to the operator's
    # own image; else the release default.
    relay_image: str = field(
        default_factory=lambda: os.environ.get("KCG_RELAY_IMAGE") or DEFAULT_RELAY_IMAGE)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    # None: this process alone serves its objects and always writes.
    election: LeaderElection | None = None
    elector: LeaderElector | None = None
    election_thread: threading.Thread | None = None

    def __copy__(self) -> OperatorMemo:
        # kopf gives every watched object (groups, Deployments, ConfigMaps) a shallow copy
        # of the memo for per-object state; ours is all in the registry and the
        # controller, so every object shares this one (30 000 copies at 10 000 groups).
        return self

    def client(self) -> Kube:
        if self.kube is None:
            self.kube = Kube(load_client())
        return self.kube


def of(memo: Any) -> OperatorMemo:
    """The handler's ``memo`` argument, typed."""
    if not isinstance(memo, OperatorMemo):
        raise TypeError("kcg handlers need kopf.run(memo=OperatorMemo()); see kcg run")
    return memo


class _QuietWatchHandlers(logging.Filter):
    """kopf logs every successful event handler at INFO; ours run on every watch event
    (thousands a minute with many objects), so their successes are not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("Handler 'track" in message and message.endswith("succeeded."))


class WatchOnlyDiffBase(kopf.AnnotationsDiffBaseStorage):
    """No diff base. kopf builds one for every watch event (a deep copy of the whole body,
    Deployments and ConfigMaps included) to detect changes for on.create/on.update
    handlers; this operator registers only on.event handlers, which never read it. The
    copies were a fifth of the operator's CPU at start-up (3 000 objects).
    tests/unit/test_runtime_settings.py holds the registry to watching handlers only."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None


# Waits between retries of a failed API request, watch streams included. kopf's default
# grows to 21 s (54 s in all): after an apiserver restart of a few seconds the operator
# watched again only 40-50 s later, while the kubernetes Service had no endpoint for the
# attempts in between (fault matrix, apiserver restart). Capped at 5 s, two minutes in all.
API_RETRY_BACKOFFS: Final = (1.0, 1.0, 2.0, 3.0) + (5.0,) * 23


@kopf.on.startup()
def start(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    ours = of(memo)
    logging.getLogger("kopf.objects").addFilter(_QuietWatchHandlers())
    # Progress goes to annotations: a structural status schema would prune kopf's default
    # status.kopf field, and status belongs to the controller loop.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kcg.dev")
    settings.persistence.diffbase_storage = WatchOnlyDiffBase(
        prefix="kcg.dev", key="last-handled-configuration")
    settings.posting.level = logging.INFO
    # Resources are found by API discovery; scanning namespaces and CRDs would need
    # cluster-wide rights that the namespaced chart does not grant.
    settings.scanning.disabled = True
    # Only our Deployments, filtered by the apiserver rather than after the download.
    settings.watching.label_selectors["apps", "deployments"] = GROUP_LABEL
    settings.networking.error_backoffs = API_RETRY_BACKOFFS
    settings.watching.server_timeout = 600
    settings.watching.client_timeout = 660

    interval = float(os.environ.get("KCG_CHECK_INTERVAL_SECONDS", "15"))
    # How long a pod may stay Pending or not Ready before PodsHealthy says so.
    grace = float(os.environ.get("KCG_POD_READY_GRACE_SECONDS", DEFAULT_READY_GRACE_SECONDS))
    # Every write (the workload, replicas, status, Events) is ours: kopf posts none.
    settings.posting.enabled = False
    settings.watching.label_selectors["", "configmaps"] = GROUP_LABEL

    kube = ours.client()
    controller = Controller(kube, ours.registry, check_interval_s=interval,
                            pod_ready_grace_s=grace, relay_image=ours.relay_image)
    ours.controller = controller
    ours.stop.clear()
    if ours.election is not None:
        election = ours.election
        ours.elector = LeaderElector(
            kube.api, election.namespace, election.name, election.identity,
            on_started_leading=controller.promoted, on_stopped_leading=controller.demoted)
        kube.gate = ours.elector
        ours.election_thread = threading.Thread(target=ours.elector.run, args=(ours.stop,),
                                                name="kcg-leader-election", daemon=True)
        ours.election_thread.start()
    ours.thread = threading.Thread(target=controller.run, args=(ours.stop,),
                                   name="kcg-controller", daemon=True)
    ours.thread.start()


@kopf.on.probe(id="controllerLoopSeconds")
def controller_alive(memo: Any, **_: Any) -> float:
    """Seconds since the controller loop last started a pass; /healthz fails when stale."""
    controller = of(memo).controller
    if controller is None:
        return 0.0
    age = time.monotonic() - controller.last_pass
    if age > STALE_PASS_SECONDS:
        raise RuntimeError(f"the controller loop has not run for {age:.0f}s")
    return round(age, 1)


@kopf.on.probe(id="leader")
def leading(memo: Any, **_: Any) -> bool | None:
    """Whether this replica leads (None without leader election)."""
    elector = of(memo).elector
    return None if elector is None else elector.leading()


@kopf.on.cleanup()
def stop(memo: Any, **_: Any) -> None:
    ours = of(memo)
    # Hand over first: writes stop and the lease is freed, so a standby takes over within
    # its retry interval while this process winds down.
    if ours.elector is not None:
        ours.elector.release()
    ours.stop.set()
    ours.registry.wake.set()
    for thread in (ours.thread, ours.election_thread):
        if thread is not None:
            thread.join(timeout=10)
