"""Process-wide objects of a running operator: the Kubernetes client and the controller.

Started and stopped by kopf's startup and cleanup handlers, so `kcg run` and an operator
embedded with kopf's test runner behave the same.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import kopf

from kcg_operator import metrics
from kcg_operator.api.models import GROUP_LABEL
from kcg_operator.kube import Kube, load_client
from kcg_operator.registry import REGISTRY, Key

log = logging.getLogger(__name__)
_kube: Kube | None = None
_stop = threading.Event()
_thread: threading.Thread | None = None
_controller: Any = None
#: A controller pass older than this fails /healthz, so the kubelet restarts a stuck loop.
STALE_PASS_SECONDS = 300.0


def kube() -> Kube:
    global _kube
    if _kube is None:
        _kube = Kube(load_client())
    return _kube


def relay_image() -> str:
    """Image of the outbox relay sidecar: KCG_RELAY_IMAGE (the chart sets it to the
    operator's own image), else the release default."""
    from kcg_operator.workload.render import DEFAULT_RELAY_IMAGE

    return os.environ.get("KCG_RELAY_IMAGE") or DEFAULT_RELAY_IMAGE


def forget(key: Key) -> None:
    entry = REGISTRY.get(key)
    REGISTRY.remove(key)
    if entry is not None and entry.kcg is not None:
        metrics.forget_group(key[0], key[1], entry.kcg.group_id, entry.partition_series)


class _QuietWatchHandlers(logging.Filter):
    """kopf logs every successful event handler at INFO; ours run on every watch event
    (thousands a minute with many objects), so their successes are not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("Handler 'track" in message and message.endswith("succeeded."))


@kopf.on.startup()
def start(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _thread
    logging.getLogger("kopf.objects").addFilter(_QuietWatchHandlers())
    # Progress and diff-base go to annotations: a structural status schema would prune
    # kopf's default status.kopf field, and status belongs to the controller loop.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kcg.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kcg.dev", key="last-handled-configuration")
    settings.posting.level = logging.INFO
    # Resources are found by API discovery; scanning namespaces and CRDs would need
    # cluster-wide rights that the namespaced chart does not grant.
    settings.scanning.disabled = True
    # Only our Deployments, filtered by the apiserver rather than after the download.
    settings.watching.label_selectors["apps", "deployments"] = GROUP_LABEL
    settings.watching.server_timeout = 600
    settings.watching.client_timeout = 660
    from kcg_operator.controller import Controller
    from kcg_operator.workload.pod_health import DEFAULT_READY_GRACE_SECONDS

    interval = float(os.environ.get("KCG_CHECK_INTERVAL_SECONDS", "15"))
    # How long a pod may stay Pending or not Ready before PodsHealthy says so.
    grace = float(os.environ.get("KCG_POD_READY_GRACE_SECONDS", DEFAULT_READY_GRACE_SECONDS))
    global _controller
    controller = _controller = Controller(kube(), REGISTRY, check_interval_s=interval,
                                          pod_ready_grace_s=grace)
    _stop.clear()
    _thread = threading.Thread(target=controller.run, args=(_stop,), name="kcg-controller",
                               daemon=True)
    _thread.start()


@kopf.on.probe(id="controllerLoopSeconds")
def controller_alive(**_: Any) -> float:
    """Seconds since the controller loop last started a pass; /healthz fails when stale."""
    if _controller is None:
        return 0.0
    age = time.monotonic() - float(_controller.last_pass)
    if age > STALE_PASS_SECONDS:
        raise RuntimeError(f"the controller loop has not run for {age:.0f}s")
    return round(age, 1)


@kopf.on.cleanup()
def stop(**_: Any) -> None:
    _stop.set()
    REGISTRY.wake.set()
    if _thread is not None:
        _thread.join(timeout=10)
