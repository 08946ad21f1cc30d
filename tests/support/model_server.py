"""Start a real edgefleet-server process on the packaged model, for tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from edgefleet.serving.readiness import NotServing, free_local_port, wait_until_serving
from edgefleet.v1 import inference_pb2_grpc as pb_grpc

START_TIMEOUT_S = 120.0


@dataclass
class ModelServer:
    process: subprocess.Popen[bytes]
    target: str
    metrics_url: str
    log_path: Path
    #: Which engine configuration the tests asked for ("pool", "batch"), if any.
    label: str = ""
    channel: grpc.Channel = field(init=False)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(self.target)

    @property
    def stub(self) -> pb_grpc.InferenceStub:
        return pb_grpc.InferenceStub(self.channel)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_serving(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Block on the health Watch stream until the server reports SERVING."""
        try:
            wait_until_serving(self.channel, timeout_s)
        except NotServing as exc:
            raise RuntimeError(
                f"server at {self.target}: {exc}; exit code {self.process.poll()}; "
                f"log:\n{self.log()[-3000:]}"
            ) from exc

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 60.0) -> int:
        self.channel.close()
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def spawn_server(
    *args: str, env: dict[str, str] | None = None, module: str = "edgefleet.serving.server"
) -> ModelServer:
    """Start edgefleet-server (or the router or egress: `module`) with extra flags.

    Does not wait for readiness.
    """
    target = f"127.0.0.1:{free_local_port()}"
    metrics = f"127.0.0.1:{free_local_port()}"
    log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the server
        prefix=module.replace(".", "-") + "-", suffix=".log", delete=False
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            module,
            "--listen",
            target,
            "--metrics-listen",
            metrics,
            *args,
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    return ModelServer(process, target, f"http://{metrics}/metrics", Path(log_file.name))


@contextlib.contextmanager
def running_server(
    *args: str, env: dict[str, str] | None = None, module: str = "edgefleet.serving.server"
) -> Iterator[ModelServer]:
    server = spawn_server(*args, env=env, module=module)
    try:
        server.wait_serving()
        yield server
    finally:
        server.stop()
