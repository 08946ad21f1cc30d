"""`edgefleet calibrate` refuses bad input with one clear line, before asking anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgefleet.serving.cli import main as edgefleet
from edgefleet.serving.readiness import free_local_port


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text("kind: RoutingPolicy\nspec: {}\n")
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit) as exited:
        edgefleet(["calibrate", *args])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgefleet calibrate: ") and "\n" not in err
    return err


def prompts(tmp_path: Path, *rows: object) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows))
    return path


def test_a_bad_prompt_file_is_refused_naming_the_line(
    tmp_path: Path, policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = prompts(tmp_path, {"id": "a", "prompt": "x", "reference": 1}, "{oops")
    err = run(capsys, "--policy", str(policy), "--prompts", str(source), "--local", "h:1",
              "--assume-cloud-correct", "--out", str(tmp_path / "out"))  # fmt: skip
    assert "line 2: not JSON" in err
    assert not (tmp_path / "out").exists()


def test_reference_grading_without_references_is_refused(
    tmp_path: Path, policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = prompts(
        tmp_path, {"id": "a", "prompt": "x", "reference": 1}, {"id": "b", "prompt": "y"}
    )
    err = run(capsys, "--policy", str(policy), "--prompts", str(source), "--local", "h:1",
              "--assume-cloud-correct")  # fmt: skip
    assert "missing on 1: b" in err


def test_grading_the_cloud_needs_the_egress(
    tmp_path: Path, policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = prompts(tmp_path, {"id": "a", "prompt": "x"})
    err = run(capsys, "--policy", str(policy), "--prompts", str(source), "--local", "h:1",
              "--grading", "judge")  # fmt: skip
    assert "--grading judge asks the cloud: give --cloud" in err


def test_an_unreachable_endpoint_is_named_and_nothing_is_written(
    tmp_path: Path, policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = prompts(tmp_path, {"id": "a", "prompt": "x", "reference": 1})
    nowhere = f"127.0.0.1:{free_local_port()}"
    err = run(capsys, "--policy", str(policy), "--prompts", str(source), "--local", nowhere,
              "--assume-cloud-correct", "--out", str(tmp_path / "out"))  # fmt: skip
    assert f"local model {nowhere} is unreachable" in err and "nothing written" in err
    assert not (tmp_path / "out").exists()


def test_a_bad_policy_is_refused_with_the_parsers_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("spec:\n  complexity: {calibration: 3}\n")
    source = prompts(tmp_path, {"id": "a", "prompt": "x", "reference": 1})
    err = run(capsys, "--policy", str(bad), "--prompts", str(source), "--local", "h:1")
    assert "spec.complexity.calibration: must be a calibrated artefact's path" in err
