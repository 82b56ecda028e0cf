"""The outbox relay as a native sidecar of the consumer pods (pure).

`relay_container` renders the container from the typed ``spec.outbox``; the workload
renderer adds it to the pod template's initContainers (a native sidecar: `restartPolicy:
Always` on an init container, Kubernetes 1.29+, started before the app and stopped after
it) and passes it through `with_kafka_connection` like the app's containers, which adds the
Kafka auth files (KCG_KAFKA_AUTH_DIR) and KCG_POD_NAME.

Every setting of ``spec.outbox`` is written as the relay's environment, defaults included,
so the relay runs with exactly what `kubectl get kcg -o yaml` shows (the apiserver fills in
the CRD's defaults, the same ones as the model's).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from kcg_operator.api.models import OutboxSpec
from kcg_operator.outbox.config import DEFAULT_METRICS_PORT

RELAY_CONTAINER: Final = "outbox-relay"
PORT_NAME: Final = "outbox-health"
RUN_AS_USER: Final = 65532
RESOURCES: Final[Mapping[str, Any]] = {
    "requests": {"cpu": "50m", "memory": "64Mi"},
    # No CPU limit: throttling a relay only adds latency; memory is bounded by the round
    # size and librdkafka's queue (64 MB), so a limit catches leaks.
    "limits": {"memory": "256Mi"},
}


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": PORT_NAME}, "periodSeconds": period,
            "timeoutSeconds": 3, "failureThreshold": failures}


def relay_env(outbox: OutboxSpec, kafka_bootstrap: str) -> list[dict[str, Any]]:
    """The relay's settings (see `kcg relay --help-env`) from ``spec.outbox``."""
    ref = outbox.database_secret_ref
    return [
        {"name": "OUTBOX_DSN",
         "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}},
        {"name": "KAFKA_BOOTSTRAP_SERVERS", "value": kafka_bootstrap},
        {"name": "OUTBOX_METRICS_PORT", "value": str(DEFAULT_METRICS_PORT)},
        {"name": "OUTBOX_RELAY_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "OUTBOX_TABLE", "value": outbox.table},
        {"name": "OUTBOX_TOPIC_PATTERN", "value": outbox.topic_pattern},
        {"name": "OUTBOX_BATCH_SIZE", "value": str(outbox.batch_size)},
        {"name": "OUTBOX_POLL_INTERVAL_MS", "value": str(outbox.poll_interval_milliseconds)},
        # Read-only root filesystem: no .pyc writes; logs unbuffered for `kubectl logs`.
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]


def relay_container(outbox: OutboxSpec, image: str, kafka_bootstrap: str) -> dict[str, Any]:
    """The relay's native-sidecar container for a consumer pod (an initContainers entry)."""
    return {
        "name": RELAY_CONTAINER,
        "image": image,
        "command": ["kcg", "relay"],
        # Native sidecar: starts before the app containers, runs beside them, stops after.
        "restartPolicy": "Always",
        "env": relay_env(outbox, kafka_bootstrap),
        "ports": [{"name": PORT_NAME, "containerPort": DEFAULT_METRICS_PORT,
                   "protocol": "TCP"}],
        # The app starts once the relay serves /healthz (its HTTP server is up), not once
        # the database is reachable: the relay must not hold the app hostage.
        "startupProbe": _probe("/healthz", 1, 60),
        # Liveness: the loop is making progress; outages of PostgreSQL or Kafka do not
        # restart the relay (a restart would not fix them).
        "livenessProbe": _probe("/healthz", 10, 3),
        # Readiness: connected to both; feeds the pod's Ready and the OutboxReady condition.
        "readinessProbe": _probe("/readyz", 5, 3),
        "resources": {k: dict(v) for k, v in RESOURCES.items()},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
