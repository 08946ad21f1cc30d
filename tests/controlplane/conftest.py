"""Session fixture: a real cluster for the whole run, torn down (and checked) at the end.

The Docker-free test bed with its first real node (kubelet + containerd, where the
chart's operator and every pod the tests start run as containers); the GPU-class
real node joins when a test first asks for it (`gpu_node`).

Set EDGEFLEET_KUBECONFIG to use an existing cluster (e.g. kind) instead of
starting the test bed; tests that need its real nodes are then skipped, and
fleet tests run only if the kwok fleet is registered.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.cluster import network, realnode_join, testbed, versions
from tests.controlplane.helpers import Cluster
from tests.support.cloud import RecordingProxy, recorded_cloud


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    existing = os.environ.get("EDGEFLEET_KUBECONFIG")
    if existing:
        # The running test bed's own kubeconfig (`python -m tests.cluster up`): use it
        # as it is (kwok fleet, real node), and leave it running for the next run.
        shared = Path(existing).resolve() == testbed.paths().kubeconfig.resolve()
        yield Cluster(Path(existing), testbed=shared, owned=False)
        return
    # No try/skip here: a cluster that cannot start must fail the run loudly.
    paths = realnode_join.bed_up()
    yield Cluster(paths.kubeconfig, testbed=True, owned=True)
    if paths.kubeconfig.exists():
        realnode_join.bed_down()


@pytest.fixture(scope="module")
def cloud() -> Iterator[RecordingProxy]:
    """The stand-in cloud behind a recording proxy on the test bed's internet stand-in:
    outside every cluster range, so only pods whose NetworkPolicies let them out (the
    egress) reach it."""
    with recorded_cloud(host=network.INTERNET_ADDRESS, netns=network.INTERNET_NETNS) as (
        _,
        proxy,
    ):
        yield proxy


@pytest.fixture
def testbed_cluster(cluster: Cluster) -> Cluster:
    """The cluster, for tests that need kwok nodes or the test bed's real nodes."""
    if not cluster.testbed:
        pytest.skip("needs the Docker-free test bed (kwok fleet / real nodes)")
    return cluster


@pytest.fixture(scope="session")
def gpu_node(release: Cluster) -> str:
    """The GPU-class real node (nvidia.com/gpu advertised, the vLLM image loaded), joined
    the first time a test asks for it (its 7.9 GB image takes minutes to import); it
    leaves with the test bed."""
    if not release.testbed:
        pytest.skip("the GPU-class real node joins only the Docker-free test bed")
    spec = realnode_join.REAL_NODES[1]
    if not realnode_join.node_ready(spec.name):
        realnode_join.up((spec,))
    return spec.name


@pytest.fixture
def owned_testbed(testbed_cluster: Cluster) -> Cluster:
    """The test bed, for tests that stop and restart it: never a shared one."""
    if not testbed_cluster.owned:
        pytest.skip("this run shares a running test bed (EDGEFLEET_KUBECONFIG); not stopping it")
    return testbed_cluster


@pytest.fixture
def fleet_cluster(cluster: Cluster) -> Cluster:
    """The cluster, for tests that need the kwok edge fleet from fleet.yaml.

    On kind this works once kwok is installed and `python -m tests.cluster fleet`
    has been applied (see docs/testbed.md).
    """
    if cluster.get("node", "gpu-0") is None:
        pytest.skip("the kwok edge fleet (fleet.yaml) is not registered in this cluster")
    return cluster


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


RELEASE = "edgefleet"
RELEASE_NAMESPACE = "edgefleet-system"
CHART = Path(__file__).resolve().parents[2] / "charts" / "edgefleet"
TESTBED_VALUES = Path(__file__).with_name("testbed-values.yaml")


@pytest.fixture(scope="session")
def release(cluster: Cluster) -> Cluster:
    """The edgefleet chart installed once for the session (CRDs, operator, RBAC).

    `helm upgrade --install` so a rerun against a kept cluster converges; tests
    that upgrade or uninstall the chart use their own release.
    """
    cluster.helm(
        "upgrade", "--install", RELEASE, str(CHART),
        "--namespace", RELEASE_NAMESPACE, "--create-namespace",
        "--values", str(TESTBED_VALUES), "--wait", "--timeout", "180s",
    )  # fmt: skip
    return cluster


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> Cluster:
    """Only the chart's CRDs, applied as `helm install` would own them.

    Rendered from the working tree and applied server-side with the release's
    ownership metadata, so a later `helm upgrade --install` (the `release`
    fixture) adopts them instead of refusing them.
    """
    rendered = cluster.helm(
        "template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
        # Offline rendering assumes an old cluster otherwise; Chart.yaml needs 1.30+.
        "--kube-version", versions.KUBERNETES_VERSION,
        "--show-only", "templates/crds/smallmodels.yaml",
        "--show-only", "templates/crds/routingpolicies.yaml",
    ).stdout  # fmt: skip
    documents = [d for d in yaml.safe_load_all(rendered) if d]
    for crd in documents:
        metadata = crd["metadata"]
        metadata.setdefault("labels", {})["app.kubernetes.io/managed-by"] = "Helm"
        annotations = metadata.setdefault("annotations", {})
        annotations["meta.helm.sh/release-name"] = RELEASE
        annotations["meta.helm.sh/release-namespace"] = RELEASE_NAMESPACE
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", "-",
        stdin=yaml.safe_dump_all(documents),
    )  # fmt: skip
    for crd in documents:
        cluster.kubectl(
            "wait", "--for=condition=Established", f"crd/{crd['metadata']['name']}",
            "--timeout=60s",
        )  # fmt: skip
    return cluster


PRESSURES = ("MemoryPressure", "DiskPressure", "PIDPressure")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[None] | pytest.TestReport:
    """A failed test's report also shows the cluster's state: a node under pressure or
    an operator that is not running fails every later test, and says so only here."""
    report: pytest.TestReport = yield
    cluster = item.funcargs.get("cluster") if hasattr(item, "funcargs") else None
    if report.failed and call.when == "call" and isinstance(cluster, Cluster):
        report.sections.append(("cluster at failure", cluster_state(cluster)))
    return report


def cluster_state(cluster: Cluster) -> str:
    """Nodes' conditions that are not as they should be, the chart's pods, the last
    warning events: plain kubectl, so it works on any cluster."""
    nodes = cluster.kubectl(
        "get", "nodes", "-o",
        "jsonpath={range .items[*]}{.metadata.name}{range .status.conditions[*]}"
        " {.type}={.status}{end}{'\\n'}{end}",
        check=False,
    ).stdout  # fmt: skip
    unwell = [
        line
        for line in nodes.splitlines()
        if "Ready=True" not in line or any(f"{c}=True" in line for c in PRESSURES)
    ]
    chart_pods = cluster.kubectl(
        "get", "pods", "-n", RELEASE_NAMESPACE, "-o", "wide", check=False
    ).stdout  # fmt: skip
    warnings = cluster.kubectl(
        "get", "events", "-A", "--field-selector", "type=Warning",
        "--sort-by", ".lastTimestamp", check=False,
    ).stdout.splitlines()[-15:]  # fmt: skip
    return "\n".join(
        ["nodes not Ready or under pressure:", *(unwell or ["(none)"]),
         f"pods in {RELEASE_NAMESPACE}:", chart_pods,
         "last warning events:", *warnings]
    )  # fmt: skip
