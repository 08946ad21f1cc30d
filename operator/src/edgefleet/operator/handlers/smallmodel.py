"""SmallModel: parse the spec, plan engines from the nodes, apply children, report status."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf

from edgefleet.operator import names
from edgefleet.operator.builders import smallmodel as build
from edgefleet.operator.config import OperatorConfig
from edgefleet.operator.handlers.common import (
    ChildRefused,
    apply_children,
    delete_stale,
    digest,
    now,
    ready_transition,
    status_changed,
)
from edgefleet.operator.kube import Kube
from edgefleet.operator.placement import FLEET, EnginePlan, NodeFacts, plan_engines
from edgefleet.operator.spec import SpecError, parse_smallmodel_spec
from edgefleet.operator.status import PodProblem, WorkloadFacts, smallmodel_status

WORKLOAD_KINDS = ("Deployment", "DaemonSet", "HorizontalPodAutoscaler")
log = logging.getLogger("edgefleet.operator.smallmodel")


def desired(
    body: Mapping[str, Any], spec: Mapping[str, Any], nodes: Any, memo: kopf.Memo
) -> tuple[list[EnginePlan], list[dict[str, Any]], str]:
    """The plan, the children and their digest; cached until the spec or the fleet changes.

    The status timer asks every few seconds for every model: at a thousand
    nodes, planning and building anew each time would cost most of a core.
    Raises SpecError for a spec the operator must not act on (the cache then
    keeps the last valid one's, which still describes what runs).
    """
    meta = body["metadata"]
    facts: list[NodeFacts] = list(nodes.get("nodes", [])) if nodes else []
    key = (meta.get("generation"), FLEET.version, len(facts))
    cached = memo.get("desired")
    if cached is not None and cached[0] == key:
        return cached[1], cached[2], cached[3]
    model = parse_smallmodel_spec(dict(spec))
    config: OperatorConfig = memo.config
    plans = plan_engines(model, facts, config.gpu_node_label)
    children = build.build_children(meta["name"], meta["namespace"], model, plans, config)
    fingerprint = digest(children)
    memo.desired = (key, plans, children, fingerprint)
    return plans, children, fingerprint


def reconcile(
    *,
    body: Mapping[str, Any],
    name: str,
    namespace: str,
    spec: Mapping[str, Any],
    uid: str,
    memo: kopf.Memo,
    nodes: Any,
    logger: logging.Logger | logging.LoggerAdapter,
    model_deployments: Any = None,
    model_daemonsets: Any = None,
) -> None:
    kube: Kube = memo.kube
    started = time.monotonic()
    try:
        plans, children, fingerprint = desired(body, spec, nodes, memo)
    except SpecError as exc:
        # Keep what runs: a bad edit must not take working model servers down.
        # The status timer reports it (Ready False, InvalidSpec).
        kopf.warn(dict(body), reason="InvalidSpec", message=str(exc))
        raise kopf.PermanentError(str(exc)) from exc
    # kopf.adopt writes into the manifests: apply copies, keep the cache pristine.
    children = copy.deepcopy(children)
    try:
        apply_children(kube, body, children)
    except ChildRefused as exc:
        memo.apply_error = str(exc)
        kopf.warn(dict(body), reason="ApplyFailed", message=str(exc))
        raise kopf.PermanentError(str(exc)) from exc
    wanted = {(c["kind"], c["metadata"]["name"]) for c in children}
    removed = _remove_stale(
        kube, namespace, name, uid, wanted, memo, model_deployments, model_daemonsets
    )
    memo.apply_error = None
    if memo.get("applied") != fingerprint:
        plan_text = ", ".join(
            f"{p.engine}: {'one per node' if p.replicas is None else p.replicas}" for p in plans
        )
        message = f"applied {len(children)} objects ({plan_text})"
        if removed:
            message += f"; removed {', '.join(removed)}"
        kopf.event(dict(body), type="Normal", reason="Applied", message=message)
        logger.info(message)
    memo.applied = fingerprint
    # One line per reconcile, with its duration: what the scale benchmark reads.
    log.info("smallmodel %s/%s reconciled in %.1f ms", namespace, name,
             (time.monotonic() - started) * 1000)  # fmt: skip


def _remove_stale(
    kube: Kube,
    namespace: str,
    name: str,
    uid: str,
    wanted: set[tuple[str, str]],
    memo: kopf.Memo,
    model_deployments: Any,
    model_daemonsets: Any,
) -> list[str]:
    """Delete workloads (and their autoscalers) the spec no longer wants.

    The first time in this operator's life (or without indexes) the API is
    listed, which also catches what changed while no operator ran; after that
    the indexes say what exists, so a steady reconcile costs no LIST at all.
    """
    if memo.get("listed") is None or model_deployments is None or model_daemonsets is None:
        removed = delete_stale(
            kube, namespace, f"{names.MODEL_LABEL}={name}", WORKLOAD_KINDS, wanted, uid
        )
        memo.listed = True
        return removed
    key, removed = (namespace, name), []
    for workload in [*model_deployments.get(key, []), *model_daemonsets.get(key, [])]:
        if (workload.kind, workload.name) not in wanted:
            kube.delete(workload.kind, namespace, workload.name)
            kube.delete("HorizontalPodAutoscaler", namespace, workload.name)
            removed.append(f"{workload.kind}/{workload.name}")
    if not any(kind == "HorizontalPodAutoscaler" for kind, _ in wanted) and memo.get("scaled"):
        for kind, workload_name in wanted:
            if kind in ("Deployment", "DaemonSet"):
                kube.delete("HorizontalPodAutoscaler", namespace, workload_name)
    memo.scaled = any(kind == "HorizontalPodAutoscaler" for kind, _ in wanted)
    return removed


def _workloads(index: Any, key: tuple[str, str]) -> list[WorkloadFacts]:
    return list(index.get(key, [])) if index else []


async def refresh(
    *,
    body: Mapping[str, Any],
    name: str,
    namespace: str,
    spec: Mapping[str, Any],
    uid: str,
    status: Mapping[str, Any],
    patch: kopf.Patch,
    memo: kopf.Memo,
    nodes: Any,
    model_deployments: Any,
    model_daemonsets: Any,
    model_pod_problems: Any,
    service_endpoints: Any,
    logger: logging.Logger | logging.LoggerAdapter,
) -> None:
    """Repair drift (changed nodes, a deleted child), then write status if it changed.

    Async, on Kopf's loop: the common round only reads indexes and the cached
    plan, so it needs no thread; a repair (API calls) goes to one.
    """
    key = (namespace, name)
    try:
        plans, children, fingerprint = desired(body, spec, nodes, memo)
        invalid = None
    except SpecError as exc:
        invalid = str(exc)
        # Status still describes the workloads of the last valid spec, if any.
        _, plans, children, fingerprint = memo.get("desired") or (None, [], [], None)
    workloads = _workloads(model_deployments, key) + _workloads(model_daemonsets, key)
    present = {w.name for w in workloads}
    wanted = {c["metadata"]["name"] for c in children if c["kind"] in ("Deployment", "DaemonSet")}
    # A workload missing for two rounds in a row was deleted by someone (one
    # round may just be the index catching up with a fresh apply).
    missing = not wanted <= present
    gone = missing and memo.get("missing_before", False)
    memo.missing_before = missing
    applied = memo.get("applied")
    # Nothing applied yet and no refusal: the create/resume handler is on it.
    repair = (applied is not None and (applied != fingerprint or gone)) or memo.get("apply_error")
    if invalid is None and repair:
        # A refusal is recorded in memo.apply_error and an Event; tried again next round.
        with contextlib.suppress(kopf.PermanentError):
            await asyncio.to_thread(
                reconcile,
                body=body, name=name, namespace=namespace, spec=spec, uid=uid,
                memo=memo, nodes=nodes, logger=logger,
                model_deployments=model_deployments, model_daemonsets=model_daemonsets,
            )  # fmt: skip
    problems: list[PodProblem] = list(model_pod_problems.get(key, [])) if model_pod_problems else []
    endpoints = sum(service_endpoints.get(key, [])) if service_endpoints else 0
    previous = list(status.get("conditions") or [])
    fresh = smallmodel_status(
        generation=int(body["metadata"].get("generation", 0)),
        plans=plans,
        workloads=[w for w in workloads if w.name in wanted],
        problems=problems,
        ready_endpoints=endpoints,
        service=name,
        previous=previous,
        now=now(),
        apply_error=memo.get("apply_error"),
        invalid=invalid,
    )
    if status_changed(status, fresh):
        patch.status.update(fresh)
        ready_transition(body, previous, fresh["conditions"])
