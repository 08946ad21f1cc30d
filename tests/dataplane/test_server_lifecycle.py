"""Health, reflection, graceful drain and refusing a wrong model file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from edgefleet.serving.model_files import default_model_path
from edgefleet.v1 import inference_pb2 as pb
from tests.support.model_server import ModelServer, running_server, spawn_server

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health_of(server: ModelServer, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(server.channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_health_is_serving_overall_per_service_and_per_model(model_server: ModelServer) -> None:
    for service in ("", "edgefleet.v1.Inference", "inference.GRPCInferenceService", "smollm2-135m"):
        assert health_of(model_server, service) == SERVING, service
    with pytest.raises(grpc.RpcError) as unknown:
        health_of(model_server, "no-such-model")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_inference_oip_and_health_services(model_server: ModelServer) -> None:
    services = set(ProtoReflectionDescriptorDatabase(model_server.channel).get_services())
    assert {
        "edgefleet.v1.Inference",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
    } <= services


def test_sigterm_drains_in_flight_stream_while_health_reports_not_serving() -> None:
    with running_server("--drain-grace-s", "60") as server:
        stream = server.stub.GenerateStream(
            pb.GenerateRequest(
                prompt="Tell a story.",
                sampling=pb.SamplingParams(max_tokens=150, temperature=0, ignore_eos=True),
            )
        )
        assert next(stream).delta is not None
        watch = health_pb2_grpc.HealthStub(server.channel).Watch(health_pb2.HealthCheckRequest())
        assert next(watch).status == SERVING
        server.terminate()
        assert next(watch).status == NOT_SERVING
        with pytest.raises(grpc.RpcError) as refused:
            server.stub.Generate(pb.GenerateRequest(prompt="hi"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in refused.value.details()
        *_, final = stream
        assert final.finish_reason == pb.FINISH_REASON_LENGTH
        assert final.usage.completion_tokens == 150
        watch.cancel()
        assert server.process.wait(timeout=30) == 0


def test_checksum_mismatch_refuses_to_start() -> None:
    wrong = "0" * 64
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgefleet.serving.server",
            "--model",
            str(default_model_path()),
            "--model-sha256",
            wrong,
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "refusing to load" in result.stderr
    assert wrong in result.stderr and "b179c952" in result.stderr


def test_matching_checksum_starts_and_reports_it() -> None:
    server = spawn_server(
        "--model",
        str(default_model_path()),
        "--model-sha256",
        "B179C9523D0E6A0F98A330C7562B682750A6F8C8C15E5BC70EA373728110DB53",
    )
    try:
        server.wait_serving()
        (model,) = server.stub.ListModels(pb.ListModelsRequest()).models
        assert model.name == "SmolLM2-135M-Instruct.Q4_1"
        assert model.sha256.startswith("b179c952")
    finally:
        server.stop()


def run_server(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgefleet.serving.server", "--metrics-listen", "", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_file_that_is_not_a_model_is_refused_clearly(tmp_path: Path) -> None:
    not_a_model = tmp_path / "notes.gguf"
    not_a_model.write_text("not a model")
    result = run_server("--model", str(not_a_model), "--listen", "127.0.0.1:0")
    assert result.returncode == 2
    assert "cannot load notes" in result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr


def test_busy_listen_address_is_refused_clearly(model_server: ModelServer) -> None:
    result = run_server("--listen", model_server.target)
    assert result.returncode == 2
    assert f"cannot listen on {model_server.target}" in result.stderr
    assert "Traceback" not in result.stderr
