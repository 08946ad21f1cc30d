"""RoutingPolicy: validate with the router's own parser, run router and egress, report status."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf

from edgefleet.operator import names
from edgefleet.operator.builders import routingpolicy as build
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
from edgefleet.operator.status import WorkloadFacts, routingpolicy_status
from edgefleet.routing.policy import PolicyError, parse_policy

CHILD_KINDS = ("Deployment", "Service", "NetworkPolicy")


def api_endpoints(kube: Kube, config: OperatorConfig) -> list[tuple[str, int]]:
    """Where the API server listens, for the router's NetworkPolicy."""
    if config.api_server_endpoints:
        pairs = [e.strip().rpartition(":") for e in config.api_server_endpoints.split(",")]
        return [(host.strip("[]"), int(port)) for host, _, port in pairs if host]
    endpoints = []
    for item in kube.list("EndpointSlice", "default", "kubernetes.io/service-name=kubernetes"):
        ports = [p["port"] for p in item.get("ports") or [] if p.get("name") == "https"]
        for endpoint in item.get("endpoints") or []:
            endpoints += [(address, port) for address in endpoint["addresses"] for port in ports]
    return sorted(set(endpoints))


def desired(
    name: str, namespace: str, spec: Mapping[str, Any], memo: kopf.Memo
) -> list[dict[str, Any]]:
    config: OperatorConfig = memo.config
    # The router re-reads the policy file live; the egress reads it at start,
    # so only the egress rolls when the policy changes.
    return build.build_children(
        name, namespace, spec, config, memo.api_endpoints, config_hash=digest(dict(spec))
    )


def invalid_reason(body: Mapping[str, Any]) -> str | None:
    """The router's strict parser has the last word (CEL rules caught most already)."""
    try:
        parse_policy(
            {"apiVersion": names.API_VERSION, "kind": "RoutingPolicy",
             "metadata": {"name": body["metadata"]["name"]}, "spec": dict(body.get("spec") or {})}
        )  # fmt: skip
    except PolicyError as exc:
        return str(exc)
    return None


def reconcile(
    *,
    body: Mapping[str, Any],
    name: str,
    namespace: str,
    spec: Mapping[str, Any],
    uid: str,
    memo: kopf.Memo,
    logger: logging.Logger | logging.LoggerAdapter,
) -> None:
    problem = invalid_reason(body)
    if problem:
        memo.invalid = problem
        kopf.warn(dict(body), reason="InvalidPolicy", message=problem)
        # Keep what runs: a bad edit must not take a working router down.
        raise kopf.PermanentError(problem)
    memo.invalid = None
    kube: Kube = memo.kube
    started = time.monotonic()
    children = desired(name, namespace, spec, memo)
    fingerprint = digest(children)
    try:
        apply_children(kube, body, children)
    except ChildRefused as exc:
        memo.apply_error = str(exc)
        kopf.warn(dict(body), reason="ApplyFailed", message=str(exc))
        raise kopf.PermanentError(str(exc)) from exc
    memo.apply_error = None
    wanted = {(c["kind"], c["metadata"]["name"]) for c in children}
    removed = delete_stale(
        kube, namespace, f"{names.POLICY_LABEL}={name}", CHILD_KINDS, wanted, uid
    )
    if memo.get("applied") != fingerprint:
        message = f"applied {len(children)} objects"
        if not build.cloud_enabled(spec):
            message += " (cloud disabled: no egress)"
        if removed:
            message += f"; removed {', '.join(removed)}"
        kopf.event(dict(body), type="Normal", reason="Applied", message=message)
        logger.info(message)
    memo.applied = fingerprint
    # One line per reconcile, with its duration: what the scale benchmark reads.
    logger.info("reconciled in %.1f ms", (time.monotonic() - started) * 1000)


def _one(index: Any, key: tuple[str, str, str]) -> WorkloadFacts | None:
    found = list(index.get(key, [])) if index else []
    return found[0] if found else None


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
    policy_deployments: Any,
    smallmodel_names: Any,
    service_endpoints: Any,
    logger: logging.Logger | logging.LoggerAdapter,
) -> None:
    router = _one(policy_deployments, (namespace, name, names.ROUTER))
    egress = _one(policy_deployments, (namespace, name, names.EGRESS))
    cloud = build.cloud_enabled(spec)
    if invalid_reason(body) is None and (
        memo.get("applied") != digest(desired(name, namespace, spec, memo))
        or router is None
        or (cloud and egress is None)
    ):
        # A refusal is recorded in memo and an Event; tried again next round.
        with contextlib.suppress(kopf.PermanentError):
            reconcile(
                body=body, name=name, namespace=namespace, spec=spec, uid=uid,
                memo=memo, logger=logger,
            )  # fmt: skip
    targets = list((spec.get("local") or {}).get("targets") or [])
    endpoints: dict[str, int | None] = {}
    for target in targets:
        model = target["smallModel"]
        exists = smallmodel_names is not None and (namespace, model) in smallmodel_names
        slices = service_endpoints.get((namespace, model), []) if service_endpoints else []
        endpoints[model] = sum(slices) if exists else None
    previous = list(status.get("conditions") or [])
    fresh = routingpolicy_status(
        generation=int(body["metadata"].get("generation", 0)),
        targets=targets,
        target_endpoints=endpoints,
        router=router,
        egress=egress if cloud else None,
        cloud=cloud,
        previous=previous,
        now=now(),
        invalid=memo.get("invalid") or memo.get("apply_error"),
    )
    if status_changed(status, fresh):
        patch.status.update(fresh)
        ready_transition(body, previous, fresh["conditions"])
