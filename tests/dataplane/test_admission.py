"""Admission control, cancellation and deadlines on the real server.

The session server generates 2 requests at once and queues 2 more. Long
answers (ignore_eos) keep slots busy for seconds, so the states below are
reached deterministically and observed through GetStats, not guessed by time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest

from edgefleet.v1 import inference_pb2 as pb
from tests.support.model_server import ModelServer

LONG = pb.SamplingParams(max_tokens=300, temperature=0.0, ignore_eos=True)
SHORT = pb.SamplingParams(max_tokens=4, temperature=0.0)


def wait_until(what: str, condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Poll a server-side condition; fail with its name after the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s}s waiting for: {what}")


def stats(server: ModelServer) -> pb.GetStatsResponse:
    return server.stub.GetStats(pb.GetStatsRequest())


@pytest.fixture(autouse=True)
def idle_server(model_server: ModelServer) -> Iterator[None]:
    wait_until("server idle before test", lambda: stats(model_server).requests_running == 0)
    yield
    wait_until("server idle after test", lambda: stats(model_server).requests_running == 0)


def start_stream(server: ModelServer, sampling: pb.SamplingParams = LONG) -> grpc.Future:
    return server.stub.GenerateStream(pb.GenerateRequest(prompt="Tell a story.", sampling=sampling))


def test_requests_beyond_capacity_fail_fast_while_admitted_ones_finish(
    model_server: ModelServer,
) -> None:
    running = [start_stream(model_server) for _ in range(2)]
    for stream in running:
        assert next(stream).delta is not None  # generating: holds a slot
    queued_results: list[list[pb.GenerateStreamResponse]] = []
    queued_threads = [
        threading.Thread(target=lambda: queued_results.append(list(start_stream(model_server))))
        for _ in range(2)
    ]
    for thread in queued_threads:
        thread.start()
    wait_until("two requests queued", lambda: stats(model_server).requests_waiting == 2)

    refused_at = time.monotonic()
    with pytest.raises(grpc.RpcError) as refused:
        model_server.stub.Generate(pb.GenerateRequest(prompt="Hi", sampling=SHORT))
    assert time.monotonic() - refused_at < 1.0, "refusal must not wait for a slot"
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "capacity" in refused.value.details()
    trailers = dict(refused.value.trailing_metadata())
    assert int(trailers["retry-after-ms"]) > 0
    assert trailers["grpc-retry-pushback-ms"] == trailers["retry-after-ms"]

    for stream in running:
        *_, final = stream
        assert final.is_final and final.finish_reason == pb.FINISH_REASON_LENGTH
        assert final.usage.completion_tokens == 300
    for thread in queued_threads:
        thread.join(timeout=120)
    assert len(queued_results) == 2
    for chunks in queued_results:
        assert chunks[-1].finish_reason == pb.FINISH_REASON_LENGTH
        assert chunks[-1].timings.queue_ms > 0


def test_cancelling_a_stream_frees_its_slot_for_the_next_request(model_server: ModelServer) -> None:
    first, second = start_stream(model_server), start_stream(model_server)
    next(first), next(second)
    assert stats(model_server).requests_running == 2
    first.cancel()
    wait_until("slot freed after cancel", lambda: stats(model_server).requests_running == 1, 2.0)
    reply = model_server.stub.Generate(pb.GenerateRequest(prompt="Hi", sampling=SHORT))
    # Admitted straight away although `second` still has ~290 tokens to go.
    assert reply.timings.queue_ms < 50
    assert stats(model_server).requests_running == 1
    second.cancel()


def test_deadline_stops_generation_inside_the_server(model_server: ModelServer) -> None:
    stream = model_server.stub.GenerateStream(
        pb.GenerateRequest(prompt="Tell a story.", sampling=LONG), timeout=0.5
    )
    with pytest.raises(grpc.RpcError) as expired:
        list(stream)
    assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # 300 tokens take several seconds; the slot must be free long before that.
    wait_until("slot freed after deadline", lambda: stats(model_server).requests_running == 0, 1.5)
