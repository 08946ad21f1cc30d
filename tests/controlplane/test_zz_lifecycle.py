"""The 1,000-node fleet, and `cluster down` leaving nothing behind (then a restart)."""

from __future__ import annotations

import os
import time

import pytest

from tests.cluster import fleet, network, realnode, realnode_build, realnode_join, testbed
from tests.controlplane.helpers import Cluster, wait_for

pytestmark = pytest.mark.controlplane

SCALE_NODES = int(os.environ.get("EDGEFLEET_SCALE_NODES", "1000"))


def test_a_thousand_node_fleet_registers_and_becomes_ready(testbed_cluster: Cluster) -> None:
    nodes = fleet.scale_fleet(SCALE_NODES)
    names = {n["metadata"]["name"] for n in nodes}
    started = time.monotonic()
    testbed.apply_nodes(testbed_cluster.kubeconfig, nodes)
    wait_for(
        f"{SCALE_NODES} nodes Ready",
        lambda: testbed.nodes_ready(testbed_cluster.kubeconfig, names),
        600,
        2,
    )
    print(f"\n{SCALE_NODES} kwok nodes registered and Ready in {time.monotonic() - started:.1f}s")
    testbed_cluster.kubectl(
        "delete", "nodes", "-l", "edgefleet.io/node-class=scale", "--wait=false", timeout=300
    )


def test_cluster_down_leaves_no_process_mount_interface_or_namespace(
    owned_testbed: Cluster,
) -> None:
    paths = testbed.paths()
    realnode_join.bed_down()  # raises itself if anything is left; the checks below say what
    assert testbed.stray_processes(paths) == []
    assert testbed.stray_mounts(paths) == []
    assert network.leftovers() == []
    for spec in realnode_join.REAL_NODES:
        node = realnode.RealNode(name=spec.name, bin=realnode_build.bin_dir())
        assert node.leftovers() == [], spec.name
    assert not paths.kubeconfig.exists()
    # Bring it back, so tests collected after this one still find a cluster.
    realnode_join.bed_up()
    assert testbed.nodes_ready(paths.kubeconfig, {"gpu-0", realnode_join.REAL_NODES[0].name})
