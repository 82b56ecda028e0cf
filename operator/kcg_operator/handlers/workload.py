"""kopf handlers: follow KafkaConsumerGroups and the Deployments and ConfigMaps they own.

Watch handlers only: they record what the apiserver says in the registry and wake the
controller loop (kcg_operator.controller), which alone writes (the workload, replicas,
status, Events), and only on the replica that leads. kopf itself writes nothing: no
state-changing handlers means no progress annotations, finalizers or diff-bases, so a
standby replica can watch everything and stay silent.

They are coroutines although they only take the registry's lock for a moment: kopf runs a
plain function in its thread pool, one thread hop per watch event (tens of thousands at
start-up with thousands of objects).
"""

from __future__ import annotations

from typing import Any

import kopf

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
from kcg_operator.workload.pod_health import deployment_pods
from kcg_operator.workload.render import WORKLOAD_HASH_ANNOTATION


def _parsed(body: Any) -> tuple[KafkaConsumerGroup | None, str | None]:
    """The object's spec parsed, or why it does not parse (the InvalidSpec message)."""
    try:
        return parse_kafka_consumer_group(body), None
    except InvalidKafkaConsumerGroup as exc:
        return None, str(exc)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def track(event: kopf.RawEvent, body: kopf.Body, name: str, namespace: str | None,
                memo: Any, **_: Any) -> None:
    """Keep the registry in step with the apiserver, including deletions."""
    registry = runtime.of(memo).registry
    key = (namespace or "", name)
    if event["type"] == "DELETED":
        registry.remove(key)
        return
    registry.seen(key, body, *_parsed(body))


@kopf.on.event("apps", "v1", "deployments", labels={GROUP_LABEL: kopf.PRESENT})
async def track_deployment(body: kopf.Body, event: kopf.RawEvent, namespace: str | None,
                           memo: Any, **_: Any) -> None:
    """Current and ready replicas of our Deployments, without a read per sweep."""
    owner = body.metadata.get("labels", {}).get(GROUP_LABEL)
    if not owner:
        return
    replicas = None if event["type"] == "DELETED" else (
        int(body.spec.get("replicas") or 0), int(body.status.get("readyReplicas") or 0))
    applied = (body.metadata.get("annotations") or {}).get(WORKLOAD_HASH_ANNOTATION)
    generation = body.metadata.get("generation")
    runtime.of(memo).registry.deployment_seen((namespace or "", owner), replicas, applied,
                                              int(generation) if generation else None,
                                              deployment_pods(body))


@kopf.on.event("", "v1", "configmaps", labels={GROUP_LABEL: kopf.PRESENT})
async def track_configmap(body: kopf.Body, event: kopf.RawEvent, namespace: str | None,
                          memo: Any, **_: Any) -> None:
    """A consumer ConfigMap deleted by hand is put back by the leader's next pass."""
    owner = body.metadata.get("labels", {}).get(GROUP_LABEL)
    if owner:
        runtime.of(memo).registry.config_map_seen((namespace or "", owner),
                                                  event["type"] != "DELETED")
