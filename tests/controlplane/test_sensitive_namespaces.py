"""privacy.sensitiveNamespaces on the test bed: a pod's namespace keeps its prompt local.

The chart's operator runs a SmallModel and a RoutingPolicy (as in
test_operator_e2e: the cloud is the real llama_cpp.server behind a recording
proxy on the bridge address) whose sensitiveNamespaces name a namespace this
test creates, and one that does not exist yet. Client pods on the real
node call the router at its pod address: the one in the sensitive namespace
is kept local with reason privacy.namespace and its prompt never reaches the
proxy; the same prompt from the host or from a pod elsewhere goes to the
cloud. The operator's RoleBindings follow the policy's list and go with it.
"""

from __future__ import annotations

import json
import textwrap
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from edgefleet.routing.complexity import ComplexityScorer
from edgefleet.v1 import inference_pb2_grpc as pb_grpc
from tests.cluster import realnode_join
from tests.controlplane.helpers import Cluster, wait_for
from tests.controlplane.operator_support import (
    REAL_NODE,
    REAL_PLACEMENT,
    condition,
    listing,
    smallmodel,
    wait_condition,
)
from tests.controlplane.test_operator_e2e import COMPLEX, SIMPLE, backends_ready, ready_addresses
from tests.support.cloud import STAND_IN_API_KEY, STAND_IN_MODEL, RecordingProxy
from tests.support.routing import ask

pytestmark = pytest.mark.controlplane

POLICY = "guarded"
# Complex enough for the cloud, and each recognisable in what the proxy received.
FROM_SENSITIVE = f"{COMPLEX} (Asked from the sensitive namespace.)"
FROM_ELSEWHERE = f"{COMPLEX} (Asked from an ordinary namespace.)"

# Runs in a client pod (the product image's interpreter, with grpc and the
# stubs). It waits, polling with a deadline, until the test flips its
# ConfigMap to "go" (once the router has seen this pod), asks once, prints the
# route and exits 0 only when it is the expected one.
CLIENT = textwrap.dedent(
    """
    import pathlib, sys, time
    import grpc
    from edgefleet.v1 import inference_pb2 as pb, inference_pb2_grpc as pb_grpc
    target, prompt, want_target, want_reason = sys.argv[1:5]
    signal = pathlib.Path("/etc/edgefleet-client/go")
    deadline = time.monotonic() + 180
    while not (signal.exists() and signal.read_text() == "go"):
        if time.monotonic() > deadline:
            sys.exit("no go signal")
        time.sleep(0.2)
    with grpc.insecure_channel(target) as channel:
        reply = pb_grpc.InferenceStub(channel).Generate(
            pb.GenerateRequest(
                messages=[pb.ChatMessage(role="user", content=prompt)],
                sampling=pb.SamplingParams(max_tokens=8, temperature=0.0),
            ),
            timeout=240,
        )
    print(f"route={reply.route.target}:{reply.route.reason}", flush=True)
    sys.exit(0 if (reply.route.target, reply.route.reason) == (want_target, want_reason) else 1)
    """
)


@pytest.fixture
def sensitive(cluster: Cluster, namespace: str) -> Iterator[str]:
    name = f"{namespace}-hr"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def routing_policy(proxy: RecordingProxy, namespaces: list[str]) -> dict[str, Any]:
    scorer = ComplexityScorer.load()
    threshold = (scorer.score(SIMPLE) + scorer.score(COMPLEX)) / 2
    for prompt in (COMPLEX, FROM_SENSITIVE, FROM_ELSEWHERE):
        assert scorer.score(prompt) > threshold, prompt
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
            "privacy": {"sensitiveNamespaces": namespaces},
            "complexity": {"threshold": threshold},
            "capacity": {"maxQueueDepth": 1000, "maxPredictedTtftMs": 3600000},
        },
    }


def binding_namespaces(cluster: Cluster, policy_namespace: str) -> list[str]:
    """Where the operator has bound this policy's router to read pods."""
    selector = (
        f"edgefleet.io/routing-policy={POLICY},"
        f"edgefleet.io/routing-policy-namespace={policy_namespace}"
    )
    out = cluster.kubectl("get", "rolebindings", "-A", "-l", selector, "-o", "json")
    items = json.loads(out.stdout)["items"]
    for item in items:
        assert item["roleRef"]["name"] == "edgefleet-router-pods", item
        assert item["subjects"] == [
            {"kind": "ServiceAccount", "name": f"{POLICY}-router", "namespace": policy_namespace}
        ]
    return sorted(item["metadata"]["namespace"] for item in items)


def router_metric(metrics_address: str, name: str, namespace: str) -> float | None:
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5) as reply:
        lines = reply.read().decode().splitlines()
    prefix = f'{name}{{namespace="{namespace}"}} '
    found = [float(line[len(prefix) :]) for line in lines if line.startswith(prefix)]
    return found[0] if found else None


def start_client(
    cluster: Cluster, namespace: str, name: str, router: str, prompt: str, want: tuple[str, str]
) -> None:
    """A client pod held back by its ConfigMap until `go`."""
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name},
        "data": {"go": "wait"},
    }
    pod = realnode_join.client_pod(namespace, REAL_NODE, "", name=name)
    (container,) = pod["spec"]["containers"]
    container["command"] = ["python3", "-c", CLIENT, router, prompt, *want]
    container["volumeMounts"] = [
        {"name": "signal", "mountPath": "/etc/edgefleet-client", "readOnly": True}
    ]
    pod["spec"]["volumes"] = [{"name": "signal", "configMap": {"name": name}}]
    cluster.apply(config_map, pod, namespace=namespace)


def pod_ip(cluster: Cluster, namespace: str, name: str) -> str | None:
    return ((cluster.get("pod", name, namespace) or {}).get("status") or {}).get("podIP")


def release_client(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    """Say go, wait for the pod to end, return it (Succeeded only if its route was right)."""
    cluster.kubectl(
        "patch", "configmap", name, "-n", namespace, "--type=merge", "-p", '{"data":{"go":"go"}}'
    )

    def ended() -> dict[str, Any] | None:
        pod = cluster.get("pod", name, namespace) or {}
        phase = (pod.get("status") or {}).get("phase")
        return pod if phase in ("Succeeded", "Failed") else None

    return wait_for(f"client pod {namespace}/{name} ends", ended, 300)


def client_log(cluster: Cluster, pod: dict[str, Any]) -> str:
    """What the client printed (`kubectl logs`)."""
    name, namespace = pod["metadata"]["name"], pod["metadata"]["namespace"]
    return cluster.kubectl("logs", "-n", namespace, name, check=False).stdout


def test_a_pod_in_a_sensitive_namespace_stays_local_and_its_bindings_follow_the_policy(
    release: Cluster, namespace: str, sensitive: str, cloud: RecordingProxy
) -> None:
    # Created later in the test: until then the router cannot list it and fails closed.
    late = f"{namespace}-late"
    release.kubectl(
        "create", "secret", "generic", "cloud-llm", "-n", namespace,
        f"--from-literal=api-key={STAND_IN_API_KEY}",
    )  # fmt: skip
    model = smallmodel("local", engine="llamacpp", replicas=1, placement=REAL_PLACEMENT)
    release.apply(model, routing_policy(cloud, [sensitive, late]), namespace=namespace)
    try:
        run_scenario(release, namespace, sensitive, late, cloud)
    finally:
        release.kubectl("delete", "namespace", late, "--wait=false", check=False)


def run_scenario(
    release: Cluster, namespace: str, sensitive: str, late: str, cloud: RecordingProxy
) -> None:
    wait_condition(release, namespace, "smallmodel", "local", "Ready", "True", timeout=300)
    wait_condition(release, namespace, "routingpolicy", POLICY, "Ready", "True", timeout=300)
    router = wait_for(
        "the router's ready endpoint",
        lambda: ready_addresses(release, namespace, f"{POLICY}-router", "grpc"),
        120,
    )[0]
    metrics = ready_addresses(release, namespace, f"{POLICY}-router", "metrics")[0]
    wait_for("the router sees the model and the egress", lambda: backends_ready(metrics) == 2, 120)

    # The operator bound the router where it could, and says what it could not.
    assert binding_namespaces(release, namespace) == [sensitive]
    degraded = wait_condition(
        release, namespace, "routingpolicy", POLICY, "Degraded", "True",
        reason="SensitiveNamespacesMissing",
    )  # fmt: skip
    assert late in condition(degraded, "Degraded")["message"]

    with grpc.insecure_channel(router) as channel:
        stub = pb_grpc.InferenceStub(channel)
        # Fail closed: one listed namespace cannot be read, so nobody is placed for sure.
        reply, _ = ask(stub, COMPLEX, max_tokens=8)
        assert (reply.route.target, reply.route.reason) == ("local", "privacy.namespace_unsynced")
        assert cloud.received() == []

        # Once the namespace exists the operator binds it on its status round, the
        # router's retried list succeeds, and the host (in no listed namespace) is
        # routed on the prompt's merits again.
        release.kubectl("create", "namespace", late)
        wait_for(
            "a RoleBinding in the new namespace",
            lambda: binding_namespaces(release, namespace) == sorted([sensitive, late]),
            60,
        )
        wait_for(
            "the router has listed both namespaces",
            lambda: all(
                router_metric(metrics, "edgefleet:router_sensitive_namespace_synced", ns) == 1
                for ns in (sensitive, late)
            ),
            90,
        )
        wait_condition(release, namespace, "routingpolicy", POLICY, "Degraded", "False", timeout=60)
        reply, _ = ask(stub, COMPLEX, max_tokens=8)
        assert (reply.route.target, reply.route.reason) == ("cloud", "complexity.high")
        assert [b["messages"][-1]["content"] for b in cloud.received()] == [COMPLEX]

    # A client pod in the sensitive namespace: the router learns its IP from the
    # Pod watch (the test waits for that before letting it ask; see docs/router.md
    # on a pod's first moments), and keeps its complex prompt local.
    start_client(
        release, sensitive, "asker", router, FROM_SENSITIVE, ("local", "privacy.namespace")
    )
    address = wait_for("the client pod's IP", lambda: pod_ip(release, sensitive, "asker"), 120)
    wait_for(
        "the router knows the client pod",
        lambda: (
            router_metric(metrics, "edgefleet:router_sensitive_namespace_pod_ips", sensitive) == 1
        ),
        60,
    )
    finished = release_client(release, sensitive, "asker")
    assert finished["status"]["phase"] == "Succeeded", client_log(release, finished)
    assert "route=local:privacy.namespace" in client_log(release, finished)
    assert "Asked from the sensitive namespace" not in cloud.received_text()
    assert address.startswith("10.244.")

    # The same kind of prompt from a pod in an ordinary namespace goes to the cloud.
    start_client(release, namespace, "asker", router, FROM_ELSEWHERE, ("cloud", "complexity.high"))
    wait_for("the ordinary client's IP", lambda: pod_ip(release, namespace, "asker"), 120)
    finished = release_client(release, namespace, "asker")
    assert finished["status"]["phase"] == "Succeeded", client_log(release, finished)
    assert [b["messages"][-1]["content"] for b in cloud.received()] == [COMPLEX, FROM_ELSEWHERE]

    # Dropping a namespace from the policy removes its binding (and only that one).
    patch = {"spec": {"privacy": {"sensitiveNamespaces": [late]}}}
    release.kubectl(
        "patch", "routingpolicy", POLICY, "-n", namespace, "--type=merge", "-p", json.dumps(patch)
    )
    wait_for(
        "the dropped namespace's RoleBinding removed",
        lambda: binding_namespaces(release, namespace) == [late],
        60,
    )
    policy = release.get("routingpolicy", POLICY, namespace)
    assert "edgefleet.io/operator" in policy["metadata"].get("finalizers", [])

    # Deleting the policy removes the bindings it left in other namespaces.
    release.kubectl("delete", "routingpolicy", POLICY, "-n", namespace, "--wait=false")
    wait_for(
        "the policy gone, and its RoleBindings with it",
        lambda: (
            release.get("routingpolicy", POLICY, namespace) is None
            and binding_namespaces(release, namespace) == []
        ),
        120,
    )
    assert listing(release, "rolebindings", late, f"edgefleet.io/routing-policy={POLICY}") == []
