"""vLLM model pods for real: `engine: auto` on a GPU-class node runs the vLLM engine.

The test bed's `real-gpu-0` (tests/cluster/realnode_join.py) is a real node that
looks like a GPU node to the scheduler and the operator (`nvidia.com/gpu.present=true`,
one `nvidia.com/gpu` advertised) and runs the vLLM image (inference-server/Dockerfile.vllm,
vLLM's CPU build) on this host's CPU. So the chart's operator plans vLLM for a
SmallModel that may use it, the real scheduler binds the pod there, the `fetch-model`
init container turns the packaged GGUF into a Hugging Face folder, and
`edgefleet-server --engine vllm` answers at the pod's address; `real-0` is the CPU node.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import pytest

from edgefleet.v1 import inference_pb2_grpc as pb_grpc
from tests.cluster import realnode_join
from tests.controlplane.helpers import Cluster, wait_for
from tests.controlplane.operator_support import REAL_NODE, condition, listing, pods, smallmodel
from tests.support.prompts import SIMPLE
from tests.support.routing import ask

pytestmark = pytest.mark.controlplane

T = TypeVar("T")
GPU_NODE = realnode_join.REAL_NODES[1].name
# Both real nodes (the label every real node carries) and their taint.
PLACEMENT = {
    "nodeSelector": dict([realnode_join.REAL_LABEL]),
    "tolerations": realnode_join.placement(GPU_NODE)["tolerations"],
}
# vLLM's engine start takes ~1-2 min on this 2-core machine, more while other work runs.
START_TIMEOUT_S = 600
# Each Generate: a few tokens, but the 2 cores may be busy with other tests.
ASK_TIMEOUT_S = 120


@pytest.fixture
def vllm_node(release: Cluster, gpu_node: str) -> Cluster:
    """The release, with the GPU-class real node joined."""
    return release


def _log(cluster: Cluster, pod: dict[str, Any], container: str, lines: int | None = None) -> str:
    args = ["logs", "-n", pod["metadata"]["namespace"], pod["metadata"]["name"], "-c", container]
    result = cluster.kubectl(*args, *([f"--tail={lines}"] if lines else []), check=False)
    return result.stdout or result.stderr


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
                    report.append(f"--- {container}:\n{_log(cluster, pod, container, 25)}")
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


def _server_cmdline(cluster: Cluster, pod: dict[str, Any]) -> str:
    """The server container's main process's command line (`kubectl exec`)."""
    namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    out = cluster.kubectl("exec", "-n", namespace, name, "-c", "server", "--",
                          "cat", "/proc/1/cmdline").stdout  # fmt: skip
    return out.replace("\0", " ")


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

    # One replica, one eligible GPU node (real-0 is the eligible CPU node): all vLLM.
    wait_for(
        "the operator's Deployment",
        lambda: listing(cluster, "deployments", namespace, selector),
        120,
    )
    deployments = listing(cluster, "deployments", namespace, selector)
    assert [d["metadata"]["name"] for d in deployments] == ["gpu-vllm"]

    # The real scheduler binds it to the GPU-class real node.
    pod = wait_for(
        "the vLLM pod bound to a node",
        lambda: next(
            (p for p in pods(cluster, namespace, selector) if p["spec"].get("nodeName")), None
        ),
        120,
    )
    assert pod["spec"]["nodeName"] == GPU_NODE
    assert pod["spec"]["containers"][0]["image"].split("/")[-1].startswith("edgefleet-vllm:")
    assert pod["spec"]["containers"][0]["args"][:2] == ["--engine", "vllm"]
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["spec"]["initContainers"][0]["args"][:2] == ["--source", "builtin://smollm2-135m"]

    # fetch-model turns the packaged GGUF into a Hugging Face folder.
    fetched = _wait_with_logs(
        cluster, namespace, selector, "fetch-model to finish",
        lambda: _terminated(cluster.get("pod", pod["metadata"]["name"], namespace), "fetch-model"),
    )  # fmt: skip
    fetch_log = _log(cluster, pod, "fetch-model")
    assert "ready: /var/lib/edgefleet/models/hf" in fetch_log, fetch_log
    fetch_s = _seconds(fetched["startedAt"], fetched["finishedAt"])

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
    # The vLLM image's server is the container's main process.
    assert "edgefleet-server --engine vllm" in _server_cmdline(cluster, pod)

    endpoints = _grpc_endpoints(cluster, namespace, "gpu")
    assert list(endpoints.values()) == [pod["metadata"]["name"]]
    (address,) = endpoints
    # real-gpu-0's podCIDR
    assert ipaddress.ip_address(address.rsplit(":", 1)[0]) in realnode_join.pod_range(1)
    with grpc.insecure_channel(address) as channel:
        asked = time.monotonic()
        response, _ = ask(pb_grpc.InferenceStub(channel), SIMPLE, timeout=ASK_TIMEOUT_S)
        ask_s = time.monotonic() - asked
    assert "paris" in response.text.lower(), response.text
    assert response.served_by.engine == "vllm"
    serving = re.search(r"serving gpu with vllm .* after ([0-9.]+)s", _log(cluster, pod, "server"))
    assert serving, "the server's log does not say it serves on vLLM"
    print(
        f"\nvLLM pod on {GPU_NODE}: fetch-model {fetch_s:.0f}s, "
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
    assert placed["llamacpp"]["spec"]["nodeName"] == REAL_NODE

    # One Service for both engines: its EndpointSlice lists both pods.
    assert [s["metadata"]["name"] for s in listing(cluster, "services", namespace, selector)] == [
        "mixed"
    ]
    endpoints = _grpc_endpoints(cluster, namespace, "mixed")
    assert sorted(endpoints.values()) == sorted(p["metadata"]["name"] for p in placed.values())
    # Each pod by its EndpointSlice address, as the router does.
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
    print(f"\nmixed SmallModel (vLLM on {GPU_NODE}, llama.cpp on {REAL_NODE}) Ready {ready_s:.0f}s")
