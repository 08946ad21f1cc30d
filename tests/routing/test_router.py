"""The router end to end: routes and reasons, overflow, failover, budget, reloads."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest

from edgefleet.routing.complexity import ComplexityScorer
from edgefleet.serving.readiness import free_local_port
from edgefleet.v1 import inference_pb2 as pb
from tests.routing.conftest import Stack
from tests.support.cloud import CloudStandIn, RecordingProxy
from tests.support.model_server import running_server
from tests.support.prompts import COMPLEX, SIMPLE
from tests.support.routing import (
    ask,
    ask_or_error,
    audit_lines,
    backends_seen,
    running_router,
    start_egress,
    wait_for,
    write_atomically,
)

# Tests about other rules keep capacity out of the way: on a shared local
# server a slow spell (a previous test's queue) may otherwise overflow.
NEVER_OVERFLOW = {"maxQueueDepth": 1000, "maxPredictedTtftMs": 3_600_000}
ALL_LOCAL = {"complexity": {"threshold": 1.0}, "capacity": NEVER_OVERFLOW}
ALL_CLOUD = {"complexity": {"threshold": 0.0}, "capacity": NEVER_OVERFLOW}


def between(scorer: ComplexityScorer) -> float:
    low, high = scorer.score(SIMPLE), scorer.score(COMPLEX)
    assert low < high, "the classifier must rank the multi-step problem above the lookup"
    return (low + high) / 2


def test_simple_prompt_stays_local_and_complex_goes_to_cloud(
    stack: Stack, scorer: ComplexityScorer, tmp_path: Path
) -> None:
    spec = {"complexity": {"threshold": between(scorer)}}
    with running_router(tmp_path, spec, [stack.local.target], stack.egress.target) as router:
        sent_before = len(stack.proxy.received())
        simple, trailers = ask(router.stub, SIMPLE)
        assert (simple.route.target, simple.route.reason) == ("local", "complexity.low")
        assert trailers["x-edgefleet-route"] == "local"
        assert trailers["x-edgefleet-route-reason"] == "complexity.low"
        assert (simple.served_by.backend, simple.served_by.engine) == ("local", "llamacpp")
        assert "Paris" in simple.text
        assert len(stack.proxy.received()) == sent_before

        hard, trailers = ask(router.stub, COMPLEX)
        assert (hard.route.target, hard.route.reason) == ("cloud", "complexity.high")
        assert trailers["x-edgefleet-route"] == "cloud"
        assert (hard.served_by.backend, hard.served_by.engine) == ("cloud", "openai")
        assert hard.text and hard.usage.completion_tokens > 0
        arrived = stack.proxy.received()[sent_before:]
        assert [body["messages"][-1]["content"] for body in arrived] == [COMPLEX]

        counts = {
            (target, reason): router.metric(
                "edgefleet:router_routes_total", target=target, reason=reason
            )
            for target, reason in (("local", "complexity.low"), ("cloud", "complexity.high"))
        }
        assert counts == {("local", "complexity.low"): 1, ("cloud", "complexity.high"): 1}


def test_stream_through_router_carries_route_on_the_final_message(
    stack: Stack, tmp_path: Path
) -> None:
    with running_router(tmp_path, ALL_CLOUD, [stack.local.target], stack.egress.target) as router:
        request = pb.GenerateRequest(
            prompt="Name a colour.", sampling=pb.SamplingParams(max_tokens=12, temperature=0)
        )
        call = router.stub.GenerateStream(request, timeout=120)
        messages = list(call)
        final = messages[-1]
        assert final.is_final and not any(m.is_final for m in messages[:-1])
        assert "".join(m.delta for m in messages[:-1])
        assert (final.route.target, final.route.reason) == ("cloud", "complexity.high")
        assert final.served_by.backend == "cloud"
        assert dict(call.trailing_metadata())["x-edgefleet-route"] == "cloud"


def test_burst_beyond_local_capacity_overflows_and_nothing_fails(
    stack: Stack, tmp_path: Path
) -> None:
    # Overflow as soon as both local slots are busy.
    spec = {**ALL_LOCAL, "capacity": {"maxQueueDepth": 0}}
    with running_router(tmp_path, spec, [stack.local.target], stack.egress.target) as router:
        burst = [f"Write one short sentence about the number {n}." for n in range(10)]
        with concurrent.futures.ThreadPoolExecutor(len(burst)) as pool:
            outcomes = list(pool.map(lambda p: ask_or_error(router.stub, p, max_tokens=24), burst))
        assert all(code == "OK" for _, _, code in outcomes), outcomes
        routes = [(target, reason) for target, reason, _ in outcomes]
        assert routes.count(("local", "complexity.low")) >= 2
        assert routes.count(("cloud", "capacity.overflow")) >= 1
        assert set(routes) <= {("local", "complexity.low"), ("cloud", "capacity.overflow")}


def test_cloud_down_local_serves_breaker_opens_then_closes(tmp_path: Path) -> None:
    cloud = CloudStandIn()
    cloud.start()
    proxy = RecordingProxy(cloud.base_url)
    proxy.start()
    egress = start_egress(proxy.base_url, tmp_path / "audit.jsonl", "--max-retries", "1")
    spec = {**ALL_CLOUD, "failover": {"breakerFailures": 2, "breakerCooldownSeconds": 3}}
    try:
        with (
            running_server("--batch-sequences", "2") as local,
            running_router(tmp_path, spec, [local.target], egress.target) as router,
        ):
            assert ask_or_error(router.stub, SIMPLE)[:2] == ("cloud", "complexity.high")
            cloud.stop()
            # Each cloud failure is answered locally; the second opens the breaker.
            for _ in range(2):
                assert ask_or_error(router.stub, SIMPLE) == ("local", "failover.cloud_failed", "OK")
            # The gauge is refreshed on the router's next poll of its backends.
            wait_for(lambda: router.metric("edgefleet:router_breaker_open", kind="cloud") == 1, 10)
            tried = len(proxy.received())
            assert ask_or_error(router.stub, SIMPLE) == ("local", "cloud.unavailable", "OK")
            assert len(proxy.received()) == tried, "an open breaker sends nothing to the cloud"

            cloud.start()  # same port: the cloud is back
            seen: list[tuple[str, str, str]] = []
            wait_for(
                lambda: seen.append(ask_or_error(router.stub, SIMPLE)) or seen[-1][0] == "cloud",
                60,
                "a half-open trial call reaching the recovered cloud",
            )
            assert all(outcome[2] == "OK" for outcome in seen)
            assert seen[-1][:2] == ("cloud", "complexity.high")
            wait_for(lambda: router.metric("edgefleet:router_breaker_open", kind="cloud") == 0, 10)
    finally:
        egress.stop()
        proxy.stop()
        cloud.stop()


def test_concurrent_cloud_requests_never_overspend_a_small_budget(
    stack: Stack, tmp_path: Path
) -> None:
    cap_tokens, cap_cost = 2500, 2.0
    spec = {
        **ALL_CLOUD,
        "budget": {
            "maxCloudTokens": cap_tokens,
            "maxCloudCost": cap_cost,
            "pricePer1kInputTokens": 0.5,
            "pricePer1kOutputTokens": 1.5,
            "onExceeded": "reject",
        },
    }
    with running_router(tmp_path, spec, [stack.local.target], stack.egress.target) as router:
        prompts = [f"Give me a word that rhymes with number {n}." for n in range(50)]
        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            outcomes = list(
                pool.map(lambda p: ask_or_error(router.stub, p, max_tokens=16), prompts)
            )
        served = [o for o in outcomes if o[2] == "OK"]
        refused = [o for o in outcomes if o[2] != "OK"]
        assert served and refused, "the cap must bind: some served, some refused"
        assert all(o == ("cloud", "complexity.high", "OK") for o in served)
        assert all(o == ("reject", "budget.exceeded", "RESOURCE_EXHAUSTED") for o in refused)

        billed = [line for line in audit_lines(stack.audit_log) if line["policy"] == tmp_path.name]
        assert len(billed) == len(served)
        tokens = sum(line["prompt_tokens"] + line["completion_tokens"] for line in billed)
        cost = sum(
            line["prompt_tokens"] * 0.5 / 1000 + line["completion_tokens"] * 1.5 / 1000
            for line in billed
        )
        assert tokens <= cap_tokens and cost <= cap_cost
        assert router.metric("edgefleet:router_budget_window_tokens") <= cap_tokens


def test_policy_reload_mid_traffic_drops_nothing(stack: Stack, tmp_path: Path) -> None:
    with running_router(tmp_path, ALL_LOCAL, [stack.local.target], stack.egress.target) as router:
        results: list[tuple[str, str, str]] = []
        stop = threading.Event()

        def traffic(worker: int) -> None:
            n = 0
            while not stop.is_set() and n < 40:
                results.append(
                    ask_or_error(router.stub, f"Say the word {worker}-{n}.", max_tokens=6)
                )
                n += 1

        workers = [threading.Thread(target=traffic, args=(w,)) for w in range(3)]
        for worker in workers:
            worker.start()
        wait_for(lambda: len(results) >= 4, 120, "traffic under the first policy")
        router.set_policy(ALL_CLOUD)
        wait_for(lambda: sum(r[0] == "cloud" for r in results) >= 3, 120, "traffic under the new")
        stop.set()
        for worker in workers:
            worker.join()
        assert all(code == "OK" for _, _, code in results), results
        assert {(t, r) for t, r, _ in results} == {
            ("local", "complexity.low"),
            ("cloud", "complexity.high"),
        }
        assert router.metric("edgefleet:router_policy_reloads_total", result="applied") == 1


def test_bad_policy_at_reload_is_refused_and_old_policy_keeps_serving(
    stack: Stack, tmp_path: Path
) -> None:
    with running_router(tmp_path, ALL_LOCAL, [stack.local.target], stack.egress.target) as router:
        router.set_policy({"complexity": {"threshold": 0.0}, "budget": {"onExceeded": "panic"}})
        wait_for(
            lambda: router.metric("edgefleet:router_policy_reloads_total", result="rejected") == 1,
            30,
            "the reload to be refused",
        )
        assert ask_or_error(router.stub, SIMPLE) == ("local", "complexity.low", "OK")
        log = router.server.log()
        assert "spec.budget.onExceeded: must be one of local, reject, got 'panic'" in log
        assert "keeping the previous policy" in log


def test_bad_policy_at_start_exits_with_the_problem_named(tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("spec:\n  complexity:\n    threshold: 2\n  budget:\n    maxCloudCostt: 1\n")
    command = [sys.executable, "-m", "edgefleet.router.main", "--policy-file", str(bad)]
    started = subprocess.run(
        [*command, "--listen", f"127.0.0.1:{free_local_port()}", "--http-listen", "",
         "--metrics-listen", ""],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert started.returncode == 2
    assert "spec.complexity.threshold: must be a number within [0, 1], got 2" in started.stderr
    assert "spec.budget.maxCloudCostt: unknown field" in started.stderr
    checked = subprocess.run(
        [sys.executable, "-m", "edgefleet.router.main", "--check-policy", str(bad)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert checked.returncode == 2 and "spec.complexity.threshold" in checked.stderr
    good = tmp_path / "good.yaml"
    good.write_text("kind: RoutingPolicy\nmetadata: {name: ok}\nspec: {}\n")
    checked = subprocess.run(
        [sys.executable, "-m", "edgefleet.router.main", "--check-policy", str(good)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert checked.returncode == 0 and "valid RoutingPolicy 'ok'" in checked.stdout


def test_unknown_model_and_bad_input_get_the_servers_codes(stack: Stack, tmp_path: Path) -> None:
    with running_router(tmp_path, ALL_LOCAL, [stack.local.target], stack.egress.target) as router:
        with pytest.raises(grpc.RpcError) as caught:
            router.stub.Generate(pb.GenerateRequest(model="nope", prompt="hi"), timeout=30)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert "hybrid" in caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:
            ask(router.stub, "hi", max_tokens=0)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith("sampling.max_tokens")
        models = router.stub.ListModels(pb.ListModelsRequest(), timeout=10).models
        assert [(m.name, m.engine, m.ready) for m in models] == [("hybrid", "router", True)]


def test_oip_through_the_router_reports_the_route(stack: Stack, tmp_path: Path) -> None:
    from edgefleet.oip import grpc_predict_v2_pb2 as oip
    from edgefleet.oip import grpc_predict_v2_pb2_grpc as oip_grpc

    with running_router(tmp_path, ALL_LOCAL, [stack.local.target], stack.egress.target) as router:
        stub = oip_grpc.GRPCInferenceServiceStub(router.server.channel)
        tensor = oip.ModelInferRequest.InferInputTensor(
            name="text_input", datatype="BYTES", shape=[1]
        )
        tensor.contents.bytes_contents.append(SIMPLE.encode())
        request = oip.ModelInferRequest(model_name="hybrid", inputs=[tensor])
        request.parameters["max_tokens"].int64_param = 16
        reply = stub.ModelInfer(request, timeout=120)
        # The model's words at the server's default sampling differ by CPU (a held-out
        # machine's kernels); that the answer comes through whole is this test's point.
        (output,) = reply.outputs
        assert output.name == "text_output"
        assert output.contents.bytes_contents[0].decode().strip()
        assert reply.parameters["route_target"].string_param == "local"
        assert reply.parameters["route_reason"].string_param == "complexity.low"
        assert reply.parameters["engine"].string_param == "llamacpp"


def test_endpoint_file_changes_are_picked_up_without_restart(stack: Stack, tmp_path: Path) -> None:
    endpoints = tmp_path / "endpoints.json"
    write_atomically(endpoints, {"local": [], "cloud": stack.egress.target})
    with running_router(
        tmp_path, ALL_LOCAL, [], None, "--endpoints-file", str(endpoints)
    ) as router:
        assert ask_or_error(router.stub, SIMPLE)[:2] == ("cloud", "capacity.no_local")
        write_atomically(endpoints, {"local": [stack.local.target], "cloud": stack.egress.target})
        wait_for(lambda: backends_seen(router, 2), 30, "the new local replica polled")
        assert ask_or_error(router.stub, SIMPLE) == ("local", "complexity.low", "OK")
        write_atomically(endpoints, {"local": "not-a-list"})
        wait_for(
            lambda: router.metric("edgefleet:router_policy_reloads_total", result="rejected") == 1,
            30,
        )
        assert ask_or_error(router.stub, SIMPLE) == ("local", "complexity.low", "OK")
