"""EndpointSlices to router Endpoints, and --local-services: pure, with real-shaped slices."""

from __future__ import annotations

from typing import Any

import pytest

from edgefleet.router.discovery import (
    endpoints_from_slices,
    parse_local_services,
    service_selector,
)
from edgefleet.router.sources import Endpoints
from edgefleet.routing.policy import PolicyError

GRPC_AND_METRICS = [
    {"name": "grpc", "port": 50051, "protocol": "TCP"},
    {"name": "metrics", "port": 9090, "protocol": "TCP"},
]


def endpoint(address: str, **conditions: bool) -> dict[str, Any]:
    return {
        "addresses": [address],
        "conditions": conditions,
        "targetRef": {"kind": "Pod", "name": f"pod-{address}"},
    }


def slice_of(
    service: str,
    endpoints: list[dict[str, Any]],
    *,
    name: str = "",
    ports: list[dict[str, Any]] | None = None,
    address_type: str = "IPv4",
) -> dict[str, Any]:
    """An EndpointSlice as the API returns it (camelCase, as the watch's raw_object)."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name or f"{service}-abcde",
            "namespace": "shop",
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
            "resourceVersion": "4711",
        },
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": GRPC_AND_METRICS if ports is None else ports,
    }


def test_ready_endpoints_of_every_slice_of_a_target_are_local() -> None:
    slices = [
        slice_of("smollm2", [endpoint("10.1.0.5", ready=True)], name="smollm2-a"),
        slice_of("smollm2", [endpoint("10.1.0.6", ready=True, serving=True)], name="smollm2-b"),
        slice_of("qwen", [endpoint("10.1.1.7", ready=True)]),
    ]
    endpoints = endpoints_from_slices(slices, {"smollm2": 1, "qwen": 3}, None)
    assert endpoints == Endpoints(
        local=("10.1.0.5:50051", "10.1.0.6:50051", "10.1.1.7:50051"),
        cloud=None,
        weights={"10.1.0.5:50051": 1, "10.1.0.6:50051": 1, "10.1.1.7:50051": 3},
    )
    assert endpoints.weight("10.1.1.7:50051") == 3


def test_not_ready_and_terminating_endpoints_take_no_traffic() -> None:
    slices = [
        slice_of(
            "smollm2",
            [
                endpoint("10.1.0.5", ready=False, serving=False),
                # Terminating but still serving its last requests: no new ones.
                endpoint("10.1.0.6", ready=False, serving=True, terminating=True),
                endpoint("10.1.0.7", ready=True, terminating=True),
                # No conditions at all: the API says read ready as true.
                {"addresses": ["10.1.0.8"]},
                {"addresses": [], "conditions": {"ready": True}},
            ],
        )
    ]
    assert endpoints_from_slices(slices, {"smollm2": 1}, None).local == ("10.1.0.8:50051",)


def test_slices_without_a_grpc_port_or_of_other_services_are_ignored() -> None:
    slices = [
        slice_of("smollm2", [endpoint("10.1.0.5", ready=True)],
                 ports=[{"name": "metrics", "port": 9090, "protocol": "TCP"}]),
        slice_of("smollm2", [endpoint("10.1.0.6", ready=True)], name="smollm2-x", ports=[]),
        slice_of("unrelated", [endpoint("10.1.9.9", ready=True)]),
        {"metadata": {"name": "no-label"}, "endpoints": [endpoint("10.1.9.8", ready=True)]},
    ]  # fmt: skip
    assert endpoints_from_slices(slices, {"smollm2": 1}, None) == Endpoints()


def test_the_grpc_port_is_read_per_slice() -> None:
    slices = [
        slice_of("smollm2", [endpoint("10.1.0.5", ready=True)],
                 ports=[{"name": "grpc", "port": 6000, "protocol": "TCP"}]),
    ]  # fmt: skip
    assert endpoints_from_slices(slices, {"smollm2": 1}, None).local == ("10.1.0.5:6000",)


def test_ipv6_addresses_are_bracketed_for_grpc() -> None:
    slices = [slice_of("smollm2", [endpoint("fd00::5", ready=True)], address_type="IPv6")]
    assert endpoints_from_slices(slices, {"smollm2": 2}, None) == Endpoints(
        ("[fd00::5]:50051",), None, {"[fd00::5]:50051": 2}
    )


def test_the_egress_service_is_the_cloud_and_never_local() -> None:
    slices = [
        slice_of("smollm2", [endpoint("10.1.0.5", ready=True)]),
        slice_of("demo-egress", [endpoint("10.1.2.9", ready=True), endpoint("10.1.2.3", ready=True),
                                 endpoint("10.1.2.1", ready=False)]),
    ]  # fmt: skip
    endpoints = endpoints_from_slices(slices, {"smollm2": 1}, "demo-egress")
    # One cloud backend: the first ready address, stable while that pod lives.
    assert endpoints.cloud == "10.1.2.3:50051"
    assert endpoints.local == ("10.1.0.5:50051",)


def test_an_egress_with_no_ready_endpoint_means_no_cloud() -> None:
    slices = [slice_of("demo-egress", [endpoint("10.1.2.9", ready=False)])]
    assert endpoints_from_slices(slices, {}, "demo-egress").cloud is None


def test_a_pod_behind_two_targets_carries_the_higher_weight() -> None:
    slices = [
        slice_of("a", [endpoint("10.1.0.5", ready=True)]),
        slice_of("b", [endpoint("10.1.0.5", ready=True)]),
    ]
    assert endpoints_from_slices(slices, {"a": 2, "b": 5}, None).weights == {"10.1.0.5:50051": 5}


def test_selector_names_each_service_once() -> None:
    selector = service_selector(["smollm2", "demo-egress", "smollm2"])
    assert selector == "kubernetes.io/service-name in (demo-egress,smollm2)"


def test_local_services_flag_reads_names_and_weights() -> None:
    assert parse_local_services("smollm2, qwen=3 ,") == {"smollm2": 1, "qwen": 3}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("smollm2=0", "the weight must be an integer within 1..100"),
        ("smollm2=heavy", "the weight must be an integer within 1..100"),
        ("Small_Model", "is not a Service name"),
        ("a,a=2", "'a' is listed twice"),
        (" , ", "names no Service"),
    ],
)
def test_bad_local_services_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match="invalid --local-services: .*" + message):
        parse_local_services(text)
