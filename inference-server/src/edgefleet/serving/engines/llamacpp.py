"""llama.cpp engine for CPU edge nodes, on llama-cpp-python.

A pool of model instances, each a `llama_cpp.Llama` guarded by its own lock
(one Llama object is not thread-safe) and driven by its own dedicated thread.
A request takes a free instance, runs its token loop on that instance's
thread and hands text back to the event loop.

CPU threads: llama.cpp parallelises a decode with OpenMP, and every thread
that runs a parallel decode owns an OpenMP team whose threads stay alive.
Once libgomp manages more threads than there are cores it stops spinning
between decodes, and every team (even a lone one) slows down 2-3x (measured:
tests/bench/bench_openmp_threads.py). So only the primary instance (index 0) may use
several threads; the others always decode single-threaded, which needs no
team. Requests go to the primary whenever it is free, and it gives up one core
for each other instance that is generating, re-balanced between tokens.
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import contextlib
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from edgefleet.serving.engines.base import Engine, StreamItem
from edgefleet.serving.engines.plumbing import ItemChannel, RunningRequests, room_for_answer
from edgefleet.serving.engines.text import DeltaBatcher, StopStringFilter, leftover_text
from edgefleet.serving.types import (
    Completion,
    EngineStats,
    FinishReason,
    GenerationRequest,
    Usage,
)

# llama_cpp.Llama.create_chat_completion's defaults, so that our answers match
# the library's own for the same seed.
_TOP_K = 40
_MIN_P = 0.05


def chat_formatter(llama: llama_cpp.Llama) -> Jinja2ChatFormatter:
    """The chat template shipped in the GGUF file, as llama-cpp-python renders it."""
    template = llama.metadata.get("tokenizer.chat_template")
    if not template:
        raise ValueError("the GGUF file has no tokenizer.chat_template; a chat model is needed")
    model = llama._model
    return Jinja2ChatFormatter(
        template=template,
        eos_token=model.token_get_text(llama.token_eos()),
        bos_token=model.token_get_text(llama.token_bos()),
    )


def prompt_tokens(
    request: GenerationRequest, formatter: Jinja2ChatFormatter, llama: llama_cpp.Llama
) -> list[int]:
    messages = [{"role": m.role, "content": m.content} for m in request.messages]
    prompt = formatter(messages=messages).prompt  # type: ignore[arg-type]
    return llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)


@dataclass
class _Instance:
    index: int
    llama: llama_cpp.Llama
    lock: threading.Lock
    # The one thread that ever touches this instance (see the module doc).
    thread: concurrent.futures.ThreadPoolExecutor
    threads: int = 0
    tokens_in_use: int = 0


class LlamaCppEngine(Engine):
    name = "llamacpp"
    warms_up = True

    def __init__(
        self,
        model_path: Path,
        model_name: str,
        *,
        instances: int,
        threads: int,
        context_length: int,
        model_sha256: str | None = None,
        stream_interval_s: float = 0.0,
    ) -> None:
        self.model_path = model_path
        self.model_name = model_name
        self.model_sha256 = model_sha256
        self.context_length = context_length
        self.capacity = self.instances = instances
        self._threads = threads
        self._stream_interval_s = stream_interval_s
        self._instances: list[_Instance] = []
        self._idle: list[_Instance] = []
        self._instance_freed = asyncio.Event()
        self._active = 0
        self._active_lock = threading.Lock()
        self._running = RunningRequests()
        self._formatter: Jinja2ChatFormatter | None = None
        self._ready = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for index in range(self.capacity):
            thread = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"llamacpp-{index}"
            )
            threads = self._threads if index == 0 else 1
            llama = await loop.run_in_executor(thread, self._load, threads)
            instance = _Instance(
                index=index, llama=llama, lock=threading.Lock(), thread=thread, threads=threads
            )
            self._instances.append(instance)
            self._idle.append(instance)
        self._formatter = chat_formatter(self._instances[0].llama)
        self._ready = True

    def _load(self, threads: int) -> llama_cpp.Llama:
        return llama_cpp.Llama(
            model_path=str(self.model_path),
            n_ctx=self.context_length,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )

    async def _acquire(self) -> _Instance:
        """The free instance with the lowest index: the primary when it is free."""
        while not self._idle:
            self._instance_freed.clear()
            await self._instance_freed.wait()
        instance = min(self._idle, key=lambda candidate: candidate.index)
        self._idle.remove(instance)
        return instance

    def _release(self, instance: _Instance) -> None:
        self._idle.append(instance)
        self._instance_freed.set()

    def ready(self) -> bool:
        return self._ready

    def stats(self) -> EngineStats:
        in_use = sum(instance.tokens_in_use for instance in self._instances)
        total = self.context_length * max(1, len(self._instances))
        return EngineStats(
            running=self._active,
            waiting=0,
            kv_cache_usage=in_use / total,
        )

    async def close(self) -> None:
        self._ready = False
        self._running.cancel_all()
        for instance in self._instances:
            instance.thread.shutdown(wait=True)
            with instance.lock:
                instance.llama.close()
        self._instances.clear()

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        instance = await self._acquire()
        handed_to_worker = False
        try:
            assert self._formatter is not None
            tokens = prompt_tokens(request, self._formatter, instance.llama)
            room = room_for_answer(tokens, self.context_length)
            channel = ItemChannel()
            loop = asyncio.get_running_loop()

            def give_back() -> None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._release, instance)

            max_new = min(request.sampling.max_tokens, room)
            with self._running.track(request.request_id) as cancel:
                instance.thread.submit(
                    self._run, instance, tokens, request, max_new, channel.emit, give_back, cancel
                )
                handed_to_worker = True
                # Leaving this block (completion, error, client cancellation,
                # deadline) sets `cancel`: the worker stops at its next token.
                async for item in channel.items():
                    yield item
        finally:
            if not handed_to_worker:
                self._release(instance)

    def _fit_threads(self, instance: _Instance) -> None:
        if instance.index != 0:
            return  # secondaries stay single-threaded (see the module doc)
        wanted = max(1, self._threads - (self._active - 1))
        if wanted != instance.threads:
            llama_cpp.llama_set_n_threads(instance.llama._ctx.ctx, wanted, wanted)
            instance.threads = wanted

    def _run(
        self,
        instance: _Instance,
        tokens: list[int],
        request: GenerationRequest,
        max_new: int,
        emit: Callable[[StreamItem | BaseException], None],
        give_back: Callable[[], None],
        cancel: threading.Event,
    ) -> None:
        with instance.lock:
            with self._active_lock:
                self._active += 1
            try:
                emit(self._generate(instance, tokens, request, max_new, emit, cancel))
            except BaseException as exc:  # surfaced to the awaiting request
                emit(exc)
            finally:
                with self._active_lock:
                    self._active -= 1
                instance.tokens_in_use = 0
                give_back()

    def _generate(
        self,
        instance: _Instance,
        tokens: list[int],
        request: GenerationRequest,
        max_new: int,
        emit: Callable[[StreamItem | BaseException], None],
        cancel: threading.Event,
    ) -> Completion:
        llama = instance.llama
        sampling = request.sampling
        seed = sampling.seed if sampling.seed is not None else random.getrandbits(32)
        llama.set_seed(seed & 0xFFFFFFFF)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = StopStringFilter(sampling.stop)
        deltas = DeltaBatcher(emit, self._stream_interval_s)
        vocab = llama._model.vocab
        generated = 0
        finish = FinishReason.LENGTH
        stop_string_hit = False
        self._fit_threads(instance)
        tokens_iter = llama.generate(
            tokens,
            top_k=_TOP_K,
            top_p=sampling.top_p,
            min_p=_MIN_P,
            temp=sampling.temperature,
            repeat_penalty=1.0,
        )
        try:
            for token in tokens_iter:
                if cancel.is_set():
                    finish = FinishReason.CANCELLED
                    break
                if not sampling.ignore_eos and llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish = FinishReason.STOP
                    break
                generated += 1
                instance.tokens_in_use = len(tokens) + generated
                text, stopped = stops.feed(decoder.decode(llama.detokenize([token])))
                if text:
                    deltas.add(text, time.monotonic())
                if stopped:
                    finish, stop_string_hit = FinishReason.STOP, True
                    break
                if generated >= max_new:
                    break
                self._fit_threads(instance)
        finally:
            tokens_iter.close()
        if not stop_string_hit and finish is not FinishReason.CANCELLED:
            text = leftover_text(decoder, stops)
            if text:
                deltas.add(text, time.monotonic())
        deltas.flush(time.monotonic())
        return Completion(
            finish_reason=finish,
            usage=Usage(prompt_tokens=len(tokens), completion_tokens=generated),
        )
