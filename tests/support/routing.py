"""The hybrid routing stack as real processes: local server, egress, router.

Each piece is the production entry point started as a subprocess
(`edgefleet.serving.server`, `edgefleet.egress.main`, `edgefleet.router.main`);
the cloud is `tests.support.cloud`.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from edgefleet.serving.readiness import free_local_port
from edgefleet.v1 import inference_pb2 as pb
from tests.support.cloud import STAND_IN_API_KEY, STAND_IN_MODEL
from tests.support.model_server import ModelServer, spawn_server

SYSTEM = "You are a helpful assistant. Answer briefly."


def write_atomically(path: Path, document: Any) -> None:
    """Replace a file in one step, as the kubelet swaps a ConfigMap's files."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(document))
    temporary.replace(path)


def start_egress(cloud_base_url: str, audit_log: Path, *extra: str) -> ModelServer:
    egress = spawn_server(
        "--base-url", cloud_base_url,
        "--cloud-model", STAND_IN_MODEL,
        "--audit-log", str(audit_log),
        "--retry-backoff-s", "0.05",
        "--timeout-s", "60",
        *extra,
        module="edgefleet.egress.main",
        env={"EDGEFLEET_CLOUD_API_KEY": STAND_IN_API_KEY},
    )  # fmt: skip
    egress.wait_serving()
    return egress


@dataclass
class Router:
    server: ModelServer
    http_url: str
    policy_path: Path

    @property
    def stub(self):
        return self.server.stub

    def set_policy(self, spec: dict[str, Any]) -> None:
        write_atomically(self.policy_path, {"kind": "RoutingPolicy", "spec": spec})

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples that carry these labels (0 when none)."""
        wanted = {f'{key}="{value}"' for key, value in labels.items()}
        total = 0.0
        with urllib.request.urlopen(self.server.metrics_url, timeout=5) as reply:
            for line in reply.read().decode().splitlines():
                series, _, value = line.rpartition(" ")
                metric, _, label_text = series.partition("{")
                if metric == name and wanted <= set(label_text.rstrip("}").split(",")):
                    total += float(value)
        return total


def start_router(
    tmp_path: Path, spec: dict[str, Any], local: list[str], cloud: str | None, *extra: str
) -> Router:
    policy_path = tmp_path / f"policy-{free_local_port()}.json"
    write_atomically(policy_path, {"kind": "RoutingPolicy", "metadata": {"name": tmp_path.name},
                                   "spec": spec})  # fmt: skip
    http = f"127.0.0.1:{free_local_port()}"
    args = ["--policy-file", str(policy_path), "--http-listen", http, "--poll-interval-s", "0.2"]
    args += ["--local", ",".join(local)]
    if cloud:
        args += ["--cloud", cloud]
    server = spawn_server(*args, *extra, module="edgefleet.router.main")
    server.wait_serving()
    return Router(server, f"http://{http}/v1", policy_path)


@contextlib.contextmanager
def running_router(
    tmp_path: Path,
    spec: dict[str, Any],
    local: list[str],
    cloud: str | None,
    *extra: str,
    wait_ready: bool = True,
) -> Iterator[Router]:
    """A router; with wait_ready, once it has seen every backend ready."""
    router = start_router(tmp_path, spec, local, cloud, *extra)
    try:
        if wait_ready:
            count = len(local) + (1 if cloud else 0)
            wait_for(lambda: backends_seen(router, count), 30, "every backend ready")
        yield router
    finally:
        router.server.stop()


def backends_seen(router: Router, count: int) -> bool:
    """The router has polled `count` backends and each is ready."""
    with urllib.request.urlopen(router.server.metrics_url, timeout=5) as reply:
        lines = [
            line
            for line in reply.read().decode().splitlines()
            if line.startswith("edgefleet:router_backend_ready{")
        ]
    return len(lines) >= count and all(line.endswith(" 1.0") for line in lines)


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str = "condition") -> None:
    """Wait for a condition another process brings about (a reload, a poll); bounded."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout_s}s")
        time.sleep(0.05)


def ask(
    stub: Any,
    prompt: str,
    max_tokens: int = 16,
    sensitive: bool = False,
    timeout: float = 300,
    **sampling: Any,
) -> tuple[pb.GenerateResponse, dict[str, str]]:
    """One unary Generate; returns the response and its trailing metadata."""
    request = pb.GenerateRequest(
        messages=[pb.ChatMessage(role="system", content=SYSTEM),
                  pb.ChatMessage(role="user", content=prompt)],
        sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0.0, **sampling),
    )  # fmt: skip
    if sensitive:
        request.routing.sensitivity = pb.SENSITIVITY_SENSITIVE
    response, call = stub.Generate.with_call(request, timeout=timeout)
    return response, dict(call.trailing_metadata() or ())


def ask_or_error(stub: Any, prompt: str, **kwargs: Any) -> tuple[str, str, str]:
    """(target, reason, status code name) of one request, whether it succeeded or not."""
    try:
        response, _ = ask(stub, prompt, **kwargs)
    except grpc.RpcError as error:
        trailers = dict(error.trailing_metadata() or ())
        return (
            trailers.get("x-edgefleet-route", ""),
            trailers.get("x-edgefleet-route-reason", ""),
            error.code().name,
        )
    return response.route.target, response.route.reason, "OK"


def audit_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
