"""The test bed's private network: a host bridge for the pod range.

Safety is the point of this module. Every address the test bed uses lies in
ranges that get host routes keeping packets on this machine:

* POD_RANGE (10.244.0.0/16) is routed to the bridge, which has no uplink, so a
  packet for a pod IP either reaches a real node's pods (each node's /24 is
  routed to its link on the bridge, tests/cluster/realnode_join.py) or is dropped.
* KWOK_POD_RANGE (fake pods, which have no namespace) and SERVICE_RANGE (on the
  host; kube-proxy serves it inside each real node's namespace) are blackholed.
* INTERNET_RANGE is the test bed's stand-in for the internet: a network namespace
  of its own (INTERNET_NETNS) on a veth from the host, outside every cluster range.
  Real nodes route it to the host, which routes it down the veth; without the veth
  a blackhole route of lower priority keeps it on the machine.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import subprocess
import threading
from pathlib import Path

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
# The internet stand-in: where the cloud LLM answers in the control-plane tests, so
# that only what NetworkPolicies let out can reach it.
INTERNET_NETNS = "efnet-internet"
INTERNET_NETNS_PATH = Path("/run/netns") / INTERNET_NETNS
INTERNET_LINK = "efinet0"
INTERNET_RANGE = ipaddress.ip_network("172.31.199.0/24")
INTERNET_GATEWAY = str(INTERNET_RANGE[1])  # the host's end
INTERNET_ADDRESS = str(INTERNET_RANGE[2])  # the "internet host"
# Below the veth's own route (metric 0): it only answers when the veth is gone.
FALLBACK_METRIC = "4242"


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
    ip("route", "replace", "blackhole", str(INTERNET_RANGE), "metric", FALLBACK_METRIC)
    _internet_up()


def _internet_up() -> None:
    """The internet stand-in's namespace, its veth from the host, and its way back to
    the pods (through the host, which routes the pod range to the nodes)."""
    if not INTERNET_NETNS_PATH.exists():
        ip("netns", "add", INTERNET_NETNS)
    if not _link_exists(INTERNET_LINK):
        ip("link", "add", INTERNET_LINK, "type", "veth", "peer", "name", "eth0",
           "netns", INTERNET_NETNS)  # fmt: skip
    prefix = INTERNET_RANGE.prefixlen
    ip("addr", "replace", f"{INTERNET_GATEWAY}/{prefix}", "dev", INTERNET_LINK)
    ip("link", "set", INTERNET_LINK, "up")
    inside = ("-n", INTERNET_NETNS)
    ip(*inside, "addr", "replace", f"{INTERNET_ADDRESS}/{prefix}", "dev", "eth0")
    ip(*inside, "link", "set", "eth0", "up")
    ip(*inside, "link", "set", "lo", "up")
    ip(*inside, "route", "replace", str(POD_RANGE), "via", INTERNET_GATEWAY)


def host_down() -> None:
    """Remove the bridge, the internet stand-in and the routes; safe to repeat."""
    if INTERNET_NETNS_PATH.exists():
        ip("netns", "del", INTERNET_NETNS)  # its veth, and the host's end, go with it
    ip("route", "del", "blackhole", str(INTERNET_RANGE), "metric", FALLBACK_METRIC, check=False)
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
    found += [
        f"route {r}" for r in (KWOK_POD_RANGE, SERVICE_RANGE, INTERNET_RANGE) if str(r) in routes
    ]
    if INTERNET_NETNS_PATH.exists():
        found.append(f"netns {INTERNET_NETNS}")
    return found


_CLONE_NEWNET = 0x40000000


def listening_socket(netns: str, host: str, port: int) -> socket.socket:
    """A TCP socket listening on host:port inside the network namespace `netns`.

    A socket stays in the namespace it was made in: a short-lived thread enters
    `netns` (setns moves only the calling thread), makes it and leaves, so this
    process's own threads never change namespace. What serves it (a loop in any
    thread) then answers there, and dials out from here.
    """
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def make() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            if libc.setns(target, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {netns}")
            made.append(socket.create_server((host, port)))
        except BaseException as exc:  # handed to the caller's thread
            failed.append(exc)
        finally:
            os.close(target)
        # This thread ends here, and its namespace with it: nothing to switch back.

    thread = threading.Thread(target=make, name=f"socket-in-{netns}")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]
