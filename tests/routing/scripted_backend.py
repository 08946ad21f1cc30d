"""A real edgefleet.v1.Inference server on loopback that answers as a test scripts it.

It stands in for a model server or the egress where a test needs a backend to
misbehave on cue: end a stream without its final message, hang until the
caller's deadline, abort mid-stream, turn a request down, or send bytes that
are no message at all. It runs in the test's own event loop, so the router
under test talks to it over a real gRPC connection.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Callable

import grpc

from edgefleet.v1 import inference_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["Inference"].full_name
ANSWER = ("Hello", " there")
# Small enough that a placeholder ("[PERSON_1]") arrives split over several pieces.
ECHO_PIECE = 3
# Field 2 (delta, a string) holding bytes that are not UTF-8: no parser accepts it.
NOT_A_MESSAGE = b"\x12\x02\xff\xfe"


class Behaviour(enum.Enum):
    ANSWER = "answer"  # the deltas of ANSWER, then the final message
    END_EARLY = "end_early"  # the stream ends at once, no final message
    END_AFTER_TEXT = "end_after_text"  # one delta, then the end without a final message
    HANG = "hang"  # nothing at all until the caller gives up
    HANG_AFTER_TEXT = "hang_after_text"  # one delta, then nothing
    ABORT = "abort"  # UNAVAILABLE before any text
    ABORT_AFTER_TEXT = "abort_after_text"  # one delta, then UNAVAILABLE: a reset mid-stream
    GARBAGE = "garbage"  # bytes that do not parse as a GenerateStreamResponse
    TURN_DOWN = "turn_down"  # RESOURCE_EXHAUSTED before any text: healthy, but full
    ECHO = "echo"  # the last message's text in pieces of ECHO_PIECE characters, then the final


class ScriptedBackend:
    """Answers GetStats as a ready, idle server and GenerateStream as `behaviour` says."""

    def __init__(self, kind: str = "local") -> None:
        self.kind = kind
        self.behaviour = Behaviour.ANSWER
        # Requests that reached GenerateStream, and how many of those calls are over.
        self.requests: list[pb.GenerateRequest] = []
        self.ended = 0
        # Calls the caller cancelled (or let run past their deadline) while they ran here.
        self.cancelled = 0
        self._changed = asyncio.Condition()
        self._server = grpc.aio.server()
        handlers = {
            "GetStats": grpc.unary_unary_rpc_method_handler(
                self._stats,
                request_deserializer=pb.GetStatsRequest.FromString,
                response_serializer=pb.GetStatsResponse.SerializeToString,
            ),
            # Serialised here, message by message, so GARBAGE can send raw bytes.
            "GenerateStream": grpc.unary_stream_rpc_method_handler(
                self._generate_stream,
                request_deserializer=pb.GenerateRequest.FromString,
                response_serializer=lambda raw: raw,
            ),
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        self.address = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"

    async def start(self) -> None:
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop(grace=None)

    async def wait_until(self, condition: Callable[[], bool], timeout_s: float = 10) -> None:
        """Until `condition` holds; it is checked whenever a call arrives or ends."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(condition)

    async def _note(self, change: Callable[[], None]) -> None:
        async with self._changed:
            change()
            self._changed.notify_all()

    async def _stats(
        self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetStatsResponse:
        return pb.GetStatsResponse(ready=True, max_concurrency=4, max_queue=4)

    async def _generate_stream(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        await self._note(lambda: self.requests.append(request))
        try:
            async for message in self._script(self.behaviour, request, context):
                yield message
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            await asyncio.shield(self._note(self._count_end))

    def _count_end(self) -> None:
        self.ended += 1

    async def _script(
        self, behaviour: Behaviour, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        if behaviour is Behaviour.GARBAGE:
            yield NOT_A_MESSAGE
            return
        if behaviour is Behaviour.ABORT:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "scripted: connection reset")
        if behaviour is Behaviour.TURN_DOWN:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "scripted: at capacity")
        if behaviour in (Behaviour.END_EARLY, Behaviour.HANG):
            if behaviour is Behaviour.HANG:
                await asyncio.Event().wait()
            return
        if behaviour is Behaviour.ECHO:
            echoed = request.messages[-1].content
            for start in range(0, len(echoed), ECHO_PIECE):
                piece = echoed[start : start + ECHO_PIECE]
                yield pb.GenerateStreamResponse(delta=piece).SerializeToString()
            yield final_message(self.kind).SerializeToString()
            return
        texts = ANSWER if behaviour is Behaviour.ANSWER else ANSWER[:1]
        for text in texts:
            yield pb.GenerateStreamResponse(delta=text).SerializeToString()
        if behaviour is Behaviour.HANG_AFTER_TEXT:
            await asyncio.Event().wait()
        if behaviour is Behaviour.ABORT_AFTER_TEXT:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "scripted: reset mid-stream")
        if behaviour is Behaviour.ANSWER:
            yield final_message(self.kind).SerializeToString()


def final_message(kind: str) -> pb.GenerateStreamResponse:
    return pb.GenerateStreamResponse(
        is_final=True,
        finish_reason=pb.FINISH_REASON_STOP,
        usage=pb.Usage(prompt_tokens=7, completion_tokens=2, total_tokens=9),
        served_by=pb.ServedBy(backend=kind, engine="scripted", model="m", instance=kind),
    )
