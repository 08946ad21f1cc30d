"""The routing decision's order and fail-closed privacy, over plain facts."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from edgefleet.routing.decision import FleetFacts, RequestFacts, RoutingDecision, Target, decide
from edgefleet.routing.policy import BudgetPolicy, CapacityPolicy, RoutingPolicy

POLICY = RoutingPolicy()
THRESHOLD = 0.5
SIMPLE = RequestFacts(complexity=0.1)
COMPLEX = RequestFacts(complexity=0.9)
HEALTHY = FleetFacts()


def test_simple_prompt_stays_local_with_cloud_as_fallback() -> None:
    assert decide(POLICY, THRESHOLD, SIMPLE, HEALTHY) == RoutingDecision(
        Target.LOCAL, "complexity.low", Target.CLOUD
    )


def test_complex_prompt_goes_to_cloud_with_local_as_fallback() -> None:
    assert decide(POLICY, THRESHOLD, COMPLEX, HEALTHY) == RoutingDecision(
        Target.CLOUD, "complexity.high", Target.LOCAL
    )


def test_score_equal_to_threshold_counts_as_complex() -> None:
    facts = RequestFacts(complexity=THRESHOLD)
    assert decide(POLICY, THRESHOLD, facts, HEALTHY).target is Target.CLOUD


@pytest.mark.parametrize(
    "request_facts, reason",
    [
        (RequestFacts(client_sensitive=True, complexity=0.99), "privacy.client_marked"),
        (RequestFacts(privacy_detector="iban", complexity=0.99), "privacy.detector.iban"),
    ],
)
def test_sensitive_request_is_local_without_any_fallback(
    request_facts: RequestFacts, reason: str
) -> None:
    pressured = FleetFacts(overflowing=True)
    assert decide(POLICY, THRESHOLD, request_facts, pressured) == RoutingDecision(
        Target.LOCAL, reason, None
    )


def test_sensitive_request_never_gets_the_cloud_in_any_fleet_state() -> None:
    """Every combination of fleet facts and policy switches: local or reject, nothing else."""
    policies = [
        POLICY,
        dataclasses.replace(POLICY, capacity=CapacityPolicy(cloud_when_no_local=True)),
        dataclasses.replace(POLICY, budget=BudgetPolicy(on_exceeded="reject")),
    ]
    for policy, flags in itertools.product(policies, itertools.product([True, False], repeat=4)):
        fleet = FleetFacts(*flags)
        for facts in (
            RequestFacts(client_sensitive=True, complexity=1.0),
            RequestFacts(privacy_detector="email", complexity=1.0),
        ):
            decision = decide(policy, 0.0, facts, fleet)
            assert decision.target in (Target.LOCAL, Target.REJECT)
            assert decision.fallback is None
            assert decision.target is (Target.LOCAL if fleet.local_available else Target.REJECT)


def test_overflow_sends_simple_prompts_to_cloud() -> None:
    decision = decide(POLICY, THRESHOLD, SIMPLE, FleetFacts(overflowing=True))
    assert decision == RoutingDecision(Target.CLOUD, "capacity.overflow", Target.LOCAL)


def test_no_local_replica_sends_to_cloud_when_policy_allows() -> None:
    fleet = FleetFacts(local_available=False)
    assert decide(POLICY, THRESHOLD, SIMPLE, fleet) == RoutingDecision(
        Target.CLOUD, "capacity.no_local", None
    )


def test_no_local_replica_and_cloud_not_allowed_rejects() -> None:
    policy = dataclasses.replace(POLICY, capacity=CapacityPolicy(cloud_when_no_local=False))
    decision = decide(policy, THRESHOLD, SIMPLE, FleetFacts(local_available=False))
    assert decision == RoutingDecision(Target.REJECT, "capacity.no_local")


def test_budget_exceeded_serves_locally_by_default() -> None:
    decision = decide(POLICY, THRESHOLD, COMPLEX, FleetFacts(budget_allows=False))
    assert decision == RoutingDecision(Target.LOCAL, "budget.exceeded")


def test_budget_exceeded_rejects_when_policy_says_so() -> None:
    policy = dataclasses.replace(POLICY, budget=BudgetPolicy(on_exceeded="reject"))
    decision = decide(policy, THRESHOLD, COMPLEX, FleetFacts(budget_allows=False))
    assert decision == RoutingDecision(Target.REJECT, "budget.exceeded")


def test_open_cloud_breaker_keeps_complex_prompts_local() -> None:
    decision = decide(POLICY, THRESHOLD, COMPLEX, FleetFacts(cloud_available=False))
    assert decision == RoutingDecision(Target.LOCAL, "cloud.unavailable")


def test_disabled_cloud_keeps_everything_local_without_fallback() -> None:
    policy = dataclasses.replace(POLICY, cloud_enabled=False)
    assert decide(policy, THRESHOLD, COMPLEX, HEALTHY) == RoutingDecision(
        Target.LOCAL, "cloud.disabled"
    )
    assert decide(policy, THRESHOLD, SIMPLE, HEALTHY).fallback is None


def test_local_to_cloud_failover_can_be_switched_off() -> None:
    policy = dataclasses.replace(
        POLICY, failover=dataclasses.replace(POLICY.failover, local_to_cloud=False)
    )
    assert decide(policy, THRESHOLD, SIMPLE, HEALTHY).fallback is None


def test_nothing_anywhere_rejects() -> None:
    fleet = FleetFacts(local_available=False, cloud_available=False)
    assert decide(POLICY, THRESHOLD, SIMPLE, fleet) == RoutingDecision(
        Target.REJECT, "cloud.unavailable"
    )
