"""The chart rendered by the stack's pinned helm (the stack need not be up), for the unit
tests of what the chart ships (alert rules, dashboards)."""

from __future__ import annotations

import importlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

# tests/conftest.py puts stack/ on sys.path; its KCG_HELM_BIN is what the integration suite
# uses too.
HELM_BIN: Path = importlib.import_module("localstack").HELM_BIN
REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kcg-operator"


def helm() -> str:
    """The stack's pinned helm, else one on PATH."""
    pinned = HELM_BIN / "helm"
    found = str(pinned) if pinned.is_file() else shutil.which("helm")
    if found is None:
        pytest.fail("helm not found: run `make setup`")
    return found


def run(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def helm_template(*args: str, release: str = "rel") -> subprocess.CompletedProcess[str]:
    """`helm template` of the chart in namespace ops, with `args` (e.g. --set k=v)."""
    return run(helm(), "template", release, CHART, "--namespace", "ops", *args)


def render(*args: str, release: str = "rel") -> list[dict[str, Any]]:
    """The chart's documents; a failed render fails the test with helm's words."""
    proc = helm_template(*args, release=release)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
