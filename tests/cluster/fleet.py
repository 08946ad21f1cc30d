"""Turn fleet.yaml (or a generated scale fleet) into Node manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.cluster import versions

FLEET_FILE = Path(__file__).resolve().parent / "fleet.yaml"
REPO_ROOT = Path(__file__).resolve().parents[2]
# kwok is told to manage only Nodes carrying this annotation (see testbed.py),
# so real nodes are left to their kubelets.
KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")


def _node(name: str, spec: dict[str, Any], *, extra_labels: dict[str, str]) -> dict[str, Any]:
    resources = {
        "cpu": str(spec.get("cpu", "4")),
        "memory": str(spec.get("memory", "8Gi")),
        "pods": str(spec.get("pods", 110)),
        **{k: str(v) for k, v in spec.get("extendedResources", {}).items()},
    }
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "node-role.kubernetes.io/edge": "",
        **spec.get("labels", {}),
        **extra_labels,
    }
    labels["type"] = "kwok"
    annotations = {"node.alpha.kubernetes.io/ttl": "0", KWOK_ANNOTATION[0]: KWOK_ANNOTATION[1]}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {"taints": list(spec.get("taints", []))},
        "status": {
            "allocatable": resources,
            "capacity": resources,
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "osImage": "edgefleet test bed",
                "kernelVersion": "",
                "containerRuntimeVersion": "kwok",
                "kubeletVersion": versions.KUBERNETES_VERSION,
                "kubeProxyVersion": versions.KUBERNETES_VERSION,
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        },
    }


def kwok_nodes(fleet: dict[str, Any]) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = []
    for group in fleet.get("kwokNodes", []):
        prefix = group["namePrefix"]
        sites = group.get("sites")
        if sites:
            for site in sites:
                for i in range(group.get("countPerSite", 1)):
                    name = f"{prefix}{site}-{i}"
                    nodes.append(_node(name, group, extra_labels={"edgefleet.io/site": site}))
        else:
            for i in range(group.get("count", 1)):
                nodes.append(_node(f"{prefix}{i}", group, extra_labels={}))
    return nodes


def load(path: Path = FLEET_FILE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def scale_fleet(count: int, sites: int = 10) -> list[dict[str, Any]]:
    """`count` small kwok edge nodes spread over `sites` sites, for scale tests."""
    group = {
        "cpu": "4",
        "memory": "8Gi",
        "pods": 110,
        "labels": {"edgefleet.io/node-class": "scale"},
    }
    return [
        _node(
            f"scale-{i:04d}",
            group,
            extra_labels={"edgefleet.io/site": f"scale-site-{i % sites}"},
        )
        for i in range(count)
    ]


def as_list(nodes: list[dict[str, Any]]) -> str:
    return yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": nodes}, sort_keys=False)
