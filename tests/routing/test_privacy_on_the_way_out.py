"""Nothing reaches the cloud without the full privacy pass, a local failure's failover included.

The router engine runs in-process against `ScriptedBackend`s over real gRPC (see
test_misbehaving_backends.py): the local one fails on cue, the "cloud" one echoes the last
message it got in three-character pieces, so every placeholder it repeats arrives split.
The prompts hold only what the entity detectors find (a person), which the router's first
pass, the pattern detectors, does not see.
"""

from __future__ import annotations

import contextlib
from typing import Any

import grpc

from edgefleet.routing.complexity import ComplexityScorer
from edgefleet.serving.errors import EdgefleetError
from edgefleet.serving.types import (
    Completion,
    GenerationRequest,
    Message,
    Route,
    Sampling,
    TextDelta,
)
from edgefleet.v1 import inference_pb2 as pb
from tests.routing.scripted_backend import Behaviour
from tests.routing.test_misbehaving_backends import ALL_CLOUD, ALL_LOCAL, Fleet, run

COLLEAGUE = "Agnieszka Kowalczyk"
ASKED = f"My colleague {COLLEAGUE} asked me: what is the capital of France?"
SYSTEM = "You answer briefly."
TEAM_SYSTEM = "You answer for the team of anna.schmidt@example.com."
EARLIER = f"Remember that {COLLEAGUE} writes from anna.schmidt@example.com."


def with_on_sensitive(spec: dict[str, Any], on_sensitive: str) -> dict[str, Any]:
    return {**spec, "privacy": {"onSensitive": on_sensitive}}


def request(*texts: str, system: str = SYSTEM) -> GenerationRequest:
    """`texts` as alternating user and assistant turns (the last a user's) after `system`."""
    roles = ["user", "assistant"]
    turns = [Message(roles[i % 2], text) for i, text in enumerate(reversed(texts))]
    messages = [Message("system", system), *reversed(turns)]
    return GenerationRequest(
        request_id="r1",
        model="hybrid",
        messages=tuple(messages),
        sampling=Sampling(max_tokens=64, temperature=0.0, top_p=1.0),
    )


async def answer(fleet: Fleet, asked: GenerationRequest) -> tuple[str, Completion]:
    parts: list[str] = []
    async with contextlib.aclosing(fleet.router.stream(asked)) as items:
        async for item in items:
            if isinstance(item, TextDelta):
                assert item.text, "no empty pieces reach the caller"
                parts.append(item.text)
            else:
                return "".join(parts), item
    raise AssertionError("the stream ended without a Completion")


async def refusal(fleet: Fleet, asked: GenerationRequest) -> EdgefleetError:
    try:
        await answer(fleet, asked)
    except EdgefleetError as error:
        return error
    raise AssertionError("the request was served")


def cloud_text(fleet: Fleet) -> str:
    return "\n".join(m.content for r in fleet.cloud.requests for m in r.messages)


def test_a_person_failing_over_from_local_is_refused_with_the_policys_reason(
    scorer: ComplexityScorer,
) -> None:
    """The defect: the failover skipped the entity pass, the egress refused with its own
    PERMISSION_DENIED. Now the router refuses as the policy says, before any cloud call."""

    async def scenario(fleet: Fleet) -> None:
        fleet.local.behaviour = Behaviour.ABORT
        fleet.cloud.behaviour = Behaviour.ECHO
        error = await refusal(fleet, request(ASKED))
        assert error.code == grpc.StatusCode.UNAVAILABLE
        assert "sensitive (privacy.detector.person)" in str(error)
        assert dict(error.trailers)["x-edgefleet-route-reason"] == "privacy.detector.person"
        assert fleet.cloud.requests == []
        assert fleet.routes() == {("reject", "privacy.detector.person"): 1}
        fleet.assert_nothing_held()

    run(ALL_LOCAL, scorer, scenario)


def test_a_redacting_policy_fails_over_with_placeholders_and_restores_the_answer(
    scorer: ComplexityScorer,
) -> None:
    async def scenario(fleet: Fleet) -> None:
        fleet.local.behaviour = Behaviour.ABORT
        fleet.cloud.behaviour = Behaviour.ECHO
        text, completion = await answer(fleet, request(ASKED))
        assert text == ASKED
        assert completion.route == Route("cloud", "privacy.redacted")
        (sent,) = fleet.cloud.requests
        assert sent.messages[-1].content == (
            "My colleague [PERSON_1] asked me: what is the capital of France?"
        )
        assert COLLEAGUE not in cloud_text(fleet)
        assert sent.routing.redacted_values == 1
        assert sent.routing.sensitivity == pb.SENSITIVITY_UNSPECIFIED
        assert fleet.routes() == {("cloud", "privacy.redacted"): 1}
        fleet.assert_nothing_held()

    run(with_on_sensitive(ALL_LOCAL, "redact"), scorer, scenario)


def test_redacted_placeholders_are_stable_across_turns_and_come_back_whole(
    scorer: ComplexityScorer,
) -> None:
    async def scenario(fleet: Fleet) -> None:
        fleet.cloud.behaviour = Behaviour.ECHO
        asked = request(
            EARLIER,
            "Noted.",
            f"Now {ASKED} Reply to anna.schmidt@example.com.",
            system=TEAM_SYSTEM,
        )
        text, completion = await answer(fleet, asked)
        assert text == asked.messages[-1].content
        assert completion.route == Route("cloud", "privacy.redacted")
        (sent,) = fleet.cloud.requests
        assert sent.routing.redacted_values == 2
        assert [m.content for m in sent.messages] == [
            "You answer for the team of [EMAIL_1].",
            "Remember that [PERSON_1] writes from [EMAIL_1].",
            "Noted.",
            "Now My colleague [PERSON_1] asked me: what is the capital of France? "
            "Reply to [EMAIL_1].",
        ]

    run(with_on_sensitive(ALL_CLOUD, "redact"), scorer, scenario)


def test_a_redacted_request_the_cloud_fails_is_served_locally_as_it_came(
    scorer: ComplexityScorer,
) -> None:
    async def scenario(fleet: Fleet) -> None:
        fleet.cloud.behaviour = Behaviour.ABORT
        fleet.local.behaviour = Behaviour.ECHO
        text, completion = await answer(fleet, request(ASKED))
        assert text == ASKED
        assert completion.route == Route("local", "failover.cloud_failed")
        (local,) = fleet.local.requests
        assert local.messages[-1].content == ASKED
        assert local.routing.sensitivity == pb.SENSITIVITY_SENSITIVE
        (sent,) = fleet.cloud.requests
        assert COLLEAGUE not in "".join(m.content for m in sent.messages)
        fleet.assert_nothing_held()

    run(with_on_sensitive(ALL_CLOUD, "redact"), scorer, scenario)


def test_a_rejecting_policy_refuses_a_detected_prompt_naming_only_the_detectors(
    scorer: ComplexityScorer,
) -> None:
    """Refused though local is up; the message names the detectors, never the values."""

    async def scenario(fleet: Fleet) -> None:
        error = await refusal(fleet, request(ASKED, system=TEAM_SYSTEM))
        assert error.code == grpc.StatusCode.PERMISSION_DENIED
        assert "(email, person)" in str(error)
        assert "privacy.onSensitive: reject" in str(error)
        assert COLLEAGUE not in str(error) and "anna.schmidt" not in str(error)
        assert dict(error.trailers)["x-edgefleet-route"] == "reject"
        assert fleet.local.requests == [] and fleet.cloud.requests == []
        assert fleet.routes() == {("reject", "privacy.detector.email"): 1}

    run(with_on_sensitive(ALL_LOCAL, "reject"), scorer, scenario)
