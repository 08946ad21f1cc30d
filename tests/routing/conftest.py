"""The routing tier: real local server, real egress, real OpenAI-compatible cloud stand-in.

One of each is shared by the whole session (starting the model takes
seconds); each test starts its own router with the policy it needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.cloud import CloudStandIn, RecordingProxy, recorded_cloud
from tests.support.model_server import ModelServer, running_server
from tests.support.routing import start_egress

if TYPE_CHECKING:
    from edgefleet.routing.complexity import ComplexityScorer

# Two generating at once, plenty of queue: the router's overflow, not the
# server's admission, decides what goes elsewhere.
LOCAL_FLAGS = ("--batch-sequences", "2", "--max-queue", "64", "--max-tokens-cap", "512")


@dataclass
class Stack:
    cloud: CloudStandIn
    proxy: RecordingProxy
    local: ModelServer
    egress: ModelServer
    audit_log: Path


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    audit_log = tmp_path_factory.mktemp("egress") / "audit.jsonl"
    with recorded_cloud() as (cloud, proxy), running_server(*LOCAL_FLAGS) as local:
        egress = start_egress(proxy.base_url, audit_log)
        try:
            yield Stack(cloud, proxy, local, egress, audit_log)
        finally:
            egress.stop()


@pytest.fixture(scope="session")
def scorer() -> ComplexityScorer:
    from edgefleet.routing.complexity import ComplexityScorer

    return ComplexityScorer.load()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/routing/" in str(item.fspath):
            item.add_marker(pytest.mark.dataplane)
