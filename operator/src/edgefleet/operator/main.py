"""edgefleet-operator: run the Kopf handlers for SmallModel, RoutingPolicy and
RouterCalibration, cluster-wide.

Every Kopf registration is in `build_registry`, the one place that says what
the operator watches and which function of which resource's module handles
it; importing a module registers nothing. One replica (the chart's
Deployment uses the Recreate strategy); Kopf peering makes a stray second
instance freeze instead of acting twice. The liveness endpoint answers once
the operator is up and its handlers are running.

Status is event-driven: each SmallModel and RoutingPolicy has a daemon that
recomputes its status (from Kopf's indexes, no API call) when one of its
children or the fleet changes, debounced, and at the latest every
`statusIntervalSeconds` as a safety net.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any

import kopf

from edgefleet.calibrate.publish import CALIBRATION_LABEL
from edgefleet.kubeapi import api_client, endpoint_serving
from edgefleet.operator import names
from edgefleet.operator.builders.routingpolicy import POLICY_NAMESPACE_LABEL
from edgefleet.operator.config import OperatorConfig
from edgefleet.operator.handlers import calibration, routingpolicy, smallmodel
from edgefleet.operator.kube import Kube
from edgefleet.operator.placement import NodeFacts
from edgefleet.operator.state import OperatorContext, States
from edgefleet.operator.status import PodProblem, WorkloadFacts, pod_problem, serving_pod
from edgefleet.operator.triggers import (
    ROUTERCALIBRATION,
    ROUTINGPOLICY,
    SERVICE_NAME_LABEL,
    SMALLMODEL,
    Parent,
    parents_of_child,
)

MANAGED = {names.MANAGED_BY: names.MANAGER}
MODEL_CHILD = {**MANAGED, names.MODEL_LABEL: kopf.PRESENT}
POLICY_CHILD = {**MANAGED, names.POLICY_LABEL: kopf.PRESENT}
ROUTER_BINDING = {**POLICY_CHILD, POLICY_NAMESPACE_LABEL: kopf.PRESENT}
SM = (names.GROUP, names.VERSION, names.SMALLMODELS)
RP = (names.GROUP, names.VERSION, names.ROUTINGPOLICIES)
RC = (names.GROUP, names.VERSION, names.ROUTERCALIBRATIONS)
# KubeRay's; served only where its CRD is installed (Kopf watches it once it appears).
RAYJOBS = ("ray.io", "v1", "rayjobs")
# Kopf cancels a daemon this long after asking it to stop (ours stop at once when cancelled).
DAEMON_CANCELLATION_S = 5.0

PolicyTargetIndex = kopf.Index[tuple[str, str], str]
Logger = logging.Logger | logging.LoggerAdapter


def context(memo: kopf.Memo) -> OperatorContext:
    found: OperatorContext = memo.context
    return found


# --- startup ---------------------------------------------------------------------
# The kinds of children the operator watches; only its own (the managed-by label) matter.
CHILD_KINDS = (
    ("", "v1", "pods"),
    ("apps", "v1", "deployments"),
    ("apps", "v1", "daemonsets"),
    ("discovery.k8s.io", "v1", "endpointslices"),
    ("rbac.authorization.k8s.io", "v1", "rolebindings"),
)


def watch_only_managed_children(settings: kopf.OperatorSettings) -> None:
    """List and watch only the operator's own children, filtered by the API server.

    Kopf's handler label filters are applied in the operator, after the whole
    kind has been listed and streamed: every pod of the cluster reached it, and
    at start-up every one of them took part in Kopf's wait until all objects are
    indexed, which costs the square of their number (docs/benchmarks.md, 2,000
    SmallModels). A server-side selector keeps foreign objects out entirely.
    """
    for kind in CHILD_KINDS:
        settings.watching.label_selectors[kind] = f"{names.MANAGED_BY}={names.MANAGER}"


async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Every Kopf setting, and what the handlers share (memo.context)."""
    config: OperatorConfig = memo.config
    # Peering: a stray second operator freezes instead of acting twice.
    settings.peering.name = config.peering_name
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
    watch_only_managed_children(settings)
    settings.posting.reporting_component = "edgefleet-operator"
    # Only our own Events (kopf.event, kopf.warn) reach people; handler chatter stays in the log.
    settings.posting.level = logging.WARNING
    settings.networking.request_timeout = 60
    # Handlers are async; their blocking API calls (asyncio.to_thread) share
    # Kopf's pool, one pooled API connection per thread.
    settings.execution.max_workers = config.workers
    asyncio.get_running_loop().set_default_executor(settings.execution.executor)
    kube = Kube(api_client(connections=config.workers))
    endpoints = await asyncio.to_thread(routingpolicy.api_endpoints, kube, config)
    memo.context = OperatorContext(config, kube, States(), endpoints)


# --- indexes: what status and planning read, kept from watches -------------------------
async def nodes(body: kopf.Body, memo: kopf.Memo, **_: Any) -> dict[str, NodeFacts]:
    config: OperatorConfig = memo.config
    return {"nodes": NodeFacts.from_node(body, config.gpu_resource)}


async def model_deployments(
    namespace: str, body: kopf.Body, labels: kopf.Labels, **_: Any
) -> dict[tuple[str, str], WorkloadFacts]:
    facts = WorkloadFacts.from_body(body, labels.get(names.ENGINE_LABEL, ""))
    return {(namespace, labels[names.MODEL_LABEL]): facts}


async def model_daemonsets(
    namespace: str, body: kopf.Body, labels: kopf.Labels, **_: Any
) -> dict[tuple[str, str], WorkloadFacts]:
    facts = WorkloadFacts.from_body(body, labels.get(names.ENGINE_LABEL, ""))
    return {(namespace, labels[names.MODEL_LABEL]): facts}


async def policy_deployments(
    namespace: str, body: kopf.Body, labels: kopf.Labels, **_: Any
) -> dict[tuple[str, str, str], WorkloadFacts]:
    component = labels.get(names.COMPONENT, "")
    facts = WorkloadFacts.from_body(body, component)
    return {(namespace, labels[names.POLICY_LABEL], component): facts}


async def model_pod_problems(
    namespace: str, body: kopf.Body, labels: kopf.Labels, **_: Any
) -> dict[tuple[str, str], PodProblem] | None:
    problem = pod_problem(body)
    return {(namespace, labels[names.MODEL_LABEL]): problem} if problem else None


async def model_ready_pods(
    namespace: str, body: kopf.Body, labels: kopf.Labels, **_: Any
) -> dict[tuple[str, str, str], str] | None:
    if not serving_pod(body):
        return None
    engine = labels.get(names.ENGINE_LABEL, "")
    return {(namespace, labels[names.MODEL_LABEL], engine): body["metadata"]["name"]}


# What a failing main container of a policy's pod is, by the pod's component.
FAILING = {names.ROUTER: "RouterFailing", names.EGRESS: "EgressFailing"}


async def policy_pod_problems(
    namespace: str, body: kopf.Body, labels: kopf.Labels, **_: Any
) -> dict[tuple[str, str, str], PodProblem] | None:
    component = labels.get(names.COMPONENT, "")
    problem = pod_problem(body, FAILING.get(component, "ServerFailing"))
    key = (namespace, labels[names.POLICY_LABEL], component)
    return {key: problem} if problem else None


async def service_endpoints(
    namespace: str, body: kopf.Body, labels: kopf.Labels, **_: Any
) -> dict[tuple[str, str], int] | None:
    """Ready endpoints per Service: exactly those the router sends traffic to."""
    service = labels.get(SERVICE_NAME_LABEL)
    if not service:
        return None
    ready = sum(1 for e in body.get("endpoints") or [] if endpoint_serving(e))
    return {(namespace, service): ready}


async def router_pod_bindings(
    namespace: str, labels: kopf.Labels, **_: Any
) -> dict[tuple[str, str], str]:
    """(policy namespace, policy) → the namespaces its router is bound in."""
    return {(labels[POLICY_NAMESPACE_LABEL], labels[names.POLICY_LABEL]): namespace}


async def smallmodel_names(namespace: str, name: str, **_: Any) -> dict[tuple[str, str], bool]:
    return {(namespace, name): True}


async def policy_targets(
    namespace: str, name: str, spec: kopf.Spec, **_: Any
) -> dict[tuple[str, str], str]:
    """(namespace, SmallModel) → the RoutingPolicies that list it as a local target."""
    targets = (spec.get("local") or {}).get("targets") or []
    return {(namespace, t["smallModel"]): name for t in targets if t.get("smallModel")}


# --- events: whose status a change concerns ---------------------------------------
async def child_changed(
    param: str,
    namespace: str,
    labels: kopf.Labels,
    memo: kopf.Memo,
    policy_targets: PolicyTargetIndex,
    **_: Any,
) -> None:
    """A child of ours changed (`param` is its kind): its parents' status rounds are due."""

    def targeting(where: str, model: str) -> list[str]:
        return list(policy_targets.get((where, model), []))

    states = context(memo).states
    states.activity[f"events.{param}"] += 1
    for parent in parents_of_child(param, namespace, labels, targeting):
        states.activity[f"pokes.{param}"] += 1
        states.poke(parent)


async def node_changed(
    type: str | None, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    """A node came, went or changed what planning reads: the models it concerns replan."""
    ctx = context(memo)
    ctx.states.activity["events.Node"] += 1
    if type == "DELETED":
        facts = None
        changed = ctx.states.fleet.forget(name)
    else:
        facts = NodeFacts.from_node(body, ctx.config.gpu_resource)
        changed = ctx.states.fleet.observe(facts)
    if changed:
        ctx.states.activity["pokes.Node"] += ctx.states.node_changed(
            name, facts, ctx.config.gpu_node_label
        )


async def smallmodel_changed(
    type: str | None,
    namespace: str,
    name: str,
    memo: kopf.Memo,
    policy_targets: PolicyTargetIndex,
    **_: Any,
) -> None:
    """A model that comes or goes changes the status of the policies that target it."""
    states = context(memo).states
    states.activity["events.SmallModel"] += 1
    if type == "DELETED":
        states.forget(Parent(SMALLMODEL, namespace, name))
    if type in ("ADDED", "DELETED"):
        for policy in policy_targets.get((namespace, name), []):
            states.poke(Parent(ROUTINGPOLICY, namespace, policy))


async def routingpolicy_changed(
    type: str | None, namespace: str, name: str, memo: kopf.Memo, **_: Any
) -> None:
    states = context(memo).states
    states.activity["events.RoutingPolicy"] += 1
    if type == "DELETED":
        states.forget(Parent(ROUTINGPOLICY, namespace, name))


async def activity(memo: kopf.Memo, **_: Any) -> dict[str, int]:
    """Counters since start, on the liveness endpoint (Kopf re-reads probes every 10 s at most)."""
    return dict(context(memo).states.activity)


# --- SmallModel ------------------------------------------------------------------
async def reconcile_smallmodel(
    body: kopf.Body,
    namespace: str,
    name: str,
    memo: kopf.Memo,
    nodes: smallmodel.NodeIndex,
    model_deployments: smallmodel.WorkloadIndex,
    model_daemonsets: smallmodel.WorkloadIndex,
    logger: Logger,
    **_: Any,
) -> None:
    ctx = context(memo)
    await smallmodel.apply(
        ctx, ctx.states.model(namespace, name), body=body, nodes=nodes,
        model_deployments=model_deployments, model_daemonsets=model_daemonsets, logger=logger,
    )  # fmt: skip


async def keep_smallmodel_status(
    body: kopf.Body,
    namespace: str,
    name: str,
    memo: kopf.Memo,
    nodes: smallmodel.NodeIndex,
    model_deployments: smallmodel.WorkloadIndex,
    model_daemonsets: smallmodel.WorkloadIndex,
    model_pod_problems: smallmodel.ProblemIndex,
    model_ready_pods: smallmodel.ReadyPodIndex,
    service_endpoints: smallmodel.EndpointIndex,
    logger: Logger,
    **_: Any,
) -> None:
    ctx = context(memo)
    await smallmodel.keep_status(
        ctx, ctx.states.model(namespace, name), body=body, nodes=nodes,
        model_deployments=model_deployments, model_daemonsets=model_daemonsets,
        model_pod_problems=model_pod_problems, model_ready_pods=model_ready_pods,
        service_endpoints=service_endpoints, logger=logger,
    )  # fmt: skip


# --- RoutingPolicy ---------------------------------------------------------------
async def reconcile_routingpolicy(
    body: kopf.Body, namespace: str, name: str, memo: kopf.Memo, logger: Logger, **_: Any
) -> None:
    ctx = context(memo)
    await routingpolicy.apply(ctx, ctx.states.policy(namespace, name), body=body, logger=logger)


async def keep_routingpolicy_status(
    body: kopf.Body,
    namespace: str,
    name: str,
    memo: kopf.Memo,
    policy_deployments: routingpolicy.PolicyWorkloadIndex,
    policy_pod_problems: routingpolicy.PolicyProblemIndex,
    smallmodel_names: routingpolicy.ModelNameIndex,
    service_endpoints: routingpolicy.EndpointIndex,
    router_pod_bindings: routingpolicy.BindingIndex,
    logger: Logger,
    **_: Any,
) -> None:
    ctx = context(memo)
    await routingpolicy.keep_status(
        ctx, ctx.states.policy(namespace, name), body=body,
        policy_deployments=policy_deployments, policy_pod_problems=policy_pod_problems,
        smallmodel_names=smallmodel_names, service_endpoints=service_endpoints,
        router_pod_bindings=router_pod_bindings, logger=logger,
    )  # fmt: skip


def binds_elsewhere(spec: kopf.Spec, **_: Any) -> bool:
    return bool((spec.get("privacy") or {}).get("sensitiveNamespaces"))


async def delete_routingpolicy(
    namespace: str, name: str, memo: kopf.Memo, logger: Logger, **_: Any
) -> None:
    await asyncio.to_thread(
        routingpolicy.remove_pod_bindings, context(memo), name, namespace, logger
    )


# --- RouterCalibration --------------------------------------------------------------
async def hand_policy_its_classifier(
    ctx: OperatorContext, namespace: str, policy: str, logger: Logger, calibration: str = ""
) -> None:
    """Reconcile a policy so its router gets the classifier its calibration promotes now
    (only if it names `calibration`, when given)."""
    body = await asyncio.to_thread(ctx.kube.get, "RoutingPolicy", namespace, policy)
    named = (((body or {}).get("spec") or {}).get("complexity") or {}).get("calibration")
    if body is None or (calibration and named != calibration):
        return
    # A refusal is the policy's own to report (its Event and status).
    with contextlib.suppress(kopf.PermanentError):
        await routingpolicy.apply(
            ctx, ctx.states.policy(namespace, policy), body=body, logger=logger
        )


async def routercalibration_changed(
    type: str | None,
    namespace: str,
    name: str,
    body: kopf.Body,
    memo: kopf.Memo,
    logger: Logger,
    **_: Any,
) -> None:
    ctx = context(memo)
    ctx.states.activity["events.RouterCalibration"] += 1
    if type != "DELETED":
        ctx.states.calibration(namespace, name).trigger.poke()
        return
    ctx.states.forget(Parent(ROUTERCALIBRATION, namespace, name))
    # Its results go with it: the policy that serves its artefact goes back to the shipped one.
    policy = (body.get("spec") or {}).get("policy")
    if policy:
        await hand_policy_its_classifier(ctx, namespace, policy, logger, calibration=name)


async def rayjob_changed(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    """A run's RayJob moved on: its calibration's round is due."""
    states = context(memo).states
    states.activity["events.RayJob"] += 1
    state = states.calibrations.get((namespace, labels[CALIBRATION_LABEL]))
    if state is not None:
        state.trigger.poke()


async def keep_routercalibration(
    namespace: str, name: str, memo: kopf.Memo, logger: Logger, **_: Any
) -> None:
    ctx = context(memo)

    async def reconcile_policy(where: str, policy: str) -> None:
        await hand_policy_its_classifier(ctx, where, policy, logger)

    await calibration.keep_calibration(
        ctx, ctx.states.calibration(namespace, name), namespace=namespace, name=name,
        logger=logger, reconcile_policy=reconcile_policy,
    )  # fmt: skip


# --- registration ----------------------------------------------------------------
def build_registry(config: OperatorConfig) -> kopf.OperatorRegistry:
    """Every handler the operator runs, registered in one place."""
    registry = kopf.OperatorRegistry()
    on: dict[str, Any] = {"registry": registry}
    # A registry of our own starts without Kopf's default login: the kubernetes
    # client's credentials, as everything else here uses (edgefleet.kubeapi).
    kopf.on.login(**on)(kopf.login_via_client)
    kopf.on.startup(**on)(configure)
    kopf.on.probe(id="activity", **on)(activity)

    kopf.index("", "v1", "nodes", **on)(nodes)
    kopf.index("apps", "v1", "deployments", labels=MODEL_CHILD, **on)(model_deployments)
    kopf.index("apps", "v1", "daemonsets", labels=MODEL_CHILD, **on)(model_daemonsets)
    kopf.index("apps", "v1", "deployments", labels=POLICY_CHILD, **on)(policy_deployments)
    kopf.index("", "v1", "pods", labels=MODEL_CHILD, **on)(model_pod_problems)
    kopf.index("", "v1", "pods", labels=MODEL_CHILD, **on)(model_ready_pods)
    kopf.index("", "v1", "pods", labels=POLICY_CHILD, **on)(policy_pod_problems)
    kopf.index("discovery.k8s.io", "v1", "endpointslices", labels=MANAGED, **on)(service_endpoints)
    kopf.index("rbac.authorization.k8s.io", "v1", "rolebindings", labels=ROUTER_BINDING, **on)(
        router_pod_bindings
    )
    kopf.index(*SM, **on)(smallmodel_names)
    kopf.index(*RP, **on)(policy_targets)

    # The same watches feed the events: a child's change pokes its parents' status.
    for resource, kind, labels in (
        (("apps", "v1", "deployments"), "Deployment", MANAGED),
        (("apps", "v1", "daemonsets"), "DaemonSet", MODEL_CHILD),
        (("", "v1", "pods"), "Pod", MANAGED),
        (("discovery.k8s.io", "v1", "endpointslices"), "EndpointSlice", MANAGED),
        (("rbac.authorization.k8s.io", "v1", "rolebindings"), "RoleBinding", ROUTER_BINDING),
    ):
        kopf.on.event(*resource, labels=labels, param=kind, id=f"{kind.lower()}_changed", **on)(
            child_changed
        )
    kopf.on.event("", "v1", "nodes", **on)(node_changed)
    kopf.on.event(*SM, **on)(smallmodel_changed)
    kopf.on.event(*RP, **on)(routingpolicy_changed)
    kopf.on.event(*RC, **on)(routercalibration_changed)
    kopf.on.event(*RAYJOBS, labels={CALIBRATION_LABEL: kopf.PRESENT}, **on)(rayjob_changed)

    kopf.on.resume(*SM, **on)(reconcile_smallmodel)
    kopf.on.create(*SM, **on)(reconcile_smallmodel)
    kopf.on.update(*SM, field="spec", **on)(reconcile_smallmodel)
    kopf.on.resume(*RP, **on)(reconcile_routingpolicy)
    kopf.on.create(*RP, **on)(reconcile_routingpolicy)
    kopf.on.update(*RP, field="spec", **on)(reconcile_routingpolicy)
    # Only policies with sensitiveNamespaces get the finalizer: their RoleBindings
    # live in other namespaces, out of the garbage collector's reach.
    kopf.on.delete(*RP, when=binds_elsewhere, **on)(delete_routingpolicy)

    daemon = {"cancellation_timeout": DAEMON_CANCELLATION_S, **on}
    kopf.daemon(*SM, **daemon)(keep_smallmodel_status)
    kopf.daemon(*RP, **daemon)(keep_routingpolicy_status)
    kopf.daemon(*RC, **daemon)(keep_routercalibration)
    _without_finalizers(
        registry, {keep_smallmodel_status, keep_routingpolicy_status, keep_routercalibration}
    )
    return registry


def _without_finalizers(registry: kopf.OperatorRegistry, daemons: set[Callable[..., Any]]) -> None:
    """Let the status daemons run without putting a finalizer on every resource.

    Kopf marks every daemon as needing a finalizer, so that it can stop the
    daemon before the object goes. Ours only read indexes and write status; a
    round racing a deletion gets a harmless 404. A finalizer, though, would
    leave every SmallModel and RoutingPolicy undeletable once the operator is
    uninstalled (the chart keeps the CRDs and the resources). Kopf offers no
    switch, hence this edit of its registry; tests/unit/test_operator_finalizers.py
    fails should a Kopf release change this shape. Kopf removes the finalizers
    it put on earlier resources once they are no longer required.
    """
    spawning = registry._spawning._handlers
    for index, handler in enumerate(spawning):
        if handler.fn in daemons:
            spawning[index] = dataclasses.replace(handler, requires_finalizer=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="edgefleet-operator",
        description="Run SmallModels and RoutingPolicies: model servers, router, egress.",
    )
    parser.add_argument(
        "--liveness",
        default=os.environ.get("EDGEFLEET_LIVENESS", "http://0.0.0.0:8080/healthz"),
        help="Kopf's liveness endpoint (env EDGEFLEET_LIVENESS); empty disables it",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("EDGEFLEET_LOG_LEVEL", OperatorConfig.log_level),
        help="(env EDGEFLEET_LOG_LEVEL)",
    )
    args = parser.parse_args(argv)
    try:
        config = OperatorConfig.from_env()
    except ValueError as exc:
        parser.exit(2, f"edgefleet-operator: {exc}\n")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Probes hit the liveness endpoint every few seconds: not worth a log line each.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # Kopf logs every handler call of every resource (hundreds a second at
    # scale: each child's event is one); our own lines name the resource instead.
    if args.log_level.upper() != "DEBUG":
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kopf.run(
        registry=build_registry(config),
        memo=kopf.Memo(config=config),
        clusterwide=True,
        liveness_endpoint=args.liveness or None,
    )


if __name__ == "__main__":
    main()
