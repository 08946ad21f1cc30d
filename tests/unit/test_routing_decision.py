"""The routing decision's order and fail-closed privacy, over plain facts."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from edgefleet.routing.decision import (
    ClientNamespace,
    FleetFacts,
    RequestFacts,
    RoutingDecision,
    Target,
    decide,
    privacy_step,
)
from edgefleet.routing.policy import BudgetPolicy, CapacityPolicy, PrivacyPolicy, RoutingPolicy

POLICY = RoutingPolicy()
REDACTING = RoutingPolicy(privacy=PrivacyPolicy(on_sensitive="redact"))
REJECTING = RoutingPolicy(privacy=PrivacyPolicy(on_sensitive="reject"))
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


def test_redacting_policy_routes_a_detected_prompt_on_its_merits() -> None:
    complex_email = RequestFacts(privacy_detector="email", complexity=0.9)
    simple_email = RequestFacts(privacy_detector="email", complexity=0.1)
    assert decide(REDACTING, THRESHOLD, complex_email, HEALTHY) == RoutingDecision(
        Target.CLOUD, "privacy.redacted", Target.LOCAL
    )
    # Served locally as it is; a failover to the cloud redacts it then.
    assert decide(REDACTING, THRESHOLD, simple_email, HEALTHY) == RoutingDecision(
        Target.LOCAL, "complexity.low", Target.CLOUD
    )
    overflow = decide(REDACTING, THRESHOLD, simple_email, FleetFacts(overflowing=True))
    assert overflow == RoutingDecision(Target.CLOUD, "privacy.redacted", Target.LOCAL)


def test_redacting_policy_keeps_what_it_cannot_hide_local() -> None:
    """The client's mark and a sensitive namespace cover the whole prompt; a prompt still
    found sensitive after redaction is not redactable."""
    for facts, reason in [
        (RequestFacts(client_sensitive=True, complexity=0.9), "privacy.client_marked"),
        (
            RequestFacts(privacy_detector="email", client_sensitive=True, complexity=0.9),
            "privacy.detector.email",
        ),
        (RequestFacts(client_namespace=ClientNamespace.SENSITIVE), "privacy.namespace"),
        (
            RequestFacts(privacy_detector="person", redactable=False, complexity=0.9),
            "privacy.detector.person",
        ),
    ]:
        assert decide(REDACTING, THRESHOLD, facts, HEALTHY) == RoutingDecision(Target.LOCAL, reason)


def test_rejecting_policy_refuses_a_detected_prompt_even_with_local_ready() -> None:
    facts = RequestFacts(privacy_detector="iban", complexity=0.1)
    assert decide(REJECTING, THRESHOLD, facts, HEALTHY) == RoutingDecision(
        Target.REJECT, "privacy.detector.iban"
    )
    marked = RequestFacts(client_sensitive=True)
    assert decide(REJECTING, THRESHOLD, marked, HEALTHY) == RoutingDecision(
        Target.LOCAL, "privacy.client_marked"
    )


def test_privacy_step_on_failover_refuses_what_must_stay_local() -> None:
    """Local has failed: what privacy confines is refused, a redactable prompt may go out."""
    person = RequestFacts(privacy_detector="person")
    assert privacy_step(POLICY, person, local_available=False) == RoutingDecision(
        Target.REJECT, "privacy.detector.person"
    )
    assert privacy_step(REJECTING, person, local_available=False) == RoutingDecision(
        Target.REJECT, "privacy.detector.person"
    )
    assert privacy_step(REDACTING, person, local_available=False) is None
    assert privacy_step(POLICY, RequestFacts(), local_available=False) is None


def test_only_a_redacting_policy_ever_lets_a_detected_prompt_out_and_then_redacted() -> None:
    """Every fleet state and mode: the cloud gets a detected prompt only as privacy.redacted."""
    for policy, flags in itertools.product(
        [POLICY, REDACTING, REJECTING], itertools.product([True, False], repeat=4)
    ):
        fleet = FleetFacts(*flags)
        for complexity in (0.0, 1.0):
            facts = RequestFacts(privacy_detector="email", complexity=complexity)
            decision = decide(policy, THRESHOLD, facts, fleet)
            if policy is not REDACTING:
                assert Target.CLOUD not in (decision.target, decision.fallback)
            if decision.target is Target.CLOUD:
                assert decision.reason == "privacy.redacted"
