"""vLLM model pods for real: `engine: auto` on a GPU-class node runs the vLLM engine.

The test bed's `proc-gpu-0` (tests/cluster/fleet.yaml) looks like a GPU node
to the scheduler and the operator (`nvidia.com/gpu.present=true`, one
`nvidia.com/gpu`) and its process kubelet runs Pods with the vLLM CPU build
(.venv-vllm) on this host's CPU. So the chart's operator plans vLLM for a
SmallModel that may use it, the real scheduler binds the pod there, the
`fetch-model` init container turns the packaged GGUF into a Hugging Face
folder (a link to the per-machine conversion cache when `make vllm-model` has
filled it), and `edgefleet-server --engine vllm` answers at the pod's
EndpointSlice address.

Needs `make vllm-env` (and, for a quick init container, `make vllm-model`):
`make test` builds both first. Without .venv-vllm these tests fail, never skip.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from edgefleet.v1 import inference_pb2_grpc as pb_grpc
from tests.cluster import fleet, testbed
from tests.controlplane.helpers import Cluster, wait_for
from tests.controlplane.operator_support import condition, listing, pods, smallmodel
from tests.support.prompts import SIMPLE
from tests.support.routing import ask

pytestmark = pytest.mark.controlplane

T = TypeVar("T")
GPU_NODE = "proc-gpu-0"
CPU_NODE = "proc-0"
VLLM_VENV = fleet.REPO_ROOT / ".venv-vllm"
# The process node's taint, and the GPU one that keeps other process pods off proc-gpu-0.
PLACEMENT = {
    "nodeSelector": {"edgefleet.io/runtime": "process"},
    "tolerations": [
        {"key": "edgefleet.io/process", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    ],
}
# vLLM's engine start takes ~1-2 min on this 2-core machine, more while other work runs.
START_TIMEOUT_S = 600
# Each Generate: a few tokens, but the 2 cores may be busy with other tests.
ASK_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def vllm_node(release: Cluster) -> Cluster:
    """The test bed with proc-gpu-0 Ready; fails (never skips) without the vLLM environment."""
    if not release.testbed:
        pytest.skip("needs the Docker-free test bed's process kubelet")
    missing = [
        name
        for name in ("bin/python", "bin/edgefleet-server", "bin/edgefleet-fetch-model")
        if not (VLLM_VENV / name).exists()
    ]
    if missing:
        pytest.fail(
            f"{VLLM_VENV} lacks {', '.join(missing)}: run `make vllm-env` "
            "(proc-gpu-0's pods run the vLLM CPU build from it)",
            pytrace=False,
        )
    # A test bed started before fleet.yaml had proc-gpu-0 gets it now; a fresh one has it.
    testbed.add_process_nodes()
    wait_for(
        f"{GPU_NODE} Ready",
        lambda: testbed.nodes_ready(release.kubeconfig, {GPU_NODE}),
        60,
    )
    return release


def _pod_log(node: str, pod: dict[str, Any], container: str) -> Path:
    folder = testbed.paths().kubelets / node / pod["metadata"]["uid"]
    return folder / ("container.log" if container == "server" else f"init-{container}.log")


def _tail(path: Path, lines: int = 25) -> str:
    if not path.exists():
        return f"(no log at {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _wait_with_logs(
    cluster: Cluster, namespace: str, selector: str, what: str, probe: Callable[[], T | None]
) -> T:
    """wait_for, but a timeout shows the model pods' state and their logs' tails."""
    try:
        return wait_for(what, probe, START_TIMEOUT_S, interval=1)
    except TimeoutError as exc:
        report = [str(exc)]
        for pod in pods(cluster, namespace, selector):
            node = pod["spec"].get("nodeName", "")
            report.append(f"--- pod {pod['metadata']['name']} on {node or '(unscheduled)'}")
            report.append(json.dumps(pod.get("status", {}), indent=1)[-3000:])
            if node:
                for container in ("fetch-model", "server"):
                    log = _pod_log(node, pod, container)
                    report.append(f"--- {container}: {log}\n{_tail(log)}")
        raise AssertionError("\n".join(report)) from None


def _terminated(pod: dict[str, Any], init_container: str) -> dict[str, Any] | None:
    for status in (pod.get("status") or {}).get("initContainerStatuses") or []:
        if status["name"] == init_container:
            state = status.get("state", {}).get("terminated") or {}
            return state if state.get("exitCode") == 0 else None
    return None


def _ready(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    """The SmallModel once Ready=True for its current generation, else None."""
    model = cluster.get("smallmodel", name, namespace)
    found = condition(model, "Ready")
    generation = (model or {}).get("metadata", {}).get("generation")
    if found.get("status") == "True" and found.get("observedGeneration") == generation:
        return model
    return None


def _seconds(start: str, end: str) -> float:
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return time.mktime(time.strptime(end, fmt)) - time.mktime(time.strptime(start, fmt))


def _grpc_endpoints(cluster: Cluster, namespace: str, service: str) -> dict[str, str]:
    """Ready gRPC addresses in the Service's EndpointSlices, by the pod that holds each."""
    slices = listing(cluster, "endpointslices", namespace, f"kubernetes.io/service-name={service}")
    return {
        f"{address}:{port['port']}": endpoint["targetRef"]["name"]
        for item in slices
        for port in item.get("ports") or []
        if port.get("name") == "grpc"
        for endpoint in item.get("endpoints") or []
        if (endpoint.get("conditions") or {}).get("ready")
        for address in endpoint["addresses"]
    }


def _server_cmdline(pod: dict[str, Any]) -> str:
    """The running server process's command line (the kubelet reports process://<pid>)."""
    status = next(s for s in pod["status"]["containerStatuses"] if s["name"] == "server")
    pid = status["containerID"].removeprefix("process://")
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.mark.timeout(START_TIMEOUT_S + 300)
def test_auto_engine_runs_vllm_for_real_on_the_gpu_class_node(
    vllm_node: Cluster, namespace: str
) -> None:
    cluster = vllm_node
    started = time.monotonic()
    cluster.apply(
        smallmodel("gpu", engine="auto", replicas=1, placement=PLACEMENT), namespace=namespace
    )
    selector = "edgefleet.io/model=gpu"

    # One replica, one eligible GPU node (proc-0 is the eligible CPU node): all vLLM.
    wait_for(
        "the operator's Deployment",
        lambda: listing(cluster, "deployments", namespace, selector),
        120,
    )
    deployments = listing(cluster, "deployments", namespace, selector)
    assert [d["metadata"]["name"] for d in deployments] == ["gpu-vllm"]

    # The real scheduler binds it to the GPU-class process node.
    pod = wait_for(
        "the vLLM pod bound to a node",
        lambda: next(
            (p for p in pods(cluster, namespace, selector) if p["spec"].get("nodeName")), None
        ),
        120,
    )
    assert pod["spec"]["nodeName"] == GPU_NODE
    assert pod["spec"]["containers"][0]["args"][:2] == ["--engine", "vllm"]
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["spec"]["initContainers"][0]["args"][:2] == ["--source", "builtin://smollm2-135m"]

    # fetch-model turns the packaged GGUF into a Hugging Face folder (cached per machine).
    fetched = _wait_with_logs(
        cluster, namespace, selector, "fetch-model to finish",
        lambda: _terminated(cluster.get("pod", pod["metadata"]["name"], namespace), "fetch-model"),
    )  # fmt: skip
    fetch_log = _pod_log(GPU_NODE, pod, "fetch-model").read_text()
    assert "ready: /var/lib/edgefleet/models/hf" in fetch_log, fetch_log
    fetch_s = _seconds(fetched["startedAt"], fetched["finishedAt"])
    cached = "using the conversion cached" in fetch_log

    ready = _wait_with_logs(
        cluster, namespace, selector, "SmallModel gpu Ready",
        lambda: _ready(cluster, namespace, "gpu"),
    )  # fmt: skip
    ready_s = time.monotonic() - started
    assert ready["status"]["engines"] == {
        "vllm": {"desired": 1, "ready": 1, "workload": "Deployment/gpu-vllm"}
    }
    assert ready["status"]["endpoints"] == 1
    pod = cluster.get("pod", pod["metadata"]["name"], namespace)
    # The vLLM environment's server, as the node's PATH says.
    assert f"{VLLM_VENV}/bin/edgefleet-server --engine vllm" in _server_cmdline(pod)

    endpoints = _grpc_endpoints(cluster, namespace, "gpu")
    assert list(endpoints.values()) == [pod["metadata"]["name"]]
    (address,) = endpoints
    assert address.startswith("10.244.2.")  # proc-gpu-0's podCIDR
    with grpc.insecure_channel(address) as channel:
        asked = time.monotonic()
        response, _ = ask(pb_grpc.InferenceStub(channel), SIMPLE, timeout=ASK_TIMEOUT_S)
        ask_s = time.monotonic() - asked
    assert "paris" in response.text.lower(), response.text
    assert response.served_by.engine == "vllm"
    serving = re.search(
        r"serving gpu with vllm .* after ([0-9.]+)s", _pod_log(GPU_NODE, pod, "server").read_text()
    )
    assert serving, "the server's log does not say it serves on vLLM"
    print(
        f"\nvLLM pod on {GPU_NODE}: fetch-model {fetch_s:.0f}s "
        f"({'cached conversion linked' if cached else 'converted'}), "
        f"engine start {serving.group(1)}s, SmallModel Ready {ready_s:.0f}s after apply, "
        f"first answer {ask_s:.1f}s: "
        f"{response.text!r}"
    )


@pytest.mark.timeout(START_TIMEOUT_S + 300)
def test_two_replicas_run_vllm_on_the_gpu_node_and_llamacpp_on_the_cpu_node_behind_one_service(
    vllm_node: Cluster, namespace: str
) -> None:
    cluster = vllm_node
    started = time.monotonic()
    cluster.apply(
        smallmodel("mixed", engine="auto", replicas=2, placement=PLACEMENT), namespace=namespace
    )
    selector = "edgefleet.io/model=mixed"
    # vLLM's start is the long part; an earlier test's vLLM pod may still hold the GPU.
    ready = _wait_with_logs(
        cluster, namespace, selector, "SmallModel mixed Ready",
        lambda: _ready(cluster, namespace, "mixed"),
    )  # fmt: skip
    ready_s = time.monotonic() - started
    assert ready["status"]["engines"] == {
        "vllm": {"desired": 1, "ready": 1, "workload": "Deployment/mixed-vllm"},
        "llamacpp": {"desired": 1, "ready": 1, "workload": "Deployment/mixed-llamacpp"},
    }
    placed = {
        p["metadata"]["labels"]["edgefleet.io/engine"]: p
        for p in pods(cluster, namespace, selector)
    }
    assert placed["vllm"]["spec"]["nodeName"] == GPU_NODE
    assert placed["llamacpp"]["spec"]["nodeName"] == CPU_NODE

    # One Service for both engines: its EndpointSlice lists both pods.
    assert [s["metadata"]["name"] for s in listing(cluster, "services", namespace, selector)] == [
        "mixed"
    ]
    endpoints = _grpc_endpoints(cluster, namespace, "mixed")
    assert sorted(endpoints.values()) == sorted(p["metadata"]["name"] for p in placed.values())
    # No kube-proxy: a client of the Service uses its EndpointSlice addresses, as the router does.
    engines = {}
    for address, pod_name in endpoints.items():
        with grpc.insecure_channel(address) as channel:
            response, _ = ask(pb_grpc.InferenceStub(channel), SIMPLE, timeout=ASK_TIMEOUT_S)
        assert "paris" in response.text.lower(), (pod_name, response.text)
        engines[response.served_by.engine] = pod_name
    assert engines == {
        "vllm": placed["vllm"]["metadata"]["name"],
        "llamacpp": placed["llamacpp"]["metadata"]["name"],
    }
    print(f"\nmixed SmallModel (vLLM on {GPU_NODE}, llama.cpp on {CPU_NODE}) Ready {ready_s:.0f}s")
