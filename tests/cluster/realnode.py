"""A real Kubernetes node on this machine: containerd v2 + runc + CNI, and a kubelet.

The node lives in its own network namespace (`efrn-<node>`), which has no link
to the host or anything else: the CNI bridge, the pods' addresses
(NODE_POD_CIDR), the kubelet's ports and any hostPort rules exist only inside
it, so no packet can leave the machine and nothing clashes with the shared test
bed (ports 443, 2379, ... on the host, pod range 10.244.0.0/16 on `efbr0`).
Only the network is separate: containerd and the kubelet share the host's
mount namespace and cgroup hierarchies, as on any node, which is why
`nsenter --net` (not `ip netns exec`, which remounts /sys and so hides
/sys/fs/cgroup) starts them.

State lives under /tmp/edgefleet-realnode/<node> (EDGEFLEET_REALNODE_DIR moves
it); pod cgroups under /<cgroup controller>/edgefleet-realnode/<node>.

    python -m tests.cluster.realnode build   # binaries and images, cached
    python -m tests.cluster.realnode up      # containerd + standalone kubelet + a static pod
    python -m tests.cluster.realnode status  # the kubelet's view of its pods
    python -m tests.cluster.realnode down    # stop everything; fails on any leftover
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.cluster import procs, realnode_build, versions

NODE_NAME = "realnode-0"
# Private, and only ever routed inside the node's own network namespace.
NODE_POD_CIDR = ipaddress.ip_network("10.250.0.0/24")
# The node's own address, on lo in its namespace: the kubelet needs
# one, and without a default route it cannot pick one itself.
NODE_ADDRESS = ipaddress.ip_interface("10.251.0.1/32")
NETNS_PREFIX = "efrn-"
# The host end of a joined node's link into the test bed's bridge: efru-<node>.
JOIN_LINK_PREFIX = "efru-"
CGROUP_V1 = Path("/sys/fs/cgroup")
KUBELET_READ_ONLY_PORT = 10255
KUBE_PROXY_HEALTH_PORT = 10256
# kube-network-policies: the netfilter queue it reads, and its metrics (in the node's
# namespace only, like every port here).
NETPOL_QUEUE = 100
NETPOL_METRICS_PORT = 10259
NETPOL_CHAIN = "EDGEFLEET-NETPOL"
# Where a pod finds its ServiceAccount, the only credentials the enforcer reads.
SERVICE_ACCOUNT_DIR = "/run/secrets/kubernetes.io/serviceaccount"
# What kubelet sets on start (container_manager_linux.go setupKernelTunables);
# these are global, so `down` puts back the values found before `up`.
KERNEL_TUNABLES = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)


@dataclass(frozen=True)
class Join:
    """How a node joins the shared test bed (realnode_join): its address on the test
    bed's bridge (the node end of a veth), the CA its kubelet trusts for the API
    server's client certificate, and the kubelet's own serving certificate."""

    address: ipaddress.IPv4Interface
    bridge: str
    client_ca: Path
    # The kubelet's serving certificate, signed by the same CA (API server → kubelet).
    serving_cert: Path
    serving_key: Path
    # Every range the pods may reach through the node (the test bed's pod range
    # and the Service range, which kube-proxy translates in the node's namespace).
    routes: tuple[str, ...]
    # kube-proxy's credentials (system:kube-proxy) and the cluster's pod range.
    proxy_kubeconfig: Path
    cluster_cidr: str
    # The cluster DNS Service's address and domain, written into pods' resolv.conf.
    cluster_dns: str
    cluster_domain: str
    # The test bed's host on the bridge: the API server's address, and the node's
    # next hop for the ranges outside the cluster it may reach (`outside`).
    host: str
    api_port: int
    outside: tuple[str, ...]
    # A folder with a ServiceAccount's token, ca.crt and namespace, for the
    # NetworkPolicy enforcer.
    enforcer_account: Path


class NodeFailed(RuntimeError):
    """A node component did not come up; the message carries its log's tail."""


# Eviction starts at 1 GiB free (the kubelets' evictionHard); a node that imports an
# image needs its unpacked size above that, and the tests' logs and models beside it.
DISK_HEADROOM_BYTES = 3 * 2**30


def _check_room_for(archive: Path, where: Path) -> None:
    """Refuse an import that would leave the shared disk to the kubelets' eviction:
    every node of the test bed would then evict its pods at once."""
    needed = archive.stat().st_size + DISK_HEADROOM_BYTES
    free = shutil.disk_usage(where).free
    if free < needed:
        raise NodeFailed(
            f"importing {archive.name} needs {needed / 2**30:.1f} GiB free on {where}'s "
            f"disk, it has {free / 2**30:.1f} GiB: free some (old clones, podman images: "
            "`podman image prune`) and run again"
        )


def state_root() -> Path:
    return Path(os.environ.get("EDGEFLEET_REALNODE_DIR", "/tmp/edgefleet-realnode"))


@dataclass(frozen=True)
class NodePaths:
    base: Path

    @property
    def containerd_root(self) -> Path:
        return self.base / "containerd" / "root"

    @property
    def containerd_state(self) -> Path:
        return self.base / "containerd" / "state"

    @property
    def containerd_socket(self) -> Path:
        return self.base / "containerd" / "containerd.sock"

    @property
    def containerd_config(self) -> Path:
        return self.base / "containerd" / "config.toml"

    @property
    def cni_conf(self) -> Path:
        return self.base / "cni" / "net.d"

    @property
    def cni_ipam(self) -> Path:
        return self.base / "cni" / "ipam"

    @property
    def kubelet_root(self) -> Path:
        return self.base / "kubelet" / "root"

    @property
    def manifests(self) -> Path:
        return self.base / "kubelet" / "manifests"

    @property
    def pod_logs(self) -> Path:
        return self.base / "kubelet" / "pod-logs"

    @property
    def kubelet_config(self) -> Path:
        return self.base / "kubelet" / "config.yaml"

    @property
    def crictl_config(self) -> Path:
        return self.base / "crictl.yaml"

    @property
    def sysctl_backup(self) -> Path:
        return self.base / "sysctl-before-up.json"

    @property
    def pids(self) -> Path:
        return self.base / "pids.json"

    def log(self, component: str) -> Path:
        return self.base / "logs" / f"{component}.log"


@dataclass
class RealNode:
    """One real node: call `up()`, then `down()` (which also works after a crash)."""

    name: str = NODE_NAME
    pod_cidr: ipaddress.IPv4Network = NODE_POD_CIDR
    bin: Path = field(default_factory=realnode_build.bin_dir)
    # Registers with this API server when set (realnode_control); standalone otherwise.
    kubeconfig: Path | None = None
    # Set for a node of the shared test bed (realnode_join): the node's address is
    # then its link into the test bed's bridge instead of one on its own lo.
    join: Join | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def paths(self) -> NodePaths:
        return NodePaths(state_root() / self.name)

    @property
    def netns(self) -> str:
        return NETNS_PREFIX + self.name

    @property
    def address(self) -> str:
        return str((self.join.address if self.join else NODE_ADDRESS).ip)

    @property
    def host_link(self) -> str:
        """A joined node's veth end on the host (its peer is the node's eth0)."""
        return JOIN_LINK_PREFIX + self.name[: 15 - len(JOIN_LINK_PREFIX)]

    @property
    def cgroup_parent(self) -> str:
        return f"/edgefleet-realnode/{self.name}"

    # --- helpers ------------------------------------------------------------------

    def in_netns(self, *cmd: str) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns}", "--", *cmd]

    def container_pid(self, container_id: str) -> int:
        """The host pid of a running container's main process, from the id the kubelet
        reports in a Pod's status (`containerd://<id>`)."""
        found = self.crictl("inspect", container_id.removeprefix("containerd://")).stdout
        return int(json.loads(found)["info"]["pid"])

    def container_log(self, pod: dict, container: str, restarts: int = 0) -> Path:
        """Where the kubelet writes a container's log (CRI format: time, stream, tag, line)."""
        meta = pod["metadata"]
        folder = f"{meta['namespace']}_{meta['name']}_{meta['uid']}"
        return self.paths.pod_logs / folder / container / f"{restarts}.log"

    def crictl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        endpoint = f"unix://{self.paths.containerd_socket}"
        cmd = [
            str(self.bin / "crictl"),
            # Its own (empty) config: otherwise it looks for /etc/crictl.yaml.
            "--config",
            str(self.paths.crictl_config),
            "--runtime-endpoint",
            endpoint,
            "--image-endpoint",
            endpoint,
            "--timeout",
            "20s",
            *args,
        ]
        # In the node's namespace: `exec`, `attach` and `port-forward` reach
        # containerd's streaming server on the namespace's 127.0.0.1.
        return subprocess.run(self.in_netns(*cmd), check=check, capture_output=True, text=True)

    def ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [
            str(self.bin / "ctr"),
            "--address",
            str(self.paths.containerd_socket),
            "--namespace",
            "k8s.io",
            *args,
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise NodeFailed(f"{self.name}: ctr {' '.join(args)}: {result.stderr.strip()}")
        return result

    def _env(self) -> dict[str, str]:
        # containerd finds its shim, and the shim finds nothing else, on PATH.
        return {**os.environ, "PATH": f"{self.bin}:/usr/sbin:/usr/bin:/sbin:/bin"}

    def spawn(self, component: str, cmd: list[str], env: dict[str, str] | None = None) -> int:
        log = self.paths.log(component)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                self.in_netns(*cmd),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**self._env(), **(env or {})},
                start_new_session=True,
            )
        pids = self._pids()
        pids[component] = proc.pid
        self.paths.pids.write_text(json.dumps(pids))
        return proc.pid

    def _pids(self) -> dict[str, int]:
        if not self.paths.pids.exists():
            return {}
        return json.loads(self.paths.pids.read_text())

    def _fail(self, component: str, why: str) -> NodeFailed:
        log = self.paths.log(component)
        tail = log.read_text(errors="replace").splitlines()[-30:] if log.exists() else []
        return NodeFailed(f"{component}: {why}\n" + "\n".join(tail))

    def wait_ready(self, component: str, ready: Callable[[], bool], timeout: float) -> None:
        started = time.monotonic()
        pid = self._pids()[component]
        while time.monotonic() - started < timeout:
            if ready():
                self.timings[component] = time.monotonic() - started
                return
            if not _alive(pid):
                raise self._fail(component, "exited")
            time.sleep(0.2)
        raise self._fail(component, f"not ready after {timeout:.0f}s")

    # --- network --------------------------------------------------------------------

    def netns_up(self) -> None:
        """Make the node's network namespace (idempotent). `up` calls it; call it
        first only to start something else in it before the node (an API server)."""
        if not Path(f"/run/netns/{self.netns}").exists():
            subprocess.run(["ip", "netns", "add", self.netns], check=True)
        subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True)
        if self.join is None:
            # This VM's kernel has no dummy link type, so the address goes on lo.
            subprocess.run(
                ["ip", "-n", self.netns, "addr", "replace", str(NODE_ADDRESS), "dev", "lo"],
                check=True,
            )
        else:
            self._join_link_up(self.join)

    def _join_link_up(self, join: Join) -> None:
        """A veth from the test bed's bridge into the node's namespace, and the
        routes that make the node a router for its pods (as a cloud's VPC route
        table would): the host sends the node's pod range to the node's address,
        and the node answers ARP for its pods, so a process pod on the bridge
        (which sees 10.244.0.0/16 as one link) reaches them too."""
        host_end = self.host_link
        if not Path(f"/sys/class/net/{host_end}").exists():
            subprocess.run(
                [
                    "ip",
                    "link",
                    "add",
                    host_end,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    self.netns,
                ],
                check=True,
            )
        subprocess.run(["ip", "link", "set", host_end, "master", join.bridge, "up"], check=True)
        for cmd in (
            ["addr", "replace", str(join.address), "dev", "eth0"],
            ["link", "set", "eth0", "up"],
        ):
            subprocess.run(["ip", "-n", self.netns, *cmd], check=True)
        # Per-namespace settings: they leave the host's own untouched.
        for setting in ("net.ipv4.ip_forward=1", "net.ipv4.conf.eth0.proxy_arp=1"):
            subprocess.run(self.in_netns("sysctl", "-q", "-w", setting), check=True)
        for cidr in join.outside:
            subprocess.run(
                ["ip", "-n", self.netns, "route", "replace", cidr, "via", join.host], check=True
            )
        # Removed by realnode_join.down (the veth goes with the namespace).
        subprocess.run(
            ["ip", "route", "replace", str(self.pod_cidr), "via", self.address, "dev", join.bridge],
            check=True,
        )

    def _write_cni_config(self) -> None:
        gateway = str(next(self.pod_cidr.hosts()))
        conflist = {
            "cniVersion": "1.0.0",
            "name": "edgefleet-realnode",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "efrn0",
                    "isGateway": True,
                    # No masquerade and no default route: a pod reaches its own
                    # range and, on a joined node, the test bed's (Join.routes).
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": str(self.pod_cidr), "gateway": gateway}]],
                        "routes": [{"dst": r} for r in (self.join.routes if self.join else ())],
                        "dataDir": str(self.paths.cni_ipam),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
            ],
        }
        self.paths.cni_conf.mkdir(parents=True, exist_ok=True)
        (self.paths.cni_conf / "10-edgefleet.conflist").write_text(json.dumps(conflist, indent=2))

    # --- containerd -----------------------------------------------------------------

    def _containerd_config(self) -> str:
        p = self.paths
        return f"""\
# Written by tests/cluster/realnode.py; every path is under {p.base}.
# Version 3, which containerd 2.4 migrates at start (a warning): in version 4
# the [grpc]/[ttrpc] sections are ignored (the servers became plugins) and
# containerd listens on /run/containerd/containerd.sock instead.
version = 3
root = "{p.containerd_root}"
state = "{p.containerd_state}"

[grpc]
  address = "{p.containerd_socket}"

[ttrpc]
  address = "{p.containerd_socket}.ttrpc"

[plugins]
  [plugins.'io.containerd.internal.v1.opt']
    path = "{p.base}/opt"
  # NRI would create /var/run/nri/nri.sock on the host.
  [plugins.'io.containerd.nri.v1.nri']
    disable = true
  [plugins.'io.containerd.grpc.v1.cri']
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "{realnode_build.PAUSE_IMAGE}"
  [plugins.'io.containerd.cri.v1.runtime']
    netns_mounts_under_state_dir = true
    # This VM gives root no CAP_SYS_RESOURCE, so runc cannot lower
    # oom_score_adj below containerd's own (the pause container asks -998):
    # "nsexec: failed to update /proc/self/oom_score_adj: Permission denied".
    restrict_oom_score_adj = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = "{realnode_build.RUNC}"
          Root = "{p.base}/runc"
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["{self.bin}"]
      conf_dir = "{p.cni_conf}"
"""

    def _containerd_up(self) -> None:
        p = self.paths
        for folder in (p.containerd_root, p.containerd_state, p.base / "runc"):
            folder.mkdir(parents=True, exist_ok=True)
        p.containerd_config.write_text(self._containerd_config())
        self.spawn(
            "containerd",
            [
                str(self.bin / "containerd"),
                "--config",
                str(p.containerd_config),
                "--log-level",
                "info",
            ],
        )
        self.wait_ready("containerd", self._containerd_ready, timeout=60)

    def _containerd_ready(self) -> bool:
        if not self.paths.containerd_socket.exists():
            return False
        return self.crictl("info", check=False).returncode == 0

    def import_image(self, archive: Path) -> None:
        """Load an image archive (OCI or docker-archive) for the kubelet's pods."""
        _check_room_for(archive, self.paths.containerd_root)
        started = time.monotonic()
        # Unpacked, the layers' archived copies are garbage: keeping them doubled the
        # disk a 7.9 GB image takes. (ctr discards them only importing client-side.)
        self.ctr(
            "images", "import", "--local", "--snapshotter", "overlayfs",
            "--discard-unpacked-layers", str(archive),
        )  # fmt: skip
        self.timings[f"import {archive.name}"] = time.monotonic() - started

    # --- kubelet --------------------------------------------------------------------

    def _cgroup_roots(self, unified: bool = False) -> list[Path]:
        """The node's cgroup parent in every v1 hierarchy (the kubelet needs it to
        exist), plus, with `unified`, in the v2 hierarchy where runc also makes
        each container's cgroup on this hybrid host."""
        hierarchies = [
            d for d in CGROUP_V1.iterdir() if d.is_dir() and (unified or d.name != "unified")
        ]
        return [h / self.cgroup_parent.lstrip("/") for h in hierarchies]

    def _cgroups_up(self) -> None:
        for root in self._cgroup_roots():
            for folder in (root.parent, root):
                folder.mkdir(exist_ok=True)
                # A v1 cpuset cgroup starts with no CPUs and no memory nodes.
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    here = folder / knob
                    if here.exists() and not here.read_text().strip():
                        here.write_text((folder.parent / knob).read_text())

    def _kubelet_config(self) -> dict:
        p = self.paths
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # This VM has cgroup v1 (with v2 only at /sys/fs/cgroup/unified);
            # kubelet 1.35+ refuses v1 unless told otherwise.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_parent,
            "containerRuntimeEndpoint": f"unix://{p.containerd_socket}",
            "staticPodPath": str(p.manifests),
            "fileCheckFrequency": "2s",
            "syncFrequency": "5s",
            "podLogsDir": str(p.pod_logs),
            # Standalone, the node's address in its own network namespace is
            # reachable from nowhere else; joined, the API server reaches it.
            "address": self.address,
            "healthzBindAddress": "127.0.0.1",
            "readOnlyPort": KUBELET_READ_ONLY_PORT,
            # Joined, only the API server's client certificate (from the test
            # bed's CA) gets in; standalone, nothing outside the namespace can.
            "authentication": {
                "anonymous": {"enabled": self.join is None},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.join.client_ca)} if self.join else {},
            },
            "authorization": {"mode": "AlwaysAllow"},
            # The VM forbids raising RLIMIT_NOFILE; this is its current hard limit.
            "maxOpenFiles": _nofile_hard_limit(),
            # Pods get no host resolv.conf: there is no DNS outside to reach. Joined,
            # ClusterFirst pods ask the cluster's DNS (CoreDNS, tests/cluster/coredns.py).
            "resolvConf": "",
            **(
                {"clusterDNS": [self.join.cluster_dns], "clusterDomain": self.join.cluster_domain}
                if self.join
                else {}
            ),
            "podCIDR": str(self.pod_cidr),
            # Every node of the test bed shares the host's one disk with the builds and
            # caches: a percentage of a large disk is gigabytes, and crossing it made
            # every node evict the chart's pods at once (the operator among them) when
            # the GPU-class node imported its image. Absolute floors keep eviction real
            # for a disk that is truly full.
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1Gi",
                "imagefs.available": "1Gi",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            **self._serving_tls(),
        }

    def _serving_tls(self) -> dict[str, str]:
        # Standalone, the kubelet's self-signed certificate will do (nobody dials it);
        # joined, the API server checks it against the test bed's CA.
        if self.join is None:
            return {}
        return {
            "tlsCertFile": str(self.join.serving_cert),
            "tlsPrivateKeyFile": str(self.join.serving_key),
        }

    def _kubelet_up(self) -> None:
        p = self.paths
        for folder in (p.kubelet_root, p.manifests, p.pod_logs):
            folder.mkdir(parents=True, exist_ok=True)
        p.kubelet_config.write_text(json.dumps(self._kubelet_config(), indent=2))
        self._backup_sysctls()
        self._cgroups_up()
        self.spawn(
            "kubelet",
            [
                str(self.bin / "kubelet"),
                f"--config={p.kubelet_config}",
                f"--root-dir={p.kubelet_root}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.address}",
                "--v=2",
                *([f"--kubeconfig={self.kubeconfig}"] if self.kubeconfig else []),
            ],
        )
        self.wait_ready("kubelet", self._kubelet_healthy, timeout=120)

    def _kube_proxy_up(self, join: Join) -> None:
        """kube-proxy in nftables mode, in the node's namespace only: pods here reach
        ClusterIP Services through the node (their gateway), where it translates them."""
        config = self.paths.base / "kube-proxy" / "config.json"
        config.parent.mkdir(parents=True, exist_ok=True)
        settings = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "nftables",
            "clientConnection": {"kubeconfig": str(join.proxy_kubeconfig)},
            "hostnameOverride": self.name,
            "bindAddress": self.address,
            "clusterCIDR": join.cluster_cidr,
            "healthzBindAddress": f"127.0.0.1:{KUBE_PROXY_HEALTH_PORT}",
            "metricsBindAddress": "127.0.0.1:10249",
            # Pod → Service → a pod on the same bridge would answer it directly (no
            # br_netfilter here), bypassing the reverse translation: masquerade all.
            "nftables": {"masqueradeAll": True},
            # Leave the host-wide conntrack table size alone.
            "conntrack": {"maxPerCore": 0, "min": 0},
        }
        config.write_text(json.dumps(settings, indent=2))
        self.spawn(
            "kube-proxy",
            [str(self.bin / "kube-proxy"), f"--config={config}", "--v=2"],
        )
        self.wait_ready(
            "kube-proxy",
            lambda: self.http(f"http://127.0.0.1:{KUBE_PROXY_HEALTH_PORT}/healthz") is not None,
            timeout=60,
        )

    def _network_policy_up(self, join: Join) -> None:
        """kube-network-policies decides, packet by packet, what NetworkPolicies allow
        for this node's pods; iptables hands it each new connection from or to them.

        It reads the cluster only as a pod would (rest.InClusterConfig), so it runs in
        a mount namespace of its own where the ServiceAccount's files sit at a pod's
        path. Its own nftables rules need the kernel's nftables `queue`, which this
        VM lacks (docs/realnode.md): it logs that every sync fails and reads the
        queue all the same, which NFQUEUE fills.
        """
        place_account = (
            'mount -t tmpfs tmpfs /run && mkdir -p "$1" && mount --bind "$0" "$1" '
            '&& shift && exec "$@"'
        )
        self.spawn(
            "kube-network-policies",
            [
                "unshare", "--mount", "--propagation", "private",
                "sh", "-c", place_account, str(join.enforcer_account), SERVICE_ACCOUNT_DIR,
                str(self.bin / "kube-network-policies"),
                f"--hostname-override={self.name}",
                f"--nfqueue-id={NETPOL_QUEUE}",
                # The cluster's BaselineAdminNetworkPolicy too: the chart's egress guard.
                # (Not --admin-network-policy: it starts a DNS agent whose netlink
                # socket fails here, and which then logs that in a tight loop: a core
                # and gigabytes of log.)
                "--baseline-admin-network-policy",
                f"--metrics-bind-address=127.0.0.1:{NETPOL_METRICS_PORT}",
                # Its DNS work-around is more nftables `queue`; NRI is not configured.
                "--netfilter-bug-1766-fix=false",
                "--disable-nri",
                # Level 2 logs every packet's verdict.
                "--v=1",
            ],
            env={
                "KUBERNETES_SERVICE_HOST": join.host,
                "KUBERNETES_SERVICE_PORT": str(join.api_port),
            },
        )  # fmt: skip
        self.wait_ready(
            "kube-network-policies",
            lambda: self.http(f"http://127.0.0.1:{NETPOL_METRICS_PORT}/metrics") is not None,
            timeout=60,
        )
        self._queue_pod_connections(join)

    def _queue_pod_connections(self, join: Join) -> None:
        """Every new connection from or to a pod of this node waits for the enforcer's
        verdict (after Service translation, before masquerading: pods' own addresses).
        No bypass: with the enforcer down, pods' new connections fail, as upstream's
        default (fail closed). Not queued, as Kubernetes has it: the node's own
        traffic to its pods (the kubelet's probes; upstream's `meta skuid 0 accept`),
        and the control plane's host, which is a node of this cluster too (the API
        server's webhook calls, the tests' clients)."""
        queue = ["-m", "conntrack", "--ctstate", "NEW",
                 "-j", "NFQUEUE", "--queue-num", str(NETPOL_QUEUE)]  # fmt: skip
        pods = str(self.pod_cidr)
        rules = [
            ["-N", NETPOL_CHAIN],
            ["-A", NETPOL_CHAIN, "-m", "owner", "--uid-owner", "0", "-j", "RETURN"],
            ["-A", NETPOL_CHAIN, "-s", join.host, "-j", "RETURN"],
            ["-A", NETPOL_CHAIN, "-s", pods, *queue],
            ["-A", NETPOL_CHAIN, "-d", pods, *queue],
            ["-A", "POSTROUTING", "-j", NETPOL_CHAIN],
        ]
        for rule in rules:
            subprocess.run(self.in_netns("iptables", "-w", "-t", "mangle", *rule), check=True)

    def _kubelet_healthy(self) -> bool:
        return self.http("http://127.0.0.1:10248/healthz") == "ok"

    def http(self, url: str) -> str | None:
        """GET a URL from inside the node's network namespace; None when it fails."""
        code = (
            "import sys, urllib.request\n"
            f"sys.stdout.write(urllib.request.urlopen({url!r}, timeout=3).read().decode())"
        )
        out = subprocess.run(
            self.in_netns(sys.executable, "-c", code), capture_output=True, text=True
        )
        return out.stdout if out.returncode == 0 else None

    def kubelet_pods(self) -> list[dict]:
        """The kubelet's own view of its pods, with status (standalone: no API server)."""
        body = self.http(f"http://{self.address}:{KUBELET_READ_ONLY_PORT}/pods")
        # Before its first pod the kubelet answers {"items": null}.
        return (json.loads(body).get("items") or []) if body else []

    def add_static_pod(self, manifest: dict) -> None:
        # Written aside, then renamed in: the kubelet may read a half-written file.
        name = manifest["metadata"]["name"]
        staged = self.paths.manifests.parent / f"{name}.json.partial"
        staged.write_text(json.dumps(manifest, indent=2))
        staged.replace(self.paths.manifests / f"{name}.json")

    def pod_http(self, address: str, port: int, path: str = "/") -> str | None:
        return self.http(f"http://{address}:{port}{path}")

    # --- lifecycle ------------------------------------------------------------------

    def up(self) -> None:
        """Start containerd and a standalone kubelet, with the node's images loaded."""
        started = time.monotonic()
        self.paths.base.mkdir(parents=True, exist_ok=True)
        self.paths.crictl_config.write_text(
            f"runtime-endpoint: unix://{self.paths.containerd_socket}\n"
            f"image-endpoint: unix://{self.paths.containerd_socket}\n"
        )
        self.netns_up()
        self._write_cni_config()
        self._containerd_up()
        for archive in realnode_build.ARCHIVES:
            self.import_image(self.bin / archive)
        self._kubelet_up()
        if self.join is not None:
            self._kube_proxy_up(self.join)
            self._network_policy_up(self.join)
        self.timings["up"] = time.monotonic() - started

    def down(self) -> list[str]:
        """Stop everything and return what is left (empty when clean); safe to repeat."""
        # A recorded pid is only signalled while it is still ours: after a crash
        # or a reboot, the number may belong to someone else's process.
        own = set(self._own_processes())
        pids = {name: pid for name, pid in self._pids().items() if pid in own}
        _stop(pids.get("kubelet"))
        if pids.get("containerd") and _alive(pids["containerd"]):
            # Stop and remove every sandbox while containerd can still tear down
            # its network and mounts; the kubelet is gone, so none comes back.
            self.crictl("rmp", "--all", "--force", check=False)
        _stop(pids.get("containerd"))
        for pid in pids.values():  # a throwaway API server and its etcd, if any
            _stop(pid)
        for pid in self._own_processes():
            _stop(pid)
        self._unmount_all()
        subprocess.run(["ip", "netns", "del", self.netns], check=False, capture_output=True)
        # Gone with the namespace, unless something still holds the namespace open.
        subprocess.run(["ip", "link", "del", self.host_link], check=False, capture_output=True)
        self._cgroups_down()
        # The shims' socket folder is fixed; rmdir leaves it to anyone still using it.
        for folder in (Path("/run/containerd/s"), Path("/run/containerd")):
            _rmdir(folder)
        self._restore_sysctls()
        left = self.leftovers()
        if not left and self.paths.base.exists():
            # A fresh start every time: host-local's leases, logs, images.
            shutil.rmtree(self.paths.base)
        return left

    def leftovers(self) -> list[str]:
        found = [f"process {pid}" for pid in self._own_processes()]
        found += [f"mount {m}" for m in self._own_mounts()]
        if Path(f"/run/netns/{self.netns}").exists():
            found.append(f"netns {self.netns}")
        if Path(f"/sys/class/net/{self.host_link}").exists():
            found.append(f"link {self.host_link}")
        found += [f"cgroup {root}" for root in self._cgroup_roots(unified=True) if root.exists()]
        return found

    def _own_processes(self) -> list[int]:
        """This node's processes: run from the node's (or the test bed's) binaries
        with its state folder on their command line (containerd, its shims, the
        kubelet, a throwaway API server) or in its network namespace (the
        NetworkPolicy enforcer, which takes no path), and whatever is in its pod
        cgroups. Another node's processes name another folder and live in another
        namespace, so they are left alone."""
        # Any bundle's: a node started before its binaries' cache key changed is ours too.
        binaries = (f"{self.bin.parent}/", f"{versions.bin_dir()}/")
        base = str(self.paths.base) + "/"
        netns = Path(f"/run/netns/{self.netns}")
        netns_inode = netns.stat().st_ino if netns.exists() else None
        found = set()
        for entry, exe, cmdline in procs.processes():
            if exe.startswith(binaries) and (
                base in cmdline or (netns_inode is not None and _netns_inode(entry) == netns_inode)
            ):
                found.add(int(entry.name))
        for root in self._cgroup_roots(unified=True):
            for members in root.rglob("cgroup.procs") if root.exists() else ():
                found.update(int(pid) for pid in members.read_text().split())
        return sorted(found)

    def _own_mounts(self) -> list[str]:
        base = str(self.paths.base)
        mounts = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point == base or point.startswith(base + "/"):
                mounts.append(point)
        return mounts

    def _unmount_all(self) -> None:
        # Deepest first; the kubelet makes its root a shared bind mount of itself.
        for _ in range(5):
            mounts = self._own_mounts()
            if not mounts:
                return
            for point in sorted(mounts, key=len, reverse=True):
                subprocess.run(["umount", "-l", point], check=False, capture_output=True)

    def _cgroups_down(self) -> None:
        for root in self._cgroup_roots(unified=True):
            if not root.exists():
                continue
            for folder in sorted(
                (d for d in root.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True
            ):
                _rmdir(folder)
            _rmdir(root)
            if root.parent.exists() and not any(d.is_dir() for d in root.parent.iterdir()):
                _rmdir(root.parent)

    def _backup_sysctls(self) -> None:
        if self.paths.sysctl_backup.exists():
            return  # a previous `up` without `down`: keep the first, true values
        values = {key: (Path("/proc/sys") / key).read_text().strip() for key in KERNEL_TUNABLES}
        self.paths.sysctl_backup.write_text(json.dumps(values))

    def _restore_sysctls(self) -> None:
        if not self.paths.sysctl_backup.exists():
            return
        for key, value in json.loads(self.paths.sysctl_backup.read_text()).items():
            (Path("/proc/sys") / key).write_text(value)
        self.paths.sysctl_backup.unlink()


def _netns_inode(process: Path) -> int | None:
    try:
        return (process / "ns" / "net").stat().st_ino
    except OSError:
        return None


def _rmdir(folder: Path) -> None:
    """Remove an empty folder; a cgroup still holding a process, or a folder still in
    use, stays (leftovers() reports the cgroup)."""
    with contextlib.suppress(OSError):
        folder.rmdir()


def _nofile_hard_limit() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat")
    return state.exists() and state.read_text().split(") ")[-1][:1] != "Z"


def _stop(pid: int | None, grace: float = 15) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    if not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    while _alive(pid):
        time.sleep(0.1)


def web_pod(name: str = "web", host_port: int | None = 18080) -> dict:
    """A static pod serving HTTP from the busybox image, with both probes, locked down
    as the chart's pods are (non-root, no privilege escalation, no capabilities,
    RuntimeDefault seccomp, read-only root filesystem)."""
    port: dict = {"containerPort": 8080, "name": "http"}
    if host_port:
        port["hostPort"] = host_port
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "runAsGroup": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "httpd",
                    "image": realnode_build.BUSYBOX_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["/bin/busybox", "httpd", "-f", "-v", "-p", "8080", "-h", "/www"],
                    "ports": [port],
                    "readinessProbe": {
                        "httpGet": {"path": "/index.html", "port": 8080},
                        "periodSeconds": 1,
                    },
                    "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 5},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }


def pod_ready(pod: dict) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def wait_pod_ready(node: RealNode, name: str, timeout: float = 120) -> dict:
    """The kubelet's status of the named pod once Ready (both probes passing)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        for pod in node.kubelet_pods():
            if pod["metadata"]["name"].startswith(name) and pod_ready(pod):
                node.timings[f"pod {name} ready"] = time.monotonic() - started
                return pod
        time.sleep(0.5)
    raise NodeFailed(
        f"pod {name} not Ready after {timeout:.0f}s:\n"
        + node.crictl("ps", "-a", check=False).stdout
    )


def leftover_status(left: list[str]) -> int:
    """A `down` command's exit status: 1, listing them, when anything was left behind."""
    if left:
        print("left behind:\n  " + "\n  ".join(left), file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "help"
    node = RealNode()
    if command == "build":
        realnode_build.build_node(force="--force" in argv)
    elif command == "up":
        node.bin = realnode_build.build_node()
        node.up()
        node.add_static_pod(web_pod())
        pod = wait_pod_ready(node, "web")
        print(f"pod web Ready at {pod['status'].get('podIP')}")
        print(json.dumps({k: round(v, 1) for k, v in node.timings.items()}))
    elif command == "status":
        for pod in node.kubelet_pods():
            status = pod.get("status", {})
            print(
                pod["metadata"]["name"],
                status.get("phase"),
                status.get("podIP"),
                "Ready" if pod_ready(pod) else "not ready",
            )
        print(node.crictl("ps", "-a", check=False).stdout)
    elif command == "down":
        return leftover_status(node.down())
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
