from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.model_server import ModelServer, running_server

# Two instances, two generating at once, two more may queue: small numbers
# that make admission behaviour easy to drive from a test.
SERVER_FLAGS = (
    "--instances",
    "2",
    "--max-concurrency",
    "2",
    "--max-queue",
    "2",
    "--context-length",
    "2048",
    "--max-tokens-cap",
    "512",
)


@pytest.fixture(scope="session")
def model_server() -> Iterator[ModelServer]:
    with running_server(*SERVER_FLAGS) as server:
        yield server


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/dataplane/" in str(item.fspath):
            item.add_marker(pytest.mark.dataplane)
