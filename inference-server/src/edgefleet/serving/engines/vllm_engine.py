"""vLLM engine for GPU nodes (and, for tests, vLLM's CPU build), on its async engine.

The sibling of the llama.cpp engines behind the same interface: one
`vllm.v1.engine.async_llm.AsyncLLM` in this process (it starts its own engine
core and worker processes), fed token ids rendered with the model tokenizer's
chat template, read back as token deltas. vLLM does the continuous batching
and the paged KV cache; admission, validation, metrics and the gRPC front
ends stay the server's, so a client cannot tell the engines apart except by
`served_by.engine`.

Not named `vllm.py`: that would shadow the `vllm` package for this folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.inputs import TokensPrompt
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.metrics.loggers import StatLoggerBase

from edgefleet.serving.convert_gguf import converted_model
from edgefleet.serving.engines.base import Engine, StreamItem
from edgefleet.serving.engines.plumbing import room_for_answer
from edgefleet.serving.engines.text import DeltaBatcher
from edgefleet.serving.types import (
    Completion,
    EngineStats,
    FinishReason,
    GenerationRequest,
    Message,
    TextDelta,
    Usage,
)

log = logging.getLogger("edgefleet.vllm")

# llama-cpp-python's create_chat_completion defaults, which the llama.cpp
# engines use: with them both engines draw from the same distribution for the
# same temperature and top_p.
_TOP_K = 40
_MIN_P = 0.05
_FINISH_REASONS = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH}


class _SchedulerStatsLogger(StatLoggerBase):
    """Keeps the engine core's latest scheduler figures for `stats()`.

    vLLM hands every step's SchedulerStats to its stat loggers in this
    process; this one only remembers the last (vLLM's own loggers, which
    would print and register global Prometheus metrics, stay off).
    """

    def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
        self.latest: Any = None

    def record(
        self,
        scheduler_stats: Any,
        iteration_stats: Any,
        mm_cache_stats: Any = None,
        engine_idx: int = 0,
    ) -> None:
        if scheduler_stats is not None:
            self.latest = scheduler_stats

    def log_engine_initialized(self) -> None:
        pass


class VllmEngine(Engine):
    name = "vllm"
    warms_up = True

    def __init__(
        self,
        model: Path,
        model_name: str,
        *,
        context_length: int,
        max_sequences: int,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        kv_cache_bytes: int | None = None,
        tensor_parallel_size: int = 1,
        enforce_eager: bool = False,
        model_sha256: str | None = None,
        stream_interval_s: float = 0.0,
    ) -> None:
        self.model = model
        self.model_name = model_name
        self.model_sha256 = model_sha256
        self.context_length = context_length
        self.capacity = max_sequences
        self._engine_options: dict[str, Any] = dict(
            served_model_name=model_name,
            max_model_len=context_length,
            max_num_seqs=max_sequences,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            kv_cache_memory_bytes=kv_cache_bytes,
            tensor_parallel_size=tensor_parallel_size,
            enforce_eager=enforce_eager,
            # Sampling comes only from the request, never from the model's
            # generation_config.json, as with the llama.cpp engines.
            generation_config="vllm",
            disable_log_stats=True,
        )
        self._stream_interval_s = stream_interval_s
        self._engine: AsyncLLM | None = None
        self._tokenizer: Any = None
        self._scheduler_stats = _SchedulerStatsLogger(None)
        # Client ids may repeat; each call gets its own vLLM id.
        self._vllm_ids: dict[str, set[str]] = {}
        self._ready = False

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        # Converting a GGUF file, spawning the engine's processes and loading
        # the weights take seconds to minutes; threads keep the event loop,
        # and so the health service, answering meanwhile.
        model_dir = self.model
        if not model_dir.is_dir():
            assert self.model_sha256 is not None
            model_dir = await asyncio.to_thread(converted_model, self.model, self.model_sha256)
        args = AsyncEngineArgs(model=str(model_dir), **self._engine_options)
        self._engine = await asyncio.to_thread(
            AsyncLLM.from_engine_args,
            args,
            stat_loggers=[lambda config, index: self._scheduler_stats],
        )
        self._tokenizer = self._engine.get_tokenizer()
        if not getattr(self._tokenizer, "chat_template", None):
            raise ValueError(f"{model_dir} has no chat template; a chat model is needed")
        self._ready = True

    def ready(self) -> bool:
        return self._ready and self._engine is not None and not self._engine.errored

    def stats(self) -> EngineStats:
        if self._engine is None:
            return EngineStats()
        # Requests the engine still holds, counted in this process (an abort
        # removes them at once); the split between running and waiting and
        # the KV-cache figure come from the engine core's latest step.
        unfinished = self._engine.get_num_unfinished_requests()
        latest = self._scheduler_stats.latest
        if not unfinished or latest is None:
            return EngineStats(running=unfinished)
        waiting = min(latest.num_waiting_reqs, unfinished)
        return EngineStats(
            running=unfinished - waiting,
            waiting=waiting,
            kv_cache_usage=float(latest.kv_cache_usage),
        )

    async def close(self) -> None:
        self._ready = False
        if self._engine is not None:
            engine, self._engine = self._engine, None
            if self._vllm_ids and not engine.errored:
                await engine.abort([i for ids in self._vllm_ids.values() for i in ids])
            await asyncio.to_thread(engine.shutdown)

    # -- requests --------------------------------------------------------------

    def prompt_token_ids(self, messages: tuple[Message, ...]) -> list[int]:
        """The chat as the model's tokenizer renders it, ready for the answer."""
        chat = [{"role": m.role, "content": m.content} for m in messages]
        text = self._tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        # The template already holds the special tokens it wants.
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        assert self._engine is not None
        tokens = self.prompt_token_ids(request.messages)
        room = room_for_answer(tokens, self.context_length)
        sampling = request.sampling
        params = SamplingParams(
            n=1,
            max_tokens=min(sampling.max_tokens, room),
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=_TOP_K if sampling.temperature > 0 else 0,
            min_p=_MIN_P if sampling.temperature > 0 else 0.0,
            seed=sampling.seed,
            stop=list(sampling.stop) or None,
            ignore_eos=sampling.ignore_eos,
            output_kind=RequestOutputKind.DELTA,
        )
        vllm_id = f"{request.request_id}-{uuid.uuid4().hex[:8]}"
        sharing = self._vllm_ids.setdefault(request.request_id, set())
        sharing.add(vllm_id)
        pending: list[TextDelta] = []
        deltas = DeltaBatcher(pending.append, self._stream_interval_s)
        generated = 0
        try:
            # Leaving this loop early (client cancellation, deadline, closing
            # the iterator) makes vLLM's generator abort the request inside
            # the engine, which frees its KV-cache blocks at once.
            async for output in self._engine.generate(
                TokensPrompt(prompt_token_ids=tokens), params, vllm_id
            ):
                step = output.outputs[0]
                generated += len(step.token_ids)
                if step.text:
                    deltas.add(step.text, time.monotonic())
                if output.finished:
                    deltas.flush(time.monotonic())
                while pending:
                    yield pending.pop(0)
                if output.finished:
                    yield Completion(
                        finish_reason=_FINISH_REASONS.get(
                            step.finish_reason or "", FinishReason.CANCELLED
                        ),
                        usage=Usage(prompt_tokens=len(tokens), completion_tokens=generated),
                    )
                    return
            # Aborted from outside (cancel(), close()) without a last output.
            deltas.flush(time.monotonic())
            while pending:
                yield pending.pop(0)
            yield Completion(
                finish_reason=FinishReason.CANCELLED,
                usage=Usage(prompt_tokens=len(tokens), completion_tokens=generated),
            )
        finally:
            sharing.discard(vllm_id)
            if not sharing:
                with contextlib.suppress(KeyError):
                    del self._vllm_ids[request.request_id]
