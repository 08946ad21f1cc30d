"""Real nodes in the shared test bed: a kubelet + containerd node per REAL_NODES entry,
joined to the running cluster beside kwok's nodes (`bed_up`: the test bed with the
first one, as `python -m tests.cluster up`, the control-plane tests and `make demo`
start it). The first one also runs the cluster's DNS (coredns.py).

Each node keeps its own network namespace (tests/cluster/realnode.py) and gets one
link into the test bed's bridge: its address there is REAL_NODE_ADDRESSES[i], its
pods take the /24 REAL_POD_RANGES[i], and the host routes that /24 to the node,
so the API server, the host and other nodes' pods reach its pods, and its pods reach
the pod range and the API server; nothing else (no default route, no masquerade).

The kubelet authenticates with a client certificate (CN system:node:<name>, O
system:nodes) signed by the cluster's CA, as kubeadm's would be, so the Node
authorizer and NodeRestriction apply to it; its serving certificate is signed by
the same CA for the node's address. The Node object is created first, with its
podCIDR, labels and taints, as a cloud's node controller would.

    python -m tests.cluster.realnode_join up [NAME ...]   # default: every REAL_NODES entry
    python -m tests.cluster.realnode_join down
"""

from __future__ import annotations

import copy
import ipaddress
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.operator.builders.common import POD_SECURITY_CONTEXT, container_security_context
from images import build as images
from tests.cluster import coredns, kube, network, realnode, realnode_build, testbed

# Inside the bridge's 10.244.0.0/24, which holds only the API address (fleet.py).
_FIRST_NODE_ADDRESS = ipaddress.ip_address("10.244.0.10")
# Above every /24 fleet.py hands process nodes (their count is far below 64) and
# below kwok's fake pod range (10.244.128.0/17).
_REAL_POD_RANGE = ipaddress.ip_network("10.244.64.0/18")
REAL_LABEL = ("edgefleet.io/runtime", "container")
# Only Pods that tolerate it land here (the tests choose real nodes by name).
REAL_TAINT = {"key": "edgefleet.io/real-node", "value": "true", "effect": "NoSchedule"}
CERT_DAYS = 2


@dataclass(frozen=True)
class RealNodeSpec:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    # Advertised in node status once the kubelet has registered (a device plugin's job).
    extended_resources: dict[str, str] = field(default_factory=dict)
    # The project's images (images/build.py) loaded into the node's containerd.
    images: tuple[str, ...] = ("edgefleet",)


REAL_NODES = (
    RealNodeSpec("real-0", labels={"edgefleet.io/node-class": "edge"}),
    RealNodeSpec(
        "real-gpu-0",
        labels={
            "edgefleet.io/node-class": "gpu",
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": "vllm-cpu-build",
        },
        extended_resources={"nvidia.com/gpu": "1"},
        images=("edgefleet", "edgefleet-vllm"),
    ),
)


def placement(name: str) -> dict[str, Any]:
    """nodeSelector and tolerations that put a pod on the real node `name`."""
    return {
        "nodeSelector": {"kubernetes.io/hostname": name},
        "tolerations": [{"key": REAL_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}],
    }


def client_pod(namespace: str, node: str, script: str, name: str = "client") -> dict[str, Any]:
    """A one-shot pod of the product image on the real node `node`, running `script` in sh,
    as restricted as the product's own pods."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            **placement(node),
            "restartPolicy": "Never",
            "securityContext": copy.deepcopy(POD_SECURITY_CONTEXT),
            "containers": [
                {
                    "name": "client",
                    "image": images.public_ref("edgefleet"),
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", script],
                    "securityContext": container_security_context(),
                }
            ],
        },
    }


def node_address(index: int) -> ipaddress.IPv4Interface:
    return ipaddress.ip_interface(f"{_FIRST_NODE_ADDRESS + index}/{network.POD_RANGE.prefixlen}")


def pod_range(index: int) -> ipaddress.IPv4Network:
    return list(_REAL_POD_RANGE.subnets(new_prefix=24))[index]


def _pki() -> Path:
    return testbed.paths().cluster_dir / "pki"


def issue_certificate(
    folder: Path, stem: str, subject: str, usage: str, ip_address: str | None = None
) -> tuple[Path, Path]:
    """A key and a certificate signed by the test bed's CA (openssl; short-lived)."""
    key, csr, cert, ext = (folder / f"{stem}.{s}" for s in ("key", "csr", "crt", "ext"))
    extensions = [f"extendedKeyUsage = {usage}", "keyUsage = digitalSignature, keyEncipherment"]
    if ip_address:
        extensions.append(f"subjectAltName = IP:{ip_address}")
    ext.write_text("\n".join(extensions) + "\n")
    for cmd in (
        [
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key,
            "-subj",
            subject,
            "-out",
            csr,
        ],
        [
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            _pki() / "ca.crt",
            "-CAkey",
            _pki() / "ca.key",
            "-set_serial",
            str(time.time_ns()),
            "-days",
            str(CERT_DAYS),
            "-extfile",
            ext,
            "-out",
            cert,
        ],
    ):
        subprocess.run(["openssl", *map(str, cmd)], check=True, capture_output=True)
    key.chmod(0o600)
    return cert, key


def kubeconfig(path: Path, name: str, cert: Path, key: Path) -> Path:
    server = f"https://{network.API_ADDRESS}:{testbed.API_PORT}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "edgefleet",
                "cluster": {"server": server, "certificate-authority": str(_pki() / "ca.crt")},
            }
        ],
        "users": [
            {"name": name, "user": {"client-certificate": str(cert), "client-key": str(key)}}
        ],
        "contexts": [{"name": "edgefleet", "context": {"cluster": "edgefleet", "user": name}}],
        "current-context": "edgefleet",
    }
    path.write_text(json.dumps(config, indent=2))
    return path


def node_manifest(spec: RealNodeSpec, index: int) -> dict:
    cidr = str(pod_range(index))
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": spec.name,
            "labels": {
                "kubernetes.io/hostname": spec.name,
                REAL_LABEL[0]: REAL_LABEL[1],
                **spec.labels,
            },
        },
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr], "taints": [REAL_TAINT]},
    }


def make_node(spec: RealNodeSpec, index: int, bin_dir: Path) -> realnode.RealNode:
    """The RealNode for a REAL_NODES entry, its certificates and kubeconfig written."""
    node = realnode.RealNode(name=spec.name, pod_cidr=pod_range(index), bin=bin_dir)
    folder = node.paths.base / "pki"
    folder.mkdir(parents=True, exist_ok=True)
    address = node_address(index)
    client_cert, client_key = issue_certificate(
        folder, "kubelet-client", f"/O=system:nodes/CN=system:node:{spec.name}", "clientAuth"
    )
    serving_cert, serving_key = issue_certificate(
        folder, "kubelet-serving", f"/CN={spec.name}", "serverAuth", str(address.ip)
    )
    proxy_cert, proxy_key = issue_certificate(
        folder, "kube-proxy", "/CN=system:kube-proxy", "clientAuth"
    )
    node.kubeconfig = kubeconfig(
        folder / "kubelet.kubeconfig", f"system:node:{spec.name}", client_cert, client_key
    )
    node.join = realnode.Join(
        address=address,
        bridge=network.BRIDGE,
        client_ca=_pki() / "ca.crt",
        serving_cert=serving_cert,
        serving_key=serving_key,
        routes=(str(network.POD_RANGE), str(network.SERVICE_RANGE), str(network.INTERNET_RANGE)),
        proxy_kubeconfig=kubeconfig(
            folder / "kube-proxy.kubeconfig", "system:kube-proxy", proxy_cert, proxy_key
        ),
        cluster_cidr=str(network.POD_RANGE),
        cluster_dns=network.DNS_SERVICE_ADDRESS,
        cluster_domain=network.CLUSTER_DOMAIN,
        host=network.API_ADDRESS,
        api_port=testbed.API_PORT,
        outside=(str(network.INTERNET_RANGE),),
        enforcer_account=enforcer_account(node.paths.base / "enforcer-account"),
    )
    return node


# The NetworkPolicy enforcer's ServiceAccount: it reads pods, namespaces, nodes, the
# NetworkPolicies and the BaselineAdminNetworkPolicy, nothing else, and writes nothing.
ENFORCER = {"namespace": "kube-system", "name": "kube-network-policies"}


def enforcer_rbac() -> list[dict[str, Any]]:
    read = ["get", "list", "watch"]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": ENFORCER},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": ENFORCER["name"]},
            "rules": [
                {"apiGroups": [""], "resources": ["pods", "namespaces", "nodes"], "verbs": read},
                {
                    "apiGroups": ["networking.k8s.io"],
                    "resources": ["networkpolicies"],
                    "verbs": read,
                },
                {
                    "apiGroups": ["policy.networking.k8s.io"],
                    "resources": ["baselineadminnetworkpolicies"],
                    "verbs": read,
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": ENFORCER["name"]},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": ENFORCER["name"],
            },
            "subjects": [{"kind": "ServiceAccount", **ENFORCER}],
        },
    ]


def enforcer_prerequisites(bin_dir: Path) -> None:
    """What every node's enforcer needs from the cluster, applied once per join: the
    BaselineAdminNetworkPolicy CRD (it waits for its informer) and its RBAC."""
    _admin("apply", "--server-side", "-f", str(bin_dir / realnode_build.BASELINE_POLICY_CRD))
    _admin("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List",
                                                  "items": enforcer_rbac()}))  # fmt: skip


def enforcer_account(folder: Path) -> Path:
    """The enforcer's ServiceAccount files, as the kubelet would mount them in a pod: a
    token (outliving any test bed), the CA and the namespace."""
    token = _admin(
        "create", "token", ENFORCER["name"], "-n", ENFORCER["namespace"], "--duration=48h"
    ).strip()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "token").write_text(token)
    (folder / "ca.crt").write_bytes((_pki() / "ca.crt").read_bytes())
    (folder / "namespace").write_text(ENFORCER["namespace"])
    return folder


def _admin(*args: str, stdin: str | None = None) -> str:
    return kube.kubectl(*args, kubeconfig=testbed.paths().kubeconfig, stdin=stdin).stdout


def node_ready(name: str) -> bool:
    """The Node `name` exists and is Ready."""
    out = _admin(
        "get", "nodes", f"--field-selector=metadata.name={name}",
        "-o", "jsonpath={.items[*].status.conditions[?(@.type=='Ready')].status}",
    )  # fmt: skip
    return out == "True"


def up(specs: tuple[RealNodeSpec, ...] = REAL_NODES) -> list[realnode.RealNode]:
    """Join each node to the running test bed; return them Ready, images loaded."""
    bin_dir = realnode_build.build_node()
    enforcer_prerequisites(bin_dir)
    nodes = []
    for spec in specs:
        index = REAL_NODES.index(spec)
        # A run killed earlier must not leak into this one.
        left = realnode.RealNode(name=spec.name, bin=realnode_build.bin_dir()).down()
        if left:
            raise realnode.NodeFailed(f"{spec.name}: an earlier run left {left}")
        node = make_node(spec, index, bin_dir)
        _admin("apply", "-f", "-", stdin=json.dumps(node_manifest(spec, index)))
        node.up()
        for image in spec.images:
            node.import_image(images.ensure_image(image).archive)
        kube.wait_for(f"node {spec.name} Ready", lambda n=spec.name: node_ready(n), timeout=120)
        if spec.extended_resources:
            patch = {"status": {"capacity": spec.extended_resources}}
            _admin(
                "patch",
                "node",
                spec.name,
                "--subresource=status",
                "--type=merge",
                "-p",
                json.dumps(patch),
            )
        nodes.append(node)
        if spec == REAL_NODES[0]:
            # The cluster's DNS lives on the first real node (the others' pods reach
            # it through kube-proxy like any Service).
            coredns.up(spec.name, REAL_TAINT["key"])
    return nodes


def down(specs: tuple[RealNodeSpec, ...] = REAL_NODES) -> list[str]:
    """Stop each node and delete its Node object; return what is left behind."""
    left: list[str] = []
    if REAL_NODES[0] in specs:
        coredns.down()
    for spec in specs:
        node = realnode.RealNode(name=spec.name, bin=realnode_build.bin_dir())
        left += [f"{spec.name}: {item}" for item in node.down()]
        cidr = str(pod_range(REAL_NODES.index(spec)))
        network.ip("route", "del", cidr, check=False)
        if network.ip("route", "show", cidr).stdout.strip():
            left.append(f"{spec.name}: route {cidr}")
        if testbed.paths().kubeconfig.exists():
            kube.kubectl(
                "delete",
                "node",
                spec.name,
                "--ignore-not-found",
                "--wait=false",
                kubeconfig=testbed.paths().kubeconfig,
                check=False,
            )
    return left


def bed_up() -> testbed.Paths:
    """A fresh test bed (testbed.up) with its first real node joined: where the chart, the
    tests' pods and the cluster's DNS run. A failed join takes the test bed down again."""
    paths = testbed.up()
    try:
        up(REAL_NODES[:1])
    except BaseException:
        down()
        testbed.down(quiet=True)
        raise
    return paths


def bed_down() -> None:
    """Stop every real node, then the test bed; raise naming anything left behind."""
    left = down()
    testbed.down()
    if left:
        raise RuntimeError("real nodes left things behind:\n" + "\n".join(left))


def main(argv: list[str]) -> int:
    command, names = (argv[0], argv[1:]) if argv else ("help", [])
    specs = tuple(s for s in REAL_NODES if not names or s.name in names)
    if command == "up":
        for node in up(specs):
            print(f"{node.name} Ready at {node.address}, pods {node.pod_cidr}")
    elif command == "down":
        return realnode.leftover_status(down(specs))
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
