"""From EndpointSlices to the router's Endpoints: pure, so it is tested without a cluster.

A SmallModel's Service has the SmallModel's name (docs/operator.md); the
egress's Service is named by the router's flags. Each Service may have
several slices, and only endpoints that are ready (and not terminating) take
traffic. The router talks to model servers directly by pod address, on the
slice port named `grpc`, so its own load balancing and breakers see each
replica.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from edgefleet.kubeapi import endpoint_serving
from edgefleet.router.sources import Endpoints
from edgefleet.routing.policy import LocalTarget, PolicyError, is_dns_label

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
GRPC_PORT_NAME = "grpc"


def parse_local_services(text: str, source: str = "--local-services") -> dict[str, int]:
    """`name[=weight],...` into {service: weight}; weights 1..100, default 1."""
    services: dict[str, int] = {}
    problems: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, has_weight, weight_text = item.partition("=")
        name = name.strip()
        weight = 1
        if has_weight:
            weight_text = weight_text.strip()
            if not weight_text.isdigit() or not 1 <= int(weight_text) <= 100:
                problems.append(f"{item!r}: the weight must be an integer within 1..100")
                continue
            weight = int(weight_text)
        if not is_dns_label(name):
            problems.append(f"{item!r}: {name!r} is not a Service name (a DNS-1123 label)")
        elif name in services:
            problems.append(f"{item!r}: {name!r} is listed twice")
        else:
            services[name] = weight
    if not services and not problems:
        problems.append("names no Service; expected name[=weight],...")
    if problems:
        raise PolicyError(problems, source)
    return services


def targets_as_services(targets: Iterable[LocalTarget]) -> dict[str, int]:
    return {target.small_model: target.weight for target in targets}


def service_selector(services: Iterable[str]) -> str:
    """The label selector for the slices of these Services."""
    return f"{SERVICE_NAME_LABEL} in ({','.join(sorted(set(services)))})"


def _grpc_port(slice_: Mapping[str, Any]) -> int | None:
    for port in slice_.get("ports") or []:
        if port.get("name") == GRPC_PORT_NAME and isinstance(port.get("port"), int):
            return port["port"]
    return None


def _host_port(address: str, port: int) -> str:
    try:
        is_v6 = ipaddress.ip_address(address).version == 6
    except ValueError:
        is_v6 = False  # an FQDN slice
    return f"[{address}]:{port}" if is_v6 else f"{address}:{port}"


def ready_addresses(slices: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """{service: sorted host:port of its ready endpoints on the `grpc` port}."""
    found: dict[str, set[str]] = {}
    for slice_ in slices:
        labels = (slice_.get("metadata") or {}).get("labels") or {}
        service = labels.get(SERVICE_NAME_LABEL)
        port = _grpc_port(slice_)
        if service is None or port is None:
            continue
        addresses = found.setdefault(service, set())
        for endpoint in slice_.get("endpoints") or []:
            # All addresses of an endpoint are the same pod: the first is enough.
            if endpoint_serving(endpoint):
                addresses.add(_host_port(endpoint["addresses"][0], port))
    return {service: sorted(addresses) for service, addresses in found.items()}


def endpoints_from_slices(
    slices: Iterable[Mapping[str, Any]],
    local_services: Mapping[str, int],
    cloud_service: str | None,
) -> Endpoints:
    """The router's Endpoints from the current slices of the watched Services.

    Each local address carries its Service's weight (the highest, should two
    Services share a pod). The egress is one address (the router keeps one
    cloud backend): the first ready one in address order, so it is stable
    while that pod lives.
    """
    by_service = ready_addresses(slices)
    weights: dict[str, int] = {}
    for service, weight in local_services.items():
        for address in by_service.get(service, []):
            weights[address] = max(weight, weights.get(address, 0))
    cloud = by_service.get(cloud_service or "", [])
    return Endpoints(tuple(sorted(weights)), cloud[0] if cloud else None, weights)


# Where a pod finds its own namespace (the mounted ServiceAccount token's folder).
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def pod_namespace() -> str:
    """This pod's namespace, or "" outside a cluster (no Kubernetes client needed)."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    except OSError:
        return ""
