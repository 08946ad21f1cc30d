"""The test bed's private network: a host bridge for the pod range, and pod namespaces.

Safety is the point of this module. Every address the test bed uses lies in
ranges that get host routes keeping packets on this machine:

* POD_RANGE (10.244.0.0/16) is routed to the bridge, which has no uplink, so a
  packet for a pod IP either reaches a namespace we created or is dropped.
* KWOK_POD_RANGE (fake pods, which have no namespace) and SERVICE_RANGE (no
  kube-proxy) are blackholed outright.
"""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass

BRIDGE = "efbr0"
POD_RANGE = ipaddress.ip_network("10.244.0.0/16")
# The bridge's own address: the API server advertises it, so pods reach it.
API_ADDRESS = "10.244.0.1"
# Process-kubelet nodes take /24s from here; kwok's fake pods take the top half.
PROCESS_POD_RANGE = ipaddress.ip_network("10.244.0.0/17")
KWOK_POD_RANGE = ipaddress.ip_network("10.244.128.0/17")
SERVICE_RANGE = ipaddress.ip_network("10.96.0.0/12")
# The cluster DNS Service's ClusterIP (kube-dns, served by CoreDNS on a real node),
# kubeadm's choice: the tenth address of the Service range.
DNS_SERVICE_ADDRESS = str(SERVICE_RANGE[10])
CLUSTER_DOMAIN = "cluster.local"
NETNS_PREFIX = "ef-"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def _link_exists(name: str) -> bool:
    return ip("link", "show", name, check=False).returncode == 0


def host_up() -> None:
    """Create the bridge and the safety routes (idempotent)."""
    if not _link_exists(BRIDGE):
        ip("link", "add", BRIDGE, "type", "bridge")
    ip("addr", "replace", f"{API_ADDRESS}/{POD_RANGE.prefixlen}", "dev", BRIDGE)
    ip("link", "set", BRIDGE, "up")
    for blackhole in (KWOK_POD_RANGE, SERVICE_RANGE):
        ip("route", "replace", "blackhole", str(blackhole))


def host_down() -> None:
    """Remove every pod namespace, the bridge and the routes; safe to repeat."""
    for name in pod_namespaces():
        delete_pod_namespace(name)
    for blackhole in (KWOK_POD_RANGE, SERVICE_RANGE):
        ip("route", "del", "blackhole", str(blackhole), check=False)
    if _link_exists(BRIDGE):
        ip("link", "del", BRIDGE)


def leftovers() -> list[str]:
    """What host_down should have removed but is still there (empty when clean)."""
    found = [f"netns {n}" for n in pod_namespaces()]
    if _link_exists(BRIDGE):
        found.append(f"link {BRIDGE}")
    routes = ip("route", "show", "type", "blackhole").stdout
    found += [f"route {r}" for r in (KWOK_POD_RANGE, SERVICE_RANGE) if str(r) in routes]
    return found


def pod_namespaces() -> list[str]:
    out = ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(NETNS_PREFIX)]


@dataclass(frozen=True)
class PodNetwork:
    """A pod's network namespace and its address on the bridge."""

    netns: str
    address: str


def create_pod_namespace(netns: str, address: str) -> PodNetwork:
    """A namespace with one veth on the bridge, as a bridge CNI plugin would make."""
    if ipaddress.ip_address(address) not in PROCESS_POD_RANGE:
        raise ValueError(f"{address} is outside {PROCESS_POD_RANGE}")
    host_end = "v" + netns[len(NETNS_PREFIX) :][:13]
    ip("netns", "add", netns)
    ip("link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", netns)
    ip("link", "set", host_end, "master", BRIDGE, "up")
    ip("-n", netns, "addr", "add", f"{address}/{POD_RANGE.prefixlen}", "dev", "eth0")
    ip("-n", netns, "link", "set", "lo", "up")
    ip("-n", netns, "link", "set", "eth0", "up")
    # Only the pod range is reachable; there is deliberately no default route.
    return PodNetwork(netns, address)


def delete_pod_namespace(netns: str) -> None:
    # Deleting the namespace destroys its veth end, which removes the host end too.
    ip("netns", "del", netns, check=False)
