"""Health follows the vLLM engine: when its engine core process dies, the server says so.

Runs last (hence the file name): it kills the session's vLLM engine.
"""

from __future__ import annotations

import signal
import time

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgefleet.v1 import inference_pb2 as pb
from tests.support.model_server import ModelServer


def health(server: ModelServer, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(server.channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_health_turns_not_serving_when_the_engine_core_dies(vllm_server: ModelServer) -> None:
    assert health(vllm_server) == health_pb2.HealthCheckResponse.SERVING
    (core,) = [
        child
        for child in psutil.Process(vllm_server.process.pid).children(recursive=True)
        if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline())
    ]
    core.send_signal(signal.SIGKILL)

    deadline = time.monotonic() + 30
    while health(vllm_server) != health_pb2.HealthCheckResponse.NOT_SERVING:
        assert time.monotonic() < deadline, "health still SERVING 30 s after the engine died"
        time.sleep(0.2)
    assert health(vllm_server, "smollm2-135m") == health_pb2.HealthCheckResponse.NOT_SERVING
    assert not vllm_server.stub.GetStats(pb.GetStatsRequest()).ready
    with pytest.raises(grpc.RpcError) as error:
        vllm_server.stub.Generate(pb.GenerateRequest(prompt="Hi."), timeout=10)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
