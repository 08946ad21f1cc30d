"""Start and stop the test-bed cluster: kwokctl's binary runtime plus our network.

kwokctl does what it does well (PKI, etcd, control-plane flags, the kwok
controller and its default stages). We add only what it cannot do: the bridge
and safety routes, the API server's non-loopback advertise address (on that
bridge, so pods can reach it), the service range, kwok's pod range, leaving
real nodes (realnode_join.py) to their kubelets, and readiness checks that
name the component that failed. Every bed also runs KubeRay's operator beside the
control plane (kuberay.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.cluster import build, fleet, kube, kuberay, network, versions

CLUSTER = "edgefleet"
# klog error/fatal lines ("E1125 ...", "F1125 ...") and cobra's "Error: ...".
_ERROR_LINE = re.compile(r"^([EF]\d{4} |Error: |panic: )")
START_TIMEOUT = float(os.environ.get("EDGEFLEET_TESTBED_START_TIMEOUT", "240"))
# 443, as behind the `kubernetes` Service, so in-cluster clients that use the
# name https://kubernetes.default.svc (Kopf's plain service-account login) work.
API_PORT = int(os.environ.get("EDGEFLEET_TESTBED_API_PORT", "443"))


class ComponentFailed(RuntimeError):
    """A component did not become ready; the message names it and shows its log tail."""


@dataclass(frozen=True)
class Paths:
    root: Path

    @property
    def kwok_workdir(self) -> Path:
        return self.root / "kwok"

    @property
    def cluster_dir(self) -> Path:
        return self.kwok_workdir / "clusters" / CLUSTER

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    def component_log(self, component: str) -> Path:
        return self.cluster_dir / "logs" / f"{component}.log"


def paths() -> Paths:
    return Paths(Path(os.environ.get("EDGEFLEET_TESTBED_DIR", "/tmp/edgefleet-testbed")))


def _kwok_env(bins: Path, p: Paths) -> dict[str, str]:
    env = dict(os.environ)
    # Every binary is a local path, so kwokctl has nothing to download.
    env.update(
        KWOK_WORKDIR=str(p.kwok_workdir),
        KWOK_RUNTIME="binary",
        KWOK_KUBE_VERSION=versions.KUBERNETES_VERSION,
        KWOK_KUBE_APISERVER_BINARY=str(bins / "kube-apiserver"),
        KWOK_KUBE_CONTROLLER_MANAGER_BINARY=str(bins / "kube-controller-manager"),
        KWOK_KUBE_SCHEDULER_BINARY=str(bins / "kube-scheduler"),
        KWOK_KUBECTL_BINARY=str(bins / "kubectl"),
        KWOK_CONTROLLER_BINARY=str(bins / "kwok"),
        KWOK_ETCD_BINARY=str(bins / "etcd"),
    )
    return env


def _component_patches() -> dict[str, object]:
    """kwokctl config with the flags kwokctl has no option for.

    Given as componentsPatches in a config file: kwokctl v0.8.0's
    `--extra-args` indexes its patch list wrongly (index out of range panic)
    once two components get more than one argument each.
    """
    service_range = str(network.SERVICE_RANGE)
    pki = paths().cluster_dir / "pki"
    patches = {
        "kube-apiserver": [
            ("advertise-address", network.API_ADDRESS, False),
            ("service-cluster-ip-range", service_range, False),
            # `kubectl logs`/`exec` on a real node: its kubelet takes only clients
            # with a certificate from the cluster's CA (realnode_join.py), and its
            # name resolves nowhere, so the API server dials its InternalIP.
            ("kubelet-client-certificate", str(pki / "admin.crt"), False),
            ("kubelet-client-key", str(pki / "admin.key"), False),
            ("kubelet-preferred-address-types", "InternalIP,Hostname", False),
        ],
        "kube-controller-manager": [("service-cluster-ip-range", service_range, False)],
        "kwok-controller": [
            ("cidr", str(network.KWOK_POD_RANGE), False),
            ("node-ip", network.API_ADDRESS, True),
            # Leave real nodes (no annotation) to their kubelets.
            ("manage-all-nodes", "false", True),
            ("manage-nodes-with-annotation-selector", "=".join(fleet.KWOK_ANNOTATION), False),
        ],
    }
    # The `kubernetes` Service's ClusterIP (the range's first address) and names: a real
    # node's pods reach the API server there, through kube-proxy, and check its certificate.
    kubernetes_service_ip = str(next(network.SERVICE_RANGE.hosts()))
    service_names = ["kubernetes", "kubernetes.default", "kubernetes.default.svc",
                     "kubernetes.default.svc.cluster.local"]  # fmt: skip
    return {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokctlConfiguration",
        "options": {"kubeApiserverCertSANs": [kubernetes_service_ip, *service_names]},
        "componentsPatches": [
            {"name": name, "extraArgs": [{"key": k, "value": v, "override": o} for k, v, o in args]}
            for name, args in patches.items()
        ],
    }


def _create_args(p: Paths) -> list[str]:
    config_file = p.root / "kwokctl.yaml"
    config_file.write_text(yaml.safe_dump(_component_patches(), sort_keys=False))
    return [
        "--config",
        str(config_file),
        "create",
        "cluster",
        "--name",
        CLUSTER,
        "--runtime",
        "binary",
        "--kubeconfig",
        str(p.kubeconfig),
        "--kube-apiserver-port",
        str(API_PORT),
        "--secure-port=true",
        "--kube-authorization=true",
        "--kube-admission=true",
        # kwok v0.7+ nodes go NotReady without a lease duration.
        "--node-lease-duration-seconds",
        "40",
        "--timeout",
        f"{int(START_TIMEOUT)}s",
    ]


def _log_tail(p: Paths, component: str, lines: int = 30) -> str:
    """The log's first error lines (a crash's cause often precedes pages of usage) and its tail."""
    log = p.component_log(component)
    if not log.exists():
        return f"(no log at {log})"
    text = log.read_text(errors="replace").splitlines()
    errors = [line for line in text if _ERROR_LINE.match(line)][:10]
    head = ["(first error lines)", *errors, "(last lines)"] if errors else []
    return "\n".join(head + text[-lines:])


def _fail(p: Paths, component: str, why: str) -> ComponentFailed:
    return ComponentFailed(
        f"{component} is not ready: {why}\n--- {component} log tail ---\n{_log_tail(p, component)}"
    )


def _lease_held(p: Paths, name: str) -> bool:
    out = kube.kubectl(
        "-n",
        "kube-system",
        "get",
        "lease",
        name,
        "-o",
        "json",
        kubeconfig=p.kubeconfig,
        check=False,
    )
    return out.returncode == 0 and bool(json.loads(out.stdout)["spec"].get("holderIdentity"))


def _wait_control_plane(p: Paths, timeout: float) -> None:
    def api_ready() -> bool:
        return (
            kube.kubectl(
                "get", "--raw", "/readyz", kubeconfig=p.kubeconfig, check=False
            ).stdout.strip()
            == "ok"
        )

    try:
        kube.wait_for("kube-apiserver /readyz", api_ready, timeout)
    except TimeoutError as exc:
        raise _fail(p, "kube-apiserver", str(exc)) from None
    for component in ("kube-controller-manager", "kube-scheduler"):
        try:
            kube.wait_for(
                f"{component} leader lease", lambda c=component: _lease_held(p, c), timeout
            )
        except TimeoutError as exc:
            raise _fail(p, component, str(exc)) from None


def nodes_ready(kubeconfig: Path, names: set[str]) -> bool:
    """True when every named Node reports Ready=True."""
    out = kube.kubectl("get", "nodes", "-o", "json", kubeconfig=kubeconfig, timeout=120)
    ready = {
        n["metadata"]["name"]
        for n in json.loads(out.stdout)["items"]
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in n["status"].get("conditions", [])
        )
    }
    return names <= ready


def apply_nodes(kubeconfig: Path, nodes: list[dict[str, object]]) -> None:
    kube.kubectl("apply", "-f", "-", kubeconfig=kubeconfig, stdin=fleet.as_list(nodes), timeout=600)


_COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok-controller",
)


def up() -> Paths:
    """Start a fresh cluster with the fleet from fleet.yaml; raise naming what failed.

    On failure everything started so far is stopped again (logs stay in the
    state folder), so a failed start leaves no processes behind.
    """
    started = time.monotonic()
    build.ensure_host_tools()
    bins = build.build()
    kuberay_bins = kuberay.build_kuberay()
    p = paths()
    down(quiet=True)
    # Logs of the previous run are kept until now, for debugging; start clean.
    shutil.rmtree(p.root, ignore_errors=True)
    p.root.mkdir(parents=True)
    try:
        _start(p, bins, kuberay_bins)
    except BaseException:
        down(quiet=True)
        raise
    print(
        f"cluster up in {time.monotonic() - started:.1f}s; KUBECONFIG={p.kubeconfig}",
        file=sys.stderr,
    )
    return p


def _start(p: Paths, bins: Path, kuberay_bins: Path) -> None:
    network.host_up()
    # The bridge exists first so kwokctl puts its address in the serving cert.
    proc = subprocess.run(
        [str(bins / "kwokctl"), *_create_args(p)],
        env=_kwok_env(bins, p),
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT + 60,
    )
    if proc.returncode != 0:
        tails = "\n".join(f"--- {c} ---\n{_log_tail(p, c, 10)}" for c in _COMPONENTS)
        raise ComponentFailed(f"kwokctl create cluster failed:\n{proc.stderr[-3000:]}\n{tails}")
    _wait_control_plane(p, START_TIMEOUT)
    # KubeRay's CRDs are applied while the fleet's nodes register.
    kuberay_crds = kuberay.CrdApply(p.kubeconfig, kuberay_bins)
    kwok_nodes = fleet.kwok_nodes(fleet.load())
    apply_nodes(p.kubeconfig, kwok_nodes)
    names = {n["metadata"]["name"] for n in kwok_nodes}
    try:
        kube.wait_for("fleet nodes Ready", lambda: nodes_ready(p.kubeconfig, names), START_TIMEOUT)
    except TimeoutError as exc:
        raise ComponentFailed(
            f"{exc}\n--- kwok-controller ---\n{_log_tail(p, 'kwok-controller')}"
        ) from None
    try:
        kuberay.up(p.kubeconfig, p.root, kuberay_bins, kuberay_crds)
    except (kuberay.KubeRayFailed, TimeoutError, kube.CommandError) as exc:
        raise ComponentFailed(f"KubeRay is not ready: {exc}") from None


def stray_processes(p: Paths) -> list[str]:
    """Processes still running a test-bed binary or rooted in the state dir."""
    bins = str(versions.bin_dir())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmdline.startswith(bins) or str(p.root) in cmdline:
            found.append(f"{entry.name}: {cmdline[:160]}")
    return found


def stray_mounts(p: Paths) -> list[str]:
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    return [m for m in mounts if str(p.root) in m or "kubernetes.io/serviceaccount" in m]


def down(quiet: bool = False) -> None:
    """Stop everything `up` started; raise if any process, mount or interface remains."""
    p = paths()
    bins = versions.bin_dir()
    # Before its API server goes: KubeRay would only log errors until stopped.
    kuberay.stop(p.root)
    if p.cluster_dir.exists() and (bins / "kwokctl").exists():
        subprocess.run(
            [str(bins / "kwokctl"), "delete", "cluster", "--name", CLUSTER],
            env=_kwok_env(bins, p),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    network.host_down()
    p.kubeconfig.unlink(missing_ok=True)
    left = stray_processes(p) + stray_mounts(p) + network.leftovers()
    if left:
        raise RuntimeError("cluster down left things behind:\n" + "\n".join(left))
    if not quiet:
        print("cluster down: no process, mount, interface or namespace left", file=sys.stderr)


def status() -> int:
    p = paths()
    if not p.kubeconfig.exists():
        print("down (no kubeconfig)")
        return 1
    ready = kube.kubectl(
        "get", "--raw", "/readyz", kubeconfig=p.kubeconfig, check=False, timeout=10
    )
    if ready.stdout.strip() != "ok":
        print(f"API server not ready: {ready.stderr.strip()}")
        return 1
    print(f"up; KUBECONFIG={p.kubeconfig}")
    print(kube.kubectl("get", "nodes", "-o", "wide", kubeconfig=p.kubeconfig).stdout)
    return 0
