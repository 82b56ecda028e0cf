"""The README's "Walk-through on the node (real output)", run as written on the real stack.

The commands are read from the README section itself and run with bash, one after the
other; each output must match what the README shows, up to what differs between runs (ages,
pod-name hashes, addresses, the config hash) and what the README trims with `…`. A reworded
condition, a renamed column, a changed status or a step that no longer works fails here, so
the section stays true.

Where the test departs from the text, and why:

- `helm install` is not run: the suite's operator is already the chart's pods (a second
  operator would fight it over the same objects). `helm status` of its release stands in
  for the install's output, and `kcg-system` means the suite's operator namespace.
- Names get a unique suffix (namespace, topic, group names), because the broker is shared
  with the rest of the suite; outputs are compared with the README's names put back.
- The topic is made "as in the walk-through below": 6 partitions and 3 000 messages.
- `/tmp/readme-typo.yaml` is the minimal example named `orders-typo`, with the image typo
  the README's comment shows.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Producer
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .conftest import EXTERNAL, OperatorPod, RunningOperator

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SECTION = "## Walk-through on the node (real output)"
TYPO_IMAGE = "ghcr.io/kcg-dev/kcg-example-aps:0.1.0"
# The kubelet alternates ErrImagePull (what the README shows) with ImagePullBackOff, with
# pulls retried at growing intervals: a read is retried until the README's state shows.
STEP_TIMEOUT = 180.0

sys.path.insert(0, str(REPO / "stack"))


@dataclass(frozen=True)
class Step:
    command: str  # as the README writes it (continuation lines kept)
    expected: tuple[str, ...]  # the output lines the README shows

    @property
    def words(self) -> str:
        return " ".join(self.command.replace("\\\n", " ").split())


def readme_steps(text: str) -> list[Step]:
    """The section's console blocks as (command, output) steps."""
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start:end if end > 0 else None]
    steps: list[Step] = []
    for block in re.findall(r"```console\n(.*?)```", section, re.S):
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            assert lines[i].startswith("$ "), f"not a command: {lines[i]!r}"
            command = lines[i][2:]
            while command.endswith("\\"):
                i += 1
                command += "\n" + lines[i]
            i += 1
            out: list[str] = []
            while i < len(lines) and not lines[i].startswith("$ "):
                out.append(lines[i])
                i += 1
            while out and not out[-1].strip():
                out.pop()
            steps.append(Step(command, tuple(out)))
    return steps


# -------------------------------------------------------------------------- comparing

_VOLATILE = [
    (re.compile(r"\b198\.1[89]\.\d+\.\d+\b"), "<ip>"),  # pod, node and Service addresses
    (re.compile(r"-[a-z0-9]{6,10}-[a-z0-9]{5}\b"), "-<pod>"),  # ReplicaSet and pod hashes
    (re.compile(r"\bconfig [0-9a-f]{12}\b"), "config <hash>"),
    (re.compile(r"(?<![\w.])\d+[smhd](?:\d+[smh])?(?![\w./])"), "<age>"),  # 27m, 3m20s
]


def normalize(line: str) -> str:
    line = " ".join(line.split())
    for pattern, placeholder in _VOLATILE:
        line = pattern.sub(placeholder, line)
    return line


def matches(expected: tuple[str, ...], actual: list[str]) -> bool:
    """Whether `actual` is what `expected` shows: line by line (blank lines aside), `…`
    inside a line for any text, a line that is only `…` for any number of lines."""
    patterns = [None if normalize(e) == "…" else
                re.compile(".*".join(re.escape(part) for part in normalize(e).split("…")))
                for e in expected if e.strip()]
    lines = [normalize(a) for a in actual if a.strip()]

    def match(p: int, a: int) -> bool:
        if p == len(patterns):
            return a == len(lines)
        pattern = patterns[p]
        if pattern is None:
            return any(match(p + 1, k) for k in range(a, len(lines) + 1))
        return a < len(lines) and bool(pattern.fullmatch(lines[a])) and match(p + 1, a + 1)

    return match(0, 0)


class Names:
    """The README's names and this run's, both ways (through placeholders, so that no
    replacement is replaced again)."""

    def __init__(self, pairs: dict[str, str]) -> None:
        self.pairs = sorted(pairs.items(), key=lambda kv: -len(kv[0]))

    def _swap(self, text: str, forward: bool) -> str:
        pairs = self.pairs if forward else sorted(
            ((b, a) for a, b in self.pairs), key=lambda kv: -len(kv[0]))
        for i, (old, _) in enumerate(pairs):
            text = text.replace(old, f"\0{i}\0")
        for i, (_, new) in enumerate(pairs):
            text = text.replace(f"\0{i}\0", new)
        return text

    def to_run(self, text: str) -> str:
        return self._swap(text, True)

    def to_readme(self, text: str) -> str:
        return self._swap(text, False)


# -------------------------------------------------------------------------- the test


@pytest.fixture
def walkthrough_namespace(kube_api: client.ApiClient, unique_name: str) -> Iterator[str]:
    """A namespace name for the walk-through, which creates it itself; deleted afterwards."""
    yield unique_name
    try:
        client.CoreV1Api(kube_api).delete_namespace(unique_name)
    except ApiException as exc:
        if exc.status != 404:
            raise


def test_the_readme_walkthrough_on_the_node_shows_what_the_stack_does(
    operator: RunningOperator, cluster: dict[str, str], kube_api: client.ApiClient,
    topic: Callable[..., str], walkthrough_namespace: str, tmp_path: Path,
) -> None:
    if EXTERNAL or not isinstance(operator, OperatorPod):
        pytest.skip("the walk-through is the local stack's, with the operator as the chart's pod")
    import localstack

    suffix = uuid.uuid4().hex[:5]
    ns = walkthrough_namespace
    names = Names({
        "readme-pods-orders": f"{ns}-orders",
        "readme-pods": ns,
        "kcg-system": operator.namespace,
        # The suite's release has its own name (cluster-scoped names derive from it).
        "kcg-kcg-operator": f"{operator.release}-kcg-operator",
        "NAME: kcg": f"NAME: {operator.release}",
        "orders-minimal": f"orders-minimal-{suffix}",
        "orders-typo": f"orders-typo-{suffix}",
        "/tmp/readme-minimal.yaml": str(tmp_path / "readme-minimal.yaml"),
        "/tmp/readme-typo.yaml": str(tmp_path / "readme-typo.yaml"),
    })
    orders = topic(6, name=names.to_run("readme-pods-orders"))
    producer = Producer({"bootstrap.servers": cluster["KAFKA_BOOTSTRAP_SERVERS"]})
    for i in range(3000):
        producer.produce(orders, key=f"order-{i % 200}", value=b"{}")
    assert producer.flush(30) == 0

    env = {**os.environ, "KUBECONFIG": cluster["KUBECONFIG"],
           "KAFKA_BOOTSTRAP_SERVERS": cluster["SPEC_BOOTSTRAP"],
           "PATH": f"{localstack.K8S_BIN}:{localstack.HELM_BIN}:{os.environ['PATH']}"}

    def run(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", command], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=60)

    steps = readme_steps((REPO / "README.md").read_text())
    assert len(steps) >= 12, "the walk-through lost its steps"
    ran: list[str] = []
    for step in steps:
        expected = step.expected
        if step.words == 'eval "$(make -s env)"':
            continue  # the environment above is what it exports
        if step.words.startswith("helm install kcg charts/kcg-operator "):
            command = f"helm status {operator.release} -n kcg-system"
            expected = (*expected, "…")  # the README trims the install's notes
        else:
            command = step.command
        command = names.to_run(command)
        read_only = re.match(r"(kubectl( -n \S+)? get|helm status)\b", step.words) is not None
        deadline = time.monotonic() + (STEP_TIMEOUT if read_only else 0)
        while True:
            proc = run(command)
            actual = names.to_readme(proc.stdout + proc.stderr).splitlines()
            if proc.returncode == 0 and (not expected or matches(expected, actual)):
                break
            if time.monotonic() >= deadline:
                pytest.fail(
                    f"README step `{step.words}` (ran `{command}`, exit {proc.returncode}) "
                    "shows:\n  " + "\n  ".join(expected) + "\nbut the stack printed:\n  "
                    + "\n  ".join(actual) + "\nnormalized:\n  "
                    + "\n  ".join(normalize(a) for a in actual))
            time.sleep(1)
        ran.append(step.words)
        if "> /tmp/readme-minimal.yaml" in step.words:
            _after_the_sed(tmp_path, names)
    assert any(r.startswith("kubectl apply") and "readme-typo" in r for r in ran)


def _after_the_sed(tmp_path: Path, names: Names) -> None:
    """This run's object name in the minimal example; the typo example made from it."""
    minimal = tmp_path / "readme-minimal.yaml"
    text = minimal.read_text()
    assert "name: orders-minimal\n" in text and "kcg-example-apps:0.1.0" in text
    minimal.write_text(text.replace("name: orders-minimal\n",
                                    f"name: {names.to_run('orders-minimal')}\n"))
    (tmp_path / "readme-typo.yaml").write_text(
        text.replace("name: orders-minimal\n", f"name: {names.to_run('orders-typo')}\n")
        .replace("ghcr.io/kcg-dev/kcg-example-apps:0.1.0", TYPO_IMAGE))


def test_the_comparison_catches_a_changed_output() -> None:
    """The matcher used above is not lenient where it must not be."""
    shown = ("NAME READY STATUS RESTARTS AGE IP NODE …",
             "orders-minimal-57f7698868-lr72c 1/1 Running 0 15s 198.18.0.192 kcg-node …")
    same = ["NAME   READY   STATUS    RESTARTS   AGE   IP             NODE       NOMINATED NODE",
            "orders-minimal-6d5b9c8f4-x2x9q   1/1   Running   0   3m2s   198.18.0.7   kcg-node"
            "   <none>"]
    assert matches(shown, same)
    assert not matches(shown, [same[0], same[1].replace("Running", "Pending")])
    assert not matches(shown, [same[0], same[1].replace("1/1", "0/1")])
    assert not matches(shown, [same[0]])
    assert not matches(("LagHealthy=True LagOK: lag 0 messages, 0.0s behind",),
                       ["LagHealthy=True LagOK: lag 0 messages, 2.5s behind"])
    assert matches(("NAME: kcg", "…", "STATUS: deployed", "…"),
                   ["NAME: kcg", "LAST DEPLOYED: today", "STATUS: deployed", "REVISION: 1"])
    steps = readme_steps((REPO / "README.md").read_text())
    assert steps[0].words == 'eval "$(make -s env)"'
    assert any(s.words.startswith("helm install kcg charts/kcg-operator") for s in steps)
