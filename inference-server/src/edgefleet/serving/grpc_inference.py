"""edgefleet.v1.Inference servicer: validate, call the model service, convert."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from edgefleet.serving import grpc_errors
from edgefleet.serving.service import Finished, ModelService
from edgefleet.serving.types import FinishReason, GenerationRequest, Route, canonical_ip
from edgefleet.serving.validation import generation_request
from edgefleet.v1 import inference_pb2 as pb
from edgefleet.v1 import inference_pb2_grpc as pb_grpc

ROUTE_TARGET_KEY = "x-edgefleet-route"
ROUTE_REASON_KEY = "x-edgefleet-route-reason"


def route_metadata(route: Route) -> tuple[tuple[str, str], ...]:
    return ((ROUTE_TARGET_KEY, route.target), (ROUTE_REASON_KEY, route.reason))


def peer_ip(peer: str | None) -> str | None:
    """The caller's IP from `context.peer()`, or None when it has none.

    gRPC writes `ipv4:10.0.0.1:1234`, `ipv6:[::1]:1234` (older cores:
    `ipv6:::1:1234`), `unix:/path` or `unix-abstract:...`; URL-escaped
    characters (`%25` for a zone's `%`) may appear.
    """
    if not peer:
        return None
    scheme, _, rest = peer.partition(":")
    if scheme not in ("ipv4", "ipv6"):
        return None
    rest = rest.replace("%25", "%")
    if rest.startswith("["):
        return canonical_ip(rest[1:].partition("]")[0])
    return canonical_ip(rest.rpartition(":")[0] or rest)


_FINISH_REASONS = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED,
}


class InferenceServicer(pb_grpc.InferenceServicer):
    def __init__(self, service: ModelService, instance_name: str) -> None:
        self.service = service
        self.served_by = pb.ServedBy(
            backend=service.engine.backend,
            engine=service.engine.name,
            model=service.model_name,
            instance=instance_name,
        )

    def record_outcome(self, outcome: str) -> None:
        self.service.metrics.outcome(outcome)

    def _request(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> GenerationRequest:
        generation = generation_request(
            request, self.service.config, self.service.model_name, self.service.model_aliases
        )
        return generation.with_client_address(peer_ip(context.peer()))

    @staticmethod
    def _usage(done: Finished) -> pb.Usage:
        return pb.Usage(
            prompt_tokens=done.usage.prompt_tokens,
            completion_tokens=done.usage.completion_tokens,
            total_tokens=done.usage.total_tokens,
        )

    @staticmethod
    def _timings(done: Finished) -> pb.Timings:
        return pb.Timings(
            time_to_first_token_ms=done.time_to_first_token_s * 1000,
            total_ms=done.total_s * 1000,
            queue_ms=done.queue_s * 1000,
            decode_tokens_per_second=done.decode_tokens_per_second,
        )

    def _served_by(self, done: Finished) -> pb.ServedBy:
        if done.served_by is None:
            return self.served_by
        return pb.ServedBy(
            backend=done.served_by.backend,
            engine=done.served_by.engine,
            model=done.served_by.model,
            instance=done.served_by.instance,
        )

    @staticmethod
    def _route(done: Finished, context: grpc.aio.ServicerContext) -> pb.RouteInfo | None:
        """The route a router took, also as trailing metadata for clients that read only those."""
        if done.route is None:
            return None
        context.set_trailing_metadata(route_metadata(done.route))
        return pb.RouteInfo(target=done.route.target, reason=done.route.reason)

    @grpc_errors.unary
    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateResponse:
        generation = self._request(request, context)
        parts: list[str] = []
        async for item in self.service.stream(generation):
            if isinstance(item, Finished):
                return pb.GenerateResponse(
                    id=generation.request_id,
                    text="".join(parts),
                    finish_reason=_FINISH_REASONS[item.finish_reason],
                    usage=self._usage(item),
                    timings=self._timings(item),
                    served_by=self._served_by(item),
                    route=self._route(item, context),
                )
            parts.append(item.text)
        raise RuntimeError("the model service ended without finishing")

    @grpc_errors.server_stream
    async def GenerateStream(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        generation = self._request(request, context)
        async for item in self.service.stream(generation):
            if isinstance(item, Finished):
                yield pb.GenerateStreamResponse(
                    id=generation.request_id,
                    is_final=True,
                    finish_reason=_FINISH_REASONS[item.finish_reason],
                    usage=self._usage(item),
                    timings=self._timings(item),
                    served_by=self._served_by(item),
                    route=self._route(item, context),
                )
            else:
                yield pb.GenerateStreamResponse(id=generation.request_id, delta=item.text)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        engine = self.service.engine
        return pb.ListModelsResponse(
            models=[
                pb.ModelInfo(
                    name=engine.model_name,
                    engine=engine.name,
                    context_length=engine.context_length,
                    ready=engine.ready(),
                    instances=engine.instances,
                    max_concurrent=engine.capacity,
                    sha256=engine.model_sha256 or "",
                )
            ]
        )

    async def GetStats(
        self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetStatsResponse:
        admission = self.service.admission
        return pb.GetStatsResponse(
            requests_running=admission.running,
            requests_waiting=admission.waiting,
            max_concurrency=admission.max_concurrency,
            max_queue=admission.max_queue,
            kv_cache_usage=self.service.engine.stats().kv_cache_usage,
            recent_ttft_ms=self.service.recent_ttft_s * 1000,
            ready=self.service.engine.ready() and not admission.draining,
            draining=admission.draining,
        )
