"""Which namespace a client runs in, from its IP: the pods of the sensitive namespaces.

Pure, so it is tested without a cluster: the watch in router.kube hands each
namespace's current pods (raw API dicts) to `PodIndex.replace`, and the
engine asks `client_namespace` for every request. Fail closed: until every
sensitive namespace's pods have been listed (and again after a watch was
lost, until it is relisted) a client the index does not place is treated as
sensitive; so is a request without a client address.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

from edgefleet.routing.decision import ClientNamespace
from edgefleet.serving.types import canonical_ip

# A pod in these phases runs nothing any more; its IP may already be another pod's.
_FINISHED = ("Succeeded", "Failed")


def pod_addresses(pod: Mapping[str, Any]) -> frozenset[str]:
    """The IPs a pod's containers may send from; empty once it has finished.

    Pending pods count once they have an IP (init containers run then), and
    so do terminating ones (they run until their grace period ends). A
    hostNetwork pod's IP is its node's: every client on that node's own
    network is then taken for this namespace (the safe side).
    """
    status = pod.get("status") or {}
    if status.get("phase") in _FINISHED:
        return frozenset()
    texts = [status.get("podIP"), *((item or {}).get("ip") for item in status.get("podIPs") or [])]
    return frozenset(ip for ip in (canonical_ip(t) for t in texts if t) if ip)


def apply_watch_event(
    objects: MutableMapping[str, dict[str, Any]], kind: str, obj: dict[str, Any]
) -> bool:
    """Apply one watch event to {name: object}; False when nothing changed (a bookmark)."""
    if kind == "BOOKMARK":
        return False
    name = obj["metadata"]["name"]
    if kind == "DELETED":
        return objects.pop(name, None) is not None
    objects[name] = obj
    return True


class PodIndex:
    """Pod IPs of the watched namespaces, and which namespaces are fully known."""

    def __init__(self) -> None:
        self._addresses: dict[str, frozenset[str]] = {}
        self._synced: set[str] = set()

    @property
    def namespaces(self) -> frozenset[str]:
        return frozenset(self._addresses)

    def follow(self, namespaces: Iterable[str]) -> None:
        """Watch exactly these namespaces: others are forgotten, new ones start unsynced."""
        wanted = set(namespaces)
        for gone in set(self._addresses) - wanted:
            del self._addresses[gone]
            self._synced.discard(gone)
        for new in wanted - set(self._addresses):
            self._addresses[new] = frozenset()

    def replace(self, namespace: str, pods: Iterable[Mapping[str, Any]]) -> None:
        """The namespace's whole current pod list (after a list or any watch event)."""
        if namespace not in self._addresses:
            return  # a late word from a namespace no longer followed
        found: set[str] = set()
        for pod in pods:
            found |= pod_addresses(pod)
        self._addresses[namespace] = frozenset(found)
        self._synced.add(namespace)

    def lost(self, namespace: str) -> None:
        """The watch failed: events may be missed until the next list completes."""
        self._synced.discard(namespace)

    def addresses(self, namespace: str) -> frozenset[str]:
        return self._addresses.get(namespace, frozenset())

    def synced(self, namespace: str) -> bool:
        return namespace in self._synced

    def namespaces_of(self, address: str) -> set[str]:
        return {ns for ns, addresses in self._addresses.items() if address in addresses}


def client_namespace(
    sensitive: Iterable[str], address: str | None, index: PodIndex
) -> ClientNamespace | None:
    """The policy's verdict on a client at `address`; None: not sensitive by namespace.

    `sensitive` is the policy's list (the authority: a namespace the index
    does not follow yet counts as unsynced).
    """
    namespaces = set(sensitive)
    if not namespaces:
        return None
    if address is None:
        return ClientNamespace.CLIENT_UNKNOWN
    if index.namespaces_of(address) & namespaces:
        return ClientNamespace.SENSITIVE
    if any(not index.synced(ns) for ns in namespaces):
        return ClientNamespace.UNSYNCED
    return None
