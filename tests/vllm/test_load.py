"""Cancellation and concurrency on the vLLM engine.

A cancelled stream must be aborted inside vLLM, not merely dropped by gRPC:
the engine's processes stop computing and its KV cache empties. Sixteen
streams at once must all finish, faster together than one after another
(vLLM's continuous batching).
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable, Iterator

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.v1 import inference_pb2 as pb
from tests.support.model_server import ModelServer

LONG = pb.SamplingParams(max_tokens=500, temperature=0.0, ignore_eos=True)
STORY = "Tell a story."


def wait_until(what: str, condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for: {what}")


def stats(server: ModelServer) -> pb.GetStatsResponse:
    return server.stub.GetStats(pb.GetStatsRequest())


def gauge(server: ModelServer, name: str) -> float:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not in {server.metrics_url}")


def engine_cpu_seconds(server: ModelServer) -> float:
    """CPU time of vLLM's engine core and worker processes (the server's children)."""
    children = psutil.Process(server.process.pid).children(recursive=True)
    total = 0.0
    for child in children:
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def engine_cores_busy(server: ModelServer, window_s: float = 1.0) -> float:
    before = engine_cpu_seconds(server)
    time.sleep(window_s)
    return (engine_cpu_seconds(server) - before) / window_s


@pytest.fixture(autouse=True)
def idle_server(vllm_server: ModelServer) -> Iterator[None]:
    wait_until("server idle before test", lambda: stats(vllm_server).requests_running == 0)
    yield
    wait_until("server idle after test", lambda: stats(vllm_server).requests_running == 0)


def test_cancelled_stream_is_aborted_inside_the_engine(vllm_server: ModelServer) -> None:
    idle_load = engine_cores_busy(vllm_server)
    stream = vllm_server.stub.GenerateStream(pb.GenerateRequest(prompt=STORY, sampling=LONG))
    for _ in range(3):
        next(stream)
    assert stats(vllm_server).requests_running == 1
    assert gauge(vllm_server, "vllm:num_requests_running") == 1
    assert gauge(vllm_server, "vllm:kv_cache_usage_perc") > 0
    busy_load = engine_cores_busy(vllm_server)
    assert busy_load > idle_load + 0.3, (idle_load, busy_load)

    stream.cancel()
    # 500 tokens take half a minute here: these hold only if vLLM aborted it.
    wait_until("running count back to 0", lambda: stats(vllm_server).requests_running == 0, 5)
    wait_until("KV cache released", lambda: stats(vllm_server).kv_cache_usage == 0, 5)
    assert gauge(vllm_server, "vllm:num_requests_running") == 0
    assert gauge(vllm_server, "vllm:kv_cache_usage_perc") == 0
    time.sleep(0.5)
    after_load = engine_cores_busy(vllm_server)
    assert after_load < busy_load / 2, (idle_load, busy_load, after_load)


def test_deadline_aborts_the_generation(vllm_server: ModelServer) -> None:
    import grpc

    with pytest.raises(grpc.RpcError) as error:
        list(
            vllm_server.stub.GenerateStream(
                pb.GenerateRequest(prompt=STORY, sampling=LONG), timeout=2.0
            )
        )
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until("running count back to 0", lambda: stats(vllm_server).requests_running == 0, 5)
    wait_until("KV cache released", lambda: stats(vllm_server).kv_cache_usage == 0, 5)


def timed_stream(server: ModelServer, sampling: pb.SamplingParams) -> tuple[int, float, str]:
    """(completion tokens, seconds, finish reason name) of one streamed answer."""
    started = time.monotonic()
    *_, final = server.stub.GenerateStream(pb.GenerateRequest(prompt=STORY, sampling=sampling))
    return (
        final.usage.completion_tokens,
        time.monotonic() - started,
        pb.FinishReason.Name(final.finish_reason),
    )


def test_sixteen_concurrent_streams_all_finish_faster_than_one_at_a_time(
    vllm_server: ModelServer,
) -> None:
    sampling = pb.SamplingParams(max_tokens=48, temperature=0.0, ignore_eos=True)
    timed_stream(vllm_server, sampling)  # warm the prefix cache alike for both runs
    single_tokens, single_s, _ = timed_stream(vllm_server, sampling)
    single_rate = single_tokens / single_s

    results: list[tuple[int, float, str]] = []
    threads = [
        threading.Thread(target=lambda: results.append(timed_stream(vllm_server, sampling)))
        for _ in range(16)
    ]
    started = time.monotonic()
    peak_running = 0
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        peak_running = max(peak_running, stats(vllm_server).requests_running)
        time.sleep(0.05)
    wall_s = time.monotonic() - started

    assert len(results) == 16
    assert all(r == (48, r[1], "FINISH_REASON_LENGTH") for r in results), results
    aggregate_rate = 16 * 48 / wall_s
    assert peak_running > 4, "the requests ran together, not one after another"
    assert aggregate_rate > 1.5 * single_rate, (single_rate, aggregate_rate)
