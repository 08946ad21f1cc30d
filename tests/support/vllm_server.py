"""Start a real edgefleet-server on the vLLM engine (CPU build) with the converted SmolLM2.

For any test that needs a vLLM endpoint: tests/vllm uses it, and so can the
router's tests (a saturated vLLM backend must overflow exactly as a llama.cpp
one). It needs the vLLM environment (`make vllm-env`, run the tests with
.venv-vllm/bin/python); `vllm_available()` says whether this interpreter has it.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator

from tests.support.model_server import ModelServer, spawn_server

# The vLLM server under test: the packaged SmolLM2 (converted once per
# machine), float32 (this CPU has no bfloat16 instructions: bfloat16 decodes
# 2-4x slower), no torch.compile (it adds minutes to start-up for a few per
# cent), a 1 GiB KV cache instead of 90 % of the host's memory.
VLLM_ENGINE_FLAGS = (
    "--engine",
    "vllm",
    "--model",
    "default",
    "--vllm-dtype",
    "float32",
    "--vllm-enforce-eager",
    "1",
    "--vllm-kv-cache-gib",
    "1",
)
# vLLM's engine start takes ~30 s here, the first conversion of the model ~30 s more.
VLLM_START_TIMEOUT_S = 300.0


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


@contextlib.contextmanager
def running_vllm_server(*flags: str, env: dict[str, str] | None = None) -> Iterator[ModelServer]:
    """A vLLM-engine server with `flags` after the engine flags (later flags win)."""
    server = spawn_server(*VLLM_ENGINE_FLAGS, *flags, env=env)
    server.label = "vllm"
    try:
        server.wait_serving(VLLM_START_TIMEOUT_S)
        yield server
    finally:
        server.stop()
