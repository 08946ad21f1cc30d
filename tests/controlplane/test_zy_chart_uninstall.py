"""`helm uninstall` leaves no orphan (runs after every other test that uses the release)."""

from __future__ import annotations

import json

import pytest

from tests.controlplane.conftest import RELEASE, RELEASE_NAMESPACE
from tests.controlplane.helpers import Cluster, wait_for
from tests.controlplane.operator_support import (
    EDGE_TOLERATION,
    managed_children,
    smallmodel,
    wait_condition,
)

pytestmark = pytest.mark.controlplane

CLUSTER_KINDS = "clusterroles,clusterrolebindings,clusterkopfpeerings"
NAMESPACED_KINDS = "deployments,serviceaccounts,pods,rolebindings,configmaps"


def _release_objects(cluster: Cluster) -> list[str]:
    selector = f"app.kubernetes.io/instance={RELEASE}"
    found = []
    for kinds, scope in ((CLUSTER_KINDS, []), (NAMESPACED_KINDS, ["-A"])):
        out = cluster.kubectl("get", kinds, *scope, "-l", selector, "-o", "json")
        found += [f"{i['kind']}/{i['metadata']['name']}" for i in json.loads(out.stdout)["items"]]
    return sorted(found)


def test_uninstall_removes_the_release_and_keeps_the_crds_and_resources(
    release: Cluster, namespace: str
) -> None:
    spec = {"engine": "llamacpp", "replicas": 1,
            "placement": {"nodeSelector": {"edgefleet.io/node-class": "edge"},
                          "tolerations": [EDGE_TOLERATION]}}  # fmt: skip
    release.apply(smallmodel("survivor", **spec), namespace=namespace)
    wait_condition(release, namespace, "smallmodel", "survivor", "Ready", "True")
    assert _release_objects(release) != []

    release.helm("uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait", timeout=300)
    try:
        wait_for("nothing of the release left", lambda: _release_objects(release) == [], 120)
    except TimeoutError as exc:
        raise AssertionError(f"left after uninstall: {_release_objects(release)}") from exc
    # crds.keep (the default): the CRDs stay, and with them the user's resources,
    # whose children are theirs (owner references), not orphans.
    for crd in (
        "smallmodels.edgefleet.io",
        "routingpolicies.edgefleet.io",
        "routercalibrations.edgefleet.io",
    ):
        kept = release.get("crd", crd)
        assert kept["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert release.get("smallmodel", "survivor", namespace) is not None
    # The garbage collector needs no operator: deleting the model takes its children.
    release.kubectl("delete", "smallmodel", "survivor", "-n", namespace)
    wait_for(
        "the survivor's children collected",
        lambda: managed_children(release, namespace, "edgefleet.io/model=survivor") == [],
        120,
    )
