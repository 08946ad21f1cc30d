"""Where domain errors become gRPC statuses, for every servicer method.

Servicers raise EdgefleetError; these wrappers abort the call with the status
from `errors.grpc_status`, count the outcome, and let cancellation through.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from edgefleet.serving.errors import EdgefleetError, grpc_status

log = logging.getLogger(__name__)
Response = TypeVar("Response")
OutcomeSink = Callable[[str], None]


def _outcome_of(error: EdgefleetError) -> str:
    return error.code.name.lower()


async def _abort(context: grpc.aio.ServicerContext, error: EdgefleetError) -> None:
    code, details, trailers = grpc_status(error)
    if trailers:
        context.set_trailing_metadata(trailers)
    await context.abort(code, details)


@contextlib.asynccontextmanager
async def _mapped_errors(
    record: OutcomeSink, context: grpc.aio.ServicerContext, method: str
) -> AsyncIterator[None]:
    try:
        yield
    except EdgefleetError as error:
        record(_outcome_of(error))
        await _abort(context, error)
    except asyncio.CancelledError:
        record("cancelled")
        raise
    except Exception:
        record("error")
        log.exception("unexpected error in %s", method)
        raise
    else:
        record("ok")


def unary(
    method: Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Response]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Response]]:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Response:
        async with _mapped_errors(self.record_outcome, context, method.__name__):
            return await method(self, request, context)
        raise AssertionError("unreachable: an error either aborts the call or propagates")

    return wrapper


def server_stream(
    method: Callable[[Any, Any, grpc.aio.ServicerContext], AsyncIterator[Response]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext], AsyncIterator[Response]]:
    @functools.wraps(method)
    async def wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Response]:
        async with _mapped_errors(self.record_outcome, context, method.__name__):
            async for response in method(self, request, context):
                yield response

    return wrapper
