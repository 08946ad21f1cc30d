"""SmallModel → model-server workloads (one per engine class), Service, PDB, NetworkPolicy."""

from __future__ import annotations

import copy
from typing import Any

from edgefleet.operator import names
from edgefleet.operator.builders.common import (
    INSTANCE_ENV,
    POD_SECURITY_CONTEXT,
    container_security_context,
    grpc_probe,
    metadata,
    with_required_terms,
)
from edgefleet.operator.config import OperatorConfig
from edgefleet.operator.placement import EnginePlan
from edgefleet.operator.spec import ModelSource, Serving, SmallModelSpec

MODELS_VOLUME = "models"
# vLLM's CPU and GPU workers hand tensors over through shared memory; a container's
# own /dev/shm is 64 MiB, and vLLM refuses to start below ~160 MiB ("Insufficient
# space in /dev/shm"). A memory-backed emptyDir counts against the pod's memory.
SHM_VOLUME = {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}
SHM_MOUNT = {"name": "dshm", "mountPath": "/dev/shm"}
# Where pvc://CLAIM/path sources are mounted (the fetch command's --pvc-root).
PVC_ROOT = "/mnt/pvc"
# llama.cpp loads a small GGUF in seconds; vLLM compiles and profiles for minutes.
_STARTUP_DELAY = {"llamacpp": 5, "vllm": 60}


def _fetch_args(source: ModelSource, engine: str) -> list[str]:
    """The init container's arguments: the source form this engine reads."""
    fmt = "hf" if engine == "vllm" else "gguf"
    # vLLM without `hf`: only a builtin GGUF passes admission, converted on fetch.
    chosen = (source.hf or source.gguf) if engine == "vllm" else (source.gguf or source.hf)
    assert chosen is not None  # the parser insists on one of the two
    args = ["--source", chosen.uri, "--dest", names.MODELS_DIR, "--format", fmt]
    if chosen.uri.startswith("pvc://"):
        args += ["--pvc-root", PVC_ROOT]
    if chosen.sha256:
        args += ["--sha256", chosen.sha256]
    return args


def serving_flags(serving: Serving, engine: str) -> list[str]:
    """The edgefleet-server flags that make a pod of this engine class serve as asked.

    A pod decodes exactly what it admits (the server refuses to admit more):
    llama.cpp with one instance, and vLLM (its max_num_seqs), batch
    `concurrency` sequences together; llama.cpp with more instances runs a
    pool of model copies, one request each. vLLM's KV cache is sized by the
    server from its share of GPU memory, which a node may set through
    EDGEFLEET_VLLM_* variables (flags here would override them).
    """
    concurrency = serving.concurrency(engine)
    if engine == "llamacpp" and serving.instances > 1:
        decoding = ["--batch-sequences", "0", "--instances", str(serving.instances)]
    else:
        decoding = ["--batch-sequences", str(concurrency)]
    return [
        "--context-length", str(serving.context_length),
        *decoding,
        "--max-concurrency", str(concurrency),
        "--max-queue", str(serving.max_queue),
    ]  # fmt: skip


def _server_args(name: str, spec: SmallModelSpec, engine: str) -> list[str]:
    model = f"{names.MODELS_DIR}/hf" if engine == "vllm" else f"{names.MODELS_DIR}/model.gguf"
    return [
        "--engine", engine,
        "--model", model,
        "--model-name", name,
        "--listen", f"0.0.0.0:{names.GRPC_PORT}",
        "--metrics-listen", f"0.0.0.0:{names.METRICS_PORT}",
        *serving_flags(spec.serving, engine),
    ]  # fmt: skip


def _source_volumes(
    source: ModelSource,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Volumes and mounts that make pvc:// and file:// sources visible to both containers.

    The fetch command links (not copies) local sources into the models folder,
    so the server container must see them at the same path too.
    """
    volumes: dict[str, dict[str, Any]] = {}
    mounts: dict[str, dict[str, Any]] = {}
    for form, model_file in (("gguf", source.gguf), ("hf", source.hf)):
        uri = model_file.uri if model_file else ""
        if uri.startswith("pvc://"):
            claim = uri.removeprefix("pvc://").split("/", 1)[0]
            volume = f"pvc-{claim}".replace(".", "-")[:63]
            volumes[volume] = {
                "name": volume,
                "persistentVolumeClaim": {"claimName": claim, "readOnly": True},
            }
            mounts[volume] = {
                "name": volume, "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True,
            }  # fmt: skip
        elif uri.startswith("file://"):
            folder = uri.removeprefix("file://").rstrip("/")
            if form == "gguf":
                folder = folder.rsplit("/", 1)[0] or "/"
            if any(m["mountPath"] == folder for m in mounts.values()):
                continue  # both forms in one folder: one volume, one mount
            volume = f"host-{len(volumes)}"
            volumes[volume] = {
                "name": volume, "hostPath": {"path": folder, "type": "Directory"},
            }  # fmt: skip
            mounts[volume] = {"name": volume, "mountPath": folder, "readOnly": True}
    return list(volumes.values()), list(mounts.values())


def _resources(spec: SmallModelSpec, engine: str, config: OperatorConfig) -> dict[str, Any]:
    resources = copy.deepcopy(dict(spec.resources))
    if engine == "vllm":
        # Every vLLM pod owns one GPU; asking for it is also what keeps it on GPU nodes.
        for key in ("requests", "limits"):
            resources.setdefault(key, {}).setdefault(config.gpu_resource, 1)
    return resources


def _affinity(spec: SmallModelSpec, plan: EnginePlan, config: OperatorConfig) -> dict:
    placement = spec.placement
    expressions: list[dict[str, Any]] = []
    if placement.sites:
        expressions.append(
            {"key": names.SITE_LABEL, "operator": "In", "values": list(placement.sites)}
        )
    if plan.engine == "vllm":
        expressions.append({"key": config.gpu_node_label, "operator": "In", "values": ["true"]})
    elif spec.engine == "auto":
        # auto: llama.cpp is the CPU half; GPU nodes belong to the vLLM half.
        expressions.append({"key": config.gpu_node_label, "operator": "NotIn", "values": ["true"]})
    return with_required_terms(placement.affinity, expressions)


def build_pod_template(
    name: str, spec: SmallModelSpec, plan: EnginePlan, config: OperatorConfig
) -> dict[str, Any]:
    placement = spec.placement
    image = config.vllm_image if plan.engine == "vllm" else config.image
    source_volumes, source_mounts = _source_volumes(spec.source)
    mounts = [{"name": MODELS_VOLUME, "mountPath": names.MODELS_DIR}, *source_mounts]
    delay = _STARTUP_DELAY[plan.engine]
    # vLLM and the GGUF-to-HF conversion write caches into the image
    # (EDGEFLEET_CACHE_DIR, ~/.cache); llama.cpp writes only to the models volume.
    read_only_root = plan.engine != "vllm"
    pod_spec: dict[str, Any] = {
        # Model servers never call the Kubernetes API.
        "automountServiceAccountToken": False,
        "securityContext": copy.deepcopy(POD_SECURITY_CONTEXT),
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "initContainers": [
            {
                "name": "fetch-model",
                "image": image,
                "imagePullPolicy": config.image_pull_policy,
                "command": ["edgefleet-fetch-model"],
                "args": _fetch_args(spec.source, plan.engine),
                "securityContext": container_security_context(read_only_root=read_only_root),
                # A failed fetch's last log lines become its termination message, which
                # the SmallModel's status then quotes (status.pod_problem).
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "volumeMounts": copy.deepcopy(mounts),
            }
        ],
        "containers": [
            {
                "name": "server",
                "image": image,
                "imagePullPolicy": config.image_pull_policy,
                "command": ["edgefleet-server"],
                "args": _server_args(name, spec, plan.engine),
                "env": copy.deepcopy(INSTANCE_ENV),
                "ports": [
                    {"name": "grpc", "containerPort": names.GRPC_PORT, "protocol": "TCP"},
                    {"name": "metrics", "containerPort": names.METRICS_PORT, "protocol": "TCP"},
                ],
                "readinessProbe": grpc_probe(
                    names.GRPC_PORT, initial_delay=1, period=5, failures=3
                ),
                "livenessProbe": grpc_probe(
                    names.GRPC_PORT, initial_delay=delay, period=10, failures=6
                ),
                "resources": _resources(spec, plan.engine, config),
                "securityContext": container_security_context(read_only_root=read_only_root),
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "volumeMounts": copy.deepcopy(mounts),
            }
        ],
        "volumes": [{"name": MODELS_VOLUME, "emptyDir": {}}, *source_volumes],
    }
    if plan.engine == "vllm":
        pod_spec["volumes"].append(copy.deepcopy(SHM_VOLUME))
        pod_spec["containers"][0]["volumeMounts"].append(dict(SHM_MOUNT))
    if placement.node_selector:
        pod_spec["nodeSelector"] = dict(placement.node_selector)
    if placement.tolerations:
        pod_spec["tolerations"] = copy.deepcopy(list(placement.tolerations))
    affinity = _affinity(spec, plan, config)
    if affinity:
        pod_spec["affinity"] = affinity
    return {"metadata": {"labels": names.model_labels(name, plan.engine)}, "spec": pod_spec}


def build_workload(
    name: str, namespace: str, spec: SmallModelSpec, plan: EnginePlan, config: OperatorConfig
) -> dict[str, Any]:
    """A Deployment (replicas) or DaemonSet (perNode) for one engine class."""
    selector = {names.MODEL_LABEL: name, names.ENGINE_LABEL: plan.engine}
    body: dict[str, Any] = {
        "metadata": metadata(
            names.workload_name(name, plan.engine), namespace, names.model_labels(name, plan.engine)
        ),
        "spec": {
            "selector": {"matchLabels": selector},
            "template": build_pod_template(name, spec, plan, config),
        },
    }
    if plan.replicas is None:
        body["apiVersion"], body["kind"] = "apps/v1", "DaemonSet"
        body["spec"]["updateStrategy"] = {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 1},
        }
    else:
        body["apiVersion"], body["kind"] = "apps/v1", "Deployment"
        if spec.autoscaling is None:
            # Under autoscaling the HPA owns the count; applying one here would fight it.
            body["spec"]["replicas"] = plan.replicas
        body["spec"]["strategy"] = {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
        }
    return body


def build_service(name: str, namespace: str, spec: SmallModelSpec) -> dict[str, Any]:
    """One Service for every engine class of the model: clients never pick an engine."""
    service_spec: dict[str, Any] = {
        "selector": names.model_selector(name),
        "ports": [
            {"name": "grpc", "port": names.GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
            {"name": "metrics", "port": names.METRICS_PORT, "targetPort": "metrics"},
        ],
    }
    if spec.per_node:
        # Edge clients stay on their own node's replica.
        service_spec["internalTrafficPolicy"] = "Local"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(name, namespace, names.model_labels(name)),
        "spec": service_spec,
    }


def build_disruption_budget(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(name, namespace, names.model_labels(name)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": names.model_selector(name)}},
    }


DNS_EGRESS: dict[str, Any] = {
    "to": [
        {
            "namespaceSelector": {},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ],
    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
}


def build_network_policy(name: str, namespace: str, config: OperatorConfig) -> dict[str, Any]:
    """Model pods take requests from their namespace and reach nothing outside the cluster."""
    egress: list[dict[str, Any]] = [copy.deepcopy(DNS_EGRESS), {"to": [{"namespaceSelector": {}}]}]
    cidrs = config.fetch_cidrs()
    if cidrs:
        egress.append({"to": [{"ipBlock": {"cidr": cidr}} for cidr in cidrs]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(f"{name}-model", namespace, names.model_labels(name)),
        "spec": {
            "podSelector": {"matchLabels": names.model_selector(name)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": {}}]}],
            "egress": egress,
        },
    }


def build_autoscaler(
    name: str, namespace: str, spec: SmallModelSpec, plan: EnginePlan
) -> dict[str, Any] | None:
    """A HorizontalPodAutoscaler on in-flight requests per pod, when autoscaling is asked for.

    The metric is the model server's own `vllm:num_requests_running` gauge
    (both engines export it), served to the HPA by a custom-metrics adapter
    such as prometheus-adapter. A HPA cannot go below one replica without the
    HPAScaleToZero feature gate, so minReplicas 0 is applied as 1 by the HPA;
    the router covers a model with no ready replica with the cloud.
    """
    autoscaling = spec.autoscaling
    if autoscaling is None or plan.replicas is None:
        return None
    workload = names.workload_name(name, plan.engine)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(workload, namespace, names.model_labels(name, plan.engine)),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": workload},
            "minReplicas": max(1, autoscaling.min_replicas),
            "maxReplicas": autoscaling.max_replicas,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": "vllm:num_requests_running"},
                        "target": {
                            "type": "AverageValue",
                            "averageValue": str(autoscaling.target_in_flight_per_replica),
                        },
                    },
                }
            ],
        },
    }


def build_children(
    name: str,
    namespace: str,
    spec: SmallModelSpec,
    plans: list[EnginePlan],
    config: OperatorConfig,
) -> list[dict[str, Any]]:
    """Everything a SmallModel owns, in the order it is applied."""
    children = [build_workload(name, namespace, spec, plan, config) for plan in plans]
    for plan in plans:
        autoscaler = build_autoscaler(name, namespace, spec, plan)
        if autoscaler is not None:
            children.append(autoscaler)
    children += [
        build_service(name, namespace, spec),
        build_disruption_budget(name, namespace),
        build_network_policy(name, namespace, config),
    ]
    return children
