"""One Pod run as a real process in its own network and mount namespaces."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cluster import network

SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
# In a private mount namespace (so the host and other pods never see them),
# bind the Pod's hosts file over /etc/hosts and its token folder over the
# standard path, then become the container command.
_MOUNT_AND_EXEC = (
    'hosts="$1"; sa="$2"; shift 2; '
    'mount --bind "$hosts" /etc/hosts || exit 121; '
    'if [ -n "$sa" ]; then mount --bind "$sa" ' + SA_MOUNT + " || exit 122; fi; "
    'exec "$@"'
)
# What cluster DNS would answer for the API server's in-cluster names.
API_HOSTNAMES = (
    "kubernetes kubernetes.default kubernetes.default.svc kubernetes.default.svc.cluster.local"
)


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class PodProcess:
    """State of one running Pod; `status()` renders what the API should show."""

    namespace: str
    name: str
    uid: str
    container: dict[str, Any]
    address: str
    host_ip: str
    workdir: Path
    restart_policy: str = "Always"
    proc: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    restarts: int = 0
    ready: bool = False
    exit_code: int | None = None
    started_mono: float = 0.0
    last_exit_mono: float = 0.0
    netns: str = field(init=False)
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    sa_dir: Path | None = None
    # (ready, exit code, restarts) last written to the API, to report changes only.
    reported: tuple[bool, int | None, int] | None = None

    def __post_init__(self) -> None:
        self.netns = network.NETNS_PREFIX + self.uid.replace("-", "")[:10]

    def setup_network(self) -> None:
        network.create_pod_namespace(self.netns, self.address)

    def start(self, command: list[str], env: dict[str, str], sa_dir: Path | None) -> None:
        self.command, self.env, self.sa_dir = command, env, sa_dir
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "container.log", "ab")  # noqa: SIM115 - handed to the child
        hosts = self.workdir / "hosts"
        entries = [("127.0.0.1", "localhost"), (self.address, self.name)]
        entries.append((network.API_ADDRESS, API_HOSTNAMES))
        hosts.write_text("".join(f"{ip} {names}\n" for ip, names in entries))
        if sa_dir is not None:
            Path(SA_MOUNT).mkdir(parents=True, exist_ok=True)
        argv = ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--propagation", "private"]
        argv += ["sh", "-c", _MOUNT_AND_EXEC, "sh", str(hosts), str(sa_dir or "")]
        self.proc = subprocess.Popen(
            [*argv, *command],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.container.get("workingDir") or "/",
        )
        log.close()
        self.started_at, self.started_mono, self.ready, self.exit_code = (
            now(),
            time.monotonic(),
            False,
            None,
        )

    def restart(self) -> None:
        self.restarts += 1
        self.start(self.command, self.env, self.sa_dir)

    def poll(self) -> int | None:
        """The exit code once the process has ended, else None."""
        if self.proc is not None and self.exit_code is None:
            self.exit_code = self.proc.poll()
            if self.exit_code is not None:
                self.ready, self.last_exit_mono = False, time.monotonic()
        return self.exit_code

    def probe(self, grpcurl: str) -> bool:
        """Run the readiness probe once; no probe means ready once started."""
        spec = self.container.get("readinessProbe")
        if not spec:
            return True
        if time.monotonic() - self.started_mono < spec.get("initialDelaySeconds", 0):
            return False
        timeout = float(spec.get("timeoutSeconds", 1))
        try:
            if "httpGet" in spec:
                get = spec["httpGet"]
                url = f"http://{self.address}:{self._port(get['port'])}{get.get('path', '/')}"
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    return 200 <= resp.status < 400
            if "tcpSocket" in spec:
                with socket.create_connection(
                    (self.address, self._port(spec["tcpSocket"]["port"])), timeout
                ):
                    return True
            if "grpc" in spec:
                target = f"{self.address}:{self._port(spec['grpc']['port'])}"
                out = subprocess.run(
                    [
                        grpcurl,
                        "-plaintext",
                        "-max-time",
                        str(timeout),
                        target,
                        "grpc.health.v1.Health/Check",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=timeout + 5,
                )
                return (
                    out.returncode == 0
                    and "SERVING" in out.stdout
                    and "NOT_SERVING" not in out.stdout
                )
            if "exec" in spec:
                cmd = ["ip", "netns", "exec", self.netns, *spec["exec"]["command"]]
                return subprocess.run(cmd, capture_output=True, timeout=timeout + 5).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False
        return False

    def _port(self, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in self.container.get("ports", []):
            if p.get("name") == port:
                return int(p["containerPort"])
        raise ValueError(f"unknown named port {port}")

    def stop(self, grace: float) -> None:
        """Stop the process group, then anything else left in the namespace, then the namespace."""
        if self.proc is not None and self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        for pid in network.ip("netns", "pids", self.netns, check=False).stdout.split():
            _signal_group(int(pid), signal.SIGKILL, group=False)
        network.delete_pod_namespace(self.netns)
        shutil.rmtree(self.workdir / "serviceaccount", ignore_errors=True)

    def status(self) -> dict[str, Any]:
        running = self.exit_code is None and self.proc is not None
        if running:
            phase = "Running"
            state: dict[str, Any] = {"running": {"startedAt": self.started_at}}
        else:
            phase = "Succeeded" if self.exit_code == 0 else "Failed"
            if self.restart_policy == "Always" or (
                self.restart_policy == "OnFailure" and self.exit_code
            ):
                phase = "Running"  # the kubelet restarts it
            state = {
                "terminated": {
                    "exitCode": self.exit_code,
                    "finishedAt": now(),
                    "startedAt": self.started_at,
                }
            }
        ready = "True" if self.ready else "False"
        conditions = [
            ("PodReadyToStartContainers", "True"),
            ("Initialized", "True"),
            ("ContainersReady", ready),
            ("Ready", ready),
            ("PodScheduled", "True"),
        ]
        return {
            "phase": phase,
            "hostIP": self.host_ip,
            "hostIPs": [{"ip": self.host_ip}],
            "podIP": self.address,
            "podIPs": [{"ip": self.address}],
            "startTime": self.started_at,
            "conditions": [
                {"type": t, "status": s, "lastTransitionTime": now()} for t, s in conditions
            ],
            "containerStatuses": [
                {
                    "name": self.container["name"],
                    "image": self.container.get("image", ""),
                    "imageID": "",
                    "containerID": f"process://{self.proc.pid if self.proc else 0}",
                    "ready": self.ready,
                    "started": running,
                    "restartCount": self.restarts,
                    "state": state,
                }
            ],
        }


def _signal_group(pid: int, sig: signal.Signals, group: bool = True) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
