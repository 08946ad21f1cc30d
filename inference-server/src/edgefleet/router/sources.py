"""Files the router follows: the policy and the endpoint list, reloaded on change.

Kubernetes updates a mounted ConfigMap by swapping a symlink, so the file's
identity (inode, size, mtime) is compared on each check rather than relying
on inotify, which misses symlink swaps.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.routing.policy import PolicyError, load_file


@dataclass(frozen=True)
class Endpoints:
    """Where the router sends requests: local model servers and the egress."""

    local: tuple[str, ...] = ()
    cloud: str | None = None
    # Target weight (1..100) per local address; an address not named weighs 1.
    # Files and flags give none: every replica is equal, as before weights.
    weights: Mapping[str, int] = field(default_factory=dict)

    def weight(self, address: str) -> int:
        return self.weights.get(address, 1)


def parse_endpoints(document: Any, source: str = "endpoints") -> Endpoints:
    """`{"local": ["host:port", ...], "cloud": "host:port"}`; the operator writes it."""
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise PolicyError(["must be a mapping with local and cloud"], source)
    problems = [
        f"{key}: unknown field; known fields: cloud, local"
        for key in document
        if key not in ("local", "cloud")
    ]
    local = document.get("local") or []
    if not isinstance(local, list) or not all(_is_address(a) for a in local):
        problems.append(f"local: must be a list of host:port addresses, got {local!r}")
        local = []
    cloud = document.get("cloud") or None
    if cloud is not None and not _is_address(cloud):
        problems.append(f"cloud: must be a host:port address, got {cloud!r}")
    if problems:
        raise PolicyError(problems, source)
    return Endpoints(tuple(dict.fromkeys(local)), cloud)


def _is_address(value: object) -> bool:
    if not isinstance(value, str):
        return False
    host, _, port = value.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def load_endpoints(path: Path) -> Endpoints:
    return load_file(path, parse_endpoints)


class FileWatch:
    """Tells whether a file changed since the last call that said so."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen = self._identity()

    def _identity(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_ino, stat.st_size, stat.st_mtime_ns

    def changed(self) -> bool:
        identity = self._identity()
        if identity == self._seen:
            return False
        self._seen = identity
        return True
