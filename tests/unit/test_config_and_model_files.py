from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from edgefleet.serving.config import ServerConfig, add_arguments, config_from
from edgefleet.serving.errors import ModelFileError
from edgefleet.serving.model_files import DEFAULT_MODEL_SHA256, default_model_path, resolve_model


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_flag_wins_over_environment_which_wins_over_default() -> None:
    environ = {"EDGEFLEET_BATCH_SEQUENCES": "3", "EDGEFLEET_MAX_QUEUE": "5"}
    config = config_from(parse("--max-queue", "9"), environ)
    assert (config.batch_sequences, config.max_queue) == (3, 9)
    assert config.max_concurrency == 3  # follows the batch size unless set
    assert config_from(parse(), {}).batch_sequences == ServerConfig().batch_sequences


def test_instance_pool_concurrency_follows_instances() -> None:
    config = config_from(parse("--batch-sequences", "0", "--instances", "3"), {})
    assert config.max_concurrency == 3


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match="EDGEFLEET_INSTANCES='many'"):
        config_from(parse(), {"EDGEFLEET_INSTANCES": "many"})


def test_inconsistent_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="default_max_tokens"):
        ServerConfig(default_max_tokens=2000, max_tokens_cap=1000)


def test_default_model_is_found_through_package_metadata_and_verified() -> None:
    path = default_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    model = resolve_model("default", None)
    assert model.path == path
    assert model.sha256 == DEFAULT_MODEL_SHA256


def test_checksum_mismatch_is_refused_with_both_digests(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="refusing to load") as error:
        resolve_model(str(fake), "ab" * 32)
    assert "ab" * 32 in str(error.value)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="does not exist"):
        resolve_model(str(tmp_path / "absent.gguf"), None)
