"""Pieces several builders share: metadata, probes, node affinity terms, security contexts."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


def metadata(name: str, namespace: str, labels: Mapping[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": dict(labels)}


def service_identity(
    account: str, namespace: str, labels: Mapping[str, str], cluster_role: str
) -> list[dict[str, Any]]:
    """A ServiceAccount bound (RoleBinding in its namespace) to one of the chart's ClusterRoles."""
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": metadata(account, namespace, labels),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": metadata(account, namespace, labels),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": cluster_role,
            },
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        },
    ]


def grpc_probe(port: int, *, initial_delay: int, period: int, failures: int) -> dict[str, Any]:
    return {
        "grpc": {"port": port},
        "initialDelaySeconds": initial_delay,
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def with_required_terms(
    affinity: Mapping[str, Any] | None, expressions: list[dict[str, Any]]
) -> dict[str, Any]:
    """The user's affinity with `expressions` ANDed into every required node term.

    Node selector terms are ORed and expressions inside one term ANDed, so our
    constraint has to go into each term (or be the only term).
    """
    result = copy.deepcopy(dict(affinity or {}))
    if not expressions:
        return result
    node = result.setdefault("nodeAffinity", {})
    required = node.setdefault(
        "requiredDuringSchedulingIgnoredDuringExecution", {"nodeSelectorTerms": []}
    )
    terms = required.setdefault("nodeSelectorTerms", [])
    if not terms:
        terms.append({})
    for term in terms:
        term.setdefault("matchExpressions", []).extend(copy.deepcopy(expressions))
    return result


# The pod's own name as the serving instance (served_by, metrics), as a real
# kubelet's hostname would give; set explicitly so every runtime agrees.
INSTANCE_ENV = [
    {
        "name": "EDGEFLEET_INSTANCE_NAME",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
    }
]


# Every pod the operator makes runs as its image's numeric non-root user (10001 in both
# images) under the runtime's default seccomp filter; the kubelet refuses to start a
# container whose image would run as root.
POD_SECURITY_CONTEXT = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


def container_security_context(*, read_only_root: bool = True) -> dict[str, Any]:
    """No privilege, no capability, no way to gain either; the root filesystem is
    read-only unless the process must write into its image (vLLM's caches)."""
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": read_only_root,
    }
