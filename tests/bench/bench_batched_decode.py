"""How much would llama.cpp multi-sequence batching add on this machine?

Decodes N sequences of the same prompt together in one llama.cpp context
(low-level API, greedy, no server, no Python per-token work beyond sampling)
and prints aggregate decode tok/s for N = 1, 2, 4, 8. The gap between N = 1
and N = 4 bounds what continuous batching could add to edgefleet-server's
aggregate throughput for this model on this CPU.

    .venv/bin/python tests/bench/bench_batched_decode.py [--tokens 128]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time
from pathlib import Path

import llama_cpp as llama

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from edgefleet.serving.model_files import default_model_path

PROMPT = (
    b"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    b"Write a detailed essay about the history of the bicycle.<|im_end|>\n"
    b"<|im_start|>assistant\n"
)


def measure(model: llama.llama_model_p, sequences: int, tokens: int, threads: int) -> float:
    params = llama.llama_context_default_params()
    params.n_ctx = 1024 * sequences
    params.n_batch = params.n_ubatch = 512
    params.n_seq_max = sequences
    params.n_threads = params.n_threads_batch = threads
    ctx = llama.llama_init_from_model(model, params)
    vocab = llama.llama_model_get_vocab(model)
    buffer = (llama.llama_token * 512)()
    count = llama.llama_tokenize(vocab, PROMPT, len(PROMPT), buffer, 512, True, True)
    prompt = list(buffer[:count])
    batch = llama.llama_batch_init(512, 0, sequences)
    samplers = []
    for _ in range(sequences):
        chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
        llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_greedy())
        samplers.append(chain)

    def add(token: int, position: int, sequence: int, logits: bool) -> None:
        i = batch.n_tokens
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, position, 1
        batch.seq_id[i][0], batch.logits[i] = sequence, logits
        batch.n_tokens += 1

    batch.n_tokens = 0
    last_logits = {}
    for sequence in range(sequences):
        for position, token in enumerate(prompt):
            add(token, position, sequence, position == len(prompt) - 1)
        last_logits[sequence] = batch.n_tokens - 1
    if llama.llama_decode(ctx, batch) != 0:
        raise RuntimeError("prefill failed")
    position = len(prompt)
    started = time.perf_counter()
    for _ in range(tokens):
        sampled = [
            llama.llama_sampler_sample(samplers[s], ctx, last_logits[s]) for s in range(sequences)
        ]
        batch.n_tokens = 0
        for sequence, token in enumerate(sampled):
            add(token, position, sequence, True)
            last_logits[sequence] = sequence
        position += 1
        if llama.llama_decode(ctx, batch) != 0:
            raise RuntimeError("decode failed")
    elapsed = time.perf_counter() - started
    for sampler in samplers:
        llama.llama_sampler_free(sampler)
    llama.llama_batch_free(batch)
    llama.llama_free(ctx)
    return sequences * tokens / elapsed


@llama.llama_log_callback
def _quiet(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """llama.cpp logs every tensor it loads; the table is what matters here."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    threads = os.cpu_count() or 1
    llama.llama_log_set(_quiet, ctypes.c_void_p(0))
    llama.llama_backend_init()
    model = llama.llama_model_load_from_file(
        str(default_model_path()).encode(), llama.llama_model_default_params()
    )
    results = {n: measure(model, n, args.tokens, threads) for n in (1, 2, 4, 8)}
    llama.llama_model_free(model)
    print(
        f"\nSmolLM2-135M-Instruct Q4_1, {threads} threads, {args.tokens} tokens per sequence,"
        f" greedy, llama-cpp-python {llama.__version__}\n"
    )
    print("| sequences decoded together | aggregate decode tok/s | vs 1 |")
    print("|---:|---:|---:|")
    for n, rate in results.items():
        print(f"| {n} | {rate:.1f} | {rate / results[1]:.2f}x |")


if __name__ == "__main__":
    main()
