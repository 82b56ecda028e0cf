"""A real Prometheus (Debian's `prometheus` package) for the local stack.

Debian's build has no `kubernetes_sd_configs` (promtool: "field kubernetes_sd_configs not
found in type config.ScrapeConfig"; the Kubernetes client libraries are not packaged in
Debian, so that discovery is compiled out). It does have `http_sd_configs`, so this module
serves the same discovery over HTTP (`KubernetesDiscovery`): it lists pods and Endpoints from
the stack's kube-apiserver (the stack's kubeconfig: client certificate, cluster CA) and hands
Prometheus one target per container port or endpoint port, labelled with the very
`__meta_kubernetes_*` labels Kubernetes SD gives (roles `pod` and `endpoints`). The jobs'
relabel_configs are therefore the ones a cluster's Prometheus uses (docs/alerts.md), and
with an upstream Prometheus `kubernetes_sd_configs` drops in for `http_sd_configs`.
Pods are reached on their own addresses on the node's bridge (198.18.N.0/24), which the host
routes to, as a Prometheus pod would reach them.

Jobs, named as the chart's rule files expect (charts/kcg-operator/files/prometheus):
  - kcg-operator-metrics: the endpoints of the chart's metrics Service (port `metrics`,
    honor_labels so the groups' own `namespace` label survives), plus any static targets
    (an operator run as a local process, `kcg run --metrics-port`);
  - kcg-outbox-relay: every pod container port named `outbox-health` (the relay sidecar),
    with the pod's namespace, name and kcg.dev/group label as docs/alerts.md's job does.

Not part of `make up`: a test session starts one when it needs one (tests/e2e's
`prometheus` fixture), owned by the test process and killed with it; or, by hand,
`python stack/prometheus.py run` while the stack is up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import localstack

RULES_DIR = localstack.REPO / "charts" / "kcg-operator" / "files" / "prometheus"
OPERATOR_JOB = "kcg-operator-metrics"
RELAY_JOB = "kcg-outbox-relay"
RELAY_PORT_NAME = "outbox-health"


class PrometheusError(Exception):
    pass


def binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        raise PrometheusError("prometheus not found: install it with `apt-get install -y "
                              "--no-install-recommends prometheus` (then stop the service "
                              "the package starts: it listens on :9090)")
    return found


def _sd(role: str, discovery_url: str, namespaces: Sequence[str] | None) -> dict[str, Any]:
    query = f"?{urllib.parse.urlencode({'namespaces': ','.join(namespaces)})}" \
        if namespaces else ""
    return {"url": f"{discovery_url}/{role}{query}", "refresh_interval": "1s"}


def _sanitize(name: str) -> str:
    """A Kubernetes label name as Kubernetes SD puts it into a meta label."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _object_labels(prefix: str, meta: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for kind, values in (("label", meta.labels), ("annotation", meta.annotations)):
        for key, value in (values or {}).items():
            out[f"{prefix}_{kind}_{_sanitize(key)}"] = value
            out[f"{prefix}_{kind}present_{_sanitize(key)}"] = "true"
    return out


def pod_targets(pods: Sequence[Any]) -> list[dict[str, Any]]:
    """Kubernetes SD's `pod` role: one target per container port (init containers too,
    marked `__meta_kubernetes_pod_container_init="true"`: native sidecars are init
    containers). Pods without an address yet have no target."""
    groups: list[dict[str, Any]] = []
    for pod in pods:
        ip = pod.status.pod_ip if pod.status else None
        if not ip:
            continue
        ready = any(c.type == "Ready" and c.status == "True"
                    for c in (pod.status.conditions or []))
        base = {
            "__meta_kubernetes_namespace": pod.metadata.namespace,
            "__meta_kubernetes_pod_name": pod.metadata.name,
            "__meta_kubernetes_pod_uid": pod.metadata.uid,
            "__meta_kubernetes_pod_ip": ip,
            "__meta_kubernetes_pod_phase": pod.status.phase or "",
            "__meta_kubernetes_pod_ready": str(ready).lower(),
            "__meta_kubernetes_pod_node_name": pod.spec.node_name or "",
            **_object_labels("__meta_kubernetes_pod", pod.metadata),
        }
        for init, containers in ((True, pod.spec.init_containers or []),
                                 (False, pod.spec.containers or [])):
            for c in containers:
                for port in c.ports or []:
                    groups.append({"targets": [f"{ip}:{port.container_port}"], "labels": {
                        **base,
                        "__meta_kubernetes_pod_container_name": c.name,
                        "__meta_kubernetes_pod_container_init": str(init).lower(),
                        "__meta_kubernetes_pod_container_port_name": port.name or "",
                        "__meta_kubernetes_pod_container_port_number": str(port.container_port),
                        "__meta_kubernetes_pod_container_port_protocol": port.protocol or "TCP",
                    }})
    return groups


def endpoints_targets(endpoints: Sequence[Any], services: dict[tuple[str, str], Any]
                      ) -> list[dict[str, Any]]:
    """Kubernetes SD's `endpoints` role: one target per address and port of every
    Endpoints object, with its Service's labels."""
    groups: list[dict[str, Any]] = []
    for ep in endpoints:
        ns, name = ep.metadata.namespace, ep.metadata.name
        service = services.get((ns, name))
        base = {"__meta_kubernetes_namespace": ns, "__meta_kubernetes_endpoints_name": name,
                **_object_labels("__meta_kubernetes_endpoints", ep.metadata)}
        if service is not None:
            base["__meta_kubernetes_service_name"] = name
            base.update(_object_labels("__meta_kubernetes_service", service.metadata))
        for subset in ep.subsets or []:
            for ready, addresses in (("true", subset.addresses or []),
                                     ("false", subset.not_ready_addresses or [])):
                for address in addresses:
                    ref = address.target_ref
                    pod = {"__meta_kubernetes_pod_name": ref.name} \
                        if ref is not None and ref.kind == "Pod" else {}
                    for port in subset.ports or []:
                        groups.append({"targets": [f"{address.ip}:{port.port}"], "labels": {
                            **base, **pod,
                            "__meta_kubernetes_endpoint_ready": ready,
                            "__meta_kubernetes_endpoint_port_name": port.name or "",
                            "__meta_kubernetes_endpoint_port_protocol": port.protocol or "TCP",
                            "__meta_kubernetes_endpoint_address_target_kind":
                                ref.kind if ref is not None else "",
                            "__meta_kubernetes_endpoint_address_target_name":
                                ref.name if ref is not None else "",
                        }})
    return groups


class KubernetesDiscovery:
    """Prometheus' Kubernetes SD (roles pod and endpoints) served as HTTP SD: GET /pod or
    /endpoints[?namespaces=a,b] answers the target groups of that role, listed from the
    apiserver at each request (Prometheus asks every refresh_interval)."""

    def __init__(self, kubeconfig: str) -> None:
        import warnings

        from kubernetes import client
        from kubernetes import config as kube_config

        # v1 Endpoints is deprecated in favour of EndpointSlices (1.33+); Kubernetes SD's
        # `endpoints` role still reads it, so this does too.
        warnings.filterwarnings("ignore", message=".*Endpoints is deprecated.*")
        self.api = kube_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig)
        self.core = client.CoreV1Api(self.api)
        self._closed = False
        discovery = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parsed = urllib.parse.urlparse(self.path)
                wanted = urllib.parse.parse_qs(parsed.query).get("namespaces", [""])[0]
                namespaces = [n for n in wanted.split(",") if n]
                try:
                    body = json.dumps(discovery.targets(parsed.path.strip("/"), namespaces))
                    code = 200
                except Exception as exc:
                    body, code = str(exc), 500
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", localstack.free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name="kubernetes-sd")
        self.thread.start()

    def _list(self, kind: str, namespaces: Sequence[str]) -> list[Any]:
        if not namespaces:
            return list(getattr(self.core, f"list_{kind}_for_all_namespaces")().items)
        return [item for ns in namespaces
                for item in getattr(self.core, f"list_namespaced_{kind}")(ns).items]

    def targets(self, role: str, namespaces: Sequence[str]) -> list[dict[str, Any]]:
        if role == "pod":
            return pod_targets(self._list("pod", namespaces))
        if role == "endpoints":
            services = {(s.metadata.namespace, s.metadata.name): s
                        for s in self._list("service", namespaces)}
            return endpoints_targets(self._list("endpoints", namespaces), services)
        raise ValueError(f"unknown role {role!r}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.server.shutdown()
        self.server.server_close()
        self.api.close()


def config(discovery_url: str, rule_files: Sequence[Path], interval_seconds: float = 2.0,
           namespaces: Sequence[str] | None = None,
           static_operator_targets: Sequence[str] = ()) -> dict[str, Any]:
    """prometheus.yml for the stack (pure: the caller writes it)."""
    interval = f"{int(interval_seconds * 1000)}ms"
    operator: dict[str, Any] = {
        "job_name": OPERATOR_JOB,
        # The operator's series carry the KafkaConsumerGroup's namespace: keep it.
        "honor_labels": True,
        "http_sd_configs": [_sd("endpoints", discovery_url, namespaces)],
        "relabel_configs": [
            {"source_labels": ["__meta_kubernetes_service_label_app_kubernetes_io_name",
                               "__meta_kubernetes_service_label_app_kubernetes_io_component",
                               "__meta_kubernetes_endpoint_port_name"],
             "regex": "kcg-operator;operator;metrics", "action": "keep"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        ],
    }
    jobs: list[dict[str, Any]] = [operator]
    if static_operator_targets:
        # Labelled as the discovered Service's targets are, so the same keep rule takes them.
        jobs[0] = {**operator, "static_configs": [{
            "targets": list(static_operator_targets),
            "labels": {"__meta_kubernetes_service_label_app_kubernetes_io_name": "kcg-operator",
                       "__meta_kubernetes_service_label_app_kubernetes_io_component": "operator",
                       "__meta_kubernetes_endpoint_port_name": "metrics"}}]}
    jobs.append({
        "job_name": RELAY_JOB,
        "http_sd_configs": [_sd("pod", discovery_url, namespaces)],
        "relabel_configs": [
            {"source_labels": ["__meta_kubernetes_pod_container_port_name"],
             "regex": RELAY_PORT_NAME, "action": "keep"},
            # A pod that has finished (or not yet got an address) has nothing to scrape.
            {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Pending|Succeeded|Failed",
             "action": "drop"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_pod_label_kcg_dev_group"],
             "target_label": "kcg_dev_group"},
        ],
    })
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": interval,
                   "evaluation_interval": interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": jobs,
    }


@dataclass
class Prometheus:
    """A running Prometheus and its HTTP API."""

    url: str
    directory: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    discovery: KubernetesDiscovery | None = field(default=None, repr=False)

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the `data` of a success, PrometheusError otherwise."""
        query = urllib.parse.urlencode(params)
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: "
                                  f"{body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        return list(data["result"]) if data["resultType"] in ("vector", "matrix") \
            else [{"value": data["result"]}]

    def query_range(self, expr: str, seconds: float, step: float) -> list[dict[str, Any]]:
        end = time.time()
        data = self.api("query_range", query=expr, start=f"{end - seconds:.3f}",
                        end=f"{end:.3f}", step=f"{step:g}")
        return list(data["result"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("alerts")["alerts"])

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets", state="active")["activeTargets"])

    def rule_groups(self) -> list[dict[str, Any]]:
        return list(self.api("rules")["groups"])

    def log_text(self) -> str:
        path = self.directory / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.discovery is not None:
            self.discovery.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def start(kubeconfig: str, rule_files: Sequence[Path] | None = None,
          interval_seconds: float = 2.0, namespaces: Sequence[str] | None = None,
          static_operator_targets: Sequence[str] = (), owned: bool = True,
          directory: Path | None = None, timeout: float = 60.0) -> Prometheus:
    """Start a Prometheus on a free loopback port; return once it is ready and has loaded
    its rules. `owned`: it dies with this process (even on SIGKILL). Its data directory
    (default: under the stack's state directory, which `make down` removes) goes on stop."""
    directory = directory or localstack.STATE / f"prometheus-{uuid.uuid4().hex[:8]}"
    discovery = KubernetesDiscovery(kubeconfig)
    try:
        return _start(discovery, rule_files, interval_seconds, namespaces,
                      static_operator_targets, owned, directory, timeout)
    except BaseException:
        discovery.close()
        shutil.rmtree(directory, ignore_errors=True)
        raise


def _start(discovery: KubernetesDiscovery, rule_files: Sequence[Path] | None,
           interval_seconds: float, namespaces: Sequence[str] | None,
           static_operator_targets: Sequence[str], owned: bool, directory: Path,
           timeout: float) -> Prometheus:
    rules = list(rule_files) if rule_files is not None else sorted(RULES_DIR.glob("*.rules.yaml"))
    directory.mkdir(parents=True, exist_ok=True)
    cfg = directory / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(config(discovery.url, rules, interval_seconds, namespaces,
                                         static_operator_targets), sort_keys=False))
    check = subprocess.run(["promtool", "check", "config", str(cfg)], capture_output=True,
                           text=True, timeout=60)
    if check.returncode != 0:
        raise PrometheusError(f"promtool check config: {check.stdout}{check.stderr}")
    port = localstack.free_port()
    (directory / "prometheus.log").unlink(missing_ok=True)
    # From localstack's spawner thread: the parent-death signal follows the thread that
    # forked, and a test's short-lived thread may start it.
    proc = localstack.spawn(
        [binary(), f"--config.file={cfg}", f"--storage.tsdb.path={directory / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=2h",
         "--log.level=warn"], directory / "prometheus.log", owned)
    prom = Prometheus(f"http://127.0.0.1:{port}", directory, proc, discovery)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PrometheusError(f"prometheus exited ({proc.returncode}): {prom.log_text()}")
        with contextlib.suppress(OSError, PrometheusError, ValueError):
            if len(prom.rule_groups()) >= len(rules):
                return prom
        time.sleep(0.2)
    log_text = prom.log_text()
    prom.stop()
    raise PrometheusError(f"prometheus not ready after {timeout:.0f}s: {log_text}")


@contextlib.contextmanager
def running(kubeconfig: str, **kwargs: Any) -> Iterator[Prometheus]:
    prom = start(kubeconfig, **kwargs)
    try:
        yield prom
    finally:
        prom.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="stack/prometheus.py",
        description="Run a Prometheus against the running local stack (until Ctrl-C).")
    parser.add_argument("command", choices=["run", "config"])
    parser.add_argument("--interval", type=float, default=2.0, help="scrape/eval seconds")
    parser.add_argument("--operator-target", action="append", default=[],
                        help="host:port of an operator run as a local process (kcg run)")
    args = parser.parse_args(argv)
    state = localstack.read_state()
    if state is None:
        print("kcg-prometheus: the stack is not up (make up)", file=sys.stderr)
        return 1
    kubeconfig = str(state["KUBECONFIG"])
    if args.command == "config":
        print(yaml.safe_dump(config("http://127.0.0.1:PORT", sorted(RULES_DIR.glob("*.rules.yaml")),
                                    args.interval,
                                    static_operator_targets=args.operator_target),
                             sort_keys=False), end="")
        return 0
    with running(kubeconfig, interval_seconds=args.interval,
                 static_operator_targets=args.operator_target) as prom:
        print(f"kcg-prometheus: {prom.url} (data in {prom.directory}); Ctrl-C stops it",
              file=sys.stderr)
        with contextlib.suppress(KeyboardInterrupt):
            assert prom.proc is not None
            prom.proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
