"""Calibrated artefacts are written whole or not at all, and a policy names the one to serve."""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path

import pytest

from edgefleet.calibrate.artefacts import (
    ARTEFACT_FILE,
    LABELS_FILE,
    REPORT_FILE,
    scorer_for,
    write_version,
)
from edgefleet.calibrate.prompts import CalibrationError
from edgefleet.routing.complexity import ARTEFACT_NAME, default_scorer
from edgefleet.routing.policy import PolicyError, parse_policy


def shipped_artefact(version: str) -> dict:
    raw = resources.files("edgefleet.routing").joinpath("models", ARTEFACT_NAME).read_bytes()
    return {**json.loads(gzip.decompress(raw)), "version": version}


def test_a_version_folder_holds_the_artefact_report_and_labels(tmp_path: Path) -> None:
    labels = [{"id": "a", "status": "labelled", "weak": 0.0, "strong": 1.0}]
    path = write_version(tmp_path, "v1", shipped_artefact("v1"), {"promoted": True}, labels)
    assert path == tmp_path / "v1" / ARTEFACT_FILE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1"]
    assert sorted(p.name for p in (tmp_path / "v1").iterdir()) == sorted(
        [ARTEFACT_FILE, REPORT_FILE, LABELS_FILE]
    )
    assert json.loads((tmp_path / "v1" / REPORT_FILE).read_text()) == {"promoted": True}
    policy = parse_policy({"complexity": {"calibration": "v1/" + ARTEFACT_FILE}})
    assert scorer_for(policy, tmp_path).version == "v1"


def test_a_version_is_never_overwritten(tmp_path: Path) -> None:
    write_version(tmp_path, "v1", shipped_artefact("v1"), {}, [])
    before = (tmp_path / "v1" / ARTEFACT_FILE).read_bytes()
    with pytest.raises(CalibrationError, match="already exists"):
        write_version(tmp_path, "v1", shipped_artefact("other"), {}, [])
    assert (tmp_path / "v1" / ARTEFACT_FILE).read_bytes() == before


def test_an_artefact_that_does_not_load_leaves_nothing_behind(tmp_path: Path) -> None:
    broken = {**shipped_artefact("v2"), "format": "something-else"}
    with pytest.raises(ValueError, match="not a complexity artefact"):
        write_version(tmp_path, "v2", broken, {}, [])
    assert list(tmp_path.iterdir()) == []


def test_without_a_calibration_the_shipped_classifier_scores() -> None:
    assert scorer_for(parse_policy({}), None) is default_scorer()


@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "cannot read"), (b"not gzip", "is not a complexity artefact")],
)
def test_a_calibration_that_cannot_be_loaded_is_a_policy_error(
    tmp_path: Path, content: bytes | None, problem: str
) -> None:
    if content is not None:
        (tmp_path / "bad.json.gz").write_bytes(content)
    policy = parse_policy({"complexity": {"calibration": "bad.json.gz"}})
    with pytest.raises(PolicyError, match=f"spec.complexity.calibration: .*{problem}"):
        scorer_for(policy, tmp_path)


def test_the_policy_parser_takes_a_calibration_with_either_threshold_form() -> None:
    policy = parse_policy({"complexity": {"calibration": "/a/b.json.gz", "threshold": 0.4}})
    assert (policy.complexity.calibration, policy.complexity.threshold) == ("/a/b.json.gz", 0.4)
    assert parse_policy({"complexity": {"calibration": "x"}}).complexity.target_cloud_share == 0.3
    with pytest.raises(PolicyError, match=r"spec\.complexity\.calibration: must be"):
        parse_policy({"complexity": {"calibration": ""}})
