"""e2e fixtures: the real operator (`kcg run`) against the local stack or any cluster.

By default the suite runs on the local stack. With KCG_E2E_EXTERNAL_CLUSTER=1 it runs
against the cluster in $KUBECONFIG and the broker in $KAFKA_BOOTSTRAP_SERVERS (kind, or
anything else), with the operator either started here or, with KCG_E2E_OPERATOR_RUNNING=1,
already installed by the Helm chart.
"""

from __future__ import annotations

import contextlib
import os
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
POD_READY_GRACE_SECONDS = 30


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> dict[str, str]:
    """KUBECONFIG and KAFKA_BOOTSTRAP_SERVERS of the cluster under test, SPEC_BOOTSTRAP:
    the broker address to write into KafkaConsumerGroups, as the operator and pods reach it
    (on kind: KCG_E2E_KAFKA_BOOTSTRAP_IN_CLUSTER; on the local stack: the same address),
    and OPERATOR_IMAGE / EXAMPLES_IMAGE when the cluster can run pods of them."""
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
    # Images the cluster runs without pulling: the stack's node has them loaded; on kind,
    # `kind load` them and name them here.
    images = {} if EXTERNAL else dict(request.getfixturevalue("stack").get("KCG_IMAGES") or {})
    for key, env in (("OPERATOR_IMAGE", "KCG_E2E_OPERATOR_IMAGE"),
                     ("EXAMPLES_IMAGE", "KCG_E2E_EXAMPLES_IMAGE")):
        value = os.environ.get(env) or images.get(key.split("_")[0].lower(), "")
        if value:
            out[key] = value
    return out


@pytest.fixture(scope="session")
def examples_image(cluster: dict[str, str]) -> str:
    """The example consumer apps' image (examples/Dockerfile), present on the node."""
    image = cluster.get("EXAMPLES_IMAGE")
    if not image:
        pytest.fail("no example image: the local stack builds one (make up); on another "
                    "cluster load one and set KCG_E2E_EXAMPLES_IMAGE")
    return image


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


class RunningOperator:
    """The operator under test, wherever it runs: its metrics and its log."""

    def metrics(self) -> str:
        raise NotImplementedError

    def log_text(self) -> str:
        raise NotImplementedError


class Operator(RunningOperator):
    """`kcg run` as a child process, with its log kept for assertions and failures (used
    where the operator must hold other credentials than the chart's, and on a stack
    without a node)."""

    def __init__(self, kubeconfig: str, args: list[str], log: Path,
                 env: dict[str, str] | None = None) -> None:
        import localstack  # distinct ports, never the same one twice

        self.metrics_port, self.liveness_port = localstack.free_port(), localstack.free_port()
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

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


def _name(pod: client.V1Pod) -> str:
    return str(pod.metadata.name)


class OperatorPod(RunningOperator):
    """The operator as users run it: the Helm chart's pods (two by default, one leading),
    under its ServiceAccount.

    ``pod()`` is the leader (the holder of the chart's Lease), whose metrics and log the
    tests read, through the apiserver's pod proxy, which works on any cluster."""

    def __init__(self, api: client.ApiClient, namespace: str, release: str) -> None:
        self.api, self.namespace, self.release = api, namespace, release
        self.selector = f"app.kubernetes.io/instance={release}"
        self.lease = f"{release}-kcg-operator"

    def pods(self) -> list[client.V1Pod]:
        items = client.CoreV1Api(self.api).list_namespaced_pod(
            self.namespace, label_selector=self.selector).items
        return [p for p in items if p.metadata.deletion_timestamp is None]

    def leader_name(self) -> str | None:
        """The pod that holds the Lease (identities are "<pod>_<process id>")."""
        try:
            lease = client.CoordinationV1Api(self.api).read_namespaced_lease(
                self.lease, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        holder = lease.spec.holder_identity if lease.spec else None
        return holder.rsplit("_", 1)[0] if holder else None

    def pod(self) -> client.V1Pod:
        """The leading pod."""
        pods, leader = self.pods(), self.leader_name()
        found = [p for p in pods if p.metadata.name == leader]
        assert found, f"no running pod holds the lease ({leader}): {[_name(p) for p in pods]}"
        return found[0]

    def metrics_of(self, pod: str) -> str:
        out = client.CoreV1Api(self.api).connect_get_namespaced_pod_proxy_with_path(
            f"{pod}:9090", self.namespace, "metrics", _preload_content=False)
        return str(out.data.decode())

    def metrics(self) -> str:
        return self.metrics_of(self.pod().metadata.name)

    def log_text(self) -> str:
        return str(client.CoreV1Api(self.api).read_namespaced_pod_log(
            self.pod().metadata.name, self.namespace, container="operator"))

    def diagnosis(self, lines: int = 60) -> str:
        """Each replica's restarts and the end of its log (and of the previous container's,
        after a restart): what a failed test prints to say what the operator was doing."""
        core = client.CoreV1Api(self.api)
        out = [f"lease holder: {self.leader_name()}"]
        for pod in self.pods():
            name = pod.metadata.name
            restarts = sum(c.restart_count for c in pod.status.container_statuses or [])
            out.append(f"--- {name}: restarts {restarts}")
            for previous in ([True] if restarts else []) + [False]:
                try:
                    text = core.read_namespaced_pod_log(name, self.namespace, container="operator",
                                                        previous=previous, tail_lines=lines)
                except ApiException as exc:
                    text = f"(log unreadable: {exc.status} {exc.reason})"
                out.append(f"{'previous' if previous else 'current'} container:\n{text}")
        return "\n".join(out)

    def wait_ready(self, timeout: float = 120) -> client.V1Pod:
        """Every replica Ready and one of them leading; returns the leader."""
        wanted = client.AppsV1Api(self.api).read_namespaced_deployment(
            self.lease, self.namespace).spec.replicas

        def ready() -> client.V1Pod | None:
            pods = self.pods()
            if len(pods) != wanted or not all(
                    p.status.container_statuses
                    and all(c.ready for c in p.status.container_statuses) for p in pods):
                return None
            leader = self.leader_name()
            return next((p for p in pods if p.metadata.name == leader), None)

        pod: client.V1Pod = eventually(ready, timeout=timeout,
                                       what="the operator pods Ready and one leading")
        eventually(lambda: "kcg_operator_leader 1.0" in self.metrics(), timeout=60,
                   what="the leader's metrics")
        return pod


def helm_binary() -> str:
    import localstack

    pinned = localstack.HELM_BIN / "helm"
    return str(pinned) if pinned.exists() else "helm"


def install_operator(kubeconfig: str, namespace: str, release: str, image: str,
                     extra: list[str] | None = None) -> None:
    """`helm install` of charts/kcg-operator with a locally built image (never pulled)."""
    repository, tag = image.rsplit(":", 1)
    subprocess.run(
        [helm_binary(), "install", release, str(REPO / "charts" / "kcg-operator"),
         "--namespace", namespace, "--create-namespace", "--wait=false",
         "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
         "--set", "image.pullPolicy=Never", "--set", "logFormat=plain",
         # The suite's groups poll every 1-2 s; production keeps the default.
         "--set", "extraEnv[0].name=KCG_CHECK_INTERVAL_SECONDS",
         "--set-string", "extraEnv[0].value=2",
         # Pods not ready after this long are reported (production default: 300 s).
         "--set", "extraEnv[1].name=KCG_POD_READY_GRACE_SECONDS",
         "--set-string", f"extraEnv[1].value={POD_READY_GRACE_SECONDS}", *(extra or [])],
        check=True, capture_output=True, text=True, timeout=120,
        env={**os.environ, "KUBECONFIG": kubeconfig})


@pytest.fixture(scope="session")
def operator(cluster: dict[str, str], crds_installed: None, kube_api: client.ApiClient,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningOperator]:
    """The operator under test: the chart's pod where the cluster can run one (the local
    node, kind), the one already installed (KCG_E2E_OPERATOR_RUNNING=1), else a process."""
    if os.environ.get("KCG_E2E_OPERATOR_RUNNING") == "1":
        pod = OperatorPod(kube_api, os.environ.get("KCG_E2E_OPERATOR_NAMESPACE", "kcg-system"),
                          os.environ.get("KCG_E2E_OPERATOR_RELEASE", "kcg"))
        pod.wait_ready()
        yield pod
        return
    image = cluster.get("OPERATOR_IMAGE")
    if image:
        # Cluster-scoped names (the ClusterRole) derive from the release: unique per run.
        run_id = uuid.uuid4().hex[:6]
        namespace, release = f"kcg-e2e-{run_id}", f"kcg-{run_id}"
        install_operator(cluster["KUBECONFIG"], namespace, release, image)
        pod = OperatorPod(kube_api, namespace, release)
        try:
            pod.wait_ready()
            yield pod
        finally:
            with contextlib.suppress(Exception):
                (tmp_path_factory.mktemp("operator") / "operator.log").write_text(
                    pod.log_text())
            subprocess.run([helm_binary(), "uninstall", release, "--namespace", namespace],
                           capture_output=True, timeout=120,
                           env={**os.environ, "KUBECONFIG": cluster["KUBECONFIG"]})
            client.CoreV1Api(kube_api).delete_namespace(namespace)
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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test that ran against the chart's pods shows what they were doing."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    operator = getattr(item, "funcargs", {}).get("chart_operator") or \
        getattr(item, "funcargs", {}).get("operator")
    if report.when != "call" or not report.failed:
        return
    namespace, api = item.funcargs.get("ns"), item.funcargs.get("kube_api")
    if isinstance(namespace, str) and isinstance(api, client.ApiClient):
        try:
            groups = client.CustomObjectsApi(api).list_namespaced_custom_object(
                "kcg.dev", "v1alpha1", namespace, "kafkaconsumergroups")["items"]
            report.sections.append(("statuses of the test's groups", yaml.safe_dump(
                {g["metadata"]["name"]: g.get("status") for g in groups})))
        except Exception as exc:
            report.sections.append(("statuses of the test's groups", f"(unreadable: {exc!r})"))
    if isinstance(operator, OperatorPod):
        try:
            report.sections.append(("operator pods", operator.diagnosis()))
        except Exception as exc:
            report.sections.append(("operator pods", f"(no diagnosis: {exc!r})"))
