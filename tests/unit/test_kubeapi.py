"""What the operator and the router share about the API: one meaning of a ready endpoint."""

from __future__ import annotations

import asyncio

import pytest

from edgefleet.kubeapi import transient
from edgefleet.operator.main import service_endpoints
from edgefleet.router.discovery import ready_addresses

LABELS = {"kubernetes.io/service-name": "m", "app.kubernetes.io/managed-by": "edgefleet-operator"}
SLICE = {
    "metadata": {"name": "m-abcde", "namespace": "shop", "labels": LABELS},
    "ports": [{"name": "grpc", "port": 50051}],
    "endpoints": [
        {"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
        {"addresses": ["10.0.0.2"]},  # no conditions: ready
        {"addresses": ["10.0.0.3"], "conditions": {"ready": False}},
        # Still answering while it drains, but the router sends it nothing new.
        {"addresses": ["10.0.0.4"], "conditions": {"ready": True, "terminating": True}},
        {"addresses": [], "conditions": {"ready": True}},
        # Dual-stack: one pod, two addresses.
        {"addresses": ["10.0.0.5", "fd00::5"], "conditions": {"ready": True}},
    ],
}


def test_the_operator_counts_exactly_the_endpoints_the_router_sends_traffic_to() -> None:
    counted = asyncio.run(service_endpoints(namespace="shop", body=SLICE, labels=LABELS))
    routed = ready_addresses([SLICE])["m"]

    assert counted == {("shop", "m"): len(routed)}
    assert routed == ["10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.5:50051"]


@pytest.mark.parametrize("status", [0, 408, 409, 429, 500, 503, 504])
def test_conflicts_throttling_and_server_trouble_are_worth_retrying(status: int) -> None:
    assert transient(status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
def test_refusals_a_person_must_fix_are_not(status: int) -> None:
    assert not transient(status)
