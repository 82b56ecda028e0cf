"""Sharding (issue 10.5): two releases of the chart, each watching its own namespace, serve
disjoint sets of KafkaConsumerGroups: each release's leader counts, sweeps and reports
its own group and not the other's, and the apiserver's audit log shows each release's
ServiceAccount writing only in its own namespace. (The suite's own operator serves every
namespace, so it writes there too; only the two releases are judged.)"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.conftest import fresh_namespace

from .conftest import OperatorPod, RunningOperator, eventually, helm_binary, install_operator
from .test_scaling_loop import consumer_group_body

pytestmark = pytest.mark.e2e


def _writes(audit: Path, account: str) -> list[dict[str, Any]]:
    """Every write the ServiceAccount made (the stack audits writes only)."""
    out = []
    for line in audit.read_text(errors="replace").splitlines():
        if account in line:
            event = json.loads(line)
            if (event.get("user") or {}).get("username") == account:
                out.append(event)
    return out


def _where(event: dict[str, Any]) -> tuple[str, str, str]:
    ref = event.get("objectRef") or {}
    return ref.get("namespace", ""), ref.get("resource", ""), ref.get("name", "")


@pytest.fixture
def two_shards(cluster: dict[str, str], kube_api: client.ApiClient,
               operator: RunningOperator) -> Iterator[list[tuple[str, OperatorPod]]]:
    if "OPERATOR_IMAGE" not in cluster:
        pytest.fail("the chart's pods need the operator image on the node (make up)")
    run = uuid.uuid4().hex[:6]
    with contextlib.ExitStack() as stack:
        shards = []
        for shard in ("a", "b"):
            ns = stack.enter_context(fresh_namespace(kube_api, f"kcg-shard-{shard}-{run}"))
            release = f"kcg-shard-{shard}-{run}"
            install_operator(cluster["KUBECONFIG"], ns, release, cluster["OPERATOR_IMAGE"],
                             ["--set", f"watchNamespaces={{{ns}}}", "--set", "replicaCount=1"])
            stack.callback(subprocess.run, [helm_binary(), "uninstall", release,
                                            "--namespace", ns],
                           capture_output=True, timeout=120,
                           env={**os.environ, "KUBECONFIG": cluster["KUBECONFIG"]})
            shards.append((ns, OperatorPod(kube_api, ns, release)))
        yield shards


def test_two_releases_serve_disjoint_namespaces(
    two_shards: list[tuple[str, OperatorPod]], cluster: dict[str, str], stack: dict[str, Any],
    kubectl: Callable[..., Any], topic: Callable[..., str], examples_image: str,
) -> None:
    audit = Path(str(stack.get("KCG_AUDIT_LOG") or ""))
    if not audit.is_file():
        pytest.fail("the stack's apiserver writes no audit log (KCG_AUDIT_LOG): make up")
    t = topic(2)
    for ns, _ in two_shards:
        body = consumer_group_body("app", t, cluster["SPEC_BOOTSTRAP"], examples_image,
                                   minReplicas=1, maxReplicas=1)
        kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(body))

    for ns, pods in two_shards:
        pods.wait_ready(timeout=150)
        # Serving its own group: counted, swept and reported by this release's leader. (The
        # suite's operator may write the group's workload and status first, which leaves
        # this one nothing to change: the audit log cannot show who serves it.)
        eventually(lambda p=pods, n=ns: f'namespace="{n}"' in p.metrics()  # type: ignore[misc]
                   and "kcg_groups 1.0" in p.metrics()
                   and 'kcg_consumergroup_members{' in p.metrics(), timeout=90,
                   what=f"{pods.release} to report its group")
    summary = []
    for ns, pods in two_shards:
        account = f"system:serviceaccount:{ns}:{pods.release}-kcg-operator"
        writes = _writes(audit, account)
        places = {_where(e)[0] for e in writes}
        metrics = pods.metrics()
        others = [other for other, _ in two_shards if other != ns]
        counted = [ln for ln in metrics.splitlines() if ln.startswith("kcg_groups ")]
        summary.append(f"{pods.release}: {len(writes)} writes, all in {sorted(places)}; "
                       f"{counted}")
        # Its Lease renewals at least: the account's writes are in the log.
        assert (ns, "leases", f"{pods.release}-kcg-operator") in {_where(e) for e in writes}
        assert places == {ns}, f"{pods.release} wrote outside {ns}: {sorted(places)}"
        assert "kcg_groups 1.0" in metrics
        assert not any(f'namespace="{o}"' in metrics for o in others), \
            f"{pods.release} reports another shard's group"
        refused = [e for e in writes if (e.get("responseStatus") or {}).get("code") == 403]
        assert not refused, f"{pods.release} was refused: {[_where(e) for e in refused]}"
    print("sharding: " + "; ".join(summary))
