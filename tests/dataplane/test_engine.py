"""The llama.cpp engine in-process, through the Engine interface alone."""

from __future__ import annotations

import asyncio

from edgefleet.serving.engines.llamacpp import LlamaCppEngine
from edgefleet.serving.model_files import default_model_path
from edgefleet.serving.types import (
    Completion,
    FinishReason,
    GenerationRequest,
    Message,
    Sampling,
    TextDelta,
)

LONG = Sampling(max_tokens=400, temperature=0.0, top_p=0.95, ignore_eos=True)


def request(request_id: str) -> GenerationRequest:
    messages = (Message("system", "Be brief."), Message("user", "Tell a long story."))
    return GenerationRequest(request_id, "m", messages, LONG)


async def finish_of(
    engine: LlamaCppEngine, started: asyncio.Event, generation: GenerationRequest
) -> Completion:
    async for item in engine.stream(generation):
        if isinstance(item, TextDelta):
            started.set()
        else:
            return item
    raise AssertionError("no Completion")


def test_cancel_by_request_id_stops_every_request_with_that_id() -> None:
    async def scenario() -> None:
        engine = LlamaCppEngine(
            default_model_path(), "m", instances=2, threads=2, context_length=1024
        )
        await engine.start()
        try:
            assert engine.ready() and engine.capacity == 2
            started = [asyncio.Event(), asyncio.Event()]
            tasks = [
                asyncio.create_task(finish_of(engine, started[i], request("same-id")))
                for i in range(2)
            ]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 60)
            assert engine.stats().running == 2
            assert engine.stats().kv_cache_usage > 0
            assert not await engine.cancel("other-id")
            assert await engine.cancel("same-id")
            finishes = await asyncio.wait_for(asyncio.gather(*tasks), 10)
            for done in finishes:
                assert done.finish_reason is FinishReason.CANCELLED
                assert done.usage.completion_tokens < 400
            assert not await engine.cancel("same-id")  # nothing left under that id
        finally:
            await engine.close()
        assert not engine.ready()

    asyncio.run(scenario())
