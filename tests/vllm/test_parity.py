"""The same requests through the llama.cpp and the vLLM engine: same contract, same metadata.

A client (and the router) must not be able to tell the engines apart except by
`served_by.engine`: the same fields are set, finish reasons and usage mean the
same, and every bad input gets the same status code naming the same field.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.message import Message

from edgefleet.v1 import inference_pb2 as pb
from tests.dataplane.test_bad_input import CASES
from tests.support.model_server import ModelServer

CAPITAL = pb.GenerateRequest(
    prompt="What is the capital of France?",
    sampling=pb.SamplingParams(max_tokens=48, temperature=0.0, seed=7),
)


def set_fields(message: Message) -> set[str]:
    """Names of the fields set, nested ones as parent.child."""
    names = set()
    for field, value in message.ListFields():
        names.add(field.name)
        if isinstance(value, Message):  # a nested message, not a repeated field
            names |= {f"{field.name}.{inner}" for inner in set_fields(value)}
    return names


def test_unary_responses_have_the_same_schema_and_metadata(
    llamacpp_server: ModelServer, vllm_server: ModelServer
) -> None:
    llama = llamacpp_server.stub.Generate(CAPITAL)
    vllm = vllm_server.stub.Generate(CAPITAL)
    assert set_fields(llama) == set_fields(vllm)
    assert "Paris" in llama.text and "Paris" in vllm.text
    assert llama.finish_reason == vllm.finish_reason == pb.FINISH_REASON_STOP
    # One chat template, one vocabulary: the same prompt is the same tokens.
    assert llama.usage.prompt_tokens == vllm.usage.prompt_tokens
    for reply in (llama, vllm):
        assert reply.usage.total_tokens == (
            reply.usage.prompt_tokens + reply.usage.completion_tokens
        )
    assert (llama.served_by.engine, vllm.served_by.engine) == ("llamacpp", "vllm")
    same = ("backend", "model", "instance")
    assert [getattr(llama.served_by, f) for f in same] == [getattr(vllm.served_by, f) for f in same]


def test_streams_have_the_same_schema_and_metadata(
    llamacpp_server: ModelServer, vllm_server: ModelServer
) -> None:
    llama = list(llamacpp_server.stub.GenerateStream(CAPITAL))
    vllm = list(vllm_server.stub.GenerateStream(CAPITAL))
    for chunks in (llama, vllm):
        *deltas, final = chunks
        assert final.is_final and all(not chunk.is_final for chunk in deltas)
        assert all(set_fields(chunk) == {"id", "delta"} for chunk in deltas)
        assert "Paris" in "".join(chunk.delta for chunk in deltas)
    assert set_fields(llama[-1]) == set_fields(vllm[-1])
    assert llama[-1].finish_reason == vllm[-1].finish_reason
    assert llama[-1].usage.prompt_tokens == vllm[-1].usage.prompt_tokens


def test_model_list_and_stats_have_the_same_schema(
    llamacpp_server: ModelServer, vllm_server: ModelServer
) -> None:
    models = [s.stub.ListModels(pb.ListModelsRequest()) for s in (llamacpp_server, vllm_server)]
    assert set_fields(models[0]) == set_fields(models[1])
    (llama, vllm), keys = (
        [m.models[0] for m in models],
        ("name", "context_length", "ready", "sha256", "instances"),
    )
    assert [getattr(llama, k) for k in keys] == [getattr(vllm, k) for k in keys]
    stats = [s.stub.GetStats(pb.GetStatsRequest()) for s in (llamacpp_server, vllm_server)]
    assert stats[0].ready and stats[1].ready
    assert stats[0].requests_running == stats[1].requests_running == 0


@pytest.mark.parametrize(("case", "request_", "code", "mentions"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("method", ["Generate", "GenerateStream"])
def test_bad_input_gets_the_same_status_from_both_engines(
    llamacpp_server: ModelServer,
    vllm_server: ModelServer,
    method: str,
    case: str,
    request_: pb.GenerateRequest,
    code: grpc.StatusCode,
    mentions: str,
) -> None:
    refusals = []
    for server in (llamacpp_server, vllm_server):
        call = getattr(server.stub, method)
        with pytest.raises(grpc.RpcError) as error:
            reply = call(request_, timeout=30)
            if method == "GenerateStream":
                list(reply)
        refusals.append((error.value.code(), error.value.details()))
    (llama_code, llama_details), (vllm_code, vllm_details) = refusals
    assert llama_code == vllm_code == code, vllm_details
    assert mentions in vllm_details
    # The same field, named first (token counts in the message may differ).
    assert llama_details.split(":")[0] == vllm_details.split(":")[0]


def test_vllm_server_still_answers_after_bad_inputs(vllm_server: ModelServer) -> None:
    reply = vllm_server.stub.Generate(
        pb.GenerateRequest(prompt="Say hi.", sampling=pb.SamplingParams(max_tokens=4))
    )
    assert reply.usage.completion_tokens > 0
