"""The router's OpenAI-compatible HTTP endpoint, driven by the unmodified `openai` SDK."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.routing.conftest import Stack
from tests.support.routing import SYSTEM, ask, running_router

QUESTION = "What is the capital of France?"
MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
ALL_LOCAL = {
    "complexity": {"threshold": 1.0},
    "capacity": {"maxQueueDepth": 1000, "maxPredictedTtftMs": 3_600_000},
}


def test_sdk_gets_the_same_answers_as_grpc_streaming_included(stack: Stack, tmp_path: Path) -> None:
    with running_router(tmp_path, ALL_LOCAL, [stack.local.target], stack.egress.target) as router:
        client = openai.OpenAI(base_url=router.http_url, api_key="unused", max_retries=0)
        grpc_answer, _ = ask(router.stub, QUESTION, max_tokens=24)

        raw = client.chat.completions.with_raw_response.create(
            model="hybrid", messages=MESSAGES, max_tokens=24, temperature=0
        )
        completion = raw.parse()
        assert completion.choices[0].message.content == grpc_answer.text
        assert completion.choices[0].finish_reason in ("stop", "length")
        assert completion.usage.completion_tokens == grpc_answer.usage.completion_tokens
        assert raw.headers["x-edgefleet-route"] == "local"
        assert raw.headers["x-edgefleet-route-reason"] == "complexity.low"

        with client.chat.completions.with_streaming_response.create(
            model="default",
            messages=MESSAGES,
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        ) as streamed:
            assert streamed.headers["x-edgefleet-route"] == "local"
            chunks = list(streamed.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == grpc_answer.text
        assert chunks[-1].usage.completion_tokens == grpc_answer.usage.completion_tokens

        listed = [model.id for model in client.models.list()]
        assert listed == ["hybrid", "default"]


def test_sdk_sees_openai_style_errors(stack: Stack, tmp_path: Path) -> None:
    with running_router(tmp_path, ALL_LOCAL, [stack.local.target], stack.egress.target) as router:
        client = openai.OpenAI(base_url=router.http_url, api_key="unused", max_retries=0)
        with pytest.raises(openai.NotFoundError, match="not served here"):
            client.chat.completions.create(model="gpt-9", messages=MESSAGES)
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="hybrid", messages=MESSAGES, max_tokens=100_000)
        assert caught.value.body["param"] == "max_tokens"
        with pytest.raises(openai.BadRequestError, match="unknown role"):
            client.chat.completions.create(
                model="hybrid", messages=[{"role": "wizard", "content": "hi"}]
            )


def test_sensitive_hint_through_http_keeps_the_request_local(stack: Stack, tmp_path: Path) -> None:
    spec = {"complexity": {"threshold": 0.0}}
    with running_router(tmp_path, spec, [stack.local.target], stack.egress.target) as router:
        client = openai.OpenAI(base_url=router.http_url, api_key="unused", max_retries=0)
        sent_before = len(stack.proxy.received())
        raw = client.chat.completions.with_raw_response.create(
            model="hybrid",
            messages=MESSAGES,
            max_tokens=8,
            extra_headers={"x-edgefleet-sensitivity": "sensitive"},
        )
        assert raw.headers["x-edgefleet-route"] == "local"
        assert raw.headers["x-edgefleet-route-reason"] == "privacy.client_marked"
        assert raw.parse().edgefleet["route"]["reason"] == "privacy.client_marked"  # type: ignore[attr-defined]
        assert len(stack.proxy.received()) == sent_before
