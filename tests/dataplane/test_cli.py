"""The `edgefleet` CLI and the README's demo, run as a person would run them."""

from __future__ import annotations

import subprocess
import sys

from tests.support.model_server import ModelServer


def edgefleet(server: ModelServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgefleet.serving.cli", "--target", server.target, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_generate_streams_answer_and_summary(model_server: ModelServer) -> None:
    result = edgefleet(
        model_server,
        "generate",
        "What is the capital of France?",
        "--temperature",
        "0",
        "--max-tokens",
        "32",
    )
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert "local/llamacpp/smollm2-135m" in result.stderr
    assert "ttft=" in result.stderr


def test_generate_bad_input_exits_2_with_status_and_field(model_server: ModelServer) -> None:
    result = edgefleet(model_server, "generate", "hi", "--max-tokens", "0")
    assert result.returncode == 2
    assert "INVALID_ARGUMENT: sampling.max_tokens" in result.stderr


def test_models_and_health(model_server: ModelServer) -> None:
    models = edgefleet(model_server, "models")
    assert (
        models.returncode == 0 and "smollm2-135m" in models.stdout and "llamacpp" in models.stdout
    )
    health = edgefleet(model_server, "health", "--wait", "30", "--service", "smollm2-135m")
    assert (health.returncode, health.stdout.strip()) == (0, "SERVING")
    unknown = edgefleet(model_server, "health", "--service", "nope")
    assert unknown.returncode == 2 and "NOT_FOUND" in unknown.stderr


def test_unreachable_target_is_a_clear_error() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgefleet.serving.cli",
            "--target",
            "127.0.0.1:1",
            "--timeout",
            "3",
            "models",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "UNAVAILABLE" in result.stderr


def test_data_plane_demo_streams_answers_and_stops_cleanly() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgefleet.serving.demo"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "==> health: SERVING" in result.stdout
    assert "Paris" in result.stdout
    assert "smollm2-135m" in result.stdout
    assert "stopped" in result.stderr
