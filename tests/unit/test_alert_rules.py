"""The chart's alert rules (charts/kcg-operator/files/prometheus): valid for promtool, unit-tested
with `promtool test rules` (every alert fires in one case and stays quiet in another), each
with its runbook section, and rendered by the chart into a PrometheusRule with the very same
groups. promtool comes from Debian's prometheus package; helm from the stack's cache."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.chart_support import CHART, REPO, helm, render, run

pytestmark = pytest.mark.unit

RULES = CHART / "files" / "prometheus"
RULE_FILES = sorted(RULES.glob("*.rules.yaml"))
TEST_FILES = sorted((RULES / "tests").glob("*.yaml"))
DOCS = REPO / "docs" / "alerts.md"
RUNBOOKS = "https://github.com/kcg-dev/kcg-operator/blob/main/docs/alerts.md"
OPERATOR_JOB = 'job="kcg-operator-metrics"'
RELAY_JOB = 'job="kcg-outbox-relay"'
SEVERITIES = {"critical", "warning"}


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool not found: install it with "
                    "`apt-get install -y --no-install-recommends prometheus` (Debian's "
                    "prometheus package carries promtool; stop the prometheus service it may "
                    "start, it listens on :9090)")
    return found


def _groups(path: Path) -> list[dict[str, Any]]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict) and set(doc) == {"groups"}, f"{path}: only `groups:` please"
    groups: list[dict[str, Any]] = doc["groups"]
    return groups


def _file_groups() -> list[dict[str, Any]]:
    """The groups of every rule file, in the order the chart reads them (sorted by path)."""
    return [group for path in RULE_FILES for group in _groups(path)]


def _alerts() -> list[dict[str, Any]]:
    return [rule for group in _file_groups() for rule in group["rules"]]


def _prometheus_rule(docs: list[dict[str, Any]]) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == "PrometheusRule"]
    assert len(found) == 1, f"expected one PrometheusRule, got {len(found)}"
    return found[0]


# --------------------------------------------------------------------------- the files


def test_rule_files_exist() -> None:
    assert [p.name for p in RULE_FILES] == ["kcg-operator.rules.yaml", "kcg-outbox.rules.yaml"]
    assert TEST_FILES, f"no promtool tests in {RULES / 'tests'}"


def test_promtool_check_rules() -> None:
    proc = run(_promtool(), "check", "rules", *RULE_FILES)
    assert proc.returncode == 0, f"promtool check rules failed:\n{proc.stdout}{proc.stderr}"


def test_promtool_test_rules() -> None:
    proc = run(_promtool(), "test", "rules", *TEST_FILES)
    assert proc.returncode == 0, f"promtool test rules failed:\n{proc.stdout}{proc.stderr}"
    assert proc.stdout.count("SUCCESS") == len(TEST_FILES), proc.stdout


def test_rule_files_are_plain_prometheus_without_helm_templating() -> None:
    for path in RULE_FILES:
        text = path.read_text()
        for helm_only in (".Values", ".Release", ".Chart", ".Files", "include ", "{{-", "-}}"):
            assert helm_only not in text, f"{path.name}: Helm templating ({helm_only!r})"


@pytest.mark.parametrize("alert", [r["alert"] for r in _alerts()])
def test_every_alert_has_severity_summary_description_and_runbook(alert: str) -> None:
    rule = next(r for r in _alerts() if r["alert"] == alert)
    assert alert.startswith("Kcg")
    assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook_url"}
    assert "$labels" in annotations["description"], "the description names the group or target"
    assert annotations["runbook_url"] == f"{RUNBOOKS}#{alert.lower()}"
    # The runbook section the anchor points to (GitHub's anchor of a heading is its text
    # in lower case).
    assert f"\n### {alert}\n" in DOCS.read_text(), f"docs/alerts.md: no `### {alert}` section"


def test_alert_names_are_unique() -> None:
    names = [r["alert"] for r in _alerts()]
    assert len(names) == len(set(names))
    assert all("record" not in r for r in _alerts())


def test_the_partition_cap_alert_says_how_many_partitions() -> None:
    rule = next(r for r in _alerts() if r["alert"] == "KcgLagGrowingAtPartitionCap")
    assert "ceil(" in rule["expr"] and "kcg_consumergroup_production_rate" in rule["expr"]
    assert "kcg_consumergroup_replica_rate" in rule["expr"]
    assert "needs at least {{ $value }} partitions" in rule["annotations"]["description"]


@pytest.mark.parametrize("alert", [r["alert"] for r in _alerts()])
def test_every_alert_has_a_firing_and_a_quiet_promtool_case(alert: str) -> None:
    firing = quiet = 0
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check["alertname"] != alert:
                    continue
                if check.get("exp_alerts"):
                    firing += 1
                else:
                    quiet += 1
    assert firing, f"{alert}: no promtool case where it fires"
    assert quiet, f"{alert}: no promtool case where it must not fire"


def test_promtool_tests_load_every_rule_file() -> None:
    loaded = {(path.parent / f).resolve() for path in TEST_FILES
              for f in yaml.safe_load(path.read_text())["rule_files"]}
    assert loaded == {p.resolve() for p in RULE_FILES}


# --------------------------------------------------------------------------- the chart


def test_no_prometheus_rule_by_default() -> None:
    assert not [d for d in render() if d["kind"] == "PrometheusRule"]


def test_chart_renders_the_files_groups_unchanged() -> None:
    # Release "kcg-operator": its metrics Service, hence the ServiceMonitor's job, is
    # kcg-operator-metrics, the job the files name.
    rule = _prometheus_rule(render("--set", "prometheusRule.enabled=true",
                                   release="kcg-operator"))
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "ops"
    assert rule["spec"]["groups"] == _file_groups()


def test_chart_rewrites_jobs_runbooks_and_adds_labels(tmp_path: Path) -> None:
    docs = render("--set", "prometheusRule.enabled=true",
                   "--set", "prometheusRule.labels.release=prom",
                   "--set", "prometheusRule.ruleLabels.team=platform",
                   "--set", "prometheusRule.ruleLabels.severity=ignored",
                   "--set", "prometheusRule.relayJob=shop/relays",
                   "--set", "prometheusRule.runbookBaseURL=https://wiki.example/kcg",
                   release="rel")
    rule = _prometheus_rule(docs)
    assert rule["metadata"]["labels"]["release"] == "prom"
    # What the chart promises, applied by hand to the files' groups.
    expected = copy.deepcopy(_file_groups())
    for group in expected:
        for r in group["rules"]:
            r["expr"] = (r["expr"].replace(OPERATOR_JOB, 'job="rel-kcg-operator-metrics"')
                         .replace(RELAY_JOB, 'job="shop/relays"'))
            r["annotations"]["runbook_url"] = r["annotations"]["runbook_url"].replace(
                RUNBOOKS, "https://wiki.example/kcg")
            r["labels"] = {"team": "platform", **r["labels"]}
    assert rule["spec"]["groups"] == expected
    exprs = "\n".join(r["expr"] for g in rule["spec"]["groups"] for r in g["rules"])
    assert 'job="rel-kcg-operator-metrics"' in exprs and 'job="shop/relays"' in exprs
    # The rendered groups are still valid Prometheus rules.
    rendered = tmp_path / "rendered.rules.yaml"
    rendered.write_text(json.dumps({"groups": rule["spec"]["groups"]}))
    proc = run(_promtool(), "check", "rules", rendered)
    assert proc.returncode == 0, f"promtool check rules failed:\n{proc.stdout}{proc.stderr}"


def test_operator_job_can_be_set() -> None:
    rule = _prometheus_rule(render("--set", "prometheusRule.enabled=true",
                                    "--set", "prometheusRule.operatorJob=monitoring/kcg"))
    for name in ("KcgOperatorAbsent", "KcgOperatorNotLeading"):
        expr = next(r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]
                    if r["alert"] == name)
        assert 'max by (job) (up{job="monitoring/kcg"})' in expr
        assert OPERATOR_JOB not in expr


def test_helm_lint_strict_with_the_rules_on() -> None:
    proc = run(helm(), "lint", "--strict", CHART, "--set", "prometheusRule.enabled=true",
                "--set", "prometheusRule.labels.release=prom")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(("setting", "message"), [
    ("prometheusRule.enabeld=true", "enabeld"),
    ("prometheusRule.relayJob=", "relayJob"),
    ("prometheusRule.runbookBaseURL=wiki", "runbookBaseURL"),
])
def test_values_schema_refuses_bad_prometheus_rule_values(setting: str, message: str) -> None:
    proc = run(helm(), "template", "rel", CHART, "--set", setting)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
