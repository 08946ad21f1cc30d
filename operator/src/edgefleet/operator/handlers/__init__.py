"""Kopf registrations, and nothing else: each calls into its resource's module.

Indexes keep what status needs (nodes, workloads, pod problems, endpoint
counts) in memory from watches, so status and drift checks cost no API calls.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import kopf

from edgefleet.operator import names
from edgefleet.operator.builders.routingpolicy import POLICY_NAMESPACE_LABEL
from edgefleet.operator.config import OperatorConfig
from edgefleet.operator.handlers import routingpolicy, smallmodel
from edgefleet.operator.kube import Kube, load_credentials
from edgefleet.operator.placement import FLEET, NodeFacts
from edgefleet.operator.status import WorkloadFacts, pod_problem

# Read at import: Kopf needs timer intervals when the decorators run.
CONFIG = OperatorConfig.from_env()
MANAGED = {names.MANAGED_BY: names.MANAGER}
SM = (names.GROUP, names.VERSION, names.SMALLMODELS)
RP = (names.GROUP, names.VERSION, names.ROUTINGPOLICIES)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Peering: a stray second operator freezes instead of acting twice.
    settings.peering.name = CONFIG.peering_name
    settings.peering.clusterwide = True
    settings.peering.mandatory = True
    settings.peering.stealth = True
    # Set even though Kopf's default would do: the finalizer on RoutingPolicies
    # that bind routers in other namespaces (see remove_pod_bindings) is ours.
    settings.persistence.finalizer = f"{names.GROUP}/operator"
    # Kopf's bookkeeping in annotations, so `status` holds only what we report.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="edgefleet.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="edgefleet.io", key="last-handled-configuration"
    )
    settings.posting.reporting_component = "edgefleet-operator"
    # Only our own Events (kopf.event, kopf.warn) reach people; handler chatter stays in the log.
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = CONFIG.workers
    settings.networking.request_timeout = 60
    kube = Kube(load_credentials())
    memo.config = CONFIG
    memo.kube = kube
    memo.api_endpoints = routingpolicy.api_endpoints(kube, CONFIG)


# --- indexes -----------------------------------------------------------------
@kopf.index("", "v1", "nodes")
def nodes(body: kopf.Body, **_: Any) -> dict[str, NodeFacts]:
    facts = NodeFacts.from_node(body, CONFIG.gpu_resource)
    FLEET.observe(facts)
    return {"nodes": facts}


@kopf.index("apps", "v1", "deployments", labels={**MANAGED, names.MODEL_LABEL: kopf.PRESENT})
def model_deployments(namespace: str, body: kopf.Body, labels: Any, **_: Any) -> dict:
    facts = WorkloadFacts.from_body(body, labels.get(names.ENGINE_LABEL, ""))
    return {(namespace, labels[names.MODEL_LABEL]): facts}


@kopf.index("apps", "v1", "daemonsets", labels={**MANAGED, names.MODEL_LABEL: kopf.PRESENT})
def model_daemonsets(namespace: str, body: kopf.Body, labels: Any, **_: Any) -> dict:
    facts = WorkloadFacts.from_body(body, labels.get(names.ENGINE_LABEL, ""))
    return {(namespace, labels[names.MODEL_LABEL]): facts}


@kopf.index("apps", "v1", "deployments", labels={**MANAGED, names.POLICY_LABEL: kopf.PRESENT})
def policy_deployments(namespace: str, body: kopf.Body, labels: Any, **_: Any) -> dict:
    facts = WorkloadFacts.from_body(body, labels.get(names.COMPONENT, ""))
    return {(namespace, labels[names.POLICY_LABEL], labels.get(names.COMPONENT, "")): facts}


@kopf.index("", "v1", "pods", labels={**MANAGED, names.MODEL_LABEL: kopf.PRESENT})
def model_pod_problems(namespace: str, body: kopf.Body, labels: Any, **_: Any) -> dict | None:
    problem = pod_problem(body)
    return {(namespace, labels[names.MODEL_LABEL]): problem} if problem else None


@kopf.index("discovery.k8s.io", "v1", "endpointslices", labels=MANAGED)
def service_endpoints(namespace: str, body: kopf.Body, labels: Any, **_: Any) -> dict | None:
    service = labels.get("kubernetes.io/service-name")
    if not service:
        return None
    ready = sum(
        len(e.get("addresses") or [])
        for e in body.get("endpoints") or []
        if (e.get("conditions") or {}).get("ready", True)
    )
    return {(namespace, service): ready}


@kopf.index(
    "rbac.authorization.k8s.io", "v1", "rolebindings",
    labels={**MANAGED, POLICY_NAMESPACE_LABEL: kopf.PRESENT, names.POLICY_LABEL: kopf.PRESENT},
)  # fmt: skip
def router_pod_bindings(namespace: str, labels: Any, **_: Any) -> dict:
    """(policy namespace, policy) → the namespaces its router is bound in."""
    return {(labels[POLICY_NAMESPACE_LABEL], labels[names.POLICY_LABEL]): namespace}


@kopf.index(*SM)
def smallmodel_names(namespace: str, name: str, **_: Any) -> dict:
    return {(namespace, name): True}


# --- SmallModel ----------------------------------------------------------------
@kopf.on.resume(*SM)
@kopf.on.create(*SM)
@kopf.on.update(*SM, field="spec")
def reconcile_smallmodel(**kwargs: Any) -> None:
    keys = "body name namespace spec uid memo nodes logger model_deployments model_daemonsets"
    smallmodel.reconcile(**_pick(kwargs, keys))


# The first round waits one interval: creation has just applied everything.
@kopf.timer(*SM, interval=CONFIG.status_interval_s, initial_delay=CONFIG.status_interval_s)
async def refresh_smallmodel(**kwargs: Any) -> None:
    keys = "body name namespace spec uid status patch memo nodes model_deployments "
    keys += "model_daemonsets model_pod_problems service_endpoints logger"
    await smallmodel.refresh(**_pick(kwargs, keys))


# --- RoutingPolicy ---------------------------------------------------------------
@kopf.on.resume(*RP)
@kopf.on.create(*RP)
@kopf.on.update(*RP, field="spec")
def reconcile_routingpolicy(**kwargs: Any) -> None:
    routingpolicy.reconcile(**_pick(kwargs, "body name namespace spec uid memo logger"))


@kopf.timer(*RP, interval=CONFIG.status_interval_s, initial_delay=CONFIG.status_interval_s)
def refresh_routingpolicy(**kwargs: Any) -> None:
    keys = "body name namespace spec uid status patch memo policy_deployments "
    keys += "smallmodel_names service_endpoints router_pod_bindings logger"
    routingpolicy.refresh(**_pick(kwargs, keys))


def _binds_elsewhere(spec: Any, **_: Any) -> bool:
    return bool((spec.get("privacy") or {}).get("sensitiveNamespaces"))


# Only policies with sensitiveNamespaces get the finalizer: their RoleBindings
# live in other namespaces, out of the garbage collector's reach.
@kopf.on.delete(*RP, when=_binds_elsewhere)
def delete_routingpolicy(**kwargs: Any) -> None:
    routingpolicy.remove_pod_bindings(**_pick(kwargs, "name namespace memo logger"))


def _pick(kwargs: dict[str, Any], keys: str) -> dict[str, Any]:
    return {key: kwargs[key] for key in keys.split()}


__all__ = ["Kube"]


def _status_timers_without_finalizers() -> None:
    """Let the status timers run without putting a finalizer on every resource.

    Kopf marks every timer as needing a finalizer, so that it can stop the
    timer before the object goes. Ours only read indexes and write status; a
    tick racing a deletion gets a harmless 404. A finalizer, though, would
    leave every SmallModel and RoutingPolicy undeletable once the operator is
    uninstalled (the chart keeps the CRDs and the resources). Kopf offers no
    switch, hence the registry edit; tests/unit/test_operator_finalizers.py
    fails should a Kopf release change this shape. Kopf removes the finalizers
    it put on earlier resources once they are no longer required.
    """
    spawning = kopf.get_default_registry()._spawning._handlers
    for index, handler in enumerate(spawning):
        if handler.fn in (refresh_smallmodel, refresh_routingpolicy):
            spawning[index] = dataclasses.replace(handler, requires_finalizer=False)


_status_timers_without_finalizers()
