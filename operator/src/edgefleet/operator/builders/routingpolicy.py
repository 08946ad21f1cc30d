"""RoutingPolicy → router and egress: ConfigMap, RBAC, Deployments, Services, NetworkPolicies."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from edgefleet.calibrate.artefacts import ARTEFACT_FILE
from edgefleet.egress import API_KEY_VARIABLE
from edgefleet.operator import names
from edgefleet.operator.builders.common import (
    INSTANCE_ENV,
    POD_SECURITY_CONTEXT,
    container_security_context,
    grpc_probe,
    metadata,
    service_identity,
)
from edgefleet.operator.builders.smallmodel import DNS_EGRESS
from edgefleet.operator.config import OperatorConfig

POLICY_VOLUME = "policy"
# On RoleBindings in other namespaces, where owner references cannot point:
# which policy's namespace they belong to (with POLICY_LABEL, the policy).
POLICY_NAMESPACE_LABEL = f"{names.GROUP}/routing-policy-namespace"
POD_BINDING_PREFIX = "edgefleet-router"
# On the router's ConfigMap: the calibrated classifier's version it carries.
CLASSIFIER_ANNOTATION = f"{names.GROUP}/classifier"
MAX_NAME = 63


def cloud_enabled(spec: Mapping[str, Any]) -> bool:
    return bool((spec.get("cloud") or {}).get("enabled", True))


@dataclass(frozen=True)
class ServedArtefact:
    """The calibrated classifier a policy's router serves: a RouterCalibration's promoted one."""

    version: str
    # complexity.json.gz, base64 as a ConfigMap's binaryData holds it.
    data: str


def build_config_map(
    name: str, namespace: str, spec: Mapping[str, Any], artefact: ServedArtefact | None = None
) -> dict[str, Any]:
    """The policy as the router and egress read it (the resource itself, status left out).

    `spec.complexity.calibration` names a RouterCalibration; the router reads a file. With
    its promoted artefact the ConfigMap carries that file beside the policy (one volume,
    so the two change together) and the policy points at it; without one, the policy
    leaves calibration out and the router scores with the shipped classifier.
    """
    document = {
        "apiVersion": names.API_VERSION,
        "kind": "RoutingPolicy",
        "metadata": {"name": name},
        "spec": copy.deepcopy(dict(spec)),
    }
    complexity = document["spec"].get("complexity") or {}
    if "calibration" in complexity:
        if artefact is None:
            del complexity["calibration"]
        else:
            complexity["calibration"] = ARTEFACT_FILE
    config_map: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(
            names.router_name(name), namespace, names.policy_labels(name, names.ROUTER)
        ),
        "data": {names.POLICY_FILE: yaml.safe_dump(document, sort_keys=True)},
    }
    if artefact is not None and "calibration" in complexity:
        config_map["binaryData"] = {ARTEFACT_FILE: artefact.data}
        config_map["metadata"]["annotations"] = {CLASSIFIER_ANNOTATION: artefact.version}
    return config_map


def build_router_rbac(name: str, namespace: str, config: OperatorConfig) -> list[dict[str, Any]]:
    """The router's identity: watch EndpointSlices, report to its RoutingPolicy's status."""
    labels = names.policy_labels(name, names.ROUTER)
    return service_identity(names.router_name(name), namespace, labels, config.router_cluster_role)


def sensitive_namespaces(spec: Mapping[str, Any]) -> list[str]:
    return list((spec.get("privacy") or {}).get("sensitiveNamespaces") or [])


def pod_binding_name(name: str, namespace: str) -> str:
    """`edgefleet-router-<policy namespace>-<policy>`, cut to 63 characters with a hash.

    The hash is of the whole name, so two long names that share a prefix differ.
    """
    full = f"{POD_BINDING_PREFIX}-{namespace}-{name}"
    if len(full) <= MAX_NAME:
        return full
    suffix = hashlib.sha256(full.encode()).hexdigest()[:10]
    return f"{full[: MAX_NAME - len(suffix) - 1].rstrip('-.')}-{suffix}"


def pod_binding_labels(name: str, namespace: str) -> dict[str, str]:
    return {**names.policy_labels(name, names.ROUTER), POLICY_NAMESPACE_LABEL: namespace}


def pod_binding_selector(name: str, namespace: str) -> str:
    """Finds a policy's pod RoleBindings in every namespace (a label selector)."""
    return ",".join(
        f"{key}={value}"
        for key, value in (
            (names.MANAGED_BY, names.MANAGER),
            (names.POLICY_LABEL, name),
            (POLICY_NAMESPACE_LABEL, namespace),
        )
    )


def build_router_pod_bindings(
    name: str, namespace: str, spec: Mapping[str, Any], config: OperatorConfig
) -> list[dict[str, Any]]:
    """In each sensitive namespace: the router may list and watch its Pods, nothing more.

    The router maps a caller's IP to these pods (privacy.sensitiveNamespaces).
    Not owned (an owner reference cannot cross namespaces): found again by
    their labels and removed by the operator.
    """
    account = names.router_name(name)
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": metadata(
                pod_binding_name(name, namespace), sensitive, pod_binding_labels(name, namespace)
            ),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": config.router_pods_cluster_role,
            },
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        }
        for sensitive in sensitive_namespaces(spec)
    ]


def _pod_placement(settings: Mapping[str, Any]) -> dict[str, Any]:
    placement: dict[str, Any] = {}
    if settings.get("nodeSelector"):
        placement["nodeSelector"] = dict(settings["nodeSelector"])
    if settings.get("tolerations"):
        placement["tolerations"] = copy.deepcopy(list(settings["tolerations"]))
    return placement


def _deployment(
    name: str,
    namespace: str,
    policy: str,
    component: str,
    pod_spec: dict[str, Any],
    config_hash: str | None,
) -> dict[str, Any]:
    labels = names.policy_labels(policy, component)
    template_meta: dict[str, Any] = {"labels": labels}
    if config_hash:
        # The hash rolls the pods when settings they read only at start change.
        template_meta["annotations"] = {"edgefleet.io/config-hash": config_hash}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(name, namespace, labels),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": names.policy_selector(policy, component)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {"metadata": template_meta, "spec": pod_spec},
        },
    }


def _ports(*extra: tuple[str, int]) -> list[dict[str, Any]]:
    ports = [("grpc", names.GRPC_PORT), *extra, ("metrics", names.METRICS_PORT)]
    return [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in ports]


def build_router(
    name: str, namespace: str, spec: Mapping[str, Any], config: OperatorConfig
) -> dict[str, Any]:
    settings = config.pod_settings(names.ROUTER)
    args = [
        "--listen", f"0.0.0.0:{names.GRPC_PORT}",
        "--http-listen", f"0.0.0.0:{names.HTTP_PORT}",
        "--metrics-listen", f"0.0.0.0:{names.METRICS_PORT}",
        "--policy-file", f"{names.ROUTER_CONFIG_DIR}/{names.POLICY_FILE}",
        "--kube-namespace", namespace,
        "--status-policy", name,
    ]  # fmt: skip
    if cloud_enabled(spec):
        args += ["--cloud-service", names.egress_name(name)]
    container = {
        "name": "router",
        "image": config.image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["edgefleet-router"],
        "args": args,
        "env": copy.deepcopy(INSTANCE_ENV),
        "ports": _ports(("http", names.HTTP_PORT)),
        "readinessProbe": grpc_probe(names.GRPC_PORT, initial_delay=1, period=5, failures=3),
        "livenessProbe": grpc_probe(names.GRPC_PORT, initial_delay=10, period=10, failures=6),
        "resources": copy.deepcopy(settings.get("resources") or {}),
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": POLICY_VOLUME, "mountPath": names.ROUTER_CONFIG_DIR, "readOnly": True}
        ],
    }
    pod_spec = {
        "serviceAccountName": names.router_name(name),
        "enableServiceLinks": False,
        "securityContext": copy.deepcopy(POD_SECURITY_CONTEXT),
        "containers": [container],
        "volumes": [{"name": POLICY_VOLUME, "configMap": {"name": names.router_name(name)}}],
        **_pod_placement(settings),
    }
    # No config hash: the router re-reads the policy file itself, and a restart
    # would throw away its breakers and budget window.
    return _deployment(names.router_name(name), namespace, name, names.ROUTER, pod_spec, None)


def build_egress(
    name: str, namespace: str, spec: Mapping[str, Any], config: OperatorConfig, config_hash: str
) -> dict[str, Any]:
    cloud = spec.get("cloud") or {}
    secret = cloud.get("apiKeySecretRef") or {}
    key = secret.get("key", "api-key")
    settings = config.pod_settings(names.EGRESS)
    container = {
        "name": "egress",
        "image": config.image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["edgefleet-egress"],
        "args": [
            "--listen",
            f"0.0.0.0:{names.GRPC_PORT}",
            "--metrics-listen",
            f"0.0.0.0:{names.METRICS_PORT}",
            "--base-url",
            str(cloud.get("baseURL", "")),
            "--cloud-model",
            str(cloud.get("model", "")),
            "--policy-file",
            f"{names.ROUTER_CONFIG_DIR}/{names.POLICY_FILE}",
        ],
        # The key as a variable from the Secret (the egress reads it once, at start):
        # a missing Secret or key is then the kubelet's CreateContainerConfigError,
        # naming both, which the policy's status quotes; a missing Secret volume
        # would only leave the pod ContainerCreating.
        "env": [
            *copy.deepcopy(INSTANCE_ENV),
            {
                "name": API_KEY_VARIABLE,
                "valueFrom": {"secretKeyRef": {"name": secret.get("name", ""), "key": key}},
            },
        ],
        "ports": _ports(),
        "readinessProbe": grpc_probe(names.GRPC_PORT, initial_delay=1, period=5, failures=3),
        "livenessProbe": grpc_probe(names.GRPC_PORT, initial_delay=10, period=10, failures=6),
        "resources": copy.deepcopy(settings.get("resources") or {}),
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": POLICY_VOLUME, "mountPath": names.ROUTER_CONFIG_DIR, "readOnly": True},
        ],
    }
    pod_spec = {
        # The egress holds the cloud key and never needs the Kubernetes API.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": copy.deepcopy(POD_SECURITY_CONTEXT),
        "containers": [container],
        "volumes": [{"name": POLICY_VOLUME, "configMap": {"name": names.router_name(name)}}],
        **_pod_placement(settings),
    }
    return _deployment(
        names.egress_name(name), namespace, name, names.EGRESS, pod_spec, config_hash
    )


def build_service(name: str, namespace: str, policy: str, component: str) -> dict[str, Any]:
    ports = [{"name": "grpc", "port": names.GRPC_PORT, "targetPort": "grpc"}]
    if component == names.ROUTER:
        ports.append({"name": "http", "port": names.HTTP_PORT, "targetPort": "http"})
    ports.append({"name": "metrics", "port": names.METRICS_PORT, "targetPort": "metrics"})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(name, namespace, names.policy_labels(policy, component)),
        "spec": {
            "selector": names.policy_selector(policy, component),
            "ports": [{**p, "protocol": "TCP"} for p in ports],
        },
    }


def build_router_network_policy(
    name: str, namespace: str, api_endpoints: list[tuple[str, int]]
) -> dict[str, Any]:
    """The router reaches model pods, egress pods, the API server and DNS; nothing else."""
    backends = {
        "podSelector": {
            "matchExpressions": [
                {
                    "key": names.COMPONENT,
                    "operator": "In",
                    "values": [names.MODEL_SERVER, names.EGRESS],
                }
            ]
        }
    }
    egress: list[dict[str, Any]] = [
        {"to": [backends], "ports": [{"protocol": "TCP", "port": names.GRPC_PORT}]},
        copy.deepcopy(DNS_EGRESS),
    ]
    for address, port in api_endpoints:
        egress.append(
            {
                "to": [{"ipBlock": {"cidr": f"{address}/{128 if ':' in address else 32}"}}],
                "ports": [{"protocol": "TCP", "port": port}],
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(
            names.router_name(name), namespace, names.policy_labels(name, names.ROUTER)
        ),
        "spec": {
            "podSelector": {"matchLabels": names.policy_selector(name, names.ROUTER)},
            "policyTypes": ["Egress"],
            "egress": egress,
        },
    }


def build_egress_network_policy(name: str, namespace: str) -> dict[str, Any]:
    """Only this policy's router (and its calibrations' Ray pods) may call the egress; the
    egress alone may leave the cluster."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(
            names.egress_name(name), namespace, names.policy_labels(name, names.EGRESS)
        ),
        "spec": {
            "podSelector": {"matchLabels": names.policy_selector(name, names.EGRESS)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "from": [
                        {"podSelector": {"matchLabels": names.policy_selector(name, names.ROUTER)}},
                        # A RouterCalibration's Ray pods, grading through the egress.
                        {
                            "podSelector": {
                                "matchLabels": names.policy_selector(name, names.CALIBRATION)
                            }
                        },
                    ],
                    "ports": [{"protocol": "TCP", "port": names.GRPC_PORT}],
                },
                {"ports": [{"protocol": "TCP", "port": names.METRICS_PORT}]},
            ],
            "egress": [{}],
        },
    }


def build_children(
    name: str,
    namespace: str,
    spec: Mapping[str, Any],
    config: OperatorConfig,
    api_endpoints: list[tuple[str, int]],
    config_hash: str,
    artefact: ServedArtefact | None = None,
) -> list[dict[str, Any]]:
    """Everything a RoutingPolicy owns, in apply order (the egress only with a cloud)."""
    children = [
        build_config_map(name, namespace, spec, artefact),
        *build_router_rbac(name, namespace, config),
    ]
    if cloud_enabled(spec):
        children += [
            build_egress(name, namespace, spec, config, config_hash),
            build_service(names.egress_name(name), namespace, name, names.EGRESS),
            build_egress_network_policy(name, namespace),
        ]
    children += [
        build_router(name, namespace, spec, config),
        build_service(names.router_name(name), namespace, name, names.ROUTER),
        build_router_network_policy(name, namespace, api_endpoints),
    ]
    return children
