"""Prometheus counters move by exactly what a request consumed."""

from __future__ import annotations

import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.v1 import inference_pb2 as pb
from tests.support.model_server import ModelServer

MODEL = {"model_name": "smollm2-135m"}


def scrape(server: ModelServer) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset({**MODEL, **labels}.items())), 0.0)


def test_counters_and_histograms_move_by_request_usage(model_server: ModelServer) -> None:
    before = scrape(model_server)
    reply = model_server.stub.Generate(
        pb.GenerateRequest(
            prompt="Say hello.", sampling=pb.SamplingParams(max_tokens=6, ignore_eos=True)
        )
    )
    after = scrape(model_server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("vllm:prompt_tokens_total") == reply.usage.prompt_tokens
    assert delta("vllm:generation_tokens_total") == 6
    assert delta("vllm:request_success_total", finished_reason="length") == 1
    assert delta("vllm:time_to_first_token_seconds_count") == 1
    assert delta("vllm:e2e_request_latency_seconds_count") == 1
    assert delta("vllm:e2e_request_latency_seconds_sum") == pytest.approx(
        reply.timings.total_ms / 1000, rel=0.05, abs=0.005
    )
    assert delta("edgefleet:request_outcomes_total", outcome="ok") == 1
    assert value(after, "vllm:num_requests_running") == 0
    assert value(after, "vllm:num_requests_waiting") == 0


def test_refused_requests_are_counted_by_outcome(model_server: ModelServer) -> None:
    before = scrape(model_server)
    for request in (pb.GenerateRequest(), pb.GenerateRequest(model="nope", prompt="hi")):
        with pytest.raises(grpc.RpcError):
            model_server.stub.Generate(request)
    after = scrape(model_server)
    for outcome in ("invalid_argument", "not_found"):
        assert (
            value(after, "edgefleet:request_outcomes_total", outcome=outcome)
            - value(before, "edgefleet:request_outcomes_total", outcome=outcome)
            == 1
        )
    assert value(after, "vllm:generation_tokens_total") == value(
        before, "vllm:generation_tokens_total"
    )
