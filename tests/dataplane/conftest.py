from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.model_server import ModelServer, running_server

# Two generating at once, two more may queue: small numbers that make
# admission behaviour easy to drive from a test.
SERVER_FLAGS = (
    "--max-concurrency",
    "2",
    "--max-queue",
    "2",
    "--context-length",
    "2048",
    "--max-tokens-cap",
    "512",
)


# Every data-plane test runs against both llama.cpp engines: the instance pool
# and continuous batching.
ENGINES = {
    "pool": ("--batch-sequences", "0", "--instances", "2"),
    "batch": ("--batch-sequences", "2"),
}


@pytest.fixture(scope="session", params=list(ENGINES))
def model_server(request: pytest.FixtureRequest) -> Iterator[ModelServer]:
    with running_server(*SERVER_FLAGS, *ENGINES[request.param]) as server:
        server.label = request.param
        yield server


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/dataplane/" in str(item.fspath):
            item.add_marker(pytest.mark.dataplane)
