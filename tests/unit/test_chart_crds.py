"""The Helm chart ships the same CRDs as crds/, byte for byte, so the two never drift."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
GENERATED = REPO / "crds"
CHART_CRDS = REPO / "charts" / "kcg-operator" / "crds"
FIX = "run `make chart-crds` (cp crds/*.yaml charts/kcg-operator/crds/)"


def _yaml_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.yaml"))}


def test_generated_crds_exist() -> None:
    assert _yaml_files(GENERATED), f"no CRD YAML in {GENERATED}: run `make crds`"


def test_chart_holds_exactly_the_generated_crd_files() -> None:
    assert sorted(_yaml_files(CHART_CRDS)) == sorted(_yaml_files(GENERATED)), FIX


@pytest.mark.parametrize("name", sorted(_yaml_files(GENERATED)) or ["<none>"])
def test_chart_crd_equals_generated(name: str) -> None:
    generated, chart = GENERATED / name, CHART_CRDS / name
    assert generated.exists(), f"no {generated}: run `make crds`"
    assert chart.exists(), f"{chart} is missing: {FIX}"
    assert chart.read_bytes() == generated.read_bytes(), f"{chart} differs from {generated}: {FIX}"
