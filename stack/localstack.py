"""The local stack: real etcd, kube-apiserver, kube-controller-manager, Kafka and PostgreSQL.

    python stack/localstack.py setup      build or fetch every program once (cached by version)
    python stack/localstack.py up         start the stack (idempotent), write kubeconfig and env
    python stack/localstack.py down       stop every process the stack started
    python stack/localstack.py env        print `export` lines for kubectl, helm and clients
    python stack/localstack.py status     say what runs

Binaries and jars live in the cache (``$KCG_CACHE_DIR``, default ``~/.cache/kcg-operator``)
keyed by version, so a fresh checkout on a warm machine builds nothing. Runtime state
(certificates, data, logs, pids) lives in ``$KCG_STACK_DIR`` (default ``<repo>/.stack``).

The control plane is run the way controller-runtime's envtest runs it (client-certificate
admin, RBAC, service-account signing keys, secure port on loopback), plus the
controller-manager for garbage collection and Deployments, kube-scheduler, and one real
node (stack/node.py: containerd + runc, CNI bridge networking, kubelet, kube-proxy) running
images built here without a Docker daemon (stack/images.py). Every server listens on the
node's bridge address (198.18.N.1), which pods and the host reach alike.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import json
import os
import pwd
import random
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import images
import node

K8S_VERSION = "v1.34.4"
HELM_VERSION = "v3.19.0"
KAFKA_VERSION = "4.1.1"  # keep in step with stack/kafka/pom.xml
REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("KCG_CACHE_DIR", Path.home() / ".cache" / "kcg-operator"))
STATE = Path(os.environ.get("KCG_STACK_DIR", REPO / ".stack"))
K8S_BIN = CACHE / f"k8s-{K8S_VERSION}" / "bin"
HELM_BIN = CACHE / f"helm-{HELM_VERSION}" / "bin"
KAFKA_LIBS = CACHE / f"kafka-{KAFKA_VERSION}" / "libs"
# Per slot (one containerd may hold a root: its metadata database is locked), so images
# persist across `up`s of the same slot; containers do not.
CONTAINERD_ROOT = CACHE / "containerd"
K8S_PROGRAMS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet",
                "kube-proxy", "kubectl", "etcd", "pause")
PR_SET_PDEATHSIG = 1


class StackError(Exception):
    """A problem the user can fix; printed as one line, never as a stack trace."""


def with_node() -> bool:
    """Whether `up` starts the node (KCG_STACK_NODE=0: the control plane, Kafka and
    PostgreSQL only, on loopback, for machines without root or tests of the stack itself)."""
    return os.environ.get("KCG_STACK_NODE", "1") != "0"


# --------------------------------------------------------------------------- setup


def _require(tool: str, how: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise StackError(f"{tool} not found: {how}")
    return path


def _run_build(what: str, cmd: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    started = time.monotonic()
    print(f"kcg-stack: {what} ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit code {proc.returncode}"
        raise StackError(f"{what} failed: {last.strip()}")
    print(f"kcg-stack: {what}: done in {time.monotonic() - started:.0f}s", file=sys.stderr)


def _check_go_version(go: str) -> None:
    """Go 1.21+ fetches the toolchain stack/k8s/go.mod names (1.24) by itself; older Go
    cannot, and would fail with a confusing build error."""
    out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True).stdout
    try:
        major, minor = (int(x) for x in out.strip().removeprefix("go").split(".")[:2])
    except ValueError as exc:
        raise StackError(f"cannot read the Go version from `go env GOVERSION`: {out!r}") from exc
    if (major, minor) < (1, 21):
        raise StackError(f"Go {out.strip()} is too old: install Go 1.21+ (https://go.dev/dl)")


def _java_major() -> int:
    java = _require("java", "install a Java 17+ runtime (apt-get install openjdk-17-jre-headless)")
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    try:
        version = out.split('"')[1]
        return int(version.split(".")[0])
    except (IndexError, ValueError) as exc:
        raise StackError(f"cannot read the Java version from `java -version`: {out!r}") from exc


def postgres_bindir() -> Path:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), reverse=True)
    if not candidates:
        raise StackError("PostgreSQL server not found: apt-get install postgresql")
    return candidates[0].parent


def setup() -> None:
    """Build or fetch every program of the stack that the cache lacks."""
    go = _require("go", "install Go 1.21+ (https://go.dev/dl); newer toolchains are fetched "
                  "from the Go module proxy as go.mod asks")
    _check_go_version(go)
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=readonly")
    if not all((K8S_BIN / p).exists() for p in K8S_PROGRAMS):
        minor = K8S_VERSION.split(".")[1]
        ldflags = " ".join(
            [
                "-s -w",
                f"-X k8s.io/component-base/version.gitVersion={K8S_VERSION}",
                "-X k8s.io/component-base/version.gitMajor=1",
                f"-X k8s.io/component-base/version.gitMinor={minor}",
                f"-X k8s.io/client-go/pkg/version.gitVersion={K8S_VERSION}",
            ]
        )
        tmp = Path(tempfile.mkdtemp(prefix="k8s-bin-", dir=_mkdir(CACHE)))
        _run_build(
            f"building {', '.join(K8S_PROGRAMS)} {K8S_VERSION} from the Go module proxy",
            [go, "build", "-trimpath", "-ldflags", ldflags, "-o", f"{tmp}/"]
            + [f"./{p}" for p in K8S_PROGRAMS],
            REPO / "stack" / "k8s",
            env,
        )
        _replace_dir(tmp, K8S_BIN)
    if not (HELM_BIN / "helm").exists():
        tmp = Path(tempfile.mkdtemp(prefix="helm-bin-", dir=_mkdir(CACHE)))
        _run_build(
            f"building helm {HELM_VERSION} from the Go module proxy",
            [go, "install", "-trimpath", f"helm.sh/helm/v3/cmd/helm@{HELM_VERSION}"],
            REPO,
            dict(env, GOBIN=str(tmp), GOFLAGS=""),
        )
        _replace_dir(tmp, HELM_BIN)
    if _java_major() < 17:
        raise StackError("Kafka 4 needs Java 17+: apt-get install openjdk-17-jre-headless")
    if not all((KAFKA_LIBS / f"{jar}-{KAFKA_VERSION}.jar").exists()
               for jar in ("kafka_2.13", "kafka-tools")):
        mvn = _require("mvn", "install Maven (apt-get install maven)")
        tmp = Path(tempfile.mkdtemp(prefix="kafka-libs-", dir=_mkdir(CACHE)))
        _run_build(
            f"resolving Apache Kafka {KAFKA_VERSION} from Maven Central",
            [mvn, "-q", "-B", "dependency:copy-dependencies", f"-DoutputDirectory={tmp}",
             "-DincludeScope=runtime"],
            REPO / "stack" / "kafka",
        )
        _replace_dir(tmp, KAFKA_LIBS)
    postgres_bindir()
    _require("openssl", "apt-get install openssl")
    if with_node():
        with _as_stack_error():
            node.check_prerequisites()
            build_images()


@contextlib.contextmanager
def _as_stack_error() -> Iterator[None]:
    try:
        yield
    except (node.NodeError, images.ImageError) as exc:
        raise StackError(str(exc)) from exc


def build_images() -> dict[str, images.Image]:
    """The images the node runs, built here (cached by content): sandbox, operator, examples."""
    built = {"pause": images.pause(K8S_BIN / "pause"), "operator": images.operator_image()}
    if (REPO / "examples" / "Dockerfile").exists():
        built["examples"] = images.examples_image()
    return built


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _replace_dir(src: Path, dst: Path) -> None:
    """Publish a finished build atomically, so an interrupted build is never taken as done."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        shutil.rmtree(dst)
    src.rename(dst)
    dst.chmod(0o755)


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    pid: int


# Ports are drawn at random from outside the kernel's ephemeral range, at or above this.
PORT_FLOOR = 20000
_ports_handed_out: set[int] = set()
_port_random = random.SystemRandom()


def ephemeral_port_range() -> tuple[int, int]:
    """The range the kernel picks from for bind(0) and connect() (both ends included)."""
    with contextlib.suppress(OSError, ValueError):
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    return 32768, 60999  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on at `host`, for a server this process starts shortly.

    Two one-in-N start-up failures are ruled out here. The kernel's pick (bind to port 0,
    then close) may return the same port again before its server started: the picks of one
    `up` collided about once in 700 stacks. And until the server binds it, anybody's
    bind(0) or connect() may take it. So the port is drawn outside the ephemeral range,
    where the kernel never hands out ports by itself, and never one this process handed
    out before."""
    low, high = ephemeral_port_range()
    pool: list[int] = [p for p in (*range(PORT_FLOOR, low), *range(high + 1, 65536))
                       if p not in _ports_handed_out]
    for port in _port_random.sample(pool, min(len(pool), 200)):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue  # something listens there (or holds it): draw another
        _ports_handed_out.add(port)
        return port
    # No room outside the ephemeral range (a machine configured so): the kernel's pick,
    # still never a port handed out before.
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _ports_handed_out:
            _ports_handed_out.add(port)
            return port


def _preexec(owned: bool, as_user: pwd.struct_passwd | None) -> Callable[[], None]:
    def run() -> None:
        if as_user is not None:
            os.setgid(as_user.pw_gid)
            os.setuid(as_user.pw_uid)
        if owned:
            # Tie the process to the test run: if the runner dies, even by SIGKILL, so does it.
            # (After setuid: a change of credentials clears the parent-death signal.)
            die_with_parent()

    return run


def die_with_parent() -> None:
    """A preexec_fn for test helpers' children: kill them when their parent dies.

    SIGKILL, not SIGTERM: with its runner gone nobody waits for a graceful shutdown, and in
    one test run a server of the stack, its peers dying beside it, was still shutting down
    30 s after SIGTERM."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


#: The parent-death signal follows the *thread* that forked the child, not the process: a
#: server restarted from a test's short-lived thread would be killed when that thread ends.
#: Servers are therefore forked from one thread that lives as long as the process.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kcg-stack-spawner")


def spawn(cmd: Sequence[str], log_path: Path, owned: bool,
          as_user: pwd.struct_passwd | None = None,
          cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a server in its own session from the spawner thread (see _SPAWNER), its
    output appended to `log_path`; `owned`: it dies with this process."""
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    try:
        return _SPAWNER.submit(
            subprocess.Popen, list(cmd), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_preexec(owned, as_user), cwd=cwd,
        ).result()
    finally:
        log.close()


def _start(name: str, cmd: Sequence[str], owned: bool, procs: list[Proc],
           as_user: pwd.struct_passwd | None = None, cwd: Path | None = None) -> None:
    proc = spawn(cmd, STATE / "logs" / f"{name}.log", owned, as_user, cwd)
    procs.append(Proc(name, proc.pid))
    _save_pids(procs)


def _save_pids(procs: list[Proc]) -> None:
    (STATE / "pids.json").write_text(json.dumps([p.__dict__ for p in procs]))


def stack_procs() -> list[Proc]:
    """The stack's processes as last started (none if it was never started)."""
    path = STATE / "pids.json"
    return [Proc(**p) for p in json.loads(path.read_text())] if path.exists() else []


def _wait(what: str, check: Callable[[], bool], timeout: float, procs: list[Proc]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if not _alive(p.pid):
                tail = _log_tail(p.name)
                raise StackError(f"{p.name} exited while waiting for {what}; log: {tail}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.2)
    raise StackError(f"{what} not ready after {timeout:.0f}s; logs in {STATE / 'logs'}")


def _log_tail(name: str) -> str:
    path = STATE / "logs" / f"{name}.log"
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return " | ".join(lines[-3:])


_alive = node.process_alive


# --------------------------------------------------------------------------- certificates


def _openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=STATE / "pki")
    if proc.returncode != 0:
        raise StackError(f"openssl {args[0]} failed: {proc.stderr.strip().splitlines()[-1:]}")


def _make_pki(host: str, service_ip: str) -> None:
    pki = _mkdir(STATE / "pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.crt", "-days", "365", "-subj", "/CN=kcg-local-ca")
    (pki / "server.ext").write_text(
        f"subjectAltName=DNS:localhost,IP:127.0.0.1,IP:{host},IP:{service_ip},DNS:kubernetes,"
        "DNS:kubernetes.default,DNS:kubernetes.default.svc,"
        "DNS:kubernetes.default.svc.cluster.local\nextendedKeyUsage=serverAuth\n"
    )
    (pki / "kubelet.ext").write_text(
        f"subjectAltName=DNS:{node.NODE_NAME},IP:{host}\nextendedKeyUsage=serverAuth\n")
    (pki / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    (pki / "kafka.ext").write_text(
        f"subjectAltName=DNS:localhost,IP:127.0.0.1,IP:{host}\nextendedKeyUsage=serverAuth\n")
    for name, subj, ext in (
        ("apiserver", "/CN=kube-apiserver", "server.ext"),
        ("admin", "/O=system:masters/CN=admin", "client.ext"),
        # The node's own identities, as kubeadm makes them: the Node authorizer and the
        # default system:node-proxier binding give them exactly a node's rights.
        ("kubelet", f"/CN={node.NODE_NAME}", "kubelet.ext"),
        ("kubelet-client", f"/O=system:nodes/CN=system:node:{node.NODE_NAME}", "client.ext"),
        ("kube-proxy", "/CN=system:kube-proxy", "client.ext"),
        # Kafka's SASL_SSL listener: its certificate, signed by the stack's CA.
        ("kafka", "/CN=kafka", "kafka.ext"),
    ):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                 f"{name}.csr", "-subj", subj)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "365", "-extfile", ext)
    # Kafka reads its key and certificate chain from one PEM file (a PKCS#8 key, unencrypted).
    (pki / "kafka-keystore.pem").write_text(
        (pki / "kafka.key").read_text() + (pki / "kafka.crt").read_text())
    _openssl("genrsa", "-out", "sa.key", "2048")
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _write_kubeconfig(server: str, user: str = "admin", name: str = "kubeconfig") -> Path:
    pki = STATE / "pki"
    path = STATE / name
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "kcg-local", "cluster": {
                    "server": server,
                    "certificate-authority-data": _b64(pki / "ca.crt")}}],
                "users": [{"name": user, "user": {
                    "client-certificate-data": _b64(pki / f"{user}.crt"),
                    "client-key-data": _b64(pki / f"{user}.key")}}],
                "contexts": [{"name": "kcg-local",
                              "context": {"cluster": "kcg-local", "user": user}}],
                "current-context": "kcg-local",
            },
            indent=2,
        )
    )
    path.chmod(0o600)
    return path


# --------------------------------------------------------------------------- up / down


def _https_get(server: str, path: str) -> bytes:
    pki = STATE / "pki"
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    with urllib.request.urlopen(f"{server}{path}", context=ctx, timeout=2) as r:
        return bytes(r.read())


def _https_ok(server: str, path: str) -> bool:
    _https_get(server, path)
    return True


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as r:
        return bool(r.status == 200)


def _kafka_ready(bootstrap: str) -> bool:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    md = admin.list_topics(timeout=2)
    if not md.brokers or md.controller_id == -1:
        return False
    # Ready means groups work too: a group coordinator answers (this creates and loads
    # __consumer_offsets), so no test meets a coordinator that is still loading.
    admin.describe_consumer_groups(["kcg-stack-probe"])["kcg-stack-probe"].result(5)
    return True


def _postgres_ready(dsn: str) -> bool:
    import psycopg

    with psycopg.connect(dsn, connect_timeout=2):
        return True


def _node_ready(server: str) -> bool:
    obj = json.loads(_https_get(server, f"/api/v1/nodes/{node.NODE_NAME}"))
    conditions = obj.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def read_state() -> dict[str, object] | None:
    path = STATE / "state.json"
    if not path.exists():
        return None
    state: dict[str, object] = json.loads(path.read_text())
    procs = stack_procs()
    if procs and all(_alive(p.pid) for p in procs):
        return state
    return None


def up(owned: bool = False) -> dict[str, object]:
    """Start the stack unless it is already up; return its settings."""
    existing = read_state()
    if existing is not None:
        return existing
    down(quiet=True)
    setup()
    _mkdir(STATE / "logs")
    procs: list[Proc] = []
    try:
        with _as_stack_error():
            return _up(owned, procs)
    except BaseException:
        down(quiet=True)
        raise


class _Phases:
    """Prints how long each start-up phase took (CI keeps an eye on the total)."""

    def __init__(self) -> None:
        self.t0 = self.last = time.monotonic()
        self.done: list[str] = []

    def mark(self, what: str) -> None:
        now = time.monotonic()
        self.done.append(f"{what} {now - self.last:.1f}s")
        self.last = now

    def summary(self) -> str:
        return f"{time.monotonic() - self.t0:.1f}s ({', '.join(self.done)})"


SASL_USERNAME = "kcg"

#: Writes only, at Metadata level (no bodies: Secrets never reach the log).
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: Metadata
    verbs: [create, update, patch, delete, deletecollection]
  - level: None
"""


def _up(owned: bool, procs: list[Proc]) -> dict[str, object]:
    phases = _Phases()
    slot = node.claim_slot(STATE) if with_node() else None
    if slot is not None:
        (STATE / "slot").write_text(str(slot.index))
    host = slot.node_ip if slot else "127.0.0.1"
    service_cidr = slot.service_cidr if slot else "10.0.0.0/24"
    service_ip = slot.kubernetes_service_ip if slot else "10.0.0.1"
    _make_pki(host, service_ip)
    pki = STATE / "pki"
    etcd_port, etcd_peer, kafka_ctl = free_port(), free_port(), free_port()
    # Servers on the node's address: probed there.
    api_port, kafka_port, pg_port = free_port(host), free_port(host), free_port(host)
    sasl_port = free_port(host)
    # The SASL_SSL listener's one user (SCRAM-SHA-512), made when the storage is formatted.
    sasl_password = secrets.token_urlsafe(18)
    phases.mark("pki")

    _start("etcd", [
        str(K8S_BIN / "etcd"), f"--data-dir={STATE / 'etcd'}",
        f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
        f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
        f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
        f"--initial-cluster=default=http://127.0.0.1:{etcd_peer}",
        "--unsafe-no-fsync=true", "--quota-backend-bytes=4294967296", "--log-level=warn",
    ], owned, procs)
    _start_kafka(host, kafka_port, sasl_port, sasl_password, kafka_ctl, owned, procs)
    _start_postgres(host, pg_port, owned, procs)
    _wait("etcd", lambda: _http_ok(f"http://127.0.0.1:{etcd_port}/health"), 30, procs)

    server = f"https://{host}:{api_port}"
    # Every write, with who made it (a pod's token names the pod): the evidence for
    # "a standby replica writes nothing" (bench-failover) and for write counts.
    audit_policy = STATE / "audit-policy.yaml"
    audit_policy.write_text(AUDIT_POLICY)
    _start("kube-apiserver", [
        str(K8S_BIN / "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        f"--cert-dir={pki}", f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}", f"--client-ca-file={pki / 'ca.crt'}",
        f"--secure-port={api_port}", f"--bind-address={host}", f"--advertise-address={host}",
        f"--service-cluster-ip-range={service_cidr}", "--allow-privileged=true",
        "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
        *([] if slot else ["--disable-admission-plugins=ServiceAccount"]),
        "--service-account-issuer=https://kubernetes.default.svc",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--kubelet-client-certificate={pki / 'admin.crt'}",
        f"--kubelet-client-key={pki / 'admin.key'}",
        f"--kubelet-certificate-authority={pki / 'ca.crt'}",
        "--kubelet-preferred-address-types=InternalIP",
        "--enable-priority-and-fairness=false", "--v=0",
        f"--audit-policy-file={audit_policy}", f"--audit-log-path={STATE / 'audit.log'}",
        "--audit-log-format=json", "--audit-log-maxsize=200", "--audit-log-maxbackup=1",
        # On SIGTERM, close open watches (clients re-establish them) instead of leaving them
        # to the HTTP server's 60 s shutdown timeout, as production control planes set it.
        "--shutdown-watch-termination-grace-period=5s",
    ], owned, procs)
    _wait("kube-apiserver", lambda: _https_ok(server, "/readyz"), 90, procs)
    kubeconfig = _write_kubeconfig(server)
    _wait("the default namespace",
          lambda: _https_ok(server, "/api/v1/namespaces/default"), 60, procs)
    phases.mark("control plane")

    _start("kube-controller-manager", [
        str(K8S_BIN / "kube-controller-manager"), f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={pki / 'ca.crt'}", "--leader-elect=false", "--secure-port=0",
        "--controllers=*", "--use-service-account-credentials=false",
        "--concurrent-gc-syncs=5", "--kube-api-qps=100", "--kube-api-burst=200", "--v=0",
    ], owned, procs)
    if slot is not None:
        _start("kube-scheduler", [
            str(K8S_BIN / "kube-scheduler"), f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
            "--v=0",
        ], owned, procs)
        _start_node(slot, server, owned, procs)
        phases.mark("node processes")

    bootstrap = f"{host}:{kafka_port}"
    dsn = f"postgresql://postgres@{host}:{pg_port}/postgres"
    _wait("kafka", lambda: _kafka_ready(bootstrap), 120, procs)
    _wait("postgresql", lambda: _postgres_ready(dsn), 60, procs)
    phases.mark("kafka+postgres")
    if slot is not None:
        _wait(f"node {node.NODE_NAME} Ready", lambda: _node_ready(server), 90, procs)
        phases.mark("node ready")
    state: dict[str, object] = {
        "KUBECONFIG": str(kubeconfig),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        # The same broker behind SASL_SSL (SCRAM-SHA-512, a certificate of the stack's CA).
        "KAFKA_SASL_BOOTSTRAP_SERVERS": f"{host}:{sasl_port}",
        "KAFKA_SASL_USERNAME": SASL_USERNAME,
        "KAFKA_SASL_PASSWORD": sasl_password,
        "KAFKA_CA_FILE": str(pki / "ca.crt"),
        "OUTBOX_DSN": dsn,
        "KCG_STACK_DIR": str(STATE),
        "KCG_K8S_BIN": str(K8S_BIN),
        "KCG_HELM_BIN": str(HELM_BIN),
        "KCG_NODE_IP": host,
        "KCG_AUDIT_LOG": str(STATE / "audit.log"),
        "KCG_NODE": slot is not None,
        "KCG_NODE_SLOT": slot.index if slot else -1,
        "KCG_IMAGES": json.loads((STATE / "images.json").read_text()) if slot else {},
        "owned": owned,
    }
    (STATE / "state.json").write_text(json.dumps(state, indent=2))
    (STATE / "env.sh").write_text(env_lines(state))
    print(f"kcg-stack: up in {phases.summary()} ({STATE})", file=sys.stderr)
    return state


def _start_node(slot: node.Slot, server: str, owned: bool, procs: list[Proc]) -> None:
    """containerd (with the stack's images), then kubelet and kube-proxy."""
    pki = STATE / "pki"
    kubeconfigs = {
        "kubelet": _write_kubeconfig(server, "kubelet-client", "kubelet.kubeconfig"),
        "kube-proxy": _write_kubeconfig(server, "kube-proxy", "kube-proxy.kubeconfig"),
    }
    ports = {"kubelet": free_port(slot.node_ip),  # the kubelet serves on the node's address
             **{name: free_port() for name in
                ("kubelet_healthz", "proxy_healthz", "proxy_metrics")}}
    built = build_images()
    configs = node.write_configs(slot, STATE, pki, kubeconfigs, built["pause"].ref,
                                 CONTAINERD_ROOT / str(slot.index), ports)
    node.prepare_cgroups(slot)
    node.share_mount(slot.kubelet_dir)
    _start("containerd", node.containerd_cmd(configs["containerd"]), owned, procs)
    _wait("containerd", lambda: subprocess.run(
        node.ctr(slot, "version"), capture_output=True).returncode == 0, 30, procs)
    _load_images(slot, built)
    _start("kubelet", [
        str(K8S_BIN / "kubelet"), f"--config={configs['kubelet']}",
        f"--kubeconfig={kubeconfigs['kubelet']}", f"--root-dir={slot.kubelet_dir}",
        f"--hostname-override={node.NODE_NAME}", f"--node-ip={slot.node_ip}", "--v=1",
    ], owned, procs)
    if slot.index == 0:  # kube-proxy's nftables table is machine-wide: one owner (node.py)
        _start("kube-proxy", [str(K8S_BIN / "kube-proxy"), f"--config={configs['kube-proxy']}",
                              "--v=1"], owned, procs)


def _load_images(slot: node.Slot, built: dict[str, images.Image], drop_stale: bool = True) -> None:
    """Put the built images on the node (its containerd) and drop our stale ones (not while
    the stack runs: pods of a test session may still use them)."""
    present = node.node_images(slot)
    wanted = {image.ref for image in built.values()} | set(images.ALIASES.values())
    for stale in present - wanted if drop_stale else ():
        # Earlier builds of ours; nothing else lives in this root.
        if stale.startswith("localhost/kcg-") and "@" not in stale:
            node.remove_image(slot, stale)
    for kind, image in built.items():
        if image.ref not in present:
            node.import_image(slot, image.archive)
        if kind in images.ALIASES:
            node.tag_image(slot, image.ref, images.ALIASES[kind])
    (STATE / "images.json").write_text(json.dumps({k: v.ref for k, v in built.items()}))


def reload_images() -> dict[str, str]:
    """Rebuild the images from the working tree and load them on the running node, so the
    next pods (and tests) run the code as it is now. Returns the new references."""
    state = read_state()
    if state is None or not state.get("KCG_NODE"):
        raise StackError("no running stack with a node: make up")
    slot = node.Slot(int(str(state["KCG_NODE_SLOT"])))
    with _as_stack_error():
        built = build_images()
        _load_images(slot, built, drop_stale=False)
    refs = {k: v.ref for k, v in built.items()}
    state["KCG_IMAGES"] = refs
    (STATE / "state.json").write_text(json.dumps(state, indent=2))
    return refs


def _start_kafka(host: str, port: int, sasl_port: int, sasl_password: str, ctl_port: int,
                 owned: bool, procs: list[Proc]) -> None:
    kdir = _mkdir(STATE / "kafka")
    props = kdir / "server.properties"
    props.write_text(
        "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{ctl_port}",
            f"listeners=PLAINTEXT://{host}:{port},SASL_SSL://{host}:{sasl_port},"
            f"CONTROLLER://127.0.0.1:{ctl_port}",
            f"advertised.listeners=PLAINTEXT://{host}:{port},SASL_SSL://{host}:{sasl_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,"
            "SASL_SSL:SASL_SSL",
            # Authentication on a real listener: SCRAM-SHA-512 over TLS with the stack's CA.
            "sasl.enabled.mechanisms=SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "listener.name.sasl_ssl.ssl.keystore.type=PEM",
            f"listener.name.sasl_ssl.ssl.keystore.location={STATE / 'pki' / 'kafka-keystore.pem'}",
            f"log.dirs={kdir / 'data'}",
            "num.partitions=1",
            "auto.create.topics.enable=false",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=8",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=4",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "group.min.session.timeout.ms=1000",
            "group.consumer.min.session.timeout.ms=1000",
            "group.consumer.min.heartbeat.interval.ms=500",
            "message.max.bytes=1048588",
            "",
        ])
    )
    (kdir / "log4j2.properties").write_text(
        "\n".join([
            "status = warn",
            "appender.out.type = Console",
            "appender.out.name = STDOUT",
            "appender.out.layout.type = PatternLayout",
            "appender.out.layout.pattern = [%d] %p %m (%c)%n",
            "rootLogger.level = WARN",
            "rootLogger.appenderRef.out.ref = STDOUT",
            "logger.server.name = kafka.server.KafkaRaftServer",
            "logger.server.level = INFO",
            "",
        ])
    )
    java = ["java", "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={kdir / 'log4j2.properties'}",
            "-cp", f"{KAFKA_LIBS}/*"]
    fmt = subprocess.run(
        [*java, "kafka.tools.StorageTool", "format", f"--cluster-id={kafka_cluster_id()}",
         "-c", str(props),
         f"--add-scram=SCRAM-SHA-512=[name={SASL_USERNAME},password={sasl_password}]"],
        capture_output=True, text=True,
    )
    if fmt.returncode != 0:
        raise StackError(f"formatting Kafka storage failed: {fmt.stdout + fmt.stderr}")
    _start("kafka", [*java, "kafka.Kafka", str(props)], owned, procs)


def kafka_cluster_id(raw: bytes | None = None) -> str:
    """A KRaft cluster id as Kafka makes them: URL-safe base64 of 16 random bytes.

    Kafka's own Uuid.randomUuid() redraws ids whose text starts with '-' (one in 64),
    because tools take them for options; the caller also passes `--cluster-id=ID`."""
    while True:
        cluster_id = base64.urlsafe_b64encode(raw or uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id
        raw = None


def _start_postgres(host: str, port: int, owned: bool, procs: list[Proc]) -> None:
    bindir = postgres_bindir()
    # initdb and postgres refuse to run as root: run them as an unprivileged user on a
    # data directory that user owns, outside paths it may not be allowed to traverse.
    as_user = pwd.getpwnam(os.environ.get("KCG_PG_USER", "postgres")) if os.geteuid() == 0 else None
    pgroot = Path(tempfile.mkdtemp(prefix=PGROOT_PREFIX))
    (STATE / "pgroot").write_text(str(pgroot))
    data, sock = pgroot / "data", pgroot / "sock"
    sock.mkdir()
    if as_user is not None:
        for p in (pgroot, sock):
            os.chown(p, as_user.pw_uid, as_user.pw_gid)
    init = subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
         "--no-sync", "--no-instructions"],
        capture_output=True, text=True, preexec_fn=_preexec(False, as_user), cwd=pgroot,
    )
    if init.returncode != 0:
        raise StackError(f"initdb failed: {init.stderr.strip()}")
    # initdb trusts loopback only; pods connect from the node's pod range (198.18.0.0/15).
    with (data / "pg_hba.conf").open("a") as hba:
        hba.write("host all all 198.18.0.0/15 trust\n")
    _start("postgres", [
        str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sock),
        "-c", f"listen_addresses={host}", "-c", "fsync=off", "-c", "full_page_writes=off",
        "-c", "max_connections=200", "-c", "shared_buffers=256MB",
    ], owned, procs, as_user=as_user, cwd=pgroot)


STOP_GRACE_SECONDS = 3.0
PGROOT_PREFIX = "kcg-pg-"


def down(quiet: bool = False) -> None:
    """Stop every process the stack started, then remove its runtime state."""
    procs = stack_procs()
    for p in reversed(procs):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGTERM)
    # The stack's data is thrown away below, so a graceful stop buys nothing; kube-apiserver
    # drains its watches for well over 15 s on SIGTERM (etcd, Kafka, PostgreSQL: < 8 s).
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while any(_alive(p.pid) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    for p in procs:
        if _alive(p.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
    slot_file = STATE / "slot"
    if slot_file.exists():
        removed = node.teardown(node.Slot(int(slot_file.read_text())))
        if not quiet and removed:
            print(f"kcg-stack: node: removed {len(removed)} objects "
                  f"({', '.join(sorted({r.split()[0] for r in removed}))})", file=sys.stderr)
    pgroot_file = STATE / "pgroot"
    if pgroot_file.exists():
        shutil.rmtree(pgroot_file.read_text().strip(), ignore_errors=True)
    if STATE.exists():
        shutil.rmtree(STATE, ignore_errors=True)
    if not quiet:
        print(f"kcg-stack: stopped {len(procs)} processes", file=sys.stderr)


def restart(name: str, sig: int | None = None, pause: float = 0.0,
            timeout: float = 120.0) -> None:
    """Stop one running component (e.g. "kafka", "postgres") and start it again, same port.

    For recovery tests (the outbox relay across a broker or database restart): the command
    line, working directory and user are taken from the running process, so the component
    comes back exactly as `up` started it, on its data. Returns once Kafka or PostgreSQL
    answers again (other components: once started).

    `sig` defaults to a clean stop: SIGINT (fast shutdown) for PostgreSQL, because SIGTERM
    makes it wait for every client to disconnect, and SIGTERM for the rest. `pause` keeps
    the component down that many seconds before starting it.

    While it is down, a placeholder process holds its slot in pids.json, so another test
    session calling `read_state()` meanwhile does not take the stack for dead and start
    over (which would tear the whole stack down). The new process is tied to this process
    (PR_SET_PDEATHSIG) only if this process owns the stack, i.e. started the old one.
    """
    state = read_state()
    if state is None:
        raise StackError("the local stack is not running: make up")
    procs = stack_procs()
    index = next((i for i, p in enumerate(procs) if p.name == name), None)
    if index is None:
        raise StackError(f"no stack component {name!r}; one of {[p.name for p in procs]}")
    old = procs[index]
    proc_dir = Path(f"/proc/{old.pid}")
    cmd = [arg.decode() for arg in (proc_dir / "cmdline").read_bytes().split(b"\0")[:-1]]
    cwd = os.readlink(proc_dir / "cwd")
    uid = proc_dir.stat().st_uid
    ppid = int((proc_dir / "stat").read_text().split(") ")[-1].split()[1])
    owned = bool(state.get("owned")) and ppid == os.getpid()
    as_user = pwd.getpwuid(uid) if uid != os.geteuid() else None

    holder = subprocess.Popen(
        ["sleep", str(int(pause + 2 * timeout + 60))], stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        preexec_fn=_preexec(True, None),
    )
    procs[index] = Proc(name, holder.pid)
    _save_pids(procs)
    try:
        os.kill(old.pid, sig if sig is not None else
                (signal.SIGINT if name == "postgres" else signal.SIGTERM))
        deadline = time.monotonic() + timeout
        while _alive(old.pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(old.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(old.pid, os.WNOHANG)  # reap it when it is our child
            time.sleep(0.05)
        time.sleep(pause)
        new = spawn(cmd, STATE / "logs" / f"{name}.log", owned, as_user, Path(cwd))
        procs[index] = Proc(name, new.pid)
        _save_pids(procs)
    finally:
        holder.kill()
        holder.wait()
    if name == "kafka":
        bootstrap = str(state["KAFKA_BOOTSTRAP_SERVERS"])
        _wait("kafka", lambda: _kafka_ready(bootstrap), timeout, [procs[index]])
    elif name == "postgres":
        dsn = str(state["OUTBOX_DSN"])
        _wait("postgresql", lambda: _postgres_ready(dsn), timeout, [procs[index]])


def env_lines(state: dict[str, object]) -> str:
    keys = ("KUBECONFIG", "KAFKA_BOOTSTRAP_SERVERS", "OUTBOX_DSN", "KCG_STACK_DIR")
    lines = [f"export {k}={state[k]}" for k in keys]
    lines.append(f'export PATH="{state["KCG_K8S_BIN"]}:{state["KCG_HELM_BIN"]}:$PATH"')
    return "\n".join(lines) + "\n"


def orphaned_pgroots() -> list[Path]:
    """PostgreSQL directories (data and socket, outside the stack's state directory) whose
    server is not running: a stack that died without `down` left them."""
    orphans = []
    for root in sorted(Path(tempfile.gettempdir()).glob(f"{PGROOT_PREFIX}*")):
        pid_file = root / "data" / "postmaster.pid"
        try:
            running = _alive(int(pid_file.read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            running = False
        if not running:
            orphans.append(root)
    return orphans


def _report_leftovers() -> int:
    """Nonzero when a stopped stack left anything behind (CI runs this after the suite:
    every `down` must have removed all it made): a node's objects, a PostgreSQL directory."""
    found = [(f"node slot {index}", what) for index in range(node.SLOTS)
             if not node.slot_in_use(node.Slot(index))
             for what in node.leftovers(node.Slot(index))]
    found += [("postgres", f"dir {root}") for root in orphaned_pgroots()]
    for owner, what in found:
        print(f"kcg-stack: leftover of {owner}: {what}", file=sys.stderr)
    if not found:
        print("kcg-stack: no node or postgres leftovers", file=sys.stderr)
    return 1 if found else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localstack", description=__doc__.split("\n\n")[0])
    parser.add_argument("command",
                        choices=["setup", "up", "down", "env", "status", "leftovers",
                                 "images"])
    args = parser.parse_args(argv)
    try:
        if args.command == "setup":
            setup()
        elif args.command == "up":
            up()
            print((STATE / "env.sh").read_text(), end="")
        elif args.command == "down":
            down()
        elif args.command == "images":
            print(json.dumps(reload_images(), indent=2))
        elif args.command == "leftovers":
            return _report_leftovers()
        elif args.command in ("env", "status"):
            state = read_state()
            if state is None:
                raise StackError("the local stack is not running: make up")
            print(env_lines(state) if args.command == "env" else json.dumps(state, indent=2))
    except StackError as exc:
        print(f"kcg-stack: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
