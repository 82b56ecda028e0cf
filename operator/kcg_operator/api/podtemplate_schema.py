"""Vendor the real Kubernetes PodTemplateSpec schema as a structural CRD schema.

`spec.template` of a KafkaConsumerGroup is a real PodTemplateSpec, so the apiserver must
refuse a malformed pod template when the KafkaConsumerGroup is applied, not later when the
operator's Deployment is refused. Kubernetes publishes the schema as OpenAPI v3 with
`$ref`s, `allOf` wrappers and `oneOf` types, none of which a CRD may contain. This module
turns it into a structural schema once, offline; the result is checked in under
``schemas/`` so CRD generation needs neither network nor Go module cache.

Regenerate (only when moving to another Kubernetes minor version)::

    .venv/bin/python -m kcg_operator.api.podtemplate_schema [PATH/TO/api__v1_openapi.json]

(without a path it takes the file from k8s.io/kubernetes in the Go module cache, which
`go mod download` fills from the module proxy).

Conversion rules, each for a rule of structural schemas or of CRD validation:

- `$ref` and single-entry `allOf` wrappers are inlined (no `$ref` in a CRD).
- `IntOrString` becomes `x-kubernetes-int-or-string`; `Quantity` too, with the quantity
  pattern, since a CRD cannot say "number or string".
- `default` is dropped: the built-in defaults mark non-pointer Go structs, and as CRD
  defaults they would fill required names with "" (the apiserver would then accept what
  a Deployment refuses). Only list-map keys keep theirs: the apiserver requires a list-map
  key to be required or defaulted (`ports[].protocol: TCP`, `imagePullSecrets[].name`).
- Descriptions are dropped to keep the CRD small (client-side `kubectl apply` stores the
  whole object in an annotation limited to 256 KiB); `kubectl explain` of a Deployment
  documents the same fields.
- Strategic-merge-patch and union extensions are dropped: CRDs use JSON merge patch and
  the union markers carry no validation.
- `template.metadata` keeps the ObjectMeta fields that mean something in a pod template
  (labels, annotations, name, namespace, generateName, finalizers) plus a nullable
  creationTimestamp, because `kubectl create --dry-run -o yaml` writes
  `creationTimestamp: null` and users paste that.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

KUBERNETES_VERSION = "v1.34.4"
OPENAPI_PATH = "api/openapi-spec/v3/api__v1_openapi.json"  # inside k8s.io/kubernetes
SCHEMA_FILE = "podtemplatespec-v1.34.json"
ROOT_TYPE = "io.k8s.api.core.v1.PodTemplateSpec"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"

# The pattern the apiserver itself uses for resource.Quantity in generated CRDs.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]"
    r"|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
TEMPLATE_META_FIELDS = ("annotations", "finalizers", "generateName", "labels", "name", "namespace")

# Keywords carried over as they are; everything else is dropped.
KEPT_KEYWORDS = frozenset(
    {
        "type",
        "format",
        "required",
        "enum",
        "x-kubernetes-list-type",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-map-type",
    }
)
# Formats the CRD validator knows; others would be ignored at best.
KNOWN_FORMATS = frozenset({"int32", "int64", "double", "float", "date-time", "byte"})


class SchemaConversionError(ValueError):
    """The OpenAPI document holds a construct this converter does not handle."""


def _ref_name(node: Mapping[str, Any]) -> str | None:
    if "$ref" in node:
        return str(node["$ref"]).rsplit("/", 1)[-1]
    all_of = node.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1 and "$ref" in all_of[0]:
        return str(all_of[0]["$ref"]).rsplit("/", 1)[-1]
    if all_of is not None:
        raise SchemaConversionError(f"allOf with other than one $ref: {all_of!r}")
    return None


class _Converter:
    def __init__(self, definitions: Mapping[str, Any]) -> None:
        self.definitions = definitions
        self.stack: list[str] = []

    def definition(self, name: str) -> dict[str, Any]:
        if name == INT_OR_STRING:
            return {"x-kubernetes-int-or-string": True, "anyOf": _INT_OR_STRING_ANY_OF}
        if name == QUANTITY:
            return {
                "x-kubernetes-int-or-string": True,
                "anyOf": _INT_OR_STRING_ANY_OF,
                "pattern": QUANTITY_PATTERN,
            }
        if name == OBJECT_META:
            return self.template_metadata()
        if name in self.stack:
            # Recursion would need $ref, which CRDs forbid; the pod schema has none.
            raise SchemaConversionError(f"recursive type {name}: {' -> '.join(self.stack)}")
        self.stack.append(name)
        try:
            return self.node(self.definitions[name])
        finally:
            self.stack.pop()

    def template_metadata(self) -> dict[str, Any]:
        meta = self.definitions[OBJECT_META]["properties"]
        properties = {field: self.node(meta[field]) for field in TEMPLATE_META_FIELDS}
        properties["creationTimestamp"] = {
            "type": "string",
            "format": "date-time",
            "nullable": True,
        }
        return {"type": "object", "properties": dict(sorted(properties.items()))}

    def node(self, node: Mapping[str, Any]) -> dict[str, Any]:
        ref = _ref_name(node)
        if ref is not None:
            inlined = self.definition(ref)
            inlined.update({k: v for k, v in node.items() if k in KEPT_KEYWORDS})
            return inlined
        if "oneOf" in node or "anyOf" in node:
            raise SchemaConversionError(f"unexpected oneOf/anyOf outside IntOrString: {node!r}")
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in KEPT_KEYWORDS:
                out[key] = value
        if "format" in out and out["format"] not in KNOWN_FORMATS:
            del out["format"]
        if "properties" in node:
            out["properties"] = {
                name: self.node(prop) for name, prop in sorted(node["properties"].items())
            }
            self._keep_list_map_key_defaults(out["properties"], node["properties"])
        if "items" in node:
            out["items"] = self.node(node["items"])
        additional = node.get("additionalProperties")
        if isinstance(additional, Mapping):
            out["additionalProperties"] = self.node(additional)
        if "type" not in out and "x-kubernetes-int-or-string" not in out:
            raise SchemaConversionError(f"node without a type: {node!r}")
        return out

    def _keep_list_map_key_defaults(
        self, converted: dict[str, Any], source: Mapping[str, Any]
    ) -> None:
        for prop_name, prop in converted.items():
            keys = prop.get("x-kubernetes-list-map-keys")
            if not keys:
                continue
            items = prop["items"]
            item_source = self._items_source(source[prop_name])
            required = set(items.get("required", ()))
            for key in keys:
                if key in required:
                    continue
                default = item_source["properties"][key].get("default")
                if default is None:
                    raise SchemaConversionError(
                        f"list-map key {prop_name}[].{key} is neither required nor defaulted"
                    )
                items["properties"][key]["default"] = default

    def _items_source(self, array_node: Mapping[str, Any]) -> Mapping[str, Any]:
        items = array_node["items"]
        ref = _ref_name(items)
        source: Mapping[str, Any] = self.definitions[ref] if ref is not None else items
        return source


_INT_OR_STRING_ANY_OF = [{"type": "integer"}, {"type": "string"}]


def convert(openapi: Mapping[str, Any]) -> dict[str, Any]:
    """The structural schema of PodTemplateSpec from Kubernetes' OpenAPI v3 document."""
    definitions = openapi["components"]["schemas"]
    return _Converter(definitions).definition(ROOT_TYPE)


def vendored_document(openapi: Mapping[str, Any], source: str) -> dict[str, Any]:
    return {
        "source": f"k8s.io/kubernetes@{KUBERNETES_VERSION} {source}",
        "generator": "python -m kcg_operator.api.podtemplate_schema",
        "schema": convert(openapi),
    }


def load_pod_template_schema() -> dict[str, Any]:
    """The vendored structural PodTemplateSpec schema (a fresh copy, safe to modify)."""
    text = resources.files("kcg_operator.api").joinpath("schemas", SCHEMA_FILE).read_text()
    schema: dict[str, Any] = json.loads(text)["schema"]
    return schema


def openapi_source() -> Path:
    """Kubernetes' published core/v1 OpenAPI document, from the Go module cache (the local
    stack builds from the same module, so `make setup` has already downloaded it)."""
    import shutil
    import subprocess

    go = shutil.which("go") or "/usr/local/go/bin/go"
    proc = subprocess.run([go, "mod", "download", "-json",
                           f"k8s.io/kubernetes@{KUBERNETES_VERSION}"],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"go mod download k8s.io/kubernetes@{KUBERNETES_VERSION} failed: "
                           f"{(proc.stderr or proc.stdout).strip()[-300:]}")
    return Path(json.loads(proc.stdout)["Dir"]) / OPENAPI_PATH


def main(argv: list[str]) -> int:
    source = Path(argv[0]) if argv else openapi_source()
    openapi = json.loads(source.read_text())
    document = vendored_document(openapi, OPENAPI_PATH)
    target = Path(__file__).parent / "schemas" / SCHEMA_FILE
    target.parent.mkdir(exist_ok=True)
    target.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    print(f"wrote {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
