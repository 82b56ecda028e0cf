"""The outbox relay's native-sidecar container, rendered from the typed spec.outbox."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kcg_operator.api.models import OutboxSpec
from kcg_operator.workload.sidecar import RELAY_CONTAINER, relay_container

pytestmark = pytest.mark.unit
CRD = Path(__file__).resolve().parents[2] / "crds" / "kcg.dev_kafkaconsumergroups.yaml"


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def _outbox(**kw: Any) -> OutboxSpec:
    return OutboxSpec.model_validate({"databaseSecretRef": {"name": "orders-db"}, **kw})


def test_native_sidecar_shape() -> None:
    c = relay_container(_outbox(), "ghcr.io/kcg/operator:1.0", "kafka:9092")
    assert (c["name"], c["restartPolicy"], c["command"]) == (
        RELAY_CONTAINER, "Always", ["kcg", "relay"])
    env = _env(c)
    assert env["OUTBOX_DSN"] == {"secretKeyRef": {"name": "orders-db", "key": "dsn"}}
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    port = c["ports"][0]
    assert env["OUTBOX_METRICS_PORT"] == str(port["containerPort"])
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"),
                        ("readinessProbe", "/readyz")):
        assert c[probe]["httpGet"] == {"path": path, "port": port["name"]}
    assert len(port["name"]) <= 15  # IANA_SVC_NAME


def test_hardened_like_the_operator() -> None:
    c = relay_container(_outbox(), "img", "k:9092")
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["resources"]["limits"]["memory"] and "cpu" not in c["resources"]["limits"]


def test_every_setting_reaches_the_relay() -> None:
    env = _env(relay_container(
        _outbox(table="shop.outbox", topicPattern="events.${aggregatetype}", batchSize=2000,
                pollIntervalMilliseconds=50, databaseSecretRef={"name": "db", "key": "url"}),
        "img", "k:9092"))
    assert env["OUTBOX_TABLE"] == "shop.outbox"
    assert env["OUTBOX_TOPIC_PATTERN"] == "events.${aggregatetype}"
    assert (env["OUTBOX_BATCH_SIZE"], env["OUTBOX_POLL_INTERVAL_MS"]) == ("2000", "50")
    assert env["OUTBOX_DSN"] == {"secretKeyRef": {"name": "db", "key": "url"}}


def test_an_omitted_setting_renders_the_crds_default() -> None:
    crd = yaml.safe_load(CRD.read_text())
    props = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"]["outbox"]["properties"]
    env = _env(relay_container(_outbox(), "img", "k:9092"))
    assert env["OUTBOX_TABLE"] == props["table"]["default"]
    assert env["OUTBOX_TOPIC_PATTERN"] == props["topicPattern"]["default"]
    assert env["OUTBOX_BATCH_SIZE"] == str(props["batchSize"]["default"])
    assert env["OUTBOX_POLL_INTERVAL_MS"] == str(props["pollIntervalMilliseconds"]["default"])


def test_a_relay_started_without_settings_runs_with_the_crds_defaults() -> None:
    """`kcg relay` by hand (no OUTBOX_* settings) and the sidecar (the CRD's defaults
    rendered) run alike: one set of defaults."""
    from kcg_operator.outbox.config import load_config

    crd = yaml.safe_load(CRD.read_text())
    props = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"]["outbox"]["properties"]
    bare = load_config({"OUTBOX_DSN": "postgresql://db/app", "KAFKA_BOOTSTRAP_SERVERS": "k:1"})
    assert bare.table == props["table"]["default"]
    assert bare.router.pattern == props["topicPattern"]["default"]
    assert bare.batch_size == props["batchSize"]["default"]
    assert bare.poll_interval_seconds * 1000 == props["pollIntervalMilliseconds"]["default"]
