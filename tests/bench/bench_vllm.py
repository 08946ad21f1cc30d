"""vLLM engine (CPU build): concurrency curve, 64 sequences against the old cap of 4.

edgefleet-server processes on the packaged SmolLM2, started side by side and
measured with the same gRPC client:

- vLLM with the server's default for it: 64 sequences decoded together
  (max_num_seqs 64, 64 admitted at once);
- vLLM capped as before: `--batch-sequences 4 --max-concurrency 4`;
- llama.cpp, continuous batching with its default 4 sequences (reference).

At 1, 4, 16, 32 and 64 concurrent gRPC streams (max(streams, 4) requests per
level; every server queues up to 64): aggregate tok/s (all completion tokens
over the level's wall time), client-side time to first text p50, and the peak
of the server's `vllm:num_requests_running` gauge, read from its /metrics every
0.2 s while the level runs: it shows how many requests the engine really ran
at once. Every answer is exactly --max-tokens long (ignore_eos), temperature 0;
levels are interleaved across servers round by round. Prints a markdown table
(paste it into docs/benchmarks.md).

    .venv-vllm/bin/python tests/bench/bench_vllm.py [--max-tokens 128] [--rounds 1]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import platform
import re
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from edgefleet.v1 import inference_pb2 as pb
from tests.support.model_server import ModelServer, spawn_server
from tests.support.prompts import LONG_ANSWER_PROMPTS
from tests.support.vllm_server import VLLM_ENGINE_FLAGS, VLLM_START_TIMEOUT_S

PROMPTS = LONG_ANSWER_PROMPTS
LEVELS = (1, 4, 16, 32, 64)
COMMON = ("--context-length", "2048", "--max-queue", "64")
RUNNING = re.compile(r"^vllm:num_requests_running(?:\{[^}]*\})?\s+([0-9.eE+-]+)", re.M)


@dataclass
class Sample:
    ttft_s: float
    tokens: int


@dataclass
class Level:
    seconds: float = 0.0
    tokens: int = 0
    ttfts: list[float] = field(default_factory=list)
    peak_running: int = 0


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


def running_now(metrics_url: str) -> int:
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    return int(sum(float(value) for value in RUNNING.findall(text)))


def run_level(
    generate: Generate, streams: int, requests: int, metrics_url: str
) -> tuple[float, list[Sample], int]:
    """Wall time, samples and the peak of vllm:num_requests_running seen meanwhile."""
    jobs = [PROMPTS[i % len(PROMPTS)] for i in range(requests)]
    done = threading.Event()
    peak = 0

    def watch() -> None:
        nonlocal peak
        while not done.wait(0.2):
            with contextlib.suppress(OSError):  # a scrape that failed misses one sample
                peak = max(peak, running_now(metrics_url))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.perf_counter()
    try:
        with concurrent.futures.ThreadPoolExecutor(streams) as pool:
            samples = list(pool.map(generate, jobs))
    finally:
        done.set()
        watcher.join(10)
    return time.perf_counter() - start, samples, peak


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)),
                        help="concurrent streams per level, comma-separated")
    parser.add_argument("--skip", action="append", default=[],
                        help="leave out servers whose name contains this (repeatable)")
    parser.add_argument("--start-timeout", type=float, default=VLLM_START_TIMEOUT_S,
                        help="seconds each server may take to report SERVING")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    levels = tuple(int(n) for n in args.levels.split(","))
    candidates = {
        "vLLM, 64 sequences (default)": (*VLLM_ENGINE_FLAGS,),
        "vLLM, 4 sequences (the old cap)": (
            *VLLM_ENGINE_FLAGS, "--batch-sequences", "4", "--max-concurrency", "4",
        ),
        "llama.cpp, batching, 4 sequences (default)": (
            "--batch-sequences", "4", "--max-concurrency", "4",
        ),
    }
    systems = {name: flags for name, flags in candidates.items()
               if not any(skip in name for skip in args.skip)}
    servers: dict[str, ModelServer] = {}
    try:
        for name, flags in systems.items():
            print(f"-- {name}: starting", file=sys.stderr, flush=True)
            started = time.monotonic()
            servers[name] = spawn_server(*COMMON, *flags)
            servers[name].wait_serving(args.start_timeout)
            print(f"   serving after {time.monotonic() - started:.1f}s", file=sys.stderr)
        generators = {name: client(server, args.max_tokens) for name, server in servers.items()}
        for generate in generators.values():
            generate(PROMPTS[0])  # warm-up
        results = {name: {n: Level() for n in levels} for name in systems}
        for round_ in range(args.rounds):
            for streams in levels:
                requests = max(streams, 4)
                for name, generate in generators.items():
                    seconds, samples, peak = run_level(
                        generate, streams, requests, servers[name].metrics_url
                    )
                    level = results[name][streams]
                    level.seconds += seconds
                    level.tokens += sum(s.tokens for s in samples)
                    level.ttfts.extend(s.ttft_s for s in samples)
                    level.peak_running = max(level.peak_running, peak)
                    print(
                        f"   round {round_ + 1} {name} @{streams}: "
                        f"{sum(s.tokens for s in samples) / seconds:.1f} tok/s, "
                        f"running peak {peak}",
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
        f"(ignore_eos), temperature 0, {args.rounds} rounds, max(streams, 4) requests per "
        "level\n"
    )
    print("| server | streams | aggregate tok/s | TTFT p50 ms | peak vllm:num_requests_running |")
    print("|---|---:|---:|---:|---:|")
    for name in systems:
        for streams in levels:
            level = results[name][streams]
            print(
                f"| {name} | {streams} | {level.tokens / level.seconds:.1f} | "
                f"{percentile(level.ttfts, 0.5) * 1000:.0f} | {level.peak_running} |"
            )
    top = max(levels)
    for name in systems:
        single = results[name][levels[0]]
        most = results[name][top]
        print(
            f"\n{name}: {top} streams give "
            f"{(most.tokens / most.seconds) / (single.tokens / single.seconds):.2f}x "
            f"its {levels[0]}-stream rate"
        )


if __name__ == "__main__":
    main()
