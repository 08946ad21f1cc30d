"""The test bed's real node: Pods bound through the API server run as containers under
kubelet + containerd + runc, from images built by images/build.py, and the kubelet's
own reasons reach the product's status.

The node (tests/cluster/realnode_join.py) joins the test bed beside kwok's nodes;
everything here reaches it the way a cluster would: the scheduler places Pods on it,
`kubectl logs`/`exec` go through the API server to its kubelet, Services through
kube-proxy and CoreDNS, and the host reaches its pods over the test bed's bridge.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from edgefleet.v1 import inference_pb2_grpc as pb_grpc
from images import build as images
from tests.cluster import network, realnode, realnode_join
from tests.controlplane.conftest import RELEASE, RELEASE_NAMESPACE
from tests.controlplane.helpers import Cluster, wait_for
from tests.controlplane.operator_support import (
    REAL_PLACEMENT,
    condition,
    pods,
    smallmodel,
    wait_condition,
)
from tests.controlplane.test_operator_e2e import (
    POLICY,
    routing_policy,
)
from tests.support.cloud import STAND_IN_API_KEY, RecordingProxy
from tests.support.routing import ask

pytestmark = [pytest.mark.controlplane, pytest.mark.timeout(900)]

REAL = realnode_join.REAL_NODES[0]


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
    testbed_cluster: Cluster, namespace: str
) -> None:
    web = realnode.web_pod(name=f"web-{uuid.uuid4().hex[:6]}", host_port=None)
    web["metadata"]["namespace"] = namespace
    web["spec"].update(REAL_PLACEMENT)
    testbed_cluster.apply(web)
    pod = _ready_pod(testbed_cluster, namespace, web["metadata"]["name"], timeout=120)

    assert pod["spec"]["nodeName"] == REAL.name
    assert pod["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")
    pod_ip = pod["status"]["podIP"]
    assert ipaddress.ip_address(pod_ip) in realnode_join.pod_range(0)
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
    testbed_cluster: Cluster, namespace: str
) -> None:
    web = realnode.web_pod(name=f"web-{uuid.uuid4().hex[:6]}", host_port=None)
    name = web["metadata"]["name"]
    web["metadata"]["namespace"] = namespace
    web["spec"].update(REAL_PLACEMENT)
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
    release: Cluster, namespace: str
) -> None:
    model = smallmodel("edge", engine="llamacpp", replicas=1, placement=REAL_PLACEMENT)
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


def test_a_model_whose_fetch_keeps_failing_reports_the_kubelets_crash_loop(
    release: Cluster, namespace: str
) -> None:
    # 192.0.2.1 (TEST-NET-1): the pod has no route to it, so the download fails at
    # connect() without a packet leaving the node.
    model = smallmodel("unreachable", engine="llamacpp", replicas=1, placement=REAL_PLACEMENT)
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
def operator_env(release: Cluster, name: str, value: str) -> Iterator[None]:
    """The chart's operator restarted with one variable changed; put back after (both
    waited for: the operator pod must be running again before the next test)."""
    deployment = f"deployment/{RELEASE}-operator"

    def set_env(setting: str) -> None:
        release.kubectl("set", "env", "-n", RELEASE_NAMESPACE, deployment, setting)
        release.kubectl("rollout", "status", "-n", RELEASE_NAMESPACE, deployment,
                        "--timeout=180s", timeout=200)  # fmt: skip

    original = release.kubectl(
        "get", "-n", RELEASE_NAMESPACE, deployment, "-o",
        f"jsonpath={{.spec.template.spec.containers[0].env[?(@.name=='{name}')].value}}",
    ).stdout  # fmt: skip
    set_env(f"{name}={value}")
    try:
        yield
    finally:
        set_env(f"{name}={original}")


def test_a_model_whose_image_is_not_on_the_node_reports_the_kubelets_reason(
    release: Cluster, namespace: str
) -> None:
    # The operator told to run model servers from a tag no node has, with the test bed's
    # pullPolicy Never: the kubelet refuses without a pull. (The operator's own image
    # stays: a bad chart-wide image would stop the operator itself first.)
    tag = images.public_ref("edgefleet").rsplit(":", 1)[0] + ":0.0.0-absent"
    with operator_env(release, "EDGEFLEET_IMAGE", tag):
        model = smallmodel("absent", engine="llamacpp", replicas=1, placement=REAL_PLACEMENT)
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


def test_a_missing_cloud_key_secret_is_quoted_until_it_exists(
    release: Cluster,
    namespace: str,
    cloud: RecordingProxy,
) -> None:
    model = smallmodel("local", engine="llamacpp", replicas=1, placement=REAL_PLACEMENT)
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
