"""Why the engines decode from one thread: libgomp's spin throttling, measured.

llama.cpp (built with OpenMP) gives each thread that runs a multi-threaded
decode its own OpenMP team. This decodes 128 greedy tokens from one dedicated
thread, then once from a second thread, then again from the first, and prints
tok/s for each phase. On 2 cores the first thread drops to a third of its
speed once the second team exists.

    .venv/bin/python tests/bench/bench_openmp_threads.py
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import time
from pathlib import Path

import llama_cpp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from edgefleet.serving.model_files import default_model_path

PROMPT = (
    b"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    b"Write a detailed essay about the history of the bicycle.<|im_end|>\n"
    b"<|im_start|>assistant\n"
)


def decode_rate(llama: llama_cpp.Llama, tokens: int = 128) -> float:
    prompt = llama.tokenize(PROMPT, add_bos=True, special=True)
    count, first = 0, None
    for _ in llama.generate(prompt, temp=0.0):
        first = first or time.perf_counter()
        count += 1
        if count == tokens:
            break
    assert first is not None
    return (count - 1) / (time.perf_counter() - first)


def main() -> None:
    threads = os.cpu_count() or 1
    first_thread = concurrent.futures.ThreadPoolExecutor(1)
    second_thread = concurrent.futures.ThreadPoolExecutor(1)
    llama = first_thread.submit(
        lambda: llama_cpp.Llama(
            model_path=str(default_model_path()),
            n_ctx=1024,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
    ).result()
    phases = [
        ("first thread, alone", first_thread),
        ("first thread, alone (again)", first_thread),
        ("second thread (a second OpenMP team now exists)", second_thread),
        ("first thread, after the second team", first_thread),
    ]
    print(f"\nSmolLM2-135M-Instruct Q4_1, {threads} threads per decode, 128 greedy tokens\n")
    print("| phase | decode tok/s |")
    print("|---|---:|")
    for name, thread in phases:
        print(f"| {name} | {thread.submit(decode_rate, llama).result():.1f} |")


if __name__ == "__main__":
    main()
