"""The llama.cpp engine in-process, through the Engine interface alone."""

from __future__ import annotations

import asyncio

from edgefleet.serving.engines.llamacpp import LlamaCppEngine
from edgefleet.serving.model_files import default_model_path
from edgefleet.serving.types import (
    GenerationRequest,
    Message,
    Sampling,
    TextDelta,
)

LONG = Sampling(max_tokens=400, temperature=0.0, top_p=0.95, ignore_eos=True)


def request(request_id: str) -> GenerationRequest:
    messages = (Message("system", "Be brief."), Message("user", "Tell a long story."))
    return GenerationRequest(request_id, "m", messages, LONG)


async def first_delta(stream) -> None:
    async for item in stream:
        if isinstance(item, TextDelta):
            return
    raise AssertionError("the stream ended before its first token")


def test_closing_one_stream_stops_only_that_request_even_when_ids_repeat() -> None:
    """Clients choose request ids, so two running requests may share one: closing
    one stream (what a cancelled RPC does) stops that generation and frees its
    instance, and the other keeps going."""

    async def scenario() -> None:
        engine = LlamaCppEngine(
            default_model_path(), "m", instances=2, threads=2, context_length=1024
        )
        await engine.start()
        try:
            assert engine.ready() and engine.capacity == 2
            first, second = engine.stream(request("same-id")), engine.stream(request("same-id"))
            await asyncio.wait_for(asyncio.gather(first_delta(first), first_delta(second)), 60)
            assert engine.stats().running == 2
            assert engine.stats().kv_cache_usage > 0
            await asyncio.wait_for(first.aclose(), 10)
            # Both instances were busy: a third request can start only once the
            # closed stream's instance is free again.
            third = engine.stream(request("third"))
            await asyncio.wait_for(first_delta(third), 60)
            # The other request under the same id is still generating.
            await asyncio.wait_for(first_delta(second), 60)
            await second.aclose()
            await third.aclose()
        finally:
            await engine.close()
        assert not engine.ready()

    asyncio.run(scenario())
