"""The operator, installed by the chart, running as its own Pod with the chart's RBAC.

Every test applies resources with kubectl and asserts on what the cluster
then holds: workloads on the right node classes, status and Events, rollouts,
garbage collection, and a restart in the middle of reconciling.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.controlplane.conftest import CHART, RELEASE, RELEASE_NAMESPACE
from tests.controlplane.helpers import Cluster, wait_for
from tests.controlplane.operator_support import (
    EDGE_TOLERATION,
    REAL_NODE,
    managed_children,
    pods,
    smallmodel,
    wait_condition,
)

pytestmark = pytest.mark.controlplane

OPERATOR_SA = f"system:serviceaccount:{RELEASE_NAMESPACE}:{RELEASE}"
OPERATOR_PODS = "app.kubernetes.io/component=operator"
# kwok edge nodes: plenty of room, no GPU to compete for between tests.
ON_EDGE = {
    "engine": "llamacpp",
    "placement": {
        "nodeSelector": {"edgefleet.io/node-class": "edge"},
        "tolerations": [EDGE_TOLERATION],
    },
}


def _nodes_of(cluster: Cluster, namespace: str, selector: str) -> list[str]:
    return sorted(p["spec"].get("nodeName", "") for p in pods(cluster, namespace, selector))


def _operator_pod(cluster: Cluster) -> dict[str, Any]:
    found = pods(cluster, RELEASE_NAMESPACE, OPERATOR_PODS)
    assert len(found) == 1, [p["metadata"]["name"] for p in found]
    return found[0]


def _can(cluster: Cluster, *args: str) -> bool:
    out = cluster.kubectl("auth", "can-i", *args, "--as", OPERATOR_SA, check=False)
    return out.stdout.strip() == "yes"


def test_operator_runs_in_cluster_with_exactly_the_charts_rbac(release: Cluster) -> None:
    pod = _operator_pod(release)
    assert pod["spec"]["serviceAccountName"] == RELEASE
    assert pod["spec"]["nodeName"] == REAL_NODE  # a container, not a kwok fake
    assert pod["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")
    assert pod["spec"]["containers"][0]["command"] == ["edgefleet-operator"]
    # What it needs...
    for verb_resource in (
        ("patch", "smallmodels.edgefleet.io/status", "-A"),
        ("create", "deployments.apps", "-n", "anywhere"),
        ("delete", "daemonsets.apps", "-n", "anywhere"),
        ("watch", "endpointslices.discovery.k8s.io", "-A"),
        ("bind", "clusterrole/edgefleet-router"),
    ):
        assert _can(release, *verb_resource), verb_resource
    # ...and nothing wider: no Secrets, no cluster-wide RBAC, no Pods, no other bindings.
    for verb_resource in (
        ("get", "secrets", "-A"),
        ("list", "secrets", "-n", "anywhere"),
        ("create", "clusterrolebindings"),
        ("create", "pods", "-n", "anywhere"),
        ("delete", "nodes"),
        ("bind", "clusterrole/cluster-admin"),
        ("escalate", "clusterroles"),
        ("delete", "smallmodels.edgefleet.io", "-A"),
    ):
        assert not _can(release, *verb_resource), verb_resource


def test_auto_engine_puts_vllm_on_gpu_nodes_and_llamacpp_on_edge_nodes(
    release: Cluster, namespace: str
) -> None:
    release.apply(
        smallmodel("mixed", perNode=True, placement={"tolerations": [EDGE_TOLERATION]}),
        namespace=namespace,
    )
    # GPU pods of an earlier test's namespace may still be going away: a longer wait.
    ready = wait_condition(release, namespace, "smallmodel", "mixed", "Ready", "True", timeout=240)
    assert ready["status"]["engines"] == {
        "vllm": {"desired": 2, "ready": 2, "workload": "DaemonSet/mixed-vllm"},
        "llamacpp": {"desired": 4, "ready": 4, "workload": "DaemonSet/mixed-llamacpp"},
    }
    # The Service's EndpointSlice follows the pods' readiness a moment later.
    wait_for(
        "6 ready endpoints in the status",
        lambda: (
            (release.get("smallmodel", "mixed", namespace) or {}).get("status", {}).get("endpoints")
            == 6
        ),
        60,
    )
    assert _nodes_of(release, namespace, "edgefleet.io/engine=vllm") == ["gpu-0", "gpu-1"]
    assert _nodes_of(release, namespace, "edgefleet.io/engine=llamacpp") == [
        "edge-site-a-0", "edge-site-a-1", "edge-site-b-0", "edge-site-b-1",
    ]  # fmt: skip
    vllm = pods(release, namespace, "edgefleet.io/engine=vllm")[0]["spec"]["containers"][0]
    assert vllm["args"][:2] == ["--engine", "vllm"]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "1"
    llama = pods(release, namespace, "edgefleet.io/engine=llamacpp")[0]["spec"]["containers"][0]
    assert llama["args"][:2] == ["--engine", "llamacpp"]
    assert "nvidia.com/gpu" not in json.dumps(llama["resources"])
    # One Service for both engines, keeping edge clients on their own node.
    service = release.get("service", "mixed", namespace)
    assert service["spec"]["internalTrafficPolicy"] == "Local"


def test_per_node_model_runs_one_pod_on_each_node_of_its_sites(
    release: Cluster, namespace: str
) -> None:
    spec = {"engine": "llamacpp", "perNode": True,
            "placement": {"sites": ["site-b"], "tolerations": [EDGE_TOLERATION]}}  # fmt: skip
    release.apply(smallmodel("site-b-only", **spec), namespace=namespace)
    wait_condition(release, namespace, "smallmodel", "site-b-only", "Ready", "True")
    assert _nodes_of(release, namespace, "edgefleet.io/model=site-b-only") == [
        "edge-site-b-0", "edge-site-b-1",
    ]  # fmt: skip


def test_untolerated_taints_leave_a_per_node_model_nothing_to_run(
    release: Cluster, namespace: str
) -> None:
    spec = {"engine": "llamacpp", "perNode": True,
            "placement": {"nodeSelector": {"edgefleet.io/node-class": "edge"}}}  # fmt: skip
    release.apply(smallmodel("no-toleration", **spec), namespace=namespace)
    wait_condition(
        release, namespace, "smallmodel", "no-toleration", "Ready", "False", "NoEligibleNodes"
    )
    assert pods(release, namespace, "edgefleet.io/model=no-toleration") == []


def test_unschedulable_model_says_why_in_status_columns_and_events(
    release: Cluster, namespace: str
) -> None:
    spec = {"engine": "llamacpp", "replicas": 1,
            "placement": {"nodeSelector": {"edgefleet.io/node-class": "edge"}}}  # fmt: skip
    release.apply(smallmodel("stuck", **spec), namespace=namespace)
    stuck = wait_condition(
        release, namespace, "smallmodel", "stuck", "Ready", "False", "Unschedulable"
    )
    ready = next(c for c in stuck["status"]["conditions"] if c["type"] == "Ready")
    assert "untolerated taint" in ready["message"]
    degraded = next(c for c in stuck["status"]["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    table = release.kubectl("get", "sm", "stuck", "-n", namespace).stdout
    header, row = table.splitlines()[:2]
    assert header.split()[:7] == ["NAME", "ENGINE", "READY", "DESIRED", "SERVICE", "STATUS",
                                  "REASON"]  # fmt: skip
    assert row.split()[:7] == ["stuck", "llamacpp", "0", "1", "stuck", "False", "Unschedulable"]
    events = wait_for(
        "an Unschedulable Event on the SmallModel",
        lambda: [
            e for e in release.get("events", namespace=namespace)["items"]
            if e["involvedObject"]["name"] == "stuck" and e["reason"] == "Unschedulable"
        ],
        60,
    )  # fmt: skip
    assert events[0]["type"] == "Warning"


def test_update_rolls_out_and_the_new_generation_is_observed(
    release: Cluster, namespace: str
) -> None:
    release.apply(smallmodel("rolling", replicas=1, **ON_EDGE), namespace=namespace)
    first = wait_condition(release, namespace, "smallmodel", "rolling", "Ready", "True")
    assert first["status"]["observedGeneration"] == 1
    patch = {"spec": {"replicas": 2, "serving": {"maxConcurrency": 8}}}
    release.kubectl(
        "patch",
        "smallmodel",
        "rolling",
        "-n",
        namespace,
        "--type",
        "merge",
        "-p",
        json.dumps(patch),
    )
    # Ready stays True through the surge rollout; Progressing turns False once the old
    # pod is gone and both new ones are ready.
    wait_condition(release, namespace, "smallmodel", "rolling", "Ready", "True")
    second = wait_condition(release, namespace, "smallmodel", "rolling", "Progressing", "False")
    assert second["status"]["observedGeneration"] == 2
    assert second["status"]["desiredReplicas"] == 2
    assert second["status"]["readyReplicas"] == 2
    deployment = release.get("deployment", "rolling-llamacpp", namespace)
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--max-concurrency") + 1] == "8"
    assert {p["spec"]["containers"][0]["args"][args.index("--max-concurrency") + 1]
            for p in pods(release, namespace, "edgefleet.io/model=rolling")
            if not p["metadata"].get("deletionTimestamp")} == {"8"}  # fmt: skip


def test_deleting_a_model_garbage_collects_every_child(release: Cluster, namespace: str) -> None:
    release.apply(smallmodel("short-lived", replicas=1, **ON_EDGE), namespace=namespace)
    wait_condition(release, namespace, "smallmodel", "short-lived", "Ready", "True")
    selector = "edgefleet.io/model=short-lived"
    assert managed_children(release, namespace, selector) == [
        "Deployment/short-lived-llamacpp",
        "NetworkPolicy/short-lived-model",
        "PodDisruptionBudget/short-lived",
        "Service/short-lived",
    ]
    release.kubectl("delete", "smallmodel", "short-lived", "-n", namespace)
    wait_for(
        "every child of short-lived gone",
        lambda: (
            managed_children(release, namespace, selector) == []
            and pods(release, namespace, selector) == []
        ),
        120,
    )


def test_operator_killed_mid_reconcile_leaves_no_duplicate_or_orphan(
    release: Cluster, namespace: str
) -> None:
    models = [smallmodel(f"burst-{i}", replicas=0, **ON_EDGE) for i in range(8)]
    before = _operator_pod(release)["metadata"]["uid"]
    release.apply(*models, namespace=namespace)
    # Kill it while it works through the burst; the Deployment brings a new one.
    release.kubectl(
        "delete", "pod", "-n", RELEASE_NAMESPACE, "-l", OPERATOR_PODS, "--grace-period=0",
        "--force", "--wait=false",
    )  # fmt: skip
    wait_for(
        "a new operator pod Ready",
        lambda: any(
            p["metadata"]["uid"] != before
            and any(c["type"] == "Ready" and c["status"] == "True"
                    for c in p.get("status", {}).get("conditions", []))
            for p in pods(release, RELEASE_NAMESPACE, OPERATOR_PODS)
        ),
        120,
    )  # fmt: skip
    for model in models:
        name = model["metadata"]["name"]
        wait_condition(release, namespace, "smallmodel", name, "Ready", "False", "ScaledToZero")
    children = managed_children(
        release, namespace, "app.kubernetes.io/managed-by=edgefleet-operator"
    )
    expected = sorted(
        f"{kind}/{name}"
        for i in range(8)
        for kind, name in (
            ("Deployment", f"burst-{i}-llamacpp"),
            ("NetworkPolicy", f"burst-{i}-model"),
            ("PodDisruptionBudget", f"burst-{i}"),
            ("Service", f"burst-{i}"),
        )
    )
    assert children == expected  # each exactly once, nothing else
    release.kubectl("delete", "smallmodels", "--all", "-n", namespace)
    wait_for(
        "no orphan after deleting the burst",
        lambda: managed_children(
            release, namespace, "app.kubernetes.io/managed-by=edgefleet-operator"
        ) == [],
        120,
    )  # fmt: skip


def _ready_operator(cluster: Cluster, other_than: str) -> dict[str, Any] | None:
    for pod in pods(cluster, RELEASE_NAMESPACE, OPERATOR_PODS):
        conditions = pod.get("status", {}).get("conditions", [])
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        if pod["metadata"]["uid"] != other_than and ready:
            return pod
    return None


def test_helm_upgrade_with_changed_values_replaces_the_operator(release: Cluster) -> None:
    before = _operator_pod(release)["metadata"]["uid"]
    upgrade = ("upgrade", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE, "--reuse-values", "--wait")
    release.helm(*upgrade, "--set", "operator.logLevel=DEBUG")
    try:
        after = wait_for("a new operator pod", lambda: _ready_operator(release, before), 120)
        env = {e["name"]: e.get("value") for e in after["spec"]["containers"][0]["env"]}
        assert env["EDGEFLEET_LOG_LEVEL"] == "DEBUG"
        # Recreate: the old one is gone, never two at once acting on the same resources.
        deployment = release.get("deployment", f"{RELEASE}-operator", RELEASE_NAMESPACE)
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}
        wait_for(
            "only the new operator pod left",
            lambda: (
                [p["metadata"]["uid"] for p in pods(release, RELEASE_NAMESPACE, OPERATOR_PODS)]
                == [after["metadata"]["uid"]]
            ),
            120,
        )
    finally:
        release.helm(*upgrade, "--set", "operator.logLevel=INFO")
        wait_for("the operator back on INFO", lambda: _ready_operator(release, ""), 120)


def test_a_stray_second_operator_freezes_instead_of_acting_twice(
    release: Cluster, namespace: str, tmp_path: Path
) -> None:
    kubeconfig = release.service_account_kubeconfig(
        RELEASE_NAMESPACE, RELEASE, tmp_path / "operator.kubeconfig"
    )
    log = tmp_path / "stray.log"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "EDGEFLEET_PEERING_NAME": RELEASE}
    with log.open("wb") as out:
        stray = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.operator.main", "--liveness", ""],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(
            "the stray operator to pause for its peer",
            lambda: "conflicting operators with the same priority" in log.read_text(),
            90,
        )
        # While both run, neither acts: a new model gets no children.
        release.apply(smallmodel("while-frozen", replicas=0, **ON_EDGE), namespace=namespace)
        assert "reconciled in" not in log.read_text()
    finally:
        stray.terminate()
        stray.wait(timeout=60)
    # The stray is gone; the chart's operator resumes and does the work once.
    wait_condition(
        release, namespace, "smallmodel", "while-frozen", "Ready", "False", "ScaledToZero", 180
    )
    assert "reconciled in" not in log.read_text()
    assert managed_children(release, namespace, "edgefleet.io/model=while-frozen") == [
        "Deployment/while-frozen-llamacpp",
        "NetworkPolicy/while-frozen-model",
        "PodDisruptionBudget/while-frozen",
        "Service/while-frozen",
    ]


def test_a_refused_child_gives_apply_failed_then_heals_when_allowed(
    release: Cluster, namespace: str
) -> None:
    # A quota of zero Deployments: the API server refuses the model's workload.
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-deployments"},
             "spec": {"hard": {"count/deployments.apps": "0"}}}  # fmt: skip
    release.apply(quota, namespace=namespace)
    # Admission enforces a quota once its controller has counted what exists.
    wait_for(
        "the quota counted",
        lambda: (release.get("resourcequota", "no-deployments", namespace).get("status") or {}).get(
            "hard"
        ),
        60,
    )
    release.apply(smallmodel("quota-bound", replicas=1, **ON_EDGE), namespace=namespace)
    refused = wait_condition(
        release, namespace, "smallmodel", "quota-bound", "Ready", "False", "ApplyFailed"
    )
    ready = next(c for c in refused["status"]["conditions"] if c["type"] == "Ready")
    assert "quota-bound-llamacpp" in ready["message"]
    assert "exceeded quota" in ready["message"]
    assert any(
        e["reason"] == "ApplyFailed" and e["type"] == "Warning"
        for e in release.get("events", namespace=namespace)["items"]
        if e["involvedObject"]["name"] == "quota-bound"
    )
    # Lift the quota: the next round applies it, no edit to the model needed.
    release.kubectl("delete", "resourcequota", "no-deployments", "-n", namespace)
    wait_condition(release, namespace, "smallmodel", "quota-bound", "Ready", "True", timeout=180)


def test_a_policy_the_routers_parser_refuses_keeps_the_running_router(
    release: Cluster, namespace: str
) -> None:
    policy = {
        "apiVersion": "edgefleet.io/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": "strict"},
        "spec": {"local": {"targets": [{"smallModel": "absent"}]}},
    }
    release.apply(policy, namespace=namespace)
    router = wait_for(
        "the router Deployment",
        lambda: release.get("deployment", "strict-router", namespace),
        120,
    )
    # RE2 (the API server's CEL) accepts \z; Python's re, which the router uses, does not.
    patch = {"spec": {"privacy": {"customPatterns": [{"name": "tail", "regex": "EMP\\z"}]}}}
    release.kubectl(
        "patch", "routingpolicy", "strict", "-n", namespace, "--type", "merge",
        "-p", json.dumps(patch),
    )  # fmt: skip
    refused = wait_condition(
        release, namespace, "routingpolicy", "strict", "Ready", "False", "InvalidPolicy"
    )
    ready = next(c for c in refused["status"]["conditions"] if c["type"] == "Ready")
    assert "spec.privacy" in ready["message"]
    # What runs is left alone: same Deployment, same template, same policy file.
    after = release.get("deployment", "strict-router", namespace)
    assert after["metadata"]["uid"] == router["metadata"]["uid"]
    assert after["spec"]["template"] == router["spec"]["template"]
    config = release.get("configmap", "strict-router", namespace)
    assert "EMP" not in config["data"]["policy.yaml"]


def test_a_spec_change_that_retires_a_workload_deletes_it(release: Cluster, namespace: str) -> None:
    release.apply(smallmodel("reshaped", replicas=1, **ON_EDGE), namespace=namespace)
    wait_condition(release, namespace, "smallmodel", "reshaped", "Ready", "True")
    patch = {"spec": {"replicas": None, "perNode": True}}
    release.kubectl(
        "patch",
        "smallmodel",
        "reshaped",
        "-n",
        namespace,
        "--type",
        "merge",
        "-p",
        json.dumps(patch),
    )
    wait_condition(release, namespace, "smallmodel", "reshaped", "Ready", "True")
    wait_for(
        "the Deployment replaced by a DaemonSet",
        lambda: (
            managed_children(release, namespace, "edgefleet.io/model=reshaped")
            == [
                "DaemonSet/reshaped-llamacpp",
                "NetworkPolicy/reshaped-model",
                "PodDisruptionBudget/reshaped",
                "Service/reshaped",
            ]
        ),
        120,
    )
    removed = [
        e for e in release.get("events", namespace=namespace)["items"]
        if e["involvedObject"]["name"] == "reshaped" and e["reason"] == "Applied"
        and "removed Deployment/reshaped-llamacpp" in e["message"]
    ]  # fmt: skip
    assert removed


def test_turning_the_cloud_off_removes_the_egress(release: Cluster, namespace: str) -> None:
    policy = {
        "apiVersion": "edgefleet.io/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": "closing"},
        "spec": {
            "local": {"targets": [{"smallModel": "absent"}]},
            "cloud": {"enabled": True, "baseURL": "http://10.244.0.1:9/v1", "model": "m",
                      "apiKeySecretRef": {"name": "no-such-secret", "key": "api-key"}},
        },
    }  # fmt: skip
    release.apply(policy, namespace=namespace)
    selector = "edgefleet.io/routing-policy=closing,app.kubernetes.io/component=egress"
    wait_for(
        "the egress objects",
        lambda: (
            managed_children(release, namespace, selector)
            == [
                "Deployment/closing-egress",
                "NetworkPolicy/closing-egress",
                "Service/closing-egress",
            ]
        ),
        120,
    )
    release.kubectl(
        "patch", "routingpolicy", "closing", "-n", namespace, "--type", "merge",
        "-p", json.dumps({"spec": {"cloud": {"enabled": False}}}),
    )  # fmt: skip
    wait_for("no egress left", lambda: managed_children(release, namespace, selector) == [], 120)
    router = release.get("deployment", "closing-router", namespace)
    assert "--cloud-service" not in router["spec"]["template"]["spec"]["containers"][0]["args"]
