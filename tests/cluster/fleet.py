"""Turn fleet.yaml (or a generated scale fleet) into Node manifests."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.cluster import network, versions

FLEET_FILE = Path(__file__).resolve().parent / "fleet.yaml"
REPO_ROOT = Path(__file__).resolve().parents[2]
# kwok is told to manage only Nodes carrying this annotation (see testbed.py),
# so process-kubelet nodes are left alone.
KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
PROCESS_LABEL = ("edgefleet.io/runtime", "process")


def _node(
    name: str, spec: dict[str, Any], *, kwok: bool, extra_labels: dict[str, str]
) -> dict[str, Any]:
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
    annotations = {"node.alpha.kubernetes.io/ttl": "0"}
    if kwok:
        labels["type"] = "kwok"
        annotations[KWOK_ANNOTATION[0]] = KWOK_ANNOTATION[1]
    else:
        labels[PROCESS_LABEL[0]] = PROCESS_LABEL[1]
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
                "containerRuntimeVersion": "kwok" if kwok else "process",
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
                    nodes.append(
                        _node(name, group, kwok=True, extra_labels={"edgefleet.io/site": site})
                    )
        else:
            for i in range(group.get("count", 1)):
                nodes.append(_node(f"{prefix}{i}", group, kwok=True, extra_labels={}))
    return nodes


def process_nodes(fleet: dict[str, Any]) -> list[dict[str, Any]]:
    """Process nodes, each with its own /24 podCIDR from the process pod range."""
    subnets = network.PROCESS_POD_RANGE.subnets(new_prefix=24)
    next(subnets)  # 10.244.0.0/24 holds the bridge (API) address
    nodes = []
    # subnets is far longer than the node list; zip stops at the last node.
    for group, cidr in zip(fleet.get("processNodes", []), subnets, strict=False):
        node = _node(group["name"], group, kwok=False, extra_labels={})
        node["spec"]["podCIDR"] = str(cidr)
        node["spec"]["podCIDRs"] = [str(cidr)]
        nodes.append(node)
    return nodes


@dataclass(frozen=True)
class KubeletSettings:
    """What a process node's kubelet is told beyond its node name (fleet.yaml `python`, `env`)."""

    node: str
    # The interpreter whose folder comes first on the node's Pods' PATH; None: the kubelet's own.
    python: Path | None = None
    # Variables every container on the node starts with (the Pod's env wins).
    env: dict[str, str] = field(default_factory=dict)

    def args(self) -> list[str]:
        """The kubelet's command-line flags for these settings."""
        args = ["--node", self.node]
        if self.python is not None:
            args += ["--pod-python", str(self.python)]
        if self.env:
            args += ["--pod-env", json.dumps(self.env, sort_keys=True)]
        return args


def kubelet_settings(fleet: dict[str, Any]) -> list[KubeletSettings]:
    """One entry per process node, in fleet.yaml's order."""
    settings = []
    for group in fleet.get("processNodes", []):
        python = group.get("python")
        settings.append(
            KubeletSettings(
                node=group["name"],
                python=(REPO_ROOT / python) if python else None,
                env={str(k): str(v) for k, v in (group.get("env") or {}).items()},
            )
        )
    return settings


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
            kwok=True,
            extra_labels={"edgefleet.io/site": f"scale-site-{i % sites}"},
        )
        for i in range(count)
    ]


def as_list(nodes: list[dict[str, Any]]) -> str:
    return yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": nodes}, sort_keys=False)
