"""The relay's native-sidecar container and its health summary for OutboxReady."""

from __future__ import annotations

from typing import Any

import pytest

from kcg_operator.outbox.sidecar import RELAY_CONTAINER, relay_container, relay_health

pytestmark = pytest.mark.unit

SPEC = {"databaseSecretRef": {"name": "orders-db", "key": "dsn"}, "table": "outbox"}


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_native_sidecar_shape() -> None:
    c = relay_container(SPEC, "ghcr.io/kcg/operator:1.0", "kafka:9092")
    assert c["name"] == RELAY_CONTAINER
    assert c["restartPolicy"] == "Always"
    assert c["command"] == ["kcg", "relay"]
    assert c["image"] == "ghcr.io/kcg/operator:1.0"
    env = _env(c)
    assert env["OUTBOX_DSN"] == {"secretKeyRef": {"name": "orders-db", "key": "dsn"}}
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["OUTBOX_TABLE"] == "outbox"
    assert env["OUTBOX_METRICS_PORT"] == "9310"


def test_probes_point_at_the_health_port() -> None:
    c = relay_container(SPEC, "img", "k:9092", port=9400)
    port_name = c["ports"][0]["name"]
    assert c["ports"][0]["containerPort"] == 9400
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": port_name}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port_name}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port_name}
    assert len(port_name) <= 15  # IANA_SVC_NAME


def test_hardened_security_context_and_resources() -> None:
    c = relay_container(SPEC, "img", "k:9092")
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]


def test_optional_spec_keys_become_env() -> None:
    spec = {
        **SPEC,
        "topicPattern": "events.${aggregatetype}",
        "batchSize": 2000,
        "pollIntervalMilliseconds": 50,
        "initSchema": True,
        "resources": {"requests": {"cpu": "200m"}},
    }
    c = relay_container(spec, "img", "k:9092")
    env = _env(c)
    assert env["OUTBOX_TOPIC_PATTERN"] == "events.${aggregatetype}"
    assert env["OUTBOX_BATCH_SIZE"] == "2000"
    assert env["OUTBOX_POLL_INTERVAL_MS"] == "50"
    assert env["OUTBOX_INIT_SCHEMA"] == "true"
    assert c["resources"] == {"requests": {"cpu": "200m"}}


def test_snake_case_spec_and_default_secret_key() -> None:
    c = relay_container({"database_secret_ref": {"name": "db"}}, "img", "k:9092")
    assert _env(c)["OUTBOX_DSN"] == {"secretKeyRef": {"name": "db", "key": "dsn"}}


def test_extra_env_never_overrides_ours() -> None:
    c = relay_container(SPEC, "img", "k:9092", extra_env=[
        {"name": "OUTBOX_DSN", "value": "postgresql://inline"},
        {"name": "OUTBOX_LOG_LEVEL", "value": "DEBUG"},
    ])
    env = _env(c)
    assert env["OUTBOX_DSN"] == {"secretKeyRef": {"name": "orders-db", "key": "dsn"}}
    assert env["OUTBOX_LOG_LEVEL"] == "DEBUG"


def test_secret_reference_is_required() -> None:
    with pytest.raises(ValueError, match=r"databaseSecretRef\.name is required"):
        relay_container({"table": "outbox"}, "img", "k:9092")


def _pod(name: str, ready: bool, waiting: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"name": RELAY_CONTAINER, "ready": ready}
    if waiting:
        status["state"] = {"waiting": {"reason": waiting}}
    return {"metadata": {"name": name}, "status": {"initContainerStatuses": [status]}}


def test_relay_health_summary() -> None:
    assert relay_health([]).status == "Unknown"
    ok = relay_health([_pod("a", True), _pod("b", True)])
    assert (ok.status, ok.reason, ok.message) == ("True", "RelaysReady", "2/2 outbox relays ready")
    bad = relay_health([_pod("a", True), _pod("b", False, "CrashLoopBackOff")])
    assert bad.status == "False" and bad.reason == "RelaysNotReady"
    assert "1/2" in bad.message and "b (CrashLoopBackOff)" in bad.message
    # Pods without the sidecar (e.g. before a rollout finished) are not counted.
    assert relay_health([{"metadata": {"name": "x"}, "status": {}}]).status == "Unknown"
