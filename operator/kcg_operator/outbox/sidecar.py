"""The relay as a native sidecar of the consumer pods, and its health as the operator sees it
(pure functions over plain dicts).

`relay_container` renders the container; the workload renderer adds it to the pod
template's initContainers (a native sidecar: `restartPolicy: Always` on an init container,
Kubernetes 1.29+, started before the app and stopped after it) and passes it through
`with_kafka_connection` like the app's containers, which adds the Kafka auth files
(KCG_KAFKA_AUTH_DIR) and KCG_POD_NAME.

Keys read from `spec.outbox` (camelCase, as on the wire; snake_case is accepted too):

    databaseSecretRef.name       Secret with the DSN (required)
    databaseSecretRef.key        key in that Secret (default "dsn")
    table                        -> OUTBOX_TABLE (default outbox)
    deadLetterTable              -> OUTBOX_DEAD_LETTER_TABLE
    topicPattern                 -> OUTBOX_TOPIC_PATTERN
    batchSize                    -> OUTBOX_BATCH_SIZE
    pollIntervalMilliseconds     -> OUTBOX_POLL_INTERVAL_MS
    initSchema                   -> OUTBOX_INIT_SCHEMA
    resources                    container resources (default: small requests, memory limit)
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from kcg_operator.outbox.config import DEFAULT_METRICS_PORT

RELAY_CONTAINER: Final = "outbox-relay"
PORT_NAME: Final = "outbox-health"
DEFAULT_RUN_AS_USER: Final = 65532
DEFAULT_RESOURCES: Final[Mapping[str, Any]] = {
    "requests": {"cpu": "50m", "memory": "64Mi"},
    # No CPU limit: throttling a relay only adds latency; memory is bounded by the round
    # size and librdkafka's queue (64 MB), so a limit catches leaks.
    "limits": {"memory": "256Mi"},
}
_ENV_KEYS: Final = (
    # (spec key, snake_case key, env var)
    ("table", "table", "OUTBOX_TABLE"),
    ("deadLetterTable", "dead_letter_table", "OUTBOX_DEAD_LETTER_TABLE"),
    ("topicPattern", "topic_pattern", "OUTBOX_TOPIC_PATTERN"),
    ("batchSize", "batch_size", "OUTBOX_BATCH_SIZE"),
    ("pollIntervalMilliseconds", "poll_interval_milliseconds", "OUTBOX_POLL_INTERVAL_MS"),
    ("initSchema", "init_schema", "OUTBOX_INIT_SCHEMA"),
)


def _get(spec: Mapping[str, Any], camel: str, snake: str) -> Any:
    return spec[camel] if camel in spec else spec.get(snake)


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def relay_container(
    outbox_spec: Mapping[str, Any],
    image: str,
    kafka_bootstrap: str,
    *,
    name: str = RELAY_CONTAINER,
    port: int = DEFAULT_METRICS_PORT,
    image_pull_policy: str | None = None,
    run_as_user: int = DEFAULT_RUN_AS_USER,
    extra_env: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The relay's native-sidecar container for a consumer pod (an initContainers entry).

    Raises ValueError when `outbox_spec` lacks the Secret reference.
    """
    secret_ref = _get(outbox_spec, "databaseSecretRef", "database_secret_ref") or {}
    secret_name = secret_ref.get("name")
    if not secret_name:
        raise ValueError("spec.outbox.databaseSecretRef.name is required: name the Secret "
                         "holding the database connection string")
    env: list[dict[str, Any]] = [
        {
            "name": "OUTBOX_DSN",
            "valueFrom": {
                "secretKeyRef": {"name": secret_name, "key": secret_ref.get("key") or "dsn"}
            },
        },
        {"name": "KAFKA_BOOTSTRAP_SERVERS", "value": kafka_bootstrap},
        {"name": "OUTBOX_METRICS_PORT", "value": str(port)},
        {"name": "OUTBOX_RELAY_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        # Read-only root filesystem: no .pyc writes; logs unbuffered for `kubectl logs`.
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    for camel, snake, var in _ENV_KEYS:
        value = _get(outbox_spec, camel, snake)
        if value is not None:
            env.append({"name": var, "value": _env_value(value)})
    ours = {e["name"] for e in env}
    env += [dict(e) for e in extra_env if e.get("name") not in ours]

    def probe(path: str, period: int, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": path, "port": PORT_NAME},
            "periodSeconds": period,
            "timeoutSeconds": 3,
            "failureThreshold": failures,
        }

    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "command": ["kcg", "relay"],
        # Native sidecar: starts before the app containers, runs beside them, stops after.
        "restartPolicy": "Always",
        "env": env,
        "ports": [{"name": PORT_NAME, "containerPort": port, "protocol": "TCP"}],
        # The app starts once the relay serves /healthz (its HTTP server is up), not once
        # the database is reachable: the relay must not hold the app hostage.
        "startupProbe": probe("/healthz", 1, 60),
        # Liveness: the loop is making progress; outages of PostgreSQL or Kafka do not
        # restart the relay (a restart would not fix them).
        "livenessProbe": probe("/healthz", 10, 3),
        # Readiness: connected to both; feeds the pod's Ready and the OutboxReady condition.
        "readinessProbe": probe("/readyz", 5, 3),
        "resources": copy.deepcopy(
            dict(_get(outbox_spec, "resources", "resources") or DEFAULT_RESOURCES)
        ),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": run_as_user,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if image_pull_policy:
        container["imagePullPolicy"] = image_pull_policy
    return container


@dataclass(frozen=True)
class RelayHealth:
    """Input for the OutboxReady condition: status "True", "False" or "Unknown"."""

    status: str
    reason: str
    message: str


def relay_health(pods: Iterable[Mapping[str, Any]], name: str = RELAY_CONTAINER) -> RelayHealth:
    """Summarize the relay sidecars' readiness (their /readyz probe, as the kubelet reports
    it in status.initContainerStatuses) over the consumer pods."""
    ready: list[str] = []
    not_ready: list[str] = []
    for pod in pods:
        pod_name = str((pod.get("metadata") or {}).get("name", "?"))
        statuses = (pod.get("status") or {}).get("initContainerStatuses") or []
        status = next((s for s in statuses if s.get("name") == name), None)
        if status is None:
            continue
        if status.get("ready"):
            ready.append(pod_name)
            continue
        state = status.get("state") or {}
        waiting = (state.get("waiting") or {}).get("reason")
        not_ready.append(f"{pod_name} ({waiting})" if waiting else pod_name)
    total = len(ready) + len(not_ready)
    if total == 0:
        return RelayHealth("Unknown", "NoRelays", "no pod reports an outbox relay yet")
    if not_ready:
        shown = ", ".join(sorted(not_ready)[:5]) + (" ..." if len(not_ready) > 5 else "")
        return RelayHealth(
            "False", "RelaysNotReady",
            f"{len(ready)}/{total} outbox relays ready; not ready: {shown} "
            "(see the relay's /readyz or logs: database or Kafka unreachable?)",
        )
    return RelayHealth("True", "RelaysReady", f"{total}/{total} outbox relays ready")
