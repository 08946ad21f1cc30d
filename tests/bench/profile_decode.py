"""Where single-stream decode time goes: the batching engine against llama.cpp's own loop.

Three measurements, each in a process of its own (two decoding threads in one
process would give llama.cpp two OpenMP teams, which slows both; see
tests/bench/bench_openmp_threads.py):

- raw: the floor. The same context as the engine's (8 sequences, 2048 tokens
  each, all threads), driven by the smallest possible Python loop: put one
  token in the batch, llama_decode, greedy llama_sampler_sample. No text.
- engine: LlamaCppBatchEngine in-process (no gRPC), its scheduler thread timed
  part by part: llama_decode, sampling, detokenisation and text handling,
  filling the batch, and the rest of a step (slot loops, job queue).
- server (--server): a real edgefleet-server under single-stream load, sampled
  by py-spy (`pip install py-spy` into .venv), reported as the share of samples
  per thread and per Python function: what the process does besides decoding.

Per-token figures are medians over the decode steps of every request (the
first step of each request, which reads the prompt, is left out), so a busy
machine disturbs them less than it disturbs tok/s. Prints markdown tables.

    .venv/bin/python tests/bench/profile_decode.py [--requests 4] [--max-tokens 128] [--server]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from edgefleet.serving.config import DEFAULT_SYSTEM_PROMPT
from edgefleet.serving.model_files import default_model_path
from tests.support.prompts import LONG_ANSWER_PROMPTS

SEQUENCES = 8
CONTEXT = 2048


def _median_us(values: list[float]) -> float:
    return statistics.median(values) * 1e6 if values else 0.0


# -- raw: llama.cpp with the least Python around it --------------------------------


def profile_raw(requests: int, max_tokens: int, threads: int) -> dict[str, float]:
    import llama_cpp
    from llama_cpp import llama_cpp as lib

    from edgefleet.serving.engines.llamacpp import chat_formatter

    path = str(default_model_path())
    vocab_llama = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    formatter = chat_formatter(vocab_llama)
    model = lib.llama_model_load_from_file(path.encode(), lib.llama_model_default_params())
    params = lib.llama_context_default_params()
    params.n_ctx = CONTEXT * SEQUENCES
    params.n_batch = params.n_ubatch = 512
    params.n_seq_max = SEQUENCES
    params.n_threads = params.n_threads_batch = threads
    ctx = lib.llama_init_from_model(model, params)
    memory = lib.llama_get_memory(ctx)
    batch = lib.llama_batch_init(512, 0, SEQUENCES)
    sampler = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    lib.llama_sampler_chain_add(sampler, lib.llama_sampler_init_greedy())
    steps: dict[str, list[float]] = collections.defaultdict(list)
    for n in range(requests):
        messages = [
            {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
            {"role": "user", "content": LONG_ANSWER_PROMPTS[n % len(LONG_ANSWER_PROMPTS)]},
        ]
        prompt = formatter(messages=messages).prompt
        tokens = vocab_llama.tokenize(prompt.encode(), add_bos=True, special=True)
        lib.llama_memory_seq_rm(memory, 0, -1, -1)
        batch.n_tokens = len(tokens)
        for i, token in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, i, 1
            batch.seq_id[i][0], batch.logits[i] = 0, i == len(tokens) - 1
        lib.llama_decode(ctx, batch)
        token = lib.llama_sampler_sample(sampler, ctx, len(tokens) - 1)
        pos = len(tokens)
        for _ in range(max_tokens - 1):
            step: dict[str, float] = {}
            started, cpu = time.perf_counter(), time.thread_time()
            batch.n_tokens = 1
            batch.token[0], batch.pos[0], batch.n_seq_id[0] = token, pos, 1
            batch.seq_id[0][0], batch.logits[0] = 0, True
            pos += 1
            t0, c0 = time.perf_counter(), time.thread_time()
            if lib.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            _add(step, "llama_decode", t0, c0)
            t1, c1 = time.perf_counter(), time.thread_time()
            token = lib.llama_sampler_sample(sampler, ctx, 0)
            _add(step, "sampling", t1, c1)
            _add(step, "per token", started, cpu)
            for label, seconds in step.items():
                steps[label].append(seconds)
    lib.llama_sampler_free(sampler)
    lib.llama_batch_free(batch)
    lib.llama_free(ctx)
    lib.llama_model_free(model)
    return {label: _median_us(values) for label, values in steps.items()}


# -- engine: the batching engine's scheduler thread, part by part -------------------


def _add(into: dict[str, float], label: str, started: float, cpu: float) -> None:
    """Adds wall time under `label` and this thread's CPU time under `label (CPU)`."""
    into[label] = into.get(label, 0.0) + time.perf_counter() - started
    cpu_label = f"{label} (CPU)"
    into[cpu_label] = into.get(cpu_label, 0.0) + time.thread_time() - cpu


class _Timed:
    """Stands in for a module or object: chosen callables are timed, the rest pass through."""

    def __init__(self, target: object, names: dict[str, str], into: dict[str, float]):
        self._target, self._names, self._into = target, names, into

    def __getattr__(self, name: str) -> object:
        value = getattr(self._target, name)
        label = self._names.get(name)
        if label is None:
            return value
        into = self._into

        def timed(*args: object, **kwargs: object) -> object:
            started, cpu = time.perf_counter(), time.thread_time()
            try:
                return value(*args, **kwargs)  # type: ignore[operator]
            finally:
                _add(into, label, started, cpu)

        return timed


def profile_engine(requests: int, max_tokens: int, threads: int) -> dict[str, float]:
    from edgefleet.serving.engines import llamacpp_batch
    from edgefleet.serving.engines.llamacpp_batch import LlamaCppBatchEngine
    from edgefleet.serving.types import GenerationRequest, Message, Sampling

    step: dict[str, float] = {}  # seconds spent in each part during the current step
    records: list[dict[str, float]] = []
    llamacpp_batch.lib = _Timed(  # type: ignore[assignment]
        llamacpp_batch.lib,
        {"llama_decode": "llama_decode", "llama_sampler_sample": "sampling"},
        step,
    )
    engine = LlamaCppBatchEngine(
        default_model_path(),
        "default",
        sequences=SEQUENCES,
        threads=threads,
        context_length=CONTEXT,
        stream_interval_s=0.05,
    )

    def timed_method(name: str, label: str) -> None:
        method: Callable[..., object] = getattr(engine, name)

        def timed(*args: object, **kwargs: object) -> object:
            started, cpu = time.perf_counter(), time.thread_time()
            try:
                return method(*args, **kwargs)
            finally:
                _add(step, label, started, cpu)

        setattr(engine, name, timed)

    timed_method("_fill_batch", "filling the batch")
    timed_method("_sample", "_sample (all)")
    timed_method("_take_jobs", "taking jobs")
    original_step = engine._step

    def timed_step(closing: bool) -> None:
        # `step` holds what _take_jobs spent just before this step, then the step's parts.
        started, cpu = time.perf_counter(), time.thread_time()
        original_step(closing)
        _add(step, "per token", started, cpu)
        if step.get("llama_decode"):
            records.append(dict(step))
        step.clear()

    engine._step = timed_step  # type: ignore[method-assign]

    async def run() -> None:
        await engine.start()
        # The tokenizer is only reachable once loaded: time detokenisation too.
        engine._tokenizer = _Timed(  # type: ignore[assignment]
            engine._tokenizer, {"detokenize": "detokenize"}, step
        )
        sampling = Sampling(max_tokens=max_tokens, temperature=0.0, top_p=1.0, ignore_eos=True)
        for n in range(requests + 1):  # the first one warms the prefix cache, not counted
            if n == 1:
                records.clear()
            request = GenerationRequest(
                request_id=f"profile-{n}",
                model="default",
                messages=(
                    Message("system", DEFAULT_SYSTEM_PROMPT),
                    Message("user", LONG_ANSWER_PROMPTS[n % len(LONG_ANSWER_PROMPTS)]),
                ),
                sampling=sampling,
            )
            async for _ in engine.stream(request):
                pass
        await engine.close()

    asyncio.run(run())
    # A step that read prompt tokens (the request's first) is not a decode step:
    # its llama_decode is far longer. Keep the steps that decoded one token.
    typical = statistics.median(record["llama_decode"] for record in records)
    kept = [record for record in records if record["llama_decode"] < 3 * typical]
    labels = {label for record in kept for label in record}
    result = {label: _median_us([r.get(label, 0.0) for r in kept]) for label in labels}
    for clock in ("", " (CPU)"):
        def get(label: str, clock: str = clock) -> float:
            return result.get(label + clock, 0.0)

        result["rest of _sample: argmax if greedy, decoder, stop filter, deltas" + clock] = max(
            0.0, get("_sample (all)") - get("sampling") - get("detokenize")
        )
        result.pop("_sample (all)" + clock, None)
        # _take_jobs runs between steps: part of every token's cost.
        result["per token" + clock] = get("per token") + get("taking jobs")
        named = ("llama_decode", "sampling", "detokenize", "filling the batch", "taking jobs",
                 "rest of _sample: argmax if greedy, decoder, stop filter, deltas")
        result["rest of the step (slot loops, cancel checks)" + clock] = max(
            0.0, get("per token") - sum(get(label) for label in named)
        )
    return result


# -- server: py-spy on a real edgefleet-server -----------------------------------


def profile_server(requests: int, max_tokens: int, seconds: float) -> list[str]:
    """Markdown rows: share of py-spy samples per thread and top functions."""
    from edgefleet.v1 import inference_pb2 as pb
    from tests.support.model_server import spawn_server

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return ["py-spy is not installed: `.venv/bin/python -m pip install py-spy`"]
    server = spawn_server(
        "--batch-sequences", str(SEQUENCES), "--context-length", str(CONTEXT), "--max-queue", "4"
    )
    try:
        server.wait_serving()
        sampling = pb.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        stub = server.stub

        def one(n: int) -> None:
            request = pb.GenerateRequest(
                prompt=LONG_ANSWER_PROMPTS[n % len(LONG_ANSWER_PROMPTS)], sampling=sampling
            )
            for _ in stub.GenerateStream(request, timeout=300):
                pass

        one(0)  # warm-up
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "spy.txt"
            spying = subprocess.Popen(
                [spy, "record", "--pid", str(server.process.pid), "--format", "raw",
                 "--threads", "--idle", "--rate", "250", "--duration", str(int(seconds)),
                 "--output", str(out), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            time.sleep(1.0)  # py-spy attaches
            deadline = time.monotonic() + seconds - 2
            n = 0
            while time.monotonic() < deadline and n < requests * 10:
                one(n)
                n += 1
            _, err = spying.communicate(timeout=seconds + 60)
            if not out.exists():
                return [f"py-spy failed: {err.decode(errors='replace')[-500:]}"]
            return _summarise_spy(out.read_text())
    finally:
        server.stop()


def _summarise_spy(collapsed: str) -> list[str]:
    by_thread: collections.Counter[str] = collections.Counter()
    by_leaf: collections.Counter[tuple[str, str]] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = re.sub(r"\s*\(.*", "", frames[0]).strip('"') if frames else "?"
        leaf = frames[-1] if len(frames) > 1 else "(no Python frame)"
        # Name the thread by what it runs: the scheduler's frames mention _schedule.
        if "_schedule" in stack:
            thread = "llamacpp-batch scheduler"
        elif "grpc" in stack.lower() or "asyncio" in stack.lower():
            thread = "event loop / gRPC"
        by_thread[thread] += count
        by_leaf[(thread, re.sub(r" \(.*?\)", "", leaf))] += count
        total += count
    rows = ["| thread | share of samples | top functions (share of that thread) |",
            "|---|---:|---|"]
    for thread, count in by_thread.most_common(6):
        tops = [
            f"`{leaf}` {100 * n / count:.0f} %"
            for (t, leaf), n in by_leaf.most_common()
            if t == thread
        ][:4]
        rows.append(f"| {thread} | {100 * count / total:.1f} % | {'; '.join(tops)} |")
    return rows


# -- the two-process comparison ------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4, help="requests per measurement")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2, help="raw/engine alternations")
    parser.add_argument("--server", action="store_true", help="also py-spy a real server")
    parser.add_argument("--server-seconds", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="llama.cpp threads (1 isolates Python cost on a busy machine)")
    parser.add_argument("--part", choices=("raw", "engine"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        profile = profile_raw if args.part == "raw" else profile_engine
        print(json.dumps(profile(args.requests, args.max_tokens, args.threads)))
        return

    results: dict[str, list[dict[str, float]]] = {"raw": [], "engine": []}
    for _ in range(args.rounds):
        for part in results:
            print(f"-- {part}", file=sys.stderr, flush=True)
            output = subprocess.run(
                [sys.executable, __file__, "--part", part, "--requests", str(args.requests),
                 "--max-tokens", str(args.max_tokens), "--threads", str(args.threads)],
                check=True, capture_output=True, text=True, timeout=900,
            ).stdout
            results[part].append(json.loads(output.strip().splitlines()[-1]))

    def mean(part: str, label: str) -> float | None:
        values = [run[label] for run in results[part] if label in run]
        return statistics.mean(values) if values else None

    print(
        f"\nSmolLM2-135M Q4_1, {args.threads} threads, context {SEQUENCES} x {CONTEXT}, "
        f"{args.requests} requests x {args.max_tokens} tokens per run, {args.rounds} runs each; "
        "median per decode step (µs), mean over runs; CPU is the decoding thread's own "
        "CPU time (for llama_decode, its share of the OpenMP team's work)\n"
    )
    print("| part of a decode step | raw loop, wall | raw loop, CPU | engine, wall | engine, CPU |")
    print("|---|---:|---:|---:|---:|")
    labels = ["llama_decode", "sampling", "detokenize",
              "rest of _sample: argmax if greedy, decoder, stop filter, deltas",
              "filling the batch", "taking jobs",
              "rest of the step (slot loops, cancel checks)", "per token"]
    for label in labels:
        cells = []
        for part in ("raw", "engine"):
            for clock in ("", " (CPU)"):
                value = mean(part, label + clock)
                cells.append("—" if value is None else f"{value:.0f}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    raw_wall, engine_wall = mean("raw", "per token"), mean("engine", "per token")
    if raw_wall and engine_wall:
        print(
            f"\nengine per token vs raw: {engine_wall - raw_wall:+.0f} µs "
            f"({100 * (engine_wall / raw_wall - 1):+.1f} %); tok/s implied "
            f"{1e6 / raw_wall:.1f} raw, {1e6 / engine_wall:.1f} engine"
        )
    if args.server:
        print("-- server under py-spy", file=sys.stderr, flush=True)
        print("\nedgefleet-server, single stream, py-spy samples (idle included):\n")
        print("\n".join(profile_server(args.requests, args.max_tokens, args.server_seconds)))


if __name__ == "__main__":
    main()
