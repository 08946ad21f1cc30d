"""`edgefleet report`: what routing saved, read from a router's Prometheus metrics endpoint.

The window is the difference of two readings of the router's counters taken `window`
seconds apart (the counters only grow, so the difference is exactly that window's traffic);
without a window, the figures since the router started. A router that restarts between the
readings resets its counters: the report says so rather than print negative figures. For
windows of hours, ask Prometheus (`increase(...[1h])`, as the chart's Grafana dashboard does).
"""

from __future__ import annotations

import urllib.request
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

_PREFIX = "edgefleet:router_"


@dataclass
class Reading:
    """The router's counters at one moment, summed over the labels the report ignores."""

    # target -> requests that ended with that route (served or refused)
    requests: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    cloud_cost: float = 0.0
    all_cloud_cost: float = 0.0
    # target -> (upper bound, cumulative count) of the TTFT histogram, and its sum and count
    ttft_buckets: dict[str, dict[float, float]] = field(default_factory=lambda: defaultdict(dict))
    ttft_sum: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    ttft_count: dict[str, float] = field(default_factory=lambda: defaultdict(float))


def parse(text: str) -> Reading:
    reading = Reading()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == f"{_PREFIX}routes_total":
                reading.requests[labels["target"]] += value
            elif name == f"{_PREFIX}cloud_cost_total":
                reading.cloud_cost += value
            elif name == f"{_PREFIX}all_cloud_cost_total":
                reading.all_cloud_cost += value
            elif name == f"{_PREFIX}ttft_seconds_bucket":
                reading.ttft_buckets[labels["target"]][float(labels["le"])] = value
            elif name == f"{_PREFIX}ttft_seconds_sum":
                reading.ttft_sum[labels["target"]] += value
            elif name == f"{_PREFIX}ttft_seconds_count":
                reading.ttft_count[labels["target"]] += value
    return reading


def difference(later: Reading, earlier: Reading) -> Reading:
    """The traffic between two readings; ValueError when a counter went backwards."""
    out = Reading()
    for target in later.requests:
        out.requests[target] = later.requests[target] - earlier.requests.get(target, 0.0)
    out.cloud_cost = later.cloud_cost - earlier.cloud_cost
    out.all_cloud_cost = later.all_cloud_cost - earlier.all_cloud_cost
    for target, buckets in later.ttft_buckets.items():
        before = earlier.ttft_buckets.get(target, {})
        out.ttft_buckets[target] = {le: n - before.get(le, 0.0) for le, n in buckets.items()}
        out.ttft_sum[target] = later.ttft_sum[target] - earlier.ttft_sum.get(target, 0.0)
        out.ttft_count[target] = later.ttft_count[target] - earlier.ttft_count.get(target, 0.0)
    counts = [*out.requests.values(), out.cloud_cost, *out.ttft_count.values()]
    if any(value < 0 for value in counts):
        raise ValueError("the router's counters went backwards: it restarted during the window")
    return out


def median_from_buckets(buckets: dict[float, float]) -> float | None:
    """The median as Prometheus' histogram_quantile(0.5, ...) estimates it, in seconds."""
    total = buckets.get(float("inf"), 0.0)
    if total <= 0:
        return None
    rank, lower, below = total / 2, 0.0, 0.0
    for upper in sorted(buckets):
        count = buckets[upper]
        if count >= rank:
            if upper == float("inf"):
                return lower
            share = (rank - below) / (count - below) if count > below else 0.0
            return lower + (upper - lower) * share
        lower, below = upper, count
    return None


def rows(reading: Reading) -> list[tuple[str, str]]:
    requests = sum(reading.requests.values())
    local = reading.requests.get("local", 0.0)
    saved = reading.all_cloud_cost - reading.cloud_cost
    share = f"{local / requests:.1%}" if requests else "n/a"
    out = [
        ("requests", f"{requests:.0f}"),
        ("served locally", f"{local:.0f}"),
        ("served by the cloud", f"{reading.requests.get('cloud', 0.0):.0f}"),
        ("refused", f"{reading.requests.get('reject', 0.0):.0f}"),
        ("local share", share),
        ("cloud spend", f"{reading.cloud_cost:.4f}"),
        ("all-cloud cost (same traffic)", f"{reading.all_cloud_cost:.4f}"),
        ("saved", f"{saved:.4f}"),
        (
            "saved share",
            f"{saved / reading.all_cloud_cost:.1%}" if reading.all_cloud_cost else "n/a",
        ),
    ]
    for target in ("local", "cloud"):
        median = median_from_buckets(reading.ttft_buckets.get(target, {}))
        count = reading.ttft_count.get(target, 0.0)
        mean = reading.ttft_sum.get(target, 0.0) / count if count else None
        out.append(
            (
                f"{target} TTFT p50 / mean (ms)",
                "n/a"
                if median is None or mean is None
                else f"{median * 1000:.0f} / {mean * 1000:.0f}",
            )
        )
    return out


def table(pairs: Iterable[tuple[str, str]], title: str) -> str:
    pairs = list(pairs)
    width = max(len(name) for name, _ in pairs)
    lines = [title, ""] + [f"{name.ljust(width)}  {value}" for name, value in pairs]
    return "\n".join(lines)


def fetch(url: str, timeout: float) -> Reading:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return parse(response.read().decode("utf-8"))


def parse_window(text: str) -> float:
    """Seconds in '90s', '5m', '1h' or a bare number of seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    seconds = float(number) * units[unit]
    if seconds <= 0:
        raise ValueError(f"the window must be positive, got {text!r}")
    return seconds
