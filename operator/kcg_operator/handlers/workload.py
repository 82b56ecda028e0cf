"""kopf handlers for KafkaConsumerGroups: reconcile the workload, track objects.

Thin by design: parse, render (pure), apply (I/O), record the outcome. Status is written
by the controller loop (kcg_operator.controller), the single status writer.
"""

from __future__ import annotations

from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from kcg_operator import runtime
from kcg_operator.api.models import (
    GROUP,
    GROUP_LABEL,
    PLURAL,
    VERSION,
    InvalidKafkaConsumerGroup,
    KafkaConsumerGroup,
    parse_kafka_consumer_group,
)
from kcg_operator.registry import REGISTRY, Reconciled
from kcg_operator.scaling.collector import ClusterKey
from kcg_operator.workload.consumer_config import ConsumerConfigError
from kcg_operator.workload.render import (
    CONFIG_HASH_ANNOTATION,
    deployment_name,
    render_workload,
    status_selector,
)


def _record(key: tuple[str, str], body: Any, outcome: Reconciled) -> None:
    entry = REGISTRY.upsert(key, body, _parse_or_none(body))
    entry.reconciled = outcome
    REGISTRY.mark_dirty(key)


def _parse_or_none(body: Any) -> KafkaConsumerGroup | None:
    try:
        return parse_kafka_consumer_group(body)
    except InvalidKafkaConsumerGroup:
        return None


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


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def reconcile(body: kopf.Body, name: str, namespace: str | None, **_: Any) -> None:
    assert namespace is not None  # the CRD is namespaced
    key = (namespace, name)
    generation = body.metadata.get("generation")
    try:
        kcg = parse_kafka_consumer_group(body)
    except InvalidKafkaConsumerGroup as exc:
        _record(key, body, Reconciled(generation, False, "InvalidSpec", str(exc)))
        raise kopf.PermanentError(str(exc)) from None

    auth: dict[str, str] | None = None
    secret_ref = kcg.spec.kafka.secret_ref
    if secret_ref is not None:
        auth = runtime.kube().secret_data(namespace, secret_ref.name)
        if auth is None:
            message = (f"Secret {secret_ref.name!r} named by spec.kafka.secretRef does not exist "
                       f"in namespace {namespace}: create it or fix the name")
            _record(key, body, Reconciled(generation, False, "SecretNotFound", message))
            raise kopf.TemporaryError(message, delay=30)

    entry = REGISTRY.upsert(key, body, kcg)
    entry.cluster = ClusterKey.of(kcg.spec.kafka.bootstrap_servers, auth)
    entry.auth = auth
    kube = runtime.kube()
    with entry.lock:  # the scaler must not change replicas between our read and apply
        current = kube.deployment_replicas(namespace, deployment_name(kcg))
        replicas = initial_replicas(kcg, None if current is None else current[0])
        try:
            workload = render_workload(kcg, replicas=replicas, auth_secret_data=auth,
                                       relay_image=runtime.relay_image())
        except ConsumerConfigError as exc:
            _record(key, body, Reconciled(generation, False, "InvalidSpec", str(exc)))
            raise kopf.PermanentError(str(exc)) from None
        entry.starts_from_earliest = (
            workload.config.consumer.get("auto.offset.reset", "latest") in ("earliest",
                                                                             "smallest"))
        try:
            kube.apply(workload.config_map)
            kube.apply(workload.deployment)
        except ApiException as exc:  # e.g. a policy webhook or quota refusing the workload
            message = f"applying the workload failed: {exc.status} {exc.reason}: {exc.body}"
            _record(key, body, Reconciled(generation, False, "ApplyFailed", message[:2000]))
            raise kopf.TemporaryError(message[:500], delay=30) from None
        # The Deployment's own watch event may have come before this object was known.
        entry.replicas = (replicas, current[1] if current else 0)
    config_id = workload.deployment["spec"]["template"]["metadata"]["annotations"][
        CONFIG_HASH_ANNOTATION][:12]
    message = (f"Deployment {deployment_name(kcg)} and its consumer properties applied "
               f"({replicas} replicas, config {config_id})")
    entry.reconciled = Reconciled(generation, True, "Reconciled", message,
                                  deployment=deployment_name(kcg), selector=status_selector(kcg))
    REGISTRY.mark_dirty(key)
    kopf.info(body, reason="Applied", message=message)


@kopf.on.event(GROUP, VERSION, PLURAL)
def track(event: kopf.RawEvent, body: kopf.Body, name: str, namespace: str | None,
          **_: Any) -> None:
    """Keep the registry in step with the apiserver, including deletions."""
    key = (namespace or "", name)
    if event["type"] == "DELETED":
        runtime.forget(key)
        return
    REGISTRY.upsert(key, body, _parse_or_none(body))


@kopf.on.event("apps", "v1", "deployments", labels={GROUP_LABEL: kopf.PRESENT})
def track_deployment(body: kopf.Body, event: kopf.RawEvent, namespace: str | None,
                     **_: Any) -> None:
    """Current and ready replicas of our Deployments, without a read per sweep."""
    owner = body.metadata.get("labels", {}).get(GROUP_LABEL)
    entry = REGISTRY.get((namespace or "", owner)) if owner else None
    if entry is None:
        return
    if event["type"] == "DELETED":
        entry.replicas = None
    else:
        entry.replicas = (int(body.spec.get("replicas") or 0),
                          int(body.status.get("readyReplicas") or 0))
