"""A throwaway API server (etcd + kube-apiserver) for a real node to register with.

Not the shared test bed: these run inside the node's own network namespace, on
the node's address, with ports of their own (API_PORT, ETCD_PORT), from the
test bed's cached binaries (tests/cluster/versions.bin_dir(); `python -m
tests.cluster build` makes them). No controller-manager and no scheduler: the
point is the node's side (registration, Pods bound by `nodeName`, `kubectl
logs`/`exec` through the kubelet). Authentication is static tokens, enough for
a bed that lives a few minutes:

    python -m tests.cluster.realnode_control up    # node + API server + a Pod
    python -m tests.cluster.realnode down          # stops all of it
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.cluster import realnode, realnode_build, versions

API_PORT = 16443
ETCD_PORT = 12379
# Private and never routed: the node has no kube-proxy yet.
SERVICE_RANGE = "10.252.0.0/16"
ADMIN_TOKEN = "realnode-admin"  # a throwaway bed's static token
NODE_TOKEN = "realnode-kubelet"


def _folder(node: realnode.RealNode) -> Path:
    return node.paths.base / "control-plane"


def api_url() -> str:
    return f"https://{realnode.NODE_ADDRESS.ip}:{API_PORT}"


def _kubeconfig(path: Path, user: str, token: str) -> Path:
    # The serving certificate is kube-apiserver's self-signed one, made at start.
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "realnode", "cluster": {"server": api_url(), "insecure-skip-tls-verify": True}}
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "realnode", "context": {"cluster": "realnode", "user": user}}],
        "current-context": "realnode",
    }
    path.write_text(json.dumps(config, indent=2))
    return path


def admin_kubeconfig(node: realnode.RealNode) -> Path:
    return _folder(node) / "admin.kubeconfig"


def start(node: realnode.RealNode) -> Path:
    """Start etcd and kube-apiserver in the node's namespace; return the kubelet's kubeconfig.

    Call after the node's namespace exists and before its kubelet starts.
    """
    folder = _folder(node)
    folder.mkdir(parents=True, exist_ok=True)
    binaries = versions.bin_dir()
    _etcd(node, binaries, folder)
    _apiserver(node, binaries, folder)
    _kubeconfig(admin_kubeconfig(node), "admin", ADMIN_TOKEN)
    return _kubeconfig(folder / "kubelet.kubeconfig", f"system:node:{node.name}", NODE_TOKEN)


def _etcd(node: realnode.RealNode, binaries: Path, folder: Path) -> None:
    client = f"http://127.0.0.1:{ETCD_PORT}"
    peer = f"http://127.0.0.1:{ETCD_PORT + 1}"
    node.spawn(
        "etcd",
        [
            str(binaries / "etcd"),
            "--name=realnode",
            f"--data-dir={folder / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=realnode={peer}",
            "--listen-metrics-urls=",
        ],
    )
    node.wait_ready("etcd", lambda: node.http(f"{client}/health") is not None, timeout=60)


def _apiserver(node: realnode.RealNode, binaries: Path, folder: Path) -> None:
    key = folder / "sa.key"
    if not key.exists():
        subprocess.run(
            ["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True
        )
    tokens = folder / "tokens.csv"
    tokens.write_text(
        f"{ADMIN_TOKEN},admin,admin,system:masters\n"
        f"{NODE_TOKEN},system:node:{node.name},node-{node.name},system:nodes\n"
    )
    node.spawn(
        "kube-apiserver",
        [
            str(binaries / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{ETCD_PORT}",
            f"--bind-address={realnode.NODE_ADDRESS.ip}",
            f"--advertise-address={realnode.NODE_ADDRESS.ip}",
            f"--secure-port={API_PORT}",
            f"--cert-dir={folder / 'certs'}",
            f"--token-auth-file={tokens}",
            "--authorization-mode=Node,RBAC",
            f"--service-cluster-ip-range={SERVICE_RANGE}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={key}",
            f"--service-account-signing-key-file={key}",
            "--kubelet-preferred-address-types=InternalIP",
        ],
    )
    node.wait_ready("kube-apiserver", lambda: _readyz(node), timeout=120)


def _readyz(node: realnode.RealNode) -> bool:
    code = (
        "import ssl, sys, urllib.request\n"
        "ctx = ssl._create_unverified_context()\n"
        f"r = urllib.request.Request({api_url() + '/readyz'!r},"
        f" headers={{'Authorization': 'Bearer {ADMIN_TOKEN}'}})\n"
        "sys.stdout.write(urllib.request.urlopen(r, context=ctx, timeout=3).read().decode())"
    )
    out = subprocess.run(node.in_netns(sys.executable, "-c", code), capture_output=True, text=True)
    return out.returncode == 0 and out.stdout == "ok"


def kubectl(
    node: realnode.RealNode, *args: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The test bed's kubectl, as admin, from inside the node's namespace."""
    cmd = [str(versions.bin_dir() / "kubectl"), f"--kubeconfig={admin_kubeconfig(node)}", *args]
    return subprocess.run(
        node.in_netns(*cmd), check=check, capture_output=True, text=True, input=stdin
    )


def wait_node_ready(node: realnode.RealNode, timeout: float = 120) -> None:
    """`kubectl wait` fails at once on a Node not yet registered, so wait for it to exist."""
    deadline = time.monotonic() + timeout
    while kubectl(node, "get", "node", node.name, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise realnode.NodeFailed(f"node {node.name} did not register in {timeout:.0f}s")
        time.sleep(0.5)
    remaining = max(1, int(deadline - time.monotonic()))
    kubectl(node, "wait", "--for=condition=Ready", f"node/{node.name}", f"--timeout={remaining}s")


def web_pod_bound_to(node: realnode.RealNode) -> dict:
    """The busybox web pod, bound to the node by name (there is no scheduler)."""
    pod = realnode.web_pod(name="web-api", host_port=None)
    spec = pod["spec"]
    spec["nodeName"] = node.name
    # No controller-manager publishes kube-root-ca.crt, so no token volume.
    spec["automountServiceAccountToken"] = False
    return pod


def main() -> int:
    node = realnode.RealNode(bin=realnode_build.build_node())
    node.down()
    node.paths.base.mkdir(parents=True, exist_ok=True)
    node.netns_up()
    node.kubeconfig = start(node)
    node.up()
    wait_node_ready(node)
    # No controller-manager makes the default ServiceAccount that admission needs.
    kubectl(node, "create", "serviceaccount", "default", check=False)
    kubectl(node, "apply", "-f", "-", stdin=json.dumps(web_pod_bound_to(node)))
    kubectl(node, "wait", "--for=condition=Ready", "pod/web-api", "--timeout=120s")
    for args in (
        ("get", "nodes", "-o", "wide"),
        ("get", "pods", "-o", "wide"),
        ("logs", "web-api", "--tail=3"),
        ("exec", "web-api", "--", "/bin/busybox", "id"),
    ):
        print(f"$ kubectl {' '.join(args)}\n{kubectl(node, *args).stdout}")
    print(json.dumps({k: round(v, 1) for k, v in node.timings.items()}))
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["up"]:
        print(__doc__)
        raise SystemExit(2)
    raise SystemExit(main())
