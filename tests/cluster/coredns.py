"""The cluster's DNS: CoreDNS as a pod on a real node, behind the kube-dns Service.

Joined real nodes write `nameserver <DNS_SERVICE_ADDRESS>` and the cluster.local
search path into their pods' resolv.conf; kube-proxy takes that ClusterIP to this
pod. CoreDNS answers `*.svc.cluster.local` from the API (Services and
EndpointSlices) and nothing else: there is no upstream to forward to, so a name
outside the cluster gets an error instead of a packet leaving the machine.

The image is realnode_build's (the binary alone, run as nobody); names and labels
are kubeadm's, which the product's NetworkPolicies expect (k8s-app: kube-dns in
kube-system, port 53).
"""

from __future__ import annotations

import json
from typing import Any

from tests.cluster import kube, network, realnode_build, testbed

NAMESPACE = "kube-system"
NAME = "coredns"
LABELS = {"k8s-app": "kube-dns"}
# kubeadm's Corefile without `forward` (no upstream) and `loop` (nothing to loop to).
COREFILE = f"""\
.:53 {{
    errors
    health :8080
    ready :8181
    kubernetes {network.CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        pods disabled
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    cache 30
}}
"""


def manifests(node: str, taint_key: str) -> list[dict[str, Any]]:
    """RBAC, Corefile, the Deployment pinned to `node` (tolerating its taint), the Service."""
    meta = {"name": NAME, "namespace": NAMESPACE, "labels": LABELS}
    rules = [
        {"apiGroups": [""], "resources": ["services", "namespaces"], "verbs": ["list", "watch"]},
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["list", "watch"],
        },
    ]
    pod_spec = {
        "serviceAccountName": NAME,
        # CoreDNS itself asks no DNS; its pod gets the node's (empty) resolv.conf.
        "dnsPolicy": "Default",
        "nodeSelector": {"kubernetes.io/hostname": node},
        "tolerations": [{"key": taint_key, "operator": "Exists", "effect": "NoSchedule"}],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
            # Port 53 without a capability: a namespaced sysctl the kubelet allows.
            "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "53"}],
        },
        "containers": [
            {
                "name": NAME,
                "image": realnode_build.COREDNS_IMAGE,
                "imagePullPolicy": "Never",
                "args": ["-conf", "/etc/coredns/Corefile"],
                "ports": [
                    {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                ],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
                "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}},
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                    "readOnlyRootFilesystem": True,
                },
                "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns"}],
            }
        ],
        "volumes": [{"name": "config", "configMap": {"name": NAME}}],
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "edgefleet-testbed:coredns"},
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "edgefleet-testbed:coredns"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "edgefleet-testbed:coredns",
            },
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}],
        },
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"Corefile": COREFILE}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta,
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": LABELS},
                "template": {"metadata": {"labels": LABELS}, "spec": pod_spec},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {**meta, "name": "kube-dns"},
            "spec": {
                "selector": LABELS,
                "clusterIP": network.DNS_SERVICE_ADDRESS,
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                ],
            },
        },
    ]


def _kubectl(*args: str, stdin: str | None = None, check: bool = True) -> str:
    return kube.kubectl(
        *args, kubeconfig=testbed.paths().kubeconfig, stdin=stdin, check=check
    ).stdout


def _serving() -> bool:
    ready = _kubectl(
        "get", "deployment", NAME, "-n", NAMESPACE, "-o", "jsonpath={.status.readyReplicas}"
    )
    return ready == "1"


def up(node: str, taint_key: str, timeout: float = 120) -> None:
    """Apply CoreDNS on `node` and wait until it is ready (idempotent)."""
    items = {"apiVersion": "v1", "kind": "List", "items": manifests(node, taint_key)}
    _kubectl("apply", "-f", "-", stdin=json.dumps(items))
    kube.wait_for("CoreDNS ready", _serving, timeout=timeout)


def down() -> None:
    """Remove what `up` applied (the objects' absence is not an error)."""
    if not testbed.paths().kubeconfig.exists():
        return
    for kind, name, namespace in (
        ("service", "kube-dns", NAMESPACE),
        ("deployment", NAME, NAMESPACE),
        ("configmap", NAME, NAMESPACE),
        ("serviceaccount", NAME, NAMESPACE),
        ("clusterrolebinding", "edgefleet-testbed:coredns", None),
        ("clusterrole", "edgefleet-testbed:coredns", None),
    ):
        where = ["-n", namespace] if namespace else []
        _kubectl("delete", kind, name, *where, "--ignore-not-found", "--wait=false", check=False)
