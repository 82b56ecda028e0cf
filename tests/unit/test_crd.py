"""The generated CRD: fresh in crds/, structural, documented, with the subresources."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kcg_operator.api.crd import CRD_FILE, build_crd, crd_yaml
from kcg_operator.api.models import MANAGED_CONSUMER_KEYS, managed_key_message
from kcg_operator.api.podtemplate_schema import (
    SCHEMA_FILE,
    convert,
    load_pod_template_schema,
    openapi_source,
)

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
REGENERATE = ".venv/bin/kcg crd --output crds/kcg.dev_kafkaconsumergroups.yaml"

# Keywords an apiextensions.k8s.io/v1 schema may hold (JSONSchemaProps).
ALLOWED_KEYWORDS = {
    "type", "format", "description", "default", "nullable", "enum", "pattern",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties",
    "required", "properties", "additionalProperties", "items", "anyOf",
    "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type",
    "x-kubernetes-validations",
}  # fmt: skip


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return build_crd()


@pytest.fixture(scope="module")
def schema(crd: dict[str, Any]) -> dict[str, Any]:
    version = crd["spec"]["versions"][0]
    result: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return result


def nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, prop in node.get("properties", {}).items():
        yield from nodes(prop, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from nodes(node["additionalProperties"], f"{path}{{}}")


def test_checked_in_crd_is_fresh() -> None:
    path = REPO / "crds" / CRD_FILE
    assert path.exists(), f"crds/{CRD_FILE} is missing; run: {REGENERATE}"
    assert path.read_text() == crd_yaml(), f"crds/{CRD_FILE} is stale; run: {REGENERATE}"


def test_yaml_is_the_object(crd: dict[str, Any]) -> None:
    assert yaml.safe_load(crd_yaml()) == crd


def test_names(crd: dict[str, Any]) -> None:
    assert crd["metadata"]["name"] == "kafkaconsumergroups.kcg.dev"
    names = crd["spec"]["names"]
    assert names["kind"] == "KafkaConsumerGroup"
    assert names["shortNames"] == ["kcg"]
    assert names["categories"] == ["kafka"]
    assert crd["spec"]["scope"] == "Namespaced"
    assert [v["name"] for v in crd["spec"]["versions"]] == ["v1alpha1"]


def test_subresources(crd: dict[str, Any]) -> None:
    assert crd["spec"]["versions"][0]["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }


def test_printer_columns(crd: dict[str, Any], schema: dict[str, Any]) -> None:
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [(c["name"], c["jsonPath"]) for c in columns] == [
        ("Topics", ".spec.topics"),
        ("Partitions", ".status.partitions"),
        ("Replicas", ".status.replicas"),
        ("Desired", ".status.desiredReplicas"),
        ("Lag", ".status.totalLag"),
        ("Time-Lag", ".status.maxTimeLagSeconds"),
        ("Status", ".status.health"),
        ("Assignor", ".status.assignor"),
        ("Age", ".metadata.creationTimestamp"),
    ]
    # The default view stays narrow; -o wide adds the time lag and the assignor.
    assert [c["name"] for c in columns if c.get("priority")] == ["Time-Lag", "Assignor"]
    for column in columns[1:-1]:  # the columns point at fields that exist, with their type
        _, section, field = column["jsonPath"].split(".")
        assert schema["properties"][section]["properties"][field]["type"] == column["type"]


def test_no_ref_anywhere(crd: dict[str, Any]) -> None:
    text = json.dumps(crd)
    assert "$ref" not in text and "$defs" not in text and '"allOf"' not in text
    assert '"oneOf"' not in text and '"title"' not in text and '"uniqueItems"' not in text


def test_structural(schema: dict[str, Any]) -> None:
    for path, node in nodes(schema):
        assert set(node) <= ALLOWED_KEYWORDS, (path, set(node) - ALLOWED_KEYWORDS)
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        else:
            assert "anyOf" not in node, path
            assert node.get("type") or node.get("x-kubernetes-preserve-unknown-fields"), path
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("additionalProperties") is not False, path
        if node.get("type") == "array":
            assert isinstance(node.get("items"), dict), path


def test_list_map_keys_are_required_or_defaulted(schema: dict[str, Any]) -> None:
    seen = 0
    for path, node in nodes(schema):
        if node.get("x-kubernetes-list-type") == "map":
            items = node["items"]
            for key in node["x-kubernetes-list-map-keys"]:
                assert key in items.get("required", []) or "default" in items["properties"][key], (
                    path,
                    key,
                )
                assert not items["properties"][key].get("nullable"), (path, key)
            seen += 1
        if node.get("x-kubernetes-list-type") == "set":
            assert node["items"]["type"] not in ("object", "array"), path
    assert seen > 10  # the pod template's containers, volumes, env, ports, ... and conditions


def test_every_api_field_has_a_description(schema: dict[str, Any]) -> None:
    for section in ("spec", "status"):
        for path, node in nodes(schema["properties"][section], section):
            if path.startswith("spec.template."):
                continue  # Kubernetes' own fields; `kubectl explain deployment` has them
            if path.endswith("{}"):
                continue  # the values of a map, described by the map
            assert node.get("description"), f"{path} has no description"


def test_pod_template_is_the_real_schema(schema: dict[str, Any]) -> None:
    template = schema["properties"]["spec"]["properties"]["template"]
    pod = template["properties"]["spec"]
    assert pod["required"] == ["containers"]
    containers = pod["properties"]["containers"]
    assert containers["x-kubernetes-list-type"] == "map"
    assert containers["x-kubernetes-list-map-keys"] == ["name"]
    container = containers["items"]
    assert container["required"] == ["name"]
    assert container["properties"]["ports"]["items"]["properties"]["protocol"]["default"] == "TCP"
    limits = container["properties"]["resources"]["properties"]["limits"]
    assert limits["additionalProperties"]["x-kubernetes-int-or-string"] is True
    assert "pattern" in limits["additionalProperties"]
    assert template["x-kubernetes-validations"]
    assert template["required"] == ["spec"]


def test_cel_messages_name_the_field(schema: dict[str, Any]) -> None:
    rules = [
        (path, rule)
        for path, node in nodes(schema)
        for rule in node.get("x-kubernetes-validations", [])
    ]
    assert len(rules) >= 25
    for path, rule in rules:
        assert rule["message"].startswith(("spec.", "metadata.")), (path, rule)
        assert "\n" not in rule["message"] and "\n" not in rule["rule"]


def test_every_managed_key_has_its_cel_rule(schema: dict[str, Any]) -> None:
    config = schema["properties"]["spec"]["properties"]["consumerConfig"]
    messages = {r["message"]: r["rule"] for r in config["x-kubernetes-validations"]}
    for key in MANAGED_CONSUMER_KEYS:
        assert messages[managed_key_message(key)] == f"!('{key}' in self)"
    assert config["maxProperties"] > 0  # bounds the cost of the rules that iterate it


def test_iterated_lists_and_maps_are_bounded(schema: dict[str, Any]) -> None:
    spec = schema["properties"]["spec"]["properties"]
    assert spec["topics"]["maxItems"] > 0
    assert spec["topics"]["items"]["maxLength"] > 0


def test_vendored_pod_template_schema_is_fresh() -> None:
    openapi = json.loads(openapi_source().read_text())
    assert convert(openapi) == load_pod_template_schema(), (
        f"schemas/{SCHEMA_FILE} is stale; run: .venv/bin/python -m "
        "kcg_operator.api.podtemplate_schema"
    )
