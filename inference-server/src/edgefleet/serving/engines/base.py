"""The one interface every engine implements (llama.cpp now, vLLM next).

The servicers only ever talk to this interface, so the router and clients
cannot tell which engine answered except by `served_by.engine`.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator

from edgefleet.serving.types import Completion, EngineStats, GenerationRequest, Route, TextDelta

StreamItem = TextDelta | Completion


class Engine(abc.ABC):
    #: Short engine name shown to clients ("llamacpp", "vllm").
    name: str
    #: The model name clients ask for.
    model_name: str
    #: Tokens a prompt plus its answer may take.
    context_length: int
    #: Requests this engine can generate at once.
    capacity: int
    #: Copies of the model held in memory.
    instances: int = 1
    #: sha256 of the loaded model file, when known.
    model_sha256: str | None = None
    #: Where answers come from, as shown in served_by: "local" or "cloud".
    backend: str = "local"
    #: Other names clients may ask for.
    aliases: tuple[str, ...] = ()
    #: Model engines decode a few tokens before the server reports SERVING, so
    #: an engine that cannot run here (a build for another CPU dies with
    #: SIGILL) fails at start-up, never on a user's first request.
    warms_up: bool = False

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model; after this returns, `ready()` is true."""

    @abc.abstractmethod
    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        """Yield TextDelta items, then exactly one Completion.

        Cancelling the consuming task (or closing the iterator) stops the
        generation inside the engine and frees its resources at once.
        Raises InvalidArgument before yielding anything when the prompt does not
        fit the context.
        """

    @abc.abstractmethod
    def ready(self) -> bool:
        """True while the engine can take requests."""

    @abc.abstractmethod
    def stats(self) -> EngineStats:
        """Live load figures."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the model; the engine is unusable afterwards."""

    def route_of(self, request_id: str) -> Route | None:
        """The route a running request took, for engines that forward (the router)."""
        return None

    async def generate(self, request: GenerationRequest) -> tuple[str, Completion]:
        """The whole answer at once: the stream, joined."""
        parts: list[str] = []
        async for item in self.stream(request):
            if isinstance(item, TextDelta):
                parts.append(item.text)
            else:
                return "".join(parts), item
        raise RuntimeError(f"engine {self.name} ended a stream without a Completion")
