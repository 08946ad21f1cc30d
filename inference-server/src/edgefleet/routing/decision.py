"""The routing decision: one pure function from facts to a target and a reason.

The steps run in a fixed order, each able to override the one before:
privacy (fail-closed: a sensitive request is local or refused, never cloud;
sensitive means marked by the client, matched by a detector, or sent from a
namespace the policy names, or from a client the router cannot place yet;
a policy may refuse what a detector matched, or redact it: then the request
goes on its merits and the cloud gets it with the values replaced),
complexity (the classifier's score against the policy's threshold), capacity
(overflow, or no local replica), cloud eligibility (enabled, breaker, budget).
The router gathers the facts, calls `decide`, and carries the decision out,
trying `fallback` only when the chosen target fails before answering.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from edgefleet.routing.policy import RoutingPolicy


class ClientNamespace(enum.Enum):
    """What `privacy.sensitiveNamespaces` says of a request's client; each is sensitive.

    The value is the reason's suffix: `privacy.namespace`, ...
    """

    # The client's IP belongs to a pod in one of the namespaces.
    SENSITIVE = "namespace"
    # Not every namespace's pods are known yet (first list pending, or the
    # watch lost and not yet relisted): fail closed.
    UNSYNCED = "namespace_unsynced"
    # The front end could not tell the client's address (e.g. a Unix socket).
    CLIENT_UNKNOWN = "client_unknown"


class Target(enum.Enum):
    LOCAL = "local"
    CLOUD = "cloud"
    REJECT = "reject"


@dataclass(frozen=True)
class RequestFacts:
    # The client set routing.sensitivity = SENSITIVE.
    client_sensitive: bool = False
    # Name of the first privacy detector that matched, if any.
    privacy_detector: str | None = None
    # The complexity classifier's score in [0, 1]; higher needs the cloud more.
    complexity: float = 0.0
    # The sensitiveNamespaces verdict on the client; None: not from one of
    # them (or the policy names none).
    client_namespace: ClientNamespace | None = None
    # False once a redacted prompt still trips a detector: its values cannot be hidden.
    redactable: bool = True

    @property
    def sensitive(self) -> bool:
        return (
            self.client_sensitive
            or self.privacy_detector is not None
            or self.client_namespace is not None
        )


@dataclass(frozen=True)
class FleetFacts:
    # A ready local replica whose breaker lets calls through exists.
    local_available: bool = True
    # The overflow gate's verdict (with hysteresis) from the local load.
    overflowing: bool = False
    # An egress endpoint is configured and its breaker lets calls through.
    cloud_available: bool = True
    # This request's worst case fits the cloud budget now.
    budget_allows: bool = True


@dataclass(frozen=True)
class RoutingDecision:
    target: Target
    # Machine-readable: "privacy.detector.email", "complexity.high", ...
    reason: str
    # Where to retry when the target fails before the first token; None: nowhere.
    fallback: Target | None = None


def privacy_reason(facts: RequestFacts) -> str:
    """The most telling reason: what the prompt holds, where it came from, what it says."""
    if facts.privacy_detector is not None:
        return f"privacy.detector.{facts.privacy_detector}"
    if facts.client_namespace is ClientNamespace.SENSITIVE:
        return "privacy.namespace"
    if facts.client_sensitive or facts.client_namespace is None:
        return "privacy.client_marked"
    return f"privacy.{facts.client_namespace.value}"


def confined(policy: RoutingPolicy, request: RequestFacts) -> bool:
    """Does privacy alone settle this request: local only, or refused?

    The client's mark and its namespace always do: they say the whole prompt is
    private, and redaction hides only what a detector finds. A detector's finding
    does unless the policy redacts (and the redacted prompt came out clean).
    """
    if request.client_sensitive or request.client_namespace is not None:
        return True
    if request.privacy_detector is None:
        return False
    return policy.privacy.on_sensitive != "redact" or not request.redactable


def privacy_step(
    policy: RoutingPolicy, request: RequestFacts, local_available: bool
) -> RoutingDecision | None:
    """The privacy step's decision, or None when the request goes on its merits."""
    if not confined(policy, request):
        return None
    refused = request.privacy_detector is not None and policy.privacy.on_sensitive == "reject"
    target = Target.LOCAL if local_available and not refused else Target.REJECT
    return RoutingDecision(target, privacy_reason(request))


def decide(
    policy: RoutingPolicy, threshold: float, request: RequestFacts, fleet: FleetFacts
) -> RoutingDecision:
    settled = privacy_step(policy, request, fleet.local_available)
    if settled is not None:
        return settled

    if request.complexity >= threshold:
        target, reason = Target.CLOUD, "complexity.high"
    else:
        target, reason = Target.LOCAL, "complexity.low"

    if not fleet.local_available:
        if target is Target.LOCAL:
            if not policy.capacity.cloud_when_no_local:
                return RoutingDecision(Target.REJECT, "capacity.no_local")
            target, reason = Target.CLOUD, "capacity.no_local"
    elif target is Target.LOCAL and fleet.overflowing:
        target, reason = Target.CLOUD, "capacity.overflow"

    if target is Target.CLOUD:
        blocked = _cloud_blocked(policy, fleet)
        if blocked is not None:
            refuse = blocked == "budget.exceeded" and policy.budget.on_exceeded == "reject"
            if fleet.local_available and not refuse:
                return RoutingDecision(Target.LOCAL, blocked)
            return RoutingDecision(Target.REJECT, blocked)
        fallback = Target.LOCAL if fleet.local_available else None
        return RoutingDecision(Target.CLOUD, cloud_reason(request, reason), fallback)

    may_fail_over = policy.failover.local_to_cloud and _cloud_blocked(policy, fleet) is None
    return RoutingDecision(Target.LOCAL, reason, Target.CLOUD if may_fail_over else None)


def cloud_reason(request: RequestFacts, reason: str) -> str:
    """The reason for sending a request to the cloud: what it holds goes redacted, which the
    client should hear of before why it went out."""
    return "privacy.redacted" if request.privacy_detector is not None else reason


def _cloud_blocked(policy: RoutingPolicy, fleet: FleetFacts) -> str | None:
    """Why the cloud cannot take this request now, or None when it can."""
    if not policy.cloud_enabled:
        return "cloud.disabled"
    if not fleet.cloud_available:
        return "cloud.unavailable"
    if not fleet.budget_allows:
        return "budget.exceeded"
    return None
