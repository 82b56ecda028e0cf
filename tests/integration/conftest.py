"""Clients for the real programs of the local stack."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from tests.conftest import fresh_namespace

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def kube(stack: dict[str, Any]) -> Iterator[client.ApiClient]:
    """An admin ApiClient for the stack's kube-apiserver."""
    api = config.new_client_from_config(config_file=str(stack["KUBECONFIG"]))
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def namespace(kube: client.ApiClient, unique_name: str) -> Iterator[str]:
    with fresh_namespace(kube, unique_name) as name:
        yield name


# --------------------------------------------------------------------------- the Helm chart

CHART = Path(__file__).resolve().parents[2] / "charts" / "kcg-operator"


@dataclass(frozen=True)
class ChartInstall:
    """An installed release of charts/kcg-operator and a token of its ServiceAccount."""

    release: str
    namespace: str  # where the release (ServiceAccount, Deployment) lives
    service_account: str
    watch_namespaces: tuple[str, ...]  # () means all namespaces
    token: str
    kubeconfig: Path  # a kubeconfig that authenticates as the ServiceAccount

    def api_client(self) -> client.ApiClient:
        """A new ApiClient acting as the chart's ServiceAccount (close it after use)."""
        return config.new_client_from_config(config_file=str(self.kubeconfig))


Helm = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def helm(stack: dict[str, Any]) -> Helm:
    """Runs the stack's pinned helm against the stack: ``helm("lint", chart, check=True)``."""
    pinned = Path(str(stack.get("KCG_HELM_BIN", ""))) / "helm"
    binary = str(pinned) if pinned.is_file() else shutil.which("helm")
    if binary is None:
        pytest.fail("helm not found: run `make setup`")
    env = {**os.environ, "KUBECONFIG": str(stack["KUBECONFIG"])}

    def run(*args: str | Path, check: bool = True,
            timeout: float = 180) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([binary, *map(str, args)], capture_output=True, text=True,
                              env=env, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(map(str, args))} failed "
                                 f"({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc

    return run


def _token_kubeconfig(kube: client.ApiClient, token: str, user: str, path: Path) -> Path:
    cfg = kube.configuration
    cluster: dict[str, Any] = {"server": cfg.host}
    if cfg.ssl_ca_cert:
        ca = Path(cfg.ssl_ca_cert).read_bytes()
        cluster["certificate-authority-data"] = base64.b64encode(ca).decode()
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kcg", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "kcg", "user": user}}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(kubeconfig))
    path.chmod(0o600)
    return path


@pytest.fixture
def install_chart(
    kube: client.ApiClient, helm: Helm, tmp_path: Path
) -> Iterator[Callable[..., ChartInstall]]:
    """Installs charts/kcg-operator; uninstalls every release it made at teardown.

    ``install_chart(namespace, watch_namespaces=(), values=(), token_seconds=3600)`` runs
    ``helm install`` into ``namespace`` (which must exist; so must the watched ones), with
    extra ``--set`` ``values``, mints a TokenRequest token for the chart's ServiceAccount and
    returns a :class:`ChartInstall` whose ``kubeconfig`` acts as that ServiceAccount.
    The chart's CRD is installed by Helm if it is missing (Helm never deletes it).
    """
    core = client.CoreV1Api(kube)
    installed: list[tuple[str, str]] = []

    def install(namespace: str, *, watch_namespaces: Sequence[str] = (),
                values: Sequence[str] = (), token_seconds: int = 3600) -> ChartInstall:
        release = f"kcg-{uuid.uuid4().hex[:8]}"
        # No operator pod: these tests use the chart's objects and token; the e2e suite's
        # operator is the one pod of the chart running on the node.
        args: list[str | Path] = ["install", release, CHART, "--namespace", namespace,
                                  "--set", "replicaCount=0"]
        if watch_namespaces:
            args += ["--set", "watchNamespaces={" + ",".join(watch_namespaces) + "}"]
        for value in values:
            args += ["--set", value]
        helm(*args)
        installed.append((release, namespace))
        accounts = core.list_namespaced_service_account(
            namespace, label_selector=f"app.kubernetes.io/instance={release}").items
        assert len(accounts) == 1, f"expected one ServiceAccount of release {release}"
        account = accounts[0].metadata.name
        token = core.create_namespaced_service_account_token(
            account, namespace,
            client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[],
                                               expiration_seconds=token_seconds)),
        ).status.token
        kubeconfig = _token_kubeconfig(kube, token, f"{namespace}-{account}",
                                       tmp_path / f"{release}.kubeconfig")
        return ChartInstall(release=release, namespace=namespace, service_account=account,
                            watch_namespaces=tuple(watch_namespaces), token=token,
                            kubeconfig=kubeconfig)

    try:
        yield install
    finally:
        for release, namespace in reversed(installed):
            helm("uninstall", release, "--namespace", namespace, check=False)


@pytest.fixture
def chart_token_kubeconfig(install_chart: Callable[..., ChartInstall], namespace: str) -> Path:
    """The chart installed cluster-wide into ``namespace``; a kubeconfig with its SA token.

    Point the operator at it (``KUBECONFIG=<path> kcg run --all-namespaces``) to run it with
    exactly the rights the chart grants. For the namespaced mode use ``install_chart``.
    """
    return install_chart(namespace).kubeconfig
