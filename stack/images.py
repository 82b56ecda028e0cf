"""Container images built without a Docker daemon, for the local node.

No registry is reachable from the build machines, so nothing is pulled:

- a Python base: Debian bookworm from Debian's packages (debootstrap), its python3 and a
  venv at /opt/python on PATH, so `pip` and console scripts behave as in python:3.11-slim;
- the pod sandbox image (the stack's own `pause`, built from Go like the control plane);
- the repository's Dockerfile (the operator) and examples/Dockerfile (example consumers),
  built by `buildah bud` with PYTHON_IMAGE pointing at that base. `docker build` of the
  same files keeps working for users who have Docker.

Images are tagged by a hash of what goes into them, so an unchanged tree builds nothing,
and are exported as docker-archive tarballs the node's containerd imports.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("KCG_CACHE_DIR", Path.home() / ".cache" / "kcg-operator"))
IMAGES = CACHE / "images"
BUILDAH_ROOT = CACHE / "buildah" / "storage"
BUILDAH_RUNROOT = Path("/run/kcg-buildah")
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("KCG_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_IMAGE = f"localhost/kcg-python-base:3.11-{DEBIAN_SUITE}"
PAUSE_IMAGE = "localhost/kcg-pause:3.10"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# The host's CA bundle is lent to RUN steps (never baked into an image): pip inside the
# build must trust whatever the host trusts, e.g. a TLS-inspecting egress proxy.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


# The names the chart's defaults and examples/*.yaml use: the node holds the images built
# here under these names too, so `helm install` and `kubectl apply -f examples/` work on the
# local stack as they are (IfNotPresent finds the image and never pulls).
ALIASES = {"operator": "ghcr.io/kcg-dev/kcg-operator:0.1.0",
           "examples": "ghcr.io/kcg-dev/kcg-example-apps:0.1.0"}


class ImageError(Exception):
    """A build step failed; the message says which and how to fix it."""


@dataclass(frozen=True)
class Image:
    """An image the node can run: its reference and the docker-archive holding it."""

    ref: str
    archive: Path


def _run(what: str, cmd: Sequence[str], **kwargs: object) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        raise ImageError(f"{what} failed: {' | '.join(lines[-3:]) or proc.returncode}")
    return str(proc.stdout)


def _require(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ImageError(f"{tool} not found: apt-get install {package}")
    return path


def buildah(*args: str) -> list[str]:
    """A buildah command on the stack's own storage (kept in the cache, not in /var/lib)."""
    return [_require("buildah", "buildah"), "--root", str(BUILDAH_ROOT),
            "--runroot", str(BUILDAH_RUNROOT), "--storage-driver", "overlay", *args]


def _has_image(ref: str) -> bool:
    return subprocess.run(buildah("inspect", "--type", "image", ref),
                          capture_output=True).returncode == 0


def _log(msg: str) -> None:
    print(f"kcg-images: {msg}", file=sys.stderr, flush=True)


def tree_hash(paths: Iterable[Path], extra: str = "") -> str:
    """A content hash of files and directories (names and bytes), caches excluded."""
    digest = hashlib.sha256(extra.encode())
    for root in sorted(paths):
        files = [root] if root.is_file() else sorted(
            p for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and ".egg-info" not in str(p)
            and p.suffix != ".pyc")
        for f in files:
            name = str(f.relative_to(REPO)) if f.is_relative_to(REPO) else f.name
            digest.update(name.encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def python_base() -> str:
    """The Python base image (debootstrap of Debian's packages), built once."""
    if _has_image(BASE_IMAGE):
        return BASE_IMAGE
    if os.geteuid() != 0:
        raise ImageError("building the Python base image needs root (debootstrap, buildah)")
    debootstrap = _require("debootstrap", "debootstrap")
    started = time.monotonic()
    _log(f"debootstrap {DEBIAN_SUITE} + {' '.join(BASE_PACKAGES)} from {DEBIAN_MIRROR} ...")
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kcg-rootfs-", dir=IMAGES) as tmp:
        rootfs = Path(tmp) / "rootfs"
        _run("debootstrap", [debootstrap, "--variant=minbase",
                             f"--include={','.join(BASE_PACKAGES)}", DEBIAN_SUITE, str(rootfs),
                             DEBIAN_MIRROR])
        _run("creating the venv", ["chroot", str(rootfs), "python3", "-m", "venv", "/opt/python"])
        for junk in ("usr/share/doc", "usr/share/man", "usr/share/info", "var/lib/apt/lists",
                     "var/cache/apt", "var/log"):
            for p in (rootfs / junk).glob("*"):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        container = _run("buildah from scratch", buildah("from", "scratch")).strip()
        try:
            mount = Path(_run("buildah mount", buildah("mount", container)).strip())
            _run("copying the root filesystem", ["cp", "-a", f"{rootfs}/.", str(mount)])
            _run("buildah config", buildah(
                "config",
                "--env", "PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"
                ":/sbin:/bin",
                "--env", "LANG=C.UTF-8",
                "--env", "PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
                "--cmd", "python3", container))
            _run("buildah commit", buildah("commit", "--quiet", container, BASE_IMAGE))
        finally:
            subprocess.run(buildah("rm", container), capture_output=True)
    _log(f"{BASE_IMAGE}: built in {time.monotonic() - started:.0f}s")
    return BASE_IMAGE


def pause(binary: Path) -> Image:
    """The pod sandbox image: the stack's `pause` binary alone, as uid 65535."""
    ref = f"{PAUSE_IMAGE}"
    archive = IMAGES / f"kcg-pause-{tree_hash([binary])}.tar"
    if archive.exists():
        return Image(ref, archive)
    container = _run("buildah from scratch", buildah("from", "scratch")).strip()
    try:
        _run("buildah copy", buildah("copy", "--chmod", "0755", container, str(binary), "/pause"))
        _run("buildah config", buildah("config", "--entrypoint", '["/pause"]',
                                       "--user", "65535:65535", container))
        _run("buildah commit", buildah("commit", "--quiet", container, ref))
    finally:
        subprocess.run(buildah("rm", container), capture_output=True)
    return _export(ref, archive)


def image_tag(digest: str) -> str:
    """The tag of an image built from inputs with this content hash.

    It starts with a letter. A 12-digit hex hash is all digits, not starting with 0, once
    in ~310 trees; `helm install --set image.tag=<digits>` reads that as a number, which the
    chart's schema refuses ("got number, want string"): the e2e suite's install failed."""
    return f"h{digest}"


def dockerfile_ref(name: str, dockerfile_path: Path, inputs: Iterable[Path]) -> str:
    """The reference `dockerfile` builds for these inputs: localhost/<name>:<tag>."""
    return f"localhost/{name}:{image_tag(tree_hash([dockerfile_path, *inputs]))}"


def dockerfile(name: str, context: Path, dockerfile_path: Path, inputs: Iterable[Path]) -> Image:
    """`buildah bud` of a Dockerfile on the local Python base, tagged by its inputs' hash."""
    inputs = list(inputs)
    ref = dockerfile_ref(name, dockerfile_path, inputs)
    tag = ref.rsplit(":", 1)[1]
    archive = IMAGES / f"{name}-{tag}.tar"
    if archive.exists():
        return Image(ref, archive)
    base = python_base()
    started = time.monotonic()
    _log(f"building {ref} from {dockerfile_path.relative_to(REPO)} ...")
    volumes = ["-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"] if HOST_CA_BUNDLE.exists() else []
    _run(f"buildah bud {dockerfile_path.relative_to(REPO)}", buildah(
        "bud", "--quiet", "--layers", "--network", "host", *volumes,
        "--build-arg", f"PYTHON_IMAGE={base}", "--build-arg", f"SOURCE_HASH={tag}",
        "-f", str(dockerfile_path), "-t", ref,
        str(context)))
    image = _export(ref, archive)
    _log(f"{ref}: built in {time.monotonic() - started:.0f}s, {image_size_mb(image):.0f} MB")
    for stale in IMAGES.glob(f"{name}-*.tar"):  # earlier trees' builds: only the newest stays
        if stale != archive:
            stale.unlink(missing_ok=True)
    subprocess.run(buildah("rmi", "--prune"), capture_output=True)
    return image


def image_size_mb(image: Image) -> float:
    """Uncompressed size: the docker-archive holds each layer once, as a tar."""
    return image.archive.stat().st_size / 1e6


def _export(ref: str, archive: Path) -> Image:
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_suffix(".partial")
    tmp.unlink(missing_ok=True)
    _run(f"exporting {ref}", buildah("push", "--quiet", ref, f"docker-archive:{tmp}:{ref}"))
    tmp.rename(archive)
    return Image(ref, archive)


def operator_image() -> Image:
    """The operator (`kcg run`, `kcg relay`) from the repository's Dockerfile."""
    return dockerfile("kcg-operator", REPO, REPO / "Dockerfile",
                      [REPO / "pyproject.toml", REPO / "README.md",
                       REPO / "operator" / "kcg_operator"])


def examples_image() -> Image:
    """The example consumer apps from examples/Dockerfile."""
    return dockerfile("kcg-examples", REPO / "examples", REPO / "examples" / "Dockerfile",
                      [REPO / "examples"])
