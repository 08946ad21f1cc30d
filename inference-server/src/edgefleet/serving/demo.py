"""`make demo`: start a model server on the packaged SmolLM2 and stream an answer.

Shows the whole data plane a newcomer will use: the server's start-up, its
health turning SERVING, and an answer streamed through the `edgefleet` CLI.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

QUESTIONS = ("What is the capital of France?", "Give me two tips for staying focused.")
START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_serving(target: str, server: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"the server exited with code {server.returncode}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2, wait_for_ready=True)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)  # polling the health endpoint, not synchronising a test
    raise SystemExit(f"the server was not SERVING within {timeout_s:.0f}s")


def main() -> None:
    target = f"127.0.0.1:{free_port()}"
    print(f"==> starting edgefleet-server on {target} with the packaged SmolLM2-135M-Instruct")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgefleet.serving.server",
            "--listen",
            target,
            "--metrics-listen",
            f"127.0.0.1:{free_port()}",
        ],
    )
    try:
        wait_serving(target, server, START_TIMEOUT_S)
        print("==> health: SERVING")
        for question in QUESTIONS:
            print(f"\n==> edgefleet generate {question!r}")
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "edgefleet.serving.cli",
                    "--target",
                    target,
                    "generate",
                    question,
                    "--max-tokens",
                    "96",
                    "--temperature",
                    "0",
                ],
                check=True,
            )
        print("\n==> edgefleet models")
        subprocess.run(
            [sys.executable, "-m", "edgefleet.serving.cli", "--target", target, "models"],
            check=True,
        )
    finally:
        print("\n==> stopping the server (SIGTERM drains in-flight requests)")
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
