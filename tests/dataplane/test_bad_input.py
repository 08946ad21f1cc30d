"""Every bad input gets its status code and a message naming the field."""

from __future__ import annotations

import grpc
import pytest

from edgefleet.v1 import inference_pb2 as pb
from tests.support.model_server import ModelServer

OK_SAMPLING = pb.SamplingParams(max_tokens=4)
TOO_LONG = "word " * 3000  # well over the 2048-token context

CASES = [
    ("empty request", pb.GenerateRequest(), grpc.StatusCode.INVALID_ARGUMENT, "messages"),
    ("blank prompt", pb.GenerateRequest(prompt="   "), grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
    (
        "prompt and messages",
        pb.GenerateRequest(prompt="hi", messages=[pb.ChatMessage(role="user", content="hi")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "prompt",
    ),
    (
        "empty message content",
        pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content="")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "messages[0].content",
    ),
    (
        "unknown role",
        pb.GenerateRequest(messages=[pb.ChatMessage(role="wizard", content="hi")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "messages[0].role",
    ),
    (
        "only a system message",
        pb.GenerateRequest(messages=[pb.ChatMessage(role="system", content="be nice")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "messages",
    ),
    (
        "prompt longer than the context",
        pb.GenerateRequest(prompt=TOO_LONG, sampling=OK_SAMPLING),
        grpc.StatusCode.INVALID_ARGUMENT,
        "context",
    ),
    (
        "max_tokens zero",
        pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(max_tokens=0)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "sampling.max_tokens",
    ),
    (
        "max_tokens negative",
        pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(max_tokens=-3)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "sampling.max_tokens",
    ),
    (
        "max_tokens above the cap",
        pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(max_tokens=100_000)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "cap of 512",
    ),
    (
        "temperature out of range",
        pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(temperature=5.0)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "sampling.temperature",
    ),
    (
        "top_p zero",
        pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(top_p=0.0)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "sampling.top_p",
    ),
    (
        "empty stop string",
        pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(stop=[""])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "sampling.stop",
    ),
    (
        "unknown model",
        pb.GenerateRequest(model="gpt-17", prompt="hi", sampling=OK_SAMPLING),
        grpc.StatusCode.NOT_FOUND,
        "gpt-17",
    ),
]


@pytest.mark.parametrize(("case", "request_", "code", "mentions"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("method", ["Generate", "GenerateStream"])
def test_bad_input_gets_status_and_field_name(
    model_server: ModelServer,
    method: str,
    case: str,
    request_: pb.GenerateRequest,
    code: grpc.StatusCode,
    mentions: str,
) -> None:
    call = getattr(model_server.stub, method)
    with pytest.raises(grpc.RpcError) as error:
        reply = call(request_, timeout=30)
        if method == "GenerateStream":
            list(reply)
    assert error.value.code() == code, error.value.details()
    assert mentions in error.value.details()


def test_server_still_answers_after_bad_inputs(model_server: ModelServer) -> None:
    reply = model_server.stub.Generate(pb.GenerateRequest(prompt="Say hi.", sampling=OK_SAMPLING))
    assert reply.usage.completion_tokens > 0
