"""The router against backends that misbehave: real gRPC servers on loopback, in-process.

Each backend is a `ScriptedBackend` told to end a stream without its final
message, hang, reset mid-stream, turn the request down or send garbage. The
router engine runs in the same event loop and talks to them over gRPC. Every
test checks the bookkeeping a request leaves behind: the fallback (once,
before the first token), the breaker (a half-open trial is always given
back), the cloud budget (settled or released, never left reserved) and the
route counted once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from edgefleet.router.backends import Backend
from edgefleet.router.engine import RouterEngine
from edgefleet.router.sources import Endpoints
from edgefleet.routing.breaker import BreakerState
from edgefleet.routing.budget import prompt_token_bound
from edgefleet.routing.complexity import ComplexityScorer
from edgefleet.routing.policy import parse_policy
from edgefleet.serving.errors import EdgefleetError
from edgefleet.serving.types import (
    Completion,
    GenerationRequest,
    Message,
    Route,
    Sampling,
    TextDelta,
)
from tests.routing.scripted_backend import ANSWER, Behaviour, ScriptedBackend

QUESTION = "What is the capital of France?"
MAX_TOKENS = 16
NEVER_OVERFLOW = {"maxQueueDepth": 1000, "maxPredictedTtftMs": 3_600_000}
COOLDOWN_S = 30
# One failure opens a breaker; the clock, not the wall, ends its cool-down.
FAILOVER = {"breakerFailures": 1, "breakerCooldownSeconds": COOLDOWN_S}
ALL_LOCAL = {"complexity": {"threshold": 1.0}, "capacity": NEVER_OVERFLOW, "failover": FAILOVER}
ALL_CLOUD = {"complexity": {"threshold": 0.0}, "capacity": NEVER_OVERFLOW, "failover": FAILOVER}
LOCAL_FAILED = Route("cloud", "failover.local_failed")
CLOUD_FAILED = Route("local", "failover.cloud_failed")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Fleet:
    router: RouterEngine
    local: ScriptedBackend
    cloud: ScriptedBackend
    clock: Clock

    def backend(self, kind: str) -> Backend:
        backends = {"cloud": self.router.backends.cloud, **self.router.backends.local}
        backend = backends["cloud" if kind == "cloud" else self.local.address]
        assert backend is not None
        return backend

    def routes(self) -> dict[tuple[str, str], int]:
        return dict(self.router.metrics.route_totals)

    def routes_metric(self, route: Route) -> float | None:
        return self.router.metrics.registry.get_sample_value(
            "edgefleet:router_routes_total", {"target": route.target, "reason": route.reason}
        )

    def assert_nothing_held(self) -> None:
        """No backend counts a request in flight and the budget holds no reservation."""
        assert [b.in_flight for b in self.router.backends.all()] == [0, 0]
        assert self.router.budget.snapshot().reserved_tokens == 0


def run(
    spec: dict[str, Any], scorer: ComplexityScorer, scenario: Callable[[Fleet], Awaitable[None]]
) -> None:
    async def main() -> None:
        local, cloud = ScriptedBackend("local"), ScriptedBackend("cloud")
        await local.start()
        await cloud.start()
        clock = Clock()
        endpoints = Endpoints(local=(local.address,), cloud=cloud.address)
        router = RouterEngine(parse_policy(spec), endpoints, scorer, clock=clock)
        await router.start()
        try:
            assert all(backend.ready for backend in router.backends.all())
            await scenario(Fleet(router, local, cloud, clock))
        finally:
            await router.close()
            await local.stop()
            await cloud.stop()

    asyncio.run(main())


def question(n: int = 0) -> GenerationRequest:
    return GenerationRequest(
        request_id=f"q{n}",
        model="hybrid",
        messages=(Message("user", QUESTION),),
        sampling=Sampling(max_tokens=MAX_TOKENS, temperature=0.0, top_p=1.0),
    )


async def ask(router: RouterEngine, n: int = 0) -> tuple[str, Completion]:
    """The whole answer, read as the model service reads it (and closes it)."""
    parts: list[str] = []
    async with contextlib.aclosing(router.stream(question(n))) as items:
        async for item in items:
            if isinstance(item, TextDelta):
                parts.append(item.text)
            else:
                return "".join(parts), item
    raise AssertionError("the stream ended without a Completion")


async def ask_for_error(router: RouterEngine) -> tuple[list[str], EdgefleetError]:
    """The text that arrived before the request failed, and its error."""
    parts: list[str] = []
    with pytest.raises(EdgefleetError) as failed:
        async with contextlib.aclosing(router.stream(question())) as items:
            async for item in items:
                assert isinstance(item, TextDelta), "a failing request must not complete"
                parts.append(item.text)
    return parts, failed.value


def test_a_local_stream_ending_without_its_final_message_falls_back_to_the_cloud_once(
    scorer: ComplexityScorer,
) -> None:
    async def scenario(fleet: Fleet) -> None:
        fleet.local.behaviour = Behaviour.END_EARLY
        text, done = await ask(fleet.router)
        assert (text, done.route) == ("".join(ANSWER), LOCAL_FAILED)
        assert done.served_by is not None and done.served_by.backend == "cloud"
        assert (len(fleet.local.requests), len(fleet.cloud.requests)) == (1, 1)
        assert fleet.backend("local").breaker.state is BreakerState.OPEN
        assert fleet.routes() == {(LOCAL_FAILED.target, LOCAL_FAILED.reason): 1}
        assert fleet.routes_metric(LOCAL_FAILED) == 1
        fleet.assert_nothing_held()

    run(ALL_LOCAL, scorer, scenario)


def test_a_half_open_trial_cut_short_is_given_back_and_the_backend_tried_again(
    scorer: ComplexityScorer,
) -> None:
    async def scenario(fleet: Fleet) -> None:
        breaker = fleet.backend("local").breaker
        fleet.local.behaviour = Behaviour.ABORT
        assert (await ask(fleet.router, 1))[1].route == LOCAL_FAILED
        assert breaker.state is BreakerState.OPEN

        # The trial call: the stream ends without its final message.
        fleet.clock.now += COOLDOWN_S
        fleet.local.behaviour = Behaviour.END_EARLY
        assert (await ask(fleet.router, 2))[1].route == LOCAL_FAILED
        assert len(fleet.local.requests) == 2
        assert breaker.state is BreakerState.OPEN, "a failed trial opens the breaker again"

        # The next cool-down ends with another trial, which the backend now answers.
        fleet.clock.now += COOLDOWN_S
        fleet.local.behaviour = Behaviour.ANSWER
        text, done = await ask(fleet.router, 3)
        assert (text, done.route) == ("".join(ANSWER), Route("local", "complexity.low"))
        assert breaker.state is BreakerState.CLOSED
        assert fleet.routes() == {
            (LOCAL_FAILED.target, LOCAL_FAILED.reason): 2,
            ("local", "complexity.low"): 1,
        }
        fleet.assert_nothing_held()

    run(ALL_LOCAL, scorer, scenario)


def test_a_backend_that_hangs_is_left_at_its_deadline_and_the_request_falls_back(
    scorer: ComplexityScorer,
) -> None:
    spec = {**ALL_LOCAL, "failover": {**FAILOVER, "localTimeoutSeconds": 0.5}}

    async def scenario(fleet: Fleet) -> None:
        fleet.local.behaviour = Behaviour.HANG
        text, done = await ask(fleet.router)
        assert (text, done.route) == ("".join(ANSWER), LOCAL_FAILED)
        # The hung call ends on the backend too: gRPC cancels it at the deadline.
        await fleet.local.wait_until(lambda: fleet.local.cancelled == 1)
        assert fleet.backend("local").breaker.state is BreakerState.OPEN
        fleet.assert_nothing_held()

    run(spec, scorer, scenario)


def test_garbage_before_any_text_counts_against_the_backend_and_falls_back(
    scorer: ComplexityScorer,
) -> None:
    async def scenario(fleet: Fleet) -> None:
        fleet.local.behaviour = Behaviour.GARBAGE
        text, done = await ask(fleet.router)
        assert (text, done.route) == ("".join(ANSWER), LOCAL_FAILED)
        assert fleet.backend("local").breaker.state is BreakerState.OPEN
        assert fleet.routes() == {(LOCAL_FAILED.target, LOCAL_FAILED.reason): 1}
        fleet.assert_nothing_held()

    run(ALL_LOCAL, scorer, scenario)


@pytest.mark.parametrize("behaviour", [Behaviour.ABORT_AFTER_TEXT, Behaviour.END_AFTER_TEXT])
def test_a_stream_cut_after_its_first_text_fails_the_request_with_no_second_answer(
    scorer: ComplexityScorer, behaviour: Behaviour
) -> None:
    async def scenario(fleet: Fleet) -> None:
        fleet.local.behaviour = behaviour
        text, error = await ask_for_error(fleet.router)
        assert text == [ANSWER[0]]
        assert error.code is grpc.StatusCode.UNAVAILABLE
        assert dict(error.trailers)["x-edgefleet-route"] == "local"
        assert fleet.cloud.requests == [], "no fallback once text has reached the client"
        assert fleet.backend("local").breaker.state is BreakerState.OPEN
        assert fleet.routes() == {("local", "complexity.low"): 1}
        fleet.assert_nothing_held()

    run(ALL_LOCAL, scorer, scenario)


def test_failed_cloud_attempts_are_settled_and_a_turned_down_one_costs_nothing(
    scorer: ComplexityScorer,
) -> None:
    spec = {**ALL_CLOUD, "budget": {"maxCloudTokens": 100_000}}
    prompt_bound = prompt_token_bound([QUESTION])

    async def scenario(fleet: Fleet) -> None:
        budget = fleet.router.budget
        fleet.cloud.behaviour = Behaviour.END_EARLY
        assert (await ask(fleet.router, 1))[1].route == CLOUD_FAILED
        # The prompt may have been billed; nothing else was.
        assert budget.snapshot().spent_tokens == prompt_bound
        fleet.assert_nothing_held()

        fleet.clock.now += COOLDOWN_S  # the breaker's next trial
        fleet.cloud.behaviour = Behaviour.TURN_DOWN
        assert (await ask(fleet.router, 2))[1].route == CLOUD_FAILED
        assert budget.snapshot().spent_tokens == prompt_bound
        assert fleet.backend("cloud").breaker.available(), "turned down is not unwell"

        fleet.cloud.behaviour = Behaviour.ANSWER
        text, done = await ask(fleet.router, 3)
        assert (text, done.route) == ("".join(ANSWER), Route("cloud", "complexity.high"))
        assert budget.snapshot().spent_tokens == prompt_bound + 7 + 2  # as the backend reported
        assert fleet.routes() == {
            (CLOUD_FAILED.target, CLOUD_FAILED.reason): 2,
            ("cloud", "complexity.high"): 1,
        }
        fleet.assert_nothing_held()

    run(spec, scorer, scenario)


def test_a_client_leaving_a_half_open_trial_gives_it_back_and_is_charged_the_worst_case(
    scorer: ComplexityScorer,
) -> None:
    prompt_bound = prompt_token_bound([QUESTION])

    async def scenario(fleet: Fleet) -> None:
        breaker = fleet.backend("cloud").breaker
        fleet.cloud.behaviour = Behaviour.ABORT
        assert (await ask(fleet.router, 1))[1].route == CLOUD_FAILED
        fleet.clock.now += COOLDOWN_S
        assert breaker.state is BreakerState.HALF_OPEN

        fleet.cloud.behaviour = Behaviour.HANG_AFTER_TEXT
        items: AsyncIterator[Any] = fleet.router.stream(question(2))
        assert await anext(items) == TextDelta(ANSWER[0])
        assert not breaker.available(), "the trial is claimed while it runs"
        await items.aclose()  # the client leaves
        await fleet.cloud.wait_until(lambda: fleet.cloud.cancelled == 1)
        assert breaker.available(), "the trial is given back"
        # Text had flowed: the whole answer may have been billed.
        spent = fleet.router.budget.snapshot().spent_tokens
        assert spent == 2 * prompt_bound + MAX_TOKENS
        assert fleet.routes()[("cloud", "complexity.high")] == 1

        fleet.cloud.behaviour = Behaviour.ANSWER
        assert (await ask(fleet.router, 3))[1].route == Route("cloud", "complexity.high")
        assert breaker.state is BreakerState.CLOSED
        fleet.assert_nothing_held()

    run(ALL_CLOUD, scorer, scenario)
