"""Kubernetes I/O for the operator: server-side apply, status, Secrets, Pods and Events.

Everything here is a thin call; what to write is decided elsewhere.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kcg_operator import metrics
from kcg_operator.api.models import API_VERSION, GROUP, PLURAL, VERSION
from kcg_operator.conditions import now_rfc3339

FIELD_MANAGER = "kcg-operator"
# (connect, read) seconds: a half-open connection must not stall the controller loop.
TIMEOUT = (5, 30)
APPLY = "application/apply-patch+yaml"
APPLY_QUERY = [("fieldManager", FIELD_MANAGER), ("force", "true")]
log = logging.getLogger(__name__)


#: Kept-alive apiserver connections: one per thread that calls it at once (the reconcile
#: and evaluate workers, the loop, leader election), so none is torn down and opened again
#: with a new TLS handshake (the client's default keeps 10).
CONNECTIONS = 32


def load_client() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the current kube context."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    configuration.connection_pool_maxsize = CONNECTIONS
    return client.ApiClient(configuration)


#: Events kept for another try while the apiserver cannot take them (a restarting one
#: answers 503 or 429 for a while, or not at all); when full, the oldest are dropped.
PENDING_EVENTS = 1000
#: Answers after which the same Event may be taken later.
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


class NotLeading(RuntimeError):
    """A write was refused because this replica does not hold the leader lease."""


class WriteGate(Protocol):
    """Who may write: the leader elector, or nobody to ask (one replica)."""

    def leading(self) -> bool: ...

    def writing(self) -> AbstractContextManager[bool]: ...


class Ungated:
    """Without leader election this replica always writes."""

    def leading(self) -> bool:
        return True

    @contextlib.contextmanager
    def writing(self) -> Iterator[bool]:
        yield True


class Kube:
    def __init__(self, api: client.ApiClient, gate: WriteGate | None = None) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        # Every write goes through the gate: a standby replica (leader election) never
        # writes, even if a code path forgets to check, and a leader stopping gracefully
        # frees its lease only after the writes already on their way.
        self.gate: WriteGate = gate or Ungated()
        self._pending_events: deque[dict[str, Any]] = deque(maxlen=PENDING_EVENTS)
        self._pending_lock = threading.Lock()

    def may_write(self) -> bool:
        return self.gate.leading()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        with self.gate.writing() as permitted:
            if not permitted:
                metrics.writes_refused.inc()
                raise NotLeading("this operator replica is not the leader; writes are refused")
            metrics.api_writes.inc()  # the steady-state benchmark reads it
            yield

    def _request(self, method: str, path: str, body: Any = None,
                 content_type: str = "application/json",
                 query: list[tuple[str, str]] | None = None) -> Any:
        """One call, its answer as raw JSON. The client's generated methods validate every
        argument with pydantic and build model objects from every answer: 13 % of the
        operator's CPU at start-up (3 000 objects), more than the calls themselves."""
        request = self.api.param_serialize(
            method, path, query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body, auth_settings=["BearerToken"])
        response = self.api.call_api(*request, _request_timeout=TIMEOUT)
        data = response.read()  # type: ignore[no-untyped-call]
        if not 200 <= response.status <= 299:
            raise ApiException(http_resp=response)
        return json.loads(data) if data else None

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply of a ConfigMap or Deployment we own (we win conflicts on the
        fields we manage; other managers keep theirs)."""
        meta = obj["metadata"]
        if obj["kind"] == "ConfigMap":
            path = f"/api/v1/namespaces/{meta['namespace']}/configmaps/{meta['name']}"
        elif obj["kind"] == "Deployment":
            path = f"/apis/apps/v1/namespaces/{meta['namespace']}/deployments/{meta['name']}"
        else:
            raise ValueError(f"cannot apply kind {obj['kind']}")
        with self._writing():
            applied: dict[str, Any] = self._request("PATCH", path, dict(obj), APPLY,
                                                    APPLY_QUERY)
        return applied

    def deployment_replicas(self, namespace: str, name: str) -> tuple[int, int] | None:
        """(spec.replicas, status.readyReplicas) of a Deployment, None when it is absent."""
        try:
            dep = self.apps.read_namespaced_deployment(name, namespace,
                                                       _request_timeout=TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        ready = dep.status.ready_replicas if dep.status else 0
        return int(dep.spec.replicas or 0) if dep.spec else 0, int(ready or 0)

    def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        """The pods a label selector matches, as the API's JSON (camelCase dicts): one LIST,
        filtered by the apiserver."""
        answer = self._request("GET", f"/api/v1/namespaces/{namespace}/pods",
                               query=[("labelSelector", label_selector)])
        items = answer.get("items") or []
        return [item for item in items if isinstance(item, dict)]

    def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        with self._writing():
            self.apps.patch_namespaced_deployment_scale(
                name, namespace, {"spec": {"replicas": replicas}}, field_manager=FIELD_MANAGER,
                _request_timeout=TIMEOUT)

    def secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """Decoded data of a Secret, None when it does not exist. Values are credentials:
        callers must never log or store them in status."""
        try:
            secret = self.core.read_namespaced_secret(name, namespace,
                                                      _request_timeout=TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}

    def apply_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        body = {"apiVersion": f"{API_VERSION}", "kind": "KafkaConsumerGroup",
                "metadata": {"name": name, "namespace": namespace}, "status": dict(status)}
        try:
            with self._writing():
                self._request("PATCH", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/"
                              f"{PLURAL}/{name}/status", body, APPLY, APPLY_QUERY)
        except ApiException as exc:
            if exc.status != 404:  # deleted meanwhile: its watch event will forget it
                raise

    def event(self, involved: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on the KafkaConsumerGroup, like `kubectl describe` shows. One the
        apiserver cannot take now is kept and sent by `retry_events`, with its own time."""
        meta = involved["metadata"]
        now = now_rfc3339()
        event = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": involved["apiVersion"], "kind": involved["kind"],
                               "name": meta["name"], "namespace": meta["namespace"],
                               "uid": meta.get("uid")},
            "type": type_, "reason": reason, "message": message[:1024],
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "source": {"component": "kcg-operator"},
            "reportingComponent": "kcg-operator", "reportingInstance": "kcg-operator",
        }
        with self._writing():
            self._post_event(event)

    def _post_event(self, event: dict[str, Any], keep: bool = True) -> bool:
        """Post one Event; False when the apiserver could not take it (then it is kept
        for a retry, if `keep`)."""
        namespace = event["metadata"]["namespace"]
        what = f"{event['reason']} on {namespace}/{event['involvedObject']['name']}"
        try:
            self._request("POST", f"/api/v1/namespaces/{namespace}/events", event)
            return True
        except ApiException as exc:  # an Event is telling, never a reason to fail
            if "NamespaceTerminating" in str(exc.body or ""):
                return True  # the object goes with its namespace: nobody will read it
            if exc.status not in RETRYABLE_STATUSES:
                log.warning("could not post event %s: %s %s", what, exc.status, exc.reason)
                return True
            problem = f"{exc.status} {exc.reason}"
        except (HTTPError, OSError) as exc:  # no answer at all
            problem = type(exc).__name__
        if keep:
            with self._pending_lock:
                self._pending_events.append(event)
            log.warning("event %s not taken (%s): kept for a retry", what, problem)
        return False

    def retry_events(self) -> int:
        """Send the Events kept while the apiserver could not take them, oldest first,
        until one is refused again (it and the rest stay). Returns how many went out."""
        with self._pending_lock:
            batch = list(self._pending_events)
            self._pending_events.clear()
        for sent, event in enumerate(batch):
            try:
                with self._writing():
                    posted = self._post_event(event, keep=False)
            except NotLeading:
                return sent  # the new leader posts its own; a standby writes nothing
            if not posted:
                with self._pending_lock:  # back in front of any that came meanwhile
                    self._pending_events = deque(
                        [*batch[sent:], *self._pending_events], maxlen=PENDING_EVENTS)
                return sent
        return len(batch)
