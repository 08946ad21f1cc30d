from __future__ import annotations

import asyncio

import pytest

from edgefleet.serving.admission import AdmissionController
from edgefleet.serving.errors import Draining, Overloaded


async def hold(admission: AdmissionController, release: asyncio.Event, log: list[str], name: str):
    async with admission.slot():
        log.append(name)
        await release.wait()


def test_admits_up_to_capacity_queues_then_refuses() -> None:
    async def scenario() -> None:
        admission = AdmissionController(max_concurrency=2, max_queue=1)
        release, log = asyncio.Event(), []
        tasks = [asyncio.create_task(hold(admission, release, log, f"r{i}")) for i in range(3)]
        await asyncio.sleep(0)  # let the tasks reach the admission point
        assert (admission.running, admission.waiting) == (2, 1)
        with pytest.raises(Overloaded) as refused:
            async with admission.slot():
                pass
        assert refused.value.retry_after_ms >= 50
        release.set()
        await asyncio.gather(*tasks)
        assert log == ["r0", "r1", "r2"]  # FIFO
        assert (admission.running, admission.waiting) == (0, 0)

    asyncio.run(scenario())


def test_cancelled_waiter_leaves_queue_and_slot_goes_to_next() -> None:
    async def scenario() -> None:
        admission = AdmissionController(max_concurrency=1, max_queue=2)
        release, log = asyncio.Event(), []
        first = asyncio.create_task(hold(admission, release, log, "first"))
        second = asyncio.create_task(hold(admission, release, log, "second"))
        third = asyncio.create_task(hold(admission, release, log, "third"))
        await asyncio.sleep(0)
        assert admission.waiting == 2
        second.cancel()
        await asyncio.gather(second, return_exceptions=True)
        assert admission.waiting == 1
        release.set()
        await asyncio.gather(first, third)
        assert log == ["first", "third"]
        assert admission.running == 0

    asyncio.run(scenario())


def test_draining_refuses_new_work_and_idle_wait_returns_when_empty() -> None:
    async def scenario() -> None:
        admission = AdmissionController(max_concurrency=1, max_queue=0)
        release, log = asyncio.Event(), []
        task = asyncio.create_task(hold(admission, release, log, "in-flight"))
        await asyncio.sleep(0)
        admission.draining = True
        with pytest.raises(Draining):
            async with admission.slot():
                pass
        idle = asyncio.create_task(admission.wait_idle())
        await asyncio.sleep(0)
        assert not idle.done()
        release.set()
        await asyncio.wait_for(idle, 1)
        await task

    asyncio.run(scenario())


def test_rejects_nonsense_limits() -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        AdmissionController(max_concurrency=0, max_queue=1)
    with pytest.raises(ValueError, match="max_queue"):
        AdmissionController(max_concurrency=1, max_queue=-1)
