"""llama.cpp engine with continuous batching: N sequences in one context.

One model, one llama.cpp context with N sequence slots, one scheduler thread.
Every step decodes, in a single llama_decode call, the next token of every
generating sequence plus a chunk of any prompt still being read; a request
joins or leaves between steps. Decoding N tokens together costs far less
than N separate decodes (tests/bench/bench_batched_decode.py: 1.47x the
throughput at 4 sequences on 2 cores), and one thread drives all decoding, so
llama.cpp's OpenMP team is never duplicated (see llamacpp.py's module doc).

Each slot keeps the tokens its KV cache holds; a new request reuses the part
of its prompt that matches (usually the system prompt), as llama-cpp-python's
own prefix cache does. A request that matches no slot meaningfully takes the
least recently used free slot, so it does not evict another prompt's cache
(llama-server's --slot-prompt-similarity does the same).

Per token, the scheduler's own Python work is kept small (profiled with
tests/bench/profile_decode.py): greedy requests take the argmax of the logits
instead of llama.cpp's sampler chain (which copies the whole vocabulary into a
candidate array every token), and token pieces are detokenised once per token
id, then looked up.
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import queue
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp import llama_cpp as lib

from edgefleet.serving.engines.base import Engine, StreamItem
from edgefleet.serving.engines.llamacpp import chat_formatter, prompt_tokens, room_for_answer
from edgefleet.serving.engines.plumbing import ItemChannel, RunningRequests
from edgefleet.serving.engines.text import DeltaBatcher, StopStringFilter, leftover_text
from edgefleet.serving.types import (
    Completion,
    EngineStats,
    FinishReason,
    GenerationRequest,
    Usage,
)

_BATCH_TOKENS = 512
_TOP_K = 40  # llama-cpp-python's create_chat_completion defaults
_MIN_P = 0.05
# A free slot is chosen for its cached prefix only when that prefix is at least
# this share of the new prompt (llama-server's --slot-prompt-similarity default);
# a shorter match (the chat template's first tokens) is not worth evicting for.
_PREFIX_SHARE = 0.1


@dataclass
class _Job:
    """A request handed to the scheduler thread."""

    request: GenerationRequest
    tokens: list[int]
    max_new: int
    emit: Callable[[StreamItem | BaseException], None]
    cancel: threading.Event


@dataclass
class _Slot:
    seq: int
    # Tokens whose keys and values sit in this sequence's KV cache.
    cached: list[int] = field(default_factory=list)
    job: _Job | None = None
    # When the slot last finished a request (a counter): the least recently used goes first.
    released: int = 0
    # None: greedy (argmax of the logits).
    sampler: int | None = None
    prefilled: int = 0
    pending_token: int | None = None
    logits_at: int = -1
    generated: int = 0
    decoder: codecs.IncrementalDecoder | None = None
    stops: StopStringFilter | None = None
    deltas: DeltaBatcher | None = None


class LlamaCppBatchEngine(Engine):
    name = "llamacpp"
    warms_up = True

    def __init__(
        self,
        model_path: Path,
        model_name: str,
        *,
        sequences: int,
        threads: int,
        context_length: int,
        model_sha256: str | None = None,
        stream_interval_s: float = 0.0,
    ) -> None:
        self.model_path = model_path
        self.model_name = model_name
        self.model_sha256 = model_sha256
        self.context_length = context_length
        self.capacity = sequences
        self._threads = threads
        self._stream_interval_s = stream_interval_s
        self._thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="llamacpp-batch"
        )
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._slots = [_Slot(seq) for seq in range(sequences)]
        self._running = RunningRequests()
        self._tokenizer: llama_cpp.Llama | None = None
        self._pieces: dict[int, bytes] = {}  # token id -> its text bytes
        self._releases = 0
        self._scheduler: concurrent.futures.Future[None] | None = None
        self._ready = False

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._load)
        self._scheduler = self._thread.submit(self._schedule)
        self._ready = True

    def _load(self) -> None:
        # A vocabulary-only Llama gives tokenizer, metadata and chat template;
        # the weights are loaded once, below, for the batched context.
        self._tokenizer = llama_cpp.Llama(
            model_path=str(self.model_path), vocab_only=True, verbose=False
        )
        self._formatter = chat_formatter(self._tokenizer)
        self._model = lib.llama_model_load_from_file(
            str(self.model_path).encode(), lib.llama_model_default_params()
        )
        if not self._model:
            raise ValueError(f"Failed to load model from file: {self.model_path}")
        self._vocab = lib.llama_model_get_vocab(self._model)
        self._n_vocab = lib.llama_vocab_n_tokens(self._vocab)
        params = lib.llama_context_default_params()
        params.n_ctx = self.context_length * self.capacity
        params.n_batch = params.n_ubatch = _BATCH_TOKENS
        params.n_seq_max = self.capacity
        params.n_threads = params.n_threads_batch = self._threads
        self._ctx = lib.llama_init_from_model(self._model, params)
        if not self._ctx:
            raise ValueError("llama.cpp could not create the batched context")
        self._memory = lib.llama_get_memory(self._ctx)
        self._batch = lib.llama_batch_init(_BATCH_TOKENS, 0, self.capacity)

    def ready(self) -> bool:
        return self._ready

    def stats(self) -> EngineStats:
        busy = [slot for slot in self._slots if slot.job is not None]
        cached = sum(len(slot.cached) for slot in busy)
        return EngineStats(
            running=len(busy),
            waiting=self._jobs.qsize(),
            kv_cache_usage=cached / (self.context_length * self.capacity),
        )

    async def close(self) -> None:
        self._ready = False
        self._running.cancel_all()
        self._jobs.put(None)
        if self._scheduler is not None:
            await asyncio.wrap_future(self._scheduler)
        self._thread.submit(self._free_native).result()
        self._thread.shutdown(wait=True)

    def _free_native(self) -> None:
        lib.llama_batch_free(self._batch)
        lib.llama_free(self._ctx)
        lib.llama_model_free(self._model)
        if self._tokenizer is not None:
            self._tokenizer.close()

    # -- requests (event loop side) ----------------------------------------------

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        assert self._tokenizer is not None
        tokens = prompt_tokens(request, self._formatter, self._tokenizer)
        room = room_for_answer(tokens, self.context_length)
        channel = ItemChannel()
        max_new = min(request.sampling.max_tokens, room)
        with self._running.track(request.request_id) as cancel:
            self._jobs.put(_Job(request, tokens, max_new, channel.emit, cancel))
            # Leaving this block (completion, error, client cancellation,
            # deadline) sets `cancel`: the scheduler drops the sequence before
            # its next step.
            async for item in channel.items():
                yield item

    # -- the scheduler thread ----------------------------------------------------------

    def _schedule(self) -> None:
        running = True
        while running:
            idle = all(slot.job is None for slot in self._slots)
            running = self._take_jobs(block=idle)
            try:
                self._step(closing=not running)
            except Exception as error:  # a bug must fail requests, not hang them
                self._fail_all(error)

    def _step(self, closing: bool) -> None:
        for slot in self._slots:
            if slot.job is not None and (closing or slot.job.cancel.is_set()):
                self._finish(slot, FinishReason.CANCELLED)
        if not self._fill_batch():
            return
        if lib.llama_decode(self._ctx, self._batch) != 0:
            raise RuntimeError("llama_decode failed")
        for slot in self._slots:
            if slot.job is not None and slot.logits_at >= 0:
                self._sample(slot)

    def _take_jobs(self, block: bool) -> bool:
        """Seat waiting jobs in free slots; False once close() was called."""
        while any(slot.job is None for slot in self._slots):
            try:
                job = self._jobs.get(block=block)
            except queue.Empty:
                return True
            if job is None:
                return False
            block = False
            self._seat(job)
        return True

    def _seat(self, job: _Job) -> None:
        # Prefer the free slot whose cache shares the longest prefix, if that
        # prefix is worth keeping; else the least recently used free slot.
        free = [slot for slot in self._slots if slot.job is None]
        shared = {slot.seq: _common_prefix(slot.cached, job.tokens) for slot in free}
        slot = max(free, key=lambda s: shared[s.seq])
        if shared[slot.seq] < _PREFIX_SHARE * len(job.tokens):
            slot = min(free, key=lambda s: s.released)
        # Keep at least one prompt token to decode: its logits start the answer.
        keep = min(shared[slot.seq], len(job.tokens) - 1)
        if not lib.llama_memory_seq_rm(self._memory, slot.seq, keep, -1):
            # This cache type cannot cut a sequence in the middle: start afresh.
            lib.llama_memory_seq_rm(self._memory, slot.seq, -1, -1)
            keep = 0
        del slot.cached[keep:]
        sampling = job.request.sampling
        slot.job, slot.prefilled, slot.pending_token, slot.generated = job, keep, None, 0
        slot.sampler = _sampler(sampling.temperature, sampling.top_p, sampling.seed)
        slot.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        slot.stops = StopStringFilter(sampling.stop)
        slot.deltas = DeltaBatcher(job.emit, self._stream_interval_s)

    def _fill_batch(self) -> bool:
        batch, budget = self._batch, _BATCH_TOKENS
        batch.n_tokens = 0

        def add(slot: _Slot, token: int, logits: bool) -> None:
            i = batch.n_tokens
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, len(slot.cached), 1
            batch.seq_id[i][0], batch.logits[i] = slot.seq, logits
            batch.n_tokens += 1
            slot.cached.append(token)
            if logits:
                slot.logits_at = i

        busy = [slot for slot in self._slots if slot.job is not None]
        for slot in busy:
            slot.logits_at = -1
            if slot.pending_token is not None:
                add(slot, slot.pending_token, True)
                slot.pending_token = None
                budget -= 1
        for slot in busy:
            assert slot.job is not None
            prompt = slot.job.tokens
            while slot.prefilled < len(prompt) and budget > 0:
                add(slot, prompt[slot.prefilled], slot.prefilled == len(prompt) - 1)
                slot.prefilled += 1
                budget -= 1
        return batch.n_tokens > 0

    def _sample(self, slot: _Slot) -> None:
        job = slot.job
        assert job is not None and slot.decoder and slot.stops and slot.deltas
        if slot.sampler is None:
            logits = lib.llama_get_logits_ith(self._ctx, slot.logits_at)
            # The first maximum, as llama.cpp's greedy sampler picks it.
            token = int(np.ctypeslib.as_array(logits, shape=(self._n_vocab,)).argmax())
        else:
            token = lib.llama_sampler_sample(slot.sampler, self._ctx, slot.logits_at)
        if not job.request.sampling.ignore_eos and lib.llama_vocab_is_eog(self._vocab, token):
            self._finish(slot, FinishReason.STOP)
            return
        slot.generated += 1
        piece = self._pieces.get(token)
        if piece is None:
            assert self._tokenizer is not None
            piece = self._pieces[token] = self._tokenizer.detokenize([token])
        text, stopped = slot.stops.feed(slot.decoder.decode(piece))
        if text:
            slot.deltas.add(text, time.monotonic())
        if stopped:
            self._finish(slot, FinishReason.STOP, stop_string_hit=True)
        elif slot.generated >= job.max_new:
            self._finish(slot, FinishReason.LENGTH)
        else:
            slot.pending_token = token

    def _finish(self, slot: _Slot, reason: FinishReason, stop_string_hit: bool = False) -> None:
        job = slot.job
        assert job is not None and slot.decoder and slot.stops and slot.deltas
        now = time.monotonic()
        if not stop_string_hit and reason is not FinishReason.CANCELLED:
            text = leftover_text(slot.decoder, slot.stops)
            if text:
                slot.deltas.add(text, now)
        slot.deltas.flush(now)
        job.emit(
            Completion(
                finish_reason=reason,
                usage=Usage(prompt_tokens=len(job.tokens), completion_tokens=slot.generated),
            )
        )
        self._release(slot)

    def _fail_all(self, error: BaseException) -> None:
        for slot in self._slots:
            if slot.job is not None:
                slot.job.emit(error)
                lib.llama_memory_seq_rm(self._memory, slot.seq, -1, -1)
                slot.cached.clear()
                self._release(slot)

    def _release(self, slot: _Slot) -> None:
        # slot.cached still matches the KV cache (a sampled but undecoded token
        # was never added), so the next request can reuse it.
        if slot.sampler is not None:
            lib.llama_sampler_free(slot.sampler)
        slot.job, slot.sampler, slot.pending_token, slot.logits_at = None, None, None, -1
        self._releases += 1
        slot.released = self._releases


def _common_prefix(cached: list[int], tokens: list[int]) -> int:
    length = 0
    for a, b in zip(cached, tokens, strict=False):
        if a != b:
            break
        length += 1
    return length


def _sampler(temperature: float, top_p: float, seed: int | None) -> int | None:
    """A sampler chain in llama-cpp-python's order: top-k, top-p, min-p, temperature, draw.

    None for temperature 0: the engine takes the argmax itself.
    """
    if temperature == 0:
        return None
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    draw_seed = seed if seed is not None else random.getrandbits(32)
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(_TOP_K))
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(top_p, 1))
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_min_p(_MIN_P, 1))
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(temperature))
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(draw_seed & 0xFFFFFFFF))
    return chain
