"""Pods run as real processes by the process kubelet, on the test bed's pod network."""

from __future__ import annotations

import importlib.util
import ipaddress
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import kube, network, testbed
from tests.controlplane.helpers import Cluster, wait_for

pytestmark = pytest.mark.controlplane

PROCESS_PLACEMENT = {
    "nodeSelector": {"edgefleet.io/runtime": "process"},
    "tolerations": [{"key": "edgefleet.io/process", "operator": "Exists", "effect": "NoSchedule"}],
}

SERVER = textwrap.dedent("""
    import http.server, os
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"hello from {os.environ['POD_NAME']}".encode()
            self.send_response(200); self.end_headers(); self.wfile.write(body)
        def log_message(self, *a):
            pass
    http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
""")

CLIENT = textwrap.dedent("""
    import os, sys, urllib.request
    body = urllib.request.urlopen(os.environ["TARGET"], timeout=5).read().decode()
    print(body)
    sys.exit(0 if body == "hello from " + os.environ["EXPECT"] else 1)
""")

IN_CLUSTER = textwrap.dedent("""
    import sys
    from kubernetes import client, config
    config.load_incluster_config()
    v1 = client.CoreV1Api()
    ns = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()
    names = [c.metadata.name for c in v1.list_namespaced_config_map(ns).items]
    print("configmaps:", names)
    if "marker" not in names:
        sys.exit(3)
    try:
        v1.list_namespaced_secret(ns)
    except client.ApiException as exc:
        print("secrets:", exc.status)
        sys.exit(0 if exc.status == 403 else 4)
    print("secrets were allowed")
    sys.exit(5)
""")


def _pod(name: str, script: str, env: dict[str, str], **spec: Any) -> dict[str, Any]:
    container = {
        "name": "main",
        "image": "edgefleet/python-script:test",
        "command": ["python3", "-c", script],
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
        + [{"name": k, "value": v} for k, v in env.items()],
    }
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"containers": [container], **PROCESS_PLACEMENT, **spec},
    }


def _ready(pod: dict[str, Any] | None) -> bool:
    return bool(pod) and any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", [])
    )


def _container_log(pod: dict[str, Any]) -> str:
    log = (
        testbed.paths().kubelets
        / pod["spec"]["nodeName"]
        / pod["metadata"]["uid"]
        / "container.log"
    )
    return log.read_text(errors="replace") if log.exists() else f"(no log at {log})"


def _finished(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return wait_for(
        f"pod {name} to finish",
        lambda: (
            (p := cluster.get("pod", name, namespace))
            and p["status"].get("phase") in ("Succeeded", "Failed")
            and p
        ),
        60,
    )


def test_process_pod_serves_http_at_its_endpointslice_address_to_host_and_pods(
    testbed_cluster: Cluster, namespace: str
) -> None:
    cluster = testbed_cluster
    readiness = {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}
    cluster.apply(
        _pod(
            "server",
            SERVER,
            {},
            container={"readinessProbe": readiness, "ports": [{"containerPort": 8080}]},
        ),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "server"},
            "spec": {"selector": {"app": "server"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
        namespace=namespace,
    )
    pod = wait_for(
        "server pod Ready",
        lambda: (p := cluster.get("pod", "server", namespace)) and _ready(p) and p,
        60,
    )
    assert ipaddress.ip_address(pod["status"]["podIP"]) in network.PROCESS_POD_RANGE

    def endpoint() -> str | None:
        slices = cluster.get("endpointslices", namespace=namespace)["items"]
        ready = [
            a
            for s in slices
            if s["metadata"]["labels"].get("kubernetes.io/service-name") == "server"
            for e in s.get("endpoints") or []
            if e["conditions"].get("ready")
            for a in e["addresses"]
        ]
        return ready[0] if ready else None

    address = wait_for("a ready endpoint for the server", endpoint, 60)
    assert address == pod["status"]["podIP"]
    with urllib.request.urlopen(f"http://{address}:8080/", timeout=5) as resp:
        assert resp.read().decode() == "hello from server"

    client = _pod(
        "client",
        CLIENT,
        {"TARGET": f"http://{address}:8080/", "EXPECT": "server"},
        restartPolicy="Never",
    )
    # No command: the kubelet maps the image to its command, as for edgefleet-server.
    container = client["spec"]["containers"][0]
    del container["command"]
    container.update(image="edgefleet-testbed/python:3.11", args=["-c", CLIENT])
    cluster.apply(client, namespace=namespace)
    client_pod = _finished(cluster, namespace, "client")
    assert client_pod["status"]["phase"] == "Succeeded", _container_log(client_pod)
    assert client_pod["status"]["podIP"] != address


def _service_account_that_may_list_configmaps(cluster: Cluster, namespace: str, name: str) -> None:
    """A ServiceAccount whose only permission is listing ConfigMaps in its namespace."""
    cluster.kubectl("-n", namespace, "create", "serviceaccount", name)
    cluster.kubectl(
        "-n", namespace, "create", "role", "cm-lister", "--verb=list", "--resource=configmaps"
    )
    cluster.kubectl(
        "-n",
        namespace,
        "create",
        "rolebinding",
        name,
        "--role=cm-lister",
        f"--serviceaccount={namespace}:{name}",
    )


def test_process_pod_uses_its_in_cluster_service_account_with_exactly_its_rbac(
    testbed_cluster: Cluster, namespace: str
) -> None:
    cluster = testbed_cluster
    _service_account_that_may_list_configmaps(cluster, namespace, "lister")
    cluster.kubectl("-n", namespace, "create", "configmap", "marker")
    cluster.apply(
        _pod("in-cluster", IN_CLUSTER, {}, serviceAccountName="lister", restartPolicy="Never"),
        namespace=namespace,
    )
    pod = _finished(cluster, namespace, "in-cluster")
    log = _container_log(pod)
    assert pod["status"]["phase"] == "Succeeded", log
    assert "secrets: 403" in log


def test_deleting_a_process_pod_stops_its_process_and_removes_its_namespace(
    testbed_cluster: Cluster, namespace: str
) -> None:
    cluster = testbed_cluster
    cluster.apply(_pod("short-lived", SERVER, {}), namespace=namespace)
    pod = wait_for(
        "pod Ready",
        lambda: (p := cluster.get("pod", "short-lived", namespace)) and _ready(p) and p,
        60,
    )
    netns = network.NETNS_PREFIX + pod["metadata"]["uid"].replace("-", "")[:10]
    assert netns in network.pod_namespaces()
    cluster.kubectl("-n", namespace, "delete", "pod", "short-lived", "--wait=true", "--timeout=60s")
    assert cluster.get("pod", "short-lived", namespace) is None
    assert netns not in network.pod_namespaces()


def test_process_pod_is_ready_and_an_endpoint_only_once_its_readiness_probe_passes(
    testbed_cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    cluster = testbed_cluster
    gate = tmp_path / "ready"
    probe = {"exec": {"command": ["test", "-f", str(gate)]}, "periodSeconds": 1}
    cluster.apply(
        _pod("gated", SERVER, {}, container={"readinessProbe": probe}),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "gated"},
            "spec": {"selector": {"app": "gated"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
        namespace=namespace,
    )

    def endpoint_readiness() -> list[bool]:
        slices = cluster.get("endpointslices", namespace=namespace)["items"]
        return [
            bool(e["conditions"].get("ready"))
            for s in slices
            if s["metadata"]["labels"].get("kubernetes.io/service-name") == "gated"
            for e in s.get("endpoints") or []
        ]

    # Running with an IP but failing its probe: listed, not ready.
    assert wait_for("a not-ready endpoint", lambda: endpoint_readiness() == [False], 60)
    pod = cluster.get("pod", "gated", namespace)
    assert pod["status"]["phase"] == "Running" and not _ready(pod)
    gate.touch()
    assert wait_for("the endpoint to turn ready", lambda: endpoint_readiness() == [True], 60)
    assert _ready(cluster.get("pod", "gated", namespace))


GRPC_SERVER = textwrap.dedent("""
    from concurrent import futures
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    names = (health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    server.add_insecure_port("0.0.0.0:50051")
    server.start()
    server.wait_for_termination()
""")


def test_process_pod_serves_grpc_health_gated_by_a_grpc_probe_and_reachable_with_grpcurl(
    testbed_cluster: Cluster, namespace: str
) -> None:
    cluster = testbed_cluster
    probe = {"grpc": {"port": 50051}, "periodSeconds": 1}
    cluster.apply(
        _pod("grpc", GRPC_SERVER, {}, container={"readinessProbe": probe}), namespace=namespace
    )
    pod = wait_for(
        "gRPC pod Ready",
        lambda: (p := cluster.get("pod", "grpc", namespace)) and _ready(p) and p,
        60,
    )
    target = f"{pod['status']['podIP']}:50051"
    listed = kube.run("grpcurl", "-plaintext", "-max-time", "5", target, "list", timeout=15)
    assert "grpc.health.v1.Health" in listed.stdout.split()
    checked = kube.run(
        "grpcurl", "-plaintext", "-max-time", "5", target, "grpc.health.v1.Health/Check", timeout=15
    )
    assert '"status": "SERVING"' in checked.stdout


def test_process_that_exits_is_restarted_and_counted(
    testbed_cluster: Cluster, namespace: str
) -> None:
    cluster = testbed_cluster
    cluster.apply(_pod("crashy", "import sys; sys.exit(3)", {}), namespace=namespace)

    def restarted() -> dict[str, Any] | None:
        pod = cluster.get("pod", "crashy", namespace)
        statuses = pod["status"].get("containerStatuses") or []
        return pod if statuses and statuses[0]["restartCount"] >= 1 else None

    pod = wait_for("a restart to be counted", restarted, 60)
    assert pod["status"]["phase"] == "Running"
    assert not _ready(pod)


KOPF_LOGIN = textwrap.dedent("""
    import json, ssl, sys, urllib.error, urllib.request
    import kopf
    # Kopf's plain service-account login: https://kubernetes.default.svc + the mounted token.
    info = kopf.login_with_service_account(settings=kopf.OperatorSettings())
    print("server:", info.server, "namespace:", info.default_namespace)
    ctx = ssl.create_default_context(cafile=info.ca_path)
    def get(path):
        auth = {"Authorization": "Bearer " + info.token}
        req = urllib.request.Request(info.server + path, headers=auth)
        try:
            return urllib.request.urlopen(req, context=ctx, timeout=5).status
        except urllib.error.HTTPError as exc:
            return exc.code
    ns = info.default_namespace
    cms = get(f"/api/v1/namespaces/{ns}/configmaps")
    secrets = get(f"/api/v1/namespaces/{ns}/secrets")
    print("configmaps:", cms, "secrets:", secrets)
    sys.exit(0 if (cms, secrets) == (200, 403) else 1)
""")


def test_kopf_service_account_login_reaches_the_api_by_its_in_cluster_name(
    testbed_cluster: Cluster, namespace: str
) -> None:
    # kopf is a dev dependency: a missing kopf must fail here, not skip.
    assert importlib.util.find_spec("kopf") is not None, "pip install -e .[dev] brings kopf"
    cluster = testbed_cluster
    _service_account_that_may_list_configmaps(cluster, namespace, "operator")
    cluster.apply(
        _pod("kopf-login", KOPF_LOGIN, {}, serviceAccountName="operator", restartPolicy="Never"),
        namespace=namespace,
    )
    pod = _finished(cluster, namespace, "kopf-login")
    log = _container_log(pod)
    assert pod["status"]["phase"] == "Succeeded", log
    assert "server: https://kubernetes.default.svc" in log
