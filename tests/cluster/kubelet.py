"""A test-only "process kubelet": runs the Pods bound to one Node as real processes.

It registers nothing itself (the Node comes from fleet.yaml with a podCIDR);
it keeps the Node Ready with a Lease and status heartbeats, starts each Pod's
container command inside the Pod's network namespace with the Pod's env and
ServiceAccount token, reports Ready only when the readiness probe passes, and
on deletion stops the process, removes the namespace and finalises the Pod.

Run: python -m tests.cluster.kubelet --node proc-0 --kubeconfig K --state DIR
     [--pod-python PATH] [--pod-env JSON]

Several kubelets (one per process node) share this host's file system; mount
points they create for Pods are counted across all of them (SharedMountPoints).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kubernetes import client, config, watch

from tests.cluster import network, versions
from tests.cluster.pod import PodRun
from tests.cluster.podconfig import ObjectReader, resolve_env
from tests.cluster.podproc import now
from tests.cluster.volumes import MountPoints

HEARTBEAT_SECONDS = 10
LEASE_SECONDS = 40
# Images every test bed knows; EDGEFLEET_PROCESS_IMAGES adds to (or overrides) these.
BUILTIN_IMAGES: dict[str, list[str]] = {"edgefleet-testbed/python": ["python3"]}


class SharedMountPoints(MountPoints):
    """MountPoints counted across every process kubelet on this host.

    Each node's kubelet is its own process, but all of them bind Pod volumes
    over the same host paths (/var/lib/edgefleet/models for every model pod).
    Folders one kubelet created must stay while another node's Pod still has
    them as a mount target: removing a folder that is a mount point in a live
    Pod's namespace detaches that mount. So the users of each target (per
    node) and the folders made for targets live in one JSON file next to the
    kubelets' state folders, read and written under an exclusive flock.
    """

    def __init__(self, registry: Path, node: str) -> None:
        super().__init__()
        self.registry, self.node = registry, node
        self.registry.parent.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        with open(self.registry.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                text = self.registry.read_text() if self.registry.exists() else ""
                data: dict[str, Any] = json.loads(text) if text.strip() else {}
                yield data
                scratch = self.registry.with_suffix(".tmp")
                scratch.write_text(json.dumps(data, sort_keys=True))
                scratch.replace(self.registry)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def acquire(self, target: str) -> None:
        path = Path(target)
        with self._locked() as data:
            users = data.setdefault("users", {}).setdefault(target, {})
            users[self.node] = users.get(self.node, 0) + 1
            created = data.setdefault("created", [])
            probe = path
            while not probe.exists() and probe != probe.parent:
                created.append(str(probe))
                probe = probe.parent
            path.mkdir(parents=True, exist_ok=True)

    def release(self, target: str) -> None:
        with self._locked() as data:
            all_users = data.setdefault("users", {})
            users = all_users.get(target, {})
            users[self.node] = users.get(self.node, 1) - 1
            if users[self.node] <= 0:
                del users[self.node]
            if users:
                return
            all_users.pop(target, None)
            created = data.setdefault("created", [])
            # As MountPoints does: only folders made here, deepest first, while
            # no live target is that folder; rmdir fails on one still holding files.
            path = Path(target)
            while str(path) in created and str(path) not in all_users:
                try:
                    path.rmdir()
                except OSError:
                    return
                created.remove(str(path))
                path = path.parent


class ProcessKubelet:
    def __init__(
        self,
        node: str,
        kubeconfig: str,
        state: Path,
        image_map: dict[str, list[str]],
        pod_python: Path | None = None,
        pod_env: dict[str, str] | None = None,
    ) -> None:
        config.load_kube_config(config_file=kubeconfig)
        # Folder first on the Pods' PATH (the "image" of this node), and the
        # variables every container starts with.
        self.pod_bin = str((pod_python or Path(sys.executable)).parent)
        self.pod_env = dict(pod_env or {})
        if pod_python is not None and not pod_python.exists():
            print(
                f"warning: --pod-python {pod_python} does not exist: containers on {node} "
                "will not find their commands",
                flush=True,
            )
        self.cfg = client.Configuration.get_default_copy()
        self.api = client.ApiClient(self.cfg)
        self.core = client.CoreV1Api(self.api)
        self.coord = client.CoordinationV1Api(self.api)
        self.node, self.state, self.image_map = node, state, image_map
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.pods: dict[str, PodRun] = {}
        self.mount_points = SharedMountPoints(state.parent / "mount-points.json", node)
        pod_cidr = self.core.read_node(node).spec.pod_cidr
        self.free_ips = [str(a) for a in ipaddress.ip_network(pod_cidr).hosts()][9:]
        self.grpcurl = str(versions.bin_dir() / "grpcurl")

    # --- node heartbeats -------------------------------------------------
    def heartbeat(self) -> None:
        lease = {
            "metadata": {"name": self.node, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": self.node,
                "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            },
        }
        try:
            self.coord.patch_namespaced_lease(self.node, "kube-node-lease", lease)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            self.coord.create_namespaced_lease("kube-node-lease", lease)
        conditions = [
            {"type": t, "status": "False", "reason": f"KubeletHas{r}", "lastHeartbeatTime": now()}
            for t, r in (
                ("MemoryPressure", "SufficientMemory"),
                ("DiskPressure", "NoDiskPressure"),
                ("PIDPressure", "SufficientPID"),
            )
        ]
        conditions.append(
            {
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "process kubelet is posting ready status",
                "lastHeartbeatTime": now(),
            }
        )
        body = {
            "status": {
                "conditions": conditions,
                "addresses": [
                    {"type": "InternalIP", "address": network.API_ADDRESS},
                    {"type": "Hostname", "address": self.node},
                ],
            }
        }
        self.core.patch_node_status(self.node, body)

    def heartbeat_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.heartbeat()
            except Exception as exc:
                print(f"heartbeat failed: {exc}", flush=True)
            self.stopping.wait(HEARTBEAT_SECONDS)

    # --- pods -------------------------------------------------------------
    def _command(self, container: dict[str, Any]) -> list[str]:
        if container.get("command"):
            return [*container["command"], *container.get("args", [])]
        image = container.get("image", "").rsplit("@", 1)[0]
        repo = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
        for key in (image, repo, repo.rsplit("/", 1)[-1]):
            if key in self.image_map:
                return [*self.image_map[key], *container.get("args", [])]
        raise ValueError(f"image {image!r} has no command and no entry in the image map")

    def _env(self, pod: dict[str, Any], container: dict[str, Any], address: str) -> dict[str, str]:
        """The process env; raises ContainerConfigError for a missing required reference."""
        port = urlparse(self.cfg.host).port or 443
        env = {
            # The node's interpreter folder first (the kubelet's own unless
            # --pod-python says otherwise): in a virtualenv, `python3` and console
            # scripts such as edgefleet-server resolve to that environment's.
            "PATH": os.pathsep.join([self.pod_bin, os.environ.get("PATH", "/usr/bin:/bin")]),
            # What an image's ENV lines would set; the Pod's env below wins.
            **self.pod_env,
            "HOME": "/root",
            "HOSTNAME": pod["metadata"]["name"],
            # No kube-proxy: point in-cluster clients straight at the API server.
            "KUBERNETES_SERVICE_HOST": network.API_ADDRESS,
            "KUBERNETES_SERVICE_PORT": str(port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
        }
        fields = {
            "metadata.name": pod["metadata"]["name"],
            "metadata.namespace": pod["metadata"]["namespace"],
            "metadata.uid": pod["metadata"]["uid"],
            "spec.nodeName": self.node,
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
            "status.podIP": address,
            "status.hostIP": network.API_ADDRESS,
        }
        reader = ObjectReader(self.core, pod["metadata"]["namespace"])
        env.update(resolve_env(reader, container, fields))
        return env

    def _service_account(self, pod: dict[str, Any], workdir: Path) -> Path | None:
        if pod["spec"].get("automountServiceAccountToken") is False:
            return None
        meta = pod["metadata"]
        sa = pod["spec"].get("serviceAccountName", "default")
        request = {
            "spec": {
                "audiences": [],
                "expirationSeconds": 3600,
                "boundObjectRef": {
                    "kind": "Pod",
                    "apiVersion": "v1",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            }
        }
        token = self.core.create_namespaced_service_account_token(
            sa, meta["namespace"], request
        ).status.token
        sa_dir = workdir / "serviceaccount"
        sa_dir.mkdir(parents=True, exist_ok=True)
        (sa_dir / "token").write_text(token)
        (sa_dir / "namespace").write_text(meta["namespace"])
        shutil.copyfile(self.cfg.ssl_ca_cert, sa_dir / "ca.crt")
        return sa_dir

    def _take_address(self, previous: str | None) -> str:
        """A free pod address; the Pod's previous one when a restarted kubelet adopts it."""
        with self.lock:
            if previous in self.free_ips:
                self.free_ips.remove(previous)
                return previous
            return self.free_ips.pop(0)

    def start_pod(self, pod: dict[str, Any]) -> None:
        """Take the Pod on; the sync loop then runs its init containers and containers."""
        meta = pod["metadata"]
        status = pod.get("status") or {}
        address = self._take_address(status.get("podIP"))

        def configure(container: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
            return self._command(container), self._env(pod, container, address)

        run = PodRun(
            pod=pod,
            address=address,
            host_ip=network.API_ADDRESS,
            workdir=self.state / meta["uid"],
            pvc_root=self.state / "pvcs",
            reader=ObjectReader(self.core, meta["namespace"]),
            mount_points=self.mount_points,
            configure=configure,
            grpcurl=self.grpcurl,
        )
        if status.get("phase") not in (None, "Pending"):
            run.restore(status)
        try:
            run.setup_network()
            run.sa_dir = self._service_account(pod, run.workdir)
        except Exception as exc:
            # Undone here; the next relist (at most 20 s away) tries again.
            print(f"cannot set up {meta['namespace']}/{meta['name']}: {exc}", flush=True)
            run.stop(0, keep_volumes=True)
            with self.lock:
                self.free_ips.append(address)
            return
        with self.lock:
            self.pods[meta["uid"]] = run
        print(f"took on {meta['namespace']}/{meta['name']} at {address}", flush=True)

    def report(self, run: PodRun, status: dict[str, Any]) -> None:
        try:
            self.core.patch_namespaced_pod_status(run.name, run.namespace, {"status": status})
        except client.ApiException as exc:
            if exc.status != 404:
                print(f"status of {run.namespace}/{run.name}: {exc.reason} {exc.body}", flush=True)
            return
        run.reported = status

    def stop_pod(self, uid: str, grace: float, finalize: bool, keep_volumes: bool = False) -> None:
        with self.lock:
            run = self.pods.pop(uid, None)
        if run is None:
            return
        run.stop(min(grace, 10), keep_volumes)
        with self.lock:
            self.free_ips.append(run.address)
        if finalize:
            # A real kubelet confirms the deletion once the containers are gone.
            body = client.V1DeleteOptions(
                grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)
            )
            try:
                self.core.delete_namespaced_pod(run.name, run.namespace, body=body)
            except client.ApiException as exc:
                if exc.status not in (404, 409):
                    raise
        print(f"stopped {run.namespace}/{run.name}", flush=True)

    def sync_loop(self) -> None:
        """Drive every Pod (init containers, starts, probes, restarts) and report changes."""
        while not self.stopping.is_set():
            with self.lock:
                runs = list(self.pods.values())
            for run in runs:
                try:
                    run.step()
                    status = run.status()
                except Exception as exc:  # one broken Pod must not stop the others
                    print(f"sync {run.namespace}/{run.name}: {exc!r}", flush=True)
                    continue
                if status != run.reported and not run.stopped:
                    self.report(run, status)
            self.stopping.wait(0.5)

    def watch_loop(self) -> None:
        """List-and-watch Pods bound to this node; each 20 s watch ends in a fresh relist."""
        while not self.stopping.is_set():
            try:
                stream = watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces,
                    field_selector=f"spec.nodeName={self.node}",
                    timeout_seconds=20,
                    _preload_content=False,
                )
                for event in stream:
                    if self.stopping.is_set():
                        break
                    self.handle(event["type"], event["raw_object"])
            except Exception as exc:  # the API server may be restarting; try again shortly
                print(f"watch failed: {exc}", flush=True)
                self.stopping.wait(1)

    def handle(self, kind: str, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            known = uid in self.pods
        if kind == "DELETED":
            self.stop_pod(uid, 0, finalize=False)
        elif pod["metadata"].get("deletionTimestamp"):
            if known:
                self.stop_pod(
                    uid,
                    float(pod["metadata"].get("deletionGracePeriodSeconds") or 0),
                    finalize=True,
                )
            else:
                self._finalize_unknown(pod)
        elif not known and pod.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
            # Pending Pods, and Pods a previous kubelet ran (after a restart, as
            # a real kubelet after a reboot). Synchronously, in the watch thread:
            # taking a Pod on takes well under a second, and it keeps a Pod's
            # events strictly in order.
            self.start_pod(pod)

    def _finalize_unknown(self, pod: dict[str, Any]) -> None:
        body = client.V1DeleteOptions(grace_period_seconds=0)
        try:
            self.core.delete_namespaced_pod(
                pod["metadata"]["name"], pod["metadata"]["namespace"], body=body
            )
        except client.ApiException as exc:
            if exc.status != 404:
                raise

    def shutdown(self, *_: object) -> None:
        self.stopping.set()

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.shutdown)
        signal.signal(signal.SIGINT, self.shutdown)
        threading.Thread(target=self.heartbeat_loop, daemon=True).start()
        threading.Thread(target=self.sync_loop, daemon=True).start()
        watcher = threading.Thread(target=self.watch_loop, daemon=True)
        watcher.start()
        self.stopping.wait()
        for uid in list(self.pods):
            # Volumes stay: a kubelet started after this one adopts the Pods.
            self.stop_pod(uid, 5, finalize=False, keep_volumes=True)
        print("process kubelet stopped", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.kubelet")
    parser.add_argument("--node", required=True)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--state", required=True, type=Path)
    parser.add_argument(
        "--image-map",
        default=os.environ.get("EDGEFLEET_PROCESS_IMAGES", "{}"),
        help='JSON {"image or repo": ["command", ...]} for containers without a command',
    )
    parser.add_argument(
        "--pod-python",
        type=Path,
        help="interpreter whose folder comes first on the Pods' PATH (default: this one)",
    )
    parser.add_argument(
        "--pod-env", default="{}", help='JSON {"NAME": "value"} every container starts with'
    )
    args = parser.parse_args()
    image_map = {**BUILTIN_IMAGES, **json.loads(args.image_map)}
    pod_env = {str(k): str(v) for k, v in json.loads(args.pod_env).items()}
    ProcessKubelet(
        args.node, args.kubeconfig, args.state, image_map, args.pod_python, pod_env
    ).run()


if __name__ == "__main__":
    main()
