"""The local stack's node: containerd + runc, CNI bridge networking, kubelet and kube-proxy.

Traffic stays on the machine by construction (../shared/notes/node.md):

- pods live on a Linux bridge of their own, in 198.18.N.0/24; Services in 198.19.N.0/24
  (N is the stack's slot, so two stacks can run side by side); both inside 198.18.0.0/15,
  the range reserved for benchmark networks, so no address is anybody else's;
- the host's end of the bridge (198.18.N.1) is where the apiserver, Kafka and PostgreSQL
  listen; pods get routes to the bridge and the Service range only, no default route, no
  masquerade, and net.ipv4.ip_forward is never touched;
- kube-proxy (nftables) DNATs Service addresses locally.

Everything the node makes is named after its slot (bridge, cgroup root, run directory,
network namespaces carry its addresses) so `teardown` can remove exactly that: container
processes and shims, mounts, network namespaces, veths, the bridge, nft tables, cgroups.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

RUN_ROOT = Path("/run/kcg-node")
KUBELET_ROOT = Path("/var/lib/kcg-node")
CGROUP_FS = Path("/sys/fs/cgroup")
CNI_BIN = Path("/usr/lib/cni")
SLOTS = 64
NODE_NAME = "kcg-node"
# kube-proxy's nftables mode always uses the table `kube-proxy`: one kube-proxy per
# machine can own it, so only slot 0 runs one (see localstack).
PROXY_TABLE = "kube-proxy"
# Debian's packages; `setup` installs nothing by itself, it says what is missing.
PACKAGES = {"containerd": "containerd", "ctr": "containerd", "runc": "runc",
            "nft": "nftables", "buildah": "buildah", "debootstrap": "debootstrap",
            "conntrack": "conntrack", "iptables": "iptables"}


class NodeError(Exception):
    """A problem the user can fix; printed as one line."""


@dataclass(frozen=True)
class Slot:
    """One node's names and addresses, derived from its slot number."""

    index: int

    @property
    def bridge(self) -> str:
        return f"kcg{self.index}"

    @property
    def node_ip(self) -> str:
        return f"198.18.{self.index}.1"

    @property
    def pod_cidr(self) -> str:
        return f"198.18.{self.index}.0/24"

    @property
    def service_cidr(self) -> str:
        return f"198.19.{self.index}.0/24"

    @property
    def kubernetes_service_ip(self) -> str:
        return f"198.19.{self.index}.1"

    @property
    def run_dir(self) -> Path:
        """Sockets and runtime state (short paths: unix sockets allow 108 bytes)."""
        return RUN_ROOT / str(self.index)

    @property
    def kubelet_dir(self) -> Path:
        """The kubelet's root dir (pod volumes): on disk, a shared mount of its own."""
        return KUBELET_ROOT / str(self.index)

    @property
    def cgroup_root(self) -> str:
        return f"kcg-node-{self.index}"

    @property
    def containerd_socket(self) -> Path:
        return self.run_dir / "containerd.sock"

    def contains(self, address: str) -> bool:
        with contextlib.suppress(ValueError):
            return ipaddress.ip_address(address) in ipaddress.ip_network(self.pod_cidr)
        return False


def missing_programs() -> list[str]:
    """Debian packages the node needs that this machine lacks."""
    need = {pkg for tool, pkg in PACKAGES.items() if shutil.which(tool) is None}
    if not (CNI_BIN / "bridge").exists():
        need.add("containernetworking-plugins")
    return sorted(need)


def check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise NodeError("the local node needs root (network namespaces, cgroups, mounts)")
    missing = missing_programs()
    if missing:
        raise NodeError(f"missing programs for the local node: apt-get install {' '.join(missing)}")
    if not (CGROUP_FS / "memory").is_dir() and not (CGROUP_FS / "cgroup.controllers").exists():
        raise NodeError(f"no cgroup hierarchy under {CGROUP_FS}")


def _sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise NodeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return proc


# --------------------------------------------------------------------------- slots


def claim_slot(owner: Path) -> Slot:
    """The first free slot: its bridge is created here, so two stacks never share one.

    A slot whose owner (a stack dir) no longer runs is torn down and reused."""
    RUN_ROOT.mkdir(parents=True, exist_ok=True)
    for index in range(SLOTS):
        slot = Slot(index)
        if slot_in_use(slot):
            continue
        if (slot.run_dir / "owner").exists():
            teardown(slot)
        if _sh("ip", "link", "show", slot.bridge, check=False).returncode == 0:
            if slot.run_dir.exists():
                continue
            teardown(slot)  # a bridge left by a crash before its owner file was written
        if _sh("ip", "link", "add", slot.bridge, "type", "bridge", check=False).returncode:
            continue  # taken meanwhile by a stack starting beside us
        slot.run_dir.mkdir(parents=True, exist_ok=True)
        # The claiming process's pid too: its stack has no processes yet to prove it alive.
        (slot.run_dir / "owner").write_text(f"{owner}\n{os.getpid()}\n")
        _sh("ip", "addr", "add", f"{slot.node_ip}/24", "dev", slot.bridge)
        _sh("ip", "link", "set", slot.bridge, "up")
        return slot
    raise NodeError(f"all {SLOTS} node slots are in use: `make down` the stacks you do not need")


def slot_in_use(slot: Slot) -> bool:
    """Whether a running stack owns `slot`."""
    with contextlib.suppress(OSError, ValueError):
        stack_dir, claimer = (slot.run_dir / "owner").read_text().split()
        return process_alive(int(claimer)) or _stack_alive(Path(stack_dir))
    return False


def process_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not: it has exited, only its parent has not
    reaped it yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


def _stack_alive(stack_dir: Path) -> bool:
    with contextlib.suppress(ValueError, OSError):
        return any(process_alive(int(p["pid"]))
                   for p in json.loads((stack_dir / "pids.json").read_text()))
    return False


# --------------------------------------------------------------------------- configs


def write_configs(slot: Slot, state: Path, pki: Path, kubeconfig_for: dict[str, Path],
                  pause_image: str, containerd_root: Path,
                  ports: dict[str, int]) -> dict[str, Path]:
    """containerd, CNI, kubelet and kube-proxy configuration files; returns their paths."""
    node = state / "node"
    cni_conf = node / "cni"
    cni_conf.mkdir(parents=True, exist_ok=True)
    (node / "kubelet").mkdir(parents=True, exist_ok=True)
    (cni_conf / "10-kcg.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": f"kcg{slot.index}",
        "plugins": [{
            "type": "bridge", "bridge": slot.bridge, "isGateway": True, "ipMasq": False,
            "hairpinMode": True,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": slot.pod_cidr, "gateway": slot.node_ip}]],
                # Routes to the bridge (implicit) and to Services only: nothing else exists.
                "routes": [{"dst": slot.service_cidr}],
                "dataDir": str(node / "ipam"),
            },
        }],
    }, indent=2))
    registry = node / "registry" / "_default"
    registry.mkdir(parents=True, exist_ok=True)
    (registry / "hosts.toml").write_text(
        'server = "http://127.0.0.1:9"\n\n[host."http://127.0.0.1:9"]\n'
        '  capabilities = ["pull", "resolve"]\n')
    containerd = node / "containerd.toml"
    containerd.write_text(f"""version = 2
root = "{containerd_root}"
state = "{slot.run_dir / 'containerd'}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{slot.containerd_socket}"
[ttrpc]
  address = "{slot.run_dir / 'containerd.ttrpc.sock'}"
[debug]
  level = "warn"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_image}"
  enable_selinux = false
  disable_apparmor = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".registry]
    # Nothing may be pulled from off the machine: every registry resolves to a closed
    # loopback port, so a missing image fails at once (ErrImagePull), never by a timeout.
    config_path = "{node / 'registry'}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
""")
    kubelet = node / "kubelet.yaml"
    kubelet.write_text(json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": slot.node_ip,
        "port": ports["kubelet"],
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": ports["kubelet_healthz"],
        "tlsCertFile": str(pki / "kubelet.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet.key"),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(pki / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{slot.cgroup_root}",
        "containerRuntimeEndpoint": f"unix://{slot.containerd_socket}",
        "failSwapOn": False,
        "failCgroupV1": False,
        "resolvConf": "/etc/resolv.conf",
        # Images cannot be pulled again, so the kubelet must never collect them, and the
        # build machines' disks are shared: evict only when truly out of room.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        "localStorageCapacityIsolation": False,
        "makeIPTablesUtilChains": False,
        "serializeImagePulls": False,
        "protectKernelDefaults": False,
        "nodeStatusUpdateFrequency": "4s",
        "nodeStatusReportFrequency": "10s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "shutdownGracePeriod": "0s",
        "maxPods": 110,
        "podPidsLimit": 4096,
        "staticPodPath": "",
        "clusterDomain": "cluster.local",
        "featureGates": {},
    }, indent=2))
    proxy = node / "kube-proxy.yaml"
    proxy.write_text(json.dumps({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "nftables",
        "hostnameOverride": NODE_NAME,
        "bindAddress": slot.node_ip,
        "clientConnection": {"kubeconfig": str(kubeconfig_for["kube-proxy"])},
        "healthzBindAddress": f"127.0.0.1:{ports['proxy_healthz']}",
        "metricsBindAddress": f"127.0.0.1:{ports['proxy_metrics']}",
        "nodePortAddresses": [f"{slot.node_ip}/32"],
        # No cluster CIDR: kube-proxy then masquerades nothing but hairpin traffic.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                      "tcpCloseWaitTimeout": "0s"},
    }, indent=2))
    return {"containerd": containerd, "kubelet": kubelet, "kube-proxy": proxy}


def prepare_cgroups(slot: Slot) -> None:
    """The kubelet's cgroup root must exist in every hierarchy before it starts."""
    for hierarchy in _hierarchies():
        (hierarchy / slot.cgroup_root).mkdir(exist_ok=True)


def _hierarchies() -> list[Path]:
    if (CGROUP_FS / "cgroup.controllers").exists():
        return [CGROUP_FS]
    return [p for p in CGROUP_FS.iterdir()
            if p.is_dir() and not p.is_symlink() and (p / "cgroup.procs").exists()]


def share_mount(path: Path) -> None:
    """The kubelet propagates volume mounts into containers: its root dir must be shared."""
    path.mkdir(parents=True, exist_ok=True)
    _sh("mount", "--bind", str(path), str(path))
    _sh("mount", "--make-rshared", str(path))


def containerd_cmd(config: Path) -> list[str]:
    return [shutil.which("containerd") or "containerd", "--config", str(config)]


def ctr(slot: Slot, *args: str) -> list[str]:
    return [shutil.which("ctr") or "ctr", "--address", str(slot.containerd_socket),
            "--namespace", "k8s.io", *args]


def import_image(slot: Slot, archive: Path) -> None:
    proc = subprocess.run(ctr(slot, "images", "import", str(archive)),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise NodeError(f"importing {archive.name} into the node failed: {proc.stderr.strip()}")


def tag_image(slot: Slot, ref: str, alias: str) -> None:
    proc = subprocess.run(ctr(slot, "images", "tag", "--force", ref, alias),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise NodeError(f"tagging {ref} as {alias} in the node failed: {proc.stderr.strip()}")


def remove_image(slot: Slot, ref: str) -> None:
    subprocess.run(ctr(slot, "images", "rm", ref), capture_output=True)


def node_images(slot: Slot) -> set[str]:
    out = subprocess.run(ctr(slot, "images", "ls", "-q"), capture_output=True, text=True)
    return {line.strip() for line in out.stdout.splitlines() if line.strip()}


# --------------------------------------------------------------------------- teardown


def teardown(slot: Slot) -> list[str]:
    """Remove everything the node of `slot` made; returns what was removed (for logs).

    Order matters: container processes first (they hold mounts and namespaces), then
    mounts, network namespaces (their veths go with them), the bridge, rules, cgroups."""
    removed: list[str] = []
    for pid in sorted(_node_pids(slot)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            removed.append(f"process {pid}")
    _wait_gone(slot)
    for mount in sorted(_node_mounts(slot), key=len, reverse=True):
        if _sh("umount", "-l", mount, check=False).returncode == 0:
            removed.append(f"mount {mount}")
    for netns in _node_netns(slot):
        _sh("umount", "-l", f"/run/netns/{netns}", check=False)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"/run/netns/{netns}")
        removed.append(f"netns {netns}")
    for veth in _bridge_ports(slot):
        _sh("ip", "link", "delete", veth, check=False)
        removed.append(f"veth {veth}")
    if _sh("ip", "link", "show", slot.bridge, check=False).returncode == 0:
        _sh("ip", "link", "delete", slot.bridge, check=False)
        removed.append(f"bridge {slot.bridge}")
    for family in _proxy_families(slot):
        _sh("nft", "delete", "table", family, PROXY_TABLE, check=False)
        removed.append(f"nft table {family} {PROXY_TABLE}")
    for hierarchy in _hierarchies():
        root = hierarchy / slot.cgroup_root
        if root.exists():
            for sub in sorted((p for p in root.rglob("*") if p.is_dir()),
                              key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    sub.rmdir()
            with contextlib.suppress(OSError):
                root.rmdir()
                removed.append(f"cgroup {root}")
    shutil.rmtree(slot.run_dir, ignore_errors=True)
    shutil.rmtree(slot.kubelet_dir, ignore_errors=True)
    return removed



def _proxy_families(slot: Slot) -> list[str]:
    """nft families holding kube-proxy's table, if this slot's node ran kube-proxy."""
    if slot.index != 0:
        return []
    return [family for family in ("ip", "ip6")
            if _sh("nft", "list", "table", family, PROXY_TABLE, check=False).returncode == 0]


def leftovers(slot: Slot) -> list[str]:
    """What of `slot`'s node still exists (empty after a clean teardown)."""
    found = [f"process {p}" for p in _node_pids(slot)]
    found += [f"mount {m}" for m in _node_mounts(slot)]
    found += [f"netns {n}" for n in _node_netns(slot)]
    found += [f"veth {v}" for v in _bridge_ports(slot)]
    if _sh("ip", "link", "show", slot.bridge, check=False).returncode == 0:
        found.append(f"bridge {slot.bridge}")
    found += [f"nft table {family} {PROXY_TABLE}" for family in _proxy_families(slot)]
    found += [f"cgroup {h / slot.cgroup_root}" for h in _hierarchies()
              if (h / slot.cgroup_root).exists()]
    found += [f"dir {d}" for d in (slot.run_dir, slot.kubelet_dir) if d.exists()]
    return found


def _node_pids(slot: Slot) -> set[int]:
    """Container processes (in the node's cgroups) and shims of the node's containerd."""
    pids: set[int] = set()
    for hierarchy in _hierarchies():
        root = hierarchy / slot.cgroup_root
        if root.exists():
            for procs in root.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    pids.update(int(x) for x in procs.read_text().split())
    marker = str(slot.run_dir).encode()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes()
                if b"containerd-shim" in cmdline and marker in cmdline:
                    pids.add(int(proc.name))
    pids.discard(os.getpid())
    return pids


def _wait_gone(slot: Slot, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _node_pids(slot):
        time.sleep(0.05)


def _node_mounts(slot: Slot) -> list[str]:
    marks = (f"{slot.run_dir}/", f"{slot.kubelet_dir}/")
    out: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            target = line.split()[4]
            if target + "/" in marks or target.startswith(marks):
                out.append(target)
    return out


def _node_netns(slot: Slot) -> Iterator[str]:
    netns_dir = Path("/run/netns")
    if not netns_dir.is_dir():
        return
    for ns in sorted(netns_dir.iterdir()):
        out = _sh("ip", "-n", ns.name, "-j", "addr", "show", check=False)
        with contextlib.suppress(ValueError):
            for link in json.loads(out.stdout or "[]"):
                if any(slot.contains(a.get("local", "")) for a in link.get("addr_info", [])):
                    yield ns.name
                    break


def _bridge_ports(slot: Slot) -> list[str]:
    out = _sh("ip", "-j", "link", "show", "master", slot.bridge, check=False)
    with contextlib.suppress(ValueError):
        return [link["ifname"] for link in json.loads(out.stdout or "[]")]
    return []


def pod_processes(pod_uid: str, command_word: str = "") -> list[int]:
    """PIDs of the processes of one pod on this machine's node (its cgroup names the pod's
    UID), optionally only those with ``command_word`` in their argv: for fault tests that
    kill a container's process the way a crash would (SIGKILL, no API involved)."""
    marker = f"pod{pod_uid}"
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker not in (proc / "cgroup").read_text():
                continue
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # exited meanwhile
        if not command_word or command_word.encode() in argv:
            found.append(int(proc.name))
    return found


def pod_net_run(pod_uid: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    """Run `cmd` (e.g. `ip link set eth0 down`) in the network namespace of one pod of this
    machine's node, entered through the namespace of any of its processes (the sandbox's
    pause process shares it): for fault tests that cut a pod off the network."""
    pids = pod_processes(pod_uid)
    if not pids:
        raise NodeError(f"no process of pod {pod_uid} on this node")
    return subprocess.run(["nsenter", f"--net=/proc/{pids[0]}/ns/net", *cmd],
                          capture_output=True, text=True, timeout=30)
