"""The router in a cluster: backends from EndpointSlices (watched), figures into the status.

A real edgefleet-router process on the host talks to the real API server as a
ServiceAccount that holds exactly the router's RBAC, and routes to a real
edgefleet-server on the bridge address (10.244.0.1), behind a hand-made
selector-less Service and EndpointSlice. No endpoints file, no --local: the
router learns, loses and regains its backend from the slice alone.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.serving.readiness import free_local_port
from tests.controlplane.helpers import Cluster, wait_for
from tests.support.model_server import ModelServer, spawn_server
from tests.support.routing import ask_or_error, write_atomically

pytestmark = pytest.mark.controlplane

BRIDGE = "10.244.0.1"
MANAGED_BY = "edgefleet-tests"
POLICY = "demo"
MODEL = "smollm2"
# What the chart's ClusterRole edgefleet-router grants; the router must manage with it.
ROUTER_RULES = [
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
     "verbs": ["list", "watch"]},
    {"apiGroups": ["edgefleet.io"], "resources": ["routingpolicies/status"], "verbs": ["patch"]},
]  # fmt: skip
SPEC: dict[str, Any] = {
    "modelName": "hybrid",
    "local": {"targets": [{"smallModel": MODEL, "weight": 1}]},
    "cloud": {"enabled": False},
    # Everything is simple enough for the local model; without it, a refusal.
    "complexity": {"threshold": 1.0},
    "capacity": {"cloudWhenNoLocal": False},
}


@pytest.fixture(scope="module")
def bridge_model_server() -> Iterator[ModelServer]:
    """edgefleet-server on the packaged model, on the bridge: a slice may not point at loopback."""
    port = free_local_port()
    log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the server
        prefix="edgefleet-server-bridge-", suffix=".log", delete=False
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.serving.server", "--listen", f"{BRIDGE}:{port}",
         "--metrics-listen", "", "--batch-sequences", "2", "--max-queue", "64"],
        stdout=log_file, stderr=subprocess.STDOUT,
    )  # fmt: skip
    server = ModelServer(process, f"{BRIDGE}:{port}", "", Path(log_file.name))
    try:
        server.wait_serving()
        yield server
    finally:
        server.stop()


def grant_router_rbac(cluster: Cluster, namespace: str, tmp_path: Path) -> Path:
    """A ServiceAccount bound to exactly ROUTER_RULES; returns a kubeconfig acting as it."""
    cluster.apply(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "router"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "router"}, "rules": ROUTER_RULES},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "router"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "router"},
         "subjects": [{"kind": "ServiceAccount", "name": "router", "namespace": namespace}]},
        namespace=namespace,
    )  # fmt: skip
    return cluster.service_account_kubeconfig(namespace, "router", tmp_path / "router.kubeconfig")


def model_slice(port: int, ready: bool) -> dict[str, Any]:
    """A hand-managed slice of the SmallModel's Service, pointing at the bridge server."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{MODEL}-manual",
            "labels": {
                "kubernetes.io/service-name": MODEL,
                "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [BRIDGE], "conditions": {"ready": ready}}],
    }


def model_service() -> dict[str, Any]:
    # No selector: the EndpointSlice controller leaves its slices to us.
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": MODEL},
        "spec": {"ports": [{"name": "grpc", "port": 50051, "protocol": "TCP"}]},
    }


class Client:
    """Asks the router and tallies what it answered, to compare with its status."""

    def __init__(self, router: ModelServer) -> None:
        self.router = router
        self.sent = 0
        self.local = 0

    def ask(self) -> tuple[str, str, str]:
        target, reason, code = ask_or_error(self.router.stub, "Say hi.", max_tokens=4, timeout=60)
        self.sent += 1
        self.local += target == "local" and code == "OK"
        return target, reason, code

    def until(self, expected: tuple[str, str, str], what: str) -> None:
        wait_for(what, lambda: self.ask() == expected, timeout=60, interval=0.1)


SERVED_LOCALLY = ("local", "complexity.low", "OK")
NO_LOCAL = ("reject", "capacity.no_local", "UNAVAILABLE")


def test_router_follows_the_endpointslice_and_reports_its_figures(
    crds: Cluster, namespace: str, tmp_path: Path, bridge_model_server: ModelServer
) -> None:
    cluster = crds
    port = int(bridge_model_server.target.rpartition(":")[2])
    kubeconfig = grant_router_rbac(cluster, namespace, tmp_path)
    cluster.apply(
        {"apiVersion": "edgefleet.io/v1alpha1", "kind": "RoutingPolicy",
         "metadata": {"name": POLICY}, "spec": SPEC},
        model_service(),
        model_slice(port, ready=True),
        namespace=namespace,
    )  # fmt: skip
    # The policy as the operator's ConfigMap mounts it; the endpoints come from the API.
    policy_file = tmp_path / "policy.yaml"
    write_atomically(policy_file, {"kind": "RoutingPolicy", "metadata": {"name": POLICY},
                                   "spec": SPEC})  # fmt: skip
    router = spawn_server(
        "--policy-file", str(policy_file), "--http-listen", "",
        "--kube-namespace", namespace, "--status-policy", POLICY,
        "--status-interval-s", "0.5", "--poll-interval-s", "0.2",
        module="edgefleet.router.main",
        env={"KUBECONFIG": str(kubeconfig)},
    )  # fmt: skip
    try:
        router.wait_serving()
        client = Client(router)
        client.until(SERVED_LOCALLY, "a request served by the slice's endpoint")

        cluster.apply(model_slice(port, ready=False), namespace=namespace)
        client.until(NO_LOCAL, "the not-ready endpoint taken out of rotation")
        cluster.apply(model_slice(port, ready=True), namespace=namespace)
        client.until(SERVED_LOCALLY, "the ready-again endpoint back in rotation")

        cluster.kubectl("-n", namespace, "delete", "endpointslice", f"{MODEL}-manual")
        client.until(NO_LOCAL, "the deleted slice's endpoint forgotten")
        cluster.apply(model_slice(port, ready=True), namespace=namespace)
        client.until(SERVED_LOCALLY, "the recreated slice's endpoint used")

        def reported() -> dict[str, Any] | None:
            policy = cluster.get("routingpolicy", POLICY, namespace)
            figures = (policy or {}).get("status", {}).get("router", {})
            return figures if figures.get("requests") == client.sent else None

        figures = wait_for("status.router counting every request", reported, timeout=30)
        refused = client.sent - client.local
        assert figures["cloudRequests"] == 0
        assert figures["overflow"] == 0
        assert figures["localShare"] == pytest.approx(client.local / client.sent, abs=1e-3)
        assert figures["cloudSpend"] == {"windowSeconds": 3600, "tokens": 0, "cost": 0}
        decisions = {d["reason"]: d["count"] for d in figures["lastDecisions"]}
        assert decisions == {"complexity.low": client.local, "capacity.no_local": refused}
        assert figures["reportedAt"].endswith("Z")
    finally:
        router.stop()
    log = router.log()
    # Exactly the granted rights sufficed: nothing was forbidden along the way.
    assert "403" not in log and "Forbidden" not in log, log[-3000:]


def test_bad_local_services_exit_2_with_the_reason(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgefleet.router.main", "--local-services", "smollm2=0,Bad_Name",
         "--kube-namespace", "anywhere", "--listen", f"127.0.0.1:{free_local_port()}",
         "--metrics-listen", "", "--http-listen", ""],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "invalid --local-services" in result.stderr
    assert "'smollm2=0': the weight must be an integer within 1..100" in result.stderr
    assert "'Bad_Name' is not a Service name" in result.stderr
