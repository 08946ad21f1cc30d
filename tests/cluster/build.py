"""Build the test bed's binaries from the Go module proxy, once, into the cache.

A warm run finds the `.complete` stamp and returns at once. Builds run under
`nice -n 19` with `-p=2` so they never starve other work on a 2-core machine.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.cluster import versions

STAMP = ".complete"


def k8s_ldflags() -> str:
    # Without these, every binary reports v0.0.0 and chart kubeVersion checks fail.
    major, minor = versions.KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    build_date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    values = {
        "gitVersion": versions.KUBERNETES_VERSION,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": build_date,
    }
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {pkg}.{name}={value}" for name, value in values.items()]
    return " ".join(flags)


def _helm_ldflags() -> str:
    """Helm's own release flags: its version, and the Kubernetes version it assumes
    without a cluster (`helm template`, `helm lint`), taken from its client-go as
    Helm's Makefile does. Without them Helm assumes Kubernetes 1.20 and refuses
    charts that need newer."""
    client_go = re.search(
        r"k8s\.io/client-go v0\.(\d+)\.", (versions.GOMOD_DIR / "helm" / "go.mod").read_text()
    )
    if client_go is None:
        raise SystemExit("tests/cluster/gomod/helm/go.mod pins no k8s.io/client-go")
    minor = client_go.group(1)
    flags = ["-s", "-w", f"-X helm.sh/helm/v3/internal/version.version={versions.HELM_VERSION}"]
    for pkg in ("helm.sh/helm/v3/pkg/lint/rules", "helm.sh/helm/v3/pkg/chartutil"):
        flags += [f"-X {pkg}.k8sVersionMajor=1", f"-X {pkg}.k8sVersionMinor={minor}"]
    return " ".join(flags)


def _targets() -> list[tuple[str, list[str], str]]:
    """(wrapper module folder, packages, ldflags); binaries are named by package."""
    kwok_version = versions.KUBERNETES_VERSION.lstrip("v")
    return [
        (
            "kubernetes",
            [f"k8s.io/kubernetes/cmd/{b}" for b in versions.CONTROL_PLANE],
            k8s_ldflags(),
        ),
        ("etcd", ["go.etcd.io/etcd/server/v3"], "-s -w"),
        (
            "kwok",
            ["sigs.k8s.io/kwok/cmd/kwok", "sigs.k8s.io/kwok/cmd/kwokctl"],
            f"-s -w -X sigs.k8s.io/kwok/pkg/consts.KubeVersion={kwok_version}",
        ),
        ("helm", ["helm.sh/helm/v3/cmd/helm"], _helm_ldflags()),
        (
            "grpcurl",
            ["github.com/fullstorydev/grpcurl/cmd/grpcurl"],
            f"-s -w -X main.version={versions.GRPCURL_VERSION}",
        ),
    ]


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GOTOOLCHAIN="local",
        CGO_ENABLED="0",
        GOFLAGS="-mod=readonly -buildvcs=false -trimpath -p=2",
    )
    return env


def go_binary() -> str:
    found = shutil.which("go") or "/usr/local/go/bin/go"
    if not Path(found).exists():
        raise SystemExit("go not found: install Go 1.26 (expected at /usr/local/go/bin/go)")
    return found


# Host tools the test bed runs, and the Debian packages that provide them.
HOST_TOOLS = {"ip": "iproute2", "unshare": "util-linux", "nsenter": "util-linux", "mount": "mount"}


def ensure_host_tools() -> None:
    """Install the Debian packages for any missing host tool (CI starts from a bare image)."""
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if not missing:
        return
    print(f"installing {' '.join(missing)}", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], check=True, env=env
    )


def is_built(target: Path) -> bool:
    return (target / STAMP).exists() and all((target / b).exists() for b in versions.BINARIES)


def build(force: bool = False) -> Path:
    """Return the folder with every binary, building whatever is missing."""
    target = versions.bin_dir()
    if is_built(target) and not force:
        print(f"binaries: cached in {target}", file=sys.stderr)
        return target
    staging = target.with_name(target.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for module, packages, ldflags in _targets():
        t0 = time.monotonic()
        # etcd's package path ends in /v3, so its binary name is given explicitly.
        out = str(staging / "etcd") if module == "etcd" else f"{staging}/"
        cmd = ["nice", "-n", "19", go_binary(), "build", "-ldflags", ldflags, "-o", out, *packages]
        print(f"building {module}: {' '.join(packages)}", file=sys.stderr, flush=True)
        subprocess.run(cmd, cwd=versions.GOMOD_DIR / module, env=go_env(), check=True)
        print(f"built {module} in {time.monotonic() - t0:.0f}s", file=sys.stderr, flush=True)
    return publish(staging, target, started, "binaries")


def publish(staging: Path, target: Path, started: float, what: str) -> Path:
    """Stamp a finished build and move it into place whole (a cache folder is never half-built)."""
    elapsed = time.monotonic() - started
    (staging / STAMP).write_text(f"built in {elapsed:.0f}s\n")
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    print(f"{what}: built in {elapsed:.0f}s into {target}", file=sys.stderr)
    return target
