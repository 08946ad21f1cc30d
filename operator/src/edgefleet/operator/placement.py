"""Which engine classes a SmallModel runs as, decided from its spec and the nodes (pure).

`engine: auto` means vLLM on nodes with a GPU and llama.cpp on CPU nodes: the
operator looks at the nodes the model's placement admits (node selector,
sites, tolerated taints) and plans one workload per class that has nodes. A
fixed replica count prefers GPUs: up to one replica per eligible GPU node runs
vLLM, the rest llama.cpp. With no eligible node at all the model is still
planned (as llama.cpp) so that the scheduler, and then the status, say why it
cannot run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgefleet.operator.names import SITE_LABEL
from edgefleet.operator.spec import Placement, SmallModelSpec


@dataclass(frozen=True)
class NodeFacts:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Mapping[str, Any], ...] = ()
    gpus: int = 0
    unschedulable: bool = False

    @classmethod
    def from_node(cls, node: Mapping[str, Any], gpu_resource: str) -> NodeFacts:
        meta, spec = node.get("metadata", {}), node.get("spec", {}) or {}
        allocatable = (node.get("status", {}) or {}).get("allocatable", {}) or {}
        try:
            gpus = int(str(allocatable.get(gpu_resource, "0")))
        except ValueError:
            gpus = 0
        return cls(
            name=meta.get("name", ""),
            labels=dict(meta.get("labels") or {}),
            taints=tuple(spec.get("taints") or ()),
            gpus=gpus,
            unschedulable=bool(spec.get("unschedulable")),
        )

    def is_gpu(self, gpu_label: str) -> bool:
        # The label, not the allocatable count: pods are steered by node affinity
        # on this label, so planning must count exactly the nodes they can reach.
        return self.labels.get(gpu_label) == "true"


@dataclass(frozen=True)
class EnginePlan:
    engine: str
    # None: one pod per eligible node (a DaemonSet).
    replicas: int | None
    # Eligible nodes of this class when planned (for status and messages).
    nodes: int


def tolerates(tolerations: Iterable[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    """The core/v1 toleration rule, for the effects that keep pods off a node."""
    if taint.get("effect") == "PreferNoSchedule":
        return True
    for toleration in tolerations:
        effect = toleration.get("effect") or ""
        if effect and effect != taint.get("effect"):
            continue
        operator = toleration.get("operator") or "Equal"
        key = toleration.get("key") or ""
        if operator == "Exists" and (not key or key == taint.get("key")):
            return True
        if (
            operator == "Equal"
            and key == taint.get("key")
            and (toleration.get("value") or "") == (taint.get("value") or "")
        ):
            return True
    return False


def admits(placement: Placement, node: NodeFacts) -> bool:
    """Whether the placement lets a model pod onto this node (affinity left to the scheduler)."""
    if node.unschedulable:
        return False
    if any(node.labels.get(k) != v for k, v in placement.node_selector.items()):
        return False
    if placement.sites and node.labels.get(SITE_LABEL) not in placement.sites:
        return False
    return all(
        tolerates(placement.tolerations, taint)
        for taint in node.taints
        if taint.get("effect") in ("NoSchedule", "NoExecute")
    )


def eligible_nodes(
    placement: Placement, nodes: Iterable[NodeFacts], gpu_label: str
) -> dict[str, bool]:
    """The nodes a placement admits, each with whether it is a GPU node (see counts_as)."""
    standing = {n.name: counts_as(placement, n, gpu_label) for n in nodes}
    return {name: is_gpu for name, is_gpu in standing.items() if is_gpu is not None}


def plan_engines(
    spec: SmallModelSpec, nodes: Iterable[NodeFacts], gpu_label: str
) -> list[EnginePlan]:
    eligible = eligible_nodes(spec.placement, nodes, gpu_label)
    return plans_for(spec, eligible)


def plans_for(spec: SmallModelSpec, eligible: Mapping[str, bool]) -> list[EnginePlan]:
    """The plan from the eligible nodes alone: planning reads only how many, and how many GPU."""
    gpu_nodes = sum(1 for is_gpu in eligible.values() if is_gpu)
    cpu_nodes = len(eligible) - gpu_nodes
    engine = spec.engine
    replicas = spec.requested_replicas()
    if engine == "llamacpp":
        return [EnginePlan("llamacpp", replicas, len(eligible))]
    if engine == "vllm":
        return [EnginePlan("vllm", replicas, gpu_nodes)]
    plans: list[EnginePlan] = []
    if replicas is None:
        if gpu_nodes:
            plans.append(EnginePlan("vllm", None, gpu_nodes))
        if cpu_nodes or not gpu_nodes:
            plans.append(EnginePlan("llamacpp", None, cpu_nodes))
        return plans
    on_gpu = min(replicas, gpu_nodes)
    if on_gpu:
        plans.append(EnginePlan("vllm", on_gpu, gpu_nodes))
    if replicas - on_gpu or not on_gpu:
        plans.append(EnginePlan("llamacpp", replicas - on_gpu, cpu_nodes))
    return plans


def counts_as(placement: Placement, node: NodeFacts | None, gpu_label: str) -> bool | None:
    """How a node counts in a plan under `placement`: None if not eligible, else whether GPU."""
    if node is None or not admits(placement, node):
        return None
    return node.is_gpu(gpu_label)


class FleetFacts:
    """What planning reads of each node (labels, taints, GPUs, cordons), as last observed.

    Nodes post status every few seconds; those heartbeats do not change a plan,
    so only a change of these facts reaches the models (States.node_changed).
    Used on the event loop only.
    """

    def __init__(self) -> None:
        self._seen: dict[str, NodeFacts] = {}

    def observe(self, facts: NodeFacts) -> bool:
        """Record a node as it is now; True when that changes what planning sees."""
        if self._seen.get(facts.name) == facts:
            return False
        self._seen[facts.name] = facts
        return True

    def forget(self, node: str) -> bool:
        """A node is gone; True when it was known."""
        return self._seen.pop(node, None) is not None
