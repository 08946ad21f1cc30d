"""One Pod on the process kubelet: volumes, init containers in order, then its containers.

`PodRun.step()` is called over and over by the kubelet's sync loop and moves
the Pod on by at most one start per container: set up volumes, run each init
container to completion (retrying per restartPolicy), then start, probe and
restart the main containers. `status()` renders what a kubelet would write.
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cluster import network
from tests.cluster.podconfig import ContainerConfigError, ObjectReader
from tests.cluster.podproc import (
    SA_MOUNT,
    ContainerProcess,
    Termination,
    mount_argv,
    now,
    signal_group,
)
from tests.cluster.probes import run_probe
from tests.cluster.volumes import MountPoints, PodVolumes, VolumeNotReady

RESTART_BACKOFF_SECONDS = 2
MAX_BACKOFF_SECONDS = 20
# How often a Pod that cannot start yet (missing ConfigMap, Secret or key) tries again.
RETRY_SECONDS = 2
# How often configMap and secret volumes are compared with their objects.
VOLUME_REFRESH_SECONDS = 2
# A liveness kill blocks the sync loop, so its grace period is capped.
LIVENESS_KILL_GRACE_SECONDS = 5
# What cluster DNS would answer for the API server's in-cluster names.
API_HOSTNAMES = (
    "kubernetes kubernetes.default kubernetes.default.svc kubernetes.default.svc.cluster.local"
)

# (container spec) -> (argv, env): the kubelet's command and env resolution.
Configure = Callable[[dict[str, Any]], tuple[list[str], dict[str, str]]]


def backoff(restarts: int) -> float:
    return min(RESTART_BACKOFF_SECONDS * (restarts + 1), MAX_BACKOFF_SECONDS)


@dataclass
class PodRun:
    """A Pod the kubelet runs; all methods are safe to call from the watch and sync threads."""

    pod: dict[str, Any]
    address: str
    host_ip: str
    workdir: Path
    pvc_root: Path
    reader: ObjectReader
    mount_points: MountPoints
    configure: Configure
    grpcurl: str
    sa_dir: Path | None = None
    init_containers: list[ContainerProcess] = field(init=False)
    containers: list[ContainerProcess] = field(init=False)
    # The last status written to the API, so only changes are written.
    reported: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        self.namespace, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.restart_policy = spec.get("restartPolicy", "Always")
        self.netns = network.NETNS_PREFIX + self.uid.replace("-", "")[:10]
        self.init_containers = [
            ContainerProcess(c, self.workdir / f"init-{c['name']}.log", init=True)
            for c in spec.get("initContainers") or []
        ]
        # The first container keeps the historical container.log name.
        logs = ["container.log"] + [f"container-{c['name']}.log" for c in spec["containers"][1:]]
        self.containers = [
            ContainerProcess(c, self.workdir / log, init=False)
            for c, log in zip(spec["containers"], logs, strict=True)
        ]
        self.lock = threading.Lock()
        self.stopped = False
        self.started_at = now()
        self.volumes: PodVolumes | None = None
        self.volume_error = ""
        self.next_volume_mono = 0.0
        self.mount_targets: list[str] = []
        self._transitions: dict[str, tuple[str, str]] = {}

    # --- setting up ---------------------------------------------------------
    def setup_network(self) -> None:
        if self.netns in network.pod_namespaces():
            # Left by a kubelet that died without cleaning up: start from scratch.
            self._kill_namespace_processes()
            network.delete_pod_namespace(self.netns)
        network.create_pod_namespace(self.netns, self.address)
        self.workdir.mkdir(parents=True, exist_ok=True)
        entries = [("127.0.0.1", "localhost"), (self.address, self.name)]
        entries.append((network.API_ADDRESS, API_HOSTNAMES))
        (self.workdir / "hosts").write_text("".join(f"{ip} {names}\n" for ip, names in entries))

    def restore(self, status: dict[str, Any]) -> None:
        """Carry over restart counts and finished init containers from the API.

        A restarted kubelet adopts Pods it did not start: init containers that
        already succeeded are not run again (the API refuses to move a finished
        container of a restartPolicy Never Pod back to running, and their work
        is in the kept volumes), and restart counts keep counting up.
        """
        previous = {
            s["name"]: s
            for s in (status.get("initContainerStatuses") or [])
            + (status.get("containerStatuses") or [])
        }
        for c in self.init_containers + self.containers:
            old = previous.get(c.name, {})
            c.restarts = int(old.get("restartCount", 0))
            done = (old.get("state") or {}).get("terminated") or {}
            if c.init and done.get("exitCode") == 0:
                c.completed = True
                c.exit_code = 0
                c.last_termination = _termination_from_api(done)

    def _prepare_volumes(self) -> bool:
        """Set up volumes and mount points once; False while something is missing."""
        if self.volumes is not None and not self.volume_error:
            return True
        if time.monotonic() < self.next_volume_mono:
            return False
        try:
            if self.volumes is None:
                self.volumes = PodVolumes(self.pod, self.workdir / "volumes", self.pvc_root)
            self.volumes.prepare(self.reader)
            everything = self.init_containers + self.containers
            targets = {m.target for c in everything for m in self._mounts(c)}
        except (VolumeNotReady, ContainerConfigError) as exc:
            self.volume_error = f"MountVolume.SetUp failed: {exc}"
            self.next_volume_mono = time.monotonic() + RETRY_SECONDS
            return False
        if self.sa_dir is not None:
            targets.add(SA_MOUNT)
        for target in sorted(targets):
            self.mount_points.acquire(target)
        self.mount_targets = sorted(targets)
        self.volume_error = ""
        self.next_refresh_mono = time.monotonic() + VOLUME_REFRESH_SECONDS
        return True

    def _mounts(self, c: ContainerProcess) -> list[Any]:
        assert self.volumes is not None
        try:
            return self.volumes.mounts(c.spec)
        except ContainerConfigError:
            return []  # reported when that container is started

    # --- running ------------------------------------------------------------
    def step(self) -> None:
        """Move the Pod on: volumes, then init containers in order, then the containers."""
        with self.lock:
            if self.stopped or not self._prepare_volumes():
                return
            assert self.volumes is not None
            if time.monotonic() >= self.next_refresh_mono:
                self.next_refresh_mono = time.monotonic() + VOLUME_REFRESH_SECONDS
                try:
                    changed = self.volumes.refresh(self.reader)
                except Exception as exc:  # the API may be briefly away; keep the old content
                    print(f"{self.namespace}/{self.name}: volume refresh: {exc}", flush=True)
                    changed = []
                if changed:
                    print(f"{self.namespace}/{self.name}: updated volumes {changed}", flush=True)
            for init in self.init_containers:
                if not init.completed:
                    self._drive(init, wants_restart=self.restart_policy != "Never")
                    return
            for c in self.containers:
                was_running = c.running
                self._drive(c, wants_restart=self._main_restarts(c))
                # A container (re)started in this pass is probed on the next one,
                # so one that exits at once is never reported Ready in between.
                if was_running and c.running:
                    self._probe(c)

    def _main_restarts(self, c: ContainerProcess) -> bool:
        return self.restart_policy == "Always" or (
            self.restart_policy == "OnFailure" and c.exit_code not in (None, 0)
        )

    def _drive(self, c: ContainerProcess, wants_restart: bool) -> None:
        code = c.poll()
        if c.running or c.completed:
            return
        if code is None:  # never started, or waiting on its configuration
            if time.monotonic() >= c.next_start_mono:
                self._start(c)
            return
        if wants_restart and time.monotonic() - c.last_exit_mono > backoff(c.restarts):
            c.restarts += 1
            self._start(c)

    def _start(self, c: ContainerProcess) -> None:
        assert self.volumes is not None
        try:
            command, env = self.configure(c.spec)
            mounts = self.volumes.mounts(c.spec)
        except ContainerConfigError as exc:
            c.waiting = ("CreateContainerConfigError", str(exc))
            c.next_start_mono = time.monotonic() + RETRY_SECONDS
            print(f"{self.namespace}/{self.name}/{c.name}: {exc}", flush=True)
            return
        except ValueError as exc:  # no command for the image
            c.start_failed(str(exc))
            return
        argv = ["ip", "netns", "exec", self.netns]
        argv += mount_argv(self.workdir / "hosts", self.sa_dir, mounts)
        try:
            c.launch([*argv, *command], env, c.spec.get("workingDir") or "/")
        except OSError as exc:
            c.start_failed(str(exc))
            return
        assert c.proc is not None
        print(f"started {self.namespace}/{self.name}/{c.name} pid {c.proc.pid}", flush=True)

    def _probe(self, c: ContainerProcess) -> None:
        """Readiness on every pass; liveness every periodSeconds, restarting on failures."""
        readiness = c.spec.get("readinessProbe")
        if not readiness:
            c.ready = True
        elif time.monotonic() - c.started_mono >= readiness.get("initialDelaySeconds", 0):
            c.ready = run_probe(readiness, c.spec, self.address, self.netns, self.grpcurl)
        else:
            c.ready = False
        liveness = c.spec.get("livenessProbe")
        if not liveness or time.monotonic() < c.next_liveness_mono:
            return
        c.next_liveness_mono = time.monotonic() + float(liveness.get("periodSeconds", 10))
        if run_probe(liveness, c.spec, self.address, self.netns, self.grpcurl):
            c.liveness_failures = 0
            return
        c.liveness_failures += 1
        threshold = int(liveness.get("failureThreshold", 3))
        if c.liveness_failures >= threshold:
            grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
            print(f"{self.namespace}/{self.name}/{c.name}: liveness probe failed", flush=True)
            c.kill(
                min(float(grace), LIVENESS_KILL_GRACE_SECONDS),
                f"Container {c.name} failed liveness probe, will be restarted",
            )

    # --- stopping -----------------------------------------------------------
    def stop(self, grace: float, keep_volumes: bool) -> None:
        """Stop every container, then the namespace; keep volumes for a kubelet restart."""
        with self.lock:
            self.stopped = True
            everything = self.init_containers + self.containers
            for c in everything:
                c.signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            for c in everything:
                c.wait_or_kill(deadline)
            self._kill_namespace_processes()
            network.delete_pod_namespace(self.netns)
            for target in self.mount_targets:
                self.mount_points.release(target)
            self.mount_targets = []
            shutil.rmtree(self.workdir / "serviceaccount", ignore_errors=True)
            if self.volumes is not None and not keep_volumes:
                self.volumes.remove()

    def _kill_namespace_processes(self) -> None:
        for pid in network.ip("netns", "pids", self.netns, check=False).stdout.split():
            signal_group(int(pid), signal.SIGKILL, group=False)

    # --- reporting ----------------------------------------------------------
    def _condition(self, kind: str, status: str, reason: str = "") -> dict[str, Any]:
        # lastTransitionTime moves only when the status does, as on a kubelet.
        if self._transitions.get(kind, ("", ""))[0] != status:
            self._transitions[kind] = (status, now())
        condition = {
            "type": kind,
            "status": status,
            "lastTransitionTime": self._transitions[kind][1],
        }
        if reason:
            condition["reason"] = reason
        return condition

    def _phase(self, initialized: bool) -> str:
        if any(
            c.exit_code not in (None, 0) and self.restart_policy == "Never"
            for c in self.init_containers
        ):
            return "Failed"
        if not initialized or any(not c.ever_ran for c in self.containers):
            return "Pending"
        if any(c.running or self._main_restarts(c) for c in self.containers):
            return "Running"
        return "Failed" if any(c.exit_code for c in self.containers) else "Succeeded"

    def status(self) -> dict[str, Any]:
        with self.lock:
            initialized = all(c.completed for c in self.init_containers)
            ready = initialized and all(c.ready and c.running for c in self.containers)
            status: dict[str, Any] = {
                "phase": self._phase(initialized),
                "hostIP": self.host_ip,
                "hostIPs": [{"ip": self.host_ip}],
                "podIP": self.address,
                "podIPs": [{"ip": self.address}],
                "startTime": self.started_at,
                "conditions": [
                    self._condition("PodReadyToStartContainers", "True"),
                    self._condition(
                        "Initialized",
                        "True" if initialized else "False",
                        "" if initialized else "ContainersNotInitialized",
                    ),
                    self._condition(
                        "ContainersReady", str(ready), "" if ready else "ContainersNotReady"
                    ),
                    self._condition("Ready", str(ready), "" if ready else "ContainersNotReady"),
                    self._condition("PodScheduled", "True"),
                ],
                "containerStatuses": [
                    self._container_status(c, not initialized, self._main_restarts(c))
                    for c in self.containers
                ],
            }
            if self.init_containers:
                status["initContainerStatuses"] = [
                    self._container_status(
                        c, False, self.restart_policy != "Never" and not c.completed
                    )
                    for c in self.init_containers
                ]
            return status

    def _container_status(
        self, c: ContainerProcess, initializing: bool, will_restart: bool
    ) -> dict[str, Any]:
        status = c.status(initializing, will_restart)
        if self.volume_error and not c.ever_ran:
            waiting = {"reason": "ContainerCreating", "message": self.volume_error}
            status["state"] = {"waiting": waiting}
        return status


def _termination_from_api(state: dict[str, Any]) -> Termination:
    return Termination(
        int(state.get("exitCode", 0)),
        state.get("reason", "Completed"),
        state.get("startedAt") or "",
        state.get("finishedAt") or now(),
    )
