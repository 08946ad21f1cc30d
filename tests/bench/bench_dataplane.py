"""Data-plane benchmark: one run, same model, same machine, side by side.

(a) raw in-process llama_cpp.Llama (create_chat_completion, streaming)
(b) edgefleet-server over gRPC (GenerateStream)
(c) the peer llama_cpp.server over OpenAI-compatible HTTP (openai SDK, streaming)

Reports single-stream decode tok/s and TTFT p50/p95 (client-side, from sending
the request to the first text; requests interleaved across systems), then
aggregate tok/s at 1, 2, 4 and 8 concurrent streams. Prints a markdown table
(paste it into docs/benchmarks.md).

    .venv/bin/python tests/bench/bench_dataplane.py [--max-tokens 128] [--rounds 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from edgefleet.serving.config import DEFAULT_SYSTEM_PROMPT
from edgefleet.serving.model_files import default_model_path
from edgefleet.serving.readiness import free_local_port
from edgefleet.v1 import inference_pb2 as pb
from tests.support.model_server import spawn_server
from tests.support.prompts import LONG_ANSWER_PROMPTS

PROMPTS = LONG_ANSWER_PROMPTS
CONCURRENCY = (1, 2, 4, 8)
CONTEXT = 2048


@dataclass
class Sample:
    ttft_s: float
    total_s: float
    tokens: int

    @property
    def decode_tps(self) -> float:
        decode = self.total_s - self.ttft_s
        return (self.tokens - 1) / decode if decode > 0 and self.tokens > 1 else 0.0


Generate = Callable[[str], Sample]


def messages(prompt: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": prompt},
    ]


def raw_llama(max_tokens: int, threads: int) -> tuple[Generate, Callable[[], None]]:
    llama = llama_cpp.Llama(
        model_path=str(default_model_path()),
        n_ctx=CONTEXT,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )

    def generate(prompt: str) -> Sample:
        start = time.perf_counter()
        first, tokens = None, 0
        for chunk in llama.create_chat_completion(
            messages(prompt), max_tokens=max_tokens, temperature=0.0, stream=True
        ):
            if chunk["choices"][0]["delta"].get("content"):
                first = first or time.perf_counter()
                tokens += 1
        end = time.perf_counter()
        return Sample((first or end) - start, end - start, tokens)

    return generate, llama.close


def edgefleet(max_tokens: int, *engine_flags: str) -> tuple[Generate, Callable[[], None]]:
    server = spawn_server(*engine_flags, "--max-queue", "16", "--context-length", str(CONTEXT))
    server.wait_serving()
    stub = server.stub

    def generate(prompt: str) -> Sample:
        start = time.perf_counter()
        first, tokens = None, 0
        request = pb.GenerateRequest(
            prompt=prompt, sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0.0)
        )
        for chunk in stub.GenerateStream(request, timeout=600):
            if chunk.delta:
                first = first or time.perf_counter()
            if chunk.is_final:
                tokens = chunk.usage.completion_tokens
        end = time.perf_counter()
        return Sample((first or end) - start, end - start, tokens)

    return generate, server.stop


def llama_cpp_server(max_tokens: int, threads: int) -> tuple[Generate, Callable[[], None]]:
    port = free_local_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(default_model_path()),
            "--n_ctx",
            str(CONTEXT),
            "--n_threads",
            str(threads),
            "--n_threads_batch",
            str(threads),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--verbose",
            "false",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600
    )
    deadline = time.monotonic() + 120
    while True:  # poll the peer's model list until it answers
        try:
            client.models.list()
            break
        except openai.APIConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("llama_cpp.server did not start") from None
            time.sleep(0.2)

    def generate(prompt: str) -> Sample:
        start = time.perf_counter()
        first, tokens = None, 0
        stream = client.chat.completions.create(
            model="default",
            messages=messages(prompt),
            max_tokens=max_tokens,
            temperature=0.0,
            stream=True,
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter()
                tokens += 1
        end = time.perf_counter()
        return Sample((first or end) - start, end - start, tokens)

    def stop() -> None:
        process.terminate()
        process.wait(timeout=30)

    return generate, stop


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarise(samples: list[Sample]) -> dict[str, float]:
    return {
        "tps": statistics.mean(s.decode_tps for s in samples),
        "ttft_p50": percentile([s.ttft_s for s in samples], 0.5) * 1000,
        "ttft_p95": percentile([s.ttft_s for s in samples], 0.95) * 1000,
        "tokens": statistics.mean(s.tokens for s in samples),
    }


def single_stream(systems: dict[str, Generate], rounds: int) -> dict[str, dict[str, float]]:
    """One request at a time, interleaved across systems prompt by prompt.

    The machine's speed drifts by several per cent over minutes (shared
    host); interleaving spreads that drift over every system alike instead of
    favouring whichever ran in a fast minute.
    """
    samples: dict[str, list[Sample]] = {name: [] for name in systems}
    for _ in range(rounds):
        for prompt in PROMPTS:
            for name, generate in systems.items():
                samples[name].append(generate(prompt))
    return {name: summarise(runs) for name, runs in samples.items()}


def aggregate(generate: Generate, streams: int) -> float:
    # Every stream answers the same number of prompts, so each level does
    # equal work per stream; 8 requests at least per level.
    per_stream = max(1, 8 // streams)
    jobs = [
        PROMPTS[(i * per_stream + j) % len(PROMPTS)]
        for i in range(streams)
        for j in range(per_stream)
    ]
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        samples = list(pool.map(generate, jobs))
    return sum(s.tokens for s in samples) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="single-stream passes over prompts")
    parser.add_argument("--instances", type=int, default=2, help="edgefleet model instances")
    parser.add_argument("--sequences", type=int, default=8, help="edgefleet batched sequences")
    args = parser.parse_args()
    threads = os.cpu_count() or 1
    systems = {
        "(a) llama_cpp.Llama in-process": lambda: raw_llama(args.max_tokens, threads),
        f"(b) edgefleet-server gRPC, instance pool ({args.instances} instances)": lambda: edgefleet(
            args.max_tokens, "--batch-sequences", "0", "--instances", str(args.instances)
        ),
        f"(b2) edgefleet-server gRPC, continuous batching ({args.sequences} sequences)": lambda: (
            edgefleet(args.max_tokens, "--batch-sequences", str(args.sequences))
        ),
        "(c) llama_cpp.server HTTP (peer)": lambda: llama_cpp_server(args.max_tokens, threads),
    }
    started: dict[str, tuple[Generate, Callable[[], None]]] = {}
    try:
        for name, start in systems.items():
            print(f"-- {name}: starting", file=sys.stderr, flush=True)
            started[name] = start()
            started[name][0](PROMPTS[0])  # warm-up
        print("-- single stream, interleaved", file=sys.stderr, flush=True)
        single = single_stream({name: gen for name, (gen, _) in started.items()}, args.rounds)
        rows = []
        for name, (generate, _) in started.items():
            levels = {}
            if not name.startswith("(a)"):  # one Llama object serves one request at a time
                for streams in CONCURRENCY:
                    print(f"-- {name}: {streams} concurrent", file=sys.stderr, flush=True)
                    levels[streams] = aggregate(generate, streams)
            rows.append((name, single[name], levels))
    finally:
        for _, stop in started.values():
            stop()

    print(
        f"\nSmolLM2-135M-Instruct Q4_1, {platform.machine()} {threads} cores, "
        f"llama-cpp-python {llama_cpp.__version__}, max_tokens {args.max_tokens}, "
        f"temperature 0, {args.rounds * len(PROMPTS)} single-stream requests per system\n"
    )
    print(
        "| system | single-stream decode tok/s | TTFT p50 ms | TTFT p95 ms | "
        + " | ".join(f"aggregate tok/s @{c}" for c in CONCURRENCY)
        + " |"
    )
    print("|---|---:|---:|---:|" + "---:|" * len(CONCURRENCY))
    for name, single, levels in rows:
        cells = [f"{levels[c]:.1f}" if c in levels else "—" for c in CONCURRENCY]
        print(
            f"| {name} | {single['tps']:.1f} | {single['ttft_p50']:.1f} | "
            f"{single['ttft_p95']:.1f} | " + " | ".join(cells) + " |"
        )
    raw, peer = rows[0], rows[-1]
    for name, single, levels in rows[1:-1]:
        label = name.split(" ", 1)[0]
        loss = 100 * (single["tps"] / raw[1]["tps"] - 1)
        print(
            f"\n{label} vs (a) single-stream: tok/s {loss:+.1f} %,"
            f" TTFT p50 {single['ttft_p50'] - raw[1]['ttft_p50']:+.1f} ms; "
            f"vs (c) aggregate @4: {levels[4] / peer[2][4]:.2f}x"
        )


if __name__ == "__main__":
    main()
