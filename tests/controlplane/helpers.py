"""Helpers for control-plane tests: kubectl/helm calls, JSON reads, SA-token kubeconfigs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.cluster import kube, versions
from tests.cluster.kube import wait_for

__all__ = ["Cluster", "wait_for"]


def _tool(name: str) -> str:
    """The cached binary, or the one on PATH (a kind user's own kubectl/helm)."""
    cached = versions.bin_dir() / name
    if cached.exists():
        return str(cached)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name}: not cached in {cached.parent} and not on PATH")
    return found


@dataclass(frozen=True)
class Cluster:
    """A reachable cluster and how to talk to it as admin."""

    kubeconfig: Path
    # True on the Docker-free test bed (kwok nodes, real nodes); False on kind.
    testbed: bool
    # True when this run started the cluster (and so may stop and restart it).
    owned: bool = False

    def run(
        self,
        tool: str,
        *args: str,
        stdin: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(kubeconfig or self.kubeconfig)}
        proc = subprocess.run(
            [_tool(tool), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise kube.CommandError(
                f"{tool} {' '.join(args)} exited {proc.returncode}:\n{proc.stderr.strip()}"
            )
        return proc

    def kubectl(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run("kubectl", *args, **kw)

    def helm(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run("helm", *args, **kw)

    def apply(self, *manifests: dict[str, Any], namespace: str | None = None, **kw: Any) -> None:
        ns = ["-n", namespace] if namespace else []
        self.kubectl("apply", *ns, "-f", "-", stdin=yaml.safe_dump_all(manifests), **kw)

    def get(self, kind: str, name: str = "", namespace: str | None = None, **kw: Any) -> Any:
        """The object (or list) as JSON, or None when it does not exist."""
        ns = ["-n", namespace] if namespace else []
        out = self.kubectl(
            "get", kind, *([name] if name else []), *ns, "-o", "json", check=False, **kw
        )
        if out.returncode != 0:
            if "NotFound" in out.stderr:
                return None
            raise kube.CommandError(out.stderr)
        return json.loads(out.stdout)

    def service_account_kubeconfig(self, namespace: str, service_account: str, path: Path) -> Path:
        """A kubeconfig that authenticates as the ServiceAccount, with exactly its RBAC."""
        token = self.kubectl(
            "-n", namespace, "create", "token", service_account, "--duration", "1h"
        ).stdout.strip()
        admin = json.loads(
            self.kubectl("config", "view", "--raw", "--minify", "--flatten", "-o", "json").stdout
        )
        cluster = admin["clusters"][0]["cluster"]
        user = f"system:serviceaccount:{namespace}:{service_account}"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "testbed", "cluster": cluster}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [
                {
                    "name": "sa",
                    "context": {"cluster": "testbed", "user": user, "namespace": namespace},
                }
            ],
            "current-context": "sa",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path
