"""Admission control: at most N generating, at most Q waiting, fail fast beyond.

Refusing early with RESOURCE_EXHAUSTED (instead of queueing without bound) is
what lets the router overflow to another replica or the cloud while the
answer can still be fast.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator

from edgefleet.serving.errors import Draining, Overloaded


class AdmissionController:
    """FIFO slots with a bounded queue; single event loop, no locks needed."""

    def __init__(self, max_concurrency: int, max_queue: int) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if max_queue < 0:
            raise ValueError("max_queue must not be negative")
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.running = 0
        self.draining = False
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        # Moving average of how long a slot is held, for the retry hint.
        self._mean_hold_s = 1.0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def wait_idle(self) -> None:
        """Returns once nothing runs or waits (used to drain before stopping)."""
        await self._idle.wait()

    def retry_after_ms(self) -> int:
        """When a refused caller could expect a free slot, roughly."""
        backlog = (self.waiting + 1) / self.max_concurrency
        return max(50, int(self._mean_hold_s * backlog * 1000))

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """Hold a generation slot; yields the seconds spent queueing.

        Raises Draining during shutdown and Overloaded when the queue is full.
        A caller cancelled while queued leaves the queue at once.
        """
        if self.draining:
            raise Draining()
        queued_at = time.monotonic()
        if self.running < self.max_concurrency and not self._waiters:
            self.running += 1
            self._idle.clear()
        elif len(self._waiters) < self.max_queue:
            await self._wait_for_handover()
        else:
            raise Overloaded(self.running, self.waiting, self.retry_after_ms())
        started = time.monotonic()
        try:
            yield started - queued_at
        finally:
            held = time.monotonic() - started
            self._mean_hold_s = 0.8 * self._mean_hold_s + 0.2 * held
            self._release()

    async def _wait_for_handover(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed to us just as we were cancelled: pass it on.
                self._release()
            else:
                self._waiters.remove(waiter)
            raise

    def _release(self) -> None:
        # Hand the slot straight to the oldest live waiter, so a newcomer
        # cannot overtake the queue; `running` stays the same in that case.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.running -= 1
        if self.running == 0:
            self._idle.set()
