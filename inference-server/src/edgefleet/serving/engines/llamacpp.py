"""llama.cpp engine for CPU edge nodes, on llama-cpp-python.

A pool of model instances, each a `llama_cpp.Llama` guarded by its own lock
(one Llama object is not thread-safe). A request takes a free instance, runs
its token loop in a worker thread and hands text back to the event loop.

CPU threads are shared: with one request running it gets every core, with
two each gets half, adjusted between tokens. llama.cpp's worker threads spin,
so oversubscribing cores would slow every request down.
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
from edgefleet.serving.engines.llamacpp_threads import QuietThreadpool
from edgefleet.serving.engines.text import StopStringFilter
from edgefleet.serving.errors import InvalidArgument
from edgefleet.serving.types import (
    Completion,
    EngineStats,
    FinishReason,
    GenerationRequest,
    TextDelta,
    Usage,
)

# llama_cpp.Llama.create_chat_completion's defaults, so that our answers match
# the library's own for the same seed.
_TOP_K = 40
_MIN_P = 0.05


@dataclass
class _Instance:
    index: int
    llama: llama_cpp.Llama
    lock: threading.Lock
    threadpool: QuietThreadpool
    threads: int = 0
    tokens_in_use: int = 0


class LlamaCppEngine(Engine):
    name = "llamacpp"

    def __init__(
        self,
        model_path: Path,
        model_name: str,
        *,
        instances: int,
        threads: int,
        context_length: int,
        model_sha256: str | None = None,
        cpu_poll: int = 0,
    ) -> None:
        self.model_path = model_path
        self.model_name = model_name
        self.model_sha256 = model_sha256
        self.context_length = context_length
        self.capacity = instances
        self._threads = threads
        self._cpu_poll = cpu_poll
        self._instances: list[_Instance] = []
        self._free: asyncio.Queue[_Instance] = asyncio.Queue()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=instances, thread_name_prefix="llamacpp"
        )
        self._active = 0
        self._active_lock = threading.Lock()
        self._cancels: dict[str, threading.Event] = {}
        self._formatter: Jinja2ChatFormatter | None = None
        self._ready = False

    async def start(self) -> None:
        for index in range(self.capacity):
            llama = await asyncio.to_thread(self._load)
            instance = _Instance(
                index=index,
                llama=llama,
                lock=threading.Lock(),
                threadpool=QuietThreadpool(llama, self._threads, self._cpu_poll),
            )
            self._instances.append(instance)
            self._free.put_nowait(instance)
        self._formatter = self._chat_formatter(self._instances[0].llama)
        self._ready = True

    def _load(self) -> llama_cpp.Llama:
        return llama_cpp.Llama(
            model_path=str(self.model_path),
            n_ctx=self.context_length,
            n_threads=self._threads,
            n_threads_batch=self._threads,
            verbose=False,
        )

    @staticmethod
    def _chat_formatter(llama: llama_cpp.Llama) -> Jinja2ChatFormatter:
        template = llama.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError("the GGUF file has no tokenizer.chat_template; a chat model is needed")
        model = llama._model
        return Jinja2ChatFormatter(
            template=template,
            eos_token=model.token_get_text(llama.token_eos()),
            bos_token=model.token_get_text(llama.token_bos()),
        )

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

    async def cancel(self, request_id: str) -> bool:
        event = self._cancels.get(request_id)
        if event is None:
            return False
        event.set()
        return True

    async def close(self) -> None:
        self._ready = False
        for event in self._cancels.values():
            event.set()
        self._executor.shutdown(wait=True)
        for instance in self._instances:
            with instance.lock:
                instance.threadpool.free()
                instance.llama.close()
        self._instances.clear()

    def prompt_tokens(self, request: GenerationRequest, llama: llama_cpp.Llama) -> list[int]:
        assert self._formatter is not None
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        prompt = self._formatter(messages=messages).prompt  # type: ignore[arg-type]
        return llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        instance = await self._free.get()
        handed_to_worker = False
        try:
            tokens = self.prompt_tokens(request, instance.llama)
            room = self.context_length - len(tokens)
            if room <= 0:
                raise InvalidArgument(
                    "messages",
                    f"the prompt is {len(tokens)} tokens but the context holds "
                    f"{self.context_length} tokens for prompt and answer together",
                )
            loop = asyncio.get_running_loop()
            items: asyncio.Queue[StreamItem | BaseException] = asyncio.Queue()
            cancel = threading.Event()
            self._cancels[request.request_id] = cancel

            def emit(item: StreamItem | BaseException) -> None:
                with contextlib.suppress(RuntimeError):  # loop already closed
                    loop.call_soon_threadsafe(items.put_nowait, item)

            def give_back() -> None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._free.put_nowait, instance)

            max_new = min(request.sampling.max_tokens, room)
            self._executor.submit(
                self._run, instance, tokens, request, max_new, emit, give_back, cancel
            )
            handed_to_worker = True
            try:
                while True:
                    item = await items.get()
                    if isinstance(item, BaseException):
                        raise item
                    if isinstance(item, TextDelta):
                        item = self._coalesce(item, items)
                    yield item
                    if isinstance(item, Completion):
                        return
            finally:
                # Reached on completion, error, client cancellation and
                # deadline alike: the worker stops at its next token.
                cancel.set()
                self._cancels.pop(request.request_id, None)
        finally:
            if not handed_to_worker:
                self._free.put_nowait(instance)

    @staticmethod
    def _coalesce(first: TextDelta, items: asyncio.Queue[StreamItem | BaseException]) -> TextDelta:
        """Join deltas that queued up while the client was slower than the model."""
        parts = [first.text]
        while not items.empty():
            peeked = items._queue[0]  # type: ignore[attr-defined]
            if not isinstance(peeked, TextDelta):
                break
            parts.append(items.get_nowait().text)  # type: ignore[union-attr]
        return TextDelta("".join(parts)) if len(parts) > 1 else first

    def _fit_threads(self, instance: _Instance) -> None:
        wanted = max(1, self._threads // max(1, self._active))
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
        started = time.monotonic()
        first_text_at: float | None = None
        seed = sampling.seed if sampling.seed is not None else random.getrandbits(32)
        llama.set_seed(seed & 0xFFFFFFFF)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = StopStringFilter(sampling.stop)
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
                    first_text_at = first_text_at or time.monotonic()
                    emit(TextDelta(text))
                if stopped:
                    finish, stop_string_hit = FinishReason.STOP, True
                    break
                if generated >= max_new:
                    break
                self._fit_threads(instance)
        finally:
            tokens_iter.close()
        if not stop_string_hit and finish is not FinishReason.CANCELLED:
            # Bytes of an unfinished character and text held back as a possible
            # stop string belong to the answer after all.
            text, _ = stops.feed(decoder.decode(b"", final=True))
            text += stops.flush()
            if text:
                first_text_at = first_text_at or time.monotonic()
                emit(TextDelta(text))
        ended = time.monotonic()
        return Completion(
            finish_reason=finish,
            usage=Usage(prompt_tokens=len(tokens), completion_tokens=generated),
            first_token_s=None if first_text_at is None else first_text_at - started,
            total_s=ended - started,
        )
