"""The RouterCalibration spec parser: defaults in one place, problems by field, the CRD agreeing."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from edgefleet.operator.calibration_spec import (
    SPEC_FIELDS,
    CalibrationBudget,
    CalibrationSpecError,
    ClaimPrompts,
    ConfigMapPrompts,
    Prompts,
    RouterCalibrationSpec,
    RunPlacement,
    parse_calibration_spec,
)
from tests.unit.test_operator_spec import ROOT, assert_schema_is_the_parsers

CRD_TEMPLATE = ROOT / "charts" / "edgefleet" / "templates" / "crds" / "routercalibrations.yaml"
FROM_CONFIG_MAP = {"configMap": {"name": "tasks"}}
TOLERATION = {"key": "edge", "operator": "Exists", "effect": "NoSchedule"}


def crd_spec_schema() -> dict[str, Any]:
    comment = re.compile(r"\{\{-?\s*/\*.*?\*/\s*-?\}\}", flags=re.DOTALL)
    text = comment.sub("", CRD_TEMPLATE.read_text(encoding="utf-8"))
    crd = yaml.safe_load("\n".join(line for line in text.splitlines() if "{{" not in line))
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]


def test_the_crd_fields_and_defaults_are_the_parsers() -> None:
    schema = crd_spec_schema()

    assert tuple(schema["properties"]) == SPEC_FIELDS
    assert set(schema["required"]) == {"policy", "prompts"}
    assert_schema_is_the_parsers(schema, RouterCalibrationSpec, "spec")


def test_a_minimal_spec_gets_every_default() -> None:
    assert parse_calibration_spec({"policy": "p", "prompts": FROM_CONFIG_MAP}) == (
        RouterCalibrationSpec(
            policy="p",
            prompts=Prompts(config_map=ConfigMapPrompts("tasks", "prompts.jsonl")),
            grading="reference",
            assume_cloud_correct=False,
            budget=CalibrationBudget(None, None),
            labellers=2,
            ray_workers=1,
            placement=RunPlacement({}, ()),
            max_tokens=48,
            every_hours=None,
            suspend=False,
        )
    )


def test_a_full_spec_is_read_field_by_field() -> None:
    spec = {
        "policy": "p",
        "prompts": {"persistentVolumeClaim": {"claimName": "data", "path": "sets/a.jsonl"}},
        "grading": "judge",
        "budget": {"maxCloudTokens": 5000, "maxCloudCost": 0.5},
        "labellers": 4,
        "rayWorkers": 0,
        "placement": {"nodeSelector": {"pool": "edge"}, "tolerations": [TOLERATION]},
        "maxTokens": 64,
        "everyHours": 24,
        "suspend": True,
    }

    parsed = parse_calibration_spec(spec)

    assert parsed.prompts == Prompts(persistent_volume_claim=ClaimPrompts("data", "sets/a.jsonl"))
    assert parsed.prompts.file() == "sets/a.jsonl"
    assert (parsed.grading, parsed.budget) == ("judge", CalibrationBudget(5000, 0.5))
    assert (parsed.labellers, parsed.ray_workers, parsed.max_tokens) == (4, 0, 64)
    assert parsed.placement == RunPlacement({"pool": "edge"}, (TOLERATION,))
    assert (parsed.every_hours, parsed.suspend) == (24, True)


def given(**more: Any) -> dict[str, Any]:
    return {"policy": "p", "prompts": FROM_CONFIG_MAP, **more}


CLAIM = {"claimName": "c"}


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"prompts": FROM_CONFIG_MAP}, r"spec\.policy: required"),
        ({"policy": "p"}, r"spec\.prompts: give exactly one of configMap, persistentVolumeClaim"),
        (given(prompts={**FROM_CONFIG_MAP, "persistentVolumeClaim": CLAIM}), r"exactly one"),
        (given(prompts={"configMap": {}}), r"spec\.prompts\.configMap\.name: required"),
        (
            given(prompts={"persistentVolumeClaim": {**CLAIM, "path": "../x"}}),
            r"\.path: must be a path inside the claim",
        ),
        (given(grading="vibes"), r"spec\.grading: must be one of"),
        (
            given(grading="judge", assumeCloudCorrect=True),
            r"assumeCloudCorrect: only for grading reference",
        ),
        (given(labellers=0), r"spec\.labellers: must be an integer >= 1"),
        (given(budget={"maxCloudCost": 0}), r"maxCloudCost: must be a number > 0"),
        (given(schedule="daily"), r"spec\.schedule: unknown field"),
    ],
)
def test_each_problem_names_its_field(spec: dict[str, Any], problem: str) -> None:
    with pytest.raises(CalibrationSpecError, match=problem):
        parse_calibration_spec(spec)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(CalibrationSpecError) as caught:
        parse_calibration_spec({"grading": "x", "maxTokens": 0})

    assert len(caught.value.problems) == 4  # policy, prompts, grading, maxTokens
