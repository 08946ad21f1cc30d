"""The router's own Prometheus metrics, registered beside the serving ones."""

from __future__ import annotations

from collections import Counter as Tally
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from edgefleet.routing.budget import BudgetSnapshot
from edgefleet.serving.types import Usage

if TYPE_CHECKING:
    from edgefleet.router.backends import Backend
    from edgefleet.router.pods import PodIndex


# How many of the latest decisions status.router's lastDecisions summarises.
RECENT_DECISIONS = 1000
# How many of the latest answers per target status.router's TTFT medians are taken over.
RECENT_TTFTS = 1000


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        # Plain tallies beside the Prometheus series, for the RoutingPolicy status
        # (reading figures back out of prometheus_client is not its public API).
        self.route_totals: Tally[tuple[str, str]] = Tally()
        self.recent_reasons: deque[str] = deque(maxlen=RECENT_DECISIONS)
        # What the answered traffic cost on the cloud, and would have cost all-cloud.
        self.cloud_cost_total = 0.0
        self.all_cloud_cost_totals: Tally[str] = Tally()
        self.recent_ttfts: dict[str, deque[float]] = {}
        r = self.registry
        self.classifier = Gauge(
            "edgefleet:router_complexity_classifier",
            "1 for the version of the complexity classifier the router scores with.",
            ["version"],
            registry=r,
        )
        self._classifier_version = ""
        self.routes = Counter(
            "edgefleet:router_routes_total",
            "Requests by the target that served (or refused) them and the reason.",
            ["target", "reason"],
            registry=r,
        )
        self.decision_seconds = Histogram(
            "edgefleet:router_decision_seconds",
            "Time to decide a route (privacy scan, complexity score, load, budget).",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05),
            registry=r,
        )
        self.cloud_tokens = Counter(
            "edgefleet:router_cloud_tokens_total",
            "Tokens charged to the cloud budget.",
            ["kind"],
            registry=r,
        )
        self.cloud_cost = Counter(
            "edgefleet:router_cloud_cost_total", "Money charged to the cloud budget.", registry=r
        )
        self.all_cloud_cost = Counter(
            "edgefleet:router_all_cloud_cost_total",
            "What the answered requests would have cost had all gone to the cloud: each "
            "request's tokens at the policy's prices, by the target that served it. Minus "
            "edgefleet:router_cloud_cost_total, what routing saved.",
            ["target"],
            registry=r,
        )
        self.answered_tokens = Counter(
            "edgefleet:router_answered_tokens_total",
            "Tokens of answered requests, by the target that served them and kind.",
            ["target", "kind"],
            registry=r,
        )
        self.ttft = Histogram(
            "edgefleet:router_ttft_seconds",
            "Time from the router's call to a backend to its first text, by target.",
            ["target"],
            buckets=(0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 0.75, 1, 1.5, 2.5, 5, 10, 30),
            registry=r,
        )
        self.budget_spent_cost = Gauge(
            "edgefleet:router_budget_window_cost",
            "Cloud money spent plus reserved in the current budget window.",
            registry=r,
        )
        self.budget_spent_tokens = Gauge(
            "edgefleet:router_budget_window_tokens",
            "Cloud tokens spent plus reserved in the current budget window.",
            registry=r,
        )
        self.backend_ready = Gauge(
            "edgefleet:router_backend_ready",
            "1 when a backend answers, is ready and its breaker lets calls through.",
            ["backend", "kind"],
            registry=r,
        )
        self.breaker_open = Gauge(
            "edgefleet:router_breaker_open",
            "1 while a backend's circuit breaker is open or half-open.",
            ["backend", "kind"],
            registry=r,
        )
        self.overflowing = Gauge(
            "edgefleet:router_overflowing",
            "1 while local load sends traffic to the cloud.",
            registry=r,
        )
        self.policy_reloads = Counter(
            "edgefleet:router_policy_reloads_total",
            "Policy and endpoint reloads by result (applied, rejected).",
            ["result"],
            registry=r,
        )

        self.sensitive_pod_ips = Gauge(
            "edgefleet:router_sensitive_namespace_pod_ips",
            "Pod IPs the router knows in each of the policy's sensitiveNamespaces.",
            ["namespace"],
            registry=r,
        )
        self.sensitive_synced = Gauge(
            "edgefleet:router_sensitive_namespace_synced",
            "1 once a sensitive namespace's pods are listed and watched; 0 while the router "
            "fails closed for it (every unplaced client is sensitive).",
            ["namespace"],
            registry=r,
        )
        self._pod_namespaces: set[str] = set()

    def count_route(self, target: str, reason: str) -> None:
        self.routes.labels(target, reason).inc()
        self.route_totals[(target, reason)] += 1
        self.recent_reasons.append(reason)

    def count_cloud_spend(self, usage: Usage, cost: float) -> None:
        self.cloud_tokens.labels("input").inc(usage.prompt_tokens)
        self.cloud_tokens.labels("output").inc(usage.completion_tokens)
        self.cloud_cost.inc(cost)
        self.cloud_cost_total += cost

    def count_answer(self, target: str, usage: Usage, all_cloud_cost: float) -> None:
        """An answered request: its tokens, and its price had the cloud answered it."""
        self.answered_tokens.labels(target, "input").inc(usage.prompt_tokens)
        self.answered_tokens.labels(target, "output").inc(usage.completion_tokens)
        self.all_cloud_cost.labels(target).inc(all_cloud_cost)
        self.all_cloud_cost_totals[target] += all_cloud_cost

    def observe_ttft(self, target: str, seconds: float) -> None:
        self.ttft.labels(target).observe(seconds)
        self.recent_ttfts.setdefault(target, deque(maxlen=RECENT_TTFTS)).append(seconds)

    def observe_classifier(self, version: str) -> None:
        """The complexity classifier in use: shipped, or a calibration's (`edgefleet calibrate`)."""
        if self._classifier_version != version:
            self.classifier.clear()
            self.classifier.labels(version).set(1)
            self._classifier_version = version

    def observe_budget(self, snapshot: BudgetSnapshot) -> None:
        self.budget_spent_cost.set(snapshot.spent_cost + snapshot.reserved_cost)
        self.budget_spent_tokens.set(snapshot.spent_tokens + snapshot.reserved_tokens)

    def observe_backends(self, backends: Iterable[Backend], overflowing: bool) -> None:
        for backend in backends:
            labels = (backend.address, backend.kind)
            self.backend_ready.labels(*labels).set(1 if backend.ready else 0)
            state = backend.breaker.state.value
            self.breaker_open.labels(*labels).set(0 if state == "closed" else 1)
        self.overflowing.set(1 if overflowing else 0)

    def observe_pods(self, index: PodIndex) -> None:
        for namespace in self._pod_namespaces - index.namespaces:
            self.sensitive_pod_ips.remove(namespace)
            self.sensitive_synced.remove(namespace)
        for namespace in index.namespaces:
            self.sensitive_pod_ips.labels(namespace).set(len(index.addresses(namespace)))
            self.sensitive_synced.labels(namespace).set(1 if index.synced(namespace) else 0)
        self._pod_namespaces = set(index.namespaces)
