"""RouterCalibration: the typed form of the custom resource's spec, with its one parser.

A RouterCalibration asks for one run of `edgefleet-calibrate` in the cluster (a KubeRay
RayJob): label the prompts of a ConfigMap or PersistentVolumeClaim on the local SmallModels
of one RoutingPolicy, grade them, retrain the complexity classifier, and offer the result to
that policy. The CRD (charts/edgefleet/templates/crds/routercalibrations.yaml) refuses most
bad resources at `kubectl apply`; this parser has the last word, with every default here and
nowhere else. tests/unit/test_calibration_spec.py checks that the CRD's fields and defaults
are exactly these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgefleet.kubeapi.specreader import SpecReader

GRADINGS = ("reference", "judge")
DEFAULT_PROMPTS_FILE = "prompts.jsonl"


class CalibrationSpecError(ValueError):
    """A spec the operator must not act on; the message lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid RouterCalibration: " + "; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ConfigMapPrompts:
    name: str
    key: str = DEFAULT_PROMPTS_FILE


@dataclass(frozen=True)
class ClaimPrompts:
    claim_name: str
    # A path inside the claim.
    path: str = DEFAULT_PROMPTS_FILE


@dataclass(frozen=True)
class Prompts:
    # Exactly one of the two.
    config_map: ConfigMapPrompts | None = None
    persistent_volume_claim: ClaimPrompts | None = None

    def file(self) -> str:
        """The JSONL file's path inside the mounted ConfigMap or claim."""
        if self.config_map is not None:
            return self.config_map.key
        return self.persistent_volume_claim.path if self.persistent_volume_claim else ""


@dataclass(frozen=True)
class CalibrationBudget:
    # Caps on what grading may spend on the cloud; None: the policy's own budget caps.
    max_cloud_tokens: int | None = None
    max_cloud_cost: float | None = None


@dataclass(frozen=True)
class RunPlacement:
    """Where a run's Ray pods (head and workers) are scheduled."""

    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class RouterCalibrationSpec:
    # The RoutingPolicy (same namespace) whose local models and cloud are asked.
    policy: str
    prompts: Prompts
    # reference: match each prompt's reference; judge: the cloud grades the local answer.
    grading: str = "reference"
    # Reference grading without asking the cloud: its answers count as right.
    assume_cloud_correct: bool = False
    budget: CalibrationBudget = field(default_factory=CalibrationBudget)
    # Requests in flight at once, over all local replicas (Ray actors labelling).
    labellers: int = 2
    # Ray worker pods besides the head.
    ray_workers: int = 1
    placement: RunPlacement = field(default_factory=RunPlacement)
    # Answer length, local and cloud.
    max_tokens: int = 48
    # Hours after a finished run before the next one; None: run once per spec change.
    every_hours: int | None = None
    # True: no new run starts (one under way finishes).
    suspend: bool = False


SPEC_FIELDS = (
    "policy",
    "prompts",
    "grading",
    "assumeCloudCorrect",
    "budget",
    "labellers",
    "rayWorkers",
    "placement",
    "maxTokens",
    "everyHours",
    "suspend",
)


def _prompts(reader: SpecReader, spec: Mapping[str, Any]) -> Prompts:
    path = "spec.prompts"
    data = reader.section(spec, "prompts", "spec", ("configMap", "persistentVolumeClaim"))
    config_map = claim = None
    if data.get("configMap") is not None:
        where = f"{path}.configMap"
        found = reader.mapping(data["configMap"], where, ("name", "key"))
        config_map = ConfigMapPrompts(
            name=reader.text(found, "name", where, ""),
            key=reader.text(found, "key", where, DEFAULT_PROMPTS_FILE),
        )
        if not config_map.name:
            reader.problems.append(f"{where}.name: required")
    if data.get("persistentVolumeClaim") is not None:
        where = f"{path}.persistentVolumeClaim"
        found = reader.mapping(data["persistentVolumeClaim"], where, ("claimName", "path"))
        claim = ClaimPrompts(
            claim_name=reader.text(found, "claimName", where, ""),
            path=reader.text(found, "path", where, DEFAULT_PROMPTS_FILE),
        )
        if not claim.claim_name:
            reader.problems.append(f"{where}.claimName: required")
        if claim.path.startswith("/") or ".." in claim.path.split("/"):
            reader.problems.append(
                f"{where}.path: must be a path inside the claim, got {claim.path!r}"
            )
    if (config_map is None) == (claim is None):
        reader.problems.append(f"{path}: give exactly one of configMap, persistentVolumeClaim")
    return Prompts(config_map=config_map, persistent_volume_claim=claim)


def _budget(reader: SpecReader, spec: Mapping[str, Any]) -> CalibrationBudget:
    path = "spec.budget"
    data = reader.section(spec, "budget", "spec", ("maxCloudTokens", "maxCloudCost"))
    return CalibrationBudget(
        max_cloud_tokens=reader.integer(data, "maxCloudTokens", path, None, 1),
        max_cloud_cost=reader.number(data, "maxCloudCost", path, None, lambda v: v > 0, "> 0"),
    )


def _placement(reader: SpecReader, spec: Mapping[str, Any]) -> RunPlacement:
    path = "spec.placement"
    data = reader.section(spec, "placement", "spec", ("nodeSelector", "tolerations"))
    selector = reader.mapping(data.get("nodeSelector"), f"{path}.nodeSelector")
    if not all(isinstance(value, str) for value in selector.values()):
        reader.problems.append(f"{path}.nodeSelector: label values must be strings")
    return RunPlacement(
        node_selector=dict(selector), tolerations=reader.items(data, "tolerations", path, Mapping)
    )


def parse_calibration_spec(spec: Mapping[str, Any]) -> RouterCalibrationSpec:
    """A RouterCalibration's `spec` as typed values, defaults applied.

    Raises CalibrationSpecError listing every problem, each with its field path.
    """
    reader = SpecReader()
    data = reader.mapping(spec, "spec", SPEC_FIELDS)
    policy = reader.text(data, "policy", "spec", "")
    if not policy:
        reader.problems.append("spec.policy: required (a RoutingPolicy in this namespace)")
    base = RouterCalibrationSpec(policy="", prompts=Prompts())
    parsed = RouterCalibrationSpec(
        policy=policy,
        prompts=_prompts(reader, data),
        grading=reader.choice(data, "grading", "spec", base.grading, GRADINGS),
        assume_cloud_correct=reader.flag(
            data, "assumeCloudCorrect", "spec", base.assume_cloud_correct
        ),
        budget=_budget(reader, data),
        labellers=reader.integer(data, "labellers", "spec", base.labellers, 1),
        ray_workers=reader.integer(data, "rayWorkers", "spec", base.ray_workers, 0),
        placement=_placement(reader, data),
        max_tokens=reader.integer(data, "maxTokens", "spec", base.max_tokens, 1),
        every_hours=reader.integer(data, "everyHours", "spec", None, 1),
        suspend=reader.flag(data, "suspend", "spec", base.suspend),
    )
    if parsed.grading == "judge" and parsed.assume_cloud_correct:
        reader.problems.append(
            "spec.assumeCloudCorrect: only for grading reference (judge grading asks the cloud)"
        )
    if reader.problems:
        raise CalibrationSpecError(reader.problems)
    return parsed
