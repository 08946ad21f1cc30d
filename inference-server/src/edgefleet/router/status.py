"""What the router reports in its RoutingPolicy's `status.router`, and when.

The body is a pure function of the router's tallies and its budget window,
so it is tested without a cluster; the patch itself is in router.kube. Only
`status.router` is ever written: the operator owns the rest of the status.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from edgefleet.routing.budget import BudgetSnapshot

TOP_REASONS = 5
# Unchanged figures are still re-sent this often (in intervals), so a reader
# can tell a quiet router from a dead one by reportedAt.
HEARTBEAT_INTERVALS = 6


@dataclass(frozen=True)
class RouterFigures:
    """The router's counts since it started, plus the current budget window."""

    # (target, reason) -> requests that ended with that route (served or refused).
    routes: Mapping[tuple[str, str], int]
    # Reasons of the latest decisions, oldest first.
    recent_reasons: Iterable[str]
    budget: BudgetSnapshot
    budget_window_seconds: float
    # Money charged for cloud answers since start, and what every answered request
    # would have cost on the cloud (its tokens at the policy's prices), by serving target.
    cloud_cost: float = 0.0
    all_cloud_cost: Mapping[str, float] = field(default_factory=dict)
    # Target -> the latest times to first token, in seconds.
    recent_ttfts: Mapping[str, Iterable[float]] = field(default_factory=dict)
    # The complexity classifier's version: the shipped one or a calibration's artefact.
    classifier: str = ""


def router_status(figures: RouterFigures) -> dict[str, Any]:
    """`status.router` without reportedAt (see with_timestamp), so two bodies compare."""
    requests = sum(figures.routes.values())
    by_target: Counter[str] = Counter()
    for (target, _), count in figures.routes.items():
        by_target[target] += count
    overflow = sum(
        count for (_, reason), count in figures.routes.items() if reason == "capacity.overflow"
    )
    reasons = Counter(figures.recent_reasons)
    top = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))[:TOP_REASONS]
    budget = figures.budget
    return {
        "classifier": figures.classifier,
        "requests": requests,
        "localShare": round(by_target["local"] / requests, 4) if requests else 0.0,
        "overflow": overflow,
        "cloudRequests": by_target["cloud"],
        "cloudSpend": {
            "windowSeconds": figures.budget_window_seconds,
            # Spent plus held for requests still running: what the cap is checked against.
            "tokens": budget.spent_tokens + budget.reserved_tokens,
            "cost": round(budget.spent_cost + budget.reserved_cost, 6),
        },
        "lastDecisions": [{"reason": reason, "count": count} for reason, count in top],
        "savings": savings(figures),
        "ttftMs": {
            target: round(statistics.median(times) * 1000, 1)
            for target, times in sorted(_listed(figures.recent_ttfts).items())
            if times
        },
    }


def _listed(series: Mapping[str, Iterable[float]]) -> dict[str, list[float]]:
    return {target: list(values) for target, values in series.items()}


def savings(figures: RouterFigures) -> dict[str, float]:
    """Since start: what all-cloud would have cost, what the cloud cost, the difference."""
    all_cloud = sum(figures.all_cloud_cost.values())
    return {
        "allCloudCost": round(all_cloud, 6),
        "cloudCost": round(figures.cloud_cost, 6),
        "saved": round(all_cloud - figures.cloud_cost, 6),
    }


def with_timestamp(router: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The merge-patch body: only status.router, stamped in RFC 3339 UTC."""
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"status": {"router": {"reportedAt": stamp, **router}}}


def should_send(
    previous: Mapping[str, Any] | None, current: Mapping[str, Any], intervals_since_sent: int
) -> bool:
    """Send when the figures changed, or as a heartbeat every HEARTBEAT_INTERVALS."""
    return previous != current or intervals_since_sent >= HEARTBEAT_INTERVALS
