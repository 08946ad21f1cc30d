"""vLLM's CPU build in-process, no server: how its options change throughput here.

Starts one AsyncLLM on the converted SmolLM2 and prints start-up time and the
aggregate decode rate at 1, 4 and 16 concurrent requests (128 tokens each,
ignore_eos, temperature 0). Used to choose the test server's settings
(docs/benchmarks.md): compare --dtype float32/bfloat16, --compile, and
VLLM_CPU_NUM_OF_RESERVED_CPU=0 in the environment.

    .venv-vllm/bin/python tests/bench/bench_vllm_options.py [--dtype bfloat16] [--compile]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM

from edgefleet.serving.config import DEFAULT_SYSTEM_PROMPT
from edgefleet.serving.convert_gguf import converted_model, model_for_vllm


async def measure(args: argparse.Namespace) -> None:
    gguf, sha256 = model_for_vllm("default")
    assert sha256 is not None
    started = time.monotonic()
    engine = AsyncLLM.from_engine_args(
        AsyncEngineArgs(
            model=str(converted_model(gguf, sha256)),
            max_model_len=2048,
            max_num_seqs=16,
            dtype=args.dtype,
            enforce_eager=not args.compile,
            kv_cache_memory_bytes=1 << 30,
            disable_log_stats=True,
        )
    )
    print(f"start-up {time.monotonic() - started:.1f}s", flush=True)
    prompt = engine.get_tokenizer().apply_chat_template(
        [
            {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
            {"role": "user", "content": "Write a story about a lighthouse keeper."},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    sampling = SamplingParams(
        max_tokens=128, temperature=0.0, ignore_eos=True, output_kind=RequestOutputKind.DELTA
    )

    async def one() -> int:
        tokens = 0
        async for output in engine.generate(prompt, sampling, request_id=uuid.uuid4().hex):
            tokens += len(output.outputs[0].token_ids)
        return tokens

    try:
        for streams in (1, 4, 16):
            started = time.monotonic()
            counts = await asyncio.gather(*(one() for _ in range(streams)))
            rate = sum(counts) / (time.monotonic() - started)
            print(f"{streams} streams: {rate:.1f} tok/s", flush=True)
    finally:
        engine.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--compile", action="store_true", help="torch.compile (not eager)")
    asyncio.run(measure(parser.parse_args()))


# vLLM's CPU build spawns its engine processes: start-up must sit behind this guard.
if __name__ == "__main__":
    main()
