"""What the operator owns for a KafkaConsumerGroup, rendered as plain dicts (pure).

`render_workload` is the whole job, in steps that each return a new object:

    config      = build_consumer_config(kcg, auth)       consumer_config.py
    config_map  = render_config_map(kcg, config)          properties files, owned by the CR
    template    = render_pod_template(kcg, config_map, config)
    deployment  = render_deployment(kcg, template, replicas=...)

Whatever else must run in the pod (the outbox relay as a native sidecar, i.e. an
initContainer with restartPolicy Always) is one more step between the pod template and
the Deployment; `with_kafka_connection` gives such a container the same Kafka settings as
the app.

The contract with the consumer app, in its containers:

- `KCG_CONSUMER_PROPERTIES`: path of the consumer properties file (read-only mount);
- `KCG_PRODUCER_PROPERTIES`: path of the transactional producer's file (exactlyOnce only);
- `KCG_KAFKA_AUTH_DIR`: directory holding the auth Secret, one file per client property
  (only with spec.kafka.secretRef); skip entries whose names start with "." (the kubelet's
  `..data` links);
- `KAFKA_BOOTSTRAP_SERVERS`, `KAFKA_GROUP_ID`, `KAFKA_TOPICS` (comma-separated),
  `KCG_DELIVERY_SEMANTICS`, `KCG_POD_NAME`.

These names win over same-named env vars, volumes and mount paths of the user's template.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from kcg_operator.api.models import API_VERSION, GROUP_LABEL, KIND, KafkaConsumerGroup
from kcg_operator.workload.consumer_config import ConsumerConfig, build_consumer_config
from kcg_operator.workload.sidecar import relay_container

MANAGED_BY: Final = "kcg-operator"
CONFIG_HASH_ANNOTATION: Final = "kcg.dev/config-hash"
#: On the Deployment: a digest of everything the operator applies (ConfigMap and Deployment,
#: replicas only where spec.replicas sets them), so an unchanged workload is not applied
#: again (an operator restart or a new leader writes nothing for it).
WORKLOAD_HASH_ANNOTATION: Final = "kcg.dev/workload-hash"
#: Image of the outbox relay sidecar: the operator's own image (`kcg relay`).
DEFAULT_RELAY_IMAGE: Final = "ghcr.io/kcg-dev/kcg-operator:0.1.0"

CONFIG_VOLUME: Final = "kcg-client-config"
CONFIG_DIR: Final = "/etc/kcg/client"
CONSUMER_PROPERTIES_FILE: Final = "consumer.properties"
PRODUCER_PROPERTIES_FILE: Final = "producer.properties"
AUTH_VOLUME: Final = "kcg-kafka-auth"
AUTH_DIR: Final = "/etc/kcg/kafka-auth"

# Long enough to finish the message in hand, commit and leave the group (a cooperative
# rebalance then moves only this pod's partitions); Kubernetes' 30 s default is tight for
# consumers with slow processing.
DEFAULT_TERMINATION_GRACE_SECONDS: Final = 60


def selector_labels(kcg: KafkaConsumerGroup) -> dict[str, str]:
    """The Deployment's selector: one label, so it never has to change (it is immutable)."""
    return {GROUP_LABEL: kcg.metadata.name}


def workload_labels(kcg: KafkaConsumerGroup) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": kcg.metadata.name,
        "app.kubernetes.io/component": "consumer",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        **selector_labels(kcg),
    }


def status_selector(kcg: KafkaConsumerGroup) -> str:
    """`status.selector` for the scale subresource: the consumer pods' label selector."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(kcg).items()))


def owner_reference(kcg: KafkaConsumerGroup) -> dict[str, Any]:
    """Makes the CR the controller of what it owns; deleting the CR deletes it."""
    if not kcg.metadata.uid:
        raise ValueError("metadata.uid is needed for an owner reference")
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": kcg.metadata.name,
        "uid": kcg.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _object_meta(kcg: KafkaConsumerGroup, name: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "labels": workload_labels(kcg),
        "ownerReferences": [owner_reference(kcg)],
    }
    if kcg.metadata.namespace:
        meta["namespace"] = kcg.metadata.namespace
    return meta


def config_map_name(kcg: KafkaConsumerGroup) -> str:
    return f"{kcg.metadata.name}-kafka-client"


def deployment_name(kcg: KafkaConsumerGroup) -> str:
    return kcg.metadata.name


def render_config_map(kcg: KafkaConsumerGroup, config: ConsumerConfig) -> dict[str, Any]:
    data = {CONSUMER_PROPERTIES_FILE: config.consumer_properties_text()}
    producer = config.producer_properties_text()
    if producer is not None:
        data[PRODUCER_PROPERTIES_FILE] = producer
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _object_meta(kcg, config_map_name(kcg)),
        "data": data,
    }


def config_hash(config_map: Mapping[str, Any]) -> str:
    """sha256 of the ConfigMap's data: the pod template carries it, so a change rolls pods."""
    canonical = json.dumps(config_map.get("data", {}), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def workload_hash(kcg: KafkaConsumerGroup, config_map: Mapping[str, Any],
                  deployment: Mapping[str, Any]) -> str:
    """The digest in WORKLOAD_HASH_ANNOTATION. Replicas count only without spec.scaling:
    with it, the scaler owns them."""
    spec = {k: v for k, v in deployment["spec"].items() if k != "replicas"}
    pinned = kcg.spec.replicas if kcg.spec.scaling is None else None
    canonical = json.dumps([config_map, deployment["metadata"], spec, pinned], sort_keys=True,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def kafka_env(kcg: KafkaConsumerGroup, config: ConsumerConfig) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "KAFKA_BOOTSTRAP_SERVERS", "value": kcg.spec.kafka.bootstrap_servers},
        {"name": "KAFKA_GROUP_ID", "value": kcg.group_id},
        {"name": "KAFKA_TOPICS", "value": ",".join(kcg.spec.topics)},
        {"name": "KCG_DELIVERY_SEMANTICS", "value": kcg.spec.delivery_semantics.value},
        {"name": "KCG_CONSUMER_PROPERTIES", "value": f"{CONFIG_DIR}/{CONSUMER_PROPERTIES_FILE}"},
        {"name": "KCG_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    if config.producer is not None:
        env.append(
            {"name": "KCG_PRODUCER_PROPERTIES", "value": f"{CONFIG_DIR}/{PRODUCER_PROPERTIES_FILE}"}
        )
    if kcg.spec.kafka.secret_ref is not None:
        env.append({"name": "KCG_KAFKA_AUTH_DIR", "value": AUTH_DIR})
    return env


def kafka_volumes(kcg: KafkaConsumerGroup) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": CONFIG_VOLUME, "configMap": {"name": config_map_name(kcg)}}
    ]
    if kcg.spec.kafka.secret_ref is not None:
        volumes.append(
            {"name": AUTH_VOLUME, "secret": {"secretName": kcg.spec.kafka.secret_ref.name}}
        )
    return volumes


def kafka_volume_mounts(kcg: KafkaConsumerGroup) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True}
    ]
    if kcg.spec.kafka.secret_ref is not None:
        mounts.append({"name": AUTH_VOLUME, "mountPath": AUTH_DIR, "readOnly": True})
    return mounts


def _replace_by(
    key: str, theirs: list[dict[str, Any]], ours: list[dict[str, Any]], *, ours_first: bool
) -> list[dict[str, Any]]:
    taken = {entry[key] for entry in ours}
    kept = [entry for entry in theirs if entry.get(key) not in taken]
    return ours + kept if ours_first else kept + ours


def with_kafka_connection(
    container: Mapping[str, Any], kcg: KafkaConsumerGroup, config: ConsumerConfig
) -> dict[str, Any]:
    """A copy of `container` with the Kafka env vars and read-only mounts added."""
    out = copy.deepcopy(dict(container))
    # Ours first: the user's env may refer to them as $(KAFKA_GROUP_ID), which only
    # resolves for variables defined earlier in the list.
    out["env"] = _replace_by("name", out.get("env") or [], kafka_env(kcg, config), ours_first=True)
    mounts = kafka_volume_mounts(kcg)
    ours_names = {m["name"] for m in mounts}
    theirs = [m for m in out.get("volumeMounts") or [] if m.get("name") not in ours_names]
    out["volumeMounts"] = _replace_by("mountPath", theirs, mounts, ours_first=False)
    return out


def render_pod_template(
    kcg: KafkaConsumerGroup, config_map: Mapping[str, Any], config: ConsumerConfig
) -> dict[str, Any]:
    """The user's pod template with the client configuration wired into every container."""
    template = copy.deepcopy(kcg.spec.template)
    metadata = template.setdefault("metadata", {})
    labels = metadata.get("labels") or {}
    ours = workload_labels(kcg)
    # The app's own name label is more telling than ours; the rest must be ours.
    if "app.kubernetes.io/name" in labels:
        ours.pop("app.kubernetes.io/name")
    metadata["labels"] = {**labels, **ours}
    metadata["annotations"] = {
        **(metadata.get("annotations") or {}),
        CONFIG_HASH_ANNOTATION: config_hash(config_map),
    }
    metadata.pop("creationTimestamp", None)

    spec = template.setdefault("spec", {})
    spec["containers"] = [
        with_kafka_connection(c, kcg, config) for c in spec.get("containers") or []
    ]
    spec["volumes"] = _replace_by(
        "name", spec.get("volumes") or [], kafka_volumes(kcg), ours_first=False
    )
    if spec.get("terminationGracePeriodSeconds") is None:
        spec["terminationGracePeriodSeconds"] = DEFAULT_TERMINATION_GRACE_SECONDS
    return template


def with_outbox_relay(
    kcg: KafkaConsumerGroup, pod_template: Mapping[str, Any], config: ConsumerConfig,
    relay_image: str,
) -> dict[str, Any]:
    """The pod template with the outbox relay as a native sidecar (an init container with
    restartPolicy Always: it starts before the app and stops after it)."""
    assert kcg.spec.outbox is not None
    template = copy.deepcopy(dict(pod_template))
    relay = relay_container(kcg.spec.outbox, relay_image, kcg.spec.kafka.bootstrap_servers)
    relay = with_kafka_connection(relay, kcg, config)
    spec = template.setdefault("spec", {})
    spec["initContainers"] = _replace_by("name", spec.get("initContainers") or [], [relay],
                                         ours_first=False)
    return template


def render_deployment(
    kcg: KafkaConsumerGroup, pod_template: Mapping[str, Any], *, replicas: int
) -> dict[str, Any]:
    """The consumer Deployment, owned by the CR, running `pod_template`."""
    if replicas < 0:
        raise ValueError(f"replicas must be >= 0, got {replicas}")
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _object_meta(kcg, deployment_name(kcg)),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(kcg)},
            # Add the new consumer before stopping an old one: capacity never drops, and
            # with cooperative-sticky each step moves only a few partitions.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": copy.deepcopy(dict(pod_template)),
        },
    }


@dataclass(frozen=True)
class Workload:
    """Everything the operator applies for one KafkaConsumerGroup."""

    config: ConsumerConfig
    config_map: dict[str, Any]
    deployment: dict[str, Any]


def render_workload(
    kcg: KafkaConsumerGroup,
    *,
    replicas: int,
    auth_secret_data: Mapping[str, str] | None = None,
    relay_image: str = DEFAULT_RELAY_IMAGE,
) -> Workload:
    """ConfigMap and Deployment of `kcg`. Raises ConsumerConfigError for refused settings."""
    config = build_consumer_config(kcg, auth_secret_data)
    config_map = render_config_map(kcg, config)
    template = render_pod_template(kcg, config_map, config)
    if kcg.spec.outbox is not None:
        template = with_outbox_relay(kcg, template, config, relay_image)
    deployment = render_deployment(kcg, template, replicas=replicas)
    digest = workload_hash(kcg, config_map, deployment)
    deployment["metadata"].setdefault("annotations", {})[WORKLOAD_HASH_ANNOTATION] = digest
    return Workload(config=config, config_map=config_map, deployment=deployment)
