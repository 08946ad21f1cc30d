"""A real node in the shared test bed: Pods bound through the API server run as
containers under kubelet + containerd + runc, from images built by images/build.py.

The node (tests/cluster/realnode_join.py) joins the running test bed beside kwok's
and the process kubelet's nodes; everything here reaches it the way a cluster would:
the scheduler places Pods on it, `kubectl logs`/`exec` go through the API server to
its kubelet, and the host reaches its pods over the test bed's bridge.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from edgefleet.v1 import inference_pb2_grpc as pb_grpc
from tests.cluster import network, realnode, realnode_join
from tests.controlplane.conftest import CHART, RELEASE, RELEASE_NAMESPACE, TESTBED_VALUES
from tests.controlplane.helpers import Cluster, wait_for
from tests.controlplane.operator_support import condition, pods, smallmodel, wait_condition
from tests.controlplane.test_operator_e2e import (
    PLANTED_EMAIL,
    POLICY,
    PRIVATE,
    apply_hybrid,
    backends_ready,
    ready_addresses,
)
from tests.support.cloud import RecordingProxy
from tests.support.prompts import COMPLEX, SIMPLE
from tests.support.routing import ask

# The first test also builds the CPU image when its inputs changed (a cold build takes
# minutes, as in tests/images) and imports it into the node.
pytestmark = [pytest.mark.controlplane, pytest.mark.timeout(900)]

REAL = realnode_join.REAL_NODES[0]
ON_THE_REAL_NODE = {
    "nodeSelector": {"kubernetes.io/hostname": REAL.name},
    "tolerations": [
        {"key": realnode_join.REAL_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}
    ],
}


@pytest.fixture(scope="module")
def real_node(cluster: Cluster) -> Iterator[realnode.RealNode]:
    if not cluster.testbed:
        pytest.skip("a real node joins only the Docker-free test bed")
    (node,) = realnode_join.up((REAL,))
    yield node
    left = realnode_join.down((REAL,))
    assert not left, f"the real node left behind: {left}"


def _ready_pod(cluster: Cluster, namespace: str, name: str, timeout: float) -> dict[str, Any]:
    return wait_for(
        f"pod {namespace}/{name} Ready",
        lambda: (lambda pod: pod if pod and realnode.pod_ready(pod) else None)(
            cluster.get("pod", name, namespace)
        ),
        timeout,
    )


def _process_status(
    cluster: Cluster, namespace: str, pod: str, container: str, cat: tuple[str, ...] = ("cat",)
) -> dict[str, str]:
    """/proc/1/status of the container, read through `kubectl exec` (API server → kubelet)."""
    status = cluster.kubectl(
        "exec", "-n", namespace, pod, "-c", container, "--", *cat, "/proc/1/status"
    ).stdout
    return {k: v.strip() for k, v in (line.split(":", 1) for line in status.splitlines())}


def test_a_pod_bound_through_the_api_runs_as_a_container_with_logs_and_exec(
    testbed_cluster: Cluster, real_node: realnode.RealNode, namespace: str
) -> None:
    web = realnode.web_pod(name=f"web-{uuid.uuid4().hex[:6]}", host_port=None)
    web["metadata"]["namespace"] = namespace
    web["spec"].update(ON_THE_REAL_NODE)
    testbed_cluster.apply(web)
    pod = _ready_pod(testbed_cluster, namespace, web["metadata"]["name"], timeout=120)

    assert pod["spec"]["nodeName"] == REAL.name
    assert pod["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")
    pod_ip = pod["status"]["podIP"]
    assert ipaddress.ip_address(pod_ip) in real_node.pod_cidr
    # The host reaches the pod over the bridge, through the node's route.
    with urllib.request.urlopen(f"http://{pod_ip}:8080/", timeout=5) as response:
        assert response.read().decode() == "edgefleet real node\n"

    # `kubectl logs` (API server → the node's kubelet) shows the host's request above,
    # from the bridge address, next to the kubelet's probes from the node's gateway.
    name = web["metadata"]["name"]
    host_request = f"[::ffff:{network.API_ADDRESS}]"
    wait_for(
        "the host's request in `kubectl logs`",
        lambda: host_request in testbed_cluster.kubectl("logs", "-n", namespace, name).stdout,
        30,
    )
    fields = _process_status(testbed_cluster, namespace, name, "httpd", cat=("/bin/busybox", "cat"))
    assert fields["Uid"].split()[0] == "10001"
    assert int(fields["CapEff"], 16) == 0


def test_a_pod_on_a_real_node_reaches_a_clusterip_service_through_kube_proxy(
    testbed_cluster: Cluster, real_node: realnode.RealNode, namespace: str
) -> None:
    web = realnode.web_pod(name=f"web-{uuid.uuid4().hex[:6]}", host_port=None)
    name = web["metadata"]["name"]
    web["metadata"]["namespace"] = namespace
    web["spec"].update(ON_THE_REAL_NODE)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    testbed_cluster.apply(web, service)
    _ready_pod(testbed_cluster, namespace, name, timeout=120)
    cluster_ip = testbed_cluster.get("service", name, namespace)["spec"]["clusterIP"]
    assert ipaddress.ip_address(cluster_ip) in network.SERVICE_RANGE

    # The pod asks its own Service: kube-proxy's nftables rules in the node's namespace
    # translate the ClusterIP to the pod's address (and masquerade the hairpin back).
    # busybox's nc: Debian's static busybox wget dies with SIGSEGV in these containers.
    request = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc -w 3 {cluster_ip} 80"

    def fetched() -> str | None:
        out = testbed_cluster.kubectl(
            "exec", "-n", namespace, name, "--", "/bin/busybox", "sh", "-c", request, check=False
        )
        return out.stdout if out.returncode == 0 and out.stdout else None

    # The endpoint reaches kube-proxy through its EndpointSlice watch: a moment after Ready.
    answer = wait_for("the ClusterIP answers", fetched, 30)
    assert answer.startswith("HTTP/1.1 200 OK")
    assert answer.splitlines()[-1] == "edgefleet real node"


def test_a_smallmodel_runs_as_containers_from_the_product_image(
    release: Cluster, real_node: realnode.RealNode, namespace: str
) -> None:
    model = smallmodel("edge", engine="llamacpp", replicas=1, placement=ON_THE_REAL_NODE)
    release.apply(model, namespace=namespace)
    ready = wait_condition(release, namespace, "smallmodel", "edge", "Ready", "True", timeout=300)
    assert ready["status"]["endpoints"] == 1

    (pod,) = pods(release, namespace, "app.kubernetes.io/name=edge")
    assert pod["spec"]["nodeName"] == REAL.name
    fetch = pod["status"]["initContainerStatuses"][0]
    assert fetch["name"] == "fetch-model"
    assert fetch["state"]["terminated"]["exitCode"] == 0
    server = next(c for c in pod["status"]["containerStatuses"] if c["name"] == "server")
    assert server["ready"] is True
    assert server["imageID"], "the kubelet reports the image it ran"

    # The operator's securityContext holds inside the container.
    fields = _process_status(release, namespace, pod["metadata"]["name"], "server")
    assert fields["Uid"].split()[0] != "0"
    assert int(fields["CapEff"], 16) == 0
    assert fields["NoNewPrivs"] == "1"
    assert fields["Seccomp"] == "2"
    write = release.kubectl(
        "exec", "-n", namespace, pod["metadata"]["name"], "-c", "server", "--",
        "touch", "/opt/edgefleet/x", check=False,
    )  # fmt: skip
    assert write.returncode != 0 and "Read-only file system" in write.stderr

    # A gRPC request from the host to the pod's address answers with the model.
    with grpc.insecure_channel(f"{pod['status']['podIP']}:50051") as channel:
        response, _ = ask(pb_grpc.InferenceStub(channel), "Say hello.", timeout=120)
    assert response.text.strip()
    events = json.loads(release.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)[
        "items"
    ]
    assert any(e["reason"] == "Started" and e["source"].get("host") == REAL.name for e in events), (
        "the kubelet on the real node reports its containers"
    )


def test_a_model_whose_fetch_keeps_failing_reports_the_kubelets_crash_loop(
    release: Cluster, real_node: realnode.RealNode, namespace: str
) -> None:
    # 192.0.2.1 (TEST-NET-1): the pod has no route to it, so the download fails at
    # connect() without a packet leaving the node.
    model = smallmodel("unreachable", engine="llamacpp", replicas=1, placement=ON_THE_REAL_NODE)
    model["spec"]["source"] = {"gguf": {"uri": "http://192.0.2.1/model.gguf", "sha256": "0" * 64}}
    release.apply(model, namespace=namespace)

    def crash_looping() -> dict[str, Any] | None:
        obj = release.get("smallmodel", "unreachable", namespace)
        ready = condition(obj, "Ready")
        looping = ready.get("reason") == "ModelFetchFailed" and "CrashLoopBackOff" in ready.get(
            "message", ""
        )
        return ready if looping else None

    ready = wait_for("Ready False, ModelFetchFailed in CrashLoopBackOff", crash_looping, 180)
    # The kubelet's reason, then the fetch's own last words (its termination message).
    assert "fetch-model: CrashLoopBackOff: " in ready["message"]
    assert "192.0.2.1" in ready["message"]
    events = json.loads(release.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)
    assert any(
        e["reason"] == "BackOff" and e["source"].get("host") == REAL.name for e in events["items"]
    ), "the kubelet's BackOff event"


@pytest.fixture
def routers_on_the_real_node(release: Cluster, tmp_path: Path) -> Iterator[Cluster]:
    """The release with its routers and egresses placed on the real node; put back after."""
    values = yaml.safe_load(TESTBED_VALUES.read_text())
    for component in ("router", "egress"):
        values[component]["pod"].update(copy.deepcopy(ON_THE_REAL_NODE))
    moved = tmp_path / "values.yaml"
    moved.write_text(yaml.safe_dump(values))

    def upgrade(values_file: Path) -> None:
        release.helm(
            "upgrade", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE, "--reset-values",
            "--values", str(values_file), "--wait", "--timeout", "180s",
        )  # fmt: skip

    upgrade(moved)
    yield release
    upgrade(TESTBED_VALUES)


def test_model_router_and_egress_as_containers_answer_local_cloud_and_private(
    routers_on_the_real_node: Cluster,
    real_node: realnode.RealNode,
    namespace: str,
    cloud: RecordingProxy,
) -> None:
    release = routers_on_the_real_node
    apply_hybrid(release, namespace, cloud, placement=ON_THE_REAL_NODE)
    wait_condition(release, namespace, "routingpolicy", POLICY, "Ready", "True", timeout=300)
    on_nodes = {
        p["metadata"]["labels"].get("app.kubernetes.io/component"): p["spec"]["nodeName"]
        for p in pods(release, namespace, "app.kubernetes.io/part-of=edgefleet")
    }
    assert set(on_nodes.values()) == {REAL.name}, on_nodes
    # The router reached the API server through kube-proxy (the `kubernetes` Service's
    # ClusterIP) with its ServiceAccount token, and found both backends.
    metrics = ready_addresses(release, namespace, f"{POLICY}-router", "metrics")[0]
    wait_for("the router sees the model and the egress", lambda: backends_ready(metrics) == 2, 120)
    router = ready_addresses(release, namespace, f"{POLICY}-router", "grpc")[0]
    with grpc.insecure_channel(router) as channel:
        stub = pb_grpc.InferenceStub(channel)
        simple, _ = ask(stub, SIMPLE)
        assert (simple.route.target, simple.route.reason) == ("local", "complexity.low")
        hard, _ = ask(stub, COMPLEX, max_tokens=8)
        assert (hard.route.target, hard.route.reason) == ("cloud", "complexity.high")
        private, _ = ask(stub, PRIVATE, max_tokens=8)
        assert private.route.target == "local"
    # Only the complex prompt left, through the egress container, and nothing private.
    assert [body["messages"][-1]["content"] for body in cloud.received()] == [COMPLEX]
    assert PLANTED_EMAIL not in cloud.received_text()
