"""A RouterCalibration's decisions and status, as pure functions of what the operator read.

When a run is due, what the latest run's RayJob and result ConfigMap say about it, and
the status that follows. The handler (handlers/calibration.py) reads and writes; nothing
here calls the API, so every rule is tested without a cluster.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgefleet.calibrate.artefacts import ARTEFACT_FILE, REPORT_FILE
from edgefleet.calibrate.publish import ERROR_KEY, REASON_KEY
from edgefleet.operator.calibration_spec import RouterCalibrationSpec
from edgefleet.operator.status import condition

PENDING, RUNNING, SUCCEEDED, FAILED, SUSPENDED = (
    "Pending",
    "Running",
    "Succeeded",
    "Failed",
    "Suspended",
)
FINISHED = (SUCCEEDED, FAILED)
# KubeRay's RayJob: the Ray job's own status, and the RayJob's deployment status.
RAY_DONE = ("SUCCEEDED", "FAILED", "STOPPED")
DEPLOYMENT_DONE = ("Complete", "Failed")


@dataclass(frozen=True)
class Outcome:
    """What a run has come to, as far as its RayJob and result say."""

    phase: str
    reason: str
    message: str
    report: Mapping[str, Any] | None = None


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def due(
    spec: RouterCalibrationSpec, generation: int, status: Mapping[str, Any], now: dt.datetime
) -> str | None:
    """Why a new run should start now, or None. Only asked when no run is in flight."""
    if spec.suspend:
        return None
    if not status.get("runNumber"):
        return "first run"
    if status.get("observedGeneration") != generation:
        return "the spec changed"
    finished = parse_time(status.get("completionTime"))
    if spec.every_hours and finished and now >= finished + dt.timedelta(hours=spec.every_hours):
        return f"{spec.every_hours} h since the last run finished"
    return None


def seconds_until_due(
    spec: RouterCalibrationSpec, status: Mapping[str, Any], now: dt.datetime
) -> float | None:
    """Seconds until the schedule asks for the next run; None when it never will."""
    finished = parse_time(status.get("completionTime"))
    if spec.suspend or not spec.every_hours or finished is None:
        return None
    return max(0.0, (finished + dt.timedelta(hours=spec.every_hours) - now).total_seconds())


def outcome(
    run: str, rayjob: Mapping[str, Any] | None, result: Mapping[str, Any] | None
) -> Outcome:
    """The run's phase from its result ConfigMap (the truth once there) and its RayJob."""
    if result is not None:
        data = result.get("data") or {}
        if ERROR_KEY in data:
            return Outcome(FAILED, data.get(REASON_KEY) or "CalibrationFailed", data[ERROR_KEY])
        try:
            report = json.loads(data[REPORT_FILE])
            base64.b64decode((result.get("binaryData") or {})[ARTEFACT_FILE], validate=True)
        except (KeyError, ValueError) as exc:
            message = f"the result ConfigMap of run {run} is not a calibration result: {exc}"
            return Outcome(FAILED, "BadResult", message)
        return Outcome(SUCCEEDED, "Calibrated", f"run {run} wrote {report['version']}", report)
    if rayjob is None:
        return Outcome(FAILED, "JobLost", f"the RayJob {run} is gone and left no result")
    state = rayjob.get("status") or {}
    job, deployment = state.get("jobStatus", ""), state.get("jobDeploymentStatus", "")
    if job in RAY_DONE or deployment in DEPLOYMENT_DONE:
        said = state.get("message") or state.get("reason") or job or deployment
        return Outcome(
            FAILED,
            "JobFailed",
            f"the RayJob {run} ended ({job or deployment}) without a result: {said}",
        )
    if job == "RUNNING":
        return Outcome(RUNNING, "Labelling", f"the Ray job of run {run} is running")
    what = deployment or "waiting for KubeRay"
    return Outcome(PENDING, "Starting", f"the Ray cluster of run {run} is starting ({what})")


def figures(report: Mapping[str, Any]) -> dict[str, Any]:
    """The status fields a finished run's report gives."""

    def quality(which: str) -> dict[str, Any]:
        found = report[which]
        return {
            "version": found["version"],
            "apgr": round(found["apgr"], 4),
            "cpt50": round(found["cpt50"], 4),
            "cpt80": round(found["cpt80"], 4),
        }

    cloud = report.get("cloud") or {}
    labelling = report.get("labelling") or {}
    return {
        "labels": report["labels"],
        "heldOut": report["held_out"],
        "keptLocal": (report.get("prompts") or {}).get("kept_local_by_privacy_gate", 0),
        "cloud": {
            "calls": cloud.get("calls", 0),
            "tokens": cloud.get("tokens", 0),
            "cost": cloud.get("cost", 0.0),
        },
        "shipped": quality("shipped"),
        "calibrated": quality("calibrated"),
        "labelling": {
            "seconds": labelling.get("seconds", 0.0),
            "labelsPerSecond": labelling.get("labels_per_second", 0.0),
        },
    }


def conditions(
    phase: str,
    reason: str,
    message: str,
    promoted: Mapping[str, Any] | None,
    generation: int,
    previous: list[Mapping[str, Any]],
    now: str,
) -> list[dict[str, Any]]:
    """Complete, Failed and Promoted for the latest run (or refusal) and what is promoted."""
    complete = phase == SUCCEEDED
    failed = phase == FAILED
    if promoted:
        promoted_condition = (
            True, "Better", f"{promoted['version']} (run {promoted['run']}) is served by the policy"
        )  # fmt: skip
    else:
        promoted_condition = (False, "NothingBetter", "no run has beaten the shipped classifier")
    at = (generation, previous, now)
    return [
        condition("Complete", complete, reason if complete else phase, message, *at),
        condition(
            "Failed", failed, reason if failed else "NoFailure", message if failed else "", *at
        ),
        condition("Promoted", *promoted_condition, *at),
    ]


def calibration_status(
    phase: str,
    reason: str,
    message: str,
    promoted: Mapping[str, Any] | None,
    generation: int,
    previous: list[Mapping[str, Any]],
    now: str,
    **more: Any,
) -> dict[str, Any]:
    """The status to merge in: the phase, what is promoted, the conditions, and `more`
    (a run's number and times, a finished run's figures)."""
    return {
        "phase": phase,
        "promoted": promoted,
        **more,
        "conditions": conditions(phase, reason, message, promoted, generation, previous, now),
    }
