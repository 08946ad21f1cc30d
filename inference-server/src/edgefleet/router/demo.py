"""`make demo-router`: the hybrid router alone, on this machine, with no cluster and no download.

Starts four processes on loopback: a local model server (edgefleet-server on
the packaged SmolLM2), a stand-in for the cloud LLM (the OpenAI-compatible
`llama_cpp.server`, here on the same small model), the egress pointing at it,
and the router in front of both with a RoutingPolicy file (by default the
checkout's examples/routingpolicy.yaml, read from the working directory). Then asks
three questions through the `edgefleet` CLI and shows where each went and why:
a simple one answered locally, a hard one sent to the cloud, and one with an
e-mail address that is kept local however hard it is.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc

from edgefleet.serving.model_files import resolve_model
from edgefleet.serving.readiness import NotServing, free_local_port, wait_until_serving

DEFAULT_POLICY = Path("examples") / "routingpolicy.yaml"
QUESTIONS = (
    ("a simple question", "What is the capital of France?"),
    (
        "a hard question",
        "Prove that for every prime p > 3, p squared minus 1 is divisible by 24, "
        "and explain each step of the argument.",
    ),
    (
        "a private one",
        "My colleague anna.schmidt@example.com asked me: prove that for every prime p > 3, "
        "p squared minus 1 is divisible by 24, explaining each step of the argument.",
    ),
)
START_TIMEOUT_S = 120.0
STAND_IN_KEY = "demo-key"


def _start(name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    log = open(Path(tempfile.gettempdir()) / f"edgefleet-demo-{name}.log", "w")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )


def _wait_grpc(target: str, name: str) -> None:
    with grpc.insecure_channel(target) as channel:
        try:
            wait_until_serving(channel, START_TIMEOUT_S)
        except NotServing as exc:
            raise SystemExit(f"{name} did not start ({exc}); see its log in /tmp") from exc


def _wait_http(url: str, process: subprocess.Popen) -> None:
    """The stand-in has no gRPC health: ask for its model list until it answers."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {STAND_IN_KEY}"})
    for _ in range(int(START_TIMEOUT_S / 0.25)):
        if process.poll() is not None:
            raise SystemExit("the cloud stand-in exited; see /tmp/edgefleet-demo-cloud.log")
        with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=1):
            return
        # A readiness probe, as a kubelet does: the stand-in offers nothing to wait on.
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=0.25)
    raise SystemExit("the cloud stand-in did not answer in time")


@contextlib.contextmanager
def _processes() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    try:
        yield started
    finally:
        print("\n==> stopping (SIGTERM: each server drains its in-flight requests)")
        for process in reversed(started):
            process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


def cli(target: str, *args: str) -> None:
    command = [sys.executable, "-m", "edgefleet.serving.cli", "--target", target, *args]
    subprocess.run(command, check=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m edgefleet.router.demo", description=__doc__)
    parser.add_argument(
        "--policy", type=Path, default=DEFAULT_POLICY, help="RoutingPolicy YAML (%(default)s)"
    )
    policy = parser.parse_args(argv).policy
    if not policy.is_file():
        parser.error(f"no policy file at {policy}: run from a checkout or pass --policy FILE")
    # Keep this script's lines in order with the CLI's when piped.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    ports = {name: free_local_port() for name in ("local", "cloud", "egress", "router", "http")}
    local, egress, router = (f"127.0.0.1:{ports[n]}" for n in ("local", "egress", "router"))
    audit = Path(tempfile.gettempdir()) / "edgefleet-demo-audit.jsonl"
    audit.unlink(missing_ok=True)
    model = resolve_model("default", None).path
    with _processes() as started:
        print(f"==> local model server (edgefleet-server, SmolLM2-135M) on {local}")
        started.append(_start("local", ["-m", "edgefleet.serving.server", "--listen", local,
                                         "--metrics-listen", ""]))  # fmt: skip
        print(f"==> cloud stand-in (python -m llama_cpp.server) on 127.0.0.1:{ports['cloud']}")
        cloud = _start("cloud", [
            "-m", "llama_cpp.server", "--model", str(model), "--model_alias", "cloud-llm",
            "--host", "127.0.0.1", "--port", str(ports["cloud"]), "--api_key", STAND_IN_KEY,
        ])  # fmt: skip
        started.append(cloud)
        print(f"==> egress (the only way out, audited to {audit}) on {egress}")
        started.append(_start("egress", [
            "-m", "edgefleet.egress.main", "--listen", egress, "--metrics-listen", "",
            "--base-url", f"http://127.0.0.1:{ports['cloud']}/v1", "--cloud-model", "cloud-llm",
            "--policy-file", str(policy), "--audit-log", str(audit),
        ], env={"EDGEFLEET_CLOUD_API_KEY": STAND_IN_KEY}))  # fmt: skip
        _wait_http(f"http://127.0.0.1:{ports['cloud']}/v1/models", cloud)
        _wait_grpc(local, "the local server")
        _wait_grpc(egress, "the egress")
        # The router starts last: its first poll then finds both backends ready.
        print(f"==> router with {policy.name} on {router} (OpenAI HTTP on :{ports['http']})")
        started.append(_start("router", [
            "-m", "edgefleet.router.main", "--listen", router, "--metrics-listen", "",
            "--http-listen", f"127.0.0.1:{ports['http']}", "--policy-file", str(policy),
            "--local", local, "--cloud", egress,
        ]))  # fmt: skip
        _wait_grpc(router, "the router")
        print("==> all SERVING")
        for label, question in QUESTIONS:
            print(f"\n==> {label}: edgefleet --target {router} generate {question!r}")
            cli(router, "generate", question, "--max-tokens", "64", "--temperature", "0")
        print(f"\n==> what the egress audited ({audit.name}: no prompt, only its hash)")
        for line in audit.read_text().splitlines():
            record = json.loads(line)
            print(
                f"    {record['outcome']} tokens={record['prompt_tokens']}+"
                f"{record['completion_tokens']} prompt_sha256={record['prompt_sha256'][:16]}…"
            )


if __name__ == "__main__":
    main()
