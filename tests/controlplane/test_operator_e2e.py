"""End to end on the test bed: kubectl apply → real pods → answers with their routes.

The chart's operator turns a SmallModel (the packaged SmolLM2) and a
RoutingPolicy into containers on the real node: a llama.cpp model server
(after its fetch-model init container), the router and the egress.
The cloud is the real llama_cpp.server behind a recording proxy on the
bridge address, so the test sees exactly what left the cluster. A gRPC
client on the host calls the router at its Service's endpoint, and a client
pod by the Service's DNS name.
"""

from __future__ import annotations

import json
import shlex
import urllib.request
from typing import Any

import grpc
import pytest
from openai import OpenAI

from edgefleet.routing.complexity import ComplexityScorer
from edgefleet.v1 import inference_pb2_grpc as pb_grpc
from tests.cluster import realnode_join
from tests.controlplane.conftest import CHART, RELEASE, RELEASE_NAMESPACE
from tests.controlplane.helpers import Cluster, wait_for
from tests.controlplane.operator_support import (
    REAL_NODE,
    REAL_PLACEMENT,
    listing,
    managed_children,
    pods,
    smallmodel,
    wait_condition,
)
from tests.support.cloud import STAND_IN_API_KEY, STAND_IN_MODEL, RecordingProxy
from tests.support.prompts import COMPLEX, SIMPLE
from tests.support.routing import ask

pytestmark = pytest.mark.controlplane

PLANTED_EMAIL = "jane.doe.4471@example.org"
PRIVATE = f"{COMPLEX} Send the answer to {PLANTED_EMAIL}."
POLICY = "hybrid"


def routing_policy(proxy: RecordingProxy) -> dict[str, Any]:
    scorer = ComplexityScorer.load()
    threshold = (scorer.score(SIMPLE) + scorer.score(COMPLEX)) / 2
    assert scorer.score(SIMPLE) < threshold < scorer.score(PRIVATE)
    return {
        "apiVersion": "edgefleet.io/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": POLICY},
        "spec": {
            "modelName": "hybrid",
            "local": {"targets": [{"smallModel": "local", "weight": 1}]},
            "cloud": {
                "enabled": True,
                "baseURL": proxy.base_url,
                "model": STAND_IN_MODEL,
                "apiKeySecretRef": {"name": "cloud-llm", "key": "api-key"},
            },
            "complexity": {"threshold": threshold},
            # Capacity is not what this test is about: never overflow.
            "capacity": {"maxQueueDepth": 1000, "maxPredictedTtftMs": 3600000},
        },
    }


def apply_hybrid(
    cluster: Cluster, namespace: str, cloud: RecordingProxy, placement: dict[str, Any]
) -> None:
    """The cloud's key Secret, the SmallModel `local` placed as told, the policy `hybrid`."""
    cluster.kubectl(
        "create", "secret", "generic", "cloud-llm", "-n", namespace,
        f"--from-literal=api-key={STAND_IN_API_KEY}",
    )  # fmt: skip
    model = smallmodel("local", engine="llamacpp", replicas=1, placement=placement)
    cluster.apply(model, routing_policy(cloud), namespace=namespace)


def ready_addresses(cluster: Cluster, namespace: str, service: str, port: str) -> list[str]:
    slices = listing(cluster, "endpointslices", namespace, f"kubernetes.io/service-name={service}")
    return [
        f"{address}:{p['port']}"
        for item in slices
        for p in item.get("ports") or []
        if p.get("name") == port
        for endpoint in item.get("endpoints") or []
        if (endpoint.get("conditions") or {}).get("ready")
        for address in endpoint["addresses"]
    ]


def test_kubectl_apply_to_answers_local_cloud_and_private(
    release: Cluster, namespace: str, cloud: RecordingProxy
) -> None:
    apply_hybrid(release, namespace, cloud, placement=REAL_PLACEMENT)

    # The model pod fetched the packaged model in its init container, loaded it
    # and passed its gRPC readiness probe; the router sees it through EndpointSlices.
    ready_model = wait_condition(
        release, namespace, "smallmodel", "local", "Ready", "True", timeout=300
    )
    assert ready_model["status"]["endpoints"] == 1
    ready_policy = wait_condition(
        release, namespace, "routingpolicy", POLICY, "Ready", "True", timeout=300
    )
    assert ready_policy["status"]["resolvedTargets"] == [
        {"smallModel": "local", "service": "local", "weight": 1, "readyEndpoints": 1}
    ]  # fmt: skip
    router = wait_for(
        "the router's ready endpoint",
        lambda: ready_addresses(release, namespace, f"{POLICY}-router", "grpc"),
        120,
    )[0]
    metrics = ready_addresses(release, namespace, f"{POLICY}-router", "metrics")[0]
    # The router learns its backends from the EndpointSlice watch and polls their load.
    wait_for(
        "the router sees the local model and the egress ready",
        lambda: backends_ready(metrics) == 2,
        120,
    )
    with grpc.insecure_channel(router) as channel:
        stub = pb_grpc.InferenceStub(channel)
        simple, trailers = ask(stub, SIMPLE)
        assert simple.route.target == "local"
        assert simple.route.reason == "complexity.low"
        assert "paris" in simple.text.lower()
        assert trailers["x-edgefleet-route"] == "local"
        assert cloud.received() == []

        hard, trailers = ask(stub, COMPLEX, max_tokens=8)
        assert (hard.route.target, hard.route.reason) == ("cloud", "complexity.high")
        assert [body["messages"][-1]["content"] for body in cloud.received()] == [COMPLEX]

        private, _ = ask(stub, PRIVATE, max_tokens=8)
        assert private.route.target == "local"
        assert private.route.reason.startswith("privacy.")
        assert PLANTED_EMAIL not in cloud.received_text()
        assert len(cloud.received()) == 1

    # The same router over the OpenAI-compatible HTTP port, with the stock SDK.
    http = ready_addresses(release, namespace, f"{POLICY}-router", "http")[0]
    client = OpenAI(base_url=f"http://{http}/v1", api_key="unused", timeout=120)
    reply = client.chat.completions.create(
        model="hybrid", messages=[{"role": "user", "content": SIMPLE}], max_tokens=16,
        temperature=0,
    )  # fmt: skip
    assert reply.choices[0].message.content

    # Every pod of the product is a container on the real node.
    on_nodes = {
        p["metadata"]["name"]: p["spec"]["nodeName"]
        for p in pods(release, namespace, "app.kubernetes.io/part-of=edgefleet")
    }
    assert set(on_nodes.values()) == {REAL_NODE}, on_nodes
    # A client pod asks the router by its Service's DNS name (CoreDNS, then kube-proxy),
    # with the product's CLI over gRPC and the stock openai SDK over HTTP.
    service = f"{POLICY}-router.{namespace}.svc.cluster.local"
    client = realnode_join.client_pod(
        namespace,
        REAL_NODE,
        f"edgefleet --target {service}:50051 generate {shlex.quote(SIMPLE)} --max-tokens 8 "
        f"&& python3 -c {shlex.quote(OPENAI_CLIENT.format(url=f'http://{service}:8080/v1'))}",
    )
    release.apply(client)
    log = wait_for("the client pod's answers", lambda: finished_log(release, client), 180)
    assert "route=local:complexity.low" in log, log
    assert "openai: " in log and log.split("openai: ", 1)[1].strip(), log

    # The router reports its own figures into the RoutingPolicy's status.
    def reported() -> dict[str, Any] | None:
        live = (release.get("routingpolicy", POLICY, namespace).get("status") or {}).get("router")
        return live if live and live.get("requests", 0) >= 4 else None

    live = wait_for("the router's figures in the RoutingPolicy status", reported, 90)
    assert live["cloudRequests"] == 1
    assert [body["messages"][-1]["content"] for body in cloud.received()] == [COMPLEX]
    reasons = {d["reason"]: d["count"] for d in live["lastDecisions"]}
    assert reasons.get("complexity.high") == 1
    assert reasons.get("complexity.low", 0) >= 2
    assert 0 < live["localShare"] < 1
    table = release.kubectl("get", "rp", POLICY, "-n", namespace).stdout.splitlines()
    assert table[1].split()[:3] == [POLICY, "hybrid", "True"], table

    # `helm test` checks every router replica's gRPC health from inside the cluster.
    release.helm(
        "upgrade", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE, "--reuse-values",
        "--set", f"tests.namespaces={{{namespace}}}", "--wait",
    )  # fmt: skip
    # (No --logs: the chart's hook pod is deleted once it has run; a failed check fails
    # the phase.)
    result = release.helm("test", RELEASE, "-n", RELEASE_NAMESPACE, timeout=300)
    assert "TEST SUITE:     edgefleet-test-router-health" in result.stdout, result.stdout
    assert "Phase:          Succeeded" in result.stdout, result.stdout

    # Deleting the policy takes router, egress and their objects with it.
    release.kubectl("delete", "routingpolicy", POLICY, "-n", namespace)
    wait_for(
        "no router or egress object left",
        lambda: managed_children(release, namespace, f"edgefleet.io/routing-policy={POLICY}") == [],
        120,
    )
    assert json.loads(release.kubectl("get", "sm", "local", "-n", namespace, "-o", "json").stdout)
    # With no router left to check, the hook fails instead of passing vacuously.
    failed = release.helm("test", RELEASE, "-n", RELEASE_NAMESPACE, timeout=300, check=False)
    assert failed.returncode != 0
    assert "Failed" in failed.stdout + failed.stderr


OPENAI_CLIENT = """\
from openai import OpenAI
client = OpenAI(base_url="{url}", api_key="unused", timeout=120)
reply = client.chat.completions.create(
    model="hybrid", messages=[{{"role": "user", "content": "Name a colour."}}], max_tokens=8
)
print("openai:", reply.choices[0].message.content)
"""


def finished_log(cluster: Cluster, pod: dict[str, Any]) -> str | None:
    """The pod's log once it succeeded; an AssertionError with it if it failed."""
    name, namespace = pod["metadata"]["name"], pod["metadata"]["namespace"]
    phase = (cluster.get("pod", name, namespace) or {}).get("status", {}).get("phase")
    if phase not in ("Succeeded", "Failed"):
        return None
    log = cluster.kubectl("logs", "-n", namespace, name).stdout
    assert phase == "Succeeded", f"the client pod failed:\n{log}"
    return log


def backends_ready(metrics_address: str) -> int:
    """How many backends the router reports ready on its Prometheus page."""
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5) as reply:
        lines = reply.read().decode().splitlines()
    return sum(
        1 for line in lines
        if line.startswith("edgefleet:router_backend_ready{") and line.endswith(" 1.0")
    )  # fmt: skip
