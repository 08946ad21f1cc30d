"""What every engine needs between its decoding thread and the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator

from edgefleet.serving.engines.base import StreamItem
from edgefleet.serving.errors import InvalidArgument
from edgefleet.serving.types import Completion


class RunningRequests:
    """Cancel flags of running requests by id; clients choose ids, so they may repeat."""

    def __init__(self) -> None:
        self._flags: dict[str, list[threading.Event]] = {}

    @contextlib.contextmanager
    def track(self, request_id: str) -> Iterator[threading.Event]:
        """A flag the decoding thread checks; set on leaving, however that happens."""
        flag = threading.Event()
        sharing = self._flags.setdefault(request_id, [])
        sharing.append(flag)
        try:
            yield flag
        finally:
            flag.set()
            sharing.remove(flag)
            if not sharing:
                del self._flags[request_id]

    def cancel_all(self) -> None:
        for flags in self._flags.values():
            for flag in flags:
                flag.set()


class ItemChannel:
    """Carries one request's stream items from a decoding thread to the event loop."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._items: asyncio.Queue[StreamItem | BaseException] = asyncio.Queue()

    def emit(self, item: StreamItem | BaseException) -> None:
        """Thread-safe; an exception is raised in the consumer."""
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self._loop.call_soon_threadsafe(self._items.put_nowait, item)

    async def items(self) -> AsyncIterator[StreamItem]:
        """Items as they come, up to and including the Completion."""
        while True:
            item = await self._items.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, Completion):
                return


def room_for_answer(tokens: list[int], context_length: int) -> int:
    """Tokens left for the answer; InvalidArgument when the prompt alone fills the context."""
    room = context_length - len(tokens)
    if room <= 0:
        raise InvalidArgument(
            "messages",
            f"the prompt is {len(tokens)} tokens but the context holds "
            f"{context_length} tokens for prompt and answer together",
        )
    return room
