"""The model service both gRPC front ends share: admission, engine, metrics.

A request is admitted (or refused at once), streamed through the engine and
measured from its arrival, so time-to-first-token includes queueing just as a
client experiences it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from edgefleet.serving.admission import AdmissionController
from edgefleet.serving.config import ServerConfig
from edgefleet.serving.engines.base import Engine
from edgefleet.serving.errors import NotReady
from edgefleet.serving.metrics import ServerMetrics
from edgefleet.serving.model_files import DEFAULT_MODEL_NAME
from edgefleet.serving.types import (
    Completion,
    FinishReason,
    GenerationRequest,
    Route,
    ServedBy,
    TextDelta,
    Usage,
)


@dataclass(frozen=True)
class Finished:
    """The last item of a served stream: how it ended and how long it took."""

    finish_reason: FinishReason
    usage: Usage
    time_to_first_token_s: float
    total_s: float
    queue_s: float
    # From engines that forward elsewhere (the router); None means this server.
    served_by: ServedBy | None = None
    route: Route | None = None

    @property
    def decode_tokens_per_second(self) -> float:
        decode_s = self.total_s - self.time_to_first_token_s
        tokens_after_first = self.usage.completion_tokens - 1
        return tokens_after_first / decode_s if decode_s > 0 and tokens_after_first > 0 else 0.0


class ModelService:
    def __init__(self, engine: Engine, config: ServerConfig) -> None:
        self.engine = engine
        self.config = config
        self.admission = AdmissionController(config.max_concurrency, config.max_queue)
        self.metrics = ServerMetrics(engine.model_name)
        self.metrics.watch_load(
            running=lambda: self.admission.running,
            waiting=lambda: self.admission.waiting,
            kv_cache=lambda: self.engine.stats().kv_cache_usage,
        )
        # Moving average for GetStats, seeded on the first request.
        self.recent_ttft_s = 0.0

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    @property
    def model_aliases(self) -> tuple[str, ...]:
        # The packaged model answers to "default" as well, as on the command line.
        if self.engine.model_name == DEFAULT_MODEL_NAME:
            return ("default", *self.engine.aliases)
        return self.engine.aliases

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TextDelta | Finished]:
        arrival = time.monotonic()
        if not self.engine.ready():
            raise NotReady()
        finished: Finished | None = None
        async with self.admission.slot() as queue_s:
            self.metrics.queue_time.labels(self.model_name).observe(queue_s)
            first_text_at: float | None = None
            # Closed here, not whenever the caller drops this generator: the
            # engine's request and the admission slot are both free before the
            # caller sees the end, so a client that got its answer never finds
            # the server still counting it.
            async with contextlib.aclosing(self.engine.stream(request)) as items:
                async for item in items:
                    if isinstance(item, TextDelta):
                        if first_text_at is None:
                            first_text_at = time.monotonic()
                        yield item
                        continue
                    finished = self._finish(item, arrival, first_text_at, queue_s)
                    break
        if finished is not None:
            yield finished

    def _finish(
        self, completion: Completion, arrival: float, first_text_at: float | None, queue_s: float
    ) -> Finished:
        ended = time.monotonic()
        ttft = (first_text_at or ended) - arrival
        labels = (self.model_name,)
        self.metrics.time_to_first_token.labels(*labels).observe(ttft)
        self.metrics.e2e_latency.labels(*labels).observe(ended - arrival)
        self.metrics.prompt_tokens.labels(*labels).inc(completion.usage.prompt_tokens)
        self.metrics.generation_tokens.labels(*labels).inc(completion.usage.completion_tokens)
        self.metrics.request_success.labels(*labels, completion.finish_reason.value).inc()
        previous = self.recent_ttft_s
        self.recent_ttft_s = ttft if previous == 0 else 0.8 * previous + 0.2 * ttft
        return Finished(
            finish_reason=completion.finish_reason,
            usage=completion.usage,
            time_to_first_token_s=ttft,
            total_s=ended - arrival,
            queue_s=queue_s,
            served_by=completion.served_by,
            route=completion.route,
        )
