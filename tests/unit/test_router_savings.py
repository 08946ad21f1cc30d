"""What routing saved: the router's tallies, status.router and `edgefleet report`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from edgefleet.router.metrics import RouterMetrics
from edgefleet.router.report import (
    difference,
    median_from_buckets,
    parse,
    parse_window,
    rows,
)
from edgefleet.router.status import RouterFigures, router_status
from edgefleet.routing.budget import BudgetSnapshot
from edgefleet.serving.types import Usage

DASHBOARD = (
    Path(__file__).resolve().parents[2] / "charts/edgefleet/dashboards/edgefleet-routing.json"
)
# $1 per 1k input tokens, $2 per 1k output tokens.
PRICE_IN, PRICE_OUT = 1.0, 2.0


def price(usage: Usage) -> float:
    return usage.prompt_tokens / 1000 * PRICE_IN + usage.completion_tokens / 1000 * PRICE_OUT


def traffic() -> RouterMetrics:
    """Three local answers and one cloud answer, as the engine reports them."""
    metrics = RouterMetrics()
    for _ in range(3):
        usage = Usage(1000, 500)
        metrics.count_route("local", "complexity.low")
        metrics.count_answer("local", usage, price(usage))
        metrics.observe_ttft("local", 0.12)
    usage = Usage(2000, 1000)
    metrics.count_route("cloud", "complexity.high")
    metrics.count_cloud_spend(usage, price(usage))
    metrics.count_answer("cloud", usage, price(usage))
    metrics.observe_ttft("cloud", 0.45)
    return metrics


def figures(metrics: RouterMetrics) -> RouterFigures:
    return RouterFigures(
        routes=metrics.route_totals,
        recent_reasons=metrics.recent_reasons,
        budget=BudgetSnapshot(0, 0.0, 0, 0.0),
        budget_window_seconds=3600.0,
        cloud_cost=metrics.cloud_cost_total,
        all_cloud_cost=metrics.all_cloud_cost_totals,
        recent_ttfts=metrics.recent_ttfts,
    )


def test_status_reports_what_all_cloud_would_have_cost_and_ttft_by_target() -> None:
    status = router_status(figures(traffic()))
    # Local answers: 3 x (1 + 1) = 6; the cloud answer: 2 + 2 = 4, both at the cloud's prices.
    assert status["savings"] == {"allCloudCost": 10.0, "cloudCost": 4.0, "saved": 6.0}
    assert status["ttftMs"] == {"cloud": 450.0, "local": 120.0}
    assert status["localShare"] == 0.75


def test_report_reads_the_same_figures_from_the_metrics_endpoint() -> None:
    reading = parse(generate_latest(traffic().registry).decode())
    table = dict(rows(reading))
    assert table["requests"] == "4"
    assert table["local share"] == "75.0%"
    assert table["cloud spend"] == "4.0000"
    assert table["all-cloud cost (same traffic)"] == "10.0000"
    assert table["saved"] == "6.0000"
    assert table["saved share"] == "60.0%"
    # 120 ms sits in the (100, 150] bucket: the estimate is inside it, the mean exact.
    local_p50, local_mean = table["local TTFT p50 / mean (ms)"].split(" / ")
    assert 100 <= int(local_p50) <= 150 and local_mean == "120"


def test_a_window_is_the_difference_of_two_readings() -> None:
    metrics = traffic()
    before = parse(generate_latest(metrics.registry).decode())
    usage = Usage(1000, 0)
    metrics.count_route("local", "complexity.low")
    metrics.count_answer("local", usage, price(usage))
    window = difference(parse(generate_latest(metrics.registry).decode()), before)
    table = dict(rows(window))
    assert (table["requests"], table["local share"], table["saved"]) == ("1", "100.0%", "1.0000")


def test_a_restart_inside_the_window_is_reported_not_subtracted() -> None:
    later = parse(generate_latest(RouterMetrics().registry).decode())
    earlier = parse(generate_latest(traffic().registry).decode())
    with pytest.raises(ValueError, match="restarted"):
        difference(later, earlier)


def test_median_from_buckets_interpolates_like_histogram_quantile() -> None:
    buckets = {0.1: 0.0, 0.2: 10.0, 0.4: 20.0, float("inf"): 20.0}
    assert median_from_buckets(buckets) == pytest.approx(0.2)
    assert median_from_buckets({float("inf"): 0.0}) is None


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("5m", 300), ("1h", 3600), ("30", 30)])
def test_window_durations(text: str, seconds: float) -> None:
    assert parse_window(text) == seconds


def test_the_grafana_dashboard_queries_only_metrics_the_router_exports() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        # Matched as edgefleet[:_]router_...: Prometheus 2 stores the colon as "_".
        for name in re.findall(r"edgefleet\[:_\]router_[a-z_]+", target["expr"])
    }
    # After traffic every series the router can export has a sample.
    exported = {sample.name for family in traffic().registry.collect() for sample in family.samples}
    queried = {name.replace("[:_]", ":") for name in queried}
    assert queried and queried <= exported, queried - exported
