"""The privacy boundary, with packets: of all pods, only the egress reaches the internet.

The cloud stand-in's recording proxy listens on the test bed's internet stand-in
(tests/cluster/network.py): a network namespace outside every cluster range, which
every real node routes. So nothing but policies, enforced on each node by
kube-network-policies (tests/cluster/realnode.py), stands between a pod and it: the
operator's NetworkPolicies for the product's pods, and the chart's egress guard (the
cluster's BaselineAdminNetworkPolicy, on in the test bed's values) for every pod that
has none. A pod asks with
a plain TCP connect from inside its own container.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from edgefleet.v1 import inference_pb2_grpc as pb_grpc
from tests.cluster import network, realnode_join
from tests.controlplane.conftest import RELEASE_NAMESPACE
from tests.controlplane.helpers import Cluster, wait_for
from tests.controlplane.operator_support import (
    REAL_NODE,
    REAL_PLACEMENT,
    listing,
    pods,
    wait_condition,
)
from tests.controlplane.test_operator_e2e import (
    PLANTED_EMAIL,
    POLICY,
    PRIVATE,
    apply_hybrid,
    ready_addresses,
)
from tests.support.cloud import RecordingProxy
from tests.support.routing import ask

pytestmark = pytest.mark.controlplane

OPERATOR = "deployment/edgefleet-operator"
GUARD = "baselineadminnetworkpolicy/default"
PART_OF = "app.kubernetes.io/part-of=edgefleet"
CONNECT_TIMEOUT_S = 5
# Exit 0 when a TCP connection opens; a refused or dropped one exits non-zero.
CONNECT = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), {t})"


def _connects(cluster: Cluster, namespace: str, pod: str, container: str, to: str) -> bool:
    host, port = to.rsplit(":", 1)
    script = CONNECT.format(t=CONNECT_TIMEOUT_S)
    result = cluster.kubectl(
        "exec", "-n", namespace, pod, "-c", container, "--",
        "python3", "-c", script, host, port, check=False,
    )  # fmt: skip
    return result.returncode == 0


def _without_server_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """An object as read, fit to be created again."""
    meta = obj["metadata"]
    for field in ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields"):
        meta.pop(field, None)
    obj.pop("status", None)
    return obj


def _pod(cluster: Cluster, namespace: str, selector: str) -> str:
    found = [p["metadata"]["name"] for p in pods(cluster, namespace, selector)]
    assert len(found) == 1, (selector, found)
    return found[0]


@pytest.fixture
def hybrid(release: Cluster, namespace: str, cloud: RecordingProxy) -> Iterator[Cluster]:
    """SmallModel, router and egress running and Ready in `namespace`."""
    apply_hybrid(release, namespace, cloud, placement=REAL_PLACEMENT)
    wait_condition(release, namespace, "smallmodel", "local", "Ready", "True", timeout=300)
    wait_condition(release, namespace, "routingpolicy", POLICY, "Ready", "True", timeout=300)
    yield release


def test_only_the_egress_reaches_the_internet_and_only_through_the_policies(
    hybrid: Cluster, namespace: str, cloud: RecordingProxy
) -> None:
    cluster = hybrid
    internet = f"{network.INTERNET_ADDRESS}:{cloud.port}"
    model = _pod(cluster, namespace, "edgefleet.io/model=local")
    router = _pod(cluster, namespace, "app.kubernetes.io/component=router")
    egress = _pod(cluster, namespace, "app.kubernetes.io/component=egress")

    assert not _connects(cluster, namespace, model, "server", internet)
    assert not _connects(cluster, namespace, router, "router", internet)
    assert _connects(cluster, namespace, egress, "egress", internet)

    # A pod of another namespace gets no way out: not directly (the egress guard), nor
    # through the egress, and it cannot reach the model either. Asked once the pod runs:
    # a pod's first moments, before the enforcer's watch has seen it and its namespace,
    # are not held (docs/realnode.md).
    outsider = f"{namespace}-other"
    cluster.kubectl("create", "namespace", outsider)
    try:
        cluster.apply(realnode_join.client_pod(outsider, REAL_NODE, "sleep 600", name="outsider"))
        cluster.kubectl(
            "wait", "--for=condition=Ready", "pod/outsider", "-n", outsider, "--timeout=120s"
        )
        egress_grpc = ready_addresses(cluster, namespace, f"{POLICY}-egress", "grpc")[0]
        model_grpc = ready_addresses(cluster, namespace, "local", "grpc")[0]
        for target in (internet, egress_grpc, model_grpc):
            assert not _connects(cluster, outsider, "outsider", "client", target), target
    finally:
        cluster.kubectl("delete", "namespace", outsider, "--wait=false")

    # A prompt with personal data stays local: nothing of it reaches the internet.
    router_grpc = ready_addresses(cluster, namespace, f"{POLICY}-router", "grpc")[0]
    with grpc.insecure_channel(router_grpc) as channel:
        private, _ = ask(pb_grpc.InferenceStub(channel), PRIVATE, max_tokens=8)
    assert private.route.target == "local"
    assert PLANTED_EMAIL not in cloud.received_text()

    # The policies, not the network, are the boundary, and each layer holds alone:
    # without the NetworkPolicies (and no operator to put them back) the guard still
    # keeps the model pod in; without the guard too, it gets out.
    policies = listing(cluster, "networkpolicies", namespace, PART_OF)
    assert len(policies) == 3, [p["metadata"]["name"] for p in policies]
    guard = _without_server_fields(json.loads(cluster.kubectl("get", GUARD, "-o", "json").stdout))
    cluster.kubectl("scale", OPERATOR, "-n", RELEASE_NAMESPACE, "--replicas=0")
    try:
        wait_for(
            "the operator stopped",
            lambda: not pods(cluster, RELEASE_NAMESPACE, "app.kubernetes.io/component=operator"),
            120,
        )
        cluster.kubectl("delete", "networkpolicies", "--all", "-n", namespace)
        assert not _connects(cluster, namespace, model, "server", internet)
        cluster.kubectl("delete", GUARD)
        assert _connects(cluster, namespace, model, "server", internet)
    finally:
        # The guard as helm installed it (its ownership metadata included).
        cluster.kubectl("apply", "-f", "-", stdin=json.dumps(guard))
        cluster.kubectl("scale", OPERATOR, "-n", RELEASE_NAMESPACE, "--replicas=1")
        cluster.kubectl("rollout", "status", OPERATOR, "-n", RELEASE_NAMESPACE, "--timeout=180s")
    # The operator puts them back, and the boundary with them.
    wait_for(
        "the operator's NetworkPolicies back",
        lambda: len(listing(cluster, "networkpolicies", namespace, PART_OF)) == 3,
        180,
    )
    wait_for(
        "the model pod shut out again",
        lambda: not _connects(cluster, namespace, model, "server", internet),
        60,
    )
