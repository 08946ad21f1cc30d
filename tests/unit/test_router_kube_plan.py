"""How the router's flags and policy decide its use of the Kubernetes API (kube_plan)."""

from __future__ import annotations

import pytest

from edgefleet.router.main import KubePlan, RouterConfig, kube_plan
from edgefleet.routing.policy import PolicyError, RoutingPolicy, parse_policy

WITH_TARGETS = parse_policy({"local": {"targets": [{"smallModel": "smollm2", "weight": 2}]}})


def config(**settings: object) -> RouterConfig:
    return RouterConfig(instance_name="test", **settings)  # type: ignore[arg-type]


def test_a_router_with_files_and_flags_does_not_touch_the_api() -> None:
    assert kube_plan(config(local="127.0.0.1:5000"), RoutingPolicy(), "") is None


def test_policy_targets_turn_on_discovery_in_the_pods_namespace() -> None:
    plan = kube_plan(config(cloud_service="demo-egress"), WITH_TARGETS, "shop")
    assert plan == KubePlan(
        namespace="shop",
        local_services={"smollm2": 2},
        cloud_service="demo-egress",
        services_from_policy=True,
        status_policy="",
    )


def test_local_services_flag_wins_over_the_policy_and_namespace_flag_over_the_pod() -> None:
    settings = config(local_services="a=5,b", kube_namespace="other", status_policy="demo")
    plan = kube_plan(settings, WITH_TARGETS, "shop")
    assert plan is not None
    assert (plan.local_services, plan.services_from_policy) == ({"a": 5, "b": 1}, False)
    assert (plan.namespace, plan.status_policy) == ("other", "demo")


def test_policy_targets_alone_turn_on_discovery() -> None:
    plan = kube_plan(config(), WITH_TARGETS, "shop")
    assert plan is not None and plan.local_services == {"smollm2": 2}
    assert plan.cloud_service is None


def test_status_reports_alone_need_no_discovery() -> None:
    plan = kube_plan(config(local="127.0.0.1:5000", status_policy="demo"), RoutingPolicy(), "ns")
    assert plan is not None and not plan.discovery


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"local_services": "smollm2", "local": "127.0.0.1:5000"}, "--local cannot be combined"),
        (
            {"cloud_service": "demo-egress", "endpoints_file": "/e.json", "cloud": "127.0.0.1:1"},
            "--endpoints-file, --cloud cannot be combined with --local-services/--cloud-service",
        ),
    ],
)
def test_files_and_address_flags_are_refused_beside_service_flags(
    settings: dict[str, str], message: str
) -> None:
    with pytest.raises(PolicyError, match=message):
        kube_plan(config(**settings), WITH_TARGETS, "shop")


def test_address_flags_win_over_the_policys_targets() -> None:
    # `make demo`: an operator-shaped policy, with addresses on this machine.
    assert kube_plan(config(local="127.0.0.1:5000"), WITH_TARGETS, "") is None
    assert kube_plan(config(endpoints_file="/e.json"), WITH_TARGETS, "shop") is None


def test_cloud_service_alone_keeps_the_policys_targets() -> None:
    plan = kube_plan(config(cloud_service="demo-egress"), WITH_TARGETS, "shop")
    assert plan is not None and plan.local_services == {"smollm2": 2}
    assert plan.services_from_policy


def test_outside_a_pod_the_namespace_must_be_given() -> None:
    with pytest.raises(PolicyError, match="--kube-namespace is needed outside a pod"):
        kube_plan(config(local_services="smollm2"), RoutingPolicy(), "")


def test_a_bad_status_interval_is_refused() -> None:
    with pytest.raises(PolicyError, match="--status-interval-s must be above 0"):
        kube_plan(config(status_policy="demo", status_interval_s=0.0), RoutingPolicy(), "ns")
