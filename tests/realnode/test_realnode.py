"""A real node on this machine: kubelet -> CRI -> containerd v2 -> runc, pods on CNI.

The kubelet runs standalone (static pods, no API server), so the tests read the
pods' status from the kubelet's own read-only /pods endpoint.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable
from pathlib import Path

from tests.cluster import realnode


def _eventually(check: Callable[[], bool], timeout: float = 10) -> bool:
    """containerd copies a container's output to its log asynchronously, so a
    probe can pass before its request line is in the log."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _container(pod: dict, name: str) -> dict:
    return next(c for c in pod["status"]["containerStatuses"] if c["name"] == name)


def test_static_pod_runs_as_a_container_with_a_pod_ip_and_passing_probes(
    node: realnode.RealNode,
) -> None:
    node.add_static_pod(realnode.web_pod())
    pod = realnode.wait_pod_ready(node, "web", timeout=120)

    assert pod["status"]["phase"] == "Running"
    pod_ip = ipaddress.ip_address(pod["status"]["podIP"])
    assert pod_ip in realnode.NODE_POD_CIDR
    httpd = _container(pod, "httpd")
    # ready means the httpGet readiness probe passed; started, the liveness one runs.
    assert httpd["ready"] is True
    assert httpd["started"] is True
    assert "running" in httpd["state"]
    assert httpd["containerID"].startswith("containerd://")

    # The CRI's own view: the container is running, and its log holds the
    # kubelet's probe requests, answered 200.
    listing = node.crictl("ps", "--name", "httpd", "--state", "Running", "-q").stdout.split()
    assert len(listing) == 1
    assert _eventually(lambda: "response:200" in node.crictl("logs", listing[0]).stderr)

    assert node.pod_http(str(pod_ip), 8080) == "edgefleet real node\n"
    # hostPort through the portmap plugin, on the bridge's (the node's) address.
    gateway = next(realnode.NODE_POD_CIDR.hosts())
    assert node.pod_http(str(gateway), 18080) == "edgefleet real node\n"


def test_the_container_runs_as_its_security_context_says(node: realnode.RealNode) -> None:
    node.add_static_pod(realnode.web_pod())
    realnode.wait_pod_ready(node, "web", timeout=120)
    container_id = node.crictl("ps", "--name", "httpd", "-q").stdout.split()[0]
    status = node.crictl("exec", container_id, "/bin/busybox", "cat", "/proc/self/status").stdout
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert fields["Uid"].split()[0] == "10001"
    assert int(fields["CapEff"].strip(), 16) == 0
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"  # filter mode: RuntimeDefault applied
    write = node.crictl("exec", container_id, "/bin/busybox", "touch", "/www/x", check=False)
    assert write.returncode != 0  # read-only root filesystem


def test_down_leaves_no_process_mount_namespace_or_cgroup_and_restores_sysctls() -> None:
    from tests.cluster import realnode_build

    before = {key: (Path("/proc/sys") / key).read_text() for key in realnode.KERNEL_TUNABLES}
    node = realnode.RealNode(bin=realnode_build.build_node())
    node.down()
    node.up()
    node.add_static_pod(realnode.web_pod())
    realnode.wait_pod_ready(node, "web", timeout=120)
    assert node.leftovers(), "a running node must show up as leftovers"

    assert node.down() == []
    assert not node.paths.base.exists()
    after = {key: (Path("/proc/sys") / key).read_text() for key in realnode.KERNEL_TUNABLES}
    assert after == before


def test_the_node_registers_with_an_api_server_and_serves_logs_and_exec() -> None:
    from tests.cluster import realnode_build, realnode_control

    node = realnode.RealNode(bin=realnode_build.build_node())
    assert node.down() == []
    try:
        node.paths.base.mkdir(parents=True)
        node.netns_up()
        node.kubeconfig = realnode_control.start(node)
        node.up()

        def kubectl(*args: str, stdin: str | None = None) -> str:
            return realnode_control.kubectl(node, *args, stdin=stdin).stdout

        realnode_control.wait_node_ready(node)
        assert "containerd://2.4" in kubectl(
            "get", "node", node.name, "-o", "jsonpath={.status.nodeInfo.containerRuntimeVersion}"
        )
        kubectl("create", "serviceaccount", "default")
        kubectl("apply", "-f", "-", stdin=json.dumps(realnode_control.web_pod_bound_to(node)))
        kubectl("wait", "--for=condition=Ready", "pod/web-api", "--timeout=120s")

        pod_ip = kubectl("get", "pod", "web-api", "-o", "jsonpath={.status.podIP}")
        assert ipaddress.ip_address(pod_ip) in realnode.NODE_POD_CIDR
        assert _eventually(lambda: "response:200" in kubectl("logs", "web-api"))
        assert kubectl("exec", "web-api", "--", "/bin/busybox", "id", "-u").strip() == "10001"
    finally:
        assert node.down() == []
