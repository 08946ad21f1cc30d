"""RoutingPolicy: validate with the router's own parser, run router and egress, report status.

Also binds the router to the Pods of the policy's sensitiveNamespaces (one
RoleBinding in each; not owned, so removed here: on every sync for namespaces
no longer listed, and by the deletion handler when the policy goes).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes import client

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
from edgefleet.operator.kube import ApiError, Kube
from edgefleet.operator.status import WorkloadFacts, condition, routingpolicy_status
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
            if exc.status in (409, 429) or exc.status >= 500 or exc.status == 0:
                raise kopf.TemporaryError(f"cannot apply {what}", delay=5) from exc
            raise ChildRefused(what) from exc
    keep = {(b["metadata"]["namespace"], b["metadata"]["name"]) for b in wanted}
    removed = []
    for found in _bindings_everywhere(kube, build.pod_binding_selector(name, namespace)):
        if found not in keep:
            _unbind(kube, *found)
            removed.append("/".join(found))
    return missing, removed


def remove_pod_bindings(
    *,
    name: str,
    namespace: str,
    memo: kopf.Memo,
    logger: logging.Logger | logging.LoggerAdapter,
) -> None:
    """The policy is being deleted: its RoleBindings in other namespaces go too."""
    kube: Kube = memo.kube
    found = _bindings_everywhere(kube, build.pod_binding_selector(name, namespace))
    for where, binding in found:
        _unbind(kube, where, binding)
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
        # Bindings first: the router lists the sensitive namespaces' pods as it starts.
        missing, unbound = sync_pod_bindings(kube, name, namespace, spec, memo.config)
        apply_children(kube, body, children)
    except ChildRefused as exc:
        memo.apply_error = str(exc)
        kopf.warn(dict(body), reason="ApplyFailed", message=str(exc))
        raise kopf.PermanentError(str(exc)) from exc
    memo.apply_error = None
    memo.missing_namespaces = missing
    wanted = {(c["kind"], c["metadata"]["name"]) for c in children}
    removed = delete_stale(
        kube, namespace, f"{names.POLICY_LABEL}={name}", CHILD_KINDS, wanted, uid
    )
    removed += [f"RoleBinding/{binding}" for binding in unbound]
    if memo.get("applied") != fingerprint or unbound:
        message = f"applied {len(children)} objects"
        bound = len(build.sensitive_namespaces(spec)) - len(missing)
        if bound:
            message += f", RoleBindings in {bound} sensitive namespace(s)"
        if missing:
            message += f" (namespace(s) {', '.join(missing)} do not exist yet)"
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
    router_pod_bindings: Any,
    logger: logging.Logger | logging.LoggerAdapter,
) -> None:
    router = _one(policy_deployments, (namespace, name, names.ROUTER))
    egress = _one(policy_deployments, (namespace, name, names.EGRESS))
    cloud = build.cloud_enabled(spec)
    valid = invalid_reason(body) is None
    if valid and (
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
    elif valid:
        # From the index, no API call: bindings missing (a namespace created
        # since, or one deleted by hand) or left over are put right.
        bound = (
            set(router_pod_bindings.get((namespace, name), [])) if router_pod_bindings else set()
        )
        if bound != set(build.sensitive_namespaces(spec)):
            try:
                missing, removed = sync_pod_bindings(memo.kube, name, namespace, spec, memo.config)
            except (ChildRefused, kopf.TemporaryError) as exc:
                logger.warning("cannot sync the router's RoleBindings: %s", exc)
            else:
                if removed or set(missing) != set(memo.get("missing_namespaces") or []):
                    logger.info("sensitive namespaces: missing %s, unbound %s", missing, removed)
                memo.missing_namespaces = missing
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
    fresh = with_missing_namespaces(
        fresh,
        list(memo.get("missing_namespaces") or []),
        int(body["metadata"].get("generation", 0)),
        previous,
        now(),
    )
    if status_changed(status, fresh):
        patch.status.update(fresh)
        ready_transition(body, previous, fresh["conditions"])
