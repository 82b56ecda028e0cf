"""The workload of one KafkaConsumerGroup: read its Secret, render, apply.

Called by the controller loop (kcg_operator.controller), which decides *when*: a new
generation, a retry that is due, a Deployment or ConfigMap deleted by hand, or this replica
becoming the leader. Each call has two halves: :func:`prepare` only reads (a standby
replica runs it too, so that its lag sweeps are warm when it takes over) and :func:`apply`
writes the ConfigMap and the Deployment (the leader only).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from kcg_operator.api.models import KafkaConsumerGroup
from kcg_operator.kube import Kube
from kcg_operator.registry import GroupObject, Key, Reconciled, Registry
from kcg_operator.scaling.collector import ClusterKey
from kcg_operator.workload.consumer_config import ConsumerConfigError
from kcg_operator.workload.pod_health import deployment_pods
from kcg_operator.workload.render import (
    CONFIG_HASH_ANNOTATION,
    DEFAULT_RELAY_IMAGE,
    WORKLOAD_HASH_ANNOTATION,
    Workload,
    deployment_name,
    render_workload,
    status_selector,
)

__all__ = ["DEFAULT_RELAY_IMAGE", "Prepared", "Refused", "apply", "initial_replicas", "prepare",
           "record", "up_to_date"]

#: Seconds before a failed reconcile that may heal by itself (a missing Secret, a refused
#: apply) is tried again.
RETRY_SECONDS = 30.0


def initial_replicas(kcg: KafkaConsumerGroup, current: int | None) -> int:
    """Replicas to apply with the workload. Without spec.scaling they follow spec.replicas
    (kubectl scale, an HPA); with it, a reconcile keeps what the scaler last set."""
    scaling = kcg.spec.scaling
    if scaling is None:
        return kcg.spec.replicas
    floor = scaling.min_replicas if scaling.scale_to_zero.enabled else max(scaling.min_replicas, 1)
    if current is None:
        return max(floor, 1)
    return min(max(current, floor), scaling.max_replicas)


@dataclass(frozen=True)
class Prepared:
    """What a reconcile read and rendered, before anything is written."""

    kcg: KafkaConsumerGroup
    auth: Mapping[str, str] | None
    workload: Workload


@dataclass(frozen=True)
class Refused:
    """Why a reconcile cannot go on, and whether trying again later may help."""

    kcg: KafkaConsumerGroup | None
    outcome: Reconciled
    retry: bool


def prepare(kube: Kube, key: Key, obj: GroupObject, relay_image: str) -> Prepared | Refused:
    """Read the referenced Secret, render (the spec was parsed by the watch). Reads only."""
    namespace, generation, kcg = key[0], obj.generation, obj.kcg
    if kcg is None:
        message = obj.invalid or "the spec does not parse"
        return Refused(None, Reconciled(generation, False, "InvalidSpec", message), retry=False)
    auth: dict[str, str] | None = None
    secret_ref = kcg.spec.kafka.secret_ref
    if secret_ref is not None:
        auth = kube.secret_data(namespace, secret_ref.name)
        if auth is None:
            message = (f"Secret {secret_ref.name!r} named by spec.kafka.secretRef does not exist "
                       f"in namespace {namespace}: create it or fix the name")
            return Refused(kcg, Reconciled(generation, False, "SecretNotFound", message),
                           retry=True)
    try:
        # Replicas are filled in by apply(), under the workload lock.
        workload = render_workload(kcg, replicas=0, auth_secret_data=auth,
                                   relay_image=relay_image)
    except ConsumerConfigError as exc:
        return Refused(kcg, Reconciled(generation, False, "InvalidSpec", str(exc)), retry=False)
    return Prepared(kcg, auth, workload)


def record(registry: Registry, key: Key, body: Mapping[str, Any],
           result: Prepared | Refused, outcome: Reconciled | None = None) -> None:
    """Tell the registry what the object needs (cluster, credentials) and, once applied or
    refused, the outcome the Ready condition shows."""
    if isinstance(result, Refused):
        registry.reconciled(key, body, result.kcg, result.outcome)
        return
    if outcome is None:
        raise ValueError("a prepared workload is recorded with its outcome")
    registry.reconciled(
        key, body, result.kcg, outcome,
        cluster=ClusterKey.of(result.kcg.spec.kafka.bootstrap_servers, result.auth),
        auth=result.auth, starts_from_earliest=result.workload.config.starts_from_earliest)


def up_to_date(registry: Registry, key: Key, body: Mapping[str, Any],
               prepared: Prepared) -> Reconciled | None:
    """The outcome without a write when the Deployment the watch shows carries this
    workload's digest (a restart or a new leader then writes nothing for it); else None."""
    seen = registry.deployment(key)
    digest = prepared.workload.deployment["metadata"]["annotations"][WORKLOAD_HASH_ANNOTATION]
    if seen is None or seen.workload_hash != digest:
        return None
    return _outcome(body, prepared, seen.wanted)


def _outcome(body: Mapping[str, Any], prepared: Prepared, replicas: int) -> Reconciled:
    name = deployment_name(prepared.kcg)
    config_id = prepared.workload.deployment["spec"]["template"]["metadata"]["annotations"][
        CONFIG_HASH_ANNOTATION][:12]
    message = (f"Deployment {name} and its consumer properties applied "
               f"({replicas} replicas, config {config_id})")
    return Reconciled((body.get("metadata") or {}).get("generation"), True, "Reconciled",
                      message, deployment=name, selector=status_selector(prepared.kcg))


def apply(kube: Kube, registry: Registry, key: Key, body: Mapping[str, Any],
          prepared: Prepared) -> Refused | Reconciled:
    """Apply the ConfigMap and the Deployment; returns the outcome (or why it failed)."""
    kcg, generation = prepared.kcg, (body.get("metadata") or {}).get("generation")
    name = deployment_name(kcg)
    with registry.workload_lock(key):  # the scaler must not change replicas in between
        # Only a scaled group keeps the replicas it has; without spec.scaling they follow
        # spec.replicas and the read would go unused (one GET per object at start-up).
        current = (kube.deployment_replicas(key[0], name) if kcg.spec.scaling is not None
                   else None)
        replicas = initial_replicas(kcg, None if current is None else current[0])
        deployment = dict(prepared.workload.deployment)
        deployment["spec"] = {**deployment["spec"], "replicas": replicas}
        try:
            kube.apply(prepared.workload.config_map)
            applied = kube.apply(deployment)
        except ApiException as exc:  # e.g. a policy webhook or quota refusing the workload
            message = f"applying the workload failed: {exc.status} {exc.reason}: {exc.body}"
            return Refused(kcg, Reconciled(generation, False, "ApplyFailed", message[:2000]),
                           retry=True)
    # What the apiserver answered is as current as the Deployment's watch, which may have
    # delivered the new Deployment before this object was reconciled.
    registry.deployment_seen(
        key, (int(applied["spec"].get("replicas") or 0),
              int((applied.get("status") or {}).get("readyReplicas") or 0)),
        (applied["metadata"].get("annotations") or {}).get(WORKLOAD_HASH_ANNOTATION),
        applied["metadata"].get("generation"), deployment_pods(applied))
    return _outcome(body, prepared, replicas)
