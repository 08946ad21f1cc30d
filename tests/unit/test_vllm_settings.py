"""The vLLM engine's settings and model lookup, without vLLM installed."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from edgefleet.serving.config import ServerConfig, add_arguments, config_from
from edgefleet.serving.convert_gguf import converted_dir, model_for_vllm
from edgefleet.serving.errors import ModelFileError
from edgefleet.serving.model_files import DEFAULT_MODEL_SHA256, default_model_path
from edgefleet.serving.server import build_engine


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_vllm_options_come_from_flags_and_environment() -> None:
    environ = {"EDGEFLEET_ENGINE": "vllm", "EDGEFLEET_VLLM_DTYPE": "bfloat16"}
    config = config_from(
        parse("--vllm-kv-cache-gib", "1.5", "--vllm-tensor-parallel-size", "2"), environ
    )
    assert (config.engine, config.vllm_dtype) == ("vllm", "bfloat16")
    assert (config.vllm_kv_cache_gib, config.vllm_tensor_parallel_size) == (1.5, 2)
    assert (config.vllm_gpu_memory_utilization, config.vllm_enforce_eager) == (0.9, 0)


def test_vllm_batches_64_sequences_unless_told_otherwise() -> None:
    # vLLM's max_num_seqs is batch_sequences: a GPU is built for many at once.
    assert (ServerConfig(engine="vllm").batch_sequences, ServerConfig().batch_sequences) == (64, 4)
    assert ServerConfig(engine="vllm").max_concurrency == 64
    # Asked to admit 128, it decodes 128 together.
    config = config_from(parse("--engine", "vllm", "--max-concurrency", "128"), {})
    assert (config.batch_sequences, config.max_concurrency) == (128, 128)


def test_vllm_kv_cache_is_sized_from_the_gpu_share_by_default() -> None:
    config = ServerConfig(engine="vllm")

    assert (config.vllm_gpu_memory_utilization, config.vllm_kv_cache_gib) == (0.9, 0.0)


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"engine": "vllm", "batch_sequences": 0}, "batch_sequences"),
        ({"vllm_gpu_memory_utilization": 1.5}, "vllm_gpu_memory_utilization"),
        ({"vllm_gpu_memory_utilization": 0.0}, "vllm_gpu_memory_utilization"),
        ({"vllm_kv_cache_gib": -1.0}, "vllm_kv_cache_gib"),
        ({"vllm_tensor_parallel_size": 0}, "vllm_tensor_parallel_size"),
    ],
)
def test_bad_vllm_settings_are_refused(settings: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        ServerConfig(**settings)  # type: ignore[arg-type]


def test_default_model_for_vllm_is_the_checked_packaged_gguf() -> None:
    path, sha256 = model_for_vllm("default")
    assert (path, sha256) == (default_model_path(), DEFAULT_MODEL_SHA256)


def test_gguf_for_vllm_with_wrong_checksum_is_refused() -> None:
    with pytest.raises(ModelFileError, match="refusing to load"):
        model_for_vllm(str(default_model_path()), "0" * 64)


def test_hugging_face_folder_is_used_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert model_for_vllm(str(tmp_path)) == (tmp_path, None)


def test_folder_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match=r"no config\.json"):
        model_for_vllm(str(tmp_path))


def test_conversions_are_cached_by_source_checksum(tmp_path: Path) -> None:
    assert converted_dir(DEFAULT_MODEL_SHA256, tmp_path) == tmp_path / "b179c9523d0e6a0f-hf"


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_vllm_engine_without_vllm_installed_says_how_to_get_it() -> None:
    with pytest.raises(ValueError, match=r"edgefleet\[vllm\]"):
        build_engine(ServerConfig(engine="vllm"))
