"""RoutingPolicy: validate with the router's own parser, run router and egress, report status.

Also binds the router to the Pods of the policy's sensitiveNamespaces (one
RoleBinding in each; not owned, so removed here: on every sync for namespaces
no longer listed, and by the deletion handler when the policy goes). Entry
points, like SmallModel's: `apply` and the daemon `keep_status`, both
holding the policy's lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any, TypeVar

import kopf
from kubernetes import client

from edgefleet.operator import names
from edgefleet.operator.builders import routingpolicy as build
from edgefleet.operator.config import OperatorConfig
from edgefleet.operator.handlers.calibration import served_artefact
from edgefleet.operator.handlers.common import (
    ChildRefused,
    apply_children,
    degraded_transition,
    delete_stale,
    digest,
    last_status,
    now,
    ready_transition,
    refusal,
    report_status,
    status_rounds,
)
from edgefleet.operator.kube import ApiError, Kube
from edgefleet.operator.state import OperatorContext, PolicyState
from edgefleet.operator.status import PodProblem, WorkloadFacts, condition, routingpolicy_status
from edgefleet.routing.policy import PolicyError, parse_policy

# Kopf's indexes, as the handlers receive them (see edgefleet.operator.main).
PolicyWorkloadIndex = kopf.Index[tuple[str, str, str], WorkloadFacts]
PolicyProblemIndex = kopf.Index[tuple[str, str, str], PodProblem]
ModelNameIndex = kopf.Index[tuple[str, str], bool]
EndpointIndex = kopf.Index[tuple[str, str], int]
BindingIndex = kopf.Index[tuple[str, str], str]
Logger = logging.Logger | logging.LoggerAdapter
T = TypeVar("T")

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
    ctx: OperatorContext, state: PolicyState, name: str, namespace: str, spec: Mapping[str, Any]
) -> list[dict[str, Any]]:
    # The router re-reads the policy file live; the egress reads it at start,
    # so only the egress rolls when the policy changes.
    return build.build_children(
        name, namespace, spec, ctx.config, ctx.api_endpoints, config_hash=digest(dict(spec)),
        artefact=state.artefact,
    )  # fmt: skip


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


def _bindings_everywhere(kube: Kube, selector: str) -> list[tuple[str, str]]:
    """(namespace, name) of the RoleBindings in any namespace that match the selector."""
    rbac = client.RbacAuthorizationV1Api(kube.api)
    try:
        listed = rbac.list_role_binding_for_all_namespaces(
            label_selector=selector, _request_timeout=60
        )
    except client.ApiException as exc:
        message = f"cannot list RoleBindings: {exc.status} {exc.reason}"
        raise kopf.TemporaryError(message, delay=5) from exc
    return [(item.metadata.namespace, item.metadata.name) for item in listed.items]


def _unbind(kube: Kube, namespace: str, name: str) -> None:
    """Delete one RoleBinding (gone already is fine); a refusal is retried by Kopf."""
    try:
        kube.delete("RoleBinding", namespace, name)
    except ApiError as exc:
        message = f"cannot delete RoleBinding {namespace}/{name}: {exc.status} {exc.message}"
        raise kopf.TemporaryError(message, delay=5) from exc


def sync_pod_bindings(
    kube: Kube, name: str, namespace: str, spec: Mapping[str, Any], config: OperatorConfig
) -> tuple[list[str], list[str]]:
    """Bind the router in each sensitive namespace, unbind it elsewhere.

    Returns (namespaces that do not exist yet, `namespace/name` of bindings
    removed). A missing namespace is skipped; the status timer tries again.
    """
    wanted = build.build_router_pod_bindings(name, namespace, spec, config)
    missing = []
    for binding in wanted:
        where = binding["metadata"]["namespace"]
        try:
            kube.apply(binding)
        except ApiError as exc:
            if exc.status == 404:
                missing.append(where)
                continue
            what = f"RoleBinding {where}/{binding['metadata']['name']}: {exc.message}"
            raise refusal(what, exc) from exc
    keep = {(b["metadata"]["namespace"], b["metadata"]["name"]) for b in wanted}
    removed = []
    for found in _bindings_everywhere(kube, build.pod_binding_selector(name, namespace)):
        if found not in keep:
            _unbind(kube, *found)
            removed.append("/".join(found))
    return missing, removed


def remove_pod_bindings(ctx: OperatorContext, name: str, namespace: str, logger: Logger) -> None:
    """The policy is being deleted: its RoleBindings in other namespaces go too."""
    found = _bindings_everywhere(ctx.kube, build.pod_binding_selector(name, namespace))
    for where, binding in found:
        _unbind(ctx.kube, where, binding)
    if found:
        logger.info("removed RoleBindings %s", ", ".join("/".join(f) for f in found))


def with_missing_namespaces(
    fresh: dict[str, Any],
    missing: list[str],
    generation: int,
    previous: list[Mapping[str, Any]],
    now: str,
) -> dict[str, Any]:
    """`fresh` status, with Degraded saying which sensitive namespaces do not exist yet."""
    if not missing:
        return fresh
    problem = (
        f"sensitive namespace(s) {', '.join(missing)} do not exist yet: the router cannot "
        "watch their pods and keeps every request local until they do (retried every "
        "status interval)"
    )
    conditions = []
    for item in fresh["conditions"]:
        if item["type"] == "Degraded":
            message = f"{item['message']}; {problem}" if item["status"] == "True" else problem
            reason = item["reason"] if item["status"] == "True" else "SensitiveNamespacesMissing"
            item = condition("Degraded", True, reason, message, generation, previous, now)
        conditions.append(item)
    return {**fresh, "conditions": conditions}


def reconcile(
    ctx: OperatorContext, state: PolicyState, *, body: Mapping[str, Any], logger: Logger
) -> None:
    """Bind, apply and prune (blocking: run in a thread, holding the policy's lock)."""
    meta = body["metadata"]
    name, namespace, spec = meta["name"], meta["namespace"], body.get("spec") or {}
    problem = invalid_reason(body)
    if problem:
        state.invalid = problem
        kopf.warn(dict(body), reason="InvalidPolicy", message=problem)
        # Keep what runs: a bad edit must not take a working router down.
        raise kopf.PermanentError(problem)
    state.invalid = None
    started = time.monotonic()
    state.artefact = served_artefact(ctx.kube, namespace, spec)
    children = desired(ctx, state, name, namespace, spec)
    fingerprint = digest(children)
    try:
        # Bindings first: the router lists the sensitive namespaces' pods as it starts.
        missing, unbound = sync_pod_bindings(ctx.kube, name, namespace, spec, ctx.config)
        apply_children(ctx.kube, body, children)
    except ChildRefused as exc:
        state.apply_error = str(exc)
        kopf.warn(dict(body), reason="ApplyFailed", message=str(exc))
        raise kopf.PermanentError(str(exc)) from exc
    state.apply_error = None
    state.missing_namespaces = missing
    wanted = {(c["kind"], c["metadata"]["name"]) for c in children}
    removed = delete_stale(
        ctx.kube, namespace, f"{names.POLICY_LABEL}={name}", CHILD_KINDS, wanted, meta["uid"]
    )
    removed += [f"RoleBinding/{binding}" for binding in unbound]
    if state.applied != fingerprint or unbound:
        message = f"applied {len(children)} objects"
        bound = len(build.sensitive_namespaces(spec)) - len(missing)
        if bound:
            message += f", RoleBindings in {bound} sensitive namespace(s)"
        if missing:
            message += f" (namespace(s) {', '.join(missing)} do not exist yet)"
        if not build.cloud_enabled(spec):
            message += " (cloud disabled: no egress)"
        calibration = (spec.get("complexity") or {}).get("calibration")
        if calibration:
            message += (
                f"; classifier {state.artefact.version} of RouterCalibration {calibration}"
                if state.artefact
                else f"; RouterCalibration {calibration} has promoted nothing: shipped classifier"
            )
        if removed:
            message += f"; removed {', '.join(removed)}"
        kopf.event(dict(body), type="Normal", reason="Applied", message=message)
        logger.info(message)
    state.applied = fingerprint
    # One line per reconcile, with its duration: what the scale benchmark reads.
    logger.info("reconciled in %.1f ms", (time.monotonic() - started) * 1000)


async def apply(
    ctx: OperatorContext, state: PolicyState, *, body: Mapping[str, Any], logger: Logger
) -> None:
    """Create, update or resume: reconcile holding the policy's lock, then have status follow."""
    try:
        async with state.lock:
            await asyncio.to_thread(reconcile, ctx, state, body=body, logger=logger)
    finally:
        state.trigger.poke()


def _one(index: kopf.Index[tuple[str, str, str], T] | None, key: tuple[str, str, str]) -> T | None:
    """The first value an index holds for `key` (a workload, a pod's problem), or None."""
    found = list(index.get(key, [])) if index else []
    return found[0] if found else None


def _sync_bindings(
    ctx: OperatorContext,
    state: PolicyState,
    body: Mapping[str, Any],
    logger: Logger,
) -> None:
    """Put right bindings missing (a namespace created since, one deleted by hand) or left over."""
    meta, spec = body["metadata"], body.get("spec") or {}
    name, namespace = meta["name"], meta["namespace"]
    try:
        missing, removed = sync_pod_bindings(ctx.kube, name, namespace, spec, ctx.config)
    except (ChildRefused, kopf.TemporaryError) as exc:
        logger.warning("cannot sync the router's RoleBindings: %s", exc)
        return
    if removed or set(missing) != set(state.missing_namespaces):
        logger.info("sensitive namespaces: missing %s, unbound %s", missing, removed)
    state.missing_namespaces = missing


async def status_round(
    ctx: OperatorContext,
    state: PolicyState,
    *,
    body: Mapping[str, Any],
    policy_deployments: PolicyWorkloadIndex | None,
    policy_pod_problems: PolicyProblemIndex | None,
    smallmodel_names: ModelNameIndex | None,
    service_endpoints: EndpointIndex | None,
    router_pod_bindings: BindingIndex | None,
    logger: Logger,
) -> None:
    """Repair drift (a deleted router or egress, bindings), then write status if it changed."""
    meta, spec = body["metadata"], body.get("spec") or {}
    name, namespace = meta["name"], meta["namespace"]
    async with state.lock:
        router = _one(policy_deployments, (namespace, name, names.ROUTER))
        egress = _one(policy_deployments, (namespace, name, names.EGRESS))
        cloud = build.cloud_enabled(spec)
        valid = invalid_reason(body) is None
        if valid and (
            state.applied != digest(desired(ctx, state, name, namespace, spec))
            or router is None
            or (cloud and egress is None)
        ):
            # A refusal is recorded in the state and an Event; tried again soon.
            with contextlib.suppress(kopf.PermanentError):
                await asyncio.to_thread(reconcile, ctx, state, body=body, logger=logger)
        elif valid:
            # The index says what exists, so a round where all is well costs no API call.
            key = (namespace, name)
            bound = set(router_pod_bindings.get(key, [])) if router_pod_bindings else set()
            if bound != set(build.sensitive_namespaces(spec)):
                await asyncio.to_thread(_sync_bindings, ctx, state, body, logger)
        targets = list((spec.get("local") or {}).get("targets") or [])
        endpoints: dict[str, int | None] = {}
        for target in targets:
            model = target["smallModel"]
            exists = smallmodel_names is not None and (namespace, model) in smallmodel_names
            slices = service_endpoints.get((namespace, model), []) if service_endpoints else []
            endpoints[model] = sum(slices) if exists else None
        problems = {
            component: problem
            for component in (names.ROUTER, names.EGRESS)
            if (problem := _one(policy_pod_problems, (namespace, name, component)))
        }
        current = last_status(body, state)
        previous = list(current.get("conditions") or [])
        generation = int(meta.get("generation", 0))
        fresh = routingpolicy_status(
            generation=generation,
            targets=targets,
            target_endpoints=endpoints,
            router=router,
            egress=egress if cloud else None,
            cloud=cloud,
            previous=previous,
            now=now(),
            invalid=state.invalid or state.apply_error,
            problems=problems,
        )
        fresh = with_missing_namespaces(
            fresh, state.missing_namespaces, generation, previous, now()
        )
        ctx.states.activity["status.rounds"] += 1
        if await report_status(ctx.kube, "RoutingPolicy", body, state, current, fresh, logger):
            ctx.states.activity["status.writes"] += 1
            ready_transition(body, previous, fresh["conditions"])
            degraded_transition(body, previous, fresh["conditions"])


async def keep_status(
    ctx: OperatorContext,
    state: PolicyState,
    *,
    body: Mapping[str, Any],
    policy_deployments: PolicyWorkloadIndex | None,
    policy_pod_problems: PolicyProblemIndex | None,
    smallmodel_names: ModelNameIndex | None,
    service_endpoints: EndpointIndex | None,
    router_pod_bindings: BindingIndex | None,
    logger: Logger,
) -> None:
    """The policy's daemon (common.status_rounds)."""
    await status_rounds(
        ctx, state,
        lambda: status_round(
            ctx, state, body=body, policy_deployments=policy_deployments,
            policy_pod_problems=policy_pod_problems, smallmodel_names=smallmodel_names,
            service_endpoints=service_endpoints, router_pod_bindings=router_pod_bindings,
            logger=logger,
        ),
        logger,
    )  # fmt: skip
