"""SIGTERM drains a server, and the drain it starts is held until the server has stopped.

The event loop keeps only a weak reference to a task: a drain started from
the signal handler and referenced nowhere else may be collected mid-way, and
the process then never stops. A real server (the router's, with no backends)
runs on loopback in this process and receives a real SIGTERM.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgefleet.router.engine import RouterEngine
from edgefleet.router.sources import Endpoints
from edgefleet.routing.complexity import ComplexityScorer
from edgefleet.routing.policy import RoutingPolicy
from edgefleet.serving.config import ServerConfig
from edgefleet.serving.server import InferenceServer, expose

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_sigterm_drains_the_running_request_then_stops_and_the_drain_is_held() -> None:
    async def scenario() -> None:
        engine = RouterEngine(RoutingPolicy(), Endpoints(), ComplexityScorer.load())
        config = ServerConfig(
            engine="router", listen="127.0.0.1:0", metrics_listen="", drain_grace_s=30
        )
        server = InferenceServer(engine, config)
        await server.start()
        expose(server, "", server.service.metrics.registry)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            assert (await watch.read()).status == SERVING
            # A request is running: the drain waits for it.
            async with server.service.admission.slot():
                os.kill(os.getpid(), signal.SIGTERM)
                assert (await watch.read()).status == NOT_SERVING
                watch.cancel()  # an open stream would hold the server's stop for its grace
                drain = server.drain
                assert drain is not None and not drain.done()
                gc.collect()
            await asyncio.wait_for(server.wait_stopped(), 30)
        assert drain.done() and drain.exception() is None

    asyncio.run(scenario())
