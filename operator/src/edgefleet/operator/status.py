"""Status from what the cluster shows (pure): conditions, replica counts, targets.

The handlers gather facts about children (from Kopf indexes, no API calls) and
these functions turn them into the `status` to write. Conditions follow the
Kubernetes convention: a transition time that moves only when the status does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from edgefleet.operator.placement import EnginePlan


@dataclass(frozen=True)
class WorkloadFacts:
    kind: str
    name: str
    engine: str
    desired: int
    ready: int
    updated: int
    generation: int
    observed_generation: int
    # Pods of an earlier template still running (a Deployment's surge rollout): the
    # rollout is not over until they are gone, even with `desired` new ones ready.
    old: int = 0

    @classmethod
    def from_body(cls, body: Mapping[str, Any], engine: str) -> WorkloadFacts:
        spec, status = body.get("spec") or {}, body.get("status") or {}
        kind = body.get("kind", "Deployment")
        if kind == "DaemonSet":
            desired = int(status.get("desiredNumberScheduled", 0))
            ready = int(status.get("numberReady", 0))
            updated = int(status.get("updatedNumberScheduled", 0))
            # One pod per node, replaced in place: `updated` says it all.
            old = 0
        else:
            desired = int(spec.get("replicas", 1))
            ready = int(status.get("readyReplicas", 0))
            updated = int(status.get("updatedReplicas", 0))
            # As `kubectl rollout status` reads it: replicas counts old and new pods.
            old = max(0, int(status.get("replicas", 0)) - updated)
        return cls(
            kind=kind,
            name=body["metadata"]["name"],
            engine=engine,
            desired=desired,
            ready=ready,
            updated=updated,
            generation=int(body["metadata"].get("generation", 0)),
            observed_generation=int(status.get("observedGeneration", 0)),
            old=old,
        )

    @property
    def settled(self) -> bool:
        return (
            self.observed_generation >= self.generation
            and self.updated >= self.desired
            and self.ready >= self.desired
            and self.old == 0
        )


def serving_pod(pod: Mapping[str, Any]) -> bool:
    """Ready and not on its way out: what a workload's readyReplicas counts."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def with_ready_pods(
    workloads: Iterable[WorkloadFacts], ready_pods: Callable[[str], int] | None
) -> list[WorkloadFacts]:
    """Each workload's ready count taken from its serving pods, by engine.

    The pod watch sees a pod turn Ready before the workload controller has
    rewritten the Deployment's or DaemonSet's counts (seconds on a busy control
    plane), so status follows the pod itself. None: the workloads' own counts.
    """
    if ready_pods is None:
        return list(workloads)
    return [replace(w, ready=ready_pods(w.engine)) for w in workloads]


@dataclass(frozen=True)
class PodProblem:
    """Why a pod is not serving, in the words a person needs."""

    pod: str
    reason: str
    message: str


# The kubelet is still setting a container up: no problem (yet).
STARTING = frozenset({"ContainerCreating", "PodInitializing"})
# The kubelet cannot get the container's image: whichever container it is, the fix
# is the image reference or the node's images, not the container's own work.
IMAGE_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "InvalidImageName",
        "ImageInspectError",
        "RegistryUnavailable",
        "SignatureValidationFailed",
    }
)


def pod_problem(pod: Mapping[str, Any], failing: str = "ServerFailing") -> PodProblem | None:
    """The first thing keeping this pod from serving, or None.

    `failing` is the reason for a main container that fails (a model's server, a
    policy's router or egress); an init container's failure is the model's fetch.
    Any waiting reason but the two of a container being set up counts, so a reason
    the kubelet adds later is reported rather than hidden.
    """
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            message = condition.get("message") or "the scheduler found no node"
            return PodProblem(name, "Unschedulable", message)
    for kind, reason in (
        ("initContainerStatuses", "ModelFetchFailed"),
        ("containerStatuses", failing),
    ):
        for container in status.get(kind) or []:
            state = container.get("state") or {}
            waiting = (state.get("waiting") or {}).get("reason")
            terminated = state.get("terminated") or {}
            if waiting and waiting not in STARTING:
                why = "ImagePullFailed" if waiting in IMAGE_REASONS else reason
                return PodProblem(name, why, f"{container['name']}: {_waiting(container)}")
            if terminated and terminated.get("exitCode", 0) != 0:
                detail = _last_line(terminated.get("message")) or (
                    f"exit code {terminated.get('exitCode')}"
                )
                return PodProblem(name, reason, f"{container['name']}: {detail}")
    return None


def _waiting(container: Mapping[str, Any]) -> str:
    """The kubelet's reason first (what `kubectl get pods` shows), then why: for a crash
    loop the last run's own message or exit code, which says more than the back-off."""
    waiting = container["state"]["waiting"]
    last = (container.get("lastState") or {}).get("terminated") or {}
    if waiting["reason"] == "CrashLoopBackOff" and last:
        why = _last_line(last.get("message")) or f"exit code {last.get('exitCode')}"
    else:
        why = waiting.get("message") or ""
    return f"{waiting['reason']}: {why}" if why else waiting["reason"]


def _last_line(message: str | None) -> str:
    """A termination message's last line: with FallbackToLogsOnError it is the log's
    tail, whose last line is the error (a status message stays one line)."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def condition(
    kind: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    previous: Sequence[Mapping[str, Any]],
    now: str,
) -> dict[str, Any]:
    value = "True" if status else "False"
    before = next((c for c in previous if c.get("type") == kind), None)
    since = (
        before.get("lastTransitionTime", now) if before and before.get("status") == value else now
    )
    return {
        "type": kind,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }


def smallmodel_status(
    *,
    generation: int,
    plans: Sequence[EnginePlan],
    workloads: Iterable[WorkloadFacts],
    problems: Sequence[PodProblem],
    ready_endpoints: int,
    service: str,
    previous: Sequence[Mapping[str, Any]],
    now: str,
    apply_error: str | None = None,
    invalid: str | None = None,
) -> dict[str, Any]:
    """`invalid` is why the spec was refused (the plans are then the last valid spec's)."""
    seen = {w.engine: w for w in workloads}
    engines: dict[str, Any] = {}
    for plan in plans:
        facts = seen.get(plan.engine)
        workload_kind = "DaemonSet" if plan.replicas is None else "Deployment"
        engines[plan.engine] = {
            "desired": facts.desired if facts else (plan.replicas or 0),
            "ready": facts.ready if facts else 0,
            "workload": f"{workload_kind}/{facts.name if facts else '-'}",
        }
    desired = sum(e["desired"] for e in engines.values())
    ready = sum(e["ready"] for e in engines.values())
    missing = [p.engine for p in plans if p.engine not in seen]
    settled = not missing and all(seen[p.engine].settled for p in plans)
    summary = ", ".join(f"{e} {v['ready']}/{v['desired']}" for e, v in engines.items())
    problem = problems[0] if problems else None

    if invalid:
        ready_state = (False, "InvalidSpec", invalid)
    elif apply_error:
        ready_state = (False, "ApplyFailed", apply_error)
    elif all(p.replicas is None and p.nodes == 0 for p in plans):
        ready_state = (False, "NoEligibleNodes", "no node matches the placement (selector, "
                       "sites, tolerations); nothing to run")  # fmt: skip
    elif desired == 0 and all(p.replicas == 0 for p in plans):
        ready_state = (False, "ScaledToZero", "no replicas asked for; the router sends this "
                       "model's traffic to the cloud if its policy allows")  # fmt: skip
    elif not missing and ready >= desired:
        # A surge rollout keeps every replica serving: Ready stays True, Progressing says so.
        ready_state = (True, "AllReplicasReady", f"{ready}/{desired} ready ({summary})")
    elif problem is not None:
        ready_state = (False, problem.reason, f"{ready}/{desired} ready; {problem.pod}: "
                       f"{problem.message}")  # fmt: skip
    else:
        ready_state = (False, "ReplicasNotReady", f"{ready}/{desired} ready ({summary})")

    refused = invalid or apply_error
    progressing = not settled and not refused and (problem is None or ready > 0)
    degraded = bool(refused) or (problem is not None) or (0 < ready < desired)
    conditions = [
        condition("Ready", *ready_state, generation, previous, now),
        condition(
            "Progressing",
            progressing,
            "RollingOut" if progressing else "Stable",
            f"rolling out: {summary}" if progressing else "every workload is up to date",
            generation,
            previous,
            now,
        ),
        condition(
            "Degraded",
            degraded,
            (ready_state[1] if not ready_state[0] else "PartiallyReady")
            if degraded
            else "AsExpected",
            ready_state[2] if degraded else "no failure seen",
            generation,
            previous,
            now,
        ),
    ]
    return {
        "observedGeneration": generation,
        "conditions": conditions,
        "engines": engines,
        "readyReplicas": ready,
        "desiredReplicas": desired,
        "service": service,
        "endpoints": ready_endpoints,
    }


def routingpolicy_status(
    *,
    generation: int,
    targets: Sequence[Mapping[str, Any]],
    target_endpoints: Mapping[str, int | None],
    router: WorkloadFacts | None,
    egress: WorkloadFacts | None,
    cloud: bool,
    previous: Sequence[Mapping[str, Any]],
    now: str,
    invalid: str | None = None,
    problems: Mapping[str, PodProblem] | None = None,
) -> dict[str, Any]:
    """`target_endpoints[name]` is the target's ready endpoint count, None when no such model;
    `problems[component]` is what keeps a router or egress pod from serving."""
    resolved = [
        {
            "smallModel": t["smallModel"],
            "service": t["smallModel"],
            "weight": int(t.get("weight", 1)),
            "readyEndpoints": target_endpoints.get(t["smallModel"]) or 0,
        }
        for t in targets
    ]
    missing = [t["smallModel"] for t in targets if target_endpoints.get(t["smallModel"]) is None]
    local_ready = sum(r["readyEndpoints"] for r in resolved)
    router_ready = router is not None and router.ready > 0
    egress_ready = egress is not None and egress.ready > 0
    router_problem = (problems or {}).get("router")
    egress_problem = (problems or {}).get("egress")
    if invalid:
        ready = (False, "InvalidPolicy", invalid)
    elif not router_ready and router_problem:
        ready = (False, router_problem.reason, f"the router has no ready pod; "
                 f"{router_problem.pod}: {router_problem.message}")  # fmt: skip
    elif not router_ready:
        ready = (False, "RouterNotReady", "the router has no ready pod yet")
    elif local_ready == 0 and not (cloud and egress_ready):
        why = f"; {egress_problem.pod}: {egress_problem.message}" if egress_problem else ""
        ready = (False, "NoBackends", f"no local endpoint is ready and the cloud is not "
                 f"available{why}")  # fmt: skip
    else:
        parts = [f"{local_ready} local endpoint(s) ready"]
        if cloud:
            parts.append("egress ready" if egress_ready else "egress NOT ready")
        ready = (True, "Routing", "; ".join(parts))
    faults, degraded_reason = [], "TargetsUnavailable"
    if missing:
        faults.append(f"no SmallModel named {', '.join(missing)} in this namespace")
    if cloud and not egress_ready and not invalid:
        if egress_problem:
            faults.append(
                f"the egress has no ready pod; {egress_problem.pod}: {egress_problem.message}"
            )
            degraded_reason = egress_problem.reason
        else:
            faults.append("the egress has no ready pod")
    if targets and local_ready == 0 and not invalid:
        faults.append("no local endpoint is ready")
    if router_problem and not router_ready and not invalid:
        # A failing router (not one starting up): Degraded says what Ready says.
        faults.insert(0, ready[2])
        degraded_reason = ready[1]
    conditions = [
        condition("Ready", *ready, generation, previous, now),
        condition(
            "Degraded",
            bool(faults),
            degraded_reason if faults else "AsExpected",
            "; ".join(faults) if faults else "every target and the egress are ready",
            generation,
            previous,
            now,
        ),
    ]
    return {"observedGeneration": generation, "conditions": conditions, "resolvedTargets": resolved}
