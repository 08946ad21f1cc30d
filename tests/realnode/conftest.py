"""Opt-in: a real node (containerd + kubelet) is not yet part of the test bed.

`make realnode-check` sets EDGEFLEET_REALNODE=1; without it, pytest (and so
`make test`) collects nothing here. Once the real node replaces the process
kubelet, this gate goes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.cluster import realnode, realnode_build

if os.environ.get("EDGEFLEET_REALNODE") != "1":
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture
def node() -> Iterator[realnode.RealNode]:
    """A started node; stopped afterwards, failing the test on anything left behind."""
    started = realnode.RealNode(bin=realnode_build.build_node())
    left = started.down()  # a run killed earlier must not leak into this one
    assert not left, f"an earlier node left: {left}"
    started.up()
    yield started
    left = started.down()
    assert not left, f"left behind: {left}"
