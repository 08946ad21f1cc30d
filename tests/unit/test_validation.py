from __future__ import annotations

import pytest

from edgefleet.serving.config import ServerConfig
from edgefleet.serving.errors import InvalidArgument, ModelNotFound
from edgefleet.serving.validation import generation_request
from edgefleet.v1 import inference_pb2 as pb

CONFIG = ServerConfig(system_prompt="Be brief.", max_tokens_cap=100, default_max_tokens=50)


def test_prompt_becomes_user_message_after_default_system_prompt() -> None:
    request = generation_request(pb.GenerateRequest(prompt="Hi"), CONFIG, "m")
    assert [(m.role, m.content) for m in request.messages] == [
        ("system", "Be brief."),
        ("user", "Hi"),
    ]
    assert request.sampling.max_tokens == 50
    assert request.sampling.temperature == CONFIG.default_temperature
    assert request.request_id


def test_own_system_message_replaces_the_default() -> None:
    request = generation_request(
        pb.GenerateRequest(
            messages=[
                pb.ChatMessage(role="system", content="Pirate voice."),
                pb.ChatMessage(role="user", content="Hi"),
            ]
        ),
        CONFIG,
        "m",
    )
    assert [m.role for m in request.messages] == ["system", "user"]
    assert request.messages[0].content == "Pirate voice."


def test_sampling_fields_are_carried_over() -> None:
    sampling = pb.SamplingParams(
        max_tokens=7, temperature=0.0, top_p=0.5, seed=3, stop=["\n"], ignore_eos=True
    )
    request = generation_request(
        pb.GenerateRequest(prompt="Hi", sampling=sampling, request_id="r"), CONFIG, "m"
    )
    assert request.request_id == "r"
    assert (
        request.sampling.max_tokens,
        request.sampling.temperature,
        request.sampling.top_p,
        request.sampling.seed,
        request.sampling.stop,
        request.sampling.ignore_eos,
    ) == (7, 0.0, 0.5, 3, ("\n",), True)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.GenerateRequest(), "messages"),
        (
            pb.GenerateRequest(prompt="x", sampling=pb.SamplingParams(max_tokens=101)),
            "sampling.max_tokens",
        ),
        (pb.GenerateRequest(prompt="x", sampling=pb.SamplingParams(top_p=1.5)), "sampling.top_p"),
        (
            pb.GenerateRequest(prompt="x", sampling=pb.SamplingParams(temperature=float("nan"))),
            "sampling.temperature",
        ),
        (
            pb.GenerateRequest(prompt="x", sampling=pb.SamplingParams(stop=["a"] * 9)),
            "sampling.stop",
        ),
        (
            pb.GenerateRequest(messages=[pb.ChatMessage(role="tool", content="x")]),
            "messages[0].role",
        ),
    ],
)
def test_invalid_fields_are_named(request_: pb.GenerateRequest, field: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        generation_request(request_, CONFIG, "m")
    assert error.value.field == field
    assert str(error.value).startswith(field + ":")


def test_unknown_model_lists_what_is_served() -> None:
    with pytest.raises(ModelNotFound, match="served models: m"):
        generation_request(pb.GenerateRequest(model="x", prompt="hi"), CONFIG, "m")
