"""privacy.onSensitive: redact through the real router, egress and recording cloud stand-in.

A prompt with a person, an e-mail address and a street address goes out with placeholders:
the recording proxy proves none of the values reached the cloud, and every placeholder the
cloud's answer repeated reaches the client as its value, over gRPC (unary and streaming) and
the OpenAI HTTP front end (unary and streaming). The stand-in is a 135M model: an example
turn in the prompt gets it to repeat the message, placeholders included, at temperature 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import openai
import pytest

from edgefleet.routing.privacy import PrivacyScanner
from edgefleet.routing.redaction import PLACEHOLDER, redact, restore
from edgefleet.v1 import inference_pb2 as pb
from tests.routing.conftest import Stack
from tests.support.routing import Router, audit_lines, running_router

PERSON, EMAIL, ADDRESS = "Anna Schmidt", "anna.schmidt@example.com", "42 Elm Street"
PLANTED = (PERSON, EMAIL, ADDRESS, "Schmidt")
MESSAGES = [
    {"role": "system", "content": "Repeat the user's message exactly."},
    {"role": "user", "content": "Call [PHONE_1] today."},
    {"role": "assistant", "content": "Call [PHONE_1] today."},
    {"role": "user", "content": f"Write to {PERSON} at {EMAIL}, {ADDRESS}, Springfield."},
]
REDACTING = {"complexity": {"threshold": 0.0}, "privacy": {"onSensitive": "redact"}}
MAX_TOKENS = 32


def grpc_request() -> pb.GenerateRequest:
    return pb.GenerateRequest(
        messages=[pb.ChatMessage(**message) for message in MESSAGES],
        sampling=pb.SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0),
    )


def grpc_unary(router: Router) -> tuple[str, tuple[str, str]]:
    response = router.stub.Generate(grpc_request(), timeout=300)
    return response.text, (response.route.target, response.route.reason)


def grpc_streaming(router: Router) -> tuple[str, tuple[str, str]]:
    replies = list(router.stub.GenerateStream(grpc_request(), timeout=300))
    final = replies[-1]
    assert final.is_final
    return "".join(r.delta for r in replies), (final.route.target, final.route.reason)


def route_of(headers: Mapping[str, str]) -> tuple[str, str]:
    return headers["x-edgefleet-route"], headers["x-edgefleet-route-reason"]


def sdk(router: Router) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.http_url, api_key="unused", max_retries=0)


def http_unary(router: Router) -> tuple[str, tuple[str, str]]:
    raw = sdk(router).chat.completions.with_raw_response.create(
        model="hybrid",
        messages=MESSAGES,
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    text = raw.parse().choices[0].message.content or ""
    return text, route_of(raw.headers)


def http_streaming(router: Router) -> tuple[str, tuple[str, str]]:
    with sdk(router).chat.completions.with_streaming_response.create(
        model="hybrid",
        messages=MESSAGES,
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
    ) as streamed:
        route = route_of(streamed.headers)
        chunks = list(streamed.parse())
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), route


@pytest.mark.parametrize(
    "ask",
    [grpc_unary, grpc_streaming, http_unary, http_streaming],
    ids=["grpc-unary", "grpc-stream", "http-unary", "http-stream"],
)
def test_the_cloud_sees_placeholders_and_the_client_the_values(
    stack: Stack, tmp_path: Path, ask: Callable[[Router], tuple[str, tuple[str, str]]]
) -> None:
    texts = [message["content"] for message in MESSAGES]
    scanner = PrivacyScanner()
    expected = redact(texts, [scanner.spans(text) for text in texts])
    assert sorted(expected.values.values()) == sorted([PERSON, EMAIL, ADDRESS])
    with running_router(tmp_path, REDACTING, [stack.local.target], stack.egress.target) as router:
        index = len(stack.proxy.received())
        text, route = ask(router)

        assert route == ("cloud", "privacy.redacted")
        (sent,) = stack.proxy.received()[index:]
        assert [m["content"] for m in sent["messages"]] == list(expected.texts)
        leaked = [value for value in PLANTED if value in stack.proxy.received_text()]
        assert leaked == []

        cloud_said = stack.proxy.answer_text(index)
        echoed = set(PLACEHOLDER.findall(cloud_said)) & set(expected.values)
        assert echoed, f"the stand-in repeated no placeholder: {cloud_said!r}"
        assert text == restore(cloud_said, expected.values)
        for placeholder in echoed:
            assert expected.values[placeholder] in text
            assert placeholder not in text

        audit = audit_lines(stack.audit_log)[-1]
        assert (audit["outcome"], audit["redacted_values"]) == ("ok", 3)
        assert not [value for value in PLANTED if value in stack.audit_log.read_text()]
