"""Domain errors and their one mapping onto gRPC status codes.

Engines, validation and admission raise these; `grpc_status` is the only place
that decides which status code a caller sees, like KServe's exception
interceptor.
"""

from __future__ import annotations

import grpc


class EdgefleetError(Exception):
    """Base of every error a caller may see; the message is shown verbatim."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    #: Extra trailing metadata for the caller (e.g. the route a router took).
    trailers: tuple[tuple[str, str], ...] = ()


class InvalidArgument(EdgefleetError):
    """A request field is wrong; the message starts with the field's name."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class ModelNotFound(EdgefleetError):
    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, name: str, served: list[str]) -> None:
        super().__init__(f"model {name!r} is not served here; served models: {', '.join(served)}")


class Overloaded(EdgefleetError):
    """Admission refused: every slot and queue place is taken."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, running: int, waiting: int, retry_after_ms: int) -> None:
        super().__init__(
            f"server is at capacity ({running} generating, {waiting} queued); "
            f"retry after {retry_after_ms} ms or send elsewhere"
        )
        self.retry_after_ms = retry_after_ms


class Draining(EdgefleetError):
    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self) -> None:
        super().__init__("server is shutting down and accepts no new requests")


class NotReady(EdgefleetError):
    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self) -> None:
        super().__init__("the model is still loading; retry shortly")


class ModelFileError(EdgefleetError):
    """A model file is missing or fails its checksum: the server must not start."""

    code = grpc.StatusCode.FAILED_PRECONDITION


def grpc_status(error: EdgefleetError) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """Status code, details and trailing metadata for a domain error."""
    trailers: tuple[tuple[str, str], ...] = ()
    if isinstance(error, Overloaded):
        # grpc-retry-pushback-ms is gRPC's own retry hint; retry-after-ms is
        # for people and for clients without retry support.
        hint = str(error.retry_after_ms)
        trailers = (("grpc-retry-pushback-ms", hint), ("retry-after-ms", hint))
    return error.code, str(error), trailers + error.trailers
