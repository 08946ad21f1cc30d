"""The cloud engine: an OpenAI-compatible chat-completions API behind the engine interface.

Served by the same servicers as a model, so the router talks to the egress
exactly as to a local model. Before anything leaves, the privacy scan runs
again (defence in depth: a router bug must not leak); a prompt the router
redacted passes it, its placeholders hold nothing a detector finds. Retryable failures
(connection, timeout, 429, 5xx) are retried with exponential backoff, but
only before the first token: a half-sent answer is never silently restarted.
Every call ends in one audit line.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import openai
from openai import AsyncOpenAI

from edgefleet.egress.audit import AuditLog, AuditRecord, prompt_digest
from edgefleet.routing.budget import prompt_token_bound
from edgefleet.routing.privacy import PrivacyScanner
from edgefleet.serving.engines.base import Engine, StreamItem
from edgefleet.serving.errors import EdgefleetError
from edgefleet.serving.types import (
    Completion,
    EngineStats,
    FinishReason,
    GenerationRequest,
    TextDelta,
    Usage,
)

log = logging.getLogger("edgefleet.egress")

_RETRYABLE = (
    openai.APIConnectionError,  # includes APITimeoutError
    openai.RateLimitError,
    openai.InternalServerError,
)


class CloudError(EdgefleetError):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class SensitiveRefused(EdgefleetError):
    """The egress's own privacy check matched: the request is refused, nothing sent."""

    code = grpc.StatusCode.PERMISSION_DENIED

    def __init__(self, why: str) -> None:
        super().__init__(f"sensitive request refused by the egress ({why}); nothing was sent")


def cloud_error(error: openai.OpenAIError) -> CloudError:
    """The gRPC status a caller sees for a failed cloud call."""
    if isinstance(error, openai.APITimeoutError):
        return CloudError(grpc.StatusCode.DEADLINE_EXCEEDED, "the cloud LLM timed out")
    if isinstance(error, openai.APIConnectionError):
        return CloudError(grpc.StatusCode.UNAVAILABLE, f"cannot reach the cloud LLM: {error}")
    if isinstance(error, openai.RateLimitError):
        return CloudError(grpc.StatusCode.RESOURCE_EXHAUSTED, "the cloud LLM is rate limiting")
    if isinstance(error, openai.InternalServerError):
        return CloudError(grpc.StatusCode.UNAVAILABLE, f"the cloud LLM failed: {error.message}")
    if isinstance(error, openai.AuthenticationError | openai.PermissionDeniedError):
        return CloudError(
            grpc.StatusCode.FAILED_PRECONDITION,
            "the cloud API refused the egress's credentials; check the API key secret",
        )
    if isinstance(error, openai.NotFoundError):
        return CloudError(grpc.StatusCode.FAILED_PRECONDITION, f"cloud API: {error.message}")
    if isinstance(error, openai.APIStatusError):
        return CloudError(
            grpc.StatusCode.INVALID_ARGUMENT, f"the cloud LLM rejected the request: {error.message}"
        )
    return CloudError(grpc.StatusCode.UNAVAILABLE, f"cloud call failed: {error}")


@dataclass(frozen=True)
class CloudSettings:
    base_url: str
    model: str
    api_key: str
    timeout_s: float = 60.0
    max_retries: int = 2
    retry_backoff_s: float = 0.5
    price_per_1k_input_tokens: float = 0.0
    price_per_1k_output_tokens: float = 0.0
    capacity: int = 64


@dataclass
class _Call:
    """What one cloud call did, for the audit line."""

    attempts: int = 0
    usage: Usage | None = None
    usage_reported: bool = False
    outcome: str = "ok"
    started: float = 0.0
    audited: bool = False


class CloudEngine(Engine):
    name = "openai"
    backend = "cloud"

    def __init__(
        self, settings: CloudSettings, scanner: PrivacyScanner, audit: AuditLog, model_name: str
    ) -> None:
        self.settings = settings
        self.scanner = scanner
        self.audit = audit
        self.model_name = model_name
        self.context_length = 0
        self.capacity = settings.capacity
        # The SDK's own retries are off: ours retry only before the first token.
        self.client = AsyncOpenAI(
            base_url=settings.base_url,
            api_key=settings.api_key,
            timeout=settings.timeout_s,
            max_retries=0,
        )
        self._running = 0
        self._ready = False

    async def start(self) -> None:
        # The cloud may be down at start; calls then fail (and are retried) one by
        # one, which the router's breaker handles. Readiness is the egress's own.
        self._ready = True

    def ready(self) -> bool:
        return self._ready

    def stats(self) -> EngineStats:
        return EngineStats(running=self._running)

    async def close(self) -> None:
        self._ready = False
        await self.client.close()
        self.audit.close()

    def cost(self, usage: Usage) -> float:
        return (
            usage.prompt_tokens * self.settings.price_per_1k_input_tokens
            + usage.completion_tokens * self.settings.price_per_1k_output_tokens
        ) / 1000

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        call = _Call(started=time.monotonic())
        finding = self.scanner.sensitive(m.content for m in request.messages)
        self._running += 1
        try:
            if request.routing.sensitive or finding is not None:
                call.outcome = "refused_sensitive"
                why = finding.redacted() if finding else "marked sensitive by the client"
                raise SensitiveRefused(why)
            async for item in self._call(request, call):
                if isinstance(item, Completion):
                    # Audit before the caller has the answer, so the line is
                    # on disk whenever a client has seen a response.
                    self._audit(request, call)
                yield item
        except EdgefleetError as error:
            if call.outcome == "ok":
                call.outcome = error.code.name
            raise
        except (asyncio.CancelledError, GeneratorExit):
            if not call.audited:
                call.outcome = "CANCELLED"
            raise
        finally:
            self._running -= 1
            if not call.audited:
                self._audit(request, call)

    async def _call(self, request: GenerationRequest, call: _Call) -> AsyncIterator[StreamItem]:
        sampling = request.sampling
        arguments: dict[str, object] = {
            "model": self.settings.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if sampling.seed is not None:
            arguments["seed"] = sampling.seed
        if sampling.stop:
            arguments["stop"] = list(sampling.stop)
        while True:
            call.attempts += 1
            produced = 0
            try:
                stream = await self.client.chat.completions.create(**arguments)  # type: ignore[call-overload]
                finish = FinishReason.STOP
                try:
                    async for chunk in stream:
                        if chunk.usage is not None:
                            call.usage_reported = True
                            call.usage = Usage(
                                chunk.usage.prompt_tokens, chunk.usage.completion_tokens
                            )
                        for choice in chunk.choices:
                            if choice.delta and choice.delta.content:
                                produced += 1
                                yield TextDelta(choice.delta.content)
                            if choice.finish_reason == "length":
                                finish = FinishReason.LENGTH
                finally:
                    await stream.close()
            except _RETRYABLE as error:
                if produced or call.attempts > self.settings.max_retries:
                    raise cloud_error(error) from error
                delay = self.settings.retry_backoff_s * 2 ** (call.attempts - 1)
                log.warning(
                    "cloud call attempt %d failed (%s); retrying in %.2fs",
                    call.attempts,
                    type(error).__name__,
                    delay,
                )
                await asyncio.sleep(delay * (0.5 + random.random()))
                continue
            except openai.OpenAIError as error:
                raise cloud_error(error) from error
            if call.usage is None:
                # The API did not report usage: estimate (prompt bound, one token per delta).
                call.usage = Usage(
                    prompt_token_bound([m.content for m in request.messages]), produced
                )
            yield Completion(finish_reason=finish, usage=call.usage)
            return

    def _audit(self, request: GenerationRequest, call: _Call) -> None:
        call.audited = True
        seconds = time.monotonic() - call.started
        usage = call.usage or Usage(0, 0)
        cost = self.cost(usage)
        self.audit.write(
            AuditRecord(
                request_id=request.request_id,
                policy=request.routing.policy,
                tenant=request.routing.tenant,
                cloud_model=self.settings.model,
                prompt_sha256=prompt_digest(request.messages),
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cost=round(cost, 8),
                outcome=call.outcome,
                attempts=call.attempts,
                latency_ms=round(seconds * 1000, 1),
                usage_reported=call.usage_reported,
                redacted_values=request.routing.redacted_values,
            )
        )
