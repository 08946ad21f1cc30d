"""vLLM engine tests: real edgefleet-server processes on vLLM's CPU build and the converted SmolLM2.

They run in the vLLM environment (`make test-vllm`, part of `make test`):
`.venv-vllm/bin/python -m pytest tests/vllm`. The main environment has no
vLLM, so its `pytest` run leaves this folder out; the vLLM run fails (pytest
exit 5) should it ever collect nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.model_server import ModelServer, running_server
from tests.support.vllm_server import running_vllm_server, vllm_available

if not vllm_available():
    collect_ignore_glob = ["test_*.py"]

# Both engines get the same limits, so the same requests meet the same rules.
SHARED_FLAGS = ("--context-length", "2048", "--max-tokens-cap", "512", "--max-queue", "16")
# 16 sequences batched by vLLM, all admitted at once.
VLLM_FLAGS = (*SHARED_FLAGS, "--batch-sequences", "16", "--max-concurrency", "16")
LLAMACPP_FLAGS = (*SHARED_FLAGS, "--batch-sequences", "4")


@pytest.fixture(scope="session")
def vllm_server() -> Iterator[ModelServer]:
    """edgefleet-server --engine vllm on the converted SmolLM2, for the whole session."""
    with running_vllm_server(*VLLM_FLAGS) as server:
        yield server


@pytest.fixture(scope="session")
def llamacpp_server() -> Iterator[ModelServer]:
    """The llama.cpp engine on the same model, to compare against."""
    with running_server(*LLAMACPP_FLAGS) as server:
        server.label = "llamacpp"
        yield server
