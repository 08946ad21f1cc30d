"""Connections from the router to the servers it routes to.

Every backend speaks edgefleet.v1.Inference: local model servers and the cloud
egress alike. A background poll of GetStats keeps each backend's load and
readiness fresh; the router also counts its own requests in flight per
backend, which is exact and instant where the poll lags during a burst.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc

from edgefleet.routing.breaker import CircuitBreaker
from edgefleet.routing.overflow import ReplicaLoad
from edgefleet.v1 import inference_pb2 as pb
from edgefleet.v1 import inference_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

POLL_TIMEOUT_S = 2.0
# A busy server may miss a poll's deadline; only this many misses in a row (or
# a refused connection) take it out of rotation.
MISSED_POLLS_TOLERATED = 2
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 16 << 20),
    # Reconnect quickly after a backend restarts; the breaker guards the rest.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


class Backend:
    def __init__(self, address: str, kind: str, breaker: CircuitBreaker) -> None:
        self.address = address
        self.kind = kind
        self.breaker = breaker
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = pb_grpc.InferenceStub(self.channel)
        self.stats: pb.GetStatsResponse | None = None
        self.missed_polls = 0
        self.in_flight = 0
        self.retired = False

    @property
    def ready(self) -> bool:
        """Answered its last poll, says it is ready and not draining, breaker lets calls in."""
        return (
            not self.retired
            and self.stats is not None
            and self.stats.ready
            and not self.stats.draining
            and self.breaker.available()
        )

    def load(self) -> ReplicaLoad:
        stats = self.stats or pb.GetStatsResponse()
        return ReplicaLoad(
            name=self.address,
            ready=self.ready,
            running=stats.requests_running,
            waiting=stats.requests_waiting,
            max_concurrency=max(1, stats.max_concurrency),
            recent_ttft_ms=stats.recent_ttft_ms,
            in_flight=self.in_flight,
        )

    async def poll(self) -> None:
        try:
            self.stats = await self.stub.GetStats(pb.GetStatsRequest(), timeout=POLL_TIMEOUT_S)
            self.missed_polls = 0
        except grpc.aio.AioRpcError as exc:
            self.missed_polls += 1
            slow = exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            if self.stats is not None and (not slow or self.missed_polls > MISSED_POLLS_TOLERATED):
                code = exc.code().name
                log.warning("%s backend %s stopped answering: %s", self.kind, self.address, code)
                self.stats = None

    def generate_stream(
        self, request: pb.GenerateRequest, timeout_s: float
    ) -> grpc.aio.UnaryStreamCall:
        return self.stub.GenerateStream(request, timeout=timeout_s)

    async def close(self) -> None:
        await self.channel.close(grace=None)


class BackendSet:
    """The current backends by address; reconciled when the endpoint list changes."""

    def __init__(self) -> None:
        self.local: dict[str, Backend] = {}
        self.cloud: Backend | None = None

    def all(self) -> list[Backend]:
        return [*self.local.values(), *([self.cloud] if self.cloud else [])]

    async def reconcile(
        self,
        local: tuple[str, ...],
        cloud: str | None,
        make_breaker: Callable[[], CircuitBreaker],
    ) -> list[Backend]:
        """Add new addresses, retire gone ones; returns the retired (closed once idle)."""
        retired: list[Backend] = []
        for address in list(self.local):
            if address not in local:
                retired.append(self.local.pop(address))
        for address in local:
            if address not in self.local:
                self.local[address] = Backend(address, "local", make_breaker())
        if self.cloud is not None and self.cloud.address != cloud:
            retired.append(self.cloud)
            self.cloud = None
        if cloud and self.cloud is None:
            self.cloud = Backend(cloud, "cloud", make_breaker())
        for backend in retired:
            backend.retired = True
        if retired or local or cloud:
            await asyncio.gather(*(b.poll() for b in self.all()))
        return retired
