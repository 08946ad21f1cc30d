"""`make demo`: the whole product on this machine, from `helm install` to answers.

Brings up the Docker-free test bed (a real control plane and kwok nodes), joins
a real node to it (kubelet, containerd, runc, CNI, kube-proxy, with the cluster's
CoreDNS) and loads the product's image into it (built with podman when its inputs
changed), installs the chart so the operator runs there as a container, applies
the examples from `examples/` and asks the router three questions over gRPC,
showing where each went and why; then a pod inside the cluster asks the router
by its Service's DNS name. The only changes to the examples are where this
machine differs from a real cluster, and each is printed: every pod is placed
on the real node, and the RoutingPolicy's cloud is the stand-in
`llama_cpp.server`, reached at the bridge address, with its key.

Run: python -m tests.cluster.demo [--keep]   (--keep leaves the cluster up)
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import yaml

from edgefleet.v1 import inference_pb2 as pb
from edgefleet.v1 import inference_pb2_grpc as pb_grpc
from tests.cluster import kube, network, realnode, realnode_join, testbed
from tests.support.cloud import STAND_IN_API_KEY, STAND_IN_MODEL, recorded_cloud

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CHART = ROOT / "charts" / "edgefleet"
VALUES = ROOT / "tests" / "controlplane" / "testbed-values.yaml"
NAMESPACE = "edgefleet-demo"
NODE = realnode_join.REAL_NODES[0]
SYSTEM = "You are a concise assistant. Answer in one or two sentences."
QUESTIONS = (
    ("a simple question", "What is the capital of France?"),
    ("a hard question", "Prove that for every prime p > 3, p squared minus 1 is divisible by "
     "24, and explain each step of the argument."),
    ("a private one", "My colleague anna.schmidt@example.com asked me: prove that for every "
     "prime p > 3, p squared minus 1 is divisible by 24, and explain each step."),
)  # fmt: skip


# What the demo is doing now, for the one-line message when a step fails.
_step = ["starting"]


def say(text: str) -> None:
    _step[0] = text
    print(f"\n==> {text}", flush=True)


def failure_line(error: BaseException, step: str, paths: testbed.Paths) -> str:
    """One line: what failed, while doing what, and where the logs are."""
    if isinstance(error, grpc.RpcError):
        what = f"{error.code().name}: {error.details()}"  # type: ignore[attr-defined]
    else:
        what = str(error) or type(error).__name__
    first = what.strip().splitlines()[0] if what.strip() else type(error).__name__
    node = realnode.state_root() / NODE.name
    return (
        f"make demo failed while {step!r}: {first} -- logs: control plane in "
        f"{paths.cluster_dir / 'logs'}, the real node (kubelet, containerd, pods) in {node}"
    )


class Demo:
    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        return kube.kubectl(*args, kubeconfig=self.kubeconfig, stdin=stdin, timeout=300).stdout

    def helm(self, *args: str) -> str:
        return kube.run("helm", *args, kubeconfig=self.kubeconfig, timeout=300).stdout

    def apply(self, document: dict[str, Any]) -> None:
        print(self.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=yaml.safe_dump(document)),
              end="")  # fmt: skip

    def condition(self, kind: str, name: str) -> tuple[str, str, str]:
        obj = json.loads(self.kubectl("get", kind, name, "-n", NAMESPACE, "-o", "json"))
        for item in (obj.get("status") or {}).get("conditions") or []:
            if item["type"] == "Ready":
                return item["status"], item.get("reason", ""), item.get("message", "")
        return "Unknown", "", "no status yet"

    def wait_ready(self, kind: str, name: str, timeout: float = 600) -> None:
        """Wait for Ready, printing each change of reason: long work shows progress."""
        deadline, last = time.monotonic() + timeout, None
        while True:
            state = self.condition(kind, name)
            if state != last:
                print(f"    {kind}/{name}: Ready={state[0]} {state[1]} {state[2]}", flush=True)
                last = state
            if state[0] == "True":
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"{kind}/{name} not Ready after {timeout:.0f}s: {state}")
            time.sleep(1)

    def router_address(self, port: str) -> str:
        slices = json.loads(self.kubectl(
            "get", "endpointslices", "-n", NAMESPACE, "-o", "json",
            "-l", "kubernetes.io/service-name=demo-router",
        ))["items"]  # fmt: skip
        for item in slices:
            number = next(p["port"] for p in item["ports"] if p["name"] == port)
            for endpoint in item.get("endpoints") or []:
                if (endpoint.get("conditions") or {}).get("ready"):
                    return f"{endpoint['addresses'][0]}:{number}"
        raise SystemExit("the router has no ready endpoint")


def examples(cloud_url: str) -> list[dict[str, Any]]:
    """The examples, adapted to this machine where it differs from a real cluster."""
    secret = yaml.safe_load((EXAMPLES / "cloud-secret.yaml").read_text())
    secret["stringData"]["api-key"] = STAND_IN_API_KEY
    model = yaml.safe_load((EXAMPLES / "smallmodel.yaml").read_text())
    model["spec"]["placement"] = realnode_join.placement(NODE.name)
    model["spec"]["replicas"] = 1  # the machine has 2 CPUs for everything
    model["spec"]["engine"] = "llamacpp"
    policy = yaml.safe_load((EXAMPLES / "routingpolicy.yaml").read_text())
    policy["spec"]["cloud"].update(baseURL=cloud_url, model=STAND_IN_MODEL)
    print(f"    (on this machine: every pod runs on the real node {NODE.name}; the model as")
    print("     llama.cpp, 1 replica;")
    print(f"     the cloud is llama_cpp.server behind {cloud_url}, model {STAND_IN_MODEL!r})")
    return [secret, model, policy]


def ask(address: str, question: str) -> None:
    request = pb.GenerateRequest(
        messages=[pb.ChatMessage(role="system", content=SYSTEM),
                  pb.ChatMessage(role="user", content=question)],
        sampling=pb.SamplingParams(max_tokens=48, temperature=0.0),
    )  # fmt: skip
    with grpc.insecure_channel(address) as channel:
        reply = pb_grpc.InferenceStub(channel).Generate(request, timeout=300)
    by = reply.served_by
    served = f"{by.backend}/{by.engine}/{by.model}@{by.instance}"
    print(f"    route={reply.route.target}:{reply.route.reason} served_by={served}")
    print(f"    {reply.text.strip()}")


def ask_from_a_pod(demo: Demo, question: str) -> None:
    """A pod in the demo's namespace asks the router by its Service's DNS name (CoreDNS,
    then kube-proxy) with the `edgefleet` CLI, as an application in the cluster would."""
    service = f"demo-router.{NAMESPACE}.svc.cluster.local:50051"
    script = f"edgefleet --target {service} generate {shlex.quote(question)} --max-tokens 24"
    pod = realnode_join.client_pod(NAMESPACE, NODE.name, script, name="demo-client")
    demo.kubectl("delete", "pod", "demo-client", "-n", NAMESPACE, "--ignore-not-found")
    demo.apply(pod)
    jsonpath = "jsonpath={.status.phase}"
    deadline = time.monotonic() + 180
    while (phase := demo.kubectl("get", "pod", "demo-client", "-n", NAMESPACE, "-o", jsonpath)) \
            not in ("Succeeded", "Failed"):  # fmt: skip
        if time.monotonic() > deadline:
            raise SystemExit(f"the client pod has not finished after 180s (phase {phase})")
        time.sleep(1)
    print(f"    $ kubectl logs -n {NAMESPACE} demo-client")
    for line in demo.kubectl("logs", "-n", NAMESPACE, "demo-client").splitlines():
        print(f"    {line}")
    if phase != "Succeeded":
        raise SystemExit("the client pod failed (its log is above)")


def run(keep: bool) -> None:
    paths = testbed.paths()
    reuse = testbed.status() == 0 if paths.kubeconfig.exists() else False
    if not reuse:
        say(
            f"starting the local cluster (control plane, kwok fleet) and joining the real node "
            f"{NODE.name} (kubelet, containerd, runc, CNI, kube-proxy, CoreDNS), the product's "
            "image loaded into it (built if it changed)"
        )
        paths = realnode_join.bed_up()
    demo = Demo(paths.kubeconfig)
    try:
        if not realnode_join.node_ready(NODE.name):
            say(f"joining the real node {NODE.name} to the running cluster")
            realnode_join.up((NODE,))
        print(demo.kubectl("get", "nodes", "-o", "wide", "-l", "=".join(realnode_join.REAL_LABEL)),
              end="")  # fmt: skip
        say(f"helm install edgefleet {CHART.relative_to(ROOT)}")
        demo.helm("upgrade", "--install", "edgefleet", str(CHART), "-n", "edgefleet-system",
                  "--create-namespace", "-f", str(VALUES), "--wait")  # fmt: skip
        print(demo.kubectl("get", "pods", "-n", "edgefleet-system", "-o", "wide"), end="")
        # The demo's namespace, and `payroll`, which the example policy names as
        # sensitive: until it exists the router keeps everything local (fail closed).
        for namespace in (NAMESPACE, "payroll"):
            print(demo.kubectl("apply", "-f", "-", stdin=f"apiVersion: v1\nkind: Namespace\n"
                               f"metadata: {{name: {namespace}}}\n"), end="")  # fmt: skip
        with recorded_cloud(network.INTERNET_ADDRESS, netns=network.INTERNET_NETNS) as (_, proxy):
            say("kubectl apply -f examples/cloud-secret.yaml -f examples/smallmodel.yaml "
                "-f examples/routingpolicy.yaml")  # fmt: skip
            for document in examples(proxy.base_url):
                demo.apply(document)
            say("waiting for the model (fetch, load, health) and the router")
            demo.wait_ready("smallmodel", "smollm2")
            demo.wait_ready("routingpolicy", "demo")
            print(demo.kubectl("get", "sm,rp,pods", "-n", NAMESPACE, "-o", "wide"), end="")
            address = demo.router_address("grpc")
            for label, question in QUESTIONS:
                say(f"{label}, to the router's pod at {address}: {question!r}")
                ask(address, question)
            say(f"a pod in the cluster asks demo-router.{NAMESPACE}.svc.cluster.local")
            ask_from_a_pod(demo, QUESTIONS[0][1])
            say("what reached the cloud (the recording proxy saw these user messages)")
            for body in proxy.received():
                print(f"    {body['messages'][-1]['content'][:100]!r}")
            say("the router's own figures, reported into the RoutingPolicy's status")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                live = json.loads(demo.kubectl("get", "rp", "demo", "-n", NAMESPACE, "-o", "json"))
                router = (live.get("status") or {}).get("router") or {}
                if router.get("requests", 0) >= len(QUESTIONS) + 1:
                    print(yaml.safe_dump(router, sort_keys=False), end="")
                    break
                time.sleep(1)
            print(demo.kubectl("get", "rp", "-n", NAMESPACE), end="")
    finally:
        if keep or reuse:
            print(f"\nThe cluster stays up: export KUBECONFIG={paths.kubeconfig}")
            print("Stop it with: .venv/bin/python -m tests.cluster down")
        else:
            say("stopping the cluster")
            realnode_join.bed_down()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.demo")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running")
    keep = parser.parse_args().keep
    try:
        run(keep)
    except KeyboardInterrupt:
        return 130
    except (Exception, SystemExit) as error:
        if isinstance(error, SystemExit) and error.code in (None, 0):
            return 0
        print(f"\n{failure_line(error, _step[0], testbed.paths())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
