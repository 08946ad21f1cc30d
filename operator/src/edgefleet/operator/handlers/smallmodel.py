"""SmallModel: parse the spec, plan engines from the nodes, apply children, report status.

Two entry points, both holding the model's lock: `apply` (Kopf's create,
update and resume handlers) and `keep_status` (its daemon: a status round
whenever the model's children or the fleet change, and a slow safety net).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from edgefleet.operator import names
from edgefleet.operator.builders import smallmodel as build
from edgefleet.operator.handlers.common import (
    ChildRefused,
    apply_children,
    delete_stale,
    digest,
    last_status,
    now,
    ready_transition,
    report_status,
    status_rounds,
)
from edgefleet.operator.placement import NodeFacts, eligible_nodes, plans_for
from edgefleet.operator.spec import SpecError, parse_smallmodel_spec
from edgefleet.operator.state import Desired, ModelState, OperatorContext
from edgefleet.operator.status import (
    PodProblem,
    WorkloadFacts,
    smallmodel_status,
    with_ready_pods,
)

WORKLOADS = ("Deployment", "DaemonSet")
WORKLOAD_KINDS = (*WORKLOADS, "HorizontalPodAutoscaler")
log = logging.getLogger("edgefleet.operator.smallmodel")

# Kopf's indexes, as the handlers receive them (see edgefleet.operator.main).
NodeIndex = kopf.Index[str, NodeFacts]
WorkloadIndex = kopf.Index[tuple[str, str], WorkloadFacts]
ProblemIndex = kopf.Index[tuple[str, str], PodProblem]
# Serving pods' names by (namespace, model, engine).
ReadyPodIndex = kopf.Index[tuple[str, str, str], str]
EndpointIndex = kopf.Index[tuple[str, str], int]
Logger = logging.Logger | logging.LoggerAdapter


def node_facts(nodes: NodeIndex | None) -> list[NodeFacts]:
    """The fleet as the index holds it now (a copy: the index changes on the event loop)."""
    return list(nodes.get("nodes", [])) if nodes else []


def existing_workloads(
    key: tuple[str, str],
    model_deployments: WorkloadIndex | None,
    model_daemonsets: WorkloadIndex | None,
) -> list[WorkloadFacts] | None:
    """The model's workloads as the indexes hold them now; None without indexes."""
    if model_deployments is None or model_daemonsets is None:
        return None
    return [*model_deployments.get(key, []), *model_daemonsets.get(key, [])]


def ready_counter(
    key: tuple[str, str], ready_pods: ReadyPodIndex | None
) -> Callable[[str], int] | None:
    """How many of the model's pods of an engine serve, as the pod index holds them now."""
    if ready_pods is None:
        return None
    return lambda engine: len(ready_pods.get((*key, engine), []))


def desired(
    ctx: OperatorContext, state: ModelState, body: Mapping[str, Any], nodes: list[NodeFacts]
) -> Desired:
    """The plan, the children and their digest; kept until the spec or the fleet changes.

    On the event loop only: node events edit the cached plan's eligible nodes
    there (States.node_changed), so after the first plan of a generation a
    node change costs a recount, not a scan of the fleet.

    Raises SpecError for a spec the operator must not act on (the state then
    keeps the last valid one's, which still describes what runs).
    """
    meta = body["metadata"]
    generation = meta.get("generation")
    cached = state.desired
    if cached is not None and cached.generation == generation and not state.replan:
        return cached
    if cached is not None and cached.generation == generation:
        model, eligible = cached.model, cached.eligible
    else:
        model = parse_smallmodel_spec(dict(body.get("spec") or {}))
        eligible = eligible_nodes(model.placement, nodes, ctx.config.gpu_node_label)
    plans = plans_for(model, eligible)
    if cached is not None and cached.model == model and cached.plans == plans:
        children, fingerprint = cached.children, cached.fingerprint
    else:
        children = build.build_children(meta["name"], meta["namespace"], model, plans, ctx.config)
        fingerprint = digest(children)
    state.desired = Desired(generation, model, eligible, plans, children, fingerprint)
    state.replan = False
    return state.desired


def wanted_or_refuse(
    ctx: OperatorContext, state: ModelState, body: Mapping[str, Any], nodes: list[NodeFacts]
) -> Desired:
    """desired(), or a warning Event and a PermanentError for a spec not to act on."""
    try:
        return desired(ctx, state, body, nodes)
    except SpecError as exc:
        # Keep what runs: a bad edit must not take working model servers down.
        # The status round reports it (Ready False, InvalidSpec).
        kopf.warn(dict(body), reason="InvalidSpec", message=str(exc))
        raise kopf.PermanentError(str(exc)) from exc


def reconcile(
    ctx: OperatorContext,
    state: ModelState,
    *,
    body: Mapping[str, Any],
    wanted_now: Desired,
    workloads: list[WorkloadFacts] | None,
    logger: Logger,
) -> None:
    """Apply the children and delete retired ones (blocking: run in a thread, holding the lock).

    `wanted_now`: desired() as computed on the event loop. `workloads`: the
    model's workloads as the indexes show them; None lists them from the API.
    """
    meta = body["metadata"]
    started = time.monotonic()
    # kopf.adopt writes into the manifests: apply copies, keep the state's pristine.
    children = copy.deepcopy(wanted_now.children)
    try:
        apply_children(ctx.kube, body, children)
    except ChildRefused as exc:
        state.apply_error = str(exc)
        kopf.warn(dict(body), reason="ApplyFailed", message=str(exc))
        raise kopf.PermanentError(str(exc)) from exc
    wanted = {(c["kind"], c["metadata"]["name"]) for c in children}
    removed = _remove_stale(ctx, state, meta, wanted, workloads)
    state.apply_error = None
    if state.applied != wanted_now.fingerprint:
        plan_text = ", ".join(
            f"{p.engine}: {'one per node' if p.replicas is None else p.replicas}"
            for p in wanted_now.plans
        )
        message = f"applied {len(children)} objects ({plan_text})"
        if removed:
            message += f"; removed {', '.join(removed)}"
        kopf.event(dict(body), type="Normal", reason="Applied", message=message)
        logger.info(message)
    state.applied = wanted_now.fingerprint
    # One line per reconcile, with its duration: what the scale benchmark reads.
    log.info("smallmodel %s/%s reconciled in %.1f ms", meta["namespace"], meta["name"],
             (time.monotonic() - started) * 1000)  # fmt: skip


def _remove_stale(
    ctx: OperatorContext,
    state: ModelState,
    meta: Mapping[str, Any],
    wanted: set[tuple[str, str]],
    workloads: list[WorkloadFacts] | None,
) -> list[str]:
    """Delete workloads (and their autoscalers) the spec no longer wants.

    The first time in this operator's life (or without indexes) the API is
    listed, which also catches what changed while no operator ran; after that
    the indexes say what exists, so a steady reconcile costs no LIST at all.
    """
    kube, namespace, name = ctx.kube, meta["namespace"], meta["name"]
    if not state.listed or workloads is None:
        selector = f"{names.MODEL_LABEL}={name}"
        removed = delete_stale(kube, namespace, selector, WORKLOAD_KINDS, wanted, meta["uid"])
        state.listed = True
        return removed
    removed = []
    for workload in workloads:
        if (workload.kind, workload.name) not in wanted:
            kube.delete(workload.kind, namespace, workload.name)
            kube.delete("HorizontalPodAutoscaler", namespace, workload.name)
            removed.append(f"{workload.kind}/{workload.name}")
    scaled = any(kind == "HorizontalPodAutoscaler" for kind, _ in wanted)
    if state.scaled and not scaled:
        for kind, workload_name in wanted:
            if kind in ("Deployment", "DaemonSet"):
                kube.delete("HorizontalPodAutoscaler", namespace, workload_name)
    state.scaled = scaled
    return removed


async def apply(
    ctx: OperatorContext,
    state: ModelState,
    *,
    body: Mapping[str, Any],
    nodes: NodeIndex | None,
    model_deployments: WorkloadIndex | None,
    model_daemonsets: WorkloadIndex | None,
    logger: Logger,
) -> None:
    """Create, update or resume: reconcile holding the model's lock, then have status follow."""
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    try:
        async with state.lock:
            wanted_now = wanted_or_refuse(ctx, state, body, node_facts(nodes))
            workloads = existing_workloads(key, model_deployments, model_daemonsets)
            await asyncio.to_thread(
                reconcile, ctx, state, body=body, wanted_now=wanted_now,
                workloads=workloads, logger=logger,
            )  # fmt: skip
    finally:
        # Applied, refused or invalid: the status says which, soon.
        state.trigger.poke()


async def status_round(
    ctx: OperatorContext,
    state: ModelState,
    *,
    body: Mapping[str, Any],
    nodes: NodeIndex | None,
    model_deployments: WorkloadIndex | None,
    model_daemonsets: WorkloadIndex | None,
    model_pod_problems: ProblemIndex | None,
    model_ready_pods: ReadyPodIndex | None,
    service_endpoints: EndpointIndex | None,
    logger: Logger,
) -> None:
    """Repair drift (changed nodes, a deleted child), then write status if it changed.

    Holds the model's lock throughout. The common round only reads indexes and
    the cached plan on the event loop; a repair and the status write go to a thread.
    """
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    async with state.lock:
        invalid = None
        try:
            wanted_now: Desired | None = desired(ctx, state, body, node_facts(nodes))
        except SpecError as exc:
            invalid = str(exc)
            # Status still describes the workloads of the last valid spec, if any.
            wanted_now = state.desired
        plans = wanted_now.plans if wanted_now else []
        children = wanted_now.children if wanted_now else []
        known = existing_workloads(key, model_deployments, model_daemonsets)
        workloads = with_ready_pods(known or [], ready_counter(key, model_ready_pods))
        present = {w.name for w in workloads}
        wanted = {c["metadata"]["name"] for c in children if c["kind"] in WORKLOADS}
        # A workload missing for two rounds in a row was deleted by someone (one
        # round may just be the index catching up with a fresh apply).
        missing = not wanted <= present
        gone = missing and state.missing_before
        state.missing_before = missing
        # Nothing applied yet and no refusal: the create/resume handler is on it.
        stale = state.applied is not None and wanted_now is not None
        stale = stale and (state.applied != wanted_now.fingerprint or gone)
        if invalid is None and wanted_now is not None and (stale or state.apply_error):
            # A refusal is recorded in state.apply_error and an Event; tried again soon.
            with contextlib.suppress(kopf.PermanentError):
                await asyncio.to_thread(
                    reconcile, ctx, state, body=body, wanted_now=wanted_now, workloads=known,
                    logger=logger,
                )  # fmt: skip
        problems = list(model_pod_problems.get(key, [])) if model_pod_problems else []
        endpoints = sum(service_endpoints.get(key, [])) if service_endpoints else 0
        current = last_status(body, state)
        previous = list(current.get("conditions") or [])
        fresh = smallmodel_status(
            generation=int(meta.get("generation", 0)),
            plans=plans,
            workloads=[w for w in workloads if w.name in wanted],
            problems=problems,
            ready_endpoints=endpoints,
            service=meta["name"],
            previous=previous,
            now=now(),
            apply_error=state.apply_error,
            invalid=invalid,
        )
        ctx.states.activity["status.rounds"] += 1
        if await report_status(ctx.kube, "SmallModel", body, state, current, fresh, logger):
            ctx.states.activity["status.writes"] += 1
            ready_transition(body, previous, fresh["conditions"])


async def keep_status(
    ctx: OperatorContext,
    state: ModelState,
    *,
    body: Mapping[str, Any],
    nodes: NodeIndex | None,
    model_deployments: WorkloadIndex | None,
    model_daemonsets: WorkloadIndex | None,
    model_pod_problems: ProblemIndex | None,
    model_ready_pods: ReadyPodIndex | None,
    service_endpoints: EndpointIndex | None,
    logger: Logger,
) -> None:
    """The model's daemon (common.status_rounds)."""
    await status_rounds(
        ctx, state,
        lambda: status_round(
            ctx, state, body=body, nodes=nodes, model_deployments=model_deployments,
            model_daemonsets=model_daemonsets, model_pod_problems=model_pod_problems,
            model_ready_pods=model_ready_pods, service_endpoints=service_endpoints,
            logger=logger,
        ),
        logger,
    )  # fmt: skip
