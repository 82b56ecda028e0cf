"""Missing prerequisites stop the stack's setup with one clear line, never a stack trace."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _setup(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {"HOME": str(tmp_path), "KCG_CACHE_DIR": str(tmp_path / "cache"),
            "KCG_STACK_DIR": str(tmp_path / "state"), "PATH": os.environ["PATH"]}
    return subprocess.run([sys.executable, str(REPO / "stack" / "localstack.py"), "setup"],
                          capture_output=True, text=True, env={**base, **env}, timeout=120)


def _only_line(proc: subprocess.CompletedProcess[str]) -> str:
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
    assert "Traceback" not in proc.stderr
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_missing_go_names_go_and_how_to_install_it(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = _setup(tmp_path, PATH=str(empty))
    assert proc.returncode == 2
    line = _only_line(proc)
    assert "go not found" in line and "install Go" in line


def test_missing_java_names_java(tmp_path: Path) -> None:
    # Only go on PATH, and a cache where the Go builds are already "done".
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    go = subprocess.run(["which", "go"], capture_output=True, text=True).stdout.strip()
    if not go:
        go = "/usr/local/go/bin/go"
    (bin_dir / "go").symlink_to(go)
    sys.path.insert(0, str(REPO / "stack"))
    import localstack

    k8s = tmp_path / "cache" / localstack.K8S_BIN.relative_to(localstack.CACHE)
    helm = tmp_path / "cache" / localstack.HELM_BIN.relative_to(localstack.CACHE)
    for d, names in ((k8s, localstack.K8S_PROGRAMS), (helm, ("helm",))):
        d.mkdir(parents=True)
        for n in names:
            (d / n).write_text("")
    proc = _setup(tmp_path, PATH=str(bin_dir))
    assert proc.returncode == 2
    line = _only_line(proc)
    assert "java not found" in line and "Java 17" in line


def test_a_registry_refusing_gives_one_line_naming_the_build(tmp_path: Path) -> None:
    # GOPROXY=off with an empty module cache stands in for a proxy that refuses.
    proc = _setup(tmp_path, GOPROXY="off", GOMODCACHE=str(tmp_path / "gomod"),
                  GOCACHE=str(tmp_path / "gocache"))
    assert proc.returncode == 2
    line = _only_line(proc)
    assert "building kube-apiserver" in line and "failed" in line
    assert "GOPROXY=off" in line


def test_kafka_cluster_id_never_starts_with_a_dash() -> None:
    # kafka-storage took a leading '-' for an option (one fresh stack in 64 failed).
    sys.path.insert(0, str(REPO / "stack"))
    import localstack

    dash_first = bytes([0xF8]) + bytes(15)  # base64 of 0b111110... is '-'
    assert base64.urlsafe_b64encode(dash_first).startswith(b"-")
    cluster_id = localstack.kafka_cluster_id(dash_first)
    assert not cluster_id.startswith("-") and len(cluster_id) == 22
