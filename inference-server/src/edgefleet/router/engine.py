"""The router as an engine: the same interface as a model, answers come from elsewhere.

Because the router implements `Engine`, it is served by the very servicers a
model server uses (edgefleet.v1, OIP v2, health, admission, metrics, drain),
so a client cannot tell a router from a model. For each request it gathers
facts (privacy scan, complexity score, local load, breaker and budget state),
asks the pure `decide`, then streams from the chosen backend, falling back
once when that target fails before its first token. Nothing goes to the cloud
without the full privacy pass (`_cloud_prompt`), on a failover too; under
`privacy.onSensitive: redact` the cloud gets placeholders and the caller gets
the answer with the values put back. Each attempt at a backend
claims its breaker and, for the cloud, a budget reservation; `_settle` alone
gives them back, however the attempt ends (answered, failed, turned down,
abandoned by the client).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
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
from edgefleet.routing.decision import (
    FleetFacts,
    RequestFacts,
    RoutingDecision,
    Target,
    cloud_reason,
    confined,
    decide,
    privacy_step,
)
from edgefleet.routing.overflow import OverflowGate, least_loaded
from edgefleet.routing.policy import RoutingPolicy
from edgefleet.routing.privacy import PrivacyScanner
from edgefleet.routing.redaction import Restorer, redact
from edgefleet.serving.engines.base import Engine, StreamItem
from edgefleet.serving.errors import EdgefleetError
from edgefleet.serving.grpc_inference import route_metadata
from edgefleet.serving.types import (
    Completion,
    EngineStats,
    FinishReason,
    GenerationRequest,
    Message,
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

    def __init__(
        self, decision: RoutingDecision, policy: RoutingPolicy, detectors: tuple[str, ...] = ()
    ) -> None:
        reason = decision.reason
        # The policy refuses what the detectors found (never the values, only their names).
        refused = reason.startswith("privacy.detector.") and policy.privacy.on_sensitive == "reject"
        if refused:
            found = ", ".join(detectors or (reason.removeprefix("privacy.detector."),))
            message = (
                f"request holds data the privacy detectors flag ({found}) and routing policy "
                f"{policy.name!r} refuses such requests (privacy.onSensitive: reject)"
            )
        elif reason.startswith("privacy."):
            message = (
                f"request is sensitive ({reason}) and no local model replica can serve it; "
                "it was not sent to the cloud"
            )
        elif reason == "budget.exceeded":
            message = f"the cloud budget of routing policy {policy.name!r} would be exceeded"
        elif reason == "capacity.no_local":
            message = "no local model replica is ready and the policy does not allow the cloud"
        else:
            message = f"no target can serve this request now ({reason})"
        super().__init__(f"{message} [route: reject, reason: {reason}]")
        if refused:
            self.code = grpc.StatusCode.PERMISSION_DENIED
        elif reason == "budget.exceeded":
            self.code = grpc.StatusCode.RESOURCE_EXHAUSTED
        else:
            self.code = grpc.StatusCode.UNAVAILABLE
        self.trailers = route_metadata(Route(Target.REJECT.value, reason))


class BackendError(EdgefleetError):
    """A backend's own failure, passed on with its code, details and retry hints."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        route: Route,
        backend: str,
        hints: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(f"{route.target} backend {backend}: {details}")
        self.code = code
        self.trailers = hints + route_metadata(route)

    @classmethod
    def of_call(cls, error: grpc.aio.AioRpcError, route: Route, backend: str) -> BackendError:
        hints = tuple(
            (key, str(value))
            for key, value in (error.trailing_metadata() or ())
            if key in ("grpc-retry-pushback-ms", "retry-after-ms")
        )
        return cls(error.code(), error.details() or error.code().name, route, backend, hints)


class Ending(enum.Enum):
    """How one attempt at a backend ended: all its bookkeeping follows from this."""

    # The final message arrived.
    ANSWERED = "answered"
    # The backend is unwell (an error code of _BACKEND_FAILURES, a stream cut
    # short, a message that is not one): it counts against its breaker.
    BACKEND_FAILED = "backend_failed"
    # The backend turned the request down and is itself fine (full, bad input).
    TURNED_DOWN = "turned_down"
    # The client left, or the router stopped reading, before the answer ended.
    ABANDONED = "abandoned"


def charged_usage(
    ending: Ending, started: bool, reserved: Reservation, reported: Usage | None
) -> Usage | None:
    """What a cloud attempt costs the budget; None: nothing, the reservation is released.

    An answer costs what the egress reported. An attempt turned down before
    any text cost nothing (the cloud bills neither refusals nor rate limits).
    Otherwise the cloud may have billed the prompt and, once text flowed, a
    whole answer, and nobody will say how much: the worst case is charged, so
    the cap holds.
    """
    if ending is Ending.ANSWERED and reported is not None:
        return reported
    if ending is Ending.TURNED_DOWN and not started:
        return None
    return Usage(reserved.input_tokens, reserved.output_tokens if started else 0)


class _TargetFailed(Exception):
    def __init__(self, error: EdgefleetError, route: Route, retry_elsewhere: bool) -> None:
        super().__init__(str(error))
        self.error = error
        # The route the caller is told about (a budget refusal reads "reject").
        self.route = route
        self.retry_elsewhere = retry_elsewhere


@dataclass
class _Attempt:
    """One target's try at a request and what it holds: a backend slot, a breaker
    claim, maybe a budget reservation. `RouterEngine._settle` gives them back."""

    route: Route
    backend: Backend
    reservation: Reservation | None
    ending: Ending = Ending.ABANDONED
    # Text reached the caller: no fallback any more, and the answer may have been billed.
    started: bool = False
    final: pb.GenerateStreamResponse | None = None
    settled: bool = False


@dataclass(frozen=True)
class CloudPrompt:
    """What the cloud may be sent for one request, after the full privacy pass."""

    messages: tuple[Message, ...]
    # placeholder -> the value it replaced, put back into the answer; empty: nothing redacted.
    values: Mapping[str, str]
    # Worst-case (prompt, answer) tokens of these messages, reserved before sending.
    bound: tuple[int, int]


@dataclass(frozen=True)
class Routing:
    """What route() found for one request, carried to where it is carried out."""

    decision: RoutingDecision
    facts: RequestFacts
    # Set once the full privacy pass cleared the request for the cloud: when the
    # decision is `cloud`, or on a failover to it. None: the cloud may not have it.
    outbound: CloudPrompt | None

    @property
    def sensitive(self) -> bool:
        """A detector matched, the client marked it or it came from a sensitive
        namespace: local servers are told so."""
        return self.facts.sensitive


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.scorer = scorer
        # Breakers and the budget window run on it; tests pass one they can move.
        self.clock = clock
        self.active = activate(policy, scorer)
        self.model_name = policy.model_name
        self.context_length = context_length
        self.capacity = capacity
        self.instance_name = instance_name
        self.endpoints = endpoints
        self.backends = BackendSet()
        self.budget = CloudBudget(policy.budget, clock)
        self.gate = OverflowGate()
        self.metrics = RouterMetrics()
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
        return CircuitBreaker(
            failover.breaker_failures, failover.breaker_cooldown_seconds, self.clock
        )

    async def start(self) -> None:
        await self.set_endpoints(self.endpoints)
        self._started = True

    async def set_endpoints(self, endpoints: Endpoints) -> None:
        self.endpoints = endpoints
        retired = await self.backends.reconcile(endpoints.local, endpoints.cloud, self._new_breaker)
        self._retired.extend(retired)
        log.info("endpoints: local %s, cloud %s", list(endpoints.local), endpoints.cloud)

    def set_policy(self, policy: RoutingPolicy, scorer: ComplexityScorer | None = None) -> None:
        """Swap the policy (and the scorer, when given); requests already routed finish
        under the old one."""
        if scorer is not None:
            self.scorer = scorer
        self.active = activate(policy, self.scorer)
        self.budget.policy = policy.budget
        for backend in self.backends.all():
            backend.breaker.failure_threshold = policy.failover.breaker_failures
            backend.breaker.cooldown_s = policy.failover.breaker_cooldown_seconds
        log.info(
            "routing policy %s active (threshold %.3f, classifier %s)",
            policy.name,
            self.active.threshold,
            self.scorer.version,
        )

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
        self.metrics.observe_classifier(self.scorer.version)

    def ready(self) -> bool:
        return self._started

    def stats(self) -> EngineStats:
        return EngineStats(running=self._running)

    def route_of(self, request_id: str) -> Route | None:
        return self._routes.get(request_id)

    async def close(self) -> None:
        for backend in [*self.backends.all(), *self._retired]:
            await backend.close()

    # -- routing -----------------------------------------------------------

    def route(self, request: GenerationRequest, active: ActivePolicy) -> Routing:
        started = time.perf_counter()
        policy = active.policy
        texts = [message.content for message in request.messages]
        # The entity detectors cost more: they run once the cloud is chosen (below, or on
        # a failover), unless the policy refuses whatever a detector finds.
        rejecting = policy.privacy.on_sensitive == "reject"
        finding = active.scanner.sensitive(texts, entities=rejecting)
        namespaces = policy.privacy.sensitive_namespaces
        facts = RequestFacts(
            client_sensitive=request.routing.sensitive,
            privacy_detector=finding.detector if finding else None,
            client_namespace=(
                client_namespace(namespaces, request.routing.client_address, self.pods)
                if self.pods is not None
                else None
            ),
        )
        if not confined(policy, facts):
            user_texts = [m.content for m in request.messages if m.role == "user"] or texts
            facts = dataclasses.replace(facts, complexity=self.scorer.score(user_texts[-1]))
        best = least_loaded([backend.load() for backend in self.backends.local.values()])
        cloud = self.backends.cloud
        fleet = FleetFacts(
            local_available=best is not None,
            overflowing=self.gate.update(policy.capacity, best),
            cloud_available=cloud is not None and cloud.ready,
            budget_allows=self.budget.would_allow(
                prompt_token_bound(texts), request.sampling.max_tokens
            ),
        )
        decision = decide(policy, active.threshold, facts, fleet)
        outbound = None
        if decision.target is Target.CLOUD:
            screened, outbound = self._cloud_prompt(request, active, facts)
            if screened != facts:
                facts = screened
                decision = decide(policy, active.threshold, facts, fleet)
        self.metrics.decision_seconds.observe(time.perf_counter() - started)
        return Routing(decision, facts, outbound if decision.target is Target.CLOUD else None)

    def _cloud_prompt(
        self, request: GenerationRequest, active: ActivePolicy, facts: RequestFacts
    ) -> tuple[RequestFacts, CloudPrompt | None]:
        """The privacy pass the cloud path needs, in full: `facts` with what it found, and
        the prompt the cloud may be sent (None: privacy confines the request).

        Under `redact` every detector runs and each value found is replaced; a redacted
        prompt that still trips a detector is not redactable. Under `local` the entity
        detectors run now (route() ran the pattern ones); under `reject` route() ran all.
        """
        policy, scanner = active.policy, active.scanner
        texts = [message.content for message in request.messages]
        values: Mapping[str, str] = {}
        if policy.privacy.on_sensitive == "redact":
            spans = [scanner.spans(text) for text in texts]
            first = next((span.kind for found in spans for span in found), None)
            if first is not None:
                redaction = redact(texts, spans)
                residue = scanner.sensitive(redaction.texts)
                if residue is not None:
                    log.warning(
                        "request %s: its redacted prompt still trips %s; it is not sent out",
                        request.request_id,
                        residue.redacted(),
                    )
                facts = dataclasses.replace(
                    facts,
                    privacy_detector=facts.privacy_detector or first,
                    redactable=residue is None,
                )
                texts, values = list(redaction.texts), redaction.values
        elif policy.privacy.on_sensitive == "local":
            entity = scanner.sensitive(texts, patterns=False)
            if entity is not None:
                facts = dataclasses.replace(facts, privacy_detector=entity.detector)
        if confined(policy, facts):
            return facts, None
        messages = tuple(
            Message(message.role, text)
            for message, text in zip(request.messages, texts, strict=True)
        )
        bound = (prompt_token_bound(texts), request.sampling.max_tokens)
        return facts, CloudPrompt(messages, values, bound)

    def _failover_to_cloud(
        self, request: GenerationRequest, active: ActivePolicy, routing: Routing, route: Route
    ) -> tuple[Routing, Route]:
        """A request that failed locally, cleared for the cloud by the full privacy pass.

        Raises _TargetFailed with the refusal the privacy step gives once local has failed
        (the policy's reason; refused by policy, or as sensitive with no local replica).
        """
        facts, outbound = self._cloud_prompt(request, active, routing.facts)
        refusal = privacy_step(active.policy, facts, local_available=False)
        if refusal is not None:
            refused = Route(refusal.target.value, refusal.reason)
            error = self._refusal(refusal, request, active)
            raise _TargetFailed(error, refused, retry_elsewhere=False)
        cleared = dataclasses.replace(routing, facts=facts, outbound=outbound)
        return cleared, Route(route.target, cloud_reason(facts, route.reason))

    @staticmethod
    def _refusal(
        decision: RoutingDecision, request: GenerationRequest, active: ActivePolicy
    ) -> RouteRefused:
        """The error a refused request gets; a refusal by policy names every detector that
        matched (never what they matched)."""
        detectors: tuple[str, ...] = ()
        by_policy = active.policy.privacy.on_sensitive == "reject"
        if by_policy and decision.reason.startswith("privacy.detector."):
            found = (f.detector for m in request.messages for f in active.scanner.scan(m.content))
            detectors = tuple(dict.fromkeys(found))
        return RouteRefused(decision, active.policy, detectors)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        active = self.active
        routing = self.route(request, active)
        decision = routing.decision
        # Counted once, when the request ends: the route it was served (or refused) on.
        counted = Route(decision.target.value, decision.reason)
        self._running += 1
        try:
            if decision.target is Target.REJECT:
                raise self._refusal(decision, request, active)
            plan = [counted]
            if decision.fallback is not None:
                plan.append(
                    Route(decision.fallback.value, f"failover.{decision.target.value}_failed")
                )
            for attempt, route in enumerate(plan):
                counted = route
                try:
                    if route.target == Target.CLOUD.value and routing.outbound is None:
                        routing, route = self._failover_to_cloud(request, active, routing, route)
                        counted = route
                    # Closed here, not whenever the garbage collector gets to it:
                    # the attempt is settled before this request ends.
                    async with contextlib.aclosing(
                        self._serve_via(route, request, active, routing)
                    ) as items:
                        async for item in items:
                            yield item
                    return
                except _TargetFailed as failed:
                    counted = failed.route
                    if attempt == len(plan) - 1 or not failed.retry_elsewhere:
                        raise failed.error from None
                    log.warning("%s; trying %s", failed.error, plan[attempt + 1].target)
        finally:
            self._running -= 1
            self.metrics.count_route(counted.target, counted.reason)

    def _pick(self, target: Target) -> Backend | None:
        if target is Target.CLOUD:
            cloud = self.backends.cloud
            return cloud if cloud is not None and cloud.ready else None
        # Overflow looked at the least-loaded replica; the pick also honours weights.
        loads = [backend.load() for backend in self.backends.local.values()]
        chosen = pick_replica(loads, self.endpoints.weight)
        return self.backends.local.get(chosen.name) if chosen is not None else None

    @staticmethod
    def _forwarded(
        request: GenerationRequest, route: Route, routing: Routing, policy: str
    ) -> pb.GenerateRequest:
        """The request as this route's backend gets it: the cloud its cleared prompt,
        a local server the prompt as it came, told whether it is sensitive."""
        outbound = routing.outbound if route.target == Target.CLOUD.value else None
        messages = outbound.messages if outbound is not None else request.messages
        sensitive = routing.sensitive and outbound is None
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
            messages=[pb.ChatMessage(role=m.role, content=m.content) for m in messages],
            sampling=params,
            request_id=request.request_id,
            routing=pb.RoutingHints(
                sensitivity=_SENSITIVITY[sensitive],
                tenant=request.routing.tenant,
                policy=policy,
                redacted_values=len(outbound.values) if outbound is not None else 0,
            ),
        )

    async def _serve_via(
        self, route: Route, request: GenerationRequest, active: ActivePolicy, routing: Routing
    ) -> AsyncIterator[StreamItem]:
        """One target's attempt: claim a backend (and budget), relay its answer, settle.

        Raises _TargetFailed when the target cannot serve; however the attempt
        ends, `_settle` gives back what `_claim` took.
        """
        policy = active.policy
        failover = policy.failover
        timeout = (
            failover.cloud_timeout_seconds
            if route.target == Target.CLOUD.value
            else failover.local_timeout_seconds
        )
        asked = time.perf_counter()
        attempt = self._claim(route, routing, policy)
        try:
            forwarded = self._forwarded(request, route, routing, policy.name)
            # The cloud's placeholders back to values (none: the text passes unchanged).
            outbound = routing.outbound if route.target == Target.CLOUD.value else None
            restorer = Restorer(outbound.values if outbound is not None else {})
            # Closed with this attempt, so a caller that leaves stops the backend's call.
            async with contextlib.aclosing(self._relay(attempt, forwarded, timeout)) as deltas:
                async for delta in deltas:
                    if not attempt.started:
                        attempt.started = True
                        self._routes[request.request_id] = route
                        self.metrics.observe_ttft(route.target, time.perf_counter() - asked)
                    text = restorer.feed(delta.text)
                    if text:
                        yield TextDelta(text)
            # Settled before the caller sees the end: a client holding its answer
            # never finds the breaker or the budget lagging behind.
            self._settle(attempt)
            assert attempt.final is not None  # _relay returns only after the final message
            tail = restorer.flush()
            if tail:
                yield TextDelta(tail)
            yield _completion(attempt.final, route)
        finally:
            self._routes.pop(request.request_id, None)
            self._settle(attempt)

    def _claim(self, route: Route, routing: Routing, policy: RoutingPolicy) -> _Attempt:
        """Pick a backend, claim its breaker and, for the cloud, the budget; never awaits."""
        target = Target(route.target)
        backend = self._pick(target)
        if backend is None or not backend.breaker.acquire():
            error = EdgefleetError(f"no {target.value} backend is available now")
            error.code = grpc.StatusCode.UNAVAILABLE
            error.trailers = route_metadata(route)
            raise _TargetFailed(error, route, retry_elsewhere=True)
        reservation: Reservation | None = None
        if target is Target.CLOUD:
            # Only the full privacy pass clears a request for the cloud; should that ever
            # be skipped, stop here rather than forward it (the egress checks once more).
            if routing.outbound is None:
                backend.breaker.release()
                raise AssertionError("a request reached the cloud path without its privacy pass")
            reservation = self.budget.reserve(*routing.outbound.bound)
            if reservation is None:
                backend.breaker.release()
                refusal = RoutingDecision(Target.REJECT, "budget.exceeded")
                refused = Route(Target.REJECT.value, refusal.reason)
                raise _TargetFailed(RouteRefused(refusal, policy), refused, retry_elsewhere=False)
        backend.in_flight += 1
        return _Attempt(route, backend, reservation)

    async def _relay(
        self, attempt: _Attempt, forwarded: pb.GenerateRequest, timeout_s: float
    ) -> AsyncIterator[TextDelta]:
        """The backend's text; returns once its stream ended after the final message.

        Marks how the attempt ended (ABANDONED stays when the caller stops
        reading) and raises _TargetFailed on any failure.
        """
        backend, route = attempt.backend, attempt.route
        call = backend.generate_stream(forwarded, timeout_s)
        try:
            async for message in call:
                # gRPC hands over None for a message it could not parse.
                if not isinstance(message, pb.GenerateStreamResponse) or attempt.final is not None:
                    raise self._backend_failed(attempt, "sent a message out of protocol")
                if message.is_final:
                    attempt.final = message
                elif message.delta:
                    yield TextDelta(message.delta)
        except grpc.aio.AioRpcError as error:
            code = error.code()
            attempt.ending = (
                Ending.BACKEND_FAILED if code in _BACKEND_FAILURES else Ending.TURNED_DOWN
            )
            raise _TargetFailed(
                BackendError.of_call(error, route, backend.address),
                route,
                retry_elsewhere=not attempt.started and code in _RETRY_ELSEWHERE,
            ) from error
        finally:
            # Stops the backend's work when the caller left; no-op on a finished call.
            call.cancel()
        if attempt.final is None:
            raise self._backend_failed(attempt, "ended its stream without the final message")
        attempt.ending = Ending.ANSWERED

    @staticmethod
    def _backend_failed(attempt: _Attempt, what: str) -> _TargetFailed:
        attempt.ending = Ending.BACKEND_FAILED
        error = BackendError(
            grpc.StatusCode.UNAVAILABLE, what, attempt.route, attempt.backend.address
        )
        return _TargetFailed(error, attempt.route, retry_elsewhere=not attempt.started)

    def _settle(self, attempt: _Attempt) -> None:
        """Give back what `_claim` took, as the attempt's ending says; once, never awaits.

        The one place that moves a backend's breaker, its in-flight count and
        the cloud budget for a request.
        """
        if attempt.settled:
            return
        attempt.settled = True
        backend = attempt.backend
        backend.in_flight -= 1
        if attempt.ending is Ending.ANSWERED:
            backend.breaker.record_success()
        elif attempt.ending is Ending.BACKEND_FAILED:
            backend.breaker.record_failure()
        else:
            backend.breaker.release()
        if attempt.ending is Ending.ANSWERED and attempt.final is not None:
            # Priced as the cloud would have charged it, whoever answered: what routing saved.
            usage = _usage(attempt.final)
            would_cost = self.budget.price(usage.prompt_tokens, usage.completion_tokens)
            self.metrics.count_answer(attempt.route.target, usage, would_cost)
        if attempt.reservation is None:
            return
        reported = _usage(attempt.final) if attempt.final is not None else None
        charged = charged_usage(attempt.ending, attempt.started, attempt.reservation, reported)
        if charged is None:
            self.budget.release(attempt.reservation)
            return
        cost = self.budget.settle(
            attempt.reservation, charged.prompt_tokens, charged.completion_tokens
        )
        self.metrics.count_cloud_spend(charged, cost)


def _usage(final: pb.GenerateStreamResponse) -> Usage:
    # Never below zero: a backend's nonsense must not give budget back.
    return Usage(max(0, final.usage.prompt_tokens), max(0, final.usage.completion_tokens))


def _completion(final: pb.GenerateStreamResponse, route: Route) -> Completion:
    served = final.served_by
    return Completion(
        finish_reason=_FINISH.get(final.finish_reason, FinishReason.STOP),
        usage=_usage(final),
        served_by=ServedBy(served.backend, served.engine, served.model, served.instance),
        route=route,
    )
