"""One run of a container probe (httpGet, tcpSocket, grpc, exec) against a Pod's address."""

from __future__ import annotations

import socket
import subprocess
import urllib.request
from typing import Any


def named_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"unknown named port {port}")


def run_probe(
    spec: dict[str, Any], container: dict[str, Any], address: str, netns: str, grpcurl: str
) -> bool:
    """True when the probe passes once; any error or timeout is a failure."""
    timeout = float(spec.get("timeoutSeconds", 1))
    try:
        if "httpGet" in spec:
            get = spec["httpGet"]
            port = named_port(container, get["port"])
            url = f"http://{address}:{port}{get.get('path', '/')}"
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return 200 <= resp.status < 400
        if "tcpSocket" in spec:
            port = named_port(container, spec["tcpSocket"]["port"])
            with socket.create_connection((address, port), timeout):
                return True
        if "grpc" in spec:
            target = f"{address}:{named_port(container, spec['grpc']['port'])}"
            service = spec["grpc"].get("service", "")
            request = ["-d", f'{{"service": "{service}"}}'] if service else []
            check = [*request, target, "grpc.health.v1.Health/Check"]
            out = subprocess.run(
                [grpcurl, "-plaintext", "-max-time", str(timeout), *check],
                capture_output=True,
                text=True,
                timeout=timeout + 5,
            )
            serving = "SERVING" in out.stdout and "NOT_SERVING" not in out.stdout
            return out.returncode == 0 and serving
        if "exec" in spec:
            cmd = ["ip", "netns", "exec", netns, *spec["exec"]["command"]]
            return subprocess.run(cmd, capture_output=True, timeout=timeout + 5).returncode == 0
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return False
    return False
