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


# A server that answers GET /<path> with the content of that file inside its
# mount namespace, GET /write?<path> with whether it could write there, and
# GET /env/<NAME> with an env var: what the process itself sees.
FILE_SERVER = textwrap.dedent("""
    import http.server, os
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/env/"):
                body = os.environ.get(self.path[5:], "<unset>").encode()
            elif self.path.startswith("/write?"):
                try:
                    with open(self.path[7:], "w") as f:
                        f.write("x")
                    body = b"written"
                except OSError as exc:
                    body = f"refused: {exc.strerror}".encode()
            else:
                try:
                    body = open(self.path).read().encode()
                except OSError as exc:
                    body = f"unreadable: {exc.strerror}".encode()
            self.send_response(200); self.end_headers(); self.wfile.write(body)
        def log_message(self, *a):
            pass
    http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
""")
SERVER_READY = {"httpGet": {"path": "/env/HOME", "port": 8080}, "periodSeconds": 1}


def _file_server(name: str, **spec: Any) -> dict[str, Any]:
    container = {"readinessProbe": SERVER_READY, **spec.pop("container", {})}
    return _pod(name, FILE_SERVER, {}, container=container, **spec)


def _get(pod: dict[str, Any], path: str) -> str:
    url = f"http://{pod['status']['podIP']}:8080{path}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def _ready_pod(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return wait_for(
        f"pod {name} Ready",
        lambda: (p := cluster.get("pod", name, namespace)) and _ready(p) and p,
        60,
    )


def _state(status: dict[str, Any]) -> tuple[str, str]:
    """(running|waiting|terminated, reason) of a container status."""
    kind, detail = next(iter(status["state"].items()))
    return kind, detail.get("reason", "")


def test_init_container_fills_an_empty_dir_that_the_main_container_serves(
    testbed_cluster: Cluster, namespace: str
) -> None:
    cluster = testbed_cluster
    write = "open('/var/lib/edgefleet-test/models/model.txt', 'w').write('weights v1')"
    init = {
        "name": "fetch-model",
        "image": "edgefleet-testbed/python",
        "command": ["python3", "-c", write],
        "volumeMounts": [{"name": "models", "mountPath": "/var/lib/edgefleet-test/models"}],
    }
    mount = {"name": "models", "mountPath": "/var/lib/edgefleet-test/models", "readOnly": True}
    cluster.apply(
        _file_server(
            "model-server",
            initContainers=[init],
            volumes=[{"name": "models", "emptyDir": {}}],
            container={"volumeMounts": [mount]},
        ),
        namespace=namespace,
    )
    pod = _ready_pod(cluster, namespace, "model-server")
    assert _get(pod, "/var/lib/edgefleet-test/models/model.txt") == "weights v1"
    (init_status,) = pod["status"]["initContainerStatuses"]
    assert _state(init_status) == ("terminated", "Completed")
    assert init_status["state"]["terminated"]["exitCode"] == 0
    # The emptyDir lives under the Pod's work folder, not at the mount path on the host.
    assert not Path("/var/lib/edgefleet-test/models/model.txt").exists()
    workdir = testbed.paths().kubelets / pod["spec"]["nodeName"] / pod["metadata"]["uid"]
    assert (workdir / "volumes" / "models" / "model.txt").read_text() == "weights v1"
    assert (workdir / "init-fetch-model.log").exists()
    cluster.kubectl(
        "-n", namespace, "delete", "pod", "model-server", "--wait=true", "--timeout=60s"
    )
    # Removed with the Pod, and the mount point made for it is gone from the host.
    assert not (workdir / "volumes").exists()
    assert not Path("/var/lib/edgefleet-test").exists()


def test_failing_init_container_holds_the_main_container_until_a_retry_succeeds(
    testbed_cluster: Cluster, namespace: str
) -> None:
    cluster = testbed_cluster
    # Fails until the ConfigMap (an optional env source) carries the key.
    script = "import os, sys; sys.exit(0 if os.environ.get('GO') == 'yes' else 7)"
    init = {
        "name": "wait-for-go",
        "image": "edgefleet-testbed/python",
        "command": ["python3", "-c", script],
        "env": [
            {
                "name": "GO",
                "valueFrom": {"configMapKeyRef": {"name": "gate", "key": "go", "optional": True}},
            }
        ],
    }
    cluster.apply(_file_server("gated-init", initContainers=[init]), namespace=namespace)

    def failed_once() -> dict[str, Any] | None:
        pod = cluster.get("pod", "gated-init", namespace)
        statuses = pod["status"].get("initContainerStatuses") or []
        if not statuses:
            return None
        # The failed run: the current state at first, lastState once in back-off.
        terminated = (statuses[0].get("lastState") or statuses[0]["state"]).get("terminated")
        return pod if terminated and terminated["exitCode"] == 7 else None

    pod = wait_for("the init container to fail", failed_once, 60)
    assert pod["status"]["phase"] == "Pending"
    initialized = {c["type"]: c for c in pod["status"]["conditions"]}["Initialized"]
    assert initialized["status"] == "False"
    (main,) = pod["status"]["containerStatuses"]
    assert _state(main) == ("waiting", "PodInitializing")
    assert _state(pod["status"]["initContainerStatuses"][0]) in (
        ("terminated", "Error"),
        ("waiting", "CrashLoopBackOff"),
    )
    listed = cluster.kubectl("-n", namespace, "get", "pod", "gated-init", "--no-headers").stdout
    assert "Init:Error" in listed or "Init:CrashLoopBackOff" in listed, listed
    workdir = testbed.paths().kubelets / pod["spec"]["nodeName"] / pod["metadata"]["uid"]
    assert not (workdir / "container.log").exists()  # the main container never ran

    cluster.kubectl("-n", namespace, "create", "configmap", "gate", "--from-literal=go=yes")
    pod = _ready_pod(cluster, namespace, "gated-init")
    (init_status,) = pod["status"]["initContainerStatuses"]
    assert init_status["restartCount"] >= 1
    assert _state(init_status) == ("terminated", "Completed")
    assert _get(pod, "/env/POD_NAME") == "gated-init"


def test_failing_init_container_fails_a_never_restarting_pod(
    testbed_cluster: Cluster, namespace: str
) -> None:
    cluster = testbed_cluster
    init = {
        "name": "broken",
        "image": "edgefleet-testbed/python",
        "command": ["python3", "-c", "raise SystemExit(4)"],
    }
    cluster.apply(
        _file_server("never", initContainers=[init], restartPolicy="Never"), namespace=namespace
    )
    pod = _finished(cluster, namespace, "never")
    assert pod["status"]["phase"] == "Failed"
    (init_status,) = pod["status"]["initContainerStatuses"]
    assert init_status["state"]["terminated"]["exitCode"] == 4
    assert init_status["restartCount"] == 0
    assert _state(pod["status"]["containerStatuses"][0]) == ("waiting", "PodInitializing")


def test_config_map_volume_is_read_only_and_its_update_reaches_the_running_process(
    testbed_cluster: Cluster, namespace: str
) -> None:
    cluster = testbed_cluster
    policy = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "demo-router"},
        "data": {"policy.yaml": "modelName: one\n"},
    }
    mount = {"name": "policy", "mountPath": "/etc/edgefleet-test/router", "readOnly": True}
    cluster.apply(
        policy,
        _file_server(
            "router",
            volumes=[{"name": "policy", "configMap": {"name": "demo-router"}}],
            container={"volumeMounts": [mount]},
        ),
        namespace=namespace,
    )
    pod = _ready_pod(cluster, namespace, "router")
    path = "/etc/edgefleet-test/router/policy.yaml"
    assert _get(pod, path) == "modelName: one\n"
    assert _get(pod, f"/write?{path}").startswith("refused: Read-only file system")
    assert _get(pod, "/write?/etc/edgefleet-test/router/new").startswith("refused: Read-only")

    policy["data"]["policy.yaml"] = "modelName: two\n"
    cluster.apply(policy, namespace=namespace)
    wait_for("the new policy inside the pod", lambda: _get(pod, path) == "modelName: two\n", 30)
    after = cluster.get("pod", "router", namespace)
    assert after["status"]["containerStatuses"][0]["restartCount"] == 0
    assert after["status"]["podIP"] == pod["status"]["podIP"]


def test_secret_volume_and_secret_env_reach_the_process(
    testbed_cluster: Cluster, namespace: str
) -> None:
    cluster = testbed_cluster
    cluster.kubectl(
        "-n", namespace, "create", "secret", "generic", "cloud-llm", "--from-literal=api-key=sk-123"
    )
    cluster.kubectl(
        "-n", namespace, "create", "configmap", "egress", "--from-literal=MODEL=gpt-test"
    )
    mount = {"name": "cloud", "mountPath": "/var/run/secrets/edgefleet-test/cloud"}
    env = [
        {
            "name": "API_KEY",
            "valueFrom": {"secretKeyRef": {"name": "cloud-llm", "key": "api-key"}},
        },
        {
            "name": "MISSING_OK",
            "valueFrom": {"secretKeyRef": {"name": "cloud-llm", "key": "nope", "optional": True}},
        },
    ]
    egress = _file_server(
        "egress",
        volumes=[{"name": "cloud", "secret": {"secretName": "cloud-llm", "defaultMode": 0o400}}],
        container={
            "volumeMounts": [mount],
            "envFrom": [{"configMapRef": {"name": "egress"}, "prefix": "CFG_"}],
        },
    )
    egress["spec"]["containers"][0]["env"] += env
    cluster.apply(egress, namespace=namespace)
    pod = _ready_pod(cluster, namespace, "egress")
    assert _get(pod, "/var/run/secrets/edgefleet-test/cloud/api-key") == "sk-123"
    assert _get(pod, "/env/API_KEY") == "sk-123"
    assert _get(pod, "/env/CFG_MODEL") == "gpt-test"
    assert _get(pod, "/env/MISSING_OK") == "<unset>"
    # Secret volumes are read-only, whatever the mount says.
    assert _get(pod, "/write?/var/run/secrets/edgefleet-test/cloud/api-key").startswith("refused")


def test_missing_secret_key_is_a_create_container_config_error_until_it_exists(
    testbed_cluster: Cluster, namespace: str
) -> None:
    cluster = testbed_cluster
    cluster.kubectl(
        "-n", namespace, "create", "secret", "generic", "cloud-llm", "--from-literal=x=y"
    )
    pod = _file_server("no-key")
    pod["spec"]["containers"][0]["env"].append(
        {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "cloud-llm", "key": "api-key"}}}
    )
    cluster.apply(pod, namespace=namespace)

    def config_error() -> dict[str, Any] | None:
        status = cluster.get("pod", "no-key", namespace)["status"]
        statuses = status.get("containerStatuses") or []
        if statuses and _state(statuses[0]) == ("waiting", "CreateContainerConfigError"):
            return statuses[0]["state"]["waiting"]
        return None

    waiting = wait_for("CreateContainerConfigError", config_error, 60)
    assert waiting["message"] == f"couldn't find key api-key in Secret {namespace}/cloud-llm"
    after = cluster.get("pod", "no-key", namespace)
    assert after["status"]["phase"] == "Pending"
    listed = cluster.kubectl("-n", namespace, "get", "pod", "no-key", "--no-headers").stdout
    assert "CreateContainerConfigError" in listed

    # As on a kubelet, the container starts once the key exists.
    cluster.kubectl(
        "-n", namespace, "patch", "secret", "cloud-llm", "-p", '{"stringData": {"api-key": "k"}}'
    )
    started = _ready_pod(cluster, namespace, "no-key")
    assert _get(started, "/env/API_KEY") == "k"


def test_failing_liveness_probe_restarts_the_container(
    testbed_cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    cluster = testbed_cluster
    # Healthy while the file exists; each run of the process records its start.
    alive = tmp_path / "alive"
    alive.touch()
    starts = tmp_path / "starts"
    script = f"open({str(starts)!r}, 'a').write('start\\n')\n" + FILE_SERVER
    liveness = {
        "exec": {"command": ["test", "-f", str(alive)]},
        "periodSeconds": 1,
        "failureThreshold": 2,
        "initialDelaySeconds": 1,
    }
    cluster.apply(
        _pod("lively", script, {}, container={"livenessProbe": liveness}), namespace=namespace
    )
    pod = wait_for(
        "pod running",
        lambda: (p := cluster.get("pod", "lively", namespace)) and _ready(p) and p,
        60,
    )
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    alive.unlink()

    def restarted() -> dict[str, Any] | None:
        p = cluster.get("pod", "lively", namespace)
        statuses = p["status"].get("containerStatuses") or []
        return p if statuses and statuses[0]["restartCount"] >= 1 else None

    pod = wait_for("a liveness restart", restarted, 60)
    alive.touch()  # healthy again, so it stays up after the restart
    status = pod["status"]["containerStatuses"][0]
    assert "liveness probe" in status["lastState"]["terminated"]["message"]
    assert wait_for("a second start", lambda: starts.read_text().count("start") >= 2, 30)
    running = _ready_pod(cluster, namespace, "lively")
    assert _get(running, "/env/POD_NAME") == "lively"
