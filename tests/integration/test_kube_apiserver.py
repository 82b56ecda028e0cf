"""The local control plane behaves like a real cluster: schema checks, watches, GC, RBAC."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.integration

GROUP, VERSION, PLURAL = "probe.kcg.dev", "v1", "widgets"


def _eventually(check: Any, timeout: float = 30.0, what: str = "condition",
                retry_status: tuple[int, ...] = ()) -> Any:
    """`check()` until truthy; API errors with a status in `retry_status` count as "not
    yet" (a 403 while a new RoleBinding reaches the authorizer), any other is raised."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except ApiException as exc:
            if exc.status not in retry_status:
                raise
            last, result = exc, None
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


@pytest.fixture(scope="module")
def widget_crd(kube: client.ApiClient) -> Iterator[None]:
    ext = client.ApiextensionsV1Api(kube)
    body = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {"plural": PLURAL, "singular": "widget", "kind": "Widget"},
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {
                    "type": "object",
                    "required": ["size"],
                    "properties": {"size": {"type": "integer", "minimum": 1, "maximum": 10}},
                }}}},
            }],
        },
    }
    ext.create_custom_resource_definition(body)

    def established() -> bool:
        crd = ext.read_custom_resource_definition(f"{PLURAL}.{GROUP}")
        return any(c.type == "Established" and c.status == "True"
                   for c in (crd.status.conditions or []))

    _eventually(established, what="the CRD to be established")
    try:
        yield
    finally:
        ext.delete_custom_resource_definition(f"{PLURAL}.{GROUP}")


def _widget(name: str, size: int) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Widget",
            "metadata": {"name": name}, "spec": {"size": size}}


def test_schema_refuses_bad_object_with_field_path_and_accepts_valid_one(
    kube: client.ApiClient, widget_crd: None, namespace: str
) -> None:
    custom = client.CustomObjectsApi(kube)
    with pytest.raises(ApiException) as refused:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                               _widget("too-big", 99))
    assert refused.value.status == 422
    assert "spec.size" in refused.value.body
    created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                     _widget("ok", 3))
    assert created["spec"]["size"] == 3


def test_watch_sees_a_change(kube: client.ApiClient, widget_crd: None, namespace: str) -> None:
    custom = client.CustomObjectsApi(kube)
    created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                     _widget("watched", 1))
    rv = created["metadata"]["resourceVersion"]
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "watched",
                                          {"spec": {"size": 7}})
    seen = []
    stream = watch.Watch().stream(custom.list_namespaced_custom_object, GROUP, VERSION,
                                  namespace, PLURAL, resource_version=rv, timeout_seconds=10)
    for event in stream:
        seen.append((event["type"], event["object"]["spec"]["size"]))
        if event["type"] == "MODIFIED":
            break
    assert ("MODIFIED", 7) in seen


def test_deleting_an_owner_deletes_what_it_owns(kube: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube)
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner")))
    ref = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner",
                                  uid=owner.metadata.uid, controller=True,
                                  block_owner_deletion=True)
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="owned", owner_references=[ref])))
    core.delete_namespaced_config_map("owner", namespace,
                                      propagation_policy="Background")

    def owned_gone() -> bool:
        try:
            core.read_namespaced_config_map("owned", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    _eventually(owned_gone, timeout=60, what="the garbage collector to delete 'owned'")


def test_deployment_gets_a_replicaset_from_the_controller_manager(
    kube: client.ApiClient, namespace: str
) -> None:
    apps = client.AppsV1Api(kube)
    labels = {"app": "probe"}
    apps.create_namespaced_deployment(namespace, client.V1Deployment(
        metadata=client.V1ObjectMeta(name="probe"),
        spec=client.V1DeploymentSpec(
            replicas=2, selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="x")])))))
    rs = _eventually(lambda: apps.list_namespaced_replica_set(namespace).items,
                     what="a ReplicaSet for the Deployment")
    assert rs[0].spec.replicas == 2


def test_token_of_a_narrow_role_can_do_what_the_role_allows_and_nothing_else(
    kube: client.ApiClient, namespace: str, stack: dict[str, Any]
) -> None:
    core, rbac = client.CoreV1Api(kube), client.RbacAuthorizationV1Api(kube)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="reader")))
    rbac.create_namespaced_role(namespace, client.V1Role(
        metadata=client.V1ObjectMeta(name="cm-reader"),
        rules=[client.V1PolicyRule(api_groups=[""], resources=["configmaps"],
                                   verbs=["get", "list"])]))
    rbac.create_namespaced_role_binding(namespace, client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name="cm-reader"),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role",
                                  name="cm-reader"),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name="reader",
                                       namespace=namespace)]))
    token = core.create_namespaced_service_account_token(
        "reader", namespace,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)),
    ).status.token

    cfg = client.Configuration()
    cfg.host = kube.configuration.host
    cfg.ssl_ca_cert = kube.configuration.ssl_ca_cert
    cfg.api_key = {"authorization": f"Bearer {token}"}
    with client.ApiClient(cfg) as as_reader:
        reader = client.CoreV1Api(as_reader)
        # RBAC bindings take effect within moments; allow the authorizer's cache to catch up.
        _eventually(lambda: reader.list_namespaced_config_map(namespace) is not None,
                    what="the Role to allow listing", retry_status=(403,))
        for forbidden in (
            lambda: reader.create_namespaced_config_map(
                namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="nope"))),
            lambda: reader.list_namespaced_secret(namespace),
            lambda: reader.list_namespaced_config_map("default"),
            lambda: reader.delete_namespace(namespace),
        ):
            with pytest.raises(ApiException) as denied:
                forbidden()
            assert denied.value.status == 403
