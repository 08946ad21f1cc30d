"""The RoutingPolicy status says which sensitive namespaces are missing (pure parts)."""

from __future__ import annotations

from edgefleet.operator.config import OperatorConfig
from edgefleet.operator.handlers.routingpolicy import with_missing_namespaces
from edgefleet.operator.status import WorkloadFacts, routingpolicy_status

NOW = "2026-11-25T19:00:00Z"
ROUTER = WorkloadFacts("Deployment", "p-router", "router", 1, 1, 1, 1, 1)


def healthy() -> dict:
    return routingpolicy_status(
        generation=3,
        targets=[{"smallModel": "m", "weight": 1}],
        target_endpoints={"m": 1},
        router=ROUTER,
        egress=None,
        cloud=False,
        previous=[],
        now=NOW,
    )


def degraded(status: dict) -> dict:
    return next(c for c in status["conditions"] if c["type"] == "Degraded")


def test_nothing_missing_leaves_the_status_alone() -> None:
    assert with_missing_namespaces(healthy(), [], 3, [], NOW) == healthy()


def test_a_missing_namespace_degrades_the_policy_and_says_what_the_router_does() -> None:
    fresh = with_missing_namespaces(healthy(), ["payroll"], 3, [], NOW)
    assert degraded(fresh) == {
        "type": "Degraded",
        "status": "True",
        "reason": "SensitiveNamespacesMissing",
        "message": "sensitive namespace(s) payroll do not exist yet: the router cannot watch "
        "their pods and keeps every request local until they do (retried every status "
        "interval)",
        "lastTransitionTime": NOW,
        "observedGeneration": 3,
    }
    # Ready is about serving: the router still serves (locally).
    ready = next(c for c in fresh["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"


def test_a_missing_namespace_adds_to_other_problems() -> None:
    status = routingpolicy_status(
        generation=3, targets=[{"smallModel": "gone", "weight": 1}], target_endpoints={},
        router=ROUTER, egress=None, cloud=False, previous=[], now=NOW,
    )  # fmt: skip
    fresh = degraded(with_missing_namespaces(status, ["hr", "payroll"], 3, [], NOW))
    assert fresh["reason"] == "TargetsUnavailable"
    assert fresh["message"].startswith("no SmallModel named gone in this namespace; ")
    assert "sensitive namespace(s) hr, payroll do not exist yet" in fresh["message"]


def test_the_pods_cluster_role_is_a_setting() -> None:
    assert OperatorConfig().router_pods_cluster_role == "edgefleet-router-pods"
    env = {"EDGEFLEET_ROUTER_PODS_CLUSTER_ROLE": "prod-edgefleet-router-pods"}
    assert OperatorConfig.from_env(env).router_pods_cluster_role == "prod-edgefleet-router-pods"
