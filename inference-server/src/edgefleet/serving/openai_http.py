"""OpenAI-compatible HTTP front end: /v1/chat/completions (plain and SSE) and /v1/models.

It goes through the same model service as gRPC (validation, admission,
metrics), so the `openai` SDK gets the same answers and the same refusals,
translated to HTTP: 400 bad input, 404 unknown model, 429 at capacity (with
Retry-After), 503 unavailable. Where a router answers, the route and its
reason come back as `x-edgefleet-route` / `x-edgefleet-route-reason` headers
and in an `edgefleet` field of the body (the final chunk when streaming).

Routing hints: header `x-edgefleet-sensitivity: sensitive|public`, or the body
field `edgefleet: {"sensitivity": ..., "tenant": ...}` (the SDK's extra_body);
`user` is used as the tenant when no tenant is given.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from aiohttp import web

from edgefleet.serving.errors import EdgefleetError, InvalidArgument, grpc_status
from edgefleet.serving.grpc_inference import ROUTE_REASON_KEY, ROUTE_TARGET_KEY
from edgefleet.serving.service import Finished, ModelService
from edgefleet.serving.types import GenerationRequest, Route, TextDelta, canonical_ip
from edgefleet.serving.validation import generation_request, set_sampling_number
from edgefleet.v1 import inference_pb2 as pb

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
}
_SENSITIVITY = {
    "sensitive": pb.SENSITIVITY_SENSITIVE,
    "public": pb.SENSITIVITY_PUBLIC,
    "": pb.SENSITIVITY_UNSPECIFIED,
}
# gRPC field paths in validation messages, as the OpenAI parameter names.
_PARAM_NAMES = {
    "sampling.max_tokens": "max_tokens",
    "sampling.temperature": "temperature",
    "sampling.top_p": "top_p",
    "sampling.stop": "stop",
}
_KNOWN_FIELDS = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
    "seed", "stop", "stream", "stream_options", "n", "user", "edgefleet",
    # Accepted and ignored, as many OpenAI-compatible servers do.
    "frequency_penalty", "presence_penalty", "logit_bias", "response_format",
}  # fmt: skip


def _error_body(code: grpc.StatusCode, message: str, param: str | None) -> dict[str, Any]:
    _, kind = _HTTP_STATUS.get(code, (500, "server_error"))
    return {"error": {"message": message, "type": kind, "param": param, "code": code.name}}


def error_response(error: EdgefleetError) -> web.Response:
    code, message, trailers = grpc_status(error)
    status, _ = _HTTP_STATUS.get(code, (500, "server_error"))
    param = (
        _PARAM_NAMES.get(error.field, error.field) if isinstance(error, InvalidArgument) else None
    )
    headers = {key: value for key, value in trailers if key.startswith("x-edgefleet")}
    retry_ms = dict(trailers).get("retry-after-ms")
    if retry_ms:
        headers["Retry-After"] = str(max(1, round(int(retry_ms) / 1000)))
    return web.json_response(_error_body(code, message, param), status=status, headers=headers)


def _unicode(text: str, field: str) -> str:
    """`text` when it is valid Unicode; JSON's escapes can spell lone surrogates, which
    no UTF-8 encoder (nor protobuf) accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgument(
            field, f"is not valid Unicode text (a lone surrogate at position {exc.start})"
        ) from exc
    return text


def _text_of(content: Any, index: int) -> str:
    field = f"messages[{index}].content"
    if isinstance(content, str):
        return _unicode(content, field)
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise InvalidArgument(field, "only text parts are supported")
            parts.append(str(part.get("text", "")))
        return _unicode("".join(parts), field)
    raise InvalidArgument(field, "must be a string or a list of text parts")


def chat_request(body: Any, headers: dict[str, str]) -> pb.GenerateRequest:
    """The gRPC request an OpenAI chat-completions body stands for."""
    if not isinstance(body, dict):
        raise InvalidArgument("body", "must be a JSON object")
    unknown = sorted(set(body) - _KNOWN_FIELDS)
    if unknown:
        raise InvalidArgument(unknown[0], "unknown parameter")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidArgument("messages", "must be a non-empty list")
    model = body.get("model") or ""
    if not isinstance(model, str):
        raise InvalidArgument("model", "must be a string")
    request = pb.GenerateRequest(model=_unicode(model, "model"))
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidArgument(f"messages[{index}]", "must be an object with role and content")
        request.messages.append(
            pb.ChatMessage(
                role=_unicode(str(message.get("role", "")), f"messages[{index}].role"),
                content=_text_of(message.get("content", ""), index),
            )
        )
    if body.get("n", 1) != 1:
        raise InvalidArgument("n", "only n = 1 is supported")
    sampling = request.sampling
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    for name, value in (
        ("max_tokens", max_tokens),
        ("temperature", body.get("temperature")),
        ("top_p", body.get("top_p")),
        ("seed", body.get("seed")),
    ):
        if value is not None:
            set_sampling_number(sampling, name, value, name)
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise InvalidArgument("stop", "must be a string or a list of strings")
        sampling.stop.extend(_unicode(s, "stop") for s in stops)
    hints = body.get("edgefleet") or {}
    if not isinstance(hints, dict):
        raise InvalidArgument("edgefleet", "must be an object with sensitivity and tenant")
    sensitivity = str(hints.get("sensitivity") or headers.get("x-edgefleet-sensitivity", ""))
    if sensitivity.lower() not in _SENSITIVITY:
        raise InvalidArgument("edgefleet.sensitivity", "must be sensitive or public")
    request.routing.sensitivity = _SENSITIVITY[sensitivity.lower()]
    tenant = hints.get("tenant") or body.get("user") or ""
    field = "edgefleet.tenant" if hints.get("tenant") else "user"
    request.routing.tenant = _unicode(str(tenant), field)
    return request


def stream_options(body: dict[str, Any]) -> tuple[bool, bool]:
    """(stream, include_usage) as the body asks."""
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise InvalidArgument("stream", "must be true or false")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise InvalidArgument("stream_options", "must be an object")
    return stream, bool(options.get("include_usage"))


class OpenAIHttpApi:
    def __init__(self, service: ModelService) -> None:
        self.service = service

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 << 20)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/health", self.health)
        return app

    async def health(self, request: web.Request) -> web.Response:
        ready = self.service.engine.ready() and not self.service.admission.draining
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def models(self, request: web.Request) -> web.Response:
        names = [self.service.model_name, *self.service.model_aliases]
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "edgefleet"} for n in names]
        return web.json_response({"object": "list", "data": data})

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            try:
                # JSON is UTF-8 (RFC 8259): the bytes are decoded here, whatever
                # charset the Content-Type claims.
                body = json.loads(await request.read())
            except (ValueError, RecursionError) as exc:
                raise InvalidArgument("body", f"not valid JSON: {exc}") from exc
            grpc_request = chat_request(body, {k.lower(): v for k, v in request.headers.items()})
            stream, include_usage = stream_options(body)
            generation = generation_request(
                grpc_request,
                self.service.config,
                self.service.model_name,
                self.service.model_aliases,
            ).with_client_address(canonical_ip(request.remote))
            items = self.service.stream(generation)
        except EdgefleetError as error:
            self.service.metrics.outcome(error.code.name.lower())
            return error_response(error)
        try:
            try:
                first = await anext(items)
            except EdgefleetError as error:
                self.service.metrics.outcome(error.code.name.lower())
                return error_response(error)
            if stream:
                return await self._stream(request, generation, first, items, include_usage)
            return await self._whole(generation, first, items)
        finally:
            # A client that leaves mid-answer cancels this handler; closing the
            # stream stops the generation (or the backend call) at once.
            await items.aclose()

    def _headers(self, generation: GenerationRequest, route: Route | None) -> dict[str, str]:
        route = route or self.service.engine.route_of(generation.request_id)
        if route is None:
            return {}
        return {ROUTE_TARGET_KEY: route.target, ROUTE_REASON_KEY: route.reason}

    @staticmethod
    def _extension(done: Finished) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if done.route is not None:
            extra["route"] = {"target": done.route.target, "reason": done.route.reason}
        if done.served_by is not None:
            extra["served_by"] = {
                "backend": done.served_by.backend,
                "engine": done.served_by.engine,
                "model": done.served_by.model,
            }
        return extra

    @staticmethod
    def _usage(done: Finished) -> dict[str, int]:
        return {
            "prompt_tokens": done.usage.prompt_tokens,
            "completion_tokens": done.usage.completion_tokens,
            "total_tokens": done.usage.total_tokens,
        }

    async def _whole(
        self,
        generation: GenerationRequest,
        first: TextDelta | Finished,
        items: AsyncIterator[TextDelta | Finished],
    ) -> web.Response:
        parts: list[str] = []
        item: TextDelta | Finished = first
        try:
            while isinstance(item, TextDelta):
                parts.append(item.text)
                item = await anext(items)
        except EdgefleetError as error:
            self.service.metrics.outcome(error.code.name.lower())
            return error_response(error)
        self.service.metrics.outcome("ok")
        body = {
            "id": f"chatcmpl-{generation.request_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": generation.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(parts)},
                    "finish_reason": item.finish_reason.value,
                }
            ],
            "usage": self._usage(item),
            "edgefleet": self._extension(item),
        }
        return web.json_response(body, headers=self._headers(generation, item.route))

    async def _stream(
        self,
        request: web.Request,
        generation: GenerationRequest,
        first: TextDelta | Finished,
        items: AsyncIterator[TextDelta | Finished],
        include_usage: bool,
    ) -> web.StreamResponse:
        route = first.route if isinstance(first, Finished) else None
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                **self._headers(generation, route),
            }
        )
        await response.prepare(request)
        created = int(time.time())

        async def send(delta: dict[str, Any], finish: str | None, **extra: Any) -> None:
            chunk = {
                "id": f"chatcmpl-{generation.request_id}",
                "object": "chat.completion.chunk",
                "created": created,
                "model": generation.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        await send({"role": "assistant", "content": ""}, None)
        item: TextDelta | Finished = first
        try:
            while isinstance(item, TextDelta):
                await send({"content": item.text}, None)
                item = await anext(items)
        except EdgefleetError as error:
            # Headers are gone: the error travels as a last event, as OpenAI's servers do.
            self.service.metrics.outcome(error.code.name.lower())
            code, message, _ = grpc_status(error)
            await response.write(
                f"data: {json.dumps(_error_body(code, message, None))}\n\n".encode()
            )
            await response.write_eof()
            return response
        self.service.metrics.outcome("ok")
        await send({}, item.finish_reason.value, edgefleet=self._extension(item))
        if include_usage:
            usage_chunk = {
                "id": f"chatcmpl-{generation.request_id}",
                "object": "chat.completion.chunk",
                "created": created,
                "model": generation.model,
                "choices": [],
                "usage": self._usage(item),
            }
            await response.write(f"data: {json.dumps(usage_chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


async def start_http(service: ModelService, listen: str) -> web.AppRunner:
    """Serve the API on host:port in the running event loop; returns the runner to stop it."""
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(OpenAIHttpApi(service).app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host or "0.0.0.0", int(port), reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise OSError(f"cannot listen on {listen} (HTTP): {exc.strerror}") from exc
    return runner
