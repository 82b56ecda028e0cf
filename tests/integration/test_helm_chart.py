"""The Helm chart: lint-clean, hardened, and least privilege, proven with the real helm and
real API calls made with a TokenRequest token of the chart's own ServiceAccount."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from .conftest import CHART, ChartInstall, Helm

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "kcg.dev", "v1alpha1", "kafkaconsumergroups"

# Exactly what the operator does in the API, and nothing more.
OPERATOR_RULES = [
    {"apiGroups": ["kcg.dev"], "resources": ["kafkaconsumergroups"],
     "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["kcg.dev"], "resources": ["kafkaconsumergroups/status"],
     "verbs": ["get", "patch"]},
    {"apiGroups": ["kcg.dev"], "resources": ["kafkaconsumergroups/finalizers"],
     "verbs": ["update"]},
    {"apiGroups": ["apps"], "resources": ["deployments"],
     "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
    {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["patch"]},
    {"apiGroups": [""], "resources": ["configmaps"],
     "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
]
CLUSTER_KINDS = {"ClusterRole", "ClusterRoleBinding"}


def _lease_rules(lease: str) -> list[dict[str, Any]]:
    """Leader election: its one Lease by name, in the release namespace only."""
    return [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
             "resourceNames": [lease], "verbs": ["get", "update"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
             "verbs": ["create"]}]


def _eventually(check: Callable[[], Any], timeout: float = 30.0, what: str = "it") -> Any:
    """Retries while the API refuses (RBAC bindings reach the authorizer's cache in moments)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except ApiException as exc:
            if exc.status != 403 or time.monotonic() > deadline:
                raise AssertionError(f"{what}: {exc.status} {exc.reason}: {exc.body}") from exc
        time.sleep(0.3)


def _refused(call: Callable[[], Any], what: str) -> None:
    with pytest.raises(ApiException) as denied:
        call()
    assert denied.value.status == 403, f"{what}: expected 403, got {denied.value.status}"


def _render(helm: Helm, *args: str) -> list[dict[str, Any]]:
    out = helm("template", "rel", CHART, "--namespace", "ops", *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = _kinds(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


# --------------------------------------------------------------------------- lint, render


@pytest.mark.parametrize("args", [
    [],
    ["--strict"],
    ["--strict", "--set", "watchNamespaces={team-a,team-b}"],
    ["--strict", "--set", "metrics.serviceMonitor.enabled=true",
     "--set", "rbac.aggregateToDefaultRoles=true", "--set", "relayImage=relay:1"],
], ids=["default", "strict", "strict-namespaced", "strict-all-options"])
def test_helm_lint_is_clean(helm: Helm, args: list[str]) -> None:
    proc = helm("lint", CHART, *args)
    output = proc.stdout + proc.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in output
    assert "[WARNING]" not in output and "[ERROR]" not in output, output


def test_rendered_deployment_is_non_root_read_only_and_probed(helm: Helm) -> None:
    docs = _render(helm)
    deployment = _one(docs, "Deployment")
    # Two replicas, one leading: a standby survives a node drain (the budget keeps one).
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert _one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == _one(docs, "ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}

    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 65532
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    assert ports[probe["port"]] == 8080
    assert ports["metrics"] == 9090
    assert container["resources"]["requests"] and container["resources"]["limits"]

    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    volume = next(v for v in pod["volumes"] if v["name"] == tmp["name"])
    assert volume["emptyDir"] == {"sizeLimit": "64Mi"}  # /tmp cannot fill the node's disk

    assert container["args"] == ["run", "--leader-elect", "--leader-election-id",
                                 "rel-kcg-operator", "--all-namespaces"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KCG_RELAY_IMAGE"] == container["image"] == "ghcr.io/kcg-dev/kcg-operator:0.1.0"
    assert env["KCG_LOG_FORMAT"] == "json"

    service = _one(docs, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9090,
                                         "targetPort": "metrics", "protocol": "TCP"}]
    assert not _kinds(docs, "ServiceMonitor")


def test_rendered_cluster_wide_rbac_is_exactly_the_operator_rights(helm: Helm) -> None:
    docs = _render(helm)
    role, binding = _one(docs, "ClusterRole"), _one(docs, "ClusterRoleBinding")
    assert role["rules"] == OPERATOR_RULES
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "namespace": "ops",
                                    "name": _one(docs, "ServiceAccount")["metadata"]["name"]}]
    # The only namespaced rights: the leader Lease in the release namespace.
    (lease_role,) = _kinds(docs, "Role")
    assert lease_role["metadata"]["namespace"] == "ops"
    assert lease_role["rules"] == _lease_rules("rel-kcg-operator")
    (lease_binding,) = _kinds(docs, "RoleBinding")
    assert lease_binding["roleRef"]["name"] == lease_role["metadata"]["name"]


def test_watch_namespaces_render_one_role_each_and_nothing_cluster_wide(helm: Helm) -> None:
    docs = _render(helm, "--set", "watchNamespaces={team-a,team-b}")
    assert not CLUSTER_KINDS & {doc["kind"] for doc in docs}
    assert all(doc["metadata"].get("namespace") for doc in docs), "a cluster-scoped object"
    account = _one(docs, "ServiceAccount")["metadata"]["name"]
    roles = {r["metadata"]["namespace"]: r for r in _kinds(docs, "Role")}
    bindings = {b["metadata"]["namespace"]: b for b in _kinds(docs, "RoleBinding")}
    assert set(roles) == set(bindings) == {"team-a", "team-b", "ops"}
    assert roles["ops"]["rules"] == _lease_rules("rel-kcg-operator")
    for ns in ("team-a", "team-b"):
        assert roles[ns]["rules"] == OPERATOR_RULES
        assert bindings[ns]["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                           "kind": "Role", "name": roles[ns]["metadata"]["name"]}
        assert bindings[ns]["subjects"] == [{"kind": "ServiceAccount", "name": account,
                                             "namespace": "ops"}]
    (container,) = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["run", "--leader-elect", "--leader-election-id",
                                 "rel-kcg-operator", "--namespace", "team-a",
                                 "--namespace", "team-b"]


def test_one_writer_without_leader_election(helm: Helm) -> None:
    refused = helm("template", "rel", CHART, "--set", "leaderElection.enabled=false",
                   check=False)
    assert refused.returncode != 0
    assert "replicaCount > 1 needs leaderElection.enabled=true" in refused.stderr
    docs = _render(helm, "--set", "leaderElection.enabled=false", "--set", "replicaCount=1")
    deployment = _one(docs, "Deployment")
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert "--leader-elect" not in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not _kinds(docs, "Role") and not _kinds(docs, "PodDisruptionBudget")


def test_optional_objects_and_settings(helm: Helm) -> None:
    docs = _render(helm, "--set", "metrics.serviceMonitor.enabled=true",
                   "--set", "relayImage=registry.example/relay:2",
                   "--set", "image.tag=1.2.3", "--set", "logFormat=plain")
    monitor = _one(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    # The groups' own namespace label survives the scrape (the alerts group by it).
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True
    (container,) = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["image"] == "ghcr.io/kcg-dev/kcg-operator:1.2.3"
    assert env["KCG_RELAY_IMAGE"] == "registry.example/relay:2"
    assert env["KCG_LOG_FORMAT"] == "plain"

    user_roles = _render(helm, "--set", "rbac.aggregateToDefaultRoles=true")
    labels = [r["metadata"]["labels"] for r in _kinds(user_roles, "ClusterRole")]
    assert any(lb.get("rbac.authorization.k8s.io/aggregate-to-view") == "true" for lb in labels)


@pytest.mark.parametrize(("setting", "message"), [
    ("bogus=1", "additional properties 'bogus' not allowed"),
    ("watchNamespaces={team-*}", "does not match pattern"),
    ("image.pullPolicy=Sometimes", "pullPolicy"),
    ("metrics.service.port=0", "port"),
])
def test_values_schema_refuses_bad_values(helm: Helm, setting: str, message: str) -> None:
    proc = helm("template", "rel", CHART, "--set", setting, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- install, RBAC


@pytest.fixture
def make_namespaces(kube: client.ApiClient) -> Iterator[Callable[[int], list[str]]]:
    core = client.CoreV1Api(kube)
    made: list[str] = []

    def make(count: int) -> list[str]:
        names = [f"kcg-watched-{uuid.uuid4().hex[:8]}" for _ in range(count)]
        for name in names:
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
            made.append(name)
        return names

    try:
        yield make
    finally:
        for name in made:
            core.delete_namespace(name)


def _kcg(kube: client.ApiClient, namespace: str) -> dict[str, Any]:
    """Creates examples/minimal.yaml (as admin) in ``namespace``."""
    body = yaml.safe_load((REPO / "examples" / "minimal.yaml").read_text())
    return client.CustomObjectsApi(kube).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body)


def _deployment(name: str) -> client.V1Deployment:
    labels = {"app": name}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(
            replicas=1, selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="x")]))))


def _config_map(name: str) -> client.V1ConfigMap:
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data={"a": "1"})


def _secret(kube: client.ApiClient, namespace: str) -> str:
    client.CoreV1Api(kube).create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="kafka-auth"), string_data={"sasl.password": "x"}))
    return "kafka-auth"


def _watch_kcgs(custom: client.CustomObjectsApi, namespace: str | None) -> list[str]:
    if namespace is None:
        stream = watch.Watch().stream(custom.list_cluster_custom_object, GROUP, VERSION, PLURAL,
                                      timeout_seconds=1)
    else:
        stream = watch.Watch().stream(custom.list_namespaced_custom_object, GROUP, VERSION,
                                      namespace, PLURAL, timeout_seconds=1)
    return [event["object"]["metadata"]["name"] for event in stream]


def _can_run_the_operator_in(sa: client.ApiClient, kube: client.ApiClient, ns: str) -> None:
    """Every call the operator makes in namespace ``ns`` succeeds with the SA's token."""
    custom, apps, core = (client.CustomObjectsApi(sa), client.AppsV1Api(sa),
                          client.CoreV1Api(sa))
    kcg = _kcg(kube, ns)
    name = kcg["metadata"]["name"]
    listed = _eventually(lambda: custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL),
                         what=f"listing kafkaconsumergroups in {ns}")
    assert [item["metadata"]["name"] for item in listed["items"]] == [name]
    assert name in _watch_kcgs(custom, ns)
    custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    _refused(lambda: custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, name, {"metadata": {"annotations": {"kcg.dev/test": "1"}}}),
        "change a KafkaConsumerGroup (the operator only reads them)")
    status = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, PLURAL, name, {"status": {"observedGeneration": 1}})
    assert status["status"]["observedGeneration"] == 1

    apps.create_namespaced_deployment(ns, _deployment("consumer"))
    apps.patch_namespaced_deployment("consumer", ns, {"spec": {"replicas": 3}})
    assert apps.read_namespaced_deployment("consumer", ns).spec.replicas == 3
    assert "consumer" in [d.metadata.name for d in apps.list_namespaced_deployment(ns).items]
    apps.delete_namespaced_deployment("consumer", ns)

    core.create_namespaced_config_map(ns, _config_map("consumer-config"))
    # Listed (and watched) so that one deleted by hand is noticed and put back.
    assert "consumer-config" in [c.metadata.name for c in core.list_namespaced_config_map(ns).items]
    core.patch_namespaced_config_map("consumer-config", ns, {"data": {"a": "2"}})
    assert core.read_namespaced_config_map("consumer-config", ns).data == {"a": "2"}
    core.delete_namespaced_config_map("consumer-config", ns)

    secret = _secret(kube, ns)
    assert core.read_namespaced_secret(secret, ns).data["sasl.password"]

    # The controller's pod check: one LIST by the Deployment's label selector.
    core.list_namespaced_pod(ns, label_selector=f"kcg.dev/group={name}")

    core.create_namespaced_event(ns, client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name=f"{name}."),
        involved_object=client.V1ObjectReference(
            api_version=f"{GROUP}/{VERSION}", kind="KafkaConsumerGroup", name=name,
            namespace=ns, uid=kcg["metadata"]["uid"]),
        reason="Test", message="an event from the operator's account", type="Normal"))


def _can_hold_only_its_own_lease(sa: client.ApiClient, install: ChartInstall) -> None:
    """Leader election: create and renew the release's Lease, touch no other."""
    leases, ns = client.CoordinationV1Api(sa), install.namespace
    name = f"{install.release}-kcg-operator"
    lease = _eventually(lambda: leases.create_namespaced_lease(ns, client.V1Lease(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1LeaseSpec(holder_identity="test", lease_duration_seconds=6))),
        what="creating the leader Lease")
    lease.spec.holder_identity = "test-2"
    assert leases.replace_namespaced_lease(name, ns, lease).spec.holder_identity == "test-2"
    _refused(lambda: leases.read_namespaced_lease("kube-scheduler", "kube-system"),
             "read another component's Lease")
    _refused(lambda: leases.list_namespaced_lease(ns), "list Leases")
    _refused(lambda: leases.delete_namespaced_lease(name, ns), "delete its Lease")


def _refused_what_the_operator_must_never_do(sa: client.ApiClient, install: ChartInstall,
                                             ns: str) -> None:
    core, rbac = client.CoreV1Api(sa), client.RbacAuthorizationV1Api(sa)
    custom, ext = client.CustomObjectsApi(sa), client.ApiextensionsV1Api(sa)
    escalate = client.V1ClusterRoleBinding(
        metadata=client.V1ObjectMeta(name=f"{install.release}-escalate"),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole",
                                  name="cluster-admin"),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name=install.service_account,
                                       namespace=install.namespace)])
    for what, call in [
        ("create a ClusterRoleBinding", lambda: rbac.create_cluster_role_binding(escalate)),
        ("create a Role", lambda: rbac.create_namespaced_role(
            ns, client.V1Role(metadata=client.V1ObjectMeta(name="escalate"), rules=[]))),
        ("delete a Namespace", lambda: core.delete_namespace(ns)),
        ("list Namespaces", lambda: core.list_namespace()),
        ("list Secrets", lambda: core.list_namespaced_secret(ns)),
        ("list Secrets cluster-wide", lambda: core.list_secret_for_all_namespaces()),
        ("create a Secret", lambda: core.create_namespaced_secret(
            ns, client.V1Secret(metadata=client.V1ObjectMeta(name="nope")))),
        ("watch Pods", lambda: core.list_namespaced_pod(ns, watch=True, timeout_seconds=1)),
        ("get a Pod", lambda: core.read_namespaced_pod("nope", ns)),
        ("delete Pods", lambda: core.delete_collection_namespaced_pod(ns)),
        ("read CRDs", lambda: ext.list_custom_resource_definition()),
        ("create a KafkaConsumerGroup", lambda: custom.create_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, {"apiVersion": f"{GROUP}/{VERSION}",
                                         "kind": "KafkaConsumerGroup",
                                         "metadata": {"name": "nope"}, "spec": {}})),
        ("delete a KafkaConsumerGroup", lambda: custom.delete_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, "orders-minimal")),
    ]:
        _refused(call, what)


def test_helm_install_cluster_wide_succeeds(
    helm: Helm, kube: client.ApiClient, namespace: str,
    install_chart: Callable[..., ChartInstall],
) -> None:
    install = install_chart(namespace)
    status = yaml.safe_load(helm("status", install.release, "--namespace", namespace,
                                 "--output", "yaml").stdout)
    assert status["info"]["status"] == "deployed"
    assert "kubectl get kcg" in status["info"]["notes"]
    deployment = client.AppsV1Api(kube).read_namespaced_deployment(
        f"{install.release}-kcg-operator", namespace)
    assert deployment.spec.template.spec.service_account_name == install.service_account
    rbac = client.RbacAuthorizationV1Api(kube)
    role = rbac.read_cluster_role(f"{install.release}-kcg-operator")
    assert [r.to_dict()["resources"] for r in role.rules] == [
        r["resources"] for r in OPERATOR_RULES]
    crd = client.ApiextensionsV1Api(kube).read_custom_resource_definition(f"{PLURAL}.{GROUP}")
    assert any(c.type == "Established" and c.status == "True" for c in crd.status.conditions)


def test_cluster_wide_token_does_the_operator_job_and_nothing_else(
    kube: client.ApiClient, namespace: str, install_chart: Callable[..., ChartInstall],
) -> None:
    install = install_chart(namespace)
    with install.api_client() as sa:
        custom = client.CustomObjectsApi(sa)
        _eventually(lambda: custom.list_cluster_custom_object(GROUP, VERSION, PLURAL),
                    what="listing kafkaconsumergroups in all namespaces")
        _watch_kcgs(custom, None)
        _can_run_the_operator_in(sa, kube, namespace)
        _can_hold_only_its_own_lease(sa, install)
        _refused_what_the_operator_must_never_do(sa, install, namespace)


def test_chart_token_kubeconfig_acts_as_the_service_account(
    chart_token_kubeconfig: Path, namespace: str,
) -> None:
    with config.new_client_from_config(config_file=str(chart_token_kubeconfig)) as sa:
        custom = client.CustomObjectsApi(sa)
        _eventually(lambda: custom.list_cluster_custom_object(GROUP, VERSION, PLURAL),
                    what="listing kafkaconsumergroups with the kubeconfig")
        _refused(lambda: client.CoreV1Api(sa).list_namespaced_secret(namespace), "list Secrets")
        review = client.AuthenticationV1Api(sa).create_self_subject_review(
            client.V1SelfSubjectReview())
        assert review.status.user_info.username.startswith(
            f"system:serviceaccount:{namespace}:")


def test_namespaced_token_is_confined_to_the_watched_namespaces(
    kube: client.ApiClient, namespace: str, install_chart: Callable[..., ChartInstall],
    make_namespaces: Callable[[int], list[str]],
) -> None:
    team_a, team_b = make_namespaces(2)
    install = install_chart(namespace, watch_namespaces=[team_a, team_b])
    rbac = client.RbacAuthorizationV1Api(kube)
    release_label = f"app.kubernetes.io/instance={install.release}"
    assert not rbac.list_cluster_role(label_selector=release_label).items
    assert not rbac.list_cluster_role_binding(label_selector=release_label).items
    assert {r.metadata.namespace for r in
            rbac.list_role_for_all_namespaces(label_selector=release_label).items} == {
        team_a, team_b, namespace}  # the release namespace: the leader Lease only
    deployment = client.AppsV1Api(kube).read_namespaced_deployment(
        f"{install.release}-kcg-operator", namespace)
    assert deployment.spec.template.spec.containers[0].args == [
        "run", "--leader-elect", "--leader-election-id", f"{install.release}-kcg-operator",
        "--namespace", team_a, "--namespace", team_b]

    outside = namespace  # the release's own namespace is not in the list
    _kcg(kube, outside)
    outside_secret = _secret(kube, outside)
    with install.api_client() as sa:
        custom, apps, core = (client.CustomObjectsApi(sa), client.AppsV1Api(sa),
                              client.CoreV1Api(sa))
        _eventually(lambda: custom.list_namespaced_custom_object(GROUP, VERSION, team_b, PLURAL),
                    what=f"listing kafkaconsumergroups in {team_b}")
        _can_run_the_operator_in(sa, kube, team_a)
        _refused_what_the_operator_must_never_do(sa, install, team_a)

        for what, call in [
            ("list kcgs in all namespaces",
             lambda: custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)),
            ("list kcgs outside", lambda: custom.list_namespaced_custom_object(
                GROUP, VERSION, outside, PLURAL)),
            ("watch kcgs outside", lambda: _watch_kcgs(custom, outside)),
            ("patch a kcg outside", lambda: custom.patch_namespaced_custom_object(
                GROUP, VERSION, outside, PLURAL, "orders-minimal",
                {"metadata": {"annotations": {"kcg.dev/test": "no"}}})),
            ("patch a kcg status outside", lambda: custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, outside, PLURAL, "orders-minimal",
                {"status": {"observedGeneration": 1}})),
            ("create a Deployment outside",
             lambda: apps.create_namespaced_deployment(outside, _deployment("consumer"))),
            ("list Deployments in all namespaces",
             lambda: apps.list_deployment_for_all_namespaces()),
            ("create a ConfigMap outside",
             lambda: core.create_namespaced_config_map(outside, _config_map("consumer-config"))),
            ("create a ConfigMap in default",
             lambda: core.create_namespaced_config_map("default", _config_map("kcg-nope"))),
            ("get a Secret outside",
             lambda: core.read_namespaced_secret(outside_secret, outside)),
            ("list Pods outside", lambda: core.list_namespaced_pod(outside)),
            ("list Pods in all namespaces", lambda: core.list_pod_for_all_namespaces()),
            ("post an Event outside", lambda: core.create_namespaced_event(
                outside, client.CoreV1Event(
                    metadata=client.V1ObjectMeta(generate_name="x."),
                    involved_object=client.V1ObjectReference(kind="ConfigMap", name="x",
                                                             namespace=outside)))),
        ]:
            _refused(call, what)
