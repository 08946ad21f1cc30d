"""SmallModel: plan engines from the nodes, apply children, report status."""

from __future__ import annotations

import contextlib
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
from edgefleet.operator.placement import EnginePlan, NodeFacts, plan_engines
from edgefleet.operator.status import PodProblem, WorkloadFacts, smallmodel_status

WORKLOAD_KINDS = ("Deployment", "DaemonSet", "HorizontalPodAutoscaler")


def desired(
    name: str, namespace: str, spec: Mapping[str, Any], nodes: Any, config: OperatorConfig
) -> tuple[list[EnginePlan], list[dict[str, Any]]]:
    facts: list[NodeFacts] = list(nodes.get("nodes", [])) if nodes else []
    plans = plan_engines(spec, facts, config.gpu_node_label)
    return plans, build.build_children(name, namespace, spec, plans, config)


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
) -> None:
    config: OperatorConfig = memo.config
    kube: Kube = memo.kube
    started = time.monotonic()
    plans, children = desired(name, namespace, spec, nodes, config)
    fingerprint = digest(children)
    try:
        apply_children(kube, body, children)
    except ChildRefused as exc:
        memo.apply_error = str(exc)
        kopf.warn(dict(body), reason="ApplyFailed", message=str(exc))
        raise kopf.PermanentError(str(exc)) from exc
    wanted = {(c["kind"], c["metadata"]["name"]) for c in children}
    removed = delete_stale(
        kube, namespace, f"{names.MODEL_LABEL}={name}", WORKLOAD_KINDS, wanted, uid
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
    logger.info("reconciled in %.1f ms", (time.monotonic() - started) * 1000)


def _workloads(index: Any, key: tuple[str, str]) -> list[WorkloadFacts]:
    return list(index.get(key, [])) if index else []


def refresh(
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
    """Repair drift (changed nodes, a deleted child), then write status if it changed."""
    config: OperatorConfig = memo.config
    key = (namespace, name)
    plans, children = desired(name, namespace, spec, nodes, config)
    workloads = _workloads(model_deployments, key) + _workloads(model_daemonsets, key)
    present = {w.name for w in workloads}
    wanted = {c["metadata"]["name"] for c in children if c["kind"] in ("Deployment", "DaemonSet")}
    if memo.get("applied") != digest(children) or not wanted <= present:
        # A refusal is recorded in memo.apply_error and an Event; tried again next round.
        with contextlib.suppress(kopf.PermanentError):
            reconcile(
                body=body, name=name, namespace=namespace, spec=spec, uid=uid,
                memo=memo, nodes=nodes, logger=logger,
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
    )
    if status_changed(status, fresh):
        patch.status.update(fresh)
        ready_transition(body, previous, fresh["conditions"])
