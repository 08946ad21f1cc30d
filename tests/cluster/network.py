"""The test bed's private network: a host bridge for the pod range.

Safety is the point of this module. Every address the test bed uses lies in
ranges that get host routes keeping packets on this machine:

* POD_RANGE (10.244.0.0/16) is routed to the bridge, which has no uplink, so a
  packet for a pod IP either reaches a real node's pods (each node's /24 is
  routed to its link on the bridge, tests/cluster/realnode_join.py) or is dropped.
* KWOK_POD_RANGE (fake pods, which have no namespace) and SERVICE_RANGE (on the
  host; kube-proxy serves it inside each real node's namespace) are blackholed.
"""

from __future__ import annotations

import ipaddress
import subprocess

BRIDGE = "efbr0"
POD_RANGE = ipaddress.ip_network("10.244.0.0/16")
# The bridge's own address: the API server advertises it, so pods reach it.
API_ADDRESS = "10.244.0.1"
# kwok's fake pods take the top half of the pod range; real nodes' pods the bottom.
KWOK_POD_RANGE = ipaddress.ip_network("10.244.128.0/17")
SERVICE_RANGE = ipaddress.ip_network("10.96.0.0/12")
# The cluster DNS Service's ClusterIP (kube-dns, served by CoreDNS on a real node),
# kubeadm's choice: the tenth address of the Service range.
DNS_SERVICE_ADDRESS = str(SERVICE_RANGE[10])
CLUSTER_DOMAIN = "cluster.local"


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
    """Remove the bridge and the routes; safe to repeat."""
    for blackhole in (KWOK_POD_RANGE, SERVICE_RANGE):
        ip("route", "del", "blackhole", str(blackhole), check=False)
    if _link_exists(BRIDGE):
        ip("link", "del", BRIDGE)


def leftovers() -> list[str]:
    """What host_down should have removed but is still there (empty when clean)."""
    found = []
    if _link_exists(BRIDGE):
        found.append(f"link {BRIDGE}")
    routes = ip("route", "show", "type", "blackhole").stdout
    found += [f"route {r}" for r in (KWOK_POD_RANGE, SERVICE_RANGE) if str(r) in routes]
    return found
