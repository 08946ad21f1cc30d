"""RouterCalibration: start each run as a KubeRay RayJob, follow it, report it, promote it.

One daemon per RouterCalibration runs rounds: on a change to the resource or to one of
its RayJobs, every few seconds while a run is in flight, and when the schedule asks. A
round reads the resource afresh, so what it decides never rests on a stale watch. Before
a run starts, what can be checked without Ray is checked here (the policy, its cloud,
the prompt ConfigMap's lines and references): a bad input is a Failed condition in
seconds, not a Ray cluster started for nothing. A run that finishes better than the
shipped classifier is promoted, and its RoutingPolicy is reconciled so the router gets
the artefact; a failed or worse run leaves the promoted artefact serving.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from edgefleet.calibrate.artefacts import ARTEFACT_FILE
from edgefleet.calibrate.prompts import CalibrationError, parse_prompts, require_references
from edgefleet.calibrate.publish import CALIBRATION_LABEL
from edgefleet.operator import names
from edgefleet.operator.builders import calibration as build
from edgefleet.operator.builders.routingpolicy import ServedArtefact, cloud_enabled
from edgefleet.operator.calibration_spec import (
    CalibrationSpecError,
    RouterCalibrationSpec,
    parse_calibration_spec,
)
from edgefleet.operator.calibration_status import (
    FAILED,
    FINISHED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    SUSPENDED,
    calibration_status,
    due,
    figures,
    outcome,
    seconds_until_due,
)
from edgefleet.operator.handlers.common import RETRY_S, now, status_changed
from edgefleet.operator.kube import ApiError, Kube
from edgefleet.operator.state import CalibrationState, OperatorContext

Logger = logging.Logger | logging.LoggerAdapter
KIND = "RouterCalibration"
# While a run is in flight its RayJob's events poke the daemon; this is the fallback.
IN_FLIGHT_POLL_S = 10.0
# A refused start (bad prompts, no policy yet) is checked again this often.
REFUSED_RETRY_S = 6 * RETRY_S


@dataclass(frozen=True)
class RoundResult:
    # Seconds until the next round unless something pokes sooner.
    wait_s: float
    # A run was just promoted: this RoutingPolicy must hand the router its artefact.
    promote_for: str | None = None


class Refused(Exception):
    """A run cannot start; `reason` is the Failed condition's."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def served_artefact(
    kube: Kube, namespace: str, policy_spec: Mapping[str, Any]
) -> ServedArtefact | None:
    """The promoted artefact of the RouterCalibration a policy names, or None (shipped)."""
    name = (policy_spec.get("complexity") or {}).get("calibration")
    if not name:
        return None
    calibration = kube.get(KIND, namespace, name)
    promoted = ((calibration or {}).get("status") or {}).get("promoted") or {}
    if not promoted.get("configMap"):
        return None
    result = kube.get("ConfigMap", namespace, promoted["configMap"])
    data = ((result or {}).get("binaryData") or {}).get(ARTEFACT_FILE)
    return ServedArtefact(promoted["version"], data) if data else None


def _prompt_text(config_map: Mapping[str, Any], key: str) -> str | None:
    if key in (config_map.get("data") or {}):
        return str(config_map["data"][key])
    binary = (config_map.get("binaryData") or {}).get(key)
    if binary is None:
        return None
    try:
        return base64.b64decode(binary).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return ""


def check_prompts(kube: Kube, namespace: str, spec: RouterCalibrationSpec) -> None:
    """The prompt ConfigMap's every line and reference, as the job would check them."""
    source = spec.prompts.config_map
    if source is None:  # a claim: only the job can read it
        return
    found = kube.get("ConfigMap", namespace, source.name)
    if found is None:
        raise Refused("PromptsNotFound", f"ConfigMap {namespace}/{source.name} does not exist")
    text = _prompt_text(found, source.key)
    if text is None:
        raise Refused("BadPromptFile", f"ConfigMap {source.name} has no key {source.key!r}")
    try:
        rows = parse_prompts(text, f"ConfigMap {source.name} key {source.key}")
        if spec.grading == "reference":
            require_references(rows)
    except CalibrationError as exc:
        raise Refused(exc.reason, str(exc)) from exc


def check_policy(kube: Kube, namespace: str, spec: RouterCalibrationSpec) -> tuple[list[str], bool]:
    """The policy's local SmallModels and whether it has a cloud; Refused when it cannot serve."""
    policy = kube.get("RoutingPolicy", namespace, spec.policy)
    if policy is None:
        raise Refused("PolicyNotFound", f"RoutingPolicy {namespace}/{spec.policy} does not exist")
    policy_spec = policy.get("spec") or {}
    targets = [t["smallModel"] for t in (policy_spec.get("local") or {}).get("targets") or []]
    cloud = cloud_enabled(policy_spec)
    needs_cloud = spec.grading == "judge" or not spec.assume_cloud_correct
    if needs_cloud and not cloud:
        raise Refused(
            "NoCloud",
            f"grading {spec.grading} asks the cloud, and RoutingPolicy {spec.policy} has "
            "cloud.enabled false (use assumeCloudCorrect with reference grading)",
        )
    if kube.get("ConfigMap", namespace, names.router_name(spec.policy)) is None:
        raise Refused("PolicyNotReady", f"RoutingPolicy {spec.policy} has no router ConfigMap yet")
    return targets, cloud


def _start(
    ctx: OperatorContext, body: Mapping[str, Any], spec: RouterCalibrationSpec, number: int
) -> str:
    """Create run `number`'s identity and RayJob (owned by the calibration); its name."""
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    check_prompts(ctx.kube, namespace, spec)
    targets, cloud = check_policy(ctx.kube, namespace, spec)
    identity = {"name": name, "namespace": namespace, "uid": meta["uid"]}
    children = [
        *build.build_identity(name, namespace, spec.policy, ctx.config),
        build.build_network_policy(name, namespace, spec.policy, ctx.api_endpoints),
        build.build_rayjob(identity, spec, number, targets, cloud, ctx.config),
    ]
    kopf.adopt(children, owner=dict(body))
    for child in children:
        try:
            ctx.kube.apply(child)
        except ApiError as exc:
            if exc.transient:
                raise
            raise Refused(
                "RunRefused", f"{child['kind']} {child['metadata']['name']}: {exc.message}"
            ) from exc
    run = build.run_name(name, number)
    # Earlier runs' RayJobs (their clusters are gone already); results stay while wanted.
    for job in ctx.kube.list("RayJob", namespace, f"{CALIBRATION_LABEL}={name}"):
        if job["metadata"]["name"] != run:
            ctx.kube.delete("RayJob", namespace, job["metadata"]["name"])
    return run


def _forget_old_results(kube: Kube, namespace: str, name: str, keep: set[str]) -> None:
    for found in kube.list("ConfigMap", namespace, f"{CALIBRATION_LABEL}={name}"):
        if found["metadata"]["name"] not in keep:
            kube.delete("ConfigMap", namespace, found["metadata"]["name"])


def _write(
    ctx: OperatorContext, body: Mapping[str, Any], status: Mapping[str, Any], fresh: dict[str, Any]
) -> None:
    if status_changed(status, fresh):
        meta = body["metadata"]
        ctx.kube.patch_status(KIND, meta["namespace"], meta["name"], fresh)


def calibration_round(
    ctx: OperatorContext, namespace: str, name: str, logger: Logger
) -> RoundResult:
    """One round (blocking: run in a thread)."""
    body = ctx.kube.get(KIND, namespace, name)
    if body is None:
        return RoundResult(ctx.config.status_interval_s)
    meta, status = body["metadata"], dict(body.get("status") or {})
    generation, stamp = meta.get("generation", 1), now()
    previous = list(status.get("conditions") or [])
    promoted = status.get("promoted")

    def report(phase: str, reason: str, message: str, **more: Any) -> dict[str, Any]:
        kept = more.pop("promoted", promoted)
        return calibration_status(phase, reason, message, kept, generation, previous, stamp, **more)

    try:
        spec = parse_calibration_spec(body.get("spec") or {})
    except CalibrationSpecError as exc:
        _write(ctx, body, status, report(FAILED, "InvalidSpec", str(exc)))
        _warn_once(body, previous, "InvalidSpec", str(exc))
        return RoundResult(ctx.config.status_interval_s)

    number = int(status.get("runNumber") or 0)
    if number and status.get("phase") in (PENDING, RUNNING):
        run = build.run_name(name, number)
        result = ctx.kube.get("ConfigMap", namespace, build.result_name(run))
        found = outcome(run, ctx.kube.get("RayJob", namespace, run), result)
        if found.phase not in FINISHED:
            _write(ctx, body, status, report(found.phase, found.reason, found.message))
            return RoundResult(IN_FLIGHT_POLL_S)
        done: dict[str, Any] = {"completionTime": stamp}
        promote_for = None
        if found.phase == SUCCEEDED and found.report is not None:
            done.update(figures(found.report))
            if found.report.get("promoted"):
                version = found.report["version"]
                done["promoted"] = {
                    "version": version,
                    "configMap": build.result_name(run),
                    "run": run,
                }
                promote_for = spec.policy
        fresh = report(found.phase, found.reason, found.message, **done)
        _write(ctx, body, status, fresh)
        keep = {build.result_name(run)} | (
            {fresh["promoted"]["configMap"]} if fresh["promoted"] else set()
        )
        _forget_old_results(ctx.kube, namespace, name, keep)
        if found.phase == SUCCEEDED:
            kopf.event(
                dict(body), type="Normal", reason=found.reason, message=_summary(found, fresh)
            )
        else:
            kopf.warn(dict(body), reason=found.reason, message=found.message)
        logger.info("run %s: %s (%s)", run, found.phase, found.message)
        return RoundResult(RETRY_S, promote_for)

    now_dt = dt.datetime.now(dt.UTC)
    why = due(spec, generation, status, now_dt)
    if why is None:
        phase = SUSPENDED if spec.suspend else status.get("phase") or PENDING
        if phase != status.get("phase"):
            _write(ctx, body, status, report(phase, phase, "no new run starts while suspended"))
        until = seconds_until_due(spec, status, now_dt)
        wait = (
            ctx.config.status_interval_s
            if until is None
            else min(until, ctx.config.status_interval_s)
        )
        return RoundResult(max(wait, 1.0))
    try:
        run = _start(ctx, body, spec, number + 1)
    except Refused as exc:
        # Nothing started; the next round looks again (the user may fix the input).
        _write(ctx, body, status, report(FAILED, exc.reason, str(exc)))
        _warn_once(body, previous, exc.reason, str(exc))
        return RoundResult(REFUSED_RETRY_S)
    message = f"run {run} started ({why}): RayJob {run}"
    _write(
        ctx,
        body,
        status,
        report(
            PENDING, "Starting", message, runNumber=number + 1, run=run, rayJob=run,
            observedGeneration=generation, startTime=stamp, completionTime=None,
        ),
    )  # fmt: skip
    kopf.event(dict(body), type="Normal", reason="RunStarted", message=message)
    logger.info(message)
    return RoundResult(IN_FLIGHT_POLL_S)


def _summary(found: Any, fresh: Mapping[str, Any]) -> str:
    shipped, calibrated = fresh["shipped"], fresh["calibrated"]
    verdict = "promoted" if found.report.get("promoted") else "not promoted (no better)"
    return (
        f"{found.message}: {fresh['labels']} labels, APGR {calibrated['apgr']:.3f} vs shipped "
        f"{shipped['apgr']:.3f} on {fresh['heldOut']} held-out prompts; {verdict}"
    )


def _warn_once(
    body: Mapping[str, Any], previous: list[Mapping[str, Any]], reason: str, message: str
) -> None:
    failed = next((c for c in previous if c.get("type") == "Failed"), {})
    if (failed.get("status"), failed.get("reason"), failed.get("message")) != (
        "True",
        reason,
        message,
    ):
        kopf.warn(dict(body), reason=reason, message=message)


async def keep_calibration(
    ctx: OperatorContext,
    state: CalibrationState,
    *,
    namespace: str,
    name: str,
    logger: Logger,
    reconcile_policy: Any,
) -> None:
    """The daemon: rounds until Kopf cancels it. `reconcile_policy(namespace, name)` hands
    a policy its newly promoted artefact."""
    state.trigger.poke()
    wait_s = 0.0
    while True:
        await state.trigger.next_round(wait_s)
        if state.gone:  # deleted (States.forget)
            return
        try:
            result = await asyncio.to_thread(calibration_round, ctx, namespace, name, logger)
        except (ApiError, kopf.TemporaryError) as exc:
            logger.warning("calibration round failed (tried again soon): %s", exc)
            wait_s = RETRY_S
            continue
        wait_s = result.wait_s
        if result.promote_for:
            await reconcile_policy(namespace, result.promote_for)
