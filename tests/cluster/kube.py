"""Small helpers to run kubectl, helm and friends from the cached binaries."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tests.cluster import versions

T = TypeVar("T")


class CommandError(RuntimeError):
    """A test-bed command failed; the message carries its stderr."""


def binary(name: str) -> str:
    return str(versions.bin_dir() / name)


def run(
    name: str,
    *args: str,
    kubeconfig: Path | str | None = None,
    stdin: str | None = None,
    check: bool = True,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run a cached binary (kubectl, helm, kwokctl, grpcurl) and capture its output."""
    env = dict(os.environ)
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    proc = subprocess.run(
        [binary(name), *args], input=stdin, capture_output=True, text=True, env=env, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise CommandError(
            f"{name} {' '.join(args)} exited {proc.returncode}:\n{proc.stderr.strip()}"
        )
    return proc


def kubectl(*args: str, kubeconfig: Path | str, **kw: object) -> subprocess.CompletedProcess[str]:
    return run("kubectl", *args, kubeconfig=kubeconfig, **kw)  # type: ignore[arg-type]


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T:
    """Poll `probe` until it returns something truthy; raise TimeoutError naming `what`.

    The poll interval only spaces out the checks; correctness rests on the
    condition, never on the time slept.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = probe()
            if result:
                return result
        except Exception as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)
