"""The stack leaves no orphans: `down` stops everything, and a test run that dies takes its
stack with it (even on SIGKILL, which runs no cleanup code)."""

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


def _start(tmp_path: Path, owned: bool) -> tuple[subprocess.Popen[str], list[int], Path]:
    state = tmp_path / "stack"
    env = {**os.environ, "KCG_STACK_DIR": str(state)}
    proc = subprocess.Popen(
        [sys.executable, "-c", STARTER.format(stack_dir=str(REPO / "stack"), owned=owned)],
        env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "UP"
    pids = [p["pid"] for p in json.loads((state / "pids.json").read_text())]
    assert len(pids) == 5 and all(_alive(p) for p in pids)
    return proc, pids, state


def _all_gone(pids: list[int], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.2)
    return False


def test_a_killed_test_run_takes_its_stack_with_it(tmp_path: Path) -> None:
    proc, pids, _ = _start(tmp_path, owned=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _all_gone(pids), [p for p in pids if _alive(p)]


def test_down_stops_every_process_and_removes_the_state(tmp_path: Path) -> None:
    proc, pids, state = _start(tmp_path, owned=False)
    proc.send_signal(signal.SIGKILL)  # `make up` style: the stack outlives its starter
    proc.wait()
    time.sleep(1)
    assert all(_alive(p) for p in pids)
    down = subprocess.run([sys.executable, str(REPO / "stack" / "localstack.py"), "down"],
                          env={**os.environ, "KCG_STACK_DIR": str(state)},
                          capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert "stopped 5 processes" in down.stderr
    assert _all_gone(pids, timeout=5)
    assert not state.exists()
