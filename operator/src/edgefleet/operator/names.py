"""Names, labels and ports every child object uses (docs/operator.md is the contract)."""

from __future__ import annotations

GROUP = "edgefleet.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
SMALLMODELS = "smallmodels"
ROUTINGPOLICIES = "routingpolicies"
ROUTERCALIBRATIONS = "routercalibrations"
FIELD_MANAGER = "edgefleet-operator"

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "edgefleet-operator"
COMPONENT = "app.kubernetes.io/component"
MODEL_LABEL = f"{GROUP}/model"
ENGINE_LABEL = f"{GROUP}/engine"
POLICY_LABEL = f"{GROUP}/routing-policy"
SITE_LABEL = f"{GROUP}/site"

MODEL_SERVER = "model-server"
ROUTER = "router"
EGRESS = "egress"
CALIBRATION = "calibration"

GRPC_PORT = 50051
HTTP_PORT = 8080
METRICS_PORT = 9090

MODELS_DIR = "/var/lib/edgefleet/models"
ROUTER_CONFIG_DIR = "/etc/edgefleet/router"
POLICY_FILE = "policy.yaml"


def common_labels(component: str) -> dict[str, str]:
    return {
        MANAGED_BY: MANAGER,
        "app.kubernetes.io/part-of": "edgefleet",
        COMPONENT: component,
    }


def model_labels(model: str, engine: str | None = None) -> dict[str, str]:
    labels = {**common_labels(MODEL_SERVER), "app.kubernetes.io/name": model, MODEL_LABEL: model}
    if engine:
        labels[ENGINE_LABEL] = engine
    return labels


def model_selector(model: str) -> dict[str, str]:
    return {MODEL_LABEL: model, COMPONENT: MODEL_SERVER}


def workload_name(model: str, engine: str) -> str:
    return f"{model}-{engine}"


def policy_labels(policy: str, component: str) -> dict[str, str]:
    return {**common_labels(component), "app.kubernetes.io/name": policy, POLICY_LABEL: policy}


def policy_selector(policy: str, component: str) -> dict[str, str]:
    return {POLICY_LABEL: policy, COMPONENT: component}


def router_name(policy: str) -> str:
    return f"{policy}-router"


def egress_name(policy: str) -> str:
    return f"{policy}-egress"
