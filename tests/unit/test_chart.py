"""The chart as Helm sees it: lint, rendering, RBAC, the operator's settings, the values schema.

Uses the real `helm` binary of the test bed; the CRD templates themselves are
covered by test_chart_crds.py.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefleet.operator.builders.common import POD_SECURITY_CONTEXT, container_security_context
from edgefleet.operator.config import OperatorConfig
from tests.cluster import versions

CHART = Path(__file__).resolve().parents[2] / "charts" / "edgefleet"
KUBE_VERSION = "v1.36.3"
NAMESPACE = "edgefleet-system"


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    binary = versions.bin_dir() / "helm"
    assert binary.exists(), f"no helm at {binary}: build the test bed first"
    return subprocess.run(
        [str(binary), *args], capture_output=True, text=True, timeout=120, check=False
    )


def template(
    *sets: str, release: str = "edgefleet", json_sets: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    flags = [arg for value in sets for arg in ("--set", value)]
    flags += [arg for value in json_sets for arg in ("--set-json", value)]
    return helm(
        "template",
        release,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        KUBE_VERSION,
        *flags,
    )


def render(
    *sets: str, release: str = "edgefleet", json_sets: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    out = template(*sets, release=release, json_sets=json_sets)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


@pytest.fixture(scope="module")
def default() -> list[dict[str, Any]]:
    return render()


def test_lint_is_clean() -> None:
    out = helm("lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION)

    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout
    assert "[WARNING]" not in out.stdout and "[ERROR]" not in out.stdout


def test_default_render_has_the_expected_objects(default: list[dict[str, Any]]) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in default)

    assert kinds == sorted(
        [
            ("CustomResourceDefinition", "routercalibrations.edgefleet.io"),
            ("CustomResourceDefinition", "routingpolicies.edgefleet.io"),
            ("CustomResourceDefinition", "smallmodels.edgefleet.io"),
            ("ServiceAccount", "edgefleet"),
            ("ClusterRole", "edgefleet-operator"),
            ("ClusterRole", "edgefleet-router"),
            ("ClusterRole", "edgefleet-router-pods"),
            ("ClusterRole", "edgefleet-calibration"),
            ("ClusterRoleBinding", "edgefleet-operator"),
            ("Deployment", "edgefleet-operator"),
            ("ClusterKopfPeering", "edgefleet"),
            # helm test hooks
            ("ServiceAccount", "edgefleet-test"),
            ("ClusterRole", "edgefleet-test"),
            ("RoleBinding", "edgefleet-test"),
            ("Pod", "edgefleet-test-router-health"),
        ]
    )
    for obj in default:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "edgefleet"
        if obj["kind"] in ("ServiceAccount", "Deployment", "RoleBinding", "Pod"):
            assert obj["metadata"]["namespace"] == NAMESPACE


def test_operator_deployment_is_one_replica_recreated_with_patient_probes(
    default: list[dict[str, Any]],
) -> None:
    deployment = find(default, "Deployment", "edgefleet-operator")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]

    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["serviceAccountName"] == "edgefleet"
    assert container["image"] == "ghcr.io/edgefleet/edgefleet:0.1.0"
    assert container["command"] == ["edgefleet-operator"]
    assert container["args"] == ["--liveness", "http://0.0.0.0:8080/healthz"]
    assert container["ports"] == [{"name": "health", "containerPort": 8080, "protocol": "TCP"}]
    probe = {"httpGet": {"path": "/healthz", "port": "health"}, "timeoutSeconds": 5}
    # Minutes to start on a large fleet, then 5 minutes of failed probes before a restart.
    assert container["startupProbe"] == {**probe, "periodSeconds": 10, "failureThreshold": 60}
    assert container["livenessProbe"] == {**probe, "periodSeconds": 10, "failureThreshold": 30}
    assert container["readinessProbe"] == {**probe, "periodSeconds": 5}
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"memory": "512Mi"},
    }


def test_peering_and_binding_name_what_the_operator_uses(default: list[dict[str, Any]]) -> None:
    env = operator_env(default)
    binding = find(default, "ClusterRoleBinding", "edgefleet-operator")

    find(default, "ClusterKopfPeering", env["EDGEFLEET_PEERING_NAME"])
    find(default, "ClusterRole", env["EDGEFLEET_ROUTER_CLUSTER_ROLE"])
    find(default, "ClusterRole", env["EDGEFLEET_ROUTER_PODS_CLUSTER_ROLE"])
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "edgefleet-operator",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "edgefleet", "namespace": NAMESPACE}
    ]


def test_operator_role_is_least_privilege(default: list[dict[str, Any]]) -> None:
    role = find(default, "ClusterRole", "edgefleet-operator")
    router_role = operator_env(default)["EDGEFLEET_ROUTER_CLUSTER_ROLE"]
    pods_role = operator_env(default)["EDGEFLEET_ROUTER_PODS_CLUSTER_ROLE"]
    calibration_role = operator_env(default)["EDGEFLEET_CALIBRATION_CLUSTER_ROLE"]

    binds = []
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert all("*" not in item for item in rule[field]), rule
        assert not {"escalate", "impersonate"} & set(rule["verbs"]), rule
        if "bind" in rule["verbs"]:
            binds.append(rule)
    assert binds == [
        {
            "apiGroups": ["rbac.authorization.k8s.io"],
            "resources": ["clusterroles"],
            "verbs": ["bind"],
            "resourceNames": [router_role, pods_role, calibration_role],
        }
    ]
    # No Secrets: the egress mounts its key, the operator never reads it.
    assert all("secrets" not in rule["resources"] for rule in role["rules"])


def test_router_role_is_what_the_router_needs(default: list[dict[str, Any]]) -> None:
    role = find(default, "ClusterRole", "edgefleet-router")

    assert role["rules"] == [
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["list", "watch"],
        },
        {
            "apiGroups": ["edgefleet.io"],
            "resources": ["routingpolicies/status"],
            "verbs": ["patch"],
        },
    ]


def test_calibration_role_only_creates_configmaps(default: list[dict[str, Any]]) -> None:
    role = find(default, "ClusterRole", "edgefleet-calibration")

    assert role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]}]


def test_router_pods_role_only_reads_pods(default: list[dict[str, Any]]) -> None:
    role = find(default, "ClusterRole", "edgefleet-router-pods")

    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]


def test_operator_may_find_and_remove_router_bindings_in_any_namespace(
    default: list[dict[str, Any]],
) -> None:
    role = find(default, "ClusterRole", "edgefleet-operator")
    (rule,) = [r for r in role["rules"] if "rolebindings" in r["resources"]]

    assert rule["resources"] == ["rolebindings"]
    assert {"list", "watch", "delete", "create", "patch"} <= set(rule["verbs"])
    # And it can still set the finalizer its deletion handler needs.
    (own,) = [r for r in role["rules"] if "routingpolicies" in r["resources"]]
    assert "patch" in own["verbs"]


def operator_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"]}


def test_every_edgefleet_variable_is_an_operator_setting(default: list[dict[str, Any]]) -> None:
    settings = {f"EDGEFLEET_{f.name.upper()}" for f in dataclasses.fields(OperatorConfig)}
    env = operator_env(default)

    set_by_chart = {name for name in env if name.startswith("EDGEFLEET_")}
    assert set_by_chart - settings == set()
    # And every setting the operator has, the chart can set.
    assert settings - set_by_chart == set()


def test_rendered_settings_parse_with_from_env(default: list[dict[str, Any]]) -> None:
    env = operator_env(default)

    config = OperatorConfig.from_env(env)

    assert config.image == "ghcr.io/edgefleet/edgefleet:0.1.0"
    assert config.vllm_image == "ghcr.io/edgefleet/edgefleet-vllm:0.1.0"
    assert config.router_cluster_role == "edgefleet-router"
    assert config.peering_name == "edgefleet"
    assert config.status_interval_s == 300.0
    assert config.workers == 16
    assert config.fetch_cidrs() == []
    assert config.pod_settings("router") == {
        "nodeSelector": {},
        "tolerations": [],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
    }
    assert config.pod_settings("egress")["resources"] == {
        "requests": {"cpu": "50m", "memory": "192Mi"}
    }


def test_values_reach_the_operator_settings() -> None:
    objects = render(
        "image.tag=1.2.3",
        "image.pullPolicy=Always",
        "vllmImage.repository=registry.local/vllm",
        "operator.workers=4",
        "gpu.nodeLabel=example.com/gpu",
        "networkPolicy.modelFetchCIDRs={10.0.0.0/8,203.0.113.0/24}",
        "networkPolicy.apiServerEndpoints={172.18.0.2:6443}",
        "router.pod.nodeSelector.tier=core",
        release="prod",
        json_sets=("operator.statusIntervalSeconds=2.5",),
    )
    config = OperatorConfig.from_env(operator_env(objects))

    assert config.image == "ghcr.io/edgefleet/edgefleet:1.2.3"
    assert config.vllm_image == "registry.local/vllm:0.1.0"
    assert config.image_pull_policy == "Always"
    assert config.status_interval_s == 2.5
    assert config.workers == 4
    assert config.gpu_node_label == "example.com/gpu"
    assert config.fetch_cidrs() == ["10.0.0.0/8", "203.0.113.0/24"]
    assert config.api_server_endpoints == "172.18.0.2:6443"
    assert config.pod_settings("router")["nodeSelector"] == {"tier": "core"}
    # Release-scoped names: the ClusterRole the operator binds routers to exists.
    assert config.router_cluster_role == "prod-edgefleet-router"
    assert config.peering_name == "prod-edgefleet"
    find(objects, "ClusterRole", "prod-edgefleet-router")
    assert config.router_pods_cluster_role == "prod-edgefleet-router-pods"
    find(objects, "ClusterRole", "prod-edgefleet-router-pods")
    find(objects, "ClusterKopfPeering", "prod-edgefleet")


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("operator.workers=0", "at '/operator/workers': minimum: got 0, want 1"),
        ("operator.workers=many", "at '/operator/workers': got string, want integer"),
        ("surprise=1", "additional properties 'surprise' not allowed"),
        ("image.pullPolicy=Sometimes", "at '/image/pullPolicy': value must be one of"),
        ("operator.logLevel=TRACE", "at '/operator/logLevel': value must be one of"),
        ("networkPolicy.modelFetchCIDRs={10.0.0.0}", "at '/networkPolicy/modelFetchCIDRs/0'"),
        ("tests.namespaces={Bad_Name}", "at '/tests/namespaces/0': 'Bad_Name' does not match"),
    ],
)
def test_schema_rejects_bad_values(value: str, error: str) -> None:
    out = template(value)

    assert out.returncode != 0
    assert "values don't meet the specifications of the schema" in out.stderr
    assert error in out.stderr, out.stderr


def test_crds_disabled_renders_no_crd() -> None:
    objects = render("crds.enabled=false")

    assert [o for o in objects if o["kind"] == "CustomResourceDefinition"] == []
    find(objects, "Deployment", "edgefleet-operator")


def test_without_its_own_service_account_the_operator_uses_the_named_one() -> None:
    objects = render("operator.serviceAccount.create=false", "operator.serviceAccount.name=ops")

    assert [
        o for o in objects if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == "ops"
    ] == []
    deployment = find(objects, "Deployment", "edgefleet-operator")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
    binding = find(objects, "ClusterRoleBinding", "edgefleet-operator")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "ops", "namespace": NAMESPACE}
    ]


def test_helm_test_objects_are_hooks_and_nothing_else_is(default: list[dict[str, Any]]) -> None:
    hooks = {
        (o["kind"], o["metadata"]["name"])
        for o in default
        if (o["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test"
    }

    assert hooks == {
        ("ServiceAccount", "edgefleet-test"),
        ("ClusterRole", "edgefleet-test"),
        ("RoleBinding", "edgefleet-test"),
        ("Pod", "edgefleet-test-router-health"),
    }
    pod = find(default, "Pod", "edgefleet-test-router-health")
    (container,) = pod["spec"]["containers"]
    assert pod["spec"]["serviceAccountName"] == "edgefleet-test"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert container["command"] == ["python3", "-m", "edgefleet.operator.healthcheck"]
    assert container["args"] == [NAMESPACE]


def pod_specs(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod the chart makes, by its object's name: bare Pods and workload templates."""
    specs = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "Pod"}
    for o in objects:
        if o["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Job"):
            specs[o["metadata"]["name"]] = o["spec"]["template"]["spec"]
    return specs


def test_every_chart_pod_is_locked_down_like_the_operators(
    default: list[dict[str, Any]],
) -> None:
    specs = pod_specs(default)

    assert set(specs) == {"edgefleet-operator", "edgefleet-test-router-health"}
    for name, spec in specs.items():
        assert spec["securityContext"] == POD_SECURITY_CONTEXT, name
        for container in spec.get("initContainers", []) + spec["containers"]:
            assert container["securityContext"] == container_security_context(), name


def test_helm_test_binds_each_checked_namespace() -> None:
    objects = render("tests.namespaces={shop,plant}")

    bindings = [o for o in objects if o["kind"] == "RoleBinding"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["plant", "shop"]
    for binding in bindings:
        assert binding["metadata"]["annotations"]["helm.sh/hook"] == "test"
    pod = find(objects, "Pod", "edgefleet-test-router-health")
    assert pod["spec"]["containers"][0]["args"] == ["shop", "plant"]


# --- values.yaml documentation -----------------------------------------------------------


def leaf_keys(schema: dict[str, Any], prefix: str = "") -> list[str]:
    """Every value the schema declares; an object without declared properties is one value."""
    keys = []
    for name, sub in schema.get("properties", {}).items():
        path = f"{prefix}{name}"
        if sub.get("type") == "object" and "properties" in sub:
            keys += leaf_keys(sub, f"{path}.")
        else:
            keys.append(path)
    return keys


def comments_above(lines: list[str]) -> dict[str, list[str]]:
    """Each key path in values.yaml → the comment lines directly above it (same indent)."""
    found: dict[str, list[str]] = {}
    stack: list[tuple[int, str]] = []
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w-]*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([*(name for _, name in stack), match.group(2)])
        stack.append((indent, match.group(2)))
        comment: list[str] = []
        above = number - 1
        while above >= 0 and lines[above].strip().startswith("#"):
            comment.insert(0, lines[above].strip().lstrip("#").strip())
            above -= 1
        found[path] = comment
    return found


def test_every_value_has_a_comment_above_it() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    lines = (CHART / "values.yaml").read_text(encoding="utf-8").splitlines()
    comments = comments_above(lines)

    undocumented = []
    for key in leaf_keys(schema):
        assert key in comments, f"{key} is in the schema but not in values.yaml"
        if comments[key]:
            continue
        # One comment may cover a run of sibling keys when it names each of them
        # ("nodeSelector, tolerations and resources of each router pod").
        parent, _, name = key.rpartition(".")
        siblings = [k for k in comments if k.rpartition(".")[0] == parent]
        group_comment = next(
            (comments[s] for s in reversed(siblings[: siblings.index(key)]) if comments[s]), []
        )
        if not re.search(rf"\b{re.escape(name)}\b", " ".join(group_comment)):
            undocumented.append(key)
    assert undocumented == []


def test_values_yaml_and_schema_declare_the_same_keys() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))

    def paths(data: dict[str, Any], sub: dict[str, Any], prefix: str = "") -> set[str]:
        found = set()
        for name, value in data.items():
            child = sub.get("properties", {}).get(name, {})
            if isinstance(value, dict) and "properties" in child:
                found |= paths(value, child, f"{prefix}{name}.")
            else:
                found.add(f"{prefix}{name}")
        return found

    assert paths(values, schema) == set(leaf_keys(schema))


def test_dashboards_are_off_by_default(default: list[dict[str, Any]]) -> None:
    assert not [o for o in default if o["kind"] == "ConfigMap"]


def test_dashboards_on_ship_the_grafana_json_with_the_sidecar_label() -> None:
    objects = render("dashboards.enabled=true")
    config_map = find(objects, "ConfigMap", "edgefleet-dashboards")
    assert config_map["metadata"]["namespace"] == NAMESPACE
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = (CHART / "dashboards" / "edgefleet-routing.json").read_text()
    assert json.loads(config_map["data"]["edgefleet-routing.json"]) == json.loads(shipped)


def test_the_dashboard_label_is_configurable_and_checked() -> None:
    objects = render("dashboards.enabled=true", "dashboards.label=grafana.io/dashboard")
    labels = find(objects, "ConfigMap", "edgefleet-dashboards")["metadata"]["labels"]
    assert labels["grafana.io/dashboard"] == "1"
    refused = template("dashboards.enabled=true", "dashboards.label=not a label")
    assert refused.returncode != 0 and "/dashboards/label" in refused.stderr


def test_egress_guard_is_off_by_default(default: list[dict[str, Any]]) -> None:
    assert [o for o in default if o["kind"] == "BaselineAdminNetworkPolicy"] == []


def test_egress_guard_keeps_every_pod_without_a_network_policy_in_the_cluster() -> None:
    objects = render(
        "networkPolicy.egressGuard.enabled=true",
        "networkPolicy.egressGuard.clusterCIDRs={10.244.0.0/16,10.96.0.0/12}",
        "networkPolicy.modelFetchCIDRs={192.0.2.0/24}",
    )
    guard = find(objects, "BaselineAdminNetworkPolicy", "default")["spec"]

    # Every pod: NetworkPolicies come first, so the product's own pods (the egress's
    # lets it out) follow theirs, and the baseline holds the pods that have none.
    assert guard["subject"] == {"namespaces": {}}
    assert guard["egress"] == [
        {"name": "in-cluster", "action": "Allow",
         "to": [{"networks": ["10.244.0.0/16", "10.96.0.0/12", "192.0.2.0/24"]}]},
        {"name": "nothing-else", "action": "Deny", "to": [{"networks": ["0.0.0.0/0", "::/0"]}]},
    ]  # fmt: skip


def test_egress_guard_without_the_cluster_ranges_is_refused() -> None:
    out = template("networkPolicy.egressGuard.enabled=true")

    assert out.returncode != 0
    assert "networkPolicy.egressGuard.enabled needs networkPolicy.egressGuard.clusterCIDRs" in (
        out.stderr
    )
