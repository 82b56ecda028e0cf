"""stack/prometheus.py's pure parts: the configuration the real promtool accepts, and the
Kubernetes service discovery it serves over HTTP SD, labelled as Prometheus' own Kubernetes SD
labels targets (so the documented relabel_configs work unchanged)."""

from __future__ import annotations

import importlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

pytestmark = pytest.mark.unit

prom: Any = importlib.import_module("prometheus")  # stack/ is on sys.path (tests/conftest.py)


def _pod(name: str, ip: str | None, phase: str = "Running") -> client.V1Pod:
    port = client.V1ContainerPort(name="outbox-health", container_port=9310)
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, namespace="shop", uid="u-1",
                                     labels={"kcg.dev/group": "orders"},
                                     annotations={"a.b/c": "d"}),
        spec=client.V1PodSpec(
            node_name="kcg-node",
            init_containers=[client.V1Container(name="outbox-relay", ports=[port],
                                                restart_policy="Always")],
            containers=[client.V1Container(name="app"),
                        client.V1Container(name="web", ports=[client.V1ContainerPort(
                            container_port=8080)])]),
        status=client.V1PodStatus(pod_ip=ip, phase=phase, conditions=[
            client.V1PodCondition(type="Ready", status="True")]))


def test_pod_role_has_a_target_per_container_port_native_sidecars_included() -> None:
    groups = prom.pod_targets([_pod("orders-1", "198.18.0.7"), _pod("orders-2", None)])
    assert [g["targets"] for g in groups] == [["198.18.0.7:9310"], ["198.18.0.7:8080"]]
    relay = groups[0]["labels"]
    assert relay["__meta_kubernetes_pod_container_init"] == "true"
    assert relay["__meta_kubernetes_pod_container_name"] == "outbox-relay"
    assert relay["__meta_kubernetes_pod_container_port_name"] == "outbox-health"
    assert relay["__meta_kubernetes_pod_label_kcg_dev_group"] == "orders"
    assert relay["__meta_kubernetes_pod_labelpresent_kcg_dev_group"] == "true"
    assert relay["__meta_kubernetes_pod_annotation_a_b_c"] == "d"
    assert relay["__meta_kubernetes_pod_ready"] == "true"
    assert relay["__meta_kubernetes_namespace"] == "shop"
    assert groups[1]["labels"]["__meta_kubernetes_pod_container_init"] == "false"
    assert groups[1]["labels"]["__meta_kubernetes_pod_container_port_name"] == ""


def test_endpoints_role_has_the_services_labels_and_the_pod() -> None:
    ep = client.V1Endpoints(
        metadata=client.V1ObjectMeta(name="kcg-kcg-operator-metrics", namespace="ops"),
        subsets=[client.V1EndpointSubset(
            addresses=[client.V1EndpointAddress(
                ip="198.18.0.9", target_ref=client.V1ObjectReference(kind="Pod", name="kcg-op-1"))],
            not_ready_addresses=[client.V1EndpointAddress(ip="198.18.0.10")],
            ports=[client.CoreV1EndpointPort(name="metrics", port=9090)])])
    svc = client.V1Service(metadata=client.V1ObjectMeta(
        name="kcg-kcg-operator-metrics", namespace="ops",
        labels={"app.kubernetes.io/name": "kcg-operator"}))
    groups = prom.endpoints_targets([ep], {("ops", "kcg-kcg-operator-metrics"): svc})
    assert [g["targets"] for g in groups] == [["198.18.0.9:9090"], ["198.18.0.10:9090"]]
    ready, not_ready = (g["labels"] for g in groups)
    assert ready["__meta_kubernetes_service_label_app_kubernetes_io_name"] == "kcg-operator"
    assert ready["__meta_kubernetes_endpoint_port_name"] == "metrics"
    assert ready["__meta_kubernetes_pod_name"] == "kcg-op-1"
    assert ready["__meta_kubernetes_endpoint_ready"] == "true"
    assert not_ready["__meta_kubernetes_endpoint_ready"] == "false"
    assert "__meta_kubernetes_pod_name" not in not_ready


def test_config_is_valid_for_promtool_and_names_the_jobs_the_rules_expect(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: apt-get install prometheus")
    rules = sorted(prom.RULES_DIR.glob("*.rules.yaml"))
    cfg = prom.config("http://127.0.0.1:1", rules, 2.0, ["shop"], ["127.0.0.1:9090"])
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([promtool, "check", "config", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert set(jobs) == {"kcg-operator-metrics", "kcg-outbox-relay"}
    rule_text = "".join(p.read_text() for p in rules)
    for job in jobs:
        assert f'job="{job}"' in rule_text
    assert jobs["kcg-operator-metrics"]["honor_labels"] is True
    assert jobs["kcg-outbox-relay"]["http_sd_configs"][0]["url"] == \
        "http://127.0.0.1:1/pod?namespaces=shop"
    assert cfg["global"]["scrape_interval"] == "2000ms"
