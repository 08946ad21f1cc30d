"""A real node in the shared test bed: Pods bound through the API server run as
containers under kubelet + containerd + runc, from images built by images/build.py.

The node (tests/cluster/realnode_join.py) joins the running test bed beside kwok's
and the process kubelet's nodes; everything here reaches it the way a cluster would:
the scheduler places Pods on it, `kubectl logs`/`exec` go through the API server to
its kubelet, and the host reaches its pods over the test bed's bridge.
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import json
import shlex
import urllib.request
import uuid
from collections.abc import Callable, Iterator
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
    routing_policy,
)
from tests.support.cloud import STAND_IN_API_KEY, RecordingProxy
from tests.support.prompts import COMPLEX, SIMPLE
from tests.support.routing import ask

# The first test also builds the CPU image when its inputs changed (a cold build takes
# minutes, as in tests/images) and imports it into the node.
pytestmark = [pytest.mark.controlplane, pytest.mark.timeout(900)]

REAL = realnode_join.REAL_NODES[0]
ON_THE_REAL_NODE = realnode_join.placement(REAL.name)


def _joined(cluster: Cluster, spec: realnode_join.RealNodeSpec) -> Iterator[realnode.RealNode]:
    """The node `spec` joined to the test bed for a module's tests; it leaves nothing behind."""
    if not cluster.testbed:
        pytest.skip("a real node joins only the Docker-free test bed")
    (node,) = realnode_join.up((spec,))
    yield node
    left = realnode_join.down((spec,))
    assert not left, f"{spec.name} left behind: {left}"


@pytest.fixture(scope="module")
def real_node(cluster: Cluster) -> Iterator[realnode.RealNode]:
    yield from _joined(cluster, REAL)


def _ready_pod(cluster: Cluster, namespace: str, name: str, timeout: float) -> dict[str, Any]:
    return wait_for(
        f"pod {namespace}/{name} Ready",
        lambda: (lambda pod: pod if pod and realnode.pod_ready(pod) else None)(
            cluster.get("pod", name, namespace)
        ),
        timeout,
    )


def _events(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    return json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)[
        "items"
    ]


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


def test_a_pod_on_a_real_node_finds_a_service_through_coredns_and_reaches_it_by_kube_proxy(
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

    # The pod's resolv.conf names the cluster's DNS (CoreDNS, behind kube-dns's ClusterIP),
    # which answers the Service's name with its ClusterIP.
    resolv = testbed_cluster.kubectl(
        "exec", "-n", namespace, name, "--", "/bin/busybox", "cat", "/etc/resolv.conf"
    ).stdout
    assert f"nameserver {network.DNS_SERVICE_ADDRESS}" in resolv
    assert f"search {namespace}.svc.cluster.local svc.cluster.local cluster.local" in resolv
    found = testbed_cluster.kubectl(
        "exec", "-n", namespace, name, "--",
        "/bin/busybox", "nslookup", f"{name}.{namespace}.svc.cluster.local", check=False,
    )  # fmt: skip
    assert found.returncode == 0, found.stdout + found.stderr
    assert f"Address: {cluster_ip}" in found.stdout, found.stdout
    # A name outside the cluster gets no answer: CoreDNS has nowhere to forward it.
    outside = testbed_cluster.kubectl(
        "exec", "-n", namespace, name, "--", "/bin/busybox", "nslookup", "example.com.",
        check=False,
    )  # fmt: skip
    assert outside.returncode != 0


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
    events = _events(release, namespace)
    assert any(e["reason"] == "Started" and e["source"].get("host") == REAL.name for e in events), (
        "the kubelet on the real node reports its containers"
    )


GPU = realnode_join.REAL_NODES[1]
ON_THE_GPU_NODE = realnode_join.placement(GPU.name)


@pytest.fixture(scope="module")
def gpu_node(cluster: Cluster) -> Iterator[realnode.RealNode]:
    """The GPU-class real node (nvidia.com/gpu advertised, the vLLM image loaded)."""
    yield from _joined(cluster, GPU)


# Joining the node imports the 7.9 GB vLLM image (minutes), then vLLM compiles its model.
@pytest.mark.timeout(1500)
def test_a_vllm_smallmodel_runs_from_the_vllm_image_on_the_gpu_class_node(
    release: Cluster, real_node: realnode.RealNode, gpu_node: realnode.RealNode, namespace: str
) -> None:
    model = smallmodel("gpu", engine="vllm", replicas=1, placement=ON_THE_GPU_NODE)
    release.apply(model, namespace=namespace)
    # vLLM's engine start takes minutes on 2 cores (as in test_vllm_pods).
    ready = wait_condition(release, namespace, "smallmodel", "gpu", "Ready", "True", timeout=900)
    assert ready["status"]["engines"]["vllm"]["ready"] == 1

    (pod,) = pods(release, namespace, "app.kubernetes.io/name=gpu")
    assert pod["spec"]["nodeName"] == GPU.name
    server = next(c for c in pod["spec"]["containers"] if c["name"] == "server")
    assert server["image"].split("/")[-1].startswith("edgefleet-vllm:")
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    fetch = pod["status"]["initContainerStatuses"][0]
    assert (fetch["name"], fetch["state"]["terminated"]["exitCode"]) == ("fetch-model", 0)
    with grpc.insecure_channel(f"{pod['status']['podIP']}:50051") as channel:
        response, _ = ask(pb_grpc.InferenceStub(channel), "Say hello.", timeout=300)
    assert response.text.strip()
    assert response.served_by.engine == "vllm"


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
    assert any(
        e["reason"] == "BackOff" and e["source"].get("host") == REAL.name
        for e in _events(release, namespace)
    ), "the kubelet's BackOff event"


@contextlib.contextmanager
def upgraded(
    release: Cluster, folder: Path, change: Callable[[dict[str, Any]], None]
) -> Iterator[Cluster]:
    """The release upgraded to the test bed's values as `change` alters them; put back after."""
    values = yaml.safe_load(TESTBED_VALUES.read_text())
    change(values)
    changed = folder / "values.yaml"
    changed.write_text(yaml.safe_dump(values))

    def upgrade(values_file: Path) -> None:
        release.helm(
            "upgrade", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE, "--reset-values",
            "--values", str(values_file), "--wait", "--timeout", "180s",
        )  # fmt: skip

    upgrade(changed)
    try:
        yield release
    finally:
        upgrade(TESTBED_VALUES)


def _routers_on_the_real_node(values: dict[str, Any]) -> None:
    for component in ("router", "egress"):
        values[component]["pod"].update(copy.deepcopy(ON_THE_REAL_NODE))


@pytest.fixture(scope="module")
def routers_on_the_real_node(
    release: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """The release with its routers and egresses placed on the real node (this module's
    last tests); put back after."""
    folder = tmp_path_factory.mktemp("routers")
    with upgraded(release, folder, _routers_on_the_real_node) as moved:
        yield moved


def test_a_model_whose_image_is_not_on_the_node_reports_the_kubelets_reason(
    release: Cluster, real_node: realnode.RealNode, namespace: str, tmp_path: Path
) -> None:
    # A tag no node has, with pullPolicy Never: the kubelet refuses without a pull.
    def absent_image(values: dict[str, Any]) -> None:
        values["image"] = {"tag": "0.0.0-absent", "pullPolicy": "Never"}

    with upgraded(release, tmp_path, absent_image):
        model = smallmodel("absent", engine="llamacpp", replicas=1, placement=ON_THE_REAL_NODE)
        release.apply(model, namespace=namespace)
        absent = wait_condition(
            release, namespace, "smallmodel", "absent", "Ready", "False",
            reason="ImagePullFailed", timeout=120,
        )  # fmt: skip
    ready = condition(absent, "Ready")
    # The init container comes first: its image is the one the kubelet cannot run.
    assert "fetch-model: ErrImageNeverPull: " in ready["message"]
    assert 'edgefleet:0.0.0-absent" is not present with pull policy of Never' in ready["message"]
    events = _events(release, namespace)
    assert any(
        e["reason"] == "ImagePullFailed" and e["involvedObject"]["kind"] == "SmallModel"
        for e in events
    ), "the operator's Warning on the SmallModel"
    assert any(
        e["reason"] == "ErrImageNeverPull" and e["source"].get("host") == REAL.name for e in events
    ), "the kubelet's own Event"


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
    # A client pod on the node asks the router by its Service's DNS name, with the
    # product's CLI over gRPC and the stock openai SDK over HTTP.
    service = f"{POLICY}-router.{namespace}.svc.cluster.local"
    client = realnode_join.client_pod(
        namespace,
        REAL.name,
        f"edgefleet --target {service}:50051 generate {shlex.quote(SIMPLE)} --max-tokens 8 "
        f"&& python3 -c {shlex.quote(_OPENAI_CLIENT.format(url=f'http://{service}:8080/v1'))}",
    )
    release.apply(client)
    log = wait_for("the client pod's answers", lambda: _finished_log(release, client), 180)
    assert "route=local:complexity.low" in log, log
    assert "openai: " in log and log.split("openai: ", 1)[1].strip(), log

    # Only the complex prompt left, through the egress container, and nothing private.
    assert [body["messages"][-1]["content"] for body in cloud.received()] == [COMPLEX]
    assert PLANTED_EMAIL not in cloud.received_text()


_OPENAI_CLIENT = """\
from openai import OpenAI
client = OpenAI(base_url="{url}", api_key="unused", timeout=120)
reply = client.chat.completions.create(
    model="hybrid", messages=[{{"role": "user", "content": "Name a colour."}}], max_tokens=8
)
print("openai:", reply.choices[0].message.content)
"""


def _finished_log(cluster: Cluster, pod: dict[str, Any]) -> str | None:
    """The pod's log once it succeeded; an AssertionError with it if it failed."""
    name, namespace = pod["metadata"]["name"], pod["metadata"]["namespace"]
    phase = (cluster.get("pod", name, namespace) or {}).get("status", {}).get("phase")
    if phase not in ("Succeeded", "Failed"):
        return None
    log = cluster.kubectl("logs", "-n", namespace, name).stdout
    assert phase == "Succeeded", f"the client pod failed:\n{log}"
    return log


def test_a_missing_cloud_key_secret_is_quoted_until_it_exists(
    routers_on_the_real_node: Cluster,
    real_node: realnode.RealNode,
    namespace: str,
    cloud: RecordingProxy,
) -> None:
    release = routers_on_the_real_node
    model = smallmodel("local", engine="llamacpp", replicas=1, placement=ON_THE_REAL_NODE)
    release.apply(model, routing_policy(cloud), namespace=namespace)

    # The policy routes locally, Degraded with the kubelet's reason for the egress.
    policy = wait_condition(
        release, namespace, "routingpolicy", POLICY, "Degraded", "True",
        reason="EgressFailing", timeout=300,
    )  # fmt: skip
    degraded = condition(policy, "Degraded")
    assert (
        'egress: CreateContainerConfigError: secret "cloud-llm" not found' in (degraded["message"])
    )
    wait_condition(release, namespace, "routingpolicy", POLICY, "Ready", "True", timeout=120)
    assert any(
        e["reason"] == "EgressFailing" and e["involvedObject"]["kind"] == "RoutingPolicy"
        for e in _events(release, namespace)
    ), "the operator's Warning on the RoutingPolicy"

    # The Secret arrives: the kubelet starts the egress, nothing to re-apply.
    release.kubectl(
        "create", "secret", "generic", "cloud-llm", "-n", namespace,
        f"--from-literal=api-key={STAND_IN_API_KEY}",
    )  # fmt: skip
    wait_condition(release, namespace, "routingpolicy", POLICY, "Degraded", "False", timeout=180)
