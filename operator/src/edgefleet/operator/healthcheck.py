"""`python -m edgefleet.operator.healthcheck`: the chart's `helm test`.

For every RoutingPolicy in the given namespaces, find the router's ready
endpoints from its Service's EndpointSlices and ask each one
grpc.health.v1 Check over gRPC. Checking every replica by address is a
stronger test than one call through the Service's virtual IP, and needs no
cluster DNS. Exits 0 when every router replica is SERVING, 1 otherwise,
printing one line per replica.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgefleet.kubeapi import api_client, endpoint_serving
from edgefleet.operator import names
from edgefleet.operator.kube import ApiError, Kube


def router_addresses(kube: Kube, namespace: str, policy: str) -> list[str]:
    selector = f"kubernetes.io/service-name={names.router_name(policy)}"
    addresses = []
    for item in kube.list("EndpointSlice", namespace, selector):
        ports = [p["port"] for p in item.get("ports") or [] if p.get("name") == "grpc"]
        for endpoint in item.get("endpoints") or []:
            if endpoint_serving(endpoint):
                addresses += [f"{a}:{p}" for a in endpoint["addresses"] for p in ports]
    return sorted(addresses)


def serving(address: str, timeout: float) -> str:
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.RpcError as exc:
        return f"{exc.code().name}: {exc.details()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgefleet.operator.healthcheck")
    parser.add_argument("namespaces", nargs="+", help="namespaces whose RoutingPolicies to check")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    kube = Kube(api_client())
    failed = checked = 0
    for namespace in args.namespaces:
        try:
            policies = kube.list("RoutingPolicy", namespace, "")
        except ApiError as exc:
            print(f"{namespace}: cannot list RoutingPolicies: {exc.message}")
            return 1
        for policy in policies:
            name = policy["metadata"]["name"]
            addresses = router_addresses(kube, namespace, name)
            if not addresses:
                print(f"{namespace}/{name}: no ready router endpoint")
                failed += 1
            for address in addresses:
                verdict = serving(address, args.timeout)
                checked += 1
                failed += verdict != "SERVING"
                print(f"{namespace}/{name} router {address}: {verdict}")
    if checked == 0 and failed == 0:
        print("no RoutingPolicy found: nothing was checked")
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
