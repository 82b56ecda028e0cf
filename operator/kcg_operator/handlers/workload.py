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
from kcg_operator.registry import Reconciled, Registry
from kcg_operator.scaling.collector import ClusterKey
from kcg_operator.workload.consumer_config import ConsumerConfigError
from kcg_operator.workload.render import (
    CONFIG_HASH_ANNOTATION,
    deployment_name,
    render_workload,
    status_selector,
)


def _refused(registry: Registry, key: tuple[str, str], body: Any, outcome: Reconciled) -> None:
    registry.reconciled(key, body, _parse_or_none(body), outcome)


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
def reconcile(body: kopf.Body, name: str, namespace: str | None, memo: Any, **_: Any) -> None:
    assert namespace is not None  # the CRD is namespaced
    ours = runtime.of(memo)
    registry, kube = ours.registry, ours.client()
    key = (namespace, name)
    generation = body.metadata.get("generation")
    try:
        kcg = parse_kafka_consumer_group(body)
    except InvalidKafkaConsumerGroup as exc:
        _refused(registry, key, body, Reconciled(generation, False, "InvalidSpec", str(exc)))
        raise kopf.PermanentError(str(exc)) from None

    auth: dict[str, str] | None = None
    secret_ref = kcg.spec.kafka.secret_ref
    if secret_ref is not None:
        auth = kube.secret_data(namespace, secret_ref.name)
        if auth is None:
            message = (f"Secret {secret_ref.name!r} named by spec.kafka.secretRef does not exist "
                       f"in namespace {namespace}: create it or fix the name")
            _refused(registry, key, body,
                     Reconciled(generation, False, "SecretNotFound", message))
            raise kopf.TemporaryError(message, delay=30)

    with registry.workload_lock(key):  # the scaler must not change replicas in between
        current = kube.deployment_replicas(namespace, deployment_name(kcg))
        replicas = initial_replicas(kcg, None if current is None else current[0])
        try:
            workload = render_workload(kcg, replicas=replicas, auth_secret_data=auth,
                                       relay_image=ours.relay_image)
        except ConsumerConfigError as exc:
            _refused(registry, key, body, Reconciled(generation, False, "InvalidSpec", str(exc)))
            raise kopf.PermanentError(str(exc)) from None
        try:
            kube.apply(workload.config_map)
            applied = kube.apply(workload.deployment)
        except ApiException as exc:  # e.g. a policy webhook or quota refusing the workload
            message = f"applying the workload failed: {exc.status} {exc.reason}: {exc.body}"
            _refused(registry, key, body,
                     Reconciled(generation, False, "ApplyFailed", message[:2000]))
            raise kopf.TemporaryError(message[:500], delay=30) from None
    # What the apiserver answered is as current as the Deployment's watch, which may have
    # delivered the new Deployment before this object was reconciled.
    registry.deployment_seen(key, (int(applied["spec"].get("replicas") or 0),
                                   int((applied.get("status") or {}).get("readyReplicas") or 0)))
    config_id = workload.deployment["spec"]["template"]["metadata"]["annotations"][
        CONFIG_HASH_ANNOTATION][:12]
    message = (f"Deployment {deployment_name(kcg)} and its consumer properties applied "
               f"({replicas} replicas, config {config_id})")
    registry.reconciled(
        key, body, kcg,
        Reconciled(generation, True, "Reconciled", message, deployment=deployment_name(kcg),
                   selector=status_selector(kcg)),
        cluster=ClusterKey.of(kcg.spec.kafka.bootstrap_servers, auth), auth=auth,
        starts_from_earliest=workload.config.starts_from_earliest)
    kopf.info(body, reason="Applied", message=message)


@kopf.on.event(GROUP, VERSION, PLURAL)
def track(event: kopf.RawEvent, body: kopf.Body, name: str, namespace: str | None,
          memo: Any, **_: Any) -> None:
    """Keep the registry in step with the apiserver, including deletions."""
    registry = runtime.of(memo).registry
    key = (namespace or "", name)
    if event["type"] == "DELETED":
        registry.remove(key)
        return
    registry.seen(key, body, _parse_or_none(body))


@kopf.on.event("apps", "v1", "deployments", labels={GROUP_LABEL: kopf.PRESENT})
def track_deployment(body: kopf.Body, event: kopf.RawEvent, namespace: str | None,
                     memo: Any, **_: Any) -> None:
    """Current and ready replicas of our Deployments, without a read per sweep."""
    owner = body.metadata.get("labels", {}).get(GROUP_LABEL)
    if not owner:
        return
    replicas = None if event["type"] == "DELETED" else (
        int(body.spec.get("replicas") or 0), int(body.status.get("readyReplicas") or 0))
    runtime.of(memo).registry.deployment_seen((namespace or "", owner), replicas)
