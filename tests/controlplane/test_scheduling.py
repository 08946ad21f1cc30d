"""Scheduling onto the kwok edge fleet: Deployments, EndpointSlices, node classes."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from tests.cluster import network
from tests.controlplane.helpers import Cluster, wait_for

pytestmark = pytest.mark.controlplane

EDGE_TOLERATION = {
    "key": "edgefleet.io/edge",
    "operator": "Equal",
    "value": "true",
    "effect": "NoSchedule",
}


def _deployment(name: str, replicas: int, pod_spec: dict[str, Any]) -> dict[str, Any]:
    labels = {"app": name}
    container = {
        "name": "app",
        "image": "registry.invalid/edgefleet/fake:1",
        "ports": [{"containerPort": 8080}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [container], **pod_spec},
            },
        },
    }


def _pods(cluster: Cluster, namespace: str, app: str) -> list[dict[str, Any]]:
    items = cluster.get("pods", namespace=namespace)["items"]
    return [p for p in items if p["metadata"]["labels"].get("app") == app]


def _available(cluster: Cluster, namespace: str, name: str) -> bool:
    dep = cluster.get("deployment", name, namespace)
    return (
        any(
            c["type"] == "Available" and c["status"] == "True"
            for c in dep["status"].get("conditions", [])
        )
        and dep["status"].get("readyReplicas") == dep["spec"]["replicas"]
    )


def _node(cluster: Cluster, name: str) -> dict[str, Any]:
    return cluster.get("node", name)


def test_deployment_on_kwok_nodes_becomes_available_and_lists_pod_ips_in_its_endpointslice(
    fleet_cluster: Cluster, namespace: str
) -> None:
    cluster = fleet_cluster
    cluster.apply(
        _deployment("web", 3, {"nodeSelector": {"edgefleet.io/node-class": "gpu"}}),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
        namespace=namespace,
    )
    wait_for("deployment web Available", lambda: _available(cluster, namespace, "web"), 90)
    pods = _pods(cluster, namespace, "web")
    pod_ips = {p["status"]["podIP"] for p in pods}
    assert len(pod_ips) == 3
    if cluster.testbed:
        assert all(ipaddress.ip_address(ip) in network.KWOK_POD_RANGE for ip in pod_ips)
    assert {p["spec"]["nodeName"] for p in pods} <= {"gpu-0", "gpu-1"}

    def slice_addresses() -> set[str] | None:
        items = cluster.get("endpointslices", namespace=namespace)["items"]
        items = [
            s for s in items if s["metadata"]["labels"].get("kubernetes.io/service-name") == "web"
        ]
        ready = {
            a
            for s in items
            for e in s.get("endpoints") or []
            if e["conditions"].get("ready")
            for a in e["addresses"]
        }
        return ready if ready == pod_ips else None

    assert wait_for("EndpointSlice to list every pod IP", slice_addresses, 60) == pod_ips


def test_node_selector_and_toleration_send_pods_to_the_right_node_class(
    fleet_cluster: Cluster, namespace: str
) -> None:
    cluster = fleet_cluster
    gpu = _deployment("gpu-job", 1, {})
    gpu["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "limits": {"nvidia.com/gpu": "1"}
    }
    site_b = _deployment(
        "site-b",
        2,
        {"nodeSelector": {"edgefleet.io/site": "site-b"}, "tolerations": [EDGE_TOLERATION]},
    )
    untolerated = _deployment(
        "no-toleration", 1, {"nodeSelector": {"edgefleet.io/node-class": "edge"}}
    )
    cluster.apply(gpu, site_b, untolerated, namespace=namespace)
    wait_for("gpu-job Available", lambda: _available(cluster, namespace, "gpu-job"), 90)
    wait_for("site-b Available", lambda: _available(cluster, namespace, "site-b"), 90)

    (gpu_pod,) = _pods(cluster, namespace, "gpu-job")
    assert "nvidia.com/gpu" in _node(cluster, gpu_pod["spec"]["nodeName"])["status"]["capacity"]
    for pod in _pods(cluster, namespace, "site-b"):
        assert (
            _node(cluster, pod["spec"]["nodeName"])["metadata"]["labels"]["edgefleet.io/site"]
            == "site-b"
        )

    def unschedulable_for_taint() -> str | None:
        (pod,) = _pods(cluster, namespace, "no-toleration")
        for cond in pod["status"].get("conditions", []):
            if cond["type"] == "PodScheduled" and cond.get("reason") == "Unschedulable":
                return cond["message"]
        return None

    message = wait_for("untolerated pod to be refused", unschedulable_for_taint, 60)
    # The scheduler names the reason, not the key; the tolerating site-b pods above show the key.
    assert "untolerated taint" in message
    (pending,) = _pods(cluster, namespace, "no-toleration")
    assert pending["status"]["phase"] == "Pending" and not pending["spec"].get("nodeName")


def test_daemonset_runs_one_ready_pod_on_each_matching_edge_node(
    fleet_cluster: Cluster, namespace: str
) -> None:
    cluster = fleet_cluster
    labels = {"app": "agent"}
    cluster.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": "agent"},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "nodeSelector": {"edgefleet.io/site": "site-a"},
                        "tolerations": [EDGE_TOLERATION],
                        "containers": [{"name": "agent", "image": "registry.invalid/agent:1"}],
                    },
                },
            },
        },
        namespace=namespace,
    )

    def all_ready() -> dict[str, Any] | None:
        status = cluster.get("daemonset", "agent", namespace).get("status", {})
        desired = status.get("desiredNumberScheduled")
        return status if desired and status.get("numberReady") == desired else None

    status = wait_for("daemonset agent ready everywhere", all_ready, 90)
    assert status["desiredNumberScheduled"] == 2
    nodes = sorted(p["spec"]["nodeName"] for p in _pods(cluster, namespace, "agent"))
    assert nodes == ["edge-site-a-0", "edge-site-a-1"]
