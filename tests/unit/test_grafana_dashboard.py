"""The Grafana dashboard (charts/kcg-operator/files/grafana): a dashboard Grafana imports as
it is (datasource as a variable, namespace and group variables from label_values, every
panel the issue lists), and the chart's ConfigMap for Grafana's dashboard sidecar, rendered
by the real helm. That every query answers with data is tested against a real Prometheus in
tests/e2e/test_prometheus_alerts_and_dashboard.py."""

from __future__ import annotations

import importlib
import json
from typing import Any

import pytest

from tests.unit.chart_support import CHART, helm, render, run

pytestmark = pytest.mark.unit

DASHBOARDS = sorted((CHART / "files" / "grafana").glob("*.json"))
DASHBOARD = CHART / "files" / "grafana" / "kcg-operator.json"
TEMPLATE = "templates/grafana-dashboard.yaml"


def _config_maps(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "ConfigMap" and "dashboards" in d["metadata"]["name"]]


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def _panels() -> list[dict[str, Any]]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def _exprs() -> str:
    return "\n".join(t["expr"] for p in _panels() for t in p["targets"])


# --------------------------------------------------------------------------- the JSON


def test_dashboard_is_grafana_json_with_a_recent_schema_and_a_stable_uid() -> None:
    dash = _dashboard()
    assert dash["schemaVersion"] >= 36  # Grafana 9+: datasource objects, state timelines
    assert dash["uid"] == "kcg-operator" and dash["title"] == "kcg-operator"
    assert "id" not in dash, "an id ties the file to one Grafana's database"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_datasource_is_a_variable_and_namespace_and_group_come_from_label_values() -> None:
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["namespace"]["definition"].startswith("label_values(")
    assert variables["group"]["definition"] == \
        'label_values(kcg_consumergroup_partitions{namespace=~"$namespace"}, name)'
    for name in ("namespace", "group"):
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    for panel in _panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_target_has_an_expr_and_group_panels_filter_on_the_variables() -> None:
    for panel in _panels():
        assert panel["targets"], panel["title"]
        assert panel["description"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.strip(), panel["title"]
            if "kcg_consumergroup_" in expr or "_replicas" in expr:
                assert 'namespace=~"$namespace", name=~"$group"' in expr, panel["title"]
            if "kcg_outbox_" in expr:
                assert 'namespace=~"$namespace", kcg_dev_group=~"$group"' in expr, \
                    panel["title"]
            # Counters are read as rates over Grafana's own window, never raw.
            if "_total" in expr or "_bucket" in expr:
                assert "$__rate_interval" in expr, panel["title"]


@pytest.mark.parametrize(("what", "metric"), [
    ("lag per partition", "kcg_consumergroup_group_lag{"),
    ("seconds behind per partition", "kcg_consumergroup_group_lag_seconds{"),
    ("the time-lag target", "kcg_consumergroup_max_time_lag_target_seconds{"),
    ("replicas desired", "kcg_desired_replicas{"),
    ("replicas current", "kcg_current_replicas{"),
    ("partition cap", "kcg_consumergroup_partitions{"),
    ("Burrow status per partition", "kcg_consumergroup_partition_status{"),
    ("scale events", "kcg_scale_events_total{"),
    ("scaler errors", "kcg_kafka_request_errors_total["),
    ("Kafka reachable", "kcg_kafka_up"),
    ("relay throughput", "kcg_outbox_events_published_total{"),
    ("relay failures", "kcg_outbox_events_failed_total{"),
    ("relay backlog", "kcg_outbox_batch_events_"),
    ("oldest pending event", "kcg_outbox_oldest_pending_event_age_seconds{"),
    ("relays up", 'up{job="kcg-outbox-relay"'),
])
def test_the_dashboard_shows(what: str, metric: str) -> None:
    assert metric in _exprs(), f"no panel shows {what} ({metric})"


def test_burrow_status_panel_names_burrows_statuses() -> None:
    panel = next(p for p in _panels() if "Burrow" in p["title"])
    assert panel["type"] == "state-timeline"
    mapping = panel["fieldConfig"]["defaults"]["mappings"][0]["options"]
    # As kcg_consumergroup_partition_status numbers them (operator/kcg_operator/metrics.py).
    metrics = importlib.import_module("kcg_operator.metrics")
    assert {int(k): v["text"] for k, v in mapping.items()} == \
        {code: name for name, code in metrics.STATUS_CODES.items()}


# --------------------------------------------------------------------------- the chart


def test_no_dashboard_config_map_by_default() -> None:
    assert not _config_maps(render())


def test_config_map_carries_the_files_unchanged_with_the_sidecar_label() -> None:
    (cm,) = _config_maps(render("--set", "grafana.dashboards.enabled=true"))
    assert cm["metadata"]["namespace"] == "ops"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert set(cm["data"]) == {p.name for p in DASHBOARDS}
    for path in DASHBOARDS:
        assert cm["data"][path.name] == path.read_text().rstrip("\n")
        json.loads(cm["data"][path.name])


def test_label_namespace_and_annotations_can_be_set() -> None:
    (cm,) = _config_maps(render(
        "--set", "grafana.dashboards.enabled=true",
        "--set", "grafana.dashboards.label=my.org/dashboard",
        "--set-string", "grafana.dashboards.labelValue=kafka",
        "--set", "grafana.dashboards.namespace=monitoring",
        "--set", "grafana.dashboards.labels.team=platform",
        "--set", "grafana.dashboards.annotations.grafana_folder=Kafka"))
    meta = cm["metadata"]
    assert meta["namespace"] == "monitoring"
    assert meta["labels"]["my.org/dashboard"] == "kafka"
    assert "grafana_dashboard" not in meta["labels"]
    assert meta["labels"]["team"] == "platform"
    assert meta["annotations"] == {"grafana_folder": "Kafka"}


def test_helm_lint_strict_with_the_dashboards_on() -> None:
    proc = run(helm(), "lint", "--strict", CHART, "--set", "grafana.dashboards.enabled=true")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(("setting", "message"), [
    ("grafana.dashboards.enabeld=true", "enabeld"),
    ("grafana.dashboard.enabled=true", "dashboard"),
    ("grafana.dashboards.label=", "label"),
    ("grafana.dashboards.labelValue=not valid", "labelValue"),
])
def test_values_schema_refuses_bad_grafana_values(setting: str, message: str) -> None:
    proc = run(helm(), "template", "rel", CHART, "--set", setting)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
