"""Build a real node's binaries and its two local images, once, into the cache.

A real node is kubelet + containerd v2 + runc + the CNI plugins; the cluster's DNS
is CoreDNS, run as a pod on a real node. Everything but
runc (Debian's /usr/sbin/runc) comes from the Go module proxy through the
wrapper modules in tests/cluster/gomod-node/, built the way build.py builds the
control plane (GOTOOLCHAIN=local, CGO_ENABLED=0, -trimpath, -mod=readonly,
`nice -n 19`, -p=2). The sandbox ("pause") binary is Kubernetes' own pause.c
from the same k8s.io/kubernetes module, compiled statically with the host's gcc.

Nothing is pulled from a registry: the pause, CoreDNS and small busybox test
images are written here as OCI archives, for `ctr images import`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.cluster import build, versions

CONTAINERD_VERSION = "v2.4.2"
CNI_PLUGINS_VERSION = "v1.10.0"
CRI_TOOLS_VERSION = "v1.37.0"
COREDNS_VERSION = "v1.15.0"
# Bump when this file changes how binaries or images are made.
BUILD_RECIPE = "3"

GOMOD_DIR = Path(__file__).resolve().parent / "gomod-node"
RUNC = Path("/usr/sbin/runc")
BUSYBOX = Path("/bin/busybox")

# The name containerd's CRI is told to use for pod sandboxes (pinned_images.sandbox).
PAUSE_IMAGE = "edgefleet.local/pause:3.10.2"
BUSYBOX_IMAGE = "edgefleet.local/busybox:1.35"
COREDNS_IMAGE = f"edgefleet.local/coredns:{COREDNS_VERSION.lstrip('v')}"

CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
BINARIES = (
    "kubelet",
    "kube-proxy",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "crictl",
    "pause",
    "coredns",
    "kube-network-policies",
    *CNI_PLUGINS,
)
ARCHIVES = ("pause.oci.tar", "busybox.oci.tar", "coredns.oci.tar")
# The BaselineAdminNetworkPolicy CRD the enforcer reads (policy.networking.k8s.io/
# v1alpha1), from the sigs.k8s.io/network-policy-api its go.mod pins: the experimental
# channel, whose peers include `networks` (CIDRs), as kube-network-policies' own install.
BASELINE_POLICY_CRD = "baselineadminnetworkpolicies.crd.yaml"


def bundle_key() -> str:
    """The Kubernetes version plus a hash of every pin and of this recipe."""
    pins = (versions.KUBERNETES_VERSION, CONTAINERD_VERSION, CNI_PLUGINS_VERSION)
    # pinned_key hashes go.mod/go.sum; CoreDNS's plugin choice is in its main.go.
    coredns_main = hashlib.sha256((GOMOD_DIR / "coredns" / "main.go").read_bytes()).hexdigest()
    return versions.pinned_key(
        GOMOD_DIR, (*pins, CRI_TOOLS_VERSION, COREDNS_VERSION, coredns_main[:12], BUILD_RECIPE)
    )


def bin_dir() -> Path:
    """Folder holding the node's binaries and image archives (it may not exist yet)."""
    override = os.environ.get("EDGEFLEET_REALNODE_BIN")
    if override:
        return Path(override)
    return versions.cache_root().parent / "node" / bundle_key()


def is_built(target: Path) -> bool:
    needed = (*BINARIES, *ARCHIVES, BASELINE_POLICY_CRD)
    return (target / build.STAMP).exists() and all((target / name).exists() for name in needed)


@dataclass(frozen=True)
class GoTarget:
    module: str
    packages: tuple[str, ...]
    ldflags: str
    # The binary's name when the package's last path element would not say it.
    output: str | None = None


def _go_targets() -> list[GoTarget]:
    plugins = "github.com/containernetworking/plugins/plugins"
    cni_packages = (
        f"{plugins}/main/bridge",
        f"{plugins}/ipam/host-local",
        f"{plugins}/main/loopback",
        f"{plugins}/meta/portmap",
    )
    containerd = "github.com/containerd/containerd/v2"
    # containerd's Makefile sets its version this way; `containerd --version` shows it.
    containerd_ldflags = (
        f"-s -w -X {containerd}/version.Version={CONTAINERD_VERSION} "
        f"-X {containerd}/version.Package={containerd}"
    )
    return [
        GoTarget(
            "kubernetes",
            ("k8s.io/kubernetes/cmd/kubelet", "k8s.io/kubernetes/cmd/kube-proxy"),
            build.k8s_ldflags(),
        ),
        GoTarget(
            "containerd",
            (
                f"{containerd}/cmd/containerd",
                f"{containerd}/cmd/containerd-shim-runc-v2",
                f"{containerd}/cmd/ctr",
            ),
            containerd_ldflags,
        ),
        GoTarget(
            "cni",
            cni_packages,
            f"-s -w -X {plugins[: -len('/plugins')]}/pkg/utils/buildversion.BuildVersion="
            f"{CNI_PLUGINS_VERSION}",
        ),
        GoTarget(
            "crictl",
            ("sigs.k8s.io/cri-tools/cmd/crictl",),
            f"-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version={CRI_TOOLS_VERSION}",
        ),
        # main.go there picks the plugins; the module path's last element names the binary.
        GoTarget("coredns", ("edgefleet.local/testbed/coredns",), "-s -w"),
        # kube-network-policies v0.8.0 (gomod-node/netpol), the NetworkPolicy enforcer.
        # It programs nftables' `queue`, which this VM's kernel lacks: realnode.py
        # queues the packets with iptables' NFQUEUE instead, which it reads alike.
        GoTarget(
            "netpol",
            ("sigs.k8s.io/kube-network-policies/cmd",),
            "-s -w",
            output="kube-network-policies",
        ),
    ]


def _timed(label: str, cmd: list[str], cwd: Path) -> None:
    started = time.monotonic()
    print(f"building {label}", file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=cwd, env=build.go_env(), check=True)
    print(f"built {label} in {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)


def _build_go(staging: Path) -> None:
    for target in _go_targets():
        cmd = [
            "nice",
            "-n",
            "19",
            build.go_binary(),
            "build",
            "-ldflags",
            target.ldflags,
            "-o",
            f"{staging}/{target.output or ''}",
            *target.packages,
        ]
        _timed(f"{target.module}: {' '.join(target.packages)}", cmd, GOMOD_DIR / target.module)


def _kubernetes_source() -> Path:
    """Where the Go module cache holds the pinned k8s.io/kubernetes."""
    out = subprocess.run(
        [build.go_binary(), "list", "-m", "-f", "{{.Dir}}", "k8s.io/kubernetes"],
        cwd=GOMOD_DIR / "kubernetes",
        env=build.go_env(),
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def _copy_baseline_policy_crd(staging: Path) -> None:
    out = subprocess.run(
        [build.go_binary(), "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/network-policy-api"],
        cwd=GOMOD_DIR / "netpol", env=build.go_env(), check=True, capture_output=True, text=True,
    )  # fmt: skip
    crd = "config/crd/experimental/policy.networking.k8s.io_baselineadminnetworkpolicies.yaml"
    shutil.copyfile(Path(out.stdout.strip()) / crd, staging / BASELINE_POLICY_CRD)


def _build_pause(staging: Path) -> None:
    """Kubernetes' pause.c, static, so the image needs nothing else."""
    source = _kubernetes_source() / "build" / "pause" / "linux" / "pause.c"
    gcc = shutil.which("gcc")
    if gcc is None:
        raise SystemExit("gcc not found: apt-get install gcc libc6-dev")
    cmd = [
        "nice",
        "-n",
        "19",
        gcc,
        "-Os",
        "-static",
        "-Wall",
        "-Werror",
        f"-DVERSION={PAUSE_IMAGE.rsplit(':', 1)[1]}-edgefleet",
        "-o",
        str(staging / "pause"),
        str(source),
    ]
    _timed("pause (k8s.io/kubernetes build/pause/linux/pause.c)", cmd, staging)
    subprocess.run(["strip", str(staging / "pause")], check=True)


# --- OCI archives -----------------------------------------------------------------


@dataclass(frozen=True)
class ImageFile:
    """One file of an image's single layer: its path in the image and where its bytes are."""

    path: str
    source: Path | None = None
    content: bytes = b""
    mode: int = 0o755
    link_to: str = ""


def _layer(files: list[ImageFile]) -> bytes:
    """A deterministic uncompressed tar (fixed mtime, root owner) so the digest is stable."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        made: set[str] = set()
        for item in files:
            parts = item.path.strip("/").split("/")
            for depth in range(1, len(parts)):
                folder = "/".join(parts[:depth])
                if folder not in made:
                    info = tarfile.TarInfo(folder)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                    made.add(folder)
            info = tarfile.TarInfo(item.path.strip("/"))
            info.mode = item.mode
            if item.link_to:
                info.type, info.linkname = tarfile.SYMTYPE, item.link_to
                tar.addfile(info)
                continue
            data = item.source.read_bytes() if item.source else item.content
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _blob(tar: tarfile.TarFile, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest.split(':')[1]}")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
    return digest


def write_oci_archive(out: Path, name: str, files: list[ImageFile], config: dict) -> None:
    """An OCI image layout tar holding one image, named for `ctr images import`.

    The layer is gzip-compressed (mtime 0, so the digest is stable); containerd
    unpacks it into its snapshotter on import.
    """
    layer = _layer(files)
    compressed = gzip.compress(layer, mtime=0)
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
    }
    with tarfile.open(out, "w") as tar:
        config_bytes = json.dumps(image_config, sort_keys=True).encode()
        config_digest = _blob(tar, config_bytes)
        layer_digest = _blob(tar, compressed)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config_bytes),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest,
                    "size": len(compressed),
                }
            ],
        }
        manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
        manifest_digest = _blob(tar, manifest_bytes)
        index = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": manifest_digest,
                    "size": len(manifest_bytes),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    # containerd names the imported image from this annotation.
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
                    },
                }
            ],
        }
        for member, data in (
            ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
            ("index.json", json.dumps(index).encode()),
        ):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


PASSWD = b"root:x:0:0::/:/bin/sh\napp:x:10001:10001::/:/bin/sh\n"


def _write_images(staging: Path) -> None:
    write_oci_archive(
        staging / "pause.oci.tar",
        PAUSE_IMAGE,
        [ImageFile("pause", source=staging / "pause")],
        {"Entrypoint": ["/pause"], "User": "65535:65535"},
    )
    if not BUSYBOX.exists():
        build_debian_package("busybox-static")
    # httpd serves /www; the pod's probes fetch its index page.
    write_oci_archive(
        staging / "busybox.oci.tar",
        BUSYBOX_IMAGE,
        [
            ImageFile("bin/busybox", source=BUSYBOX),
            ImageFile("bin/sh", link_to="busybox"),
            ImageFile("www/index.html", content=b"edgefleet real node\n", mode=0o644),
            ImageFile("etc/passwd", content=PASSWD, mode=0o644),
            ImageFile("tmp/.keep", content=b"", mode=0o644),
        ],
        {
            "Entrypoint": ["/bin/busybox"],
            "Cmd": ["sh"],
            "User": "10001:10001",
            "Env": ["PATH=/bin"],
        },
    )
    # CoreDNS's own image holds the binary and nothing else, run as nobody.
    write_oci_archive(
        staging / "coredns.oci.tar",
        COREDNS_IMAGE,
        [ImageFile("coredns", source=staging / "coredns")],
        {"Entrypoint": ["/coredns"], "User": "65532:65532"},
    )


def build_debian_package(package: str) -> None:
    print(f"installing {package}", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", package], check=True, env=env
    )


def ensure_host_tools() -> None:
    """runc, iptables (portmap) and nft (kube-proxy's nftables mode) come from
    Debian, as on a node's OS image."""
    build.ensure_host_tools()
    for tool, package in (
        (RUNC, "runc"),
        (Path("/usr/sbin/iptables"), "iptables"),
        (Path("/usr/sbin/nft"), "nftables"),
    ):
        if not tool.exists():
            build_debian_package(package)


def build_node(force: bool = False) -> Path:
    """Return the folder with every node binary and image archive, building what is missing."""
    target = bin_dir()
    if is_built(target) and not force:
        print(f"node binaries: cached in {target}", file=sys.stderr)
        return target
    ensure_host_tools()
    staging = target.with_name(target.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    _build_go(staging)
    _build_pause(staging)
    _copy_baseline_policy_crd(staging)
    _write_images(staging)
    return build.publish(staging, target, started, "node binaries")
