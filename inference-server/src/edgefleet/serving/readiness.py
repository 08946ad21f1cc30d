"""Waiting for an endpoint to serve, for the CLI, the demo and the tests."""

from __future__ import annotations

import socket

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


class NotServing(Exception):
    """The endpoint did not report SERVING in time; the message says why."""


def wait_until_serving(channel: grpc.Channel, timeout_s: float, service: str = "") -> None:
    """Block on the health Watch stream until `service` reports SERVING.

    Event-driven: no polling interval, returns as soon as the server says so.
    """
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        for reply in stub.Watch(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout_s, wait_for_ready=True
        ):
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
    except grpc.RpcError as error:
        raise NotServing(f"not SERVING within {timeout_s:.0f}s ({error.code().name})") from error
    raise NotServing("the health stream ended before SERVING")


def free_local_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
