"""The stack leaves no orphans: `down` stops everything, and a test run that dies takes its
stack with it (even on SIGKILL, which runs no cleanup code). The node's containers, mounts,
network namespaces, veths, bridge and cgroups go with `down` too.

Each test starts a second stack beside the session's; the process tests run it without a
node (KCG_STACK_NODE=0, five processes), the node test with one, in the next free slot."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "stack"))

import localstack  # noqa: E402
import node  # noqa: E402

STARTER = """
import sys, time
sys.path.insert(0, {stack_dir!r})
import localstack
localstack.up(owned={owned})
print("UP", flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and not stat.read_text().split(") ")[-1].startswith("Z")


def _start(tmp_path: Path, owned: bool,
           with_node: bool = False) -> tuple[subprocess.Popen[str], list[int], Path]:
    state = tmp_path / "stack"
    env = {**os.environ, "KCG_STACK_DIR": str(state), "KCG_STACK_NODE": "1" if with_node else "0"}
    proc = subprocess.Popen(
        [sys.executable, "-c", STARTER.format(stack_dir=str(REPO / "stack"), owned=owned)],
        env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "UP"
    started = json.loads((state / "pids.json").read_text())
    names = {p["name"] for p in started}
    expected = {"etcd", "kube-apiserver", "kube-controller-manager", "kafka", "postgres"}
    if with_node:
        expected |= {"kube-scheduler", "containerd", "kubelet"}
        # kube-proxy's nftables table is machine-wide: only the stack in slot 0 runs one.
        if (state / "slot").read_text().strip() == "0":
            expected.add("kube-proxy")
    pids = [p["pid"] for p in started]
    try:
        assert names == expected and len(pids) == len(expected)
        assert all(_alive(p) for p in pids)
    except AssertionError:
        proc.kill()
        _down(state)
        raise
    return proc, pids, state


def _all_gone(pids: list[int], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.2)
    return False


def test_a_killed_test_run_takes_its_stack_with_it(tmp_path: Path) -> None:
    proc, pids, state = _start(tmp_path, owned=True)
    pgroot = Path((state / "pgroot").read_text())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _all_gone(pids), [p for p in pids if _alive(p)]
    # No code ran to remove PostgreSQL's directory (outside the state directory, for the
    # postgres user); `leftovers` reports it and the next `down` (or `up`) removes it.
    assert pgroot.exists() and pgroot in localstack.orphaned_pgroots()
    _down(state)
    assert not pgroot.exists() and not state.exists()


def test_down_stops_every_process_and_removes_the_state(tmp_path: Path) -> None:
    proc, pids, state = _start(tmp_path, owned=False)
    proc.send_signal(signal.SIGKILL)  # `make up` style: the stack outlives its starter
    proc.wait()
    time.sleep(1)
    assert all(_alive(p) for p in pids)
    pgroot = Path((state / "pgroot").read_text())
    down = _down(state)
    assert "stopped 5 processes" in down
    assert _all_gone(pids, timeout=5)
    assert not state.exists() and not pgroot.exists()


def _down(state: Path) -> str:
    down = subprocess.run([sys.executable, str(REPO / "stack" / "localstack.py"), "down"],
                          env={**os.environ, "KCG_STACK_DIR": str(state)},
                          capture_output=True, text=True, timeout=90)
    assert down.returncode == 0, down.stderr
    return down.stderr


POD = """
apiVersion: v1
kind: Pod
metadata: {{name: probe, namespace: default}}
spec:
  automountServiceAccountToken: false
  securityContext: {{runAsNonRoot: true, runAsUser: 65535}}
  containers:
  - name: c
    image: {image}
    imagePullPolicy: Never
    securityContext: {{readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}}
    volumeMounts: [{{name: scratch, mountPath: /scratch}}]
  volumes: [{{name: scratch, emptyDir: {{}}}}]
"""


def test_down_removes_everything_the_node_made(tmp_path: Path) -> None:
    proc, pids, state = _start(tmp_path, owned=False, with_node=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    slot = node.Slot(int((state / "slot").read_text()))
    settings = json.loads((state / "state.json").read_text())
    kubectl = [str(Path(settings["KCG_K8S_BIN"]) / "kubectl"), "--kubeconfig",
               settings["KUBECONFIG"]]
    image = settings["KCG_IMAGES"]["pause"]
    subprocess.run([*kubectl, "apply", "-f", "-"], input=POD.format(image=image), text=True,
                   check=True, capture_output=True)
    # A running pod: a shim, a container, its sandbox, a netns with a veth on the bridge,
    # overlay and emptyDir mounts, cgroups.
    subprocess.run([*kubectl, "wait", "--for=condition=Ready", "pod/probe", "--timeout=90s"],
                   check=True, capture_output=True)
    made = node.leftovers(slot)
    for kind in ("process", "mount", "netns", "veth", "bridge", "cgroup"):
        assert any(m.startswith(kind) for m in made), (kind, made)
    out = _down(state)
    assert f"stopped {len(pids)} processes" in out
    assert _all_gone(pids, timeout=5)
    assert node.leftovers(slot) == []
    assert not state.exists()
