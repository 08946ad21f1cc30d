"""privacy.sensitiveNamespaces: client address → pod index → the decision, without a cluster.

The parsers and the index are pure; the last tests run the real gRPC and
HTTP front ends on loopback in front of a real RouterEngine (with no
backends, so the route's reason is the whole answer) to prove the caller's
address reaches the decision.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

import grpc
import pytest

from edgefleet.oip import grpc_predict_v2_pb2 as oip
from edgefleet.oip import grpc_predict_v2_pb2_grpc as oip_grpc
from edgefleet.router.engine import RouterEngine
from edgefleet.router.metrics import RouterMetrics
from edgefleet.router.pods import PodIndex, apply_watch_event, client_namespace, pod_addresses
from edgefleet.router.sources import Endpoints
from edgefleet.routing.complexity import ComplexityScorer
from edgefleet.routing.decision import (
    ClientNamespace,
    FleetFacts,
    RequestFacts,
    RoutingDecision,
    Target,
    decide,
)
from edgefleet.routing.policy import RoutingPolicy, parse_policy
from edgefleet.serving.config import ServerConfig
from edgefleet.serving.grpc_inference import ROUTE_REASON_KEY, peer_ip
from edgefleet.serving.openai_http import start_http
from edgefleet.serving.readiness import free_local_port
from edgefleet.serving.server import InferenceServer
from edgefleet.serving.types import (
    GenerationRequest,
    Message,
    RoutingHints,
    Sampling,
    canonical_ip,
)
from edgefleet.v1 import inference_pb2 as pb
from edgefleet.v1 import inference_pb2_grpc as pb_grpc


def pod(name: str, ip: str | None, phase: str = "Running", **status: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"metadata": {"name": name}, "status": {"phase": phase, **status}}
    if ip is not None:
        body["status"]["podIP"] = ip
    return body


# --- client addresses ------------------------------------------------------------


@pytest.mark.parametrize(
    "peer, address",
    [
        ("ipv4:10.0.0.1:1234", "10.0.0.1"),
        ("ipv6:[::1]:1234", "::1"),
        ("ipv6:[2001:DB8::0:1]:50051", "2001:db8::1"),
        ("ipv6:[::ffff:10.244.1.7]:40000", "10.244.1.7"),
        ("ipv6:[fe80::1%25eth0]:1234", "fe80::1"),
        ("ipv6:::1:1234", "::1"),
        ("unix:/run/edgefleet.sock", None),
        ("unix-abstract:edgefleet", None),
        ("ipv4:not-an-ip:1", None),
        ("", None),
    ],
)
def test_grpc_peer_gives_the_callers_ip_or_none(peer: str, address: str | None) -> None:
    assert peer_ip(peer) == address


@pytest.mark.parametrize(
    "text, address",
    [
        ("10.0.0.1", "10.0.0.1"),
        ("::FFFF:10.0.0.1", "10.0.0.1"),
        ("[fd00::10]", "fd00::10"),
        ("fe80::1%eth0", "fe80::1"),
        ("example.org", None),
        (None, None),
        ("", None),
    ],
)
def test_addresses_have_one_canonical_spelling(text: str | None, address: str | None) -> None:
    assert canonical_ip(text) == address


def test_with_client_address_keeps_every_other_hint() -> None:
    request = GenerationRequest(
        "r1", "m", (Message("user", "hi"),), Sampling(8, 0.0, 1.0),
        RoutingHints(sensitive=True, tenant="acme", policy="p"),
    )  # fmt: skip
    marked = request.with_client_address("10.0.0.9")
    assert marked.routing == RoutingHints(
        sensitive=True, tenant="acme", policy="p", client_address="10.0.0.9"
    )
    assert (marked.request_id, marked.messages) == (request.request_id, request.messages)


# --- pods and the index ---------------------------------------------------------------


def test_only_pods_that_may_still_run_lend_their_ips() -> None:
    assert pod_addresses(pod("a", "10.244.1.5")) == {"10.244.1.5"}
    # Init containers run while Pending; a terminating pod runs until its grace ends.
    assert pod_addresses(pod("b", "10.244.1.6", phase="Pending")) == {"10.244.1.6"}
    assert pod_addresses(pod("c", None, phase="Pending")) == set()
    # A finished pod's IP may already belong to a pod elsewhere.
    assert pod_addresses(pod("d", "10.244.1.7", phase="Succeeded")) == set()
    assert pod_addresses(pod("e", "10.244.1.8", phase="Failed")) == set()
    dual = pod("f", "10.244.1.9", podIPs=[{"ip": "10.244.1.9"}, {"ip": "FD00::9"}])
    assert pod_addresses(dual) == {"10.244.1.9", "fd00::9"}


def test_watch_events_update_the_set_and_bookmarks_change_nothing() -> None:
    objects: dict[str, dict[str, Any]] = {}
    assert apply_watch_event(objects, "ADDED", pod("a", "10.0.0.1"))
    assert apply_watch_event(objects, "MODIFIED", pod("a", "10.0.0.2"))
    assert objects["a"]["status"]["podIP"] == "10.0.0.2"
    assert not apply_watch_event(objects, "BOOKMARK", {"metadata": {"resourceVersion": "9"}})
    assert apply_watch_event(objects, "DELETED", pod("a", "10.0.0.2"))
    assert objects == {}
    assert not apply_watch_event(objects, "DELETED", pod("a", "10.0.0.2"))


def test_index_follows_watch_events_of_a_namespace() -> None:
    index = PodIndex()
    index.follow(["payroll"])
    assert not index.synced("payroll")
    pods: dict[str, dict[str, Any]] = {}
    index.replace("payroll", pods.values())  # the first list: empty
    assert index.synced("payroll")
    apply_watch_event(pods, "ADDED", pod("job", None, phase="Pending"))
    index.replace("payroll", pods.values())
    assert index.namespaces_of("10.244.1.5") == set()
    apply_watch_event(pods, "MODIFIED", pod("job", "10.244.1.5"))
    index.replace("payroll", pods.values())
    assert index.namespaces_of("10.244.1.5") == {"payroll"}
    apply_watch_event(pods, "MODIFIED", pod("job", "10.244.1.5", phase="Succeeded"))
    index.replace("payroll", pods.values())
    assert index.namespaces_of("10.244.1.5") == set()
    apply_watch_event(pods, "ADDED", pod("web", "10.244.1.6"))
    index.replace("payroll", pods.values())
    apply_watch_event(pods, "DELETED", pod("web", "10.244.1.6"))
    index.replace("payroll", pods.values())
    assert index.namespaces_of("10.244.1.6") == set()


def test_a_lost_watch_unsyncs_until_the_next_list_and_dropped_namespaces_are_forgotten() -> None:
    index = PodIndex()
    index.follow(["hr", "payroll"])
    index.replace("hr", [pod("a", "10.0.0.1")])
    index.replace("payroll", [pod("b", "10.0.0.2")])
    index.lost("hr")
    assert not index.synced("hr")
    assert index.namespaces_of("10.0.0.1") == {"hr"}  # what was known still counts
    index.replace("hr", [pod("a", "10.0.0.1")])
    assert index.synced("hr")
    index.follow(["payroll"])
    assert index.namespaces == {"payroll"}
    assert index.namespaces_of("10.0.0.1") == set()
    index.replace("hr", [pod("a", "10.0.0.1")])  # a late word from the stopped watch
    assert index.namespaces == {"payroll"}


def test_verdict_fails_closed_until_every_namespace_is_listed() -> None:
    index = PodIndex()
    index.follow(["hr", "payroll"])
    assert client_namespace([], "10.0.0.5", index) is None
    assert client_namespace(["payroll"], None, index) is ClientNamespace.CLIENT_UNKNOWN
    assert client_namespace(["hr", "payroll"], "10.0.0.5", index) is ClientNamespace.UNSYNCED
    index.replace("payroll", [pod("b", "10.0.0.2")])
    # A client already placed is sensitive whatever the other namespace's state.
    assert client_namespace(["hr", "payroll"], "10.0.0.2", index) is ClientNamespace.SENSITIVE
    assert client_namespace(["hr", "payroll"], "10.0.0.5", index) is ClientNamespace.UNSYNCED
    index.replace("hr", [])
    assert client_namespace(["hr", "payroll"], "10.0.0.5", index) is None
    # The policy is the authority: a namespace the index does not follow is unknown.
    assert client_namespace(["finance"], "10.0.0.5", index) is ClientNamespace.UNSYNCED
    # A namespace the index still follows but the policy dropped marks nobody.
    assert client_namespace(["hr"], "10.0.0.2", index) is None


# --- the decision ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "verdict, reason",
    [
        (ClientNamespace.SENSITIVE, "privacy.namespace"),
        (ClientNamespace.UNSYNCED, "privacy.namespace_unsynced"),
        (ClientNamespace.CLIENT_UNKNOWN, "privacy.client_unknown"),
    ],
)
def test_a_client_namespace_verdict_keeps_a_complex_prompt_local(
    verdict: ClientNamespace, reason: str
) -> None:
    facts = RequestFacts(complexity=0.99, client_namespace=verdict)
    assert decide(RoutingPolicy(), 0.5, facts, FleetFacts()) == RoutingDecision(
        Target.LOCAL, reason
    )
    refused = decide(RoutingPolicy(), 0.5, facts, FleetFacts(local_available=False))
    assert refused == RoutingDecision(Target.REJECT, reason)


def test_privacy_reasons_name_the_most_telling_fact() -> None:
    both = RequestFacts(privacy_detector="email", client_namespace=ClientNamespace.SENSITIVE)
    assert decide(RoutingPolicy(), 0.5, both, FleetFacts()).reason == "privacy.detector.email"
    marked = RequestFacts(client_sensitive=True, client_namespace=ClientNamespace.UNSYNCED)
    assert decide(RoutingPolicy(), 0.5, marked, FleetFacts()).reason == "privacy.client_marked"
    placed = RequestFacts(client_sensitive=True, client_namespace=ClientNamespace.SENSITIVE)
    assert decide(RoutingPolicy(), 0.5, placed, FleetFacts()).reason == "privacy.namespace"


# --- through the real front ends ---------------------------------------------------------

POLICY = parse_policy(
    {"privacy": {"sensitiveNamespaces": ["payroll"]}, "complexity": {"threshold": 0.5}}
)


def router_engine(index: PodIndex | None) -> RouterEngine:
    engine = RouterEngine(POLICY, Endpoints(), ComplexityScorer.load())
    engine.pods = index
    return engine


def route_reasons(engine: RouterEngine) -> tuple[str, str, str]:
    """(edgefleet.v1, HTTP, OIP) route reasons, one request each from 127.0.0.1 (all refused)."""

    async def run() -> tuple[str, str, str]:
        grpc_port, http_port = free_local_port(), free_local_port()
        config = ServerConfig(listen=f"127.0.0.1:{grpc_port}", instance_name="test")
        server = InferenceServer(engine, config)
        await server.start()
        http = await start_http(server.service, f"127.0.0.1:{http_port}")
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                stub = pb_grpc.InferenceStub(channel)
                call = stub.Generate(pb.GenerateRequest(prompt="hello"), timeout=30)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call
                assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
                via_grpc = dict(await call.trailing_metadata())[ROUTE_REASON_KEY]
                request = oip.ModelInferRequest(model_name="default")
                tensor = request.inputs.add(name="text_input", datatype="BYTES", shape=[1])
                tensor.contents.bytes_contents.append(b"hello")
                infer = oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await infer
                via_oip = dict(await infer.trailing_metadata())[ROUTE_REASON_KEY]
            via_http = await asyncio.to_thread(http_reason, http_port)
        finally:
            await http.cleanup()
            await server.server.stop(grace=None)
        return via_grpc, via_http, via_oip

    return asyncio.run(run())


def http_reason(port: int) -> str:
    body = json.dumps({"messages": [{"role": "user", "content": "hello"}]}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 503
    return refused.value.headers["x-edgefleet-route-reason"]


def test_a_caller_in_a_sensitive_namespace_is_sensitive_on_both_front_ends() -> None:
    index = PodIndex()
    index.follow(["payroll"])
    index.replace("payroll", [pod("client", "127.0.0.1")])
    assert route_reasons(router_engine(index)) == ("privacy.namespace",) * 3


def test_a_caller_elsewhere_is_routed_on_its_merits_once_the_namespace_is_listed() -> None:
    index = PodIndex()
    index.follow(["payroll"])
    engine = router_engine(index)
    # Not listed yet: fail closed.
    assert route_reasons(engine) == ("privacy.namespace_unsynced",) * 3
    index.replace("payroll", [pod("someone-else", "10.244.1.5")])
    # No local replica and no cloud: refused for that, not for privacy.
    assert route_reasons(engine) == ("cloud.unavailable",) * 3


def test_without_the_kubernetes_api_the_namespaces_are_not_enforced() -> None:
    assert route_reasons(router_engine(None)) == ("cloud.unavailable",) * 3


def test_metrics_show_each_namespaces_pods_and_state_and_forget_dropped_ones() -> None:
    metrics = RouterMetrics()
    index = PodIndex()
    index.follow(["hr", "payroll"])
    index.replace("payroll", [pod("a", "10.0.0.1"), pod("b", "10.0.0.2", phase="Failed")])
    metrics.observe_pods(index)
    value = metrics.registry.get_sample_value
    assert value("edgefleet:router_sensitive_namespace_pod_ips", {"namespace": "payroll"}) == 1
    assert value("edgefleet:router_sensitive_namespace_synced", {"namespace": "payroll"}) == 1
    assert value("edgefleet:router_sensitive_namespace_synced", {"namespace": "hr"}) == 0
    index.follow(["payroll"])
    metrics.observe_pods(index)
    assert value("edgefleet:router_sensitive_namespace_synced", {"namespace": "hr"}) is None
