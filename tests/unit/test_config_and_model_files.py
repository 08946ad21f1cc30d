from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgefleet.serving.config import FrontSettings, ServerConfig, add_arguments, config_from
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


def test_the_batch_follows_the_concurrency_asked_for() -> None:
    config = config_from(parse("--max-concurrency", "8"), {})

    # Eight admitted are eight decoding together, not four and four queued in the engine.
    assert (config.batch_sequences, config.max_concurrency) == (8, 8)
    assert (ServerConfig().batch_sequences, ServerConfig().max_concurrency) == (4, 4)


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        (
            {"batch_sequences": 4, "max_concurrency": 8},
            "--max-concurrency 8 is more than the llamacpp engine decodes at once "
            "(--batch-sequences 4), so the rest would wait inside the engine counted as "
            "running: lower --max-concurrency or raise --batch-sequences",
        ),
        (
            {"batch_sequences": 0, "instances": 2, "max_concurrency": 3},
            "--max-concurrency 3 is more than the llamacpp engine decodes at once "
            "(--instances 2 with --batch-sequences 0)",
        ),
        (
            {"engine": "vllm", "batch_sequences": 16, "max_concurrency": 64},
            "--max-concurrency 64 is more than the vllm engine decodes at once "
            "(--batch-sequences 16)",
        ),
    ],
)
def test_admitting_more_than_the_engine_decodes_is_refused(
    settings: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        ServerConfig(**settings)


def test_admitting_fewer_than_the_engine_decodes_is_fine() -> None:
    config = ServerConfig(batch_sequences=8, max_concurrency=2)

    assert (config.batch_sequences, config.max_concurrency) == (8, 2)


def test_router_and_egress_admit_more_than_their_one_engine_instance() -> None:
    # Their engines answer from elsewhere (model servers, the cloud): no batch to fill.
    config = FrontSettings(max_concurrency=256).server_config("router")

    assert (config.batch_sequences, config.max_concurrency) == (0, 256)


def test_server_refuses_to_start_admitting_more_than_it_decodes() -> None:
    started = subprocess.run(
        [sys.executable, "-m", "edgefleet.serving.server", "--batch-sequences", "4",
         "--max-concurrency", "8", "--listen", "127.0.0.1:0", "--metrics-listen", ""],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert started.returncode == 2
    # One line, naming the flags, before any model is loaded.
    last_line = started.stderr.strip().splitlines()[-1]
    assert last_line.endswith(
        "invalid server settings: --max-concurrency 8 is more than the llamacpp engine decodes "
        "at once (--batch-sequences 4), so the rest would wait inside the engine counted as "
        "running: lower --max-concurrency or raise --batch-sequences"
    )


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
