"""The router as an engine: the same interface as a model, answers come from elsewhere.

Because the router implements `Engine`, it is served by the very servicers a
model server uses (edgefleet.v1, OIP v2, health, admission, metrics, drain),
so a client cannot tell a router from a model. For each request it gathers
facts (privacy scan, complexity score, local load, breaker and budget state),
asks the pure `decide`, then streams from the chosen backend, falling back
once when that target fails before its first token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from edgefleet.router.backends import Backend, BackendSet
from edgefleet.router.choice import pick_replica
from edgefleet.router.metrics import RouterMetrics
from edgefleet.router.pods import PodIndex, client_namespace
from edgefleet.router.sources import Endpoints
from edgefleet.routing.breaker import CircuitBreaker
from edgefleet.routing.budget import CloudBudget, Reservation, prompt_token_bound
from edgefleet.routing.complexity import ComplexityScorer
from edgefleet.routing.decision import FleetFacts, RequestFacts, RoutingDecision, Target, decide
from edgefleet.routing.overflow import OverflowGate, least_loaded
from edgefleet.routing.policy import RoutingPolicy
from edgefleet.routing.privacy import PrivacyScanner
from edgefleet.serving.engines.base import Engine, StreamItem
from edgefleet.serving.errors import EdgefleetError
from edgefleet.serving.grpc_inference import route_metadata
from edgefleet.serving.types import (
    Completion,
    EngineStats,
    FinishReason,
    GenerationRequest,
    Route,
    ServedBy,
    TextDelta,
    Usage,
)
from edgefleet.v1 import inference_pb2 as pb

log = logging.getLogger("edgefleet.router")

# Codes that say the backend (not the request) is unwell: they count against
# its breaker and may be retried on the fallback target.
_BACKEND_FAILURES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.FAILED_PRECONDITION,
}
# Worth another target, but not the breaker's business: the backend is healthy, just full.
_RETRY_ELSEWHERE = _BACKEND_FAILURES | {grpc.StatusCode.RESOURCE_EXHAUSTED}
_FINISH = {
    pb.FINISH_REASON_STOP: FinishReason.STOP,
    pb.FINISH_REASON_LENGTH: FinishReason.LENGTH,
    pb.FINISH_REASON_CANCELLED: FinishReason.CANCELLED,
}
_SENSITIVITY = {True: pb.SENSITIVITY_SENSITIVE, False: pb.SENSITIVITY_UNSPECIFIED}


class RouteRefused(EdgefleetError):
    """No target may serve this request; it was sent nowhere."""

    def __init__(self, decision: RoutingDecision, policy: str) -> None:
        reason = decision.reason
        if reason.startswith("privacy."):
            message = (
                f"request is sensitive ({reason}) and no local model replica can serve it; "
                "it was not sent to the cloud"
            )
        elif reason == "budget.exceeded":
            message = f"the cloud budget of routing policy {policy!r} would be exceeded"
        elif reason == "capacity.no_local":
            message = "no local model replica is ready and the policy does not allow the cloud"
        else:
            message = f"no target can serve this request now ({reason})"
        super().__init__(f"{message} [route: reject, reason: {reason}]")
        self.code = (
            grpc.StatusCode.RESOURCE_EXHAUSTED
            if reason == "budget.exceeded"
            else grpc.StatusCode.UNAVAILABLE
        )
        self.trailers = route_metadata(Route(Target.REJECT.value, reason))


class BackendError(EdgefleetError):
    """A backend's own error, passed on with its code, details and retry hints."""

    def __init__(self, error: grpc.aio.AioRpcError, route: Route, backend: str) -> None:
        super().__init__(f"{route.target} backend {backend}: {error.details()}")
        self.code = error.code()
        hints = tuple(
            (key, str(value))
            for key, value in (error.trailing_metadata() or ())
            if key in ("grpc-retry-pushback-ms", "retry-after-ms")
        )
        self.trailers = hints + route_metadata(route)


class _TargetFailed(Exception):
    def __init__(self, error: EdgefleetError, retry_elsewhere: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_elsewhere = retry_elsewhere


@dataclass(frozen=True)
class Routing:
    """What route() found for one request, carried to where it is carried out."""

    decision: RoutingDecision
    # A detector matched, the client marked it or it came from a sensitive
    # namespace: never to the cloud, and local servers are told so.
    sensitive: bool
    # Worst-case (prompt, answer) tokens, reserved against the budget before sending.
    cloud_bound: tuple[int, int]


@dataclass(frozen=True)
class ActivePolicy:
    """A policy with what is derived from it; swapped whole on reload."""

    policy: RoutingPolicy
    scanner: PrivacyScanner
    threshold: float


def activate(policy: RoutingPolicy, scorer: ComplexityScorer) -> ActivePolicy:
    share = policy.complexity.target_cloud_share
    threshold = (
        scorer.threshold_for_share(share) if share is not None else policy.complexity.threshold
    )
    assert threshold is not None  # the parser guarantees one of the two
    return ActivePolicy(policy, policy.scanner(), threshold)


class RouterEngine(Engine):
    name = "router"
    aliases = ("default",)

    def __init__(
        self,
        policy: RoutingPolicy,
        endpoints: Endpoints,
        scorer: ComplexityScorer,
        *,
        context_length: int = 2048,
        capacity: int = 256,
        instance_name: str = "router",
    ) -> None:
        self.scorer = scorer
        self.active = activate(policy, scorer)
        self.model_name = policy.model_name
        self.context_length = context_length
        self.capacity = capacity
        self.instance_name = instance_name
        self.endpoints = endpoints
        self.backends = BackendSet()
        self.budget = CloudBudget(policy.budget)
        self.gate = OverflowGate()
        self.metrics = RouterMetrics()
        self._calls: dict[str, set[grpc.aio.UnaryStreamCall]] = {}
        self._routes: dict[str, Route] = {}
        self._retired: list[Backend] = []
        self._running = 0
        self._started = False
        # Pods of the policy's sensitiveNamespaces (set when the router uses the
        # Kubernetes API); None: namespaces are not enforced (no API to ask).
        self.pods: PodIndex | None = None

    @property
    def instances(self) -> int:  # type: ignore[override]
        return len(self.backends.local)

    # -- lifecycle ---------------------------------------------------------

    def _new_breaker(self) -> CircuitBreaker:
        failover = self.active.policy.failover
        return CircuitBreaker(failover.breaker_failures, failover.breaker_cooldown_seconds)

    async def start(self) -> None:
        await self.set_endpoints(self.endpoints)
        self._started = True

    async def set_endpoints(self, endpoints: Endpoints) -> None:
        self.endpoints = endpoints
        retired = await self.backends.reconcile(endpoints.local, endpoints.cloud, self._new_breaker)
        self._retired.extend(retired)
        log.info("endpoints: local %s, cloud %s", list(endpoints.local), endpoints.cloud)

    def set_policy(self, policy: RoutingPolicy) -> None:
        """Swap the policy; requests already routed finish under the old one."""
        self.active = activate(policy, self.scorer)
        self.budget.policy = policy.budget
        for backend in self.backends.all():
            backend.breaker.failure_threshold = policy.failover.breaker_failures
            backend.breaker.cooldown_s = policy.failover.breaker_cooldown_seconds
        log.info("routing policy %s active (threshold %.3f)", policy.name, self.active.threshold)

    async def poll(self) -> None:
        """Refresh backend load; close retired backends once nothing runs there."""
        await asyncio.gather(*(b.poll() for b in self.backends.all()))
        for backend in [b for b in self._retired if b.in_flight == 0]:
            self._retired.remove(backend)
            await backend.close()
        self.metrics.observe_backends(self.backends.all(), self.gate.overflowing)
        if self.pods is not None:
            self.metrics.observe_pods(self.pods)
        self.metrics.observe_budget(self.budget.snapshot())

    def ready(self) -> bool:
        return self._started

    def stats(self) -> EngineStats:
        return EngineStats(running=self._running)

    async def cancel(self, request_id: str) -> bool:
        calls = self._calls.get(request_id, set())
        for call in calls:
            call.cancel()
        return bool(calls)

    def route_of(self, request_id: str) -> Route | None:
        return self._routes.get(request_id)

    async def close(self) -> None:
        for backend in [*self.backends.all(), *self._retired]:
            await backend.close()

    # -- routing -----------------------------------------------------------

    def route(self, request: GenerationRequest, active: ActivePolicy) -> Routing:
        started = time.perf_counter()
        texts = [message.content for message in request.messages]
        cloud_bound = (prompt_token_bound(texts), request.sampling.max_tokens)
        finding = active.scanner.sensitive(texts)
        namespaces = active.policy.privacy.sensitive_namespaces
        facts = RequestFacts(
            client_sensitive=request.routing.sensitive,
            privacy_detector=finding.detector if finding else None,
            client_namespace=(
                client_namespace(namespaces, request.routing.client_address, self.pods)
                if self.pods is not None
                else None
            ),
        )
        if not facts.sensitive:
            user_texts = [m.content for m in request.messages if m.role == "user"] or texts
            facts = RequestFacts(complexity=self.scorer.score(user_texts[-1]))
        best = least_loaded([backend.load() for backend in self.backends.local.values()])
        cloud = self.backends.cloud
        fleet = FleetFacts(
            local_available=best is not None,
            overflowing=self.gate.update(active.policy.capacity, best),
            cloud_available=cloud is not None and cloud.ready,
            budget_allows=self.budget.would_allow(*cloud_bound),
        )
        decision = decide(active.policy, active.threshold, facts, fleet)
        self.metrics.decision_seconds.observe(time.perf_counter() - started)
        return Routing(decision, facts.sensitive, cloud_bound)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        active = self.active
        routing = self.route(request, active)
        decision = routing.decision
        if decision.target is Target.REJECT:
            self.metrics.count_route(decision.target.value, decision.reason)
            raise RouteRefused(decision, active.policy.name)
        self._running += 1
        try:
            plan = [(decision.target, decision.reason)]
            if decision.fallback is not None:
                plan.append((decision.fallback, f"failover.{decision.target.value}_failed"))
            for attempt, (target, reason) in enumerate(plan):
                try:
                    async for item in self._serve_via(target, reason, request, active, routing):
                        yield item
                    return
                except _TargetFailed as failed:
                    last = attempt == len(plan) - 1
                    if last or not failed.retry_elsewhere:
                        self.metrics.count_route(target.value, reason)
                        raise failed.error from None
                    log.warning("%s; trying %s", failed.error, plan[attempt + 1][0].value)
        finally:
            self._running -= 1

    def _pick(self, target: Target) -> Backend | None:
        if target is Target.CLOUD:
            cloud = self.backends.cloud
            return cloud if cloud is not None and cloud.ready else None
        # Overflow looked at the least-loaded replica; the pick also honours weights.
        loads = [backend.load() for backend in self.backends.local.values()]
        chosen = pick_replica(loads, self.endpoints.weight)
        return self.backends.local.get(chosen.name) if chosen is not None else None

    def _forwarded(
        self, request: GenerationRequest, sensitive: bool, policy: str
    ) -> pb.GenerateRequest:
        sampling = request.sampling
        params = pb.SamplingParams(
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            stop=list(sampling.stop),
            ignore_eos=sampling.ignore_eos,
        )
        if sampling.seed is not None:
            params.seed = sampling.seed
        return pb.GenerateRequest(
            messages=[pb.ChatMessage(role=m.role, content=m.content) for m in request.messages],
            sampling=params,
            request_id=request.request_id,
            routing=pb.RoutingHints(
                sensitivity=_SENSITIVITY[sensitive], tenant=request.routing.tenant, policy=policy
            ),
        )

    async def _serve_via(
        self,
        target: Target,
        reason: str,
        request: GenerationRequest,
        active: ActivePolicy,
        routing: Routing,
    ) -> AsyncIterator[StreamItem]:
        route = Route(target.value, reason)
        policy = active.policy
        backend = self._pick(target)
        if backend is None or not backend.breaker.acquire():
            error = EdgefleetError(f"no {target.value} backend is available now")
            error.code = grpc.StatusCode.UNAVAILABLE
            error.trailers = route_metadata(route)
            raise _TargetFailed(error, retry_elsewhere=True)
        reservation: Reservation | None = None
        if target is Target.CLOUD:
            # decide() never sends a sensitive request out; should that ever break,
            # stop here rather than forward it (the egress checks once more).
            if routing.sensitive:
                raise AssertionError("a sensitive request reached the cloud path")
            reservation = self.budget.reserve(*routing.cloud_bound)
            if reservation is None:
                backend.breaker.release()
                raise _TargetFailed(
                    RouteRefused(RoutingDecision(Target.REJECT, "budget.exceeded"), policy.name),
                    retry_elsewhere=False,
                )
        timeout = (
            policy.failover.cloud_timeout_seconds
            if target is Target.CLOUD
            else policy.failover.local_timeout_seconds
        )
        forwarded = self._forwarded(request, routing.sensitive, policy.name)
        call = backend.generate_stream(forwarded, timeout)
        calls = self._calls.setdefault(request.request_id, set())
        calls.add(call)
        backend.in_flight += 1
        started = False
        settled = False
        try:
            final: pb.GenerateStreamResponse | None = None
            async for message in call:
                if message.is_final:
                    final = message
                elif message.delta:
                    if not started:
                        started = True
                        self._routes[request.request_id] = route
                    yield TextDelta(message.delta)
            if final is None:
                raise RuntimeError(f"{backend.address} ended a stream without its final message")
            backend.breaker.record_success()
            usage = Usage(final.usage.prompt_tokens, final.usage.completion_tokens)
            if reservation is not None:
                cost = self.budget.settle(reservation, usage.prompt_tokens, usage.completion_tokens)
                self.metrics.count_cloud_spend(usage, cost)
                settled = True
            self.metrics.count_route(route.target, route.reason)
            served = final.served_by
            yield Completion(
                finish_reason=_FINISH.get(final.finish_reason, FinishReason.STOP),
                usage=usage,
                served_by=ServedBy(served.backend, served.engine, served.model, served.instance),
                route=route,
            )
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code in _BACKEND_FAILURES:
                backend.breaker.record_failure()
            else:
                backend.breaker.release()
            if reservation is not None:
                # The egress may have been billed for the prompt; the answer, if it
                # started, is unknown: count the worst case, so the cap still holds.
                output = reservation.output_tokens if started else 0
                cost = self.budget.settle(reservation, reservation.input_tokens, output)
                self.metrics.count_cloud_spend(Usage(reservation.input_tokens, output), cost)
                settled = True
            failure = BackendError(error, route, backend.address)
            retry = not started and code in _RETRY_ELSEWHERE
            raise _TargetFailed(failure, retry_elsewhere=retry) from error
        finally:
            self._routes.pop(request.request_id, None)
            backend.in_flight -= 1
            calls.discard(call)
            if not calls:
                self._calls.pop(request.request_id, None)
            if not call.done():
                call.cancel()
                backend.breaker.release()
            if reservation is not None and not settled:
                # Cancelled by the client mid-way: count the worst case.
                output = reservation.output_tokens if started else 0
                with contextlib.suppress(Exception):
                    self.budget.settle(reservation, reservation.input_tokens, output)
