"""`make demo`: start a model server on the packaged SmolLM2 and stream answers.

Shows the whole data plane a newcomer will use: the server's start-up, its
health turning SERVING, and answers streamed through the `edgefleet` CLI.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import grpc

from edgefleet.serving.readiness import NotServing, free_local_port, wait_until_serving

# Fixed sampling so the demo shows the same answers every time: a 135M model
# answers facts well greedily, and lists better with a little temperature.
QUESTIONS = (
    ("What is the capital of France?", ("--temperature", "0")),
    ("Name three planets in our solar system.", ("--temperature", "0.2", "--seed", "1")),
)
START_TIMEOUT_S = 120.0


def cli(target: str, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "edgefleet.serving.cli", "--target", target, *args], check=True
    )


def main() -> None:
    target = f"127.0.0.1:{free_local_port()}"
    print(f"==> starting edgefleet-server on {target} with the packaged SmolLM2-135M-Instruct")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgefleet.serving.server",
            "--listen",
            target,
            "--metrics-listen",
            f"127.0.0.1:{free_local_port()}",
        ],
    )
    try:
        with grpc.insecure_channel(target) as channel:
            wait_until_serving(channel, START_TIMEOUT_S)
        print("==> health: SERVING")
        for question, sampling in QUESTIONS:
            print(f"\n==> edgefleet generate {question!r} {' '.join(sampling)}")
            cli(target, "generate", question, "--max-tokens", "96", *sampling)
        print("\n==> edgefleet models")
        cli(target, "models")
    except NotServing as exc:
        raise SystemExit(f"the server did not start: {exc}") from exc
    finally:
        print("\n==> stopping the server (SIGTERM drains in-flight requests)")
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
