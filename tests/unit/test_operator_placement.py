"""Which engine classes a SmallModel runs as: the toleration rule, node admission, the plan.

Pure functions over plain data (edgefleet.operator.placement), no cluster.
"""

from __future__ import annotations

from typing import Any

import pytest

from edgefleet.operator.placement import (
    EnginePlan,
    NodeFacts,
    admits,
    counts_as,
    eligible_nodes,
    plan_engines,
    plans_for,
    tolerates,
)
from edgefleet.operator.spec import Placement, SmallModelSpec, parse_smallmodel_spec

GPU_LABEL = "nvidia.com/gpu.present"
SITE = "edgefleet.io/site"
NO_SCHEDULE = {"key": "dedicated", "value": "edge", "effect": "NoSchedule"}


def model(spec: dict[str, Any]) -> SmallModelSpec:
    return parse_smallmodel_spec({"source": {"gguf": {"uri": "builtin://smollm2-135m"}}, **spec})


def placed(placement: dict[str, Any]) -> Placement:
    return model({"placement": placement}).placement


def gpu_node(name: str, **labels: str) -> NodeFacts:
    return NodeFacts(name, labels={GPU_LABEL: "true", **labels}, gpus=1)


def cpu_node(name: str, **labels: str) -> NodeFacts:
    return NodeFacts(name, labels=dict(labels))


# --- tolerates -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("toleration", "expected"),
    [
        ({"operator": "Exists"}, True),  # no key: tolerates every taint
        ({"key": "dedicated", "operator": "Exists"}, True),
        ({"key": "other", "operator": "Exists"}, False),
        ({"key": "dedicated", "operator": "Equal", "value": "edge"}, True),
        ({"key": "dedicated", "value": "edge"}, True),  # Equal is the default operator
        ({"key": "dedicated", "operator": "Equal", "value": "core"}, False),
        ({"key": "dedicated", "operator": "Equal"}, False),  # "" != "edge"
        ({"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}, True),
        ({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}, False),
        ({"operator": "Exists", "effect": "NoExecute"}, False),
        ({"key": "dedicated", "value": "edge", "effect": "NoSchedule"}, True),
    ],
)
def test_toleration_rule(toleration: dict[str, Any], expected: bool) -> None:
    assert tolerates([toleration], NO_SCHEDULE) is expected


def test_taint_without_value_is_tolerated_by_equal_without_value() -> None:
    taint = {"key": "gpu", "effect": "NoExecute"}
    assert tolerates([{"key": "gpu", "operator": "Equal"}], taint)
    assert not tolerates([{"key": "gpu", "operator": "Equal", "value": "x"}], taint)


def test_any_matching_toleration_in_the_list_is_enough() -> None:
    tolerations = [{"key": "other", "operator": "Exists"}, {"key": "dedicated", "value": "edge"}]
    assert tolerates(tolerations, NO_SCHEDULE)
    assert not tolerates([], NO_SCHEDULE)


def test_prefer_no_schedule_never_keeps_a_pod_off() -> None:
    taint = {"key": "dedicated", "value": "edge", "effect": "PreferNoSchedule"}
    assert tolerates([], taint)


# --- admits --------------------------------------------------------------------


def test_admits_any_schedulable_untainted_node_without_placement() -> None:
    assert admits(placed({}), cpu_node("a"))
    assert admits(placed({}), gpu_node("b", zone="x"))


def test_unschedulable_node_is_never_admitted() -> None:
    assert not admits(placed({}), NodeFacts("cordoned", unschedulable=True))


def test_node_selector_needs_every_label_to_match() -> None:
    placement = {"nodeSelector": {"tier": "edge", "arch": "arm64"}}
    assert admits(placed(placement), cpu_node("a", tier="edge", arch="arm64", extra="1"))
    assert not admits(placed(placement), cpu_node("b", tier="edge"))
    assert not admits(placed(placement), cpu_node("c", tier="edge", arch="amd64"))


def test_sites_admit_only_nodes_labelled_with_one_of_them() -> None:
    placement = {"sites": ["store-1", "store-2"]}
    assert admits(placed(placement), cpu_node("a", **{SITE: "store-2"}))
    assert not admits(placed(placement), cpu_node("b", **{SITE: "store-3"}))
    assert not admits(placed(placement), cpu_node("c"))


@pytest.mark.parametrize("effect", ["NoSchedule", "NoExecute"])
def test_taints_keep_pods_off_unless_tolerated(effect: str) -> None:
    node = NodeFacts("t", taints=({"key": "dedicated", "value": "edge", "effect": effect},))
    assert not admits(placed({}), node)
    assert admits(placed({"tolerations": [{"key": "dedicated", "operator": "Exists"}]}), node)


def test_prefer_no_schedule_taint_does_not_exclude_a_node() -> None:
    node = NodeFacts("t", taints=({"key": "x", "effect": "PreferNoSchedule"},))
    assert admits(placed({}), node)


def test_every_taint_must_be_tolerated() -> None:
    node = NodeFacts(
        "t",
        taints=(
            {"key": "a", "effect": "NoSchedule"},
            {"key": "b", "effect": "NoExecute"},
        ),
    )
    assert not admits(placed({"tolerations": [{"key": "a", "operator": "Exists"}]}), node)
    tolerations = [{"key": "a", "operator": "Exists"}, {"key": "b", "operator": "Exists"}]
    assert admits(placed({"tolerations": tolerations}), node)


# --- NodeFacts.from_node -------------------------------------------------------


def node_object(name: str, *, gpus: str | None, labels: dict[str, str]) -> dict[str, Any]:
    allocatable = {"cpu": "8", "memory": "32Gi", "pods": "110"}
    if gpus is not None:
        allocatable["nvidia.com/gpu"] = gpus
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "resourceVersion": "1"},
        "spec": {
            "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
            "unschedulable": True,
        },
        "status": {"allocatable": allocatable, "capacity": dict(allocatable)},
    }


def test_from_node_reads_labels_taints_gpus_and_cordon() -> None:
    body = node_object("gpu-1", gpus="2", labels={GPU_LABEL: "true", SITE: "store-1"})

    facts = NodeFacts.from_node(body, "nvidia.com/gpu")

    assert facts == NodeFacts(
        name="gpu-1",
        labels={GPU_LABEL: "true", SITE: "store-1"},
        taints=({"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},),
        gpus=2,
        unschedulable=True,
    )
    assert facts.is_gpu(GPU_LABEL)


def test_from_node_minimal_node_is_a_schedulable_cpu_node() -> None:
    facts = NodeFacts.from_node({"metadata": {"name": "cpu-1"}, "spec": {}, "status": {}}, "x")

    assert facts == NodeFacts("cpu-1")
    assert not facts.is_gpu(GPU_LABEL)


def test_the_gpu_label_alone_makes_a_gpu_node() -> None:
    # Pods are steered by node affinity on the label, so a node with the device
    # plugin's resource but no label is planned as a CPU node, as pods would see it.
    by_label = NodeFacts.from_node(node_object("l", gpus=None, labels={GPU_LABEL: "true"}), "g")
    by_resource = NodeFacts.from_node(node_object("r", gpus="1", labels={}), "nvidia.com/gpu")
    label_false = NodeFacts.from_node(node_object("f", gpus="0", labels={GPU_LABEL: "false"}), "g")

    assert by_label.is_gpu(GPU_LABEL) and by_label.gpus == 0
    assert not by_resource.is_gpu(GPU_LABEL) and by_resource.gpus == 1
    assert not label_false.is_gpu(GPU_LABEL)


def test_from_node_unparseable_gpu_quantity_counts_as_none() -> None:
    facts = NodeFacts.from_node(node_object("q", gpus="1k", labels={}), "nvidia.com/gpu")
    assert facts.gpus == 0


# --- plan_engines --------------------------------------

GPU_ONLY = [gpu_node("g1"), gpu_node("g2")]
CPU_ONLY = [cpu_node("c1"), cpu_node("c2"), cpu_node("c3")]
MIXED = [*GPU_ONLY, *CPU_ONLY]
# Every node is outside the selector: nothing eligible.
SELECTOR = {"placement": {"nodeSelector": {"tier": "nowhere"}}}


@pytest.mark.parametrize(
    ("spec", "nodes", "expected"),
    [
        # llamacpp: one class, whatever the nodes; every eligible node can take it.
        ({"engine": "llamacpp", "replicas": 2}, MIXED, [EnginePlan("llamacpp", 2, 5)]),
        ({"engine": "llamacpp", "perNode": True}, GPU_ONLY, [EnginePlan("llamacpp", None, 2)]),
        ({"engine": "llamacpp", "replicas": 1, **SELECTOR}, MIXED, [EnginePlan("llamacpp", 1, 0)]),
        # vllm: one class; only GPU nodes count.
        ({"engine": "vllm", "replicas": 3}, MIXED, [EnginePlan("vllm", 3, 2)]),
        ({"engine": "vllm", "perNode": True}, CPU_ONLY, [EnginePlan("vllm", None, 0)]),
        (
            {"engine": "vllm", "autoscaling": {"minReplicas": 1, "maxReplicas": 4}},
            GPU_ONLY,
            [EnginePlan("vllm", 1, 2)],
        ),
        # auto, replicas: GPUs first, one replica per GPU node, the rest on llama.cpp.
        (
            {"engine": "auto", "replicas": 3},
            MIXED,
            [EnginePlan("vllm", 2, 2), EnginePlan("llamacpp", 1, 3)],
        ),
        ({"engine": "auto", "replicas": 2}, MIXED, [EnginePlan("vllm", 2, 2)]),
        ({"replicas": 1}, MIXED, [EnginePlan("vllm", 1, 2)]),  # auto is the default
        ({"engine": "auto", "replicas": 2}, CPU_ONLY, [EnginePlan("llamacpp", 2, 3)]),
        (
            {"engine": "auto", "replicas": 3},
            GPU_ONLY,
            [EnginePlan("vllm", 2, 2), EnginePlan("llamacpp", 1, 0)],
        ),
        ({"engine": "auto", "replicas": 2, **SELECTOR}, MIXED, [EnginePlan("llamacpp", 2, 0)]),
        ({"engine": "auto", "replicas": 2}, [], [EnginePlan("llamacpp", 2, 0)]),
        # replicas 0: one llama.cpp workload scaled to zero, not nothing at all.
        ({"engine": "auto", "replicas": 0}, MIXED, [EnginePlan("llamacpp", 0, 3)]),
        ({"engine": "llamacpp", "replicas": 0}, MIXED, [EnginePlan("llamacpp", 0, 5)]),
        # auto, perNode: a DaemonSet per class that has nodes.
        (
            {"engine": "auto", "perNode": True},
            MIXED,
            [EnginePlan("vllm", None, 2), EnginePlan("llamacpp", None, 3)],
        ),
        ({"engine": "auto", "perNode": True}, GPU_ONLY, [EnginePlan("vllm", None, 2)]),
        ({"engine": "auto", "perNode": True}, CPU_ONLY, [EnginePlan("llamacpp", None, 3)]),
        ({"engine": "auto", "perNode": True, **SELECTOR}, MIXED, [EnginePlan("llamacpp", None, 0)]),
        # auto, autoscaling: the floor is planned like a replica count.
        (
            {"engine": "auto", "autoscaling": {"minReplicas": 3, "maxReplicas": 6}},
            MIXED,
            [EnginePlan("vllm", 2, 2), EnginePlan("llamacpp", 1, 3)],
        ),
        (
            {"engine": "auto", "autoscaling": {"minReplicas": 0, "maxReplicas": 6}},
            CPU_ONLY,
            [EnginePlan("llamacpp", 0, 3)],
        ),
    ],
)
def test_plan_engines(
    spec: dict[str, Any], nodes: list[NodeFacts], expected: list[EnginePlan]
) -> None:
    assert plan_engines(model(spec), nodes, GPU_LABEL) == expected


def test_plan_counts_only_nodes_the_placement_admits() -> None:
    nodes = [
        gpu_node("g-store1", **{SITE: "store-1"}),
        gpu_node("g-store2", **{SITE: "store-2"}),
        cpu_node("c-store1", **{SITE: "store-1"}),
        NodeFacts("c-cordoned", labels={SITE: "store-1"}, unschedulable=True),
        NodeFacts(
            "c-tainted",
            labels={SITE: "store-1"},
            taints=({"key": "maintenance", "effect": "NoExecute"},),
        ),
    ]
    spec = {"engine": "auto", "perNode": True, "placement": {"sites": ["store-1"]}}

    assert plan_engines(model(spec), nodes, GPU_LABEL) == [
        EnginePlan("vllm", None, 1),
        EnginePlan("llamacpp", None, 1),
    ]

    tolerant = {
        **spec,
        "placement": {"sites": ["store-1"], "tolerations": [{"operator": "Exists"}]},
    }
    assert plan_engines(model(tolerant), nodes, GPU_LABEL) == [
        EnginePlan("vllm", None, 1),
        EnginePlan("llamacpp", None, 2),
    ]


def test_gpu_label_is_configurable() -> None:
    nodes = [NodeFacts("a", labels={"example.com/accelerator": "true"}), cpu_node("b")]
    spec = {"engine": "auto", "replicas": 2}

    assert plan_engines(model(spec), nodes, "example.com/accelerator") == [
        EnginePlan("vllm", 1, 1),
        EnginePlan("llamacpp", 1, 1),
    ]
    assert plan_engines(model(spec), nodes, GPU_LABEL) == [EnginePlan("llamacpp", 2, 2)]


def test_the_fleet_changes_on_what_planning_reads_not_on_heartbeats() -> None:
    from edgefleet.operator.placement import FleetFacts

    fleet = FleetFacts()
    node = node_object("a", gpus="1", labels={GPU_LABEL: "true"})
    assert fleet.observe(NodeFacts.from_node(node, "nvidia.com/gpu"))
    # A heartbeat: same labels, taints and GPUs, new status timestamps.
    node.setdefault("status", {})["conditions"] = [{"type": "Ready", "status": "True"}]
    assert not fleet.observe(NodeFacts.from_node(node, "nvidia.com/gpu"))
    node["metadata"]["labels"]["edgefleet.io/site"] = "site-z"
    assert fleet.observe(NodeFacts.from_node(node, "nvidia.com/gpu"))
    node["spec"]["unschedulable"] = False  # uncordoned
    assert fleet.observe(NodeFacts.from_node(node, "nvidia.com/gpu"))
    assert fleet.forget("a")
    assert not fleet.forget("a")


def test_a_nodes_standing_for_a_placement_is_all_a_plan_reads_of_it() -> None:
    gpu = "edgefleet.io/gpu"
    edge = Placement(sites=("site-a",))
    plain = NodeFacts("n1", labels={"edgefleet.io/site": "site-a"})
    relabelled = NodeFacts(
        "n1", labels={"edgefleet.io/site": "site-a", "beta.kubernetes.io/os": "linux"}
    )
    as_gpu = NodeFacts("n1", labels={"edgefleet.io/site": "site-a", gpu: "true"})
    elsewhere = NodeFacts("n2", labels={"edgefleet.io/site": "site-b"})
    cordoned = NodeFacts("n1", labels={"edgefleet.io/site": "site-a"}, unschedulable=True)

    assert counts_as(edge, plain, gpu) is False
    assert counts_as(edge, relabelled, gpu) is False  # a label planning does not read
    assert counts_as(edge, as_gpu, gpu) is True
    assert counts_as(edge, elsewhere, gpu) is None
    assert counts_as(edge, cordoned, gpu) is None
    assert counts_as(edge, None, gpu) is None  # gone

    spec = parse_smallmodel_spec(
        {"source": {"gguf": {"uri": "builtin://smollm2-135m"}}, "engine": "auto", "replicas": 2,
         "placement": {"sites": ["site-a"]}}
    )  # fmt: skip
    fleet = [as_gpu, elsewhere, NodeFacts("n3", labels={"edgefleet.io/site": "site-a"})]
    eligible = eligible_nodes(spec.placement, fleet, gpu)
    assert eligible == {"n1": True, "n3": False}
    assert plans_for(spec, eligible) == plan_engines(spec, fleet, gpu)
