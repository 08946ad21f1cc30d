"""Shared pieces of the operator's cluster tests: resources, waits, child listings."""

from __future__ import annotations

import json
from typing import Any

from tests.cluster import realnode_join
from tests.controlplane.helpers import Cluster, wait_for

BUILTIN = {"gguf": {"uri": "builtin://smollm2-135m"}}
EDGE_TOLERATION = {"key": "edgefleet.io/edge", "operator": "Exists", "effect": "NoSchedule"}
# The test bed's first real node (kubelet + containerd), where model pods run as containers.
REAL_NODE = realnode_join.REAL_NODES[0].name
REAL_PLACEMENT = realnode_join.placement(REAL_NODE)
CHILD_KINDS = "deployments,daemonsets,services,poddisruptionbudgets,networkpolicies,configmaps"


def smallmodel(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "edgefleet.io/v1alpha1",
        "kind": "SmallModel",
        "metadata": {"name": name},
        "spec": {"source": BUILTIN, **spec},
    }


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for item in ((obj or {}).get("status") or {}).get("conditions") or []:
        if item["type"] == kind:
            return item
    return {}


def wait_condition(
    cluster: Cluster,
    namespace: str,
    kind: str,
    name: str,
    condition_type: str,
    status: str,
    reason: str | None = None,
    timeout: float = 120,
) -> dict[str, Any]:
    """Wait until the resource reports the condition (for its current generation)."""

    def probe() -> dict[str, Any] | None:
        obj = cluster.get(kind, name, namespace)
        found = condition(obj, condition_type)
        generation = (obj or {}).get("metadata", {}).get("generation")
        if (
            found.get("status") == status
            and (reason is None or found.get("reason") == reason)
            and found.get("observedGeneration") == generation
        ):
            return obj
        return None

    wanted = f"{kind} {namespace}/{name} {condition_type}={status}" + (
        f" ({reason})" if reason else ""
    )
    return wait_for(wanted, probe, timeout)


def listing(cluster: Cluster, kinds: str, namespace: str, selector: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", kinds, "-n", namespace, "-l", selector, "-o", "json")
    return json.loads(out.stdout)["items"]


def managed_children(cluster: Cluster, namespace: str, selector: str) -> list[str]:
    """kind/name of everything the operator made that matches the selector."""
    items = listing(cluster, CHILD_KINDS, namespace, selector)
    return sorted(f"{i['kind']}/{i['metadata']['name']}" for i in items)


def pods(cluster: Cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    return listing(cluster, "pods", namespace, selector)
