"""The operator's pure builders: every child object, compared whole, plus invariants.

SmallModel → model-server workloads, Service, PDB, NetworkPolicy, HPA;
RoutingPolicy → ConfigMap, RBAC, router and egress. No cluster needed.
"""

from __future__ import annotations

import argparse
import copy
import ipaddress
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from edgefleet.operator.builders import routingpolicy as rp
from edgefleet.operator.builders import smallmodel as sm
from edgefleet.operator.config import OperatorConfig
from edgefleet.operator.placement import EnginePlan, NodeFacts, plan_engines
from edgefleet.operator.spec import SmallModelSpec, parse_smallmodel_spec
from edgefleet.routing.policy import load_policy, parse_policy
from edgefleet.serving.config import add_arguments, config_from

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NS = "shop"
# Every serving container names itself after its pod.
INSTANCE_ENV = [
    {"name": "EDGEFLEET_INSTANCE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
]

CONFIG = OperatorConfig()
IMAGE = "ghcr.io/edgefleet/edgefleet:0.1.0"
VLLM_IMAGE = "ghcr.io/edgefleet/edgefleet-vllm:0.1.0"
MODELS = "/var/lib/edgefleet/models"
SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
BUILTIN = {"gguf": {"uri": "builtin://smollm2-135m"}}
GPU = "nvidia.com/gpu.present"
# Every pod the operator makes: non-root, default seccomp, no privilege, no capability.
POD_SECURITY = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
LOCKED_DOWN = {
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
}
# vLLM writes its caches into the image.
LOCKED_DOWN_WRITABLE_ROOT = {**LOCKED_DOWN, "readOnlyRootFilesystem": False}


def model_labels(engine: str | None = None, name: str = "smollm2") -> dict[str, str]:
    labels = {
        "app.kubernetes.io/managed-by": "edgefleet-operator",
        "app.kubernetes.io/part-of": "edgefleet",
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/name": name,
        "edgefleet.io/model": name,
    }
    if engine:
        labels["edgefleet.io/engine"] = engine
    return labels


def probe(initial_delay: int, period: int, failures: int) -> dict[str, Any]:
    return {
        "grpc": {"port": 50051},
        "initialDelaySeconds": initial_delay,
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def model(spec: dict[str, Any]) -> SmallModelSpec:
    """A SmallModel spec as the handlers hand it to the builders: parsed, defaults applied."""
    return parse_smallmodel_spec(spec)


MODEL_PORTS = [
    {"name": "grpc", "containerPort": 50051, "protocol": "TCP"},
    {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
]


# --- SmallModel workloads ---------------------------------------------------------


def test_llamacpp_deployment_from_the_builtin_source() -> None:
    spec = {
        "source": BUILTIN,
        "engine": "llamacpp",
        "replicas": 2,
        "resources": {"requests": {"cpu": "1", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
        "serving": {"contextLength": 4096, "maxConcurrency": 2, "maxQueue": 8, "instances": 2},
    }

    workload = sm.build_workload("smollm2", NS, model(spec), EnginePlan("llamacpp", 2, 3), CONFIG)

    mounts = [{"name": "models", "mountPath": MODELS}]
    assert workload == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "smollm2-llamacpp",
            "namespace": NS,
            "labels": model_labels("llamacpp"),
        },
        "spec": {
            "replicas": 2,
            "selector": {
                "matchLabels": {"edgefleet.io/model": "smollm2", "edgefleet.io/engine": "llamacpp"}
            },
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {"labels": model_labels("llamacpp")},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": POD_SECURITY,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 30,
                    "initContainers": [
                        {
                            "name": "fetch-model",
                            "image": IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["edgefleet-fetch-model"],
                            "args": [
                                "--source",
                                "builtin://smollm2-135m",
                                "--dest",
                                MODELS,
                                "--format",
                                "gguf",
                            ],
                            "volumeMounts": mounts,
                            "securityContext": LOCKED_DOWN,
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                        }
                    ],
                    "containers": [
                        {
                            "name": "server",
                            "image": IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["edgefleet-server"],
                            "args": [
                                "--engine",
                                "llamacpp",
                                "--model",
                                f"{MODELS}/model.gguf",
                                "--model-name",
                                "smollm2",
                                "--listen",
                                "0.0.0.0:50051",
                                "--metrics-listen",
                                "0.0.0.0:9090",
                                "--context-length",
                                "4096",
                                # Two instances: a pool of two model copies,
                                # one request each.
                                "--batch-sequences",
                                "0",
                                "--instances",
                                "2",
                                "--max-concurrency",
                                "2",
                                "--max-queue",
                                "8",
                            ],
                            "env": INSTANCE_ENV,
                            "ports": MODEL_PORTS,
                            "readinessProbe": probe(1, 5, 3),
                            "livenessProbe": probe(5, 10, 6),
                            "resources": {
                                "requests": {"cpu": "1", "memory": "512Mi"},
                                "limits": {"memory": "1Gi"},
                            },
                            "securityContext": LOCKED_DOWN,
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "volumeMounts": mounts,
                        }
                    ],
                    "volumes": [{"name": "models", "emptyDir": {}}],
                },
            },
        },
    }


def test_vllm_daemonset_with_a_gpu_per_pod() -> None:
    spec = {
        "source": {
            "gguf": {"uri": "builtin://smollm2-135m"},
            "hf": {"uri": "https://models.example/smollm2-hf.tar.gz", "sha256": SHA},
        },
        "engine": "vllm",
        "perNode": True,
        "resources": {"requests": {"cpu": "4"}, "limits": {"memory": "16Gi"}},
    }

    workload = sm.build_workload("smollm2", NS, model(spec), EnginePlan("vllm", None, 2), CONFIG)

    mounts = [{"name": "models", "mountPath": MODELS}]
    assert workload == {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "smollm2-vllm", "namespace": NS, "labels": model_labels("vllm")},
        "spec": {
            "selector": {
                "matchLabels": {"edgefleet.io/model": "smollm2", "edgefleet.io/engine": "vllm"}
            },
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": model_labels("vllm")},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": POD_SECURITY,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 30,
                    "initContainers": [
                        {
                            "name": "fetch-model",
                            "image": VLLM_IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["edgefleet-fetch-model"],
                            "args": [
                                "--source",
                                "https://models.example/smollm2-hf.tar.gz",
                                "--dest",
                                MODELS,
                                "--format",
                                "hf",
                                "--sha256",
                                SHA,
                            ],
                            "volumeMounts": mounts,
                            "securityContext": LOCKED_DOWN_WRITABLE_ROOT,
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                        }
                    ],
                    "containers": [
                        {
                            "name": "server",
                            "image": VLLM_IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["edgefleet-server"],
                            "args": [
                                "--engine",
                                "vllm",
                                "--model",
                                f"{MODELS}/hf",
                                "--model-name",
                                "smollm2",
                                "--listen",
                                "0.0.0.0:50051",
                                "--metrics-listen",
                                "0.0.0.0:9090",
                                "--context-length",
                                "2048",
                                # vLLM's own default: 64 sequences batched
                                # (its max_num_seqs), all of them admitted.
                                "--batch-sequences",
                                "64",
                                "--max-concurrency",
                                "64",
                                "--max-queue",
                                "16",
                            ],
                            "env": INSTANCE_ENV,
                            "ports": MODEL_PORTS,
                            "readinessProbe": probe(1, 5, 3),
                            "livenessProbe": probe(60, 10, 6),
                            "resources": {
                                "requests": {"cpu": "4", "nvidia.com/gpu": 1},
                                "limits": {"memory": "16Gi", "nvidia.com/gpu": 1},
                            },
                            "securityContext": LOCKED_DOWN_WRITABLE_ROOT,
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "volumeMounts": [
                                *mounts,
                                {"name": "dshm", "mountPath": "/dev/shm"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "models", "emptyDir": {}},
                        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
                    ],
                    "affinity": {
                        "nodeAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": {
                                "nodeSelectorTerms": [
                                    {
                                        "matchExpressions": [
                                            {"key": GPU, "operator": "In", "values": ["true"]}
                                        ]
                                    }
                                ]
                            }
                        }
                    },
                },
            },
        },
    }


def test_vllm_from_a_builtin_gguf_only_fetches_it_converted_to_hf() -> None:
    spec = model({"source": BUILTIN, "engine": "vllm"})

    workload = sm.build_workload("smollm2", NS, spec, EnginePlan("vllm", 1, 1), CONFIG)

    (init,) = workload["spec"]["template"]["spec"]["initContainers"]
    assert init["args"] == [
        "--source",
        "builtin://smollm2-135m",
        "--dest",
        MODELS,
        "--format",
        "hf",
    ]
    assert workload["spec"]["replicas"] == 1


def test_user_gpu_count_is_kept() -> None:
    spec = {
        "source": BUILTIN,
        "engine": "vllm",
        "resources": {"requests": {"nvidia.com/gpu": 2}, "limits": {"nvidia.com/gpu": 2}},
    }

    workload = sm.build_workload("smollm2", NS, model(spec), EnginePlan("vllm", 1, 1), CONFIG)

    (server,) = workload["spec"]["template"]["spec"]["containers"]
    assert server["resources"] == {
        "requests": {"nvidia.com/gpu": 2},
        "limits": {"nvidia.com/gpu": 2},
    }


@pytest.mark.parametrize(
    ("serving", "engine", "flags"),
    [
        # llama.cpp decodes the requests it admits together, in one context.
        ({}, "llamacpp", ["--batch-sequences", "4", "--max-concurrency", "4"]),
        (
            {"maxConcurrency": 8},
            "llamacpp",
            ["--batch-sequences", "8", "--max-concurrency", "8"],
        ),
        # More instances: a pool of model copies, one request each.
        (
            {"instances": 3},
            "llamacpp",
            ["--batch-sequences", "0", "--instances", "3", "--max-concurrency", "3"],
        ),
        (
            {"instances": 3, "maxConcurrency": 2},
            "llamacpp",
            ["--batch-sequences", "0", "--instances", "3", "--max-concurrency", "2"],
        ),
        # vLLM: max_num_seqs is what the pod admits, 64 unless the spec says.
        ({}, "vllm", ["--batch-sequences", "64", "--max-concurrency", "64"]),
        ({"maxConcurrency": 128}, "vllm", ["--batch-sequences", "128", "--max-concurrency", "128"]),
        # engine auto with a llama.cpp pool: the vLLM half has no pool.
        ({"instances": 2}, "vllm", ["--batch-sequences", "64", "--max-concurrency", "64"]),
    ],
)
def test_each_engine_decodes_what_it_admits(
    serving: dict[str, Any], engine: str, flags: list[str]
) -> None:
    spec = model({"source": BUILTIN, "serving": {"contextLength": 1024, **serving}})

    assert sm.serving_flags(spec.serving, engine) == [
        "--context-length", "1024", *flags, "--max-queue", "16",
    ]  # fmt: skip


def test_a_gpu_model_asking_for_64_runs_64_in_vllm() -> None:
    spec = model({"source": BUILTIN, "engine": "vllm", "serving": {"maxConcurrency": 64}})

    workload = sm.build_workload("m", NS, spec, EnginePlan("vllm", 1, 1), CONFIG)

    args = workload["spec"]["template"]["spec"]["containers"][0]["args"]
    # vLLM's max_num_seqs is --batch-sequences: 64 decode at once, none wait
    # inside the engine while counted as running.
    assert args[args.index("--batch-sequences") + 1] == "64"
    assert args[args.index("--max-concurrency") + 1] == "64"


USER_AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                {
                    "matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}],
                    "matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["x"]}],
                },
            ]
        },
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {
                "weight": 10,
                "preference": {
                    "matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]
                },
            }
        ],
    },
    "podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {
                "weight": 50,
                "podAffinityTerm": {
                    "topologyKey": "kubernetes.io/hostname",
                    "labelSelector": {"matchLabels": {"edgefleet.io/model": "smollm2"}},
                },
            }
        ]
    },
}
AUTO_PLACED = {
    "source": BUILTIN,
    "engine": "auto",
    "replicas": 3,
    "placement": {
        "nodeSelector": {"tier": "edge"},
        "tolerations": [{"key": "edge", "operator": "Exists", "effect": "NoSchedule"}],
        "sites": ["store-1", "store-2"],
        "affinity": USER_AFFINITY,
    },
}


def expected_auto_affinity(gpu: dict[str, Any]) -> dict[str, Any]:
    site = {"key": "edgefleet.io/site", "operator": "In", "values": ["store-1", "store-2"]}
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "zone", "operator": "In", "values": ["a"]},
                            site,
                            gpu,
                        ]
                    },
                    {
                        "matchExpressions": [
                            {"key": "zone", "operator": "In", "values": ["b"]},
                            site,
                            gpu,
                        ],
                        "matchFields": [
                            {"key": "metadata.name", "operator": "NotIn", "values": ["x"]}
                        ],
                    },
                ]
            },
            "preferredDuringSchedulingIgnoredDuringExecution": (
                USER_AFFINITY["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
            ),
        },
        "podAntiAffinity": USER_AFFINITY["podAntiAffinity"],
    }


def test_auto_with_sites_and_the_users_own_affinity() -> None:
    original = copy.deepcopy(AUTO_PLACED)

    spec = model(AUTO_PLACED)

    llamacpp = sm.build_pod_template("smollm2", spec, EnginePlan("llamacpp", 1, 2), CONFIG)
    vllm = sm.build_pod_template("smollm2", spec, EnginePlan("vllm", 2, 2), CONFIG)

    not_gpu = {"key": GPU, "operator": "NotIn", "values": ["true"]}
    on_gpu = {"key": GPU, "operator": "In", "values": ["true"]}
    for template, gpu in ((llamacpp, not_gpu), (vllm, on_gpu)):
        pod = template["spec"]
        assert pod["affinity"] == expected_auto_affinity(gpu)
        assert pod["nodeSelector"] == {"tier": "edge"}
        assert pod["tolerations"] == [{"key": "edge", "operator": "Exists", "effect": "NoSchedule"}]
    # The user's spec is not touched (it is Kopf's body).
    assert original == AUTO_PLACED


def test_sites_alone_make_the_only_required_term() -> None:
    spec = {"source": BUILTIN, "engine": "llamacpp", "placement": {"sites": ["s1"]}}

    template = sm.build_pod_template("smollm2", model(spec), EnginePlan("llamacpp", 1, 1), CONFIG)

    assert template["spec"]["affinity"] == {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "edgefleet.io/site", "operator": "In", "values": ["s1"]}
                        ]
                    }
                ]
            }
        }
    }


def test_pvc_and_file_sources_are_mounted_in_both_containers() -> None:
    spec = {
        "source": {
            "gguf": {"uri": "pvc://models.store/smollm2/model.gguf", "sha256": SHA},
            "hf": {"uri": "file:///opt/models/smollm2-hf/"},
        },
        "engine": "auto",
        "replicas": 1,
    }

    llamacpp = sm.build_pod_template("smollm2", model(spec), EnginePlan("llamacpp", 1, 1), CONFIG)
    vllm = sm.build_pod_template("smollm2", model(spec), EnginePlan("vllm", 1, 1), CONFIG)

    mounts = [
        {"name": "models", "mountPath": MODELS},
        {"name": "pvc-models-store", "mountPath": "/mnt/pvc/models.store", "readOnly": True},
        {"name": "host-1", "mountPath": "/opt/models/smollm2-hf", "readOnly": True},
    ]
    volumes = [
        {"name": "models", "emptyDir": {}},
        {
            "name": "pvc-models-store",
            "persistentVolumeClaim": {"claimName": "models.store", "readOnly": True},
        },
        {"name": "host-1", "hostPath": {"path": "/opt/models/smollm2-hf", "type": "Directory"}},
    ]
    assert llamacpp["spec"]["volumes"] == volumes
    assert llamacpp["spec"]["containers"][0]["volumeMounts"] == mounts
    # vLLM's server also gets a memory-backed /dev/shm; its fetch step does not need one.
    assert vllm["spec"]["volumes"] == [*volumes, sm.SHM_VOLUME]
    assert vllm["spec"]["containers"][0]["volumeMounts"] == [*mounts, sm.SHM_MOUNT]
    for template in (llamacpp, vllm):
        assert template["spec"]["initContainers"][0]["volumeMounts"] == mounts
    assert llamacpp["spec"]["initContainers"][0]["args"] == [
        "--source",
        "pvc://models.store/smollm2/model.gguf",
        "--dest",
        MODELS,
        "--format",
        "gguf",
        "--pvc-root",
        "/mnt/pvc",
        "--sha256",
        SHA,
    ]
    assert vllm["spec"]["initContainers"][0]["args"] == [
        "--source",
        "file:///opt/models/smollm2-hf/",
        "--dest",
        MODELS,
        "--format",
        "hf",
    ]


def test_file_gguf_mounts_its_folder() -> None:
    spec = {"source": {"gguf": {"uri": "file:///data/gguf/smollm2.gguf"}}, "engine": "llamacpp"}

    plan = EnginePlan("llamacpp", 1, 1)

    pod = sm.build_pod_template("smollm2", model(spec), plan, CONFIG)["spec"]

    assert pod["volumes"] == [
        {"name": "models", "emptyDir": {}},
        {"name": "host-0", "hostPath": {"path": "/data/gguf", "type": "Directory"}},
    ]
    assert pod["containers"][0]["volumeMounts"] == [
        {"name": "models", "mountPath": MODELS},
        {"name": "host-0", "mountPath": "/data/gguf", "readOnly": True},
    ]


def test_one_claim_for_both_forms_is_one_volume() -> None:
    spec = {
        "source": {"gguf": {"uri": "pvc://models/a.gguf"}, "hf": {"uri": "pvc://models/a-hf"}},
        "engine": "auto",
    }

    pod = sm.build_pod_template("smollm2", model(spec), EnginePlan("vllm", 1, 1), CONFIG)["spec"]

    assert [v["name"] for v in pod["volumes"]] == ["models", "pvc-models", "dshm"]
    assert pod["initContainers"][0]["args"] == [
        "--source",
        "pvc://models/a-hf",
        "--dest",
        MODELS,
        "--format",
        "hf",
        "--pvc-root",
        "/mnt/pvc",
    ]


# --- SmallModel: Service, PDB, NetworkPolicy, HPA -------------------------------------


def test_service_for_replicas() -> None:
    spec = model({"source": BUILTIN, "replicas": 2})

    assert sm.build_service("smollm2", NS, spec) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "smollm2", "namespace": NS, "labels": model_labels()},
        "spec": {
            "selector": {
                "edgefleet.io/model": "smollm2",
                "app.kubernetes.io/component": "model-server",
            },
            "ports": [
                {"name": "grpc", "port": 50051, "targetPort": "grpc", "protocol": "TCP"},
                {"name": "metrics", "port": 9090, "targetPort": "metrics"},
            ],
        },
    }


def test_service_for_per_node_keeps_traffic_on_the_node() -> None:
    spec = model({"source": BUILTIN, "perNode": True})

    assert sm.build_service("smollm2", NS, spec) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "smollm2", "namespace": NS, "labels": model_labels()},
        "spec": {
            "selector": {
                "edgefleet.io/model": "smollm2",
                "app.kubernetes.io/component": "model-server",
            },
            "ports": [
                {"name": "grpc", "port": 50051, "targetPort": "grpc", "protocol": "TCP"},
                {"name": "metrics", "port": 9090, "targetPort": "metrics"},
            ],
            "internalTrafficPolicy": "Local",
        },
    }


def test_disruption_budget() -> None:
    assert sm.build_disruption_budget("smollm2", NS) == {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "smollm2", "namespace": NS, "labels": model_labels()},
        "spec": {
            "maxUnavailable": 1,
            "selector": {
                "matchLabels": {
                    "edgefleet.io/model": "smollm2",
                    "app.kubernetes.io/component": "model-server",
                }
            },
        },
    }


DNS = {
    "to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
}


def model_network_policy(extra_egress: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "smollm2-model", "namespace": NS, "labels": model_labels()},
        "spec": {
            "podSelector": {
                "matchLabels": {
                    "edgefleet.io/model": "smollm2",
                    "app.kubernetes.io/component": "model-server",
                }
            },
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": {}}]}],
            "egress": [DNS, {"to": [{"namespaceSelector": {}}]}, *extra_egress],
        },
    }


def test_model_network_policy_stays_in_the_cluster_without_fetch_cidrs() -> None:
    assert sm.build_network_policy("smollm2", NS, CONFIG) == model_network_policy([])


def test_model_network_policy_with_fetch_cidrs() -> None:
    config = OperatorConfig(model_fetch_cidrs="203.0.113.0/24, 2001:db8::/32")

    assert sm.build_network_policy("smollm2", NS, config) == model_network_policy(
        [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}, {"ipBlock": {"cidr": "2001:db8::/32"}}]}]
    )


AUTOSCALED = {
    "source": BUILTIN,
    "engine": "llamacpp",
    "autoscaling": {"minReplicas": 0, "maxReplicas": 5, "targetInFlightPerReplica": 3},
}


def test_autoscaler_floors_min_replicas_at_one() -> None:
    plan = EnginePlan("llamacpp", 0, 3)

    assert sm.build_autoscaler("smollm2", NS, model(AUTOSCALED), plan) == {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": "smollm2-llamacpp",
            "namespace": NS,
            "labels": model_labels("llamacpp"),
        },
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": "smollm2-llamacpp",
            },
            "minReplicas": 1,
            "maxReplicas": 5,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": "vllm:num_requests_running"},
                        "target": {"type": "AverageValue", "averageValue": "3"},
                    },
                }
            ],
        },
    }


def test_autoscaler_defaults() -> None:
    spec = {"source": BUILTIN, "autoscaling": {"minReplicas": 2}}

    hpa = sm.build_autoscaler("smollm2", NS, model(spec), EnginePlan("llamacpp", 2, 3))

    assert hpa is not None
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)
    assert hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "4"


def test_no_autoscaler_without_autoscaling_or_for_a_daemonset() -> None:
    fixed = model({"source": BUILTIN, "replicas": 2})

    assert sm.build_autoscaler("smollm2", NS, fixed, EnginePlan("llamacpp", 2, 3)) is None
    per_node = EnginePlan("llamacpp", None, 3)
    assert sm.build_autoscaler("smollm2", NS, model(AUTOSCALED), per_node) is None


def test_autoscaled_deployment_leaves_the_count_to_the_hpa() -> None:
    plan = EnginePlan("llamacpp", 0, 3)

    workload = sm.build_workload("smollm2", NS, model(AUTOSCALED), plan, CONFIG)

    assert workload["kind"] == "Deployment"
    assert "replicas" not in workload["spec"]
    assert workload["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }


def test_replicas_zero_is_an_explicit_zero() -> None:
    spec = {"source": BUILTIN, "engine": "llamacpp", "replicas": 0}

    workload = sm.build_workload("smollm2", NS, model(spec), EnginePlan("llamacpp", 0, 3), CONFIG)

    assert workload["spec"]["replicas"] == 0


def kinds_and_names(children: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(c["kind"], c["metadata"]["name"]) for c in children]


def test_smallmodel_children_in_apply_order() -> None:
    spec = {**AUTOSCALED, "engine": "auto", "autoscaling": {"minReplicas": 3, "maxReplicas": 6}}
    plans = [EnginePlan("vllm", 2, 2), EnginePlan("llamacpp", 1, 3)]

    children = sm.build_children("smollm2", NS, model(spec), plans, CONFIG)

    assert kinds_and_names(children) == [
        ("Deployment", "smollm2-vllm"),
        ("Deployment", "smollm2-llamacpp"),
        ("HorizontalPodAutoscaler", "smollm2-vllm"),
        ("HorizontalPodAutoscaler", "smollm2-llamacpp"),
        ("Service", "smollm2"),
        ("PodDisruptionBudget", "smollm2"),
        ("NetworkPolicy", "smollm2-model"),
    ]
    per_node = sm.build_children(
        "smollm2",
        NS,
        model({"source": BUILTIN, "perNode": True}),
        [EnginePlan("llamacpp", None, 0)],
        CONFIG,
    )
    assert kinds_and_names(per_node) == [
        ("DaemonSet", "smollm2-llamacpp"),
        ("Service", "smollm2"),
        ("PodDisruptionBudget", "smollm2"),
        ("NetworkPolicy", "smollm2-model"),
    ]


# --- invariants over many specs ------------------------------------------------------

SOURCES = [
    BUILTIN,
    {"gguf": {"uri": "pvc://models/m.gguf"}, "hf": {"uri": "pvc://weights/m-hf"}},
    {"gguf": {"uri": "file:///srv/m/m.gguf"}, "hf": {"uri": "file:///srv/m-hf"}},
    # An HF folder that also holds the GGUF: one host folder for both forms.
    {"gguf": {"uri": "file:///srv/smollm2/model.gguf"}, "hf": {"uri": "file:///srv/smollm2"}},
    {"gguf": {"uri": "https://models.example/m.gguf", "sha256": SHA}},
]
COUNTS: list[dict[str, Any]] = [
    {"replicas": 3},
    {"replicas": 0},
    {"perNode": True},
    {"autoscaling": {"minReplicas": 0, "maxReplicas": 3}},
]
FLEETS = {
    "mixed": [NodeFacts("g", labels={GPU: "true"}, gpus=1), NodeFacts("c")],
    "cpu": [NodeFacts("c1"), NodeFacts("c2")],
    "gpu": [NodeFacts("g1", labels={GPU: "true"}, gpus=1)],
    "none": [],
}
MANY = [
    (f"m{i}", {"source": source, "engine": engine, **count, **placement}, fleet)
    for i, (source, engine, count, placement, fleet) in enumerate(
        (source, engine, count, placement, fleet)
        for source in SOURCES
        for engine in ("auto", "llamacpp", "vllm")
        for count in COUNTS
        for placement in ({}, {"placement": {"sites": ["s1"], "affinity": USER_AFFINITY}})
        for fleet in FLEETS
    )
]


def smallmodel_children(name: str, spec: dict[str, Any], fleet: str) -> list[dict[str, Any]]:
    parsed = model(spec)
    plans = plan_engines(parsed, FLEETS[fleet], GPU)
    return sm.build_children(name, NS, parsed, plans, CONFIG)


def all_children() -> list[dict[str, Any]]:
    children = [c for name, spec, fleet in MANY for c in smallmodel_children(name, spec, fleet)]
    policy = policy_spec()
    for spec in (policy, {**policy, "cloud": {"enabled": False}}):
        children += rp.build_children("p", NS, spec, CONFIG, [("10.0.0.1", 6443)], "h")
    return children


def workloads(children: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in children if c["kind"] in ("Deployment", "DaemonSet")]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_every_child_is_labelled_managed_and_namespaced() -> None:
    for child in all_children():
        meta = child["metadata"]
        assert meta["namespace"] == NS, meta["name"]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "edgefleet-operator"
        assert meta["labels"]["app.kubernetes.io/part-of"] == "edgefleet"
        assert meta["labels"]["app.kubernetes.io/component"] in ("model-server", "router", "egress")
        assert len(meta["name"]) <= 63


def test_every_workload_selects_its_own_template_and_only_its_engine() -> None:
    for name, spec, fleet in MANY:
        children = workloads(smallmodel_children(name, spec, fleet))
        for child in children:
            selector = child["spec"]["selector"]["matchLabels"]
            assert selects(selector, child["spec"]["template"]["metadata"]["labels"])
            for other in children:
                if other is not child:
                    assert not selects(selector, other["spec"]["template"]["metadata"]["labels"])


def test_service_pdb_and_network_policy_select_every_model_pod() -> None:
    for name, spec, fleet in MANY:
        children = smallmodel_children(name, spec, fleet)
        pods = [w["spec"]["template"]["metadata"]["labels"] for w in workloads(children)]
        by_kind = {c["kind"]: c for c in children}
        selectors = [
            by_kind["Service"]["spec"]["selector"],
            by_kind["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
            by_kind["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"],
        ]
        for selector in selectors:
            assert all(selects(selector, labels) for labels in pods), (name, spec)


def test_router_and_egress_services_select_their_pods() -> None:
    children = rp.build_children("p", NS, policy_spec(), CONFIG, [], "h")
    deployments = {c["metadata"]["name"]: c for c in children if c["kind"] == "Deployment"}
    services = {c["metadata"]["name"]: c for c in children if c["kind"] == "Service"}

    assert sorted(deployments) == sorted(services) == ["p-egress", "p-router"]
    for name, service in services.items():
        own = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert selects(service["spec"]["selector"], own)
        assert selects(deployments[name]["spec"]["selector"]["matchLabels"], own)
        for other_name, other in deployments.items():
            if other_name != name:
                labels = other["spec"]["template"]["metadata"]["labels"]
                assert not selects(service["spec"]["selector"], labels)


def test_pods_have_unique_volume_names_and_mount_paths() -> None:
    for name, spec, fleet in MANY:
        for workload in workloads(smallmodel_children(name, spec, fleet)):
            pod = workload["spec"]["template"]["spec"]
            volume_names = [v["name"] for v in pod["volumes"]]
            assert len(volume_names) == len(set(volume_names)), spec["source"]
            for container in [*pod["initContainers"], *pod["containers"]]:
                paths = [m["mountPath"] for m in container["volumeMounts"]]
                # The API server refuses a pod that mounts two volumes at one path.
                assert len(paths) == len(set(paths)), (spec["source"], paths)
                assert {m["name"] for m in container["volumeMounts"]} <= set(volume_names)


SERVINGS: list[dict[str, Any]] = [
    {},
    {"maxConcurrency": 1},
    {"maxConcurrency": 64, "contextLength": 8192},
    {"instances": 4},
    {"instances": 4, "maxConcurrency": 3},
]


@pytest.mark.parametrize("serving", SERVINGS)
def test_the_server_accepts_every_model_pods_settings(serving: dict[str, Any]) -> None:
    for fleet in FLEETS:
        spec = {"source": BUILTIN, "replicas": 2, "serving": serving}
        for workload in workloads(smallmodel_children("m", spec, fleet)):
            (server,) = workload["spec"]["template"]["spec"]["containers"]
            parser = argparse.ArgumentParser()
            add_arguments(parser)

            # What edgefleet-server reads at start; it refuses what its engine cannot run.
            config = config_from(parser.parse_args(server["args"]), {})

            assert config.max_concurrency == model(spec).serving.concurrency(config.engine)


def node_matches(affinity: dict[str, Any], node: NodeFacts) -> bool:
    """The scheduler's required node affinity rule (terms ORed, expressions ANDed)."""
    required = affinity.get("nodeAffinity", {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    if not required:
        return True

    def holds(expression: dict[str, Any]) -> bool:
        value = node.labels.get(expression["key"])
        operator = expression["operator"]
        if operator == "In":
            return value in expression["values"]
        if operator == "NotIn":
            return value not in expression["values"]
        if operator == "Exists":
            return value is not None
        return value is None  # DoesNotExist

    return any(
        all(holds(e) for e in t.get("matchExpressions", [])) for t in required["nodeSelectorTerms"]
    )


@pytest.mark.parametrize(
    "node",
    [
        NodeFacts("labelled-gpu", labels={GPU: "true"}, gpus=1),
        NodeFacts("label-only-gpu", labels={GPU: "true"}),
        # A GPU node where the device plugin runs but GPU feature discovery does not.
        NodeFacts("unlabelled-gpu", gpus=1),
        NodeFacts("cpu"),
        NodeFacts("cpu-labelled-false", labels={GPU: "false"}),
    ],
    ids=lambda node: node.name,
)
def test_auto_puts_each_node_in_exactly_the_class_the_planner_counted(node: NodeFacts) -> None:
    spec = model({"source": BUILTIN, "engine": "auto", "perNode": True})
    plans = plan_engines(spec, [node], GPU)

    (plan,) = plans
    children = workloads(sm.build_children("m", NS, spec, plans, CONFIG))
    landing = [
        w["metadata"]["labels"]["edgefleet.io/engine"]
        for w in children
        if node_matches(w["spec"]["template"]["spec"].get("affinity", {}), node)
    ]
    # The planner counted this node for one class; that class's pods, and no
    # other's, may run there.
    assert landing == [plan.engine]
    assert plan.engine == ("vllm" if node.is_gpu(GPU) else "llamacpp")


# --- RoutingPolicy ----------------------------------------------------------------------


def policy_spec() -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / "routingpolicy.yaml").read_text(encoding="utf-8"))["spec"]


def router_labels(component: str = "router") -> dict[str, str]:
    return {
        "app.kubernetes.io/managed-by": "edgefleet-operator",
        "app.kubernetes.io/part-of": "edgefleet",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/name": "demo",
        "edgefleet.io/routing-policy": "demo",
    }


def selector(component: str) -> dict[str, str]:
    return {"edgefleet.io/routing-policy": "demo", "app.kubernetes.io/component": component}


def test_config_map_round_trips_through_the_routers_parser() -> None:
    config_map = rp.build_config_map("demo", NS, policy_spec())

    assert config_map["apiVersion"] == "v1"
    assert config_map["kind"] == "ConfigMap"
    assert config_map["metadata"] == {
        "name": "demo-router",
        "namespace": NS,
        "labels": router_labels(),
    }
    assert list(config_map["data"]) == ["policy.yaml"]
    document = yaml.safe_load(config_map["data"]["policy.yaml"])
    assert document == {
        "apiVersion": "edgefleet.io/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": "demo"},
        "spec": policy_spec(),
    }
    assert parse_policy(document) == load_policy(EXAMPLES / "routingpolicy.yaml")


def test_router_rbac() -> None:
    config = OperatorConfig(router_cluster_role="rel-edgefleet-router")

    assert rp.build_router_rbac("demo", NS, config) == [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "demo-router", "namespace": NS, "labels": router_labels()},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "demo-router", "namespace": NS, "labels": router_labels()},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "rel-edgefleet-router",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "demo-router", "namespace": NS}],
        },
    ]


ROUTER_POD = '{"nodeSelector": {"tier": "core"}, "tolerations": [{"operator": "Exists"}], "resources": {"requests": {"cpu": "100m"}}}'  # noqa: E501


def policy_probe() -> tuple[dict[str, Any], dict[str, Any]]:
    return probe(1, 5, 3), probe(10, 10, 6)


def test_router_deployment_with_cloud() -> None:
    config = OperatorConfig(router_pod=ROUTER_POD)
    readiness, liveness = policy_probe()

    router = rp.build_router("demo", NS, policy_spec(), config)

    assert router == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "demo-router", "namespace": NS, "labels": router_labels()},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector("router")},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                # No config hash: the router re-reads its policy file live.
                "metadata": {"labels": router_labels()},
                "spec": {
                    "serviceAccountName": "demo-router",
                    "securityContext": POD_SECURITY,
                    "enableServiceLinks": False,
                    "containers": [
                        {
                            "name": "router",
                            "image": IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["edgefleet-router"],
                            "args": [
                                "--listen",
                                "0.0.0.0:50051",
                                "--http-listen",
                                "0.0.0.0:8080",
                                "--metrics-listen",
                                "0.0.0.0:9090",
                                "--policy-file",
                                "/etc/edgefleet/router/policy.yaml",
                                "--kube-namespace",
                                NS,
                                "--status-policy",
                                "demo",
                                "--cloud-service",
                                "demo-egress",
                            ],
                            "env": INSTANCE_ENV,
                            "ports": [
                                {"name": "grpc", "containerPort": 50051, "protocol": "TCP"},
                                {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                                {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
                            ],
                            "readinessProbe": readiness,
                            "livenessProbe": liveness,
                            "resources": {"requests": {"cpu": "100m"}},
                            "securityContext": LOCKED_DOWN,
                            "volumeMounts": [
                                {
                                    "name": "policy",
                                    "mountPath": "/etc/edgefleet/router",
                                    "readOnly": True,
                                }
                            ],
                        }
                    ],
                    "volumes": [{"name": "policy", "configMap": {"name": "demo-router"}}],
                    "nodeSelector": {"tier": "core"},
                    "tolerations": [{"operator": "Exists"}],
                },
            },
        },
    }


def test_router_without_cloud_has_no_cloud_service() -> None:
    spec = {**policy_spec(), "cloud": {"enabled": False}}

    router = rp.build_router("demo", NS, spec, CONFIG)

    (container,) = router["spec"]["template"]["spec"]["containers"]
    assert "--cloud-service" not in container["args"]
    assert container["resources"] == {}
    assert "nodeSelector" not in router["spec"]["template"]["spec"]


def test_a_policy_edit_rolls_the_egress_but_not_the_router() -> None:
    # The handler passes a digest of the spec; the egress reads the policy only
    # at start, the router re-reads it live (and would lose its breakers and
    # budget window if restarted).
    before, after = policy_spec(), policy_spec()
    after["complexity"] = {"threshold": 0.5}

    old = rp.build_children("demo", NS, before, CONFIG, [], config_hash="aaaa")
    new = rp.build_children("demo", NS, after, CONFIG, [], config_hash="bbbb")

    def template(children: list[dict[str, Any]], name: str) -> dict[str, Any]:
        (found,) = [
            c for c in children if c["kind"] == "Deployment" and c["metadata"]["name"] == name
        ]
        return found["spec"]["template"]

    assert template(old, "demo-router") == template(new, "demo-router")
    assert template(old, "demo-egress") != template(new, "demo-egress")


def test_egress_deployment() -> None:
    config = OperatorConfig(egress_pod='{"resources": {"limits": {"memory": "256Mi"}}}')
    spec = policy_spec()
    spec["cloud"]["apiKeySecretRef"] = {"name": "cloud-llm", "key": "token"}
    readiness, liveness = policy_probe()

    egress = rp.build_egress("demo", NS, spec, config, "0123abcd")

    assert egress == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "demo-egress", "namespace": NS, "labels": router_labels("egress")},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector("egress")},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {
                    "labels": router_labels("egress"),
                    "annotations": {"edgefleet.io/config-hash": "0123abcd"},
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": POD_SECURITY,
                    "enableServiceLinks": False,
                    "containers": [
                        {
                            "name": "egress",
                            "image": IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["edgefleet-egress"],
                            "args": [
                                "--listen",
                                "0.0.0.0:50051",
                                "--metrics-listen",
                                "0.0.0.0:9090",
                                "--base-url",
                                "https://api.openai.com/v1",
                                "--cloud-model",
                                "gpt-4o-mini",
                                "--policy-file",
                                "/etc/edgefleet/router/policy.yaml",
                            ],
                            "env": [
                                *INSTANCE_ENV,
                                {
                                    "name": "EDGEFLEET_CLOUD_API_KEY",
                                    "valueFrom": {
                                        "secretKeyRef": {"name": "cloud-llm", "key": "token"}
                                    },
                                },
                            ],
                            "ports": [
                                {"name": "grpc", "containerPort": 50051, "protocol": "TCP"},
                                {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
                            ],
                            "readinessProbe": readiness,
                            "livenessProbe": liveness,
                            "resources": {"limits": {"memory": "256Mi"}},
                            "securityContext": LOCKED_DOWN,
                            "volumeMounts": [
                                {
                                    "name": "policy",
                                    "mountPath": "/etc/edgefleet/router",
                                    "readOnly": True,
                                },
                            ],
                        }
                    ],
                    "volumes": [{"name": "policy", "configMap": {"name": "demo-router"}}],
                },
            },
        },
    }


def test_router_and_egress_services() -> None:
    router = rp.build_service("demo-router", NS, "demo", "router")
    egress = rp.build_service("demo-egress", NS, "demo", "egress")

    assert router == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "demo-router", "namespace": NS, "labels": router_labels()},
        "spec": {
            "selector": selector("router"),
            "ports": [
                {"name": "grpc", "port": 50051, "targetPort": "grpc", "protocol": "TCP"},
                {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"},
                {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }
    assert egress == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "demo-egress", "namespace": NS, "labels": router_labels("egress")},
        "spec": {
            "selector": selector("egress"),
            "ports": [
                {"name": "grpc", "port": 50051, "targetPort": "grpc", "protocol": "TCP"},
                {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }


def test_router_network_policy_with_ipv4_and_ipv6_api_endpoints() -> None:
    policy = rp.build_router_network_policy("demo", NS, [("10.0.0.1", 6443), ("fd00::1", 443)])

    assert policy == {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "demo-router", "namespace": NS, "labels": router_labels()},
        "spec": {
            "podSelector": {"matchLabels": selector("router")},
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [
                        {
                            "podSelector": {
                                "matchExpressions": [
                                    {
                                        "key": "app.kubernetes.io/component",
                                        "operator": "In",
                                        "values": ["model-server", "egress"],
                                    },
                                ]
                            }
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": 50051}],
                },
                DNS,
                {
                    "to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}],
                    "ports": [{"protocol": "TCP", "port": 6443}],
                },
                {
                    "to": [{"ipBlock": {"cidr": "fd00::1/128"}}],
                    "ports": [{"protocol": "TCP", "port": 443}],
                },
            ],
        },
    }


@pytest.mark.parametrize(
    "setting", ["10.0.0.1:6443", "[fd00::1]:6443", "10.0.0.1:6443,[2001:db8::2]:443"]
)
def test_configured_api_endpoints_become_valid_cidrs(setting: str) -> None:
    # The chart's values.schema.json allows bracketed IPv6 (the usual ip:port form).
    from edgefleet.operator.handlers.routingpolicy import api_endpoints

    config = OperatorConfig(api_server_endpoints=setting)

    endpoints = api_endpoints(cast(Any, None), config)
    policy = rp.build_router_network_policy("demo", NS, endpoints)

    blocks = [
        r["to"][0]["ipBlock"]["cidr"] for r in policy["spec"]["egress"] if "ipBlock" in r["to"][0]
    ]
    assert len(blocks) == setting.count(",") + 1
    for cidr in blocks:
        network = ipaddress.ip_network(cidr)
        assert network.num_addresses == 1


def test_egress_network_policy() -> None:
    assert rp.build_egress_network_policy("demo", NS) == {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "demo-egress", "namespace": NS, "labels": router_labels("egress")},
        "spec": {
            "podSelector": {"matchLabels": selector("egress")},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "from": [
                        {"podSelector": {"matchLabels": selector("router")}},
                        {"podSelector": {"matchLabels": selector("calibration")}},
                    ],
                    "ports": [{"protocol": "TCP", "port": 50051}],
                },
                {"ports": [{"protocol": "TCP", "port": 9090}]},
            ],
            "egress": [{}],
        },
    }


def test_routingpolicy_children_with_cloud_in_apply_order() -> None:
    children = rp.build_children("demo", NS, policy_spec(), CONFIG, [("10.0.0.1", 6443)], "h")

    assert kinds_and_names(children) == [
        ("ConfigMap", "demo-router"),
        ("ServiceAccount", "demo-router"),
        ("RoleBinding", "demo-router"),
        ("Deployment", "demo-egress"),
        ("Service", "demo-egress"),
        ("NetworkPolicy", "demo-egress"),
        ("Deployment", "demo-router"),
        ("Service", "demo-router"),
        ("NetworkPolicy", "demo-router"),
    ]


def test_routingpolicy_children_without_cloud_have_no_egress() -> None:
    spec = {**policy_spec(), "cloud": {"enabled": False}}

    children = rp.build_children("demo", NS, spec, CONFIG, [("10.0.0.1", 6443)], "h")

    assert kinds_and_names(children) == [
        ("ConfigMap", "demo-router"),
        ("ServiceAccount", "demo-router"),
        ("RoleBinding", "demo-router"),
        ("Deployment", "demo-router"),
        ("Service", "demo-router"),
        ("NetworkPolicy", "demo-router"),
    ]
    assert all("egress" not in c["metadata"]["name"] for c in children)
    assert rp.cloud_enabled({"cloud": {"enabled": True}})
    assert not rp.cloud_enabled(spec)


# --- RoutingPolicy: privacy.sensitiveNamespaces ------------------------------------------


def pod_binding_labels(policy_namespace: str = NS) -> dict[str, str]:
    return {**router_labels(), "edgefleet.io/routing-policy-namespace": policy_namespace}


def test_router_may_list_pods_in_each_sensitive_namespace_and_nowhere_else() -> None:
    config = OperatorConfig(router_pods_cluster_role="rel-edgefleet-router-pods")
    spec = {**policy_spec(), "privacy": {"sensitiveNamespaces": ["payroll", "hr"]}}

    assert rp.build_router_pod_bindings("demo", NS, spec, config) == [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {
                "name": f"edgefleet-router-{NS}-demo",
                "namespace": namespace,
                "labels": pod_binding_labels(),
            },
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "rel-edgefleet-router-pods",
            },
            # The router's own ServiceAccount, in the policy's namespace.
            "subjects": [{"kind": "ServiceAccount", "name": "demo-router", "namespace": NS}],
        }
        for namespace in ("payroll", "hr")
    ]
    assert rp.build_router_pod_bindings("demo", NS, {"privacy": {}}, config) == []
    assert rp.build_router_pod_bindings("demo", NS, {}, config) == []


def test_pod_bindings_are_not_children_of_the_policy() -> None:
    # They live in other namespaces, where an owner reference cannot point.
    spec = {**policy_spec(), "privacy": {"sensitiveNamespaces": ["payroll"]}}
    children = rp.build_children("demo", NS, spec, CONFIG, [("10.0.0.1", 6443)], "h")
    assert all(child["metadata"]["namespace"] == NS for child in children)


def test_pod_binding_names_are_capped_at_63_characters_and_stay_distinct() -> None:
    assert rp.pod_binding_name("demo", "shop") == "edgefleet-router-shop-demo"
    long_namespace = "n" * 40
    first = rp.pod_binding_name("policy-" + "a" * 40, long_namespace)
    second = rp.pod_binding_name("policy-" + "a" * 39 + "b", long_namespace)
    assert len(first) == len(second) == 63
    assert first != second
    # The readable start is kept; the last 10 characters are a hash of the whole name.
    assert first[:52] == f"edgefleet-router-{long_namespace}-policy-{'a' * 40}"[:52]
    assert first[52] == "-"
    assert rp.pod_binding_name("policy-" + "a" * 40, long_namespace) == first  # stable
    assert all(c.isalnum() or c == "-" for c in first) and first[-1].isalnum()


def test_pod_binding_selector_finds_exactly_one_policys_bindings() -> None:
    selector = rp.pod_binding_selector("demo", NS)
    assert selector == (
        "app.kubernetes.io/managed-by=edgefleet-operator,edgefleet.io/routing-policy=demo,"
        f"edgefleet.io/routing-policy-namespace={NS}"
    )
    (binding,) = rp.build_router_pod_bindings(
        "demo", NS, {"privacy": {"sensitiveNamespaces": ["payroll"]}}, CONFIG
    )
    labels = binding["metadata"]["labels"]
    assert all(labels[k] == v for k, v in (term.split("=") for term in selector.split(",")))
    assert binding["roleRef"]["name"] == "edgefleet-router-pods"
