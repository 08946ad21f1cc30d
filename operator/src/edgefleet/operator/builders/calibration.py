"""RouterCalibration → one KubeRay RayJob per run, and the identity its pods run as.

The RayJob's head pod runs `edgefleet-calibrate` as the Ray driver (KubeRay's K8sJobMode
submits it through the head's dashboard); Ray workers in worker pods label prompts
against the policy's local SmallModels (their Services) and, when grading asks, the cloud
through the policy's egress. The driver reads the policy as the router does (the router's
ConfigMap) and the prompts from the ConfigMap or claim the spec names, and hands its
result over as a new ConfigMap (`<run>-result`) owned by the RouterCalibration: the
ServiceAccount may create ConfigMaps in its namespace and nothing else.
"""

from __future__ import annotations

import copy
import shlex
from collections.abc import Mapping
from typing import Any

from edgefleet.calibrate.publish import CALIBRATION_LABEL
from edgefleet.operator import names
from edgefleet.operator.builders.common import (
    POD_SECURITY_CONTEXT,
    container_security_context,
    metadata,
    service_identity,
)
from edgefleet.operator.calibration_spec import RouterCalibrationSpec
from edgefleet.operator.config import OperatorConfig

RUN_LABEL = f"{names.GROUP}/calibration-run"
RAY_API_VERSION = "ray.io/v1"
# The Ray release in the calibration image (pyproject.toml's calibrate extra).
RAY_VERSION = "2.60.0"
POLICY_DIR = "/etc/edgefleet/calibration/policy"
PROMPTS_DIR = "/var/run/edgefleet/prompts"
OUT_DIR = "/tmp/edgefleet-calibrations"
# Ray's ports, for the probes: the dashboard (job submission) on the head, each
# node's dashboard agent everywhere.
DASHBOARD_PORT = 8265
DASHBOARD_AGENT_PORT = 52365
# Ray's object store lives in /dev/shm; a container's default is 64 MiB.
SHM_SIZE = "512Mi"
OBJECT_STORE_BYTES = str(256 * 1024 * 1024)
# A run that has not finished in this long is stopped (KubeRay's activeDeadlineSeconds).
RUN_DEADLINE_S = 6 * 3600


def run_name(calibration: str, number: int) -> str:
    """The RayJob of a RouterCalibration's run `number` (1, 2, ...)."""
    return f"{calibration}-{number}"


def result_name(run: str) -> str:
    """The ConfigMap a run hands its result over in."""
    return f"{run}-result"


def account_name(calibration: str) -> str:
    return f"{calibration}-calibration"


def calibration_labels(calibration: str, policy: str) -> dict[str, str]:
    """On every object and pod of a calibration; the egress lets these pods in."""
    return {**names.policy_labels(policy, names.CALIBRATION), CALIBRATION_LABEL: calibration}


def build_identity(
    calibration: str, namespace: str, policy: str, config: OperatorConfig
) -> list[dict[str, Any]]:
    """The ServiceAccount the run's pods use, bound to the chart's calibration ClusterRole."""
    labels = calibration_labels(calibration, policy)
    return service_identity(
        account_name(calibration), namespace, labels, config.calibration_cluster_role
    )


# The KubeRay operator's pods (its Helm chart's label): it polls the head's job API.
KUBERAY_OPERATOR = {"app.kubernetes.io/name": "kuberay-operator"}


def build_network_policy(
    calibration: str, namespace: str, policy: str, api_endpoints: list[tuple[str, int]]
) -> dict[str, Any]:
    """Only the calibration's own pods may talk to its Ray pods.

    Ray's head runs whatever job it is handed and its pods may call the policy's egress
    (the cloud, at the policy's expense): nobody else may reach them. KubeRay's operator
    asks the head's job API directly or through the API server's proxy.
    """
    own = {"podSelector": {"matchLabels": {CALIBRATION_LABEL: calibration}}}
    job_api = [{"protocol": "TCP", "port": DASHBOARD_PORT}]
    kuberay = [{"namespaceSelector": {}, "podSelector": {"matchLabels": dict(KUBERAY_OPERATOR)}}]
    api_servers = [
        {"ipBlock": {"cidr": f"{address}/{128 if ':' in address else 32}"}}
        for address, _ in api_endpoints
    ]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(
            account_name(calibration), namespace, calibration_labels(calibration, policy)
        ),
        "spec": {
            "podSelector": {"matchLabels": {CALIBRATION_LABEL: calibration}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [own]}, {"from": kuberay + api_servers, "ports": job_api}],
        },
    }


def local_addresses(namespace: str, targets: list[str]) -> list[str]:
    """The policy's local SmallModels as the driver calls them: each one's Service."""
    return [f"{model}.{namespace}.svc:{names.GRPC_PORT}" for model in targets]


def egress_address(policy: str, namespace: str) -> str:
    return f"{names.egress_name(policy)}.{namespace}.svc:{names.GRPC_PORT}"


def entrypoint(
    calibration: Mapping[str, str],
    spec: RouterCalibrationSpec,
    run: str,
    local: list[str],
    cloud: str | None,
) -> str:
    """The driver's command line (`calibration` is the resource's name, namespace and uid)."""
    args = [
        "edgefleet-calibrate",
        "--policy", f"{POLICY_DIR}/{names.POLICY_FILE}",
        "--prompts", f"{PROMPTS_DIR}/{spec.prompts.file()}",
        "--local", ",".join(local),
        "--grading", spec.grading,
        "--workers", str(spec.labellers),
        "--max-tokens", str(spec.max_tokens),
        "--out", OUT_DIR,
        "--ray-address", "auto",
        "--publish-configmap", f"{calibration['namespace']}/{result_name(run)}",
        "--owner", f"{calibration['name']}/{calibration['uid']}",
    ]  # fmt: skip
    if spec.assume_cloud_correct:
        args.append("--assume-cloud-correct")
    elif cloud:
        args += ["--cloud", cloud]
    if spec.budget.max_cloud_tokens is not None:
        args += ["--max-cloud-tokens", str(spec.budget.max_cloud_tokens)]
    if spec.budget.max_cloud_cost is not None:
        args += ["--max-cloud-cost", repr(spec.budget.max_cloud_cost)]
    return shlex.join(args)


def _volumes(spec: RouterCalibrationSpec, policy: str) -> list[dict[str, Any]]:
    prompts = spec.prompts
    if prompts.config_map is not None:
        source: dict[str, Any] = {"configMap": {"name": prompts.config_map.name}}
    else:
        claim = prompts.persistent_volume_claim
        assert claim is not None  # the parser saw to exactly one
        source = {"persistentVolumeClaim": {"claimName": claim.claim_name, "readOnly": True}}
    return [
        {"name": "policy", "configMap": {"name": names.router_name(policy)}},
        {"name": "prompts", **source},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}},
    ]


def _placement(spec: RouterCalibrationSpec) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if spec.placement.node_selector:
        found["nodeSelector"] = dict(spec.placement.node_selector)
    if spec.placement.tolerations:
        found["tolerations"] = copy.deepcopy(list(spec.placement.tolerations))
    return found


def _pod_template(
    spec: RouterCalibrationSpec,
    policy: str,
    labels: Mapping[str, str],
    account: str,
    image: str,
    config: OperatorConfig,
    *,
    head: bool,
) -> dict[str, Any]:
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]
    if head:  # only the driver reads the policy and the prompts
        mounts += [
            {"name": "policy", "mountPath": POLICY_DIR, "readOnly": True},
            {"name": "prompts", "mountPath": PROMPTS_DIR, "readOnly": True},
        ]
    # KubeRay's own probes call wget, which the image lacks; a listening port says as much.
    ready_port = DASHBOARD_PORT if head else DASHBOARD_AGENT_PORT
    container = {
        "name": "ray-head" if head else "ray-worker",
        "image": image,
        "imagePullPolicy": config.image_pull_policy,
        "resources": {
            "requests": {"cpu": "250m", "memory": "1Gi" if head else "768Mi"},
            "limits": {"memory": "3Gi" if head else "2Gi"},
        },
        "readinessProbe": {
            "tcpSocket": {"port": ready_port},
            "periodSeconds": 5,
            "failureThreshold": 60,
        },
        "livenessProbe": {
            "tcpSocket": {"port": ready_port},
            "initialDelaySeconds": 60,
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "securityContext": container_security_context(read_only_root=False),
        "volumeMounts": mounts,
    }
    return {
        "metadata": {"labels": dict(labels)},
        "spec": {
            **_placement(spec),
            "serviceAccountName": account,
            "securityContext": dict(POD_SECURITY_CONTEXT),
            "containers": [container],
            "volumes": _volumes(spec, policy) if head else _volumes(spec, policy)[-1:],
        },
    }


def _submitter_template(
    spec: RouterCalibrationSpec, labels: Mapping[str, str], image: str, config: OperatorConfig
) -> dict[str, Any]:
    return {
        "metadata": {"labels": dict(labels)},
        "spec": {
            **_placement(spec),
            "restartPolicy": "Never",
            "securityContext": dict(POD_SECURITY_CONTEXT),
            "containers": [
                {
                    "name": "ray-job-submitter",
                    "image": image,
                    "imagePullPolicy": config.image_pull_policy,
                    "resources": {"requests": {"cpu": "50m", "memory": "256Mi"}},
                    "securityContext": container_security_context(read_only_root=False),
                }
            ],
        },
    }


def build_rayjob(
    calibration: Mapping[str, str],
    spec: RouterCalibrationSpec,
    number: int,
    local_targets: list[str],
    cloud_enabled: bool,
    config: OperatorConfig,
) -> dict[str, Any]:
    """The RayJob of run `number`: a Ray cluster of its own, gone when the job ends."""
    name, namespace = calibration["name"], calibration["namespace"]
    run = run_name(name, number)
    labels = {**calibration_labels(name, spec.policy), RUN_LABEL: run}
    account = account_name(name)
    image = config.calibration_image
    cloud = egress_address(spec.policy, namespace) if cloud_enabled else None
    start = {"num-cpus": "1", "object-store-memory": OBJECT_STORE_BYTES}
    rayjob: dict[str, Any] = {
        "apiVersion": RAY_API_VERSION,
        "kind": "RayJob",
        "metadata": metadata(run, namespace, labels),
        "spec": {
            "entrypoint": entrypoint(
                calibration, spec, run, local_addresses(namespace, local_targets), cloud
            ),
            "submissionMode": "K8sJobMode",
            # KubeRay fills in the submit command; the labels let it past the policy.
            "submitterPodTemplate": _submitter_template(spec, labels, image, config),
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 60,
            "activeDeadlineSeconds": RUN_DEADLINE_S,
            # A run is never started twice: a second try could pay the cloud twice.
            "backoffLimit": 0,
            "submitterConfig": {"backoffLimit": 0},
            "rayClusterSpec": {
                "rayVersion": RAY_VERSION,
                "headGroupSpec": {
                    "rayStartParams": {**start, "dashboard-host": "0.0.0.0"},
                    "template": _pod_template(
                        spec, spec.policy, labels, account, image, config, head=True
                    ),
                },
                "workerGroupSpecs": [],
            },
        },
    }
    if spec.ray_workers:
        rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"].append(
            {
                "groupName": "labellers",
                "replicas": spec.ray_workers,
                "minReplicas": spec.ray_workers,
                "maxReplicas": spec.ray_workers,
                "rayStartParams": dict(start),
                "template": _pod_template(
                    spec, spec.policy, labels, account, image, config, head=False
                ),
            }
        )
    return rayjob
