"""Pinned versions of every binary in the test bed, and where they are cached."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v3.19.5"
GRPCURL_VERSION = "v1.9.3"
# Bump when build.py changes how binaries are built (flags, ldflags), so the
# cache key changes with it.
BUILD_RECIPE = "2"

GOMOD_DIR = Path(__file__).resolve().parent / "gomod"
CONTROL_PLANE = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kube-proxy",
)
BINARIES = (*CONTROL_PLANE, "etcd", "kwok", "kwokctl", "helm", "grpcurl")


def bundle_key() -> str:
    """Cache key of the control plane's binaries (see pinned_key)."""
    pins = (KUBERNETES_VERSION, ETCD_VERSION, KWOK_VERSION, HELM_VERSION, GRPCURL_VERSION)
    return pinned_key(GOMOD_DIR, (*pins, BUILD_RECIPE))


def pinned_key(gomod_dir: Path, pins: tuple[str, ...]) -> str:
    """Cache key: the Kubernetes version plus a hash of every pin.

    Hashing the wrapper modules' go.mod/go.sum means a changed pin (or
    dependency) lands in a new folder instead of silently reusing stale binaries.
    """
    digest = hashlib.sha256()
    for path in sorted(gomod_dir.rglob("go.*")):
        digest.update(path.relative_to(gomod_dir).as_posix().encode())
        digest.update(path.read_bytes())
    digest.update(" ".join(pins).encode())
    return f"{KUBERNETES_VERSION}-{digest.hexdigest()[:10]}"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgefleet" / "bin"


def bin_dir() -> Path:
    """Folder holding this bundle's binaries (it may not exist yet)."""
    override = os.environ.get("EDGEFLEET_TESTBED_BIN")
    return Path(override) if override else cache_root() / bundle_key()
