"""One container of a Pod run as a real process, and what a kubelet reports about it."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.cluster.volumes import Mount

SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
# In a private mount namespace (so the host and other pods never see them),
# bind the Pod's hosts file over /etc/hosts, its token folder over the
# standard path and each volume over its mountPath (remounted read-only where
# asked), then become the container command. Arguments: hosts, token folder
# (or ""), the number of volume mounts, then "source target rw|ro" per mount,
# then the command.
_MOUNT_AND_EXEC = (
    'hosts="$1"; sa="$2"; n="$3"; shift 3; '
    'mount --bind "$hosts" /etc/hosts || exit 121; '
    'if [ -n "$sa" ]; then mount --bind "$sa" ' + SA_MOUNT + " || exit 122; fi; "
    'while [ "$n" -gt 0 ]; do '
    'mount --bind "$1" "$2" || exit 123; '
    'if [ "$3" = ro ]; then mount -o remount,bind,ro "$2" || exit 124; fi; '
    "shift 3; n=$((n - 1)); done; "
    'exec "$@"'
)
# Exit code of a container that could not be started at all (no command, no binary).
START_ERROR_EXIT = 128


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def mount_argv(hosts: Path, sa_dir: Path | None, mounts: list[Mount]) -> list[str]:
    """The `unshare` + shell prefix that sets up a container's private mounts, then execs."""
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _MOUNT_AND_EXEC, "sh"]
    argv += [str(hosts), str(sa_dir or ""), str(len(mounts))]
    # Parents before children, so a mount inside another mount's target lands on top.
    for m in sorted(mounts, key=lambda m: m.target):
        argv += [str(m.source), m.target, "ro" if m.read_only else "rw"]
    return argv


@dataclass
class Termination:
    """How one run of a container ended, in the API's ContainerStateTerminated shape."""

    exit_code: int
    reason: str
    started_at: str
    finished_at: str
    message: str = ""

    def as_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": self.started_at or None,
            "finishedAt": self.finished_at,
        }
        if self.message:
            state["message"] = self.message
        return state


class ContainerProcess:
    """One container: its process (if running), restarts, probes' state and last exit."""

    def __init__(self, spec: dict[str, Any], log_path: Path, init: bool) -> None:
        self.spec, self.name, self.log_path, self.init = spec, spec["name"], log_path, init
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = ""
        self.started_mono = 0.0
        self.last_exit_mono = 0.0
        self.exit_code: int | None = None
        self.restarts = 0
        self.ready = False
        # Why it is not running, when it never could start (CreateContainerConfigError, ...).
        self.waiting: tuple[str, str] | None = None
        self.last_termination: Termination | None = None
        # An init container that exited 0 is done for the Pod's life.
        self.completed = False
        self.next_start_mono = 0.0
        self.next_liveness_mono = 0.0
        self.liveness_failures = 0
        self._kill_message = ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.exit_code is None

    @property
    def ever_ran(self) -> bool:
        return self.last_termination is not None or self.running

    def launch(self, argv: list[str], env: dict[str, str], cwd: str) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=cwd,
            )
        self.started_at, self.started_mono = now(), time.monotonic()
        self.exit_code, self.ready, self.waiting, self._kill_message = None, False, None, ""
        self.liveness_failures = 0
        delay = float((self.spec.get("livenessProbe") or {}).get("initialDelaySeconds", 0))
        self.next_liveness_mono = self.started_mono + delay

    def start_failed(self, message: str) -> None:
        """Record a start that never produced a process, as a kubelet's StartError."""
        self.proc, self.exit_code = None, START_ERROR_EXIT
        self.last_exit_mono = time.monotonic()
        self.last_termination = Termination(START_ERROR_EXIT, "StartError", "", now(), message)

    def poll(self) -> int | None:
        """The exit code once the process has ended (signals as 128+n), else None."""
        if self.proc is not None and self.exit_code is None:
            code = self.proc.poll()
            if code is not None:
                self.exit_code = code if code >= 0 else 128 - code
                self.ready, self.last_exit_mono = False, time.monotonic()
                self.completed = self.init and code == 0
                reason = "Completed" if code == 0 else "Error"
                self.last_termination = Termination(
                    self.exit_code, reason, self.started_at, now(), self._kill_message
                )
        return self.exit_code

    def signal(self, sig: signal.Signals) -> None:
        if self.running and self.proc is not None:
            signal_group(self.proc.pid, sig)

    def wait_or_kill(self, deadline: float) -> None:
        """Wait for the process until `deadline` (monotonic), then SIGKILL its group."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            signal_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def kill(self, grace: float, message: str) -> None:
        """Stop the process (SIGTERM, then SIGKILL after `grace`), saying why in its status."""
        self._kill_message = message
        self.signal(signal.SIGTERM)
        self.wait_or_kill(time.monotonic() + grace)
        self.poll()

    def status(self, pod_initializing: bool, will_restart: bool) -> dict[str, Any]:
        """This container's entry in containerStatuses / initContainerStatuses."""
        last = self.last_termination
        state: dict[str, Any]
        if self.running:
            state = {"running": {"startedAt": self.started_at}}
        elif self.waiting is not None:
            state = {"waiting": {"reason": self.waiting[0], "message": self.waiting[1]}}
        elif last is None:
            initializing = pod_initializing and not self.init
            state = {
                "waiting": {"reason": "PodInitializing" if initializing else "ContainerCreating"}
            }
        elif will_restart and self.restarts >= 1:
            message = f"back-off restarting failed container {self.name}"
            state = {"waiting": {"reason": "CrashLoopBackOff", "message": message}}
        else:
            state = {"terminated": last.as_state()}
        status: dict[str, Any] = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "ready": self.completed if self.init else self.ready,
            "started": self.running,
            "restartCount": self.restarts,
            "state": state,
        }
        if self.proc is not None:
            status["containerID"] = f"process://{self.proc.pid}"
        if last is not None and "terminated" not in state and (self.running or self.restarts):
            status["lastState"] = {"terminated": last.as_state()}
        return status


def signal_group(pid: int, sig: signal.Signals, group: bool = True) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
