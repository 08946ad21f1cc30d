"""Answers from the real SmolLM2 through the real server over gRPC."""

from __future__ import annotations

import grpc

from edgefleet.v1 import inference_pb2 as pb
from tests.support.model_server import ModelServer

CAPITAL = "What is the capital of France?"


def greedy(max_tokens: int = 48, **extra: object) -> pb.SamplingParams:
    return pb.SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=7, **extra)


def test_unary_answer_names_paris(model_server: ModelServer) -> None:
    reply = model_server.stub.Generate(pb.GenerateRequest(prompt=CAPITAL, sampling=greedy()))
    assert "Paris" in reply.text
    assert reply.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    assert reply.usage.prompt_tokens > 10
    assert reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert 0 < reply.timings.time_to_first_token_ms <= reply.timings.total_ms
    assert (reply.served_by.backend, reply.served_by.engine, reply.served_by.model) == (
        "local",
        "llamacpp",
        "smollm2-135m",
    )


def test_stream_answer_names_paris_and_ends_with_usage(model_server: ModelServer) -> None:
    chunks = list(
        model_server.stub.GenerateStream(pb.GenerateRequest(prompt=CAPITAL, sampling=greedy()))
    )
    *deltas, final = chunks
    assert final.is_final and not any(chunk.is_final for chunk in deltas)
    assert len(deltas) >= 2, "an answer of several tokens arrives in several messages"
    assert "Paris" in "".join(chunk.delta for chunk in deltas)
    assert final.usage.completion_tokens >= len(deltas)
    assert final.served_by.engine == "llamacpp"
    assert len({chunk.id for chunk in chunks}) == 1


def test_streamed_text_equals_unary_text_with_same_seed_at_temperature_zero(
    model_server: ModelServer,
) -> None:
    request = pb.GenerateRequest(prompt="Name three fruits.", sampling=greedy(64))
    unary = model_server.stub.Generate(request)
    streamed = "".join(c.delta for c in model_server.stub.GenerateStream(request))
    assert streamed == unary.text
    assert unary.text.strip()


def test_same_seed_same_answer_when_sampling(model_server: ModelServer) -> None:
    sampling = pb.SamplingParams(max_tokens=32, temperature=1.0, seed=1234)
    request = pb.GenerateRequest(prompt="Tell me a fact about cats.", sampling=sampling)
    first = model_server.stub.Generate(request).text
    second = model_server.stub.Generate(request).text
    assert first == second


def test_chat_messages_and_custom_system_prompt(model_server: ModelServer) -> None:
    request = pb.GenerateRequest(
        messages=[
            pb.ChatMessage(role="system", content="You answer with one word only."),
            pb.ChatMessage(role="user", content=CAPITAL),
        ],
        sampling=greedy(8),
    )
    assert "Paris" in model_server.stub.Generate(request).text


def test_stop_string_ends_answer_before_it(model_server: ModelServer) -> None:
    free = model_server.stub.Generate(
        pb.GenerateRequest(prompt="Count from 1 to 10, separated by commas.", sampling=greedy(48))
    )
    assert "5" in free.text, free.text
    stopped = model_server.stub.Generate(
        pb.GenerateRequest(
            prompt="Count from 1 to 10, separated by commas.", sampling=greedy(48, stop=["5"])
        )
    )
    assert stopped.finish_reason == pb.FINISH_REASON_STOP
    assert "5" not in stopped.text
    assert free.text.startswith(stopped.text)


def test_max_tokens_reached_reports_length(model_server: ModelServer) -> None:
    reply = model_server.stub.Generate(
        pb.GenerateRequest(
            prompt="Write a long story about a dragon.", sampling=greedy(5, ignore_eos=True)
        )
    )
    assert reply.finish_reason == pb.FINISH_REASON_LENGTH
    assert reply.usage.completion_tokens == 5


def test_model_named_default_or_by_name_is_served(model_server: ModelServer) -> None:
    for name in ("", "default", "smollm2-135m"):
        reply = model_server.stub.Generate(
            pb.GenerateRequest(model=name, prompt=CAPITAL, sampling=greedy(4))
        )
        assert reply.served_by.model == "smollm2-135m"


def test_list_models_describes_the_loaded_model(model_server: ModelServer) -> None:
    (model,) = model_server.stub.ListModels(pb.ListModelsRequest()).models
    assert model.name == "smollm2-135m"
    assert model.engine == "llamacpp"
    assert model.context_length == 2048
    assert model.max_concurrent == 2
    assert model.instances == (2 if model_server.label == "pool" else 1)
    assert model.ready
    assert model.sha256.startswith("b179c952") and model.sha256.endswith("db53")


def test_unary_deadline_exceeded_is_reported(model_server: ModelServer) -> None:
    request = pb.GenerateRequest(
        prompt="Write a long story.", sampling=greedy(400, ignore_eos=True)
    )
    try:
        model_server.stub.Generate(request, timeout=0.3)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    else:
        raise AssertionError("a 400-token answer cannot finish in 0.3 s")
