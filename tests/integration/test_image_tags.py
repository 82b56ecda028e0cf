"""The stack's image tags install with the chart even when the content hash is all digits.

A 12-digit hex hash is all digits, without a leading 0, once in ~310 trees; `helm --set
image.tag=<digits>` reads it as a number and the chart's schema refuses it, so the e2e
suite's operator install failed then. Forced here; needs only the stack's helm (make setup).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "stack"))

import images  # noqa: E402
import localstack  # noqa: E402

pytestmark = pytest.mark.integration


def test_an_all_digit_tree_hash_still_installs_with_the_chart(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The bad case, forced: the inputs' hash is all digits (one tree in ~310).
    monkeypatch.setattr(images, "tree_hash", lambda paths, extra="": "123456789012")
    ref = images.dockerfile_ref("kcg-operator", REPO / "Dockerfile", [REPO / "operator"])
    helm = localstack.HELM_BIN / "helm"
    if not helm.exists():
        pytest.fail("helm is not built: make setup")
    # Exactly how the e2e suite installs the chart with the stack's image.
    repository, tag = ref.rsplit(":", 1)
    proc = subprocess.run(
        [str(helm), "template", "kcg", str(REPO / "charts" / "kcg-operator"),
         "--set", f"image.repository={repository}", "--set", f"image.tag={tag}"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert f'image: "{ref}"' in proc.stdout
