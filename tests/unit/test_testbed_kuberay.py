"""The test bed's KubeRay (tests/cluster/kuberay.py): its command line, environment,
CRD readiness check and cache key, without a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster import kuberay


def test_operator_runs_on_loopback_as_one_replica_through_the_api_server_proxy() -> None:
    command = kuberay.operator_command(Path("/cache/ray-operator"), Path("/bed/kubeconfig"))

    assert command == [
        "/cache/ray-operator",
        "--kubeconfig=/bed/kubeconfig",
        "--metrics-addr=127.0.0.1:18480",
        "--health-probe-bind-address=127.0.0.1:18481",
        "--enable-leader-election=false",
        "--use-kubernetes-proxy=true",
        "--log-stdout-encoder=console",
    ]


def test_operator_ports_avoid_kuberay_defaults_and_the_products_ports() -> None:
    # KubeRay's own defaults (:8080, :8082) and the product's servers (8080, 9090, 50051).
    taken = {8080, 8082, 9090, 50051}

    assert {kuberay.METRICS_PORT, kuberay.HEALTH_PORT}.isdisjoint(taken)
    assert kuberay.METRICS_PORT != kuberay.HEALTH_PORT


def test_operator_env_turns_webhooks_off_whatever_the_caller_had() -> None:
    env = kuberay.operator_env({"PATH": "/bin", "ENABLE_WEBHOOKS": "true"})

    assert env == {"PATH": "/bin", "ENABLE_WEBHOOKS": "false", "CLUSTER_DOMAIN": "cluster.local"}


def test_crds_count_as_served_only_when_discovery_lists_all_three() -> None:
    def listing(*names: str) -> dict:
        return {
            "kind": "APIResourceList",
            "groupVersion": "ray.io/v1",
            "resources": [{"name": n, "namespaced": True} for n in names],
        }

    assert kuberay.all_served(
        listing("rayclusters", "rayclusters/status", "rayjobs", "rayservices")
    )
    assert not kuberay.all_served(listing("rayclusters", "rayjobs"))
    assert not kuberay.all_served({"kind": "APIResourceList"})


def test_bundle_holds_kuberays_three_crd_files() -> None:
    assert kuberay.CRD_FILES == (
        "ray.io_rayclusters.yaml",
        "ray.io_rayjobs.yaml",
        "ray.io_rayservices.yaml",
    )


def test_bundle_key_changes_with_the_wrapper_modules_pins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "ray-operator"
    module.mkdir()
    (module / "go.mod").write_text("module edgefleet.local/testbed/kuberay\n")
    (module / "go.sum").write_text("a v1 h1:one\n")
    monkeypatch.setattr(kuberay, "GOMOD_DIR", tmp_path)
    before = kuberay.bundle_key()

    (module / "go.sum").write_text("a v1 h1:two\n")

    assert before.startswith(f"{kuberay.KUBERAY_VERSION}-")
    assert kuberay.bundle_key() != before


def test_bundle_is_not_built_without_its_stamp(tmp_path: Path) -> None:
    for name in (kuberay.BINARY, *kuberay.CRD_FILES):
        (tmp_path / name).write_text("")

    assert not kuberay.is_built(tmp_path)
    (tmp_path / ".complete").write_text("built in 1s\n")
    assert kuberay.is_built(tmp_path)
