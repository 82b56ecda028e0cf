"""A stand-in kubelet for one Deployment: one local process per replica.

The local stack has no kubelet, so Deployments get no running pods. For tests and the
demo that need consumers running, this follows a Deployment's spec.replicas and keeps that
many local processes of its first container: command and args, env (plain values,
ConfigMap and Secret references, the pod name), and ConfigMap/Secret volumes written to a
temporary directory whose paths replace the mount paths in env values. Scale-down sends
SIGTERM (the app leaves its group gracefully), like a kubelet would.

    python stack/podrunner.py NAMESPACE DEPLOYMENT [--map /app=examples/consumer]
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from localstack import die_with_parent


class PodRunner:
    def __init__(self, api: client.ApiClient, namespace: str, deployment: str,
                 path_map: dict[str, str], log_dir: Path | None = None) -> None:
        self.core, self.apps = client.CoreV1Api(api), client.AppsV1Api(api)
        self.namespace, self.deployment = namespace, deployment
        self.path_map = path_map
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stopping: list[subprocess.Popen[bytes]] = []  # SIGTERMed, not yet exited
        self.workdir = Path(tempfile.mkdtemp(prefix=f"pods-{deployment}-"))
        self.log_dir = log_dir or self.workdir
        self.started = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- rendering a pod spec into a local command ---------------------------------------

    def _volumes(self, pod: Any) -> dict[str, Path]:
        """Volume name -> local directory holding its files."""
        out: dict[str, Path] = {}
        for vol in pod.spec.volumes or []:
            target = self.workdir / "volumes" / vol.name
            target.mkdir(parents=True, exist_ok=True)
            if vol.config_map:
                cm = self.core.read_namespaced_config_map(vol.config_map.name, self.namespace)
                for key, value in (cm.data or {}).items():
                    (target / key).write_text(value)
            elif vol.secret:
                secret = self.core.read_namespaced_secret(vol.secret.secret_name, self.namespace)
                for key, value in (secret.data or {}).items():
                    (target / key).write_bytes(base64.b64decode(value))
            out[vol.name] = target
        return out

    def _env(self, container: Any, mounts: dict[str, Path], pod_name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
        for var in container.env or []:
            value = var.value
            src = var.value_from
            if src is not None and src.field_ref is not None:
                value = pod_name if src.field_ref.field_path == "metadata.name" else ""
            elif src is not None and src.config_map_key_ref is not None:
                ref = src.config_map_key_ref
                value = (self.core.read_namespaced_config_map(ref.name, self.namespace)
                         .data or {}).get(ref.key, "")
            elif src is not None and src.secret_key_ref is not None:
                ref = src.secret_key_ref
                data = self.core.read_namespaced_secret(ref.name, self.namespace).data or {}
                value = base64.b64decode(data.get(ref.key, "")).decode()
            value = value or ""
            for mount_path, local in mounts.items():
                value = value.replace(mount_path, str(local))
            env[var.name] = value
        return env

    def _command(self, container: Any) -> list[str]:
        argv = [*(container.command or []), *(container.args or [])]
        out = []
        for arg in argv:
            if arg in ("python", "python3"):
                arg = sys.executable
            for src, dst in self.path_map.items():
                if arg.startswith(src):
                    arg = dst + arg[len(src):]
            out.append(arg)
        return out

    def _spawn(self) -> None:
        dep = self.apps.read_namespaced_deployment(self.deployment, self.namespace)
        pod = dep.spec.template
        volumes = self._volumes(pod)
        container = pod.spec.containers[0]
        mounts = {m.mount_path: volumes[m.name] for m in container.volume_mounts or []
                  if m.name in volumes}
        self.started += 1
        name = f"{self.deployment}-local-{self.started}"
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(self._command(container), env=self._env(container, mounts, name),
                                stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=die_with_parent)
        log.close()
        self.procs.append(proc)

    # -- following the Deployment ------------------------------------------------------

    def sync(self) -> int:
        try:
            replicas = int(self.apps.read_namespaced_deployment(
                self.deployment, self.namespace).spec.replicas or 0)
        except ApiException as exc:
            if exc.status == 404:
                replicas = 0
            else:
                raise
        self.procs = [p for p in self.procs if p.poll() is None]
        self.stopping = [p for p in self.stopping if p.poll() is None]  # reap
        while len(self.procs) < replicas:
            self._spawn()
        while len(self.procs) > replicas:
            proc = self.procs.pop()  # newest first, like a ReplicaSet scale-down
            proc.send_signal(signal.SIGTERM)
            self.stopping.append(proc)
        return replicas

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception as exc:  # keep following; the apiserver may blink
                print(f"podrunner: {exc}", file=sys.stderr)
            self._stop.wait(0.5)

    def start(self) -> PodRunner:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs + self.stopping:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs, self.stopping = [], []


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("namespace")
    parser.add_argument("deployment")
    parser.add_argument("--map", action="append", default=[],
                        help="SRC=DST: replace a path prefix in the command (image -> checkout)")
    args = parser.parse_args(argv)
    path_map = dict(m.split("=", 1) for m in args.map)
    runner = PodRunner(config.new_client_from_config(), args.namespace, args.deployment,
                       path_map).start()
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        runner.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
