"""Answers from the vLLM engine on the converted SmolLM2, through the real server over gRPC."""

from __future__ import annotations

from edgefleet.v1 import inference_pb2 as pb
from tests.support.model_server import ModelServer

CAPITAL = "What is the capital of France?"


def greedy(max_tokens: int = 48, **extra: object) -> pb.SamplingParams:
    return pb.SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=7, **extra)


def test_unary_answer_names_paris(vllm_server: ModelServer) -> None:
    reply = vllm_server.stub.Generate(pb.GenerateRequest(prompt=CAPITAL, sampling=greedy()))
    assert "Paris" in reply.text
    assert reply.finish_reason == pb.FINISH_REASON_STOP
    assert reply.usage.prompt_tokens > 10
    assert 0 < reply.usage.completion_tokens < 48
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert 0 < reply.timings.time_to_first_token_ms <= reply.timings.total_ms
    assert (reply.served_by.backend, reply.served_by.engine, reply.served_by.model) == (
        "local",
        "vllm",
        "smollm2-135m",
    )


def test_stream_answer_names_paris_and_ends_with_usage(vllm_server: ModelServer) -> None:
    chunks = list(
        vllm_server.stub.GenerateStream(pb.GenerateRequest(prompt=CAPITAL, sampling=greedy()))
    )
    *deltas, final = chunks
    assert final.is_final and not any(chunk.is_final for chunk in deltas)
    assert len(deltas) >= 2, "an answer of several tokens arrives in several messages"
    assert "Paris" in "".join(chunk.delta for chunk in deltas)
    assert final.usage.completion_tokens >= len(deltas)
    assert final.finish_reason == pb.FINISH_REASON_STOP
    assert final.served_by.engine == "vllm"
    assert len({chunk.id for chunk in chunks}) == 1


def test_streamed_text_equals_unary_text_at_temperature_zero(vllm_server: ModelServer) -> None:
    request = pb.GenerateRequest(prompt="Name three fruits.", sampling=greedy(64))
    unary = vllm_server.stub.Generate(request)
    streamed = "".join(c.delta for c in vllm_server.stub.GenerateStream(request))
    assert streamed == unary.text
    assert unary.text.strip()


def test_same_seed_same_answer_when_sampling(vllm_server: ModelServer) -> None:
    sampling = pb.SamplingParams(max_tokens=32, temperature=1.0, seed=1234)
    request = pb.GenerateRequest(prompt="Tell me a fact about cats.", sampling=sampling)
    first = vllm_server.stub.Generate(request).text
    second = vllm_server.stub.Generate(request).text
    assert first == second


def test_chat_messages_with_own_system_prompt(vllm_server: ModelServer) -> None:
    request = pb.GenerateRequest(
        messages=[
            pb.ChatMessage(role="system", content="You answer with one word only."),
            pb.ChatMessage(role="user", content=CAPITAL),
        ],
        sampling=greedy(8),
    )
    assert "Paris" in vllm_server.stub.Generate(request).text


def test_stop_string_ends_answer_before_it(vllm_server: ModelServer) -> None:
    prompt = "Count from 1 to 10, separated by commas."
    free = vllm_server.stub.Generate(pb.GenerateRequest(prompt=prompt, sampling=greedy(48)))
    assert "5" in free.text, free.text
    stopped = vllm_server.stub.Generate(
        pb.GenerateRequest(prompt=prompt, sampling=greedy(48, stop=["5"]))
    )
    assert stopped.finish_reason == pb.FINISH_REASON_STOP
    assert "5" not in stopped.text
    assert free.text.startswith(stopped.text)


def test_max_tokens_ends_with_length(vllm_server: ModelServer) -> None:
    reply = vllm_server.stub.Generate(
        pb.GenerateRequest(prompt="Tell a long story.", sampling=greedy(5, ignore_eos=True))
    )
    assert reply.finish_reason == pb.FINISH_REASON_LENGTH
    assert reply.usage.completion_tokens == 5


def test_model_list_names_the_vllm_engine(vllm_server: ModelServer) -> None:
    (model,) = vllm_server.stub.ListModels(pb.ListModelsRequest()).models
    assert (model.name, model.engine, model.ready) == ("smollm2-135m", "vllm", True)
    assert (model.context_length, model.max_concurrent) == (2048, 16)
    # The sha256 of the GGUF file the converted weights came from.
    assert len(model.sha256) == 64
