"""e2e fixtures: the real operator (`kcg run`) against the local stack or any cluster.

By default the suite runs on the local stack. With KCG_E2E_EXTERNAL_CLUSTER=1 it runs
against the cluster in $KUBECONFIG and the broker in $KAFKA_BOOTSTRAP_SERVERS (kind, or
anything else), with the operator either started here or, with KCG_E2E_OPERATOR_RUNNING=1,
already installed by the Helm chart.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka.admin import AdminClient, NewTopic
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tests.conftest import fresh_namespace

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "stack"))

from localstack import die_with_parent  # noqa: E402

EXTERNAL = os.environ.get("KCG_E2E_EXTERNAL_CLUSTER") == "1"


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> dict[str, str]:
    """KUBECONFIG and KAFKA_BOOTSTRAP_SERVERS of the cluster under test, and SPEC_BOOTSTRAP:
    the broker address to write into KafkaConsumerGroups, as the operator and pods reach it
    (on kind: KCG_E2E_KAFKA_BOOTSTRAP_IN_CLUSTER; on the local stack: the same address)."""
    if EXTERNAL:
        missing = [k for k in ("KUBECONFIG", "KAFKA_BOOTSTRAP_SERVERS") if not os.environ.get(k)]
        if missing:
            pytest.exit(f"KCG_E2E_EXTERNAL_CLUSTER=1 needs {', '.join(missing)}", returncode=3)
        out = {k: os.environ[k] for k in ("KUBECONFIG", "KAFKA_BOOTSTRAP_SERVERS")}
    else:
        stack = request.getfixturevalue("stack")
        out = {k: str(stack[k]) for k in ("KUBECONFIG", "KAFKA_BOOTSTRAP_SERVERS")}
    out["SPEC_BOOTSTRAP"] = os.environ.get("KCG_E2E_KAFKA_BOOTSTRAP_IN_CLUSTER",
                                           out["KAFKA_BOOTSTRAP_SERVERS"])
    return out


@pytest.fixture(scope="session")
def kube_api(cluster: dict[str, str]) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=cluster["KUBECONFIG"])
    try:
        yield api
    finally:
        api.close()


@pytest.fixture(scope="session")
def kubectl(cluster: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the stack's pinned kubectl (or the PATH's, on an external cluster)."""
    sys.path.insert(0, str(REPO / "stack"))
    import localstack

    binary = str(localstack.K8S_BIN / "kubectl")
    if not Path(binary).exists():
        binary = "kubectl"

    def run(
        *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([binary, *args], input=stdin, capture_output=True, text=True,
                              env={**os.environ, "KUBECONFIG": cluster["KUBECONFIG"]}, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr}")
        return proc

    return run


@pytest.fixture(scope="session")
def crds_installed(kubectl: Callable[..., Any], kube_api: client.ApiClient) -> None:
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    wait_established(kube_api)


def wait_established(api: client.ApiClient, name: str = "kafkaconsumergroups.kcg.dev") -> None:
    """Wait for the CRD to serve (`kubectl wait` fails while status.conditions is unset)."""
    ext = client.ApiextensionsV1Api(api)

    def established() -> bool:
        conditions = ext.read_custom_resource_definition(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    eventually(established, timeout=60, what=f"CRD {name} to be established")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Operator:
    """`kcg run` as a child process, with its log kept for assertions and failures."""

    def __init__(self, kubeconfig: str, args: list[str], log: Path,
                 env: dict[str, str] | None = None) -> None:
        self.metrics_port, self.liveness_port = _free_port(), _free_port()
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kcg_operator.cli", "run", *args,
             "--metrics-port", str(self.metrics_port),
             "--liveness-port", str(self.liveness_port)],
            stdout=self._out, stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": kubeconfig, "KCG_CHECK_INTERVAL_SECONDS": "2",
                 **(env or {})},
            preexec_fn=die_with_parent,  # no orphan if the test run is killed
        )

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as r:
            return str(r.read().decode())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


@pytest.fixture(scope="session")
def operator(cluster: dict[str, str], crds_installed: None,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator | None]:
    if os.environ.get("KCG_E2E_OPERATOR_RUNNING") == "1":
        yield None
        return
    op = Operator(cluster["KUBECONFIG"], ["--all-namespaces"],
                  tmp_path_factory.mktemp("operator") / "operator.log")
    try:
        yield op
    finally:
        op.stop()
        print(f"operator log: {op.log}")


@pytest.fixture
def ns(kube_api: client.ApiClient, unique_name: str) -> Iterator[str]:
    with fresh_namespace(kube_api, unique_name) as name:
        yield name


@pytest.fixture
def topic(cluster: dict[str, str]) -> Callable[..., str]:
    admin = AdminClient({"bootstrap.servers": cluster["KAFKA_BOOTSTRAP_SERVERS"]})

    def make(partitions: int = 6, name: str | None = None) -> str:
        name = name or f"t-{uuid.uuid4().hex[:8]}"
        admin.create_topics([NewTopic(name, partitions, 1)])[name].result()
        return name

    return make


def example(name: str, **changes: Any) -> dict[str, Any]:
    """An example CR from examples/, with top-level spec fields replaced."""
    body: dict[str, Any] = yaml.safe_load((REPO / "examples" / name).read_text())
    body["spec"].update(changes)
    return body


def eventually(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition",
               interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (AssertionError, ApiException, KeyError, TypeError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
