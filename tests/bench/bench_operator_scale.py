"""Operator at scale: M SmallModels on an N-node kwok fleet, against the real operator.

Measures the issue's target ("200 SmallModels across a 1,000-node kwok fleet: time from apply
to all Ready, operator RSS and CPU, reconcile latency p50/p99; under 60 s to Ready, operator RSS
under 250 MB") on the shared test bed that is already running (`python -m tests.cluster up`
and the chart installed), without disturbing anyone else's tests on it:

1. Registers N kwok nodes from `fleet.scale_fleet` (kwok fakes their pods; nothing runs as a
   process), renamed `bench-scale-NNNN` in sites `bench-site-K` of `--site-size` nodes,
   labelled `edgefleet.io/bench=operator-scale` and tainted `edgefleet.io/bench=true:NoSchedule`
   so no other pod or DaemonSet lands there; times them to Ready.
2. Builds M SmallModels in a fresh namespace, like a real fleet: a share of `perNode: true`
   llama.cpp models, each on one small site (a DaemonSet of `--site-size` pods), the rest
   `replicas: 1..3` Deployment models (`engine: auto`) pinned to the bench nodes by
   nodeSelector; all tolerate the bench taint and use the builtin model source.
3. Applies all M in one `kubectl apply --server-side` and watches them (a Kubernetes watch
   started before the apply, no polling) until each has Ready=True with observedGeneration ==
   generation, sampling the operator process's RSS (`/proc/<pid>`, the pid of its container
   on the real node, from crictl) as it goes, and the CPU of the operator, of each control-plane
   process and of the whole machine; then measures the same for `--steady-seconds` with every
   model Ready.
   A second watch follows the models' pods: for every pod that turns Ready, the time until its
   SmallModel's status counts it (`readyReplicas`) is the status latency (the issue's "a pod
   turning Ready shows in status within 1 s").
4. Counts the operator's API requests from the API server's own figures: for the run, a
   FlowSchema (`bench-edgefleet-operator`, same priority level as before) gives the
   operator's ServiceAccount a flow of its own, and `/metrics`'
   `apiserver_flowcontrol_dispatched_requests_total` for it is read at each window's ends (a
   watch counts once, when it starts); `apiserver_request_total` gives every client's.
   Watch events the operator handled and its status rounds come from its liveness endpoint
   (Kopf probe `activity`, counters at most 10 s old).
5. Reads the operator's log for the run: `reconciled in X ms` lines.
6. Deletes the namespace (timed), waits for the operator to go quiet, reads its RSS, and
   deletes the bench nodes (unless `--keep-nodes`), also when something failed.

Prints markdown tables on stdout (paste them into docs/benchmarks.md), progress on stderr.

    .venv/bin/python -m tests.bench.bench_operator_scale [--models 200] [--nodes 1000]
    .venv/bin/python -m tests.bench.bench_operator_scale --models 2000 --nodes 5000 --timeout 1800
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import secrets
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from tests.cluster import fleet, kube, realnode, realnode_build, testbed

GROUP, VERSION, PLURAL = "edgefleet.io", "v1alpha1", "smallmodels"
BENCH_LABEL = ("edgefleet.io/bench", "operator-scale")
BENCH_TAINT = {"key": "edgefleet.io/bench", "value": "true", "effect": "NoSchedule"}
BENCH_TOLERATION = {"key": "edgefleet.io/bench", "operator": "Equal", "value": "true",
                    "effect": "NoSchedule"}  # fmt: skip
OPERATOR_SELECTOR = "app.kubernetes.io/component=operator"
RECONCILED = re.compile(r"reconciled in ([0-9.]+) ms")
FLOW_SCHEMA = "bench-edgefleet-operator"
TARGET_READY_S = 60.0
TARGET_STATUS_LATENCY_S = 1.0
TARGET_RSS_MB = 250.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the fleet -------------------------------------------------------------------------
def bench_nodes(count: int, site_size: int) -> list[dict[str, Any]]:
    """`scale_fleet` nodes under our own names, sites, label and taint."""
    sites = max(1, math.ceil(count / site_size))
    nodes = fleet.scale_fleet(count, sites=sites)
    for i, node in enumerate(nodes):
        name = f"bench-scale-{i:04d}"
        meta = node["metadata"]
        meta["name"] = name
        meta["labels"]["kubernetes.io/hostname"] = name
        # Consecutive nodes share a site, so a site is `site_size` nodes.
        meta["labels"]["edgefleet.io/site"] = f"bench-site-{i // site_size}"
        meta["labels"][BENCH_LABEL[0]] = BENCH_LABEL[1]
        node["spec"]["taints"] = [*node["spec"]["taints"], dict(BENCH_TAINT)]
    return nodes


def ready_node_names(core: client.CoreV1Api) -> set[str]:
    selector = f"{BENCH_LABEL[0]}={BENCH_LABEL[1]}"
    return {
        n.metadata.name
        for n in core.list_node(label_selector=selector).items
        if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
    }


def smallmodels(models: int, sites: int, per_node_share: float) -> list[dict[str, Any]]:
    """M SmallModels: every k-th one perNode on its own site, the others 1..3 replicas."""
    per_node_every = max(1, round(1 / per_node_share)) if per_node_share > 0 else 0
    source = {"gguf": {"uri": "builtin://smollm2-135m"}}
    items = []
    for i in range(models):
        spec: dict[str, Any]
        if per_node_every and i % per_node_every == 0:
            site = f"bench-site-{(i // per_node_every) % sites}"
            spec = {
                "source": source,
                "engine": "llamacpp",
                "perNode": True,
                "placement": {"sites": [site], "tolerations": [BENCH_TOLERATION]},
            }
        else:
            spec = {
                "source": source,
                "engine": "auto",
                "replicas": 1 + i % 3,
                "placement": {
                    "nodeSelector": {BENCH_LABEL[0]: BENCH_LABEL[1]},
                    "tolerations": [BENCH_TOLERATION],
                },
            }
        items.append(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "SmallModel",
                "metadata": {"name": f"m-{i:03d}"},
                "spec": spec,
            }
        )
    return items


def expected_pods(items: list[dict[str, Any]], site_size: int) -> int:
    return sum(site_size if m["spec"].get("perNode") else m["spec"]["replicas"] for m in items)


# --- the operator process ----------------------------------------------------------------
@dataclass(frozen=True)
class OperatorProcess:
    pid: int
    log: Path
    env: dict[str, str]
    pod_ip: str
    service_account: tuple[str, str]

    @classmethod
    def find(cls, core: client.CoreV1Api, namespace: str) -> OperatorProcess:
        pods = [
            p
            for p in core.list_namespaced_pod(namespace, label_selector=OPERATOR_SELECTOR).items
            if p.status.phase == "Running" and p.metadata.deletion_timestamp is None
        ]
        if len(pods) != 1:
            raise RuntimeError(f"expected one running operator pod, found {len(pods)}")
        pod = pods[0]
        status = (pod.status.container_statuses or [None])[0]
        if status is None or not (status.container_id or "").startswith("containerd://"):
            raise RuntimeError("the operator does not run as a container on a real node")
        node = realnode.RealNode(name=pod.spec.node_name, bin=realnode_build.bin_dir())
        pid = node.container_pid(status.container_id)
        log_file = node.container_log(
            core.api_client.sanitize_for_serialization(pod), status.name, status.restart_count
        )
        env = dict(
            item.split("=", 1)
            for item in Path(f"/proc/{pid}/environ").read_text().split("\0")
            if item.startswith("EDGEFLEET_") and "=" in item
        )
        return cls(
            pid=pid, log=log_file, env=env, pod_ip=pod.status.pod_ip,
            service_account=(namespace, pod.spec.service_account_name),
        )  # fmt: skip

    def activity(self) -> dict[str, int]:
        """The operator's counters (Kopf probe `activity`): events handled, status rounds."""
        url = f"http://{self.pod_ip}:8080/healthz"
        with urllib.request.urlopen(url, timeout=10) as response:
            return dict(json.load(response).get("activity") or {})

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def cpu_s(self) -> float:
        return process_cpu_s(self.pid)

    def alive(self) -> bool:
        return Path(f"/proc/{self.pid}").exists()


@dataclass
class Sampler:
    """Samples the operator's RSS every `interval` s in a thread; keeps the maximum."""

    process: OperatorProcess
    interval: float = 0.5
    max_rss_mb: float = 0.0
    samples: int = 0
    lost: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.max_rss_mb = max(self.max_rss_mb, self.process.rss_mb())
                self.samples += 1
            except (OSError, RuntimeError):
                self.lost = True
                return
            self._stop.wait(self.interval)

    @contextmanager
    def running(self) -> Iterator[Sampler]:
        thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=5)


def cpu_share(process: OperatorProcess, seconds: float) -> float:
    """The operator's CPU use over a window, as a fraction of one core."""
    before, started = process.cpu_s(), time.monotonic()
    time.sleep(seconds)  # the measurement window itself, not a wait for anything
    return (process.cpu_s() - before) / (time.monotonic() - started)


# --- readiness ---------------------------------------------------------------------------
def is_ready(obj: dict[str, Any]) -> bool:
    generation = obj["metadata"].get("generation")
    status = obj.get("status") or {}
    if status.get("observedGeneration") != generation:
        return False
    return any(
        c.get("type") == "Ready"
        and c.get("status") == "True"
        and c.get("observedGeneration") == generation
        for c in status.get("conditions") or []
    )


def ready_reason(obj: dict[str, Any]) -> str:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return f"{c.get('reason')}: {c.get('message')}"
    return "no status yet"


def follow(
    lister: Any, args: tuple[Any, ...], see: Any, stop: threading.Event, deadline: float
) -> None:
    """List, then watch, handing every object seen to `see`, until `stop` or the deadline.

    Objects stay raw JSON: `lister` is wrapped so that the client's watch finds no model
    class to build (thousands of pods would cost the shared cores seconds). A watch that
    falls too far behind (410 Gone) lists again and goes on from there.
    """

    def raw(*a: Any, **kw: Any) -> Any:
        return lister(*a, **kw)

    listing = json.loads(lister(*args, _preload_content=False).data)
    rv = listing["metadata"]["resourceVersion"]
    for obj in listing["items"]:
        see(obj)
    while not stop.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        stream = watch.Watch()
        try:
            for event in stream.stream(
                raw, *args, resource_version=rv,
                timeout_seconds=max(1, min(int(remaining), 60)),
            ):  # fmt: skip
                obj = event["raw_object"]
                rv = obj["metadata"]["resourceVersion"]
                if event["type"] in ("ADDED", "MODIFIED"):
                    see(obj)
                if stop.is_set():
                    stream.stop()
        except ApiException as exc:
            if exc.status != 410:
                raise
            follow(lister, args, see, stop, deadline)
            return


class Watcher:
    """Runs `follow` in a thread from `start()`; times are seconds from `started`."""

    def __init__(self, lister: Any, args: tuple[Any, ...], timeout: float) -> None:
        self.lister, self.args, self.timeout = lister, args, timeout
        self.started = time.monotonic()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)

    def start(self, started: float | None = None) -> None:
        """Start the clock (or share another watcher's) and the watch."""
        self.started = time.monotonic() if started is None else started
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.error is not None:
            raise self.error

    def see(self, obj: dict[str, Any]) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        try:
            follow(self.lister, self.args, self.see, self._stop, self.started + self.timeout)
        except BaseException as exc:  # handed to the main thread by stop()
            self.error = exc
            self.done.set()


class ReadyWatch(Watcher):
    """The namespace's SmallModels, from before the apply.

    Records when each model was first seen (its ADDED event), first seen Ready, and each
    change of its `readyReplicas`; `done` is set once every expected model is Ready.
    """

    def __init__(
        self, custom: client.CustomObjectsApi, namespace: str, names: set[str], timeout: float
    ) -> None:
        lister = custom.list_namespaced_custom_object
        super().__init__(lister, (GROUP, VERSION, namespace, PLURAL), timeout)
        self.names = names
        self.seen_at: dict[str, float] = {}
        self.ready_at: dict[str, float] = {}
        self.ready_replicas: dict[str, list[tuple[float, int]]] = {}
        self.last: dict[str, dict[str, Any]] = {}

    def wait(self) -> bool:
        """True when every model became Ready within the timeout."""
        finished = self.done.wait(self.timeout) and self.error is None
        self.stop()
        return finished

    def see(self, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        now = time.monotonic() - self.started
        self.last[name] = obj
        self.seen_at.setdefault(name, now)
        replicas = int((obj.get("status") or {}).get("readyReplicas") or 0)
        timeline = self.ready_replicas.setdefault(name, [])
        if not timeline or timeline[-1][1] != replicas:
            timeline.append((now, replicas))
        if name not in self.ready_at and is_ready(obj):
            self.ready_at[name] = now
            if self.names <= self.ready_at.keys():
                self.done.set()


class PodReadyWatch(Watcher):
    """The models' pods: when each was first seen Ready, by model."""

    def __init__(self, core: client.CoreV1Api, namespace: str, timeout: float) -> None:
        super().__init__(core.list_namespaced_pod, (namespace,), timeout)
        self.ready_at: dict[str, dict[str, float]] = {}

    def see(self, obj: dict[str, Any]) -> None:
        model = (obj["metadata"].get("labels") or {}).get("edgefleet.io/model")
        conditions = (obj.get("status") or {}).get("conditions") or []
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        if model and ready:
            pods = self.ready_at.setdefault(model, {})
            pods.setdefault(obj["metadata"]["name"], time.monotonic() - self.started)


def status_latencies(
    pods_ready: dict[str, dict[str, float]], ready_replicas: dict[str, list[tuple[float, int]]]
) -> tuple[list[float], int]:
    """Per pod that turned Ready: seconds until its model's status counted it; and how many never.

    The k-th pod of a model to be seen Ready is counted once `readyReplicas` reaches k. The
    two watches see their events a few milliseconds apart, so a status seen first counts as 0.
    """
    latencies, never = [], 0
    for model, pods in pods_ready.items():
        timeline = ready_replicas.get(model, [])
        for k, ready_at in enumerate(sorted(pods.values()), start=1):
            shown = next((at for at, count in timeline if count >= k), None)
            if shown is None:
                never += 1
            else:
                latencies.append(max(0.0, shown - ready_at))
    return latencies, never


# --- API requests, from the API server's own figures -------------------------------------
def flow_schema(service_account: tuple[str, str]) -> dict[str, Any]:
    """The operator's requests in a flow of their own, at the priority level they had."""
    namespace, name = service_account
    return {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": FLOW_SCHEMA},
        "spec": {
            # Before the built-in `service-accounts` schema (9000), same level (workload-low).
            "matchingPrecedence": 8000,
            "priorityLevelConfiguration": {"name": "workload-low"},
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [{
                "subjects": [{"kind": "ServiceAccount",
                              "serviceAccount": {"namespace": namespace, "name": name}}],
                "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                                   "clusterScope": True, "namespaces": ["*"]}],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            }],
        },
    }  # fmt: skip


@dataclass(frozen=True)
class RequestCount:
    at: float
    operator: float
    everyone: float

    @classmethod
    def take(cls, kubeconfig: Path) -> RequestCount:
        metrics = kube.kubectl("get", "--raw", "/metrics", kubeconfig=kubeconfig).stdout
        operator = everyone = 0.0
        for line in metrics.splitlines():
            if line.startswith("apiserver_flowcontrol_dispatched_requests_total{") and (
                f'flow_schema="{FLOW_SCHEMA}"' in line
            ):
                operator += float(line.rsplit(" ", 1)[1])
            elif line.startswith("apiserver_request_total{"):
                everyone += float(line.rsplit(" ", 1)[1])
        return cls(time.monotonic(), operator, everyone)

    def rates_since(self, earlier: RequestCount) -> tuple[float, float]:
        """Requests per second (the operator's, everyone's) between the two counts."""
        seconds = max(self.at - earlier.at, 1e-9)
        return (self.operator - earlier.operator) / seconds, (
            self.everyone - earlier.everyone
        ) / seconds


# --- CPU by process ----------------------------------------------------------------------
CONTROL_PLANE = ("kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler",
                 "kwok-controller")  # fmt: skip


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def control_plane_pids() -> dict[str, int]:
    """The test bed's control-plane processes (their command lines point into its folder)."""
    root = str(testbed.paths().root)
    found: dict[str, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        binary = argv[0].decode(errors="replace")
        if root in binary and Path(binary).name in CONTROL_PLANE:
            found[Path(binary).name] = int(proc.name)
    return found


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / CLOCK_TICKS


@dataclass(frozen=True)
class CpuSnapshot:
    at: float
    by_process: dict[str, float]
    machine: float

    @classmethod
    def take(cls, pids: dict[str, int]) -> CpuSnapshot:
        by_process = {}
        for name, pid in pids.items():
            try:
                by_process[name] = process_cpu_s(pid)
            except OSError:
                continue
        return cls(time.monotonic(), by_process, machine_busy_s())

    def since(self, earlier: CpuSnapshot) -> dict[str, float]:
        """CPU seconds each process (and `machine`) used between the two snapshots."""
        used = {
            name: value - earlier.by_process[name]
            for name, value in self.by_process.items()
            if name in earlier.by_process
        }
        used["machine"] = self.machine - earlier.machine
        return used


# --- the operator's log ------------------------------------------------------------------
@dataclass(frozen=True)
class LogFigures:
    reconcile_ms: list[float]
    errors: list[str]


CRI_LINE = re.compile(r"^\S+ (?:stdout|stderr) [FP] (.*)$")


def read_log(path: Path, offset: int) -> LogFigures:
    with path.open("rb") as handle:
        handle.seek(offset)
        text = handle.read().decode(errors="replace")
    reconcile_ms, errors = [], []
    for logged in text.splitlines():
        # The kubelet's CRI log format: time, stream, partial/full tag, then the line.
        cri = CRI_LINE.match(logged)
        line = cri.group(1) if cri else logged
        match = RECONCILED.search(line)
        if match:
            reconcile_ms.append(float(match.group(1)))
        elif " ERROR " in line or " WARNING " in line or line.startswith("Traceback"):
            errors.append(line)
    return LogFigures(reconcile_ms, errors)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def other_smallmodels(custom: client.CustomObjectsApi, namespace: str) -> int:
    listing = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
    return sum(1 for m in listing["items"] if m["metadata"]["namespace"] != namespace)


# --- the run -------------------------------------------------------------------------------
@dataclass
class Result:
    models: int
    per_node_models: int
    nodes: int
    sites: int
    site_size: int
    expected_pods: int
    pods: int = 0
    nodes_ready_s: float | None = None
    apply_s: float = 0.0
    seen_at: dict[str, float] = field(default_factory=dict)
    ready_at: dict[str, float] = field(default_factory=dict)
    not_ready: dict[str, str] = field(default_factory=dict)
    all_ready_s: float | None = None
    rss_before_mb: float = 0.0
    rss_max_mb: float = 0.0
    rss_ready_mb: float = 0.0
    rss_after_mb: float | None = None
    cpu_idle_share: float = 0.0
    cpu_run: dict[str, float] = field(default_factory=dict)
    cpu_steady: dict[str, float] = field(default_factory=dict)
    steady_seconds: float = 0.0
    log: LogFigures | None = None
    others: tuple[int, int] = (0, 0)
    delete_s: float | None = None
    settle_s: float | None = None
    operator_env: dict[str, str] = field(default_factory=dict)
    operator_restarted: bool = False
    # Per pod turned Ready: seconds until its model's status counted it; pods never counted.
    status_latency_s: list[float] = field(default_factory=list)
    status_never: int = 0
    # Requests per second (the operator's, every client's) by window: idle, run, steady.
    requests: dict[str, tuple[float, float]] = field(default_factory=dict)
    # The operator's counters (events handled by kind, status rounds and writes) by window.
    activity: dict[str, dict[str, int]] = field(default_factory=dict)

    def create_to_ready(self) -> list[float]:
        """Per model: seconds from its creation being seen to its Ready being seen."""
        return [t - self.seen_at[n] for n, t in self.ready_at.items() if n in self.seen_at]


def ensure_nodes(core: client.CoreV1Api, kubeconfig: Path, nodes: list[dict[str, Any]]) -> float:
    """Apply the bench nodes unless all are there and Ready; seconds until all are Ready."""
    names = {n["metadata"]["name"] for n in nodes}
    if names <= ready_node_names(core):
        log(f"{len(names)} bench nodes already registered and Ready")
        return 0.0
    log(f"registering {len(names)} kwok nodes (tainted {BENCH_TAINT['key']})")
    started = time.monotonic()
    testbed.apply_nodes(kubeconfig, nodes)
    kube.wait_for(
        f"{len(names)} bench nodes Ready", lambda: names <= ready_node_names(core), 900, 2
    )
    elapsed = time.monotonic() - started
    log(f"bench nodes Ready in {elapsed:.1f} s")
    return elapsed


def delete_nodes(core: client.CoreV1Api) -> None:
    selector = f"{BENCH_LABEL[0]}={BENCH_LABEL[1]}"
    names = [n.metadata.name for n in core.list_node(label_selector=selector).items]
    log(f"deleting {len(names)} bench nodes")
    for name in names:
        try:
            core.delete_node(name)
        except ApiException as exc:
            if exc.status != 404:
                raise
    kube.wait_for(
        "bench nodes gone", lambda: not core.list_node(label_selector=selector).items, 300, 2
    )


def delete_namespace(core: client.CoreV1Api, namespace: str, timeout: float) -> float:
    started = time.monotonic()
    try:
        core.delete_namespace(namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise

    def gone() -> bool:
        try:
            core.read_namespace(namespace)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    kube.wait_for(f"namespace {namespace} deleted", gone, timeout, 1)
    return time.monotonic() - started


@contextmanager
def operator_flow(kubeconfig: Path, service_account: tuple[str, str]) -> Iterator[None]:
    """The bench FlowSchema for the operator's requests, for the duration of the run."""
    schema = json.dumps(flow_schema(service_account))
    kube.kubectl("apply", "-f", "-", kubeconfig=kubeconfig, stdin=schema)
    try:
        yield
    finally:
        kube.kubectl("delete", "flowschema", FLOW_SCHEMA, "--ignore-not-found",
                     kubeconfig=kubeconfig)  # fmt: skip


def counters_since(now: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in sorted(now.items()) if v != before.get(k, 0)}


def settle(process: OperatorProcess, timeout: float, quiet_share: float = 0.1) -> float | None:
    """Seconds until the operator uses under `quiet_share` of a core over a 5 s window.

    None when it never does within `timeout` (others' tests share the operator).
    """
    started = time.monotonic()
    try:
        kube.wait_for(
            "the operator to go quiet", lambda: cpu_share(process, 5) < quiet_share, timeout, 0
        )
    except TimeoutError:
        return None
    return time.monotonic() - started


def run(args: argparse.Namespace) -> Result:
    api = config.new_client_from_config(config_file=str(args.kubeconfig))
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    nodes = bench_nodes(args.nodes, args.site_size)
    sites = math.ceil(args.nodes / args.site_size)
    items = smallmodels(args.models, sites, args.per_node_share)
    result = Result(
        models=args.models,
        per_node_models=sum(1 for m in items if m["spec"].get("perNode")),
        nodes=args.nodes,
        sites=sites,
        site_size=args.site_size,
        expected_pods=expected_pods(items, args.site_size),
    )
    namespace = f"bench-scale-{secrets.token_hex(3)}"
    operator = OperatorProcess.find(core, args.operator_namespace)
    pids = {**control_plane_pids(), "operator": operator.pid}
    result.operator_env = operator.env
    log(f"operator pid {operator.pid}, log {operator.log}; control plane {pids}")
    try:
        result.nodes_ready_s = ensure_nodes(core, args.kubeconfig, nodes)
        labels = {BENCH_LABEL[0]: BENCH_LABEL[1]}
        core.create_namespace({"metadata": {"name": namespace, "labels": labels}})
        log(f"namespace {namespace}; {len(items)} SmallModels ({result.per_node_models} perNode), "
            f"~{result.expected_pods} pods expected")  # fmt: skip
        with operator_flow(args.kubeconfig, operator.service_account):
            measure(args, result, operator, pids, core, custom, namespace, items)
    finally:
        log(f"deleting namespace {namespace}")
        result.delete_s = delete_namespace(core, namespace, 600)
        log(f"namespace gone in {result.delete_s:.1f} s; waiting for the operator to go quiet")
        if operator.alive():
            result.settle_s = settle(operator, 120)
            result.rss_after_mb = operator.rss_mb()
        if not args.keep_nodes:
            delete_nodes(core)
    return result


def measure(
    args: argparse.Namespace,
    result: Result,
    operator: OperatorProcess,
    pids: dict[str, int],
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    items: list[dict[str, Any]],
) -> None:
    """Idle window, apply → all Ready, steady window: the figures of one run."""
    requests = RequestCount.take(args.kubeconfig)
    result.cpu_idle_share = cpu_share(operator, args.idle_seconds)
    counted = RequestCount.take(args.kubeconfig)
    result.requests["idle"] = counted.rates_since(requests)
    activity = operator.activity()
    result.rss_before_mb = operator.rss_mb()
    result.others = (other_smallmodels(custom, namespace), 0)
    names = {m["metadata"]["name"] for m in items}
    ready = ReadyWatch(custom, namespace, names, args.timeout)
    pods = PodReadyWatch(core, namespace, args.timeout)
    log_offset = operator.log.stat().st_size
    manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    sampler = Sampler(operator)
    with sampler.running():
        before, requests = CpuSnapshot.take(pids), RequestCount.take(args.kubeconfig)
        ready.start()
        pods.start(ready.started)
        kube.kubectl(
            "apply", "--server-side", "--field-manager=bench-operator-scale", "-n", namespace,
            "-f", "-", kubeconfig=args.kubeconfig, stdin=manifest, timeout=args.timeout,
        )  # fmt: skip
        result.apply_s = time.monotonic() - ready.started
        log(f"applied {len(items)} SmallModels in {result.apply_s:.1f} s; watching for Ready")
        all_ready = ready.wait()
        result.cpu_run = CpuSnapshot.take(pids).since(before)
        counted = RequestCount.take(args.kubeconfig)
        result.requests["run"], requests = counted.rates_since(requests), counted
        now_activity = operator.activity()
        result.activity["run"] = counters_since(now_activity, activity)
        activity = now_activity
        result.seen_at, result.ready_at = dict(ready.seen_at), dict(ready.ready_at)
        result.not_ready = {
            n: ready_reason(ready.last.get(n, {})) for n in names - ready.ready_at.keys()
        }
        if all_ready:
            result.all_ready_s = max(result.ready_at.values())
            log(f"all {len(names)} Ready after {result.all_ready_s:.1f} s")
            result.rss_ready_mb = operator.rss_mb()
            result.steady_seconds = args.steady_seconds
            steady, requests = CpuSnapshot.take(pids), RequestCount.take(args.kubeconfig)
            time.sleep(args.steady_seconds)  # the measurement window, not a wait
            result.cpu_steady = CpuSnapshot.take(pids).since(steady)
            result.requests["steady"] = RequestCount.take(args.kubeconfig).rates_since(requests)
            result.activity["steady"] = counters_since(operator.activity(), activity)
        else:
            log(f"{len(result.not_ready)} not Ready after {args.timeout:.0f} s")
        pods.stop()
        result.status_latency_s, result.status_never = status_latencies(
            pods.ready_at, ready.ready_replicas
        )
    result.rss_max_mb = sampler.max_rss_mb
    result.log = read_log(operator.log, log_offset)
    result.pods = len(core.list_namespaced_pod(namespace).items)
    result.others = (result.others[0], other_smallmodels(custom, namespace))
    result.operator_restarted = sampler.lost or not operator.alive()


# --- the report ----------------------------------------------------------------------------
def fmt_s(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.1f} s"


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def ms_triple(values: list[float]) -> str:
    return " / ".join(
        "—" if math.isnan(v) else f"{v:.0f}" for v in (percentile(values, q) for q in (50, 99, 100))
    )


def table(r: Result) -> str:
    times = list(r.ready_at.values())
    own = r.create_to_ready()
    lg = r.log or LogFigures([], [])
    latency = r.status_latency_s
    run_s = r.all_ready_s or 0.0
    op_run = r.cpu_run.get("operator", 0.0)
    rows = [
        ("bench nodes registered → all Ready", fmt_s(r.nodes_ready_s) if r.nodes_ready_s else
         "already there", ""),
        ("`kubectl apply --server-side` of all SmallModels (one command)", fmt_s(r.apply_s), ""),
        ("apply → first SmallModel Ready", fmt_s(min(times) if times else None), ""),
        ("per model, apply → Ready p50 / p99 / max",
         " / ".join(fmt_s(percentile(times, q)) for q in (50, 99, 100)), ""),
        ("per model, its creation → its Ready p50 / p99 / max",
         " / ".join(fmt_s(percentile(own, q)) for q in (50, 99, 100)), ""),
        ("**apply → all Ready**", fmt_s(r.all_ready_s) if r.all_ready_s is not None else
         f"{len(r.not_ready)} of {r.models} not Ready", f"< {TARGET_READY_S:.0f} s: "
         + verdict(r.all_ready_s is not None and r.all_ready_s < TARGET_READY_S)),
        ("**operator RSS** before / max during run / at all Ready / after cleanup",
         f"{r.rss_before_mb:.0f} / {r.rss_max_mb:.0f} / {r.rss_ready_mb:.0f} / "
         + (f"{r.rss_after_mb:.0f}" if r.rss_after_mb is not None else "—") + " MB",
         f"< {TARGET_RSS_MB:.0f} MB: " + verdict(r.rss_max_mb < TARGET_RSS_MB)),
        ("operator CPU, apply → all Ready",
         f"{op_run:.1f} s" + (f" ({op_run / run_s:.0%} of a core)" if run_s else ""), ""),
        (f"operator CPU idle before apply ({r.nodes} nodes, no bench models)",
         f"{r.cpu_idle_share:.0%} of a core", ""),
        (f"operator CPU steady, all {r.models} Ready ({r.steady_seconds:.0f} s window)",
         f"{r.cpu_steady.get('operator', 0.0) / r.steady_seconds:.0%} of a core"
         if r.steady_seconds else "—", ""),
        ("reconcile latency p50 / p99 / max (count)",
         f"{ms_triple(lg.reconcile_ms)} ms ({len(lg.reconcile_ms)})", ""),
        ("**status latency**, a pod turns Ready → its SmallModel's status counts it, "
         "p50 / p99 / max (pods)",
         f"{ms_triple([v * 1000 for v in latency])} ms ({len(latency)}"
         + (f"; {r.status_never} never counted" if r.status_never else "") + ")",
         f"p99 < {TARGET_STATUS_LATENCY_S:.0f} s: " + verdict(
             bool(latency) and not r.status_never
             and percentile(latency, 99) < TARGET_STATUS_LATENCY_S)),
        ("operator API requests/s: idle before / apply → all Ready / steady",
         " / ".join(f"{r.requests[w][0]:.1f}" if w in r.requests else "—"
                    for w in ("idle", "run", "steady")), ""),
        ("API server requests/s, every client: idle before / apply → all Ready / steady",
         " / ".join(f"{r.requests[w][1]:.1f}" if w in r.requests else "—"
                    for w in ("idle", "run", "steady")), ""),
        ("watch events the operator handled, apply → all Ready / steady",
         " / ".join(str(sum(v for k, v in r.activity.get(w, {}).items()
                            if k.startswith("events."))) for w in ("run", "steady")), ""),
        ("status rounds / of them on the timer / writes, apply → all Ready; steady",
         "; ".join(f"{r.activity.get(w, {}).get('status.rounds', 0)} / "
                   f"{r.activity.get(w, {}).get('status.timer_rounds', 0)} / "
                   f"{r.activity.get(w, {}).get('status.writes', 0)}" for w in ("run", "steady")),
         ""),
        ("namespace delete → gone (GC of all children)", fmt_s(r.delete_s), ""),
    ]  # fmt: skip
    lines = ["| figure | value | target |", "|---|---:|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    by_kind = ", ".join(
        f"{k.removeprefix('events.')} {v}"
        for k, v in r.activity.get("run", {}).items()
        if k.startswith("events.")
    )
    lines += ["", f"Watch events handled, apply → all Ready, by kind: {by_kind or '—'}."]
    for window, label in (("run", "apply → all Ready"), ("steady", "steady")):
        pokes = ", ".join(
            f"{k.removeprefix('pokes.')} {v}"
            for k, v in r.activity.get(window, {}).items()
            if k.startswith("pokes.")
        )
        lines += ["", f"Status rounds asked for ({label}), by what changed: {pokes or '—'}."]
    lines += ["", "CPU by process (share of one core; the machine has "
              f"{os.cpu_count()} cores):", "",
              "| process | apply → all Ready | steady, all Ready |", "|---|---:|---:|"]  # fmt: skip
    for name in ("operator", *CONTROL_PLANE, "machine"):
        if name not in r.cpu_run:
            continue
        run_share = f"{r.cpu_run[name] / run_s:.0%}" if run_s else "—"
        steady = r.cpu_steady.get(name)
        steady_share = f"{steady / r.steady_seconds:.0%}" if steady is not None else "—"
        label = "whole machine (every process)" if name == "machine" else name
        lines.append(f"| {label} | {run_share} | {steady_share} |")
    return "\n".join(lines)


def parameters(r: Result) -> str:
    env = r.operator_env
    return (
        f"Parameters: {r.models} SmallModels ({r.per_node_models} perNode on a {r.site_size}-node "
        f"site each, {r.models - r.per_node_models} Deployments of 1-3 replicas), {r.nodes} kwok "
        f"nodes in {r.sites} sites, {r.pods} pods (kwok, not run; {r.expected_pods} expected); "
        f"operator statusIntervalSeconds={env.get('EDGEFLEET_STATUS_INTERVAL_S', '?')}, "
        f"workers={env.get('EDGEFLEET_WORKERS', '?')}; machine: {os.cpu_count()} cores; "
        f"SmallModels in other namespaces at start/end: {r.others[0]}/{r.others[1]}; "
        f"{datetime.date.today().isoformat()}."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_operator_scale")
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--site-size", type=int, default=10, help="nodes per bench site")
    parser.add_argument(
        "--per-node-share", type=float, default=0.25, help="share of models that are perNode"
    )
    parser.add_argument("--kubeconfig", type=Path, default=testbed.paths().kubeconfig)
    parser.add_argument("--operator-namespace", default="edgefleet-system")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for Ready")
    parser.add_argument("--idle-seconds", type=float, default=10)
    parser.add_argument("--steady-seconds", type=float, default=20)
    parser.add_argument(
        "--keep-nodes", action="store_true", help="leave the bench nodes for another run"
    )
    args = parser.parse_args(argv)
    result = run(args)
    print(table(result))
    print()
    print(parameters(result))
    if result.operator_restarted:
        print("\nThe operator process went away during the run: figures are not valid.")
    if result.not_ready:
        print("\nNot Ready:")
        for name, why in sorted(result.not_ready.items())[:20]:
            print(f"- {name}: {why}")
    if result.log and result.log.errors:
        print(f"\nOperator warnings/errors in the run: {len(result.log.errors)}, first:")
        for line in result.log.errors[:5]:
            print(f"    {line}")
    return 0 if not result.not_ready and not result.operator_restarted else 1


if __name__ == "__main__":
    sys.exit(main())
