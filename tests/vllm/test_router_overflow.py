"""The router overflows from a saturated vLLM endpoint exactly as from a llama.cpp one.

The router reads load only through the contract (GetStats, its own in-flight
count, RESOURCE_EXHAUSTED), so the engine behind a local endpoint must not
matter. Each engine serves two requests at once; a burst of eight through a
router whose policy overflows as soon as both slots are busy must put exactly
two on the local endpoint and six on the cloud target, with nothing failing.
The cloud target here is a llama.cpp server (it speaks the same contract as
the egress; the egress and its cloud stand-in are tested in tests/routing).
"""

from __future__ import annotations

import concurrent.futures
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.model_server import ModelServer, running_server
from tests.support.routing import ask_or_error, running_router
from tests.support.vllm_server import running_vllm_server

TWO_SLOTS = ("--batch-sequences", "2", "--max-concurrency", "2", "--max-queue", "16")
OVERFLOW_WHEN_FULL = {"complexity": {"threshold": 1.0}, "capacity": {"maxQueueDepth": 0}}
BURST = [f"Write one short sentence about the number {n}." for n in range(8)]


@pytest.fixture(scope="module")
def cloud_target() -> Iterator[ModelServer]:
    with running_server("--batch-sequences", "4", "--max-queue", "16") as server:
        yield server


@pytest.fixture(scope="module", params=["vllm", "llamacpp"])
def saturable_local(request: pytest.FixtureRequest) -> Iterator[ModelServer]:
    starter = running_vllm_server if request.param == "vllm" else running_server
    with starter(*TWO_SLOTS) as server:
        server.label = request.param
        yield server


def test_saturated_local_endpoint_overflows_the_excess_and_nothing_fails(
    saturable_local: ModelServer, cloud_target: ModelServer, tmp_path: Path
) -> None:
    local, cloud = [saturable_local.target], cloud_target.target
    with (
        running_router(tmp_path, OVERFLOW_WHEN_FULL, local, cloud) as router,
        concurrent.futures.ThreadPoolExecutor(len(BURST)) as pool,
    ):
        outcomes = list(pool.map(lambda p: ask_or_error(router.stub, p, max_tokens=16), BURST))
    assert Counter(outcomes) == {
        ("local", "complexity.low", "OK"): 2,
        ("cloud", "capacity.overflow", "OK"): 6,
    }, saturable_local.label
