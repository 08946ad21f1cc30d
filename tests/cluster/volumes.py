"""A Pod's volumes as host folders, and the host mount points they are bound to.

Each volume is a folder under the Pod's work folder (`volumes/<name>`), except
a `persistentVolumeClaim`, which is `<kubelet state>/pvcs/<namespace>/<claim>`
and outlives the Pod (the test bed has no storage provisioner; the folder is
the claim's storage). configMap and secret volumes are written the way a
kubelet writes them, so a process watching them sees the same thing:

    policy.yaml -> ..data/policy.yaml
    ..data -> ..2026_11_25_18_00_00.123456
    ..2026_11_25_18_00_00.123456/policy.yaml

An update writes a new timestamped folder and renames a fresh `..data` link
over the old one, so a reader sees either the old or the new content, never a
half-written file. The folders are bound into the Pod's private mount
namespace by podproc.py; this module only prepares them on the host.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.cluster.podconfig import ContainerConfigError, ObjectReader

PROJECTED_KINDS = ("configMap", "secret")
SUPPORTED_KINDS = ("emptyDir", *PROJECTED_KINDS, "persistentVolumeClaim")
DEFAULT_MODE = 0o644
SERVICE_ACCOUNT_KIND = "serviceAccountToken"


class VolumeNotReady(Exception):
    """A volume cannot be set up yet (its ConfigMap or Secret is missing); the Pod waits."""


@dataclass(frozen=True)
class Mount:
    """Bind `source` (a host folder) at `target` inside the Pod, read-only or not."""

    source: Path
    target: str
    read_only: bool


class MountPoints:
    """Host folders made for mount targets that did not exist, removed when no Pod needs them.

    A bind mount needs its target to exist, and a private mount namespace still
    shares the host's file system, so a target such as /etc/edgefleet/router
    must be created on the host. Only folders made here are removed, deepest
    first, once the last Pod using a target has stopped: removing a folder
    that is a mount point in a live Pod's namespace would detach that mount.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: dict[Path, int] = {}
        self._created: set[Path] = set()

    def acquire(self, target: str) -> None:
        path = Path(target)
        with self._lock:
            self._users[path] = self._users.get(path, 0) + 1
            missing = []
            probe = path
            while not probe.exists() and probe != probe.parent:
                missing.append(probe)
                probe = probe.parent
            path.mkdir(parents=True, exist_ok=True)
            self._created.update(missing)

    def release(self, target: str) -> None:
        path = Path(target)
        with self._lock:
            self._users[path] = self._users.get(path, 1) - 1
            if self._users[path] > 0:
                return
            del self._users[path]
            while path in self._created and path not in self._users:
                try:
                    path.rmdir()
                except OSError:  # still holds another target or someone's files
                    return
                self._created.discard(path)
                path = path.parent


def _is_service_account_volume(spec: dict[str, Any]) -> bool:
    """The projected `kube-api-access-*` volume the ServiceAccount admission plugin adds."""
    sources = (spec.get("projected") or {}).get("sources") or []
    return any("serviceAccountToken" in s for s in sources)


def _volume_kind(spec: dict[str, Any]) -> str:
    if _is_service_account_volume(spec):
        # Served by the kubelet's own token folder, bound at the standard path.
        return SERVICE_ACCOUNT_KIND
    kinds = [k for k in SUPPORTED_KINDS if k in spec]
    if not kinds:
        other = sorted(set(spec) - {"name"})
        raise ContainerConfigError(
            f"volume {spec['name']!r}: unsupported type {other} "
            f"(the process kubelet knows {', '.join(SUPPORTED_KINDS)})"
        )
    return kinds[0]


def _projected_files(
    kind: str, source: dict[str, Any], data: dict[str, bytes] | None
) -> dict[str, tuple[bytes, int]]:
    """path -> (content, mode) for a configMap or secret volume source."""
    name = source.get("name") or source.get("secretName")
    optional = bool(source.get("optional"))
    if data is None:
        if optional:
            return {}
        raise VolumeNotReady(f'{kind} "{name}" not found')
    default_mode = int(source.get("defaultMode", DEFAULT_MODE))
    items = source.get("items")
    if not items:
        return {key: (value, default_mode) for key, value in data.items()}
    files = {}
    for item in items:
        if item["key"] not in data:
            if optional:
                continue
            raise VolumeNotReady(f'{kind} "{name}": no key {item["key"]!r}')
        files[item["path"]] = (data[item["key"]], int(item.get("mode", default_mode)))
    return files


def write_atomically(folder: Path, files: dict[str, tuple[bytes, int]]) -> None:
    """Replace the folder's projected files in one rename, as a kubelet's atomic writer does."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = folder / dt.datetime.now(dt.UTC).strftime("..%Y_%m_%d_%H_%M_%S.%f")
    stamp.mkdir()
    for rel, (content, mode) in files.items():
        path = stamp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode)
    staged = folder / "..data_tmp"
    staged.unlink(missing_ok=True)
    staged.symlink_to(stamp.name)
    os.replace(staged, folder / "..data")
    visible = {rel.split("/", 1)[0] for rel in files}
    for top in visible:
        link = folder / top
        if not link.is_symlink():
            link.symlink_to(f"..data/{top}")
    for entry in folder.iterdir():
        if entry.name.startswith(".."):
            if entry.is_dir() and not entry.is_symlink() and entry != stamp:
                shutil.rmtree(entry)  # an older timestamped folder
        elif entry.name not in visible:
            entry.unlink()  # a key that is gone


class PodVolumes:
    """Sets up, refreshes and removes one Pod's volumes; `mounts()` says where each goes."""

    def __init__(self, pod: dict[str, Any], root: Path, pvc_root: Path) -> None:
        self.namespace = pod["metadata"]["namespace"]
        self.specs = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        self.kinds = {name: _volume_kind(spec) for name, spec in self.specs.items()}
        self.root, self.pvc_root = root, pvc_root
        self._written: dict[str, dict[str, tuple[bytes, int]]] = {}

    def path(self, name: str) -> Path:
        if self.kinds[name] == "persistentVolumeClaim":
            claim = self.specs[name]["persistentVolumeClaim"]["claimName"]
            return self.pvc_root / self.namespace / claim
        return self.root / name

    def prepare(self, reader: ObjectReader) -> None:
        """Create every volume; raise VolumeNotReady while a needed object is missing."""
        for name, kind in self.kinds.items():
            if kind in PROJECTED_KINDS:
                self._project(reader, name, missing_ok=False)
            elif kind != SERVICE_ACCOUNT_KIND:
                self.path(name).mkdir(parents=True, exist_ok=True)

    def refresh(self, reader: ObjectReader) -> list[str]:
        """Rewrite configMap/secret volumes whose object changed; the names rewritten.

        An object deleted after the Pod started keeps its last content, as on a kubelet.
        """
        return [
            name
            for name, kind in self.kinds.items()
            if kind in PROJECTED_KINDS and self._project(reader, name, missing_ok=True)
        ]

    def _project(self, reader: ObjectReader, name: str, missing_ok: bool) -> bool:
        kind = self.kinds[name]
        source = self.specs[name][kind]
        data = reader.read(kind, source.get("name") or source.get("secretName"))
        if data is None and missing_ok and name in self._written:
            return False
        files = _projected_files(kind, source, data)
        if self._written.get(name) == files:
            return False
        write_atomically(self.path(name), files)
        self._written[name] = files
        return True

    def mounts(self, container: dict[str, Any]) -> list[Mount]:
        mounts = []
        for vm in container.get("volumeMounts") or []:
            if vm["name"] not in self.specs:
                raise ContainerConfigError(f"volumeMount {vm['name']!r}: no such volume in the Pod")
            if vm.get("subPath") or vm.get("subPathExpr"):
                raise ContainerConfigError(
                    f"volumeMount {vm['name']!r}: subPath is not supported by the process kubelet"
                )
            kind = self.kinds[vm["name"]]
            if kind == SERVICE_ACCOUNT_KIND:
                continue  # podproc binds the token folder itself
            spec = self.specs[vm["name"]][kind]
            # configMap and secret volumes are always read-only on a kubelet.
            read_only = (
                bool(vm.get("readOnly"))
                or kind in PROJECTED_KINDS
                or (kind == "persistentVolumeClaim" and bool(spec.get("readOnly")))
            )
            mounts.append(Mount(self.path(vm["name"]), vm["mountPath"], read_only))
        return mounts

    def remove(self) -> None:
        """Remove the Pod's own volumes (emptyDir, configMap, secret); claims' folders stay."""
        shutil.rmtree(self.root, ignore_errors=True)
