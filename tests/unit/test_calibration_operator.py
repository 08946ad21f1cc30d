"""RouterCalibration in the operator: the run's RayJob, its outcome, and what the router gets."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import shlex
from typing import Any

import pytest
import yaml

from edgefleet.calibrate.main import _destination, parser
from edgefleet.calibrate.publish import Destination, PublishError, result_config_map
from edgefleet.operator.builders import calibration as build
from edgefleet.operator.builders import routingpolicy as rp
from edgefleet.operator.calibration_spec import parse_calibration_spec
from edgefleet.operator.calibration_status import (
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    calibration_status,
    conditions,
    due,
    figures,
    outcome,
    seconds_until_due,
)
from edgefleet.operator.config import OperatorConfig

NS = "edge"
CONFIG = OperatorConfig()
OWNER = {"name": "tune", "namespace": NS, "uid": "u-1"}
WHERE = Destination(NS, "tune-1-result", "tune", "u-1")
NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)


def spec(**more: Any):
    return parse_calibration_spec(
        {"policy": "hybrid", "prompts": {"configMap": {"name": "tasks"}}, **more}
    )


def rayjob(**more: Any) -> dict[str, Any]:
    return build.build_rayjob(OWNER, spec(**more), 3, ["smollm2", "phi"], True, CONFIG)


def driver_args(job: dict[str, Any]) -> Any:
    command = shlex.split(job["spec"]["entrypoint"])
    assert command[0] == "edgefleet-calibrate"
    return parser().parse_args(command[1:])


def test_the_driver_command_is_one_the_calibrate_cli_accepts() -> None:
    args = driver_args(rayjob())

    assert args.policy.as_posix() == "/etc/edgefleet/calibration/policy/policy.yaml"
    assert args.prompts.as_posix() == "/var/run/edgefleet/prompts/prompts.jsonl"
    assert args.local == "smollm2.edge.svc:50051,phi.edge.svc:50051"
    assert args.cloud == "hybrid-egress.edge.svc:50051"
    assert (args.grading, args.workers, args.max_tokens) == ("reference", 2, 48)
    assert args.ray_address == "auto"
    assert _destination(args) == Destination(NS, "tune-3-result", "tune", "u-1")


def test_assuming_the_cloud_right_never_gives_the_driver_the_cloud() -> None:
    args = driver_args(rayjob(assumeCloudCorrect=True, budget={"maxCloudTokens": 900}))

    assert args.assume_cloud_correct and args.cloud is None
    assert args.max_cloud_tokens == 900


def test_a_run_is_tried_once_and_its_cluster_goes_with_it() -> None:
    job = rayjob()

    assert job["metadata"]["name"] == "tune-3"
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["submitterConfig"] == {"backoffLimit": 0}
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert job["spec"]["submissionMode"] == "K8sJobMode"


def test_pods_carry_the_labels_the_egress_lets_in_and_mount_what_the_driver_reads() -> None:
    cluster = rayjob(rayWorkers=2)["spec"]["rayClusterSpec"]
    head, (workers,) = cluster["headGroupSpec"], cluster["workerGroupSpecs"]
    egress_admits = rp.build_egress_network_policy("hybrid", NS)["spec"]["ingress"][0]["from"]
    selectors = [rule["podSelector"]["matchLabels"] for rule in egress_admits]

    for group in (head, workers):
        labels = group["template"]["metadata"]["labels"]
        assert any(selector.items() <= labels.items() for selector in selectors[1:])
        assert group["template"]["spec"]["serviceAccountName"] == "tune-calibration"
        (container,) = group["template"]["spec"]["containers"]
        assert container["image"] == CONFIG.calibration_image
        assert "tcpSocket" in container["readinessProbe"]  # KubeRay's own call wget
    head_volumes = {v["name"]: v for v in head["template"]["spec"]["volumes"]}
    assert head_volumes["policy"] == {"name": "policy", "configMap": {"name": "hybrid-router"}}
    assert head_volumes["prompts"] == {"name": "prompts", "configMap": {"name": "tasks"}}
    assert [v["name"] for v in workers["template"]["spec"]["volumes"]] == ["dshm"]
    assert (workers["replicas"], workers["minReplicas"], workers["maxReplicas"]) == (2, 2, 2)


def test_every_ray_pod_goes_where_the_placement_says() -> None:
    toleration = {"key": "edge", "operator": "Exists", "effect": "NoSchedule"}
    placement = {"nodeSelector": {"pool": "edge"}, "tolerations": [toleration]}
    cluster = rayjob(placement=placement)["spec"]["rayClusterSpec"]

    for group in (cluster["headGroupSpec"], *cluster["workerGroupSpecs"]):
        pod = group["template"]["spec"]
        assert (pod["nodeSelector"], pod["tolerations"]) == ({"pool": "edge"}, [toleration])


def test_prompts_on_a_claim_are_mounted_read_only_and_no_workers_means_head_only() -> None:
    prompts = {"persistentVolumeClaim": {"claimName": "data", "path": "sets/a.jsonl"}}
    job = build.build_rayjob(OWNER, spec(prompts=prompts, rayWorkers=0), 1, ["m"], True, CONFIG)
    cluster = job["spec"]["rayClusterSpec"]
    volumes = {v["name"]: v for v in cluster["headGroupSpec"]["template"]["spec"]["volumes"]}

    assert volumes["prompts"]["persistentVolumeClaim"] == {"claimName": "data", "readOnly": True}
    assert driver_args(job).prompts.as_posix() == "/var/run/edgefleet/prompts/sets/a.jsonl"
    assert cluster["workerGroupSpecs"] == []


def test_the_run_identity_is_bound_to_the_calibration_role_only() -> None:
    account, binding = build.build_identity("tune", NS, "hybrid", CONFIG)

    assert account["kind"] == "ServiceAccount" and account["metadata"]["name"] == "tune-calibration"
    assert binding["roleRef"]["name"] == CONFIG.calibration_cluster_role
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "tune-calibration", "namespace": NS}
    ]


# --- when a run is due ------------------------------------------------------------------
def test_the_first_run_and_a_changed_spec_are_due_a_suspended_one_never() -> None:
    assert due(spec(), 1, {}, NOW) == "first run"
    assert due(spec(), 2, {"runNumber": 1, "observedGeneration": 1}, NOW) == "the spec changed"
    assert due(spec(), 1, {"runNumber": 1, "observedGeneration": 1}, NOW) is None
    assert due(spec(suspend=True), 2, {}, NOW) is None


def test_a_schedule_asks_again_hours_after_the_last_run_finished() -> None:
    status = {"runNumber": 1, "observedGeneration": 1, "completionTime": "2026-12-07T02:00:00Z"}

    assert due(spec(everyHours=12), 1, status, NOW) is None
    assert seconds_until_due(spec(everyHours=12), status, NOW) == 2 * 3600
    assert due(spec(everyHours=10), 1, status, NOW) == "10 h since the last run finished"
    assert seconds_until_due(spec(), status, NOW) is None


# --- what a run came to ------------------------------------------------------------------
REPORT = {
    "version": "calibrated-1+x",
    "promoted": True,
    "labels": 200,
    "held_out": 60,
    "prompts": {"kept_local_by_privacy_gate": 3},
    "cloud": {"calls": 0, "tokens": 0, "cost": 0.0},
    "labelling": {"workers": 2, "seconds": 40.0, "labels_per_second": 5.0},
    "shipped": {"version": "s", "apgr": 0.51234, "cpt50": 0.4, "cpt80": 0.7},
    "calibrated": {"version": "calibrated-1+x", "apgr": 0.6, "cpt50": 0.3, "cpt80": 0.6},
}
ARTEFACT = gzip.compress(b'{"version": "calibrated-1+x"}')


def test_a_published_result_is_the_runs_success_whatever_the_rayjob_says() -> None:
    result = result_config_map(WHERE, artefact=ARTEFACT, report=REPORT)

    found = outcome("tune-1", {"status": {"jobStatus": "RUNNING"}}, result)

    assert (found.phase, found.reason) == (SUCCEEDED, "Calibrated")
    assert figures(found.report)["shipped"]["apgr"] == 0.5123
    assert figures(found.report)["keptLocal"] == 3
    assert figures(found.report)["labelling"] == {"seconds": 40.0, "labelsPerSecond": 5.0}
    assert base64.b64decode(result["binaryData"]["complexity.json.gz"]) == ARTEFACT
    assert result["metadata"]["ownerReferences"][0]["uid"] == "u-1"


def test_a_published_error_is_the_runs_failure_with_its_reason() -> None:
    result = result_config_map(WHERE, error="invalid prompt file: line 3", reason="BadPromptFile")

    found = outcome("tune-1", None, result)

    assert (found.phase, found.reason, found.message) == (
        FAILED,
        "BadPromptFile",
        "invalid prompt file: line 3",
    )


@pytest.mark.parametrize(
    ("status", "phase", "reason"),
    [
        ({}, PENDING, "Starting"),
        ({"jobDeploymentStatus": "Initializing"}, PENDING, "Starting"),
        ({"jobStatus": "RUNNING", "jobDeploymentStatus": "Running"}, RUNNING, "Labelling"),
        ({"jobStatus": "FAILED", "message": "exit 137"}, FAILED, "JobFailed"),
        ({"jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded"}, FAILED, "JobFailed"),
        ({"jobStatus": "SUCCEEDED"}, FAILED, "JobFailed"),  # and yet no result
    ],
)
def test_without_a_result_the_rayjob_says_where_the_run_is(
    status: dict[str, Any], phase: str, reason: str
) -> None:
    found = outcome("tune-1", {"status": status}, None)

    assert (found.phase, found.reason) == (phase, reason)


def test_a_vanished_rayjob_without_a_result_is_a_lost_run() -> None:
    assert outcome("tune-1", None, None).reason == "JobLost"


def test_a_result_that_is_not_one_fails_the_run() -> None:
    bad = {"data": {"report.json": "{not json"}, "binaryData": {}}

    assert outcome("tune-1", None, bad).reason == "BadResult"


def test_a_result_larger_than_a_configmap_is_refused_before_sending() -> None:
    with pytest.raises(PublishError, match="more than a ConfigMap holds"):
        result_config_map(WHERE, artefact=b"x" * (1024 * 1024), report=REPORT)


def test_conditions_keep_the_promoted_artefact_through_a_failed_run() -> None:
    promoted = {"version": "calibrated-1+x", "configMap": "tune-1-result", "run": "tune-1"}

    found = conditions(FAILED, "BudgetExhausted", "ran out", promoted, 2, [], "t")

    by_type = {c["type"]: (c["status"], c["reason"]) for c in found}
    assert by_type == {
        "Complete": ("False", FAILED),
        "Failed": ("True", "BudgetExhausted"),
        "Promoted": ("True", "Better"),
    }


# --- what the router gets ----------------------------------------------------------------
def policy_spec(calibration: str | None) -> dict[str, Any]:
    complexity = {"threshold": 0.5}
    if calibration:
        complexity["calibration"] = calibration
    return {"local": {"targets": [{"smallModel": "smollm2"}]}, "complexity": complexity}


def served(config_map: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(config_map["data"]["policy.yaml"])["spec"]["complexity"]


def test_a_promoted_artefact_travels_beside_the_policy_that_points_at_it() -> None:
    artefact = rp.ServedArtefact("calibrated-1+x", base64.b64encode(ARTEFACT).decode())

    config_map = rp.build_config_map("hybrid", NS, policy_spec("tune"), artefact)

    assert served(config_map) == {"threshold": 0.5, "calibration": "complexity.json.gz"}
    assert config_map["binaryData"] == {"complexity.json.gz": artefact.data}
    assert config_map["metadata"]["annotations"] == {rp.CLASSIFIER_ANNOTATION: "calibrated-1+x"}


def test_without_a_promoted_artefact_the_router_scores_with_the_shipped_classifier() -> None:
    config_map = rp.build_config_map("hybrid", NS, policy_spec("tune"), None)

    assert served(config_map) == {"threshold": 0.5}
    assert "binaryData" not in config_map


def test_a_policy_naming_no_calibration_gets_no_artefact_even_if_offered() -> None:
    artefact = rp.ServedArtefact("v", "eA==")

    config_map = rp.build_config_map("hybrid", NS, policy_spec(None), artefact)

    assert served(config_map) == {"threshold": 0.5}
    assert "binaryData" not in config_map
    assert json.dumps(config_map).count("eA==") == 0


def test_only_the_calibrations_own_pods_and_kuberay_reach_its_ray_pods() -> None:
    policy = build.build_network_policy("tune", NS, "hybrid", [("10.0.0.1", 6443)])
    job = rayjob()
    cluster = job["spec"]["rayClusterSpec"]
    own, job_api = policy["spec"]["ingress"]

    assert policy["spec"]["policyTypes"] == ["Ingress"]
    selected = policy["spec"]["podSelector"]["matchLabels"]
    templates = [cluster["headGroupSpec"]["template"], job["spec"]["submitterPodTemplate"]]
    templates += [group["template"] for group in cluster["workerGroupSpecs"]]
    for template in templates:  # head, submitter, workers: selected, and let in
        labels = template["metadata"]["labels"]
        assert selected.items() <= labels.items()
        assert own["from"][0]["podSelector"]["matchLabels"].items() <= labels.items()
    assert "ports" not in own
    assert job_api["ports"] == [{"protocol": "TCP", "port": 8265}]
    assert {"ipBlock": {"cidr": "10.0.0.1/32"}} in job_api["from"]


def test_the_submitter_gets_its_command_from_kuberay_and_runs_where_the_ray_pods_do() -> None:
    toleration = {"key": "edge", "operator": "Exists", "effect": "NoSchedule"}
    placement = {"nodeSelector": {"pool": "edge"}, "tolerations": [toleration]}
    submitter = rayjob(placement=placement)["spec"]["submitterPodTemplate"]["spec"]

    (container,) = submitter["containers"]
    assert "command" not in container and "args" not in container
    assert container["image"] == CONFIG.calibration_image
    assert (submitter["nodeSelector"], submitter["restartPolicy"]) == ({"pool": "edge"}, "Never")


def test_every_status_field_written_is_in_the_crd() -> None:
    # A pruned field never reads back: runNumber lost, every round started run 1 again.
    from tests.unit.test_operator_status import pruned, status_schema

    promoted = {"version": "calibrated-1+x", "configMap": "tune-1-result", "run": "tune-1"}
    started = calibration_status(
        PENDING, "Starting", "run tune-1 started", None, 1, [], "t",
        runNumber=1, run="tune-1", rayJob="tune-1", observedGeneration=1, startTime="t",
        completionTime=None,
    )  # fmt: skip
    finished = calibration_status(
        SUCCEEDED, "Calibrated", "done", promoted, 1, started["conditions"], "t",
        completionTime="t", **figures(REPORT),
    )  # fmt: skip

    for status in (started, finished):
        assert pruned(status, status_schema("routercalibrations.yaml")) == status
