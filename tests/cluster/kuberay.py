"""KubeRay in the test bed: its operator, built from the Go module proxy, run as a host
process beside the control plane, and its CRDs (RayCluster, RayJob, RayService).

The binary and the CRDs are a bundle of their own under ~/.cache/edgefleet/kuberay/,
keyed like the node bundle (the wrapper module gomod-kuberay/'s go.mod/go.sum, the pins
and BUILD_RECIPE), built once the way build.py builds the control plane. A bundle of its
own, so that pinning KubeRay rebuilds neither the control plane nor the nodes.

The operator runs as the cluster's admin (the bed's kubeconfig), so it needs none of
its chart's RBAC; leader election is off (one replica), and so are its webhooks (they
run only with ENABLE_WEBHOOKS=true). It reaches the Ray head's dashboard through the API
server's services/proxy (--use-kubernetes-proxy): a host process resolves no
`*.svc.cluster.local` name.

    python -m tests.cluster.kuberay build   # the binary and CRDs, cached
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.cluster import build, kube, network, procs, versions

KUBERAY_VERSION = "v1.5.0"
MODULE = "github.com/ray-project/kuberay/ray-operator"
# Bump when this file changes how the bundle is made or what it holds.
BUILD_RECIPE = "1"
GOMOD_DIR = Path(__file__).resolve().parent / "gomod-kuberay"
BINARY = "ray-operator"
# KubeRay's own CRDs (group ray.io), from config/crd/bases/ of the pinned module.
GROUP = "ray.io"
PLURALS = ("rayclusters", "rayjobs", "rayservices")
CRD_FILES = tuple(f"{GROUP}_{plural}.yaml" for plural in PLURALS)
# Loopback only. KubeRay's defaults (:8080, :8082) are every Kopf operator's and
# router's port; these clash with nothing the bed or the tests run.
METRICS_PORT = 18480
HEALTH_PORT = 18481
READY_TIMEOUT = 60.0


# --- build -------------------------------------------------------------------------


def bundle_key() -> str:
    """KubeRay's version plus pinned_key's hash of the wrapper module, the pins and recipe."""
    digest = versions.pinned_key(GOMOD_DIR, (KUBERAY_VERSION, BUILD_RECIPE)).rsplit("-", 1)[1]
    return f"{KUBERAY_VERSION}-{digest}"


def cache_root() -> Path:
    """Where every KubeRay bundle lives (a bed started from an older one is still ours)."""
    return versions.cache_root().parent / "kuberay"


def bin_dir() -> Path:
    """Folder holding the operator's binary and CRDs (it may not exist yet)."""
    override = os.environ.get("EDGEFLEET_KUBERAY_BIN")
    return Path(override) if override else cache_root() / bundle_key()


def is_built(target: Path) -> bool:
    needed = (BINARY, *CRD_FILES)
    return (target / build.STAMP).exists() and all((target / name).exists() for name in needed)


def _module_dir() -> Path:
    """Where the Go module cache holds the pinned ray-operator module."""
    out = subprocess.run(
        [build.go_binary(), "list", "-m", "-f", "{{.Dir}}", MODULE],
        cwd=GOMOD_DIR / "ray-operator", env=build.go_env(), check=True, capture_output=True,
        text=True,
    )  # fmt: skip
    return Path(out.stdout.strip())


def build_kuberay(force: bool = False) -> Path:
    """Return the folder with the operator and its CRDs, building them if missing."""
    target = bin_dir()
    if is_built(target) and not force:
        print(f"kuberay: cached in {target}", file=sys.stderr)
        return target
    staging = target.with_name(target.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    cmd = ["nice", "-n", "19", build.go_binary(), "build", "-ldflags", "-s -w",
           "-o", str(staging / BINARY), MODULE]  # fmt: skip
    print(f"building kuberay {KUBERAY_VERSION}: {MODULE}", file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=GOMOD_DIR / "ray-operator", env=build.go_env(), check=True)
    bases = _module_dir() / "config" / "crd" / "bases"
    for name in CRD_FILES:
        shutil.copyfile(bases / name, staging / name)
    return build.publish(staging, target, started, f"kuberay {KUBERAY_VERSION}")


# --- run ---------------------------------------------------------------------------


def log_path(root: Path) -> Path:
    return root / "kuberay" / f"{BINARY}.log"


def operator_command(binary: Path, kubeconfig: Path) -> list[str]:
    """The operator's command line (flags from ray-operator's main.go at KUBERAY_VERSION)."""
    return [
        str(binary),
        f"--kubeconfig={kubeconfig}",
        f"--metrics-addr=127.0.0.1:{METRICS_PORT}",
        f"--health-probe-bind-address=127.0.0.1:{HEALTH_PORT}",
        "--enable-leader-election=false",
        "--use-kubernetes-proxy=true",
        "--log-stdout-encoder=console",
    ]


def operator_env(base: dict[str, str]) -> dict[str, str]:
    """`base` with the webhooks off and the bed's cluster domain (KubeRay reads both)."""
    return {**base, "ENABLE_WEBHOOKS": "false", "CLUSTER_DOMAIN": network.CLUSTER_DOMAIN}


class CrdApply:
    """KubeRay's CRDs being applied, each by a kubectl of its own: the API server takes
    seconds over CRDs this large, which the bed spends registering its nodes meanwhile.
    Server-side: RayCluster's and RayJob's are too large for client-side apply's
    annotation. A start that fails meanwhile leaves these kubectls to `stop`."""

    def __init__(self, kubeconfig: Path, bundle: Path) -> None:
        self.kubeconfig = kubeconfig
        self._applies = {name: self._apply(bundle / name) for name in CRD_FILES}

    def _apply(self, crd: Path) -> subprocess.Popen[str]:
        cmd = [kube.binary("kubectl"), f"--kubeconfig={self.kubeconfig}", "apply",
               "--server-side", "--field-manager=edgefleet-testbed", "-f", str(crd)]  # fmt: skip
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def wait(self, timeout: float = 120) -> None:
        """Until the API server serves every CRD; raise kube.CommandError if an apply failed."""
        deadline = time.monotonic() + timeout
        for name, proc in self._applies.items():
            try:
                _, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise TimeoutError(f"kubectl apply -f {name}: over {timeout:.0f}s") from None
            if proc.returncode != 0:
                raise kube.CommandError(
                    f"kubectl apply -f {name} exited {proc.returncode}:\n{stderr.strip()}"
                )
        remaining = max(1.0, deadline - time.monotonic())
        kube.wait_for(f"{GROUP} CRDs Established", self._served, remaining, interval=0.2)

    def _served(self) -> bool:
        # Discovery lists a CRD's resource once it is Established, in a few hundred bytes
        # where the CRDs themselves are megabytes; `kubectl wait --for=condition=Established`
        # also fails at once on a CRD whose status has no conditions yet.
        out = kube.kubectl("get", "--raw", f"/apis/{GROUP}/v1", kubeconfig=self.kubeconfig,
                           check=False)  # fmt: skip
        return out.returncode == 0 and all_served(json.loads(out.stdout))


def all_served(discovery: dict) -> bool:
    """Whether an APIResourceList (`/apis/ray.io/v1`) lists every KubeRay kind."""
    return set(PLURALS) <= {resource["name"] for resource in discovery.get("resources", [])}


def up(kubeconfig: Path, root: Path, bundle: Path, crds: CrdApply) -> None:
    """Once `crds` are served, start the operator and wait for its /readyz; raise
    KubeRayFailed, with its log's tail, if it exits or is not ready in READY_TIMEOUT."""
    started = time.monotonic()
    crds.wait()
    served = time.monotonic()
    log = log_path(root)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            operator_command(bundle / BINARY, kubeconfig),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=operator_env(dict(os.environ)),
            start_new_session=True,
        )

    def state() -> str | None:
        return "exited" if proc.poll() is not None else ("ready" if _healthy() else None)

    try:
        if kube.wait_for(f"{BINARY} /readyz", state, READY_TIMEOUT, interval=0.2) == "exited":
            raise KubeRayFailed(f"{BINARY} exited with status {proc.returncode}\n{_log_tail(root)}")
    except TimeoutError as exc:
        raise KubeRayFailed(f"{exc}\n{_log_tail(root)}") from None
    print(
        f"kuberay {KUBERAY_VERSION}: waited {served - started:.1f}s for its CRDs, "
        f"{time.monotonic() - served:.1f}s for its operator",
        file=sys.stderr,
    )


class KubeRayFailed(RuntimeError):
    """The operator exited or did not become ready; the message carries its log's tail."""


def _healthy() -> bool:
    try:
        url = f"http://127.0.0.1:{HEALTH_PORT}/readyz"
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.read() == b"ok"
    except OSError:
        return False


def _log_tail(root: Path, lines: int = 30) -> str:
    log = log_path(root)
    text = log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else []
    return f"--- {log} ---\n" + "\n".join(text)


def own_processes(root: Path) -> list[int]:
    """This bed's KubeRay processes: operators started from any KubeRay bundle, and
    kubectls applying a bundle's CRDs, with this bed's state folder on their command line
    (their kubeconfig). A crashed `up` left no other record of them."""
    bundles = (f"{cache_root()}/", f"{bin_dir()}/")
    found = []
    for entry, exe, cmdline in procs.processes():
        ours = exe.startswith(bundles) or any(bundle in cmdline for bundle in bundles)
        if ours and f"{root}/" in cmdline:
            found.append(int(entry.name))
    return found


def stop(root: Path, grace: float = 10) -> None:
    """SIGTERM the bed's KubeRay processes (the operator's controller-runtime stops on it),
    SIGKILL after `grace`."""
    pids = own_processes(root)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while (alive := [pid for pid in pids if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running and not a zombie (a zombie's /proc entry outlives its exit)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state.rsplit(") ", 1)[-1][:1] != "Z"


if __name__ == "__main__":
    if sys.argv[1:] != ["build"]:
        print(__doc__)
        raise SystemExit(2)
    print(build_kuberay())
