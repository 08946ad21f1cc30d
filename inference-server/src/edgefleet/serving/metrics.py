"""Prometheus metrics, named like vLLM's so its dashboards carry over.

Each server owns its registry: tests run several servers in one process, and a
vLLM engine in the same process registers its own metrics globally.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)


class ServerMetrics:
    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        self.model_name = model_name
        labels = ["model_name"]
        self.running = Gauge(
            "vllm:num_requests_running",
            "Requests generating now.",
            labels,
            registry=self.registry,
        )
        self.waiting = Gauge(
            "vllm:num_requests_waiting",
            "Requests admitted and waiting for a slot.",
            labels,
            registry=self.registry,
        )
        self.kv_cache_usage = Gauge(
            "vllm:kv_cache_usage_perc",
            "Share of KV-cache in use (1 = full).",
            labels,
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "vllm:time_to_first_token_seconds",
            "Arrival to first generated text.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.e2e_latency = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Arrival to last token.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_time = Histogram(
            "vllm:request_queue_time_seconds",
            "Time waiting for a slot.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens",
            "Prompt tokens processed.",
            labels,
            registry=self.registry,
        )
        self.generation_tokens = Counter(
            "vllm:generation_tokens",
            "Tokens generated.",
            labels,
            registry=self.registry,
        )
        self.request_success = Counter(
            "vllm:request_success",
            "Finished requests by finish reason.",
            [*labels, "finished_reason"],
            registry=self.registry,
        )
        self.request_outcomes = Counter(
            "edgefleet:request_outcomes",
            "Every request by outcome: ok, cancelled, invalid_argument, not_found, "
            "resource_exhausted, unavailable, error.",
            [*labels, "outcome"],
            registry=self.registry,
        )

    def watch_load(
        self,
        running: Callable[[], float],
        waiting: Callable[[], float],
        kv_cache: Callable[[], float],
    ) -> None:
        """Gauges read live values at scrape time, so they are never stale."""
        self.running.labels(self.model_name).set_function(running)
        self.waiting.labels(self.model_name).set_function(waiting)
        self.kv_cache_usage.labels(self.model_name).set_function(kv_cache)

    def outcome(self, outcome: str) -> None:
        self.request_outcomes.labels(self.model_name, outcome).inc()
