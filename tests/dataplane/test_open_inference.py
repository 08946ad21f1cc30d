"""KServe Open Inference Protocol v2, through a standard client and raw stubs.

tritonclient carries its own generated code for inference.GRPCInferenceService,
so its calls prove wire compatibility, not just agreement with ourselves. It
runs in a child process (see tests/support/oip_standard_client.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.oip import grpc_predict_v2_pb2 as oip
from edgefleet.oip import grpc_predict_v2_pb2_grpc as oip_grpc
from tests.support.model_server import ModelServer

MODEL = "smollm2-135m"
CLIENT = Path(__file__).parents[1] / "support" / "oip_standard_client.py"


def standard_client(server: ModelServer, scenario: str) -> dict:
    result = subprocess.run(
        [sys.executable, str(CLIENT), server.target, scenario],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(result.stdout)


def test_standard_client_sees_live_ready_server_and_model(model_server: ModelServer) -> None:
    reply = standard_client(model_server, "metadata")["ok"]
    assert reply == {
        "live": True,
        "ready": True,
        "model_ready": True,
        "server_name": "edgefleet",
        "inputs": [["text_input", "BYTES"]],
        "outputs": [["text_output", "BYTES"]],
    }


def test_standard_client_model_infer_answers(model_server: ModelServer) -> None:
    reply = standard_client(model_server, "infer")["ok"]
    assert "Paris" in reply["text"]
    assert reply["completion_tokens"] > 0
    assert reply["engine"] == "llamacpp"


@pytest.mark.parametrize(
    ("scenario", "status", "mentions"),
    [
        ("wrong-datatype", "INVALID_ARGUMENT", "must be BYTES"),
        ("two-prompts", "INVALID_ARGUMENT", "exactly one prompt"),
        ("shape-mismatch", "INVALID_ARGUMENT", "shape [3] says 3 elements"),
        ("unknown-input", "INVALID_ARGUMENT", "unknown input"),
        ("no-text", "INVALID_ARGUMENT", "missing the BYTES input tensor"),
        ("bad-parameter-type", "INVALID_ARGUMENT", "datatype"),
        ("unknown-model", "NOT_FOUND", "gpt-17"),
    ],
)
def test_malformed_requests_get_status_and_message(
    model_server: ModelServer, scenario: str, status: str, mentions: str
) -> None:
    reply = standard_client(model_server, scenario)
    assert reply["status"] == f"StatusCode.{status}"
    assert mentions in reply["message"]


def test_contents_encoding_and_request_parameters(model_server: ModelServer) -> None:
    stub = oip_grpc.GRPCInferenceServiceStub(model_server.channel)
    request = oip.ModelInferRequest(model_name=MODEL, id="req-1")
    request.parameters["max_tokens"].int64_param = 3
    request.parameters["temperature"].double_param = 0.0
    tensor = request.inputs.add(name="text_input", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(b"What is the capital of France?")
    reply = stub.ModelInfer(request)
    assert reply.id == "req-1"
    (output,) = reply.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("text_output", "BYTES", [1])
    assert len(output.contents.bytes_contents) == 1 and not reply.raw_output_contents
    assert reply.parameters["completion_tokens"].int64_param == 3
    assert reply.parameters["finish_reason"].string_param == "length"
