"""The body of status.router and when it is sent: pure, from the router's tallies."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from edgefleet.router.metrics import RECENT_DECISIONS, RouterMetrics
from edgefleet.router.status import (
    HEARTBEAT_INTERVALS,
    RouterFigures,
    router_status,
    should_send,
    with_timestamp,
)
from edgefleet.routing.budget import BudgetSnapshot

BUDGET = BudgetSnapshot(
    spent_tokens=5000, spent_cost=0.025, reserved_tokens=120, reserved_cost=0.005
)


def figures(routes: dict[tuple[str, str], int], recent: list[str] | None = None) -> RouterFigures:
    reasons = (
        recent if recent is not None else [r for (_, r), n in routes.items() for _ in range(n)]
    )
    return RouterFigures(routes, reasons, BUDGET, 3600.0)


def test_figures_are_summed_by_target_and_reason() -> None:
    routes = {
        ("local", "complexity.low"): 80,
        ("local", "privacy.detector.email"): 5,
        ("local", "failover.cloud_failed"): 1,
        ("cloud", "complexity.high"): 18,
        ("cloud", "capacity.overflow"): 3,
        ("reject", "budget.exceeded"): 2,
    }
    assert router_status(figures(routes)) == {
        "classifier": "",
        "requests": 109,
        "localShare": round(86 / 109, 4),
        "overflow": 3,
        "cloudRequests": 21,
        "cloudSpend": {"windowSeconds": 3600.0, "tokens": 5120, "cost": 0.03},
        "lastDecisions": [
            {"reason": "complexity.low", "count": 80},
            {"reason": "complexity.high", "count": 18},
            {"reason": "privacy.detector.email", "count": 5},
            {"reason": "capacity.overflow", "count": 3},
            {"reason": "budget.exceeded", "count": 2},
        ],
        "savings": {"allCloudCost": 0.0, "cloudCost": 0.0, "saved": 0.0},
        "ttftMs": {},
    }


def test_a_router_that_routed_nothing_reports_zeroes() -> None:
    status = router_status(figures({}))
    assert status["requests"] == 0
    assert status["localShare"] == 0.0
    assert status["lastDecisions"] == []


def test_last_decisions_come_from_recent_decisions_only() -> None:
    metrics = RouterMetrics()
    for _ in range(RECENT_DECISIONS):
        metrics.count_route("local", "complexity.low")
    for _ in range(RECENT_DECISIONS):
        metrics.count_route("cloud", "complexity.high")
    status = router_status(
        RouterFigures(metrics.route_totals, metrics.recent_reasons, BUDGET, 60.0)
    )
    assert status["requests"] == 2 * RECENT_DECISIONS
    assert status["lastDecisions"] == [{"reason": "complexity.high", "count": RECENT_DECISIONS}]


def test_the_patch_body_touches_only_status_router_with_a_utc_stamp() -> None:
    body = with_timestamp(
        {"requests": 1}, datetime(2026, 11, 25, 19, 0, tzinfo=timezone(timedelta(hours=1)))
    )
    assert body == {"status": {"router": {"reportedAt": "2026-11-25T18:00:00Z", "requests": 1}}}


def test_unchanged_figures_are_sent_only_as_a_heartbeat() -> None:
    first = router_status(figures({("local", "complexity.low"): 1}))
    same = router_status(figures({("local", "complexity.low"): 1}))
    more = router_status(figures({("local", "complexity.low"): 2}))
    assert should_send(None, first, 0)
    assert not should_send(first, same, 1)
    assert not should_send(first, same, HEARTBEAT_INTERVALS - 1)
    assert should_send(first, same, HEARTBEAT_INTERVALS)
    assert should_send(first, more, 1)
