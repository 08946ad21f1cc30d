"""Status from what the cluster shows: workload facts, pod problems, conditions (pure)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefleet.operator.handlers.common import degraded_transition
from edgefleet.operator.placement import EnginePlan
from edgefleet.operator.status import (
    PodProblem,
    WorkloadFacts,
    pod_problem,
    routingpolicy_status,
    serving_pod,
    smallmodel_status,
    with_ready_pods,
)
from tests.cluster import versions
from tests.unit.test_operator_smallmodel_handler import with_events

T0 = "2026-01-01T00:00:00Z"
T1 = "2026-01-01T00:05:00Z"
CHART = Path(__file__).resolve().parents[2] / "charts" / "edgefleet"


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def summary(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


# --- WorkloadFacts -------------------------------------------------------------


def _pod(ready: str, deleting: bool = False) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "p"}
    if deleting:
        metadata["deletionTimestamp"] = "2026-12-07T00:00:00Z"
    return {"metadata": metadata, "status": {"conditions": [{"type": "Ready", "status": ready}]}}


def test_a_serving_pod_is_ready_and_not_being_deleted() -> None:
    assert serving_pod(_pod("True"))
    assert not serving_pod(_pod("False"))
    assert not serving_pod(_pod("True", deleting=True))
    assert not serving_pod({"metadata": {"name": "p"}})


def test_ready_counts_come_from_the_pods_before_the_workload_controller_catches_up() -> None:
    # The Deployment still says 0 ready; the pod watch has seen one pod of each engine Ready.
    stale = [
        WorkloadFacts("Deployment", "m-llamacpp", "llamacpp", 2, 0, 2, 1, 1),
        WorkloadFacts("Deployment", "m-vllm", "vllm", 1, 1, 1, 1, 1),
    ]
    ready = {"llamacpp": 1, "vllm": 0}
    counted = with_ready_pods(stale, ready.__getitem__)
    assert [(w.name, w.ready) for w in counted] == [("m-llamacpp", 1), ("m-vllm", 0)]
    assert not counted[0].settled and not counted[1].settled
    assert with_ready_pods(stale, None) == stale


def test_facts_from_a_deployment() -> None:
    body = {
        "kind": "Deployment",
        "metadata": {"name": "m-llamacpp", "generation": 4},
        "spec": {"replicas": 3},
        "status": {"readyReplicas": 2, "updatedReplicas": 3, "observedGeneration": 4},
    }

    facts = WorkloadFacts.from_body(body, "llamacpp")

    assert facts == WorkloadFacts("Deployment", "m-llamacpp", "llamacpp", 3, 2, 3, 4, 4)
    assert not facts.settled


def test_facts_from_a_daemonset() -> None:
    body = {
        "kind": "DaemonSet",
        "metadata": {"name": "m-vllm", "generation": 2},
        "spec": {},
        "status": {
            "desiredNumberScheduled": 2,
            "numberReady": 2,
            "updatedNumberScheduled": 2,
            "observedGeneration": 2,
        },
    }

    facts = WorkloadFacts.from_body(body, "vllm")

    assert facts == WorkloadFacts("DaemonSet", "m-vllm", "vllm", 2, 2, 2, 2, 2)
    assert facts.settled


def test_facts_of_a_new_deployment_without_status() -> None:
    body = {"kind": "Deployment", "metadata": {"name": "m-llamacpp", "generation": 1}, "spec": {}}

    facts = WorkloadFacts.from_body(body, "llamacpp")

    # The API server defaults replicas to 1; nothing is observed yet.
    assert facts == WorkloadFacts("Deployment", "m-llamacpp", "llamacpp", 1, 0, 0, 1, 0)
    assert not facts.settled


def test_a_surge_rollout_is_not_settled_while_an_old_pod_still_runs() -> None:
    # Scaled 1 -> 2 with a new template: both new pods ready, the old one not yet gone.
    body = {
        "kind": "Deployment",
        "metadata": {"name": "m-llamacpp", "generation": 2},
        "spec": {"replicas": 2},
        "status": {
            "replicas": 3,
            "readyReplicas": 3,
            "updatedReplicas": 2,
            "observedGeneration": 2,
        },
    }

    facts = WorkloadFacts.from_body(body, "llamacpp")

    assert facts.old == 1
    assert not facts.settled
    finished = {**body, "status": {**body["status"], "replicas": 2, "readyReplicas": 2}}
    assert WorkloadFacts.from_body(finished, "llamacpp").settled


def test_a_workload_is_not_settled_until_its_generation_is_observed() -> None:
    fresh = WorkloadFacts("Deployment", "w", "llamacpp", 1, 1, 1, 3, 2)
    assert not fresh.settled
    assert WorkloadFacts("Deployment", "w", "llamacpp", 1, 1, 1, 3, 3).settled


# --- pod_problem ---------------------------------------------------------------


def pod(status: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "m-llamacpp-abc12"}, "status": status}


SCHEDULER = "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."


def test_unschedulable_pod_gives_the_scheduler_message() -> None:
    status = {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": SCHEDULER,
            },
        ],
    }

    assert pod_problem(pod(status)) == PodProblem("m-llamacpp-abc12", "Unschedulable", SCHEDULER)


def test_failing_fetch_init_container_is_model_fetch_failed() -> None:
    status = {
        "phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "True"}],
        "initContainerStatuses": [
            {
                "name": "fetch-model",
                "state": {
                    "terminated": {"exitCode": 2, "message": "sha256 mismatch", "reason": "Error"}
                },
            }
        ],
    }

    assert pod_problem(pod(status)) == PodProblem(
        "m-llamacpp-abc12", "ModelFetchFailed", "fetch-model: sha256 mismatch"
    )


def test_fetch_in_crash_loop_without_message_gives_the_reason() -> None:
    status = {
        "initContainerStatuses": [
            {"name": "fetch-model", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
        ],
    }

    assert pod_problem(pod(status)) == PodProblem(
        "m-llamacpp-abc12", "ModelFetchFailed", "fetch-model: CrashLoopBackOff"
    )


def test_terminated_without_message_gives_the_exit_code() -> None:
    status = {
        "initContainerStatuses": [
            {"name": "fetch-model", "state": {"terminated": {"exitCode": 137}}}
        ],
    }

    assert pod_problem(pod(status)) == PodProblem(
        "m-llamacpp-abc12", "ModelFetchFailed", "fetch-model: exit code 137"
    )


def test_crash_looping_server_is_server_failing() -> None:
    status = {
        "initContainerStatuses": [
            {"name": "fetch-model", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
        ],
        "containerStatuses": [
            {
                "name": "server",
                "state": {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": "back-off 40s restarting failed container=server",
                    }
                },
            }
        ],
    }

    assert pod_problem(pod(status)) == PodProblem(
        "m-llamacpp-abc12",
        "ServerFailing",
        "server: CrashLoopBackOff: back-off 40s restarting failed container=server",
    )


def test_a_crash_loop_names_the_last_runs_own_message_or_exit_code() -> None:
    def looping(last: dict[str, Any]) -> dict[str, Any]:
        waiting = {"reason": "CrashLoopBackOff", "message": "back-off 20s restarting"}
        return {
            "initContainerStatuses": [
                {"name": "fetch-model", "state": {"waiting": waiting},
                 "lastState": {"terminated": last}}
            ]
        }  # fmt: skip

    said = looping({"exitCode": 1, "message": "GET http://192.0.2.1/m.gguf: unreachable\n"})
    assert pod_problem(pod(said)) == PodProblem(
        "m-llamacpp-abc12",
        "ModelFetchFailed",
        "fetch-model: CrashLoopBackOff: GET http://192.0.2.1/m.gguf: unreachable",
    )
    silent = looping({"exitCode": 137})
    assert pod_problem(pod(silent)).message == "fetch-model: CrashLoopBackOff: exit code 137"


def test_create_container_config_error_is_server_failing() -> None:
    message = 'secret "missing" not found'
    status = {
        "containerStatuses": [
            {
                "name": "server",
                "state": {"waiting": {"reason": "CreateContainerConfigError", "message": message}},
            }
        ],
    }

    assert pod_problem(pod(status)) == PodProblem(
        "m-llamacpp-abc12", "ServerFailing", f"server: CreateContainerConfigError: {message}"
    )


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("ErrImageNeverPull", 'Container image "ghcr.io/edgefleet/edgefleet:0.0.0" is not present '
                              "with pull policy of Never"),
        ("ImagePullBackOff", 'Back-off pulling image "ghcr.io/edgefleet/edgefleet:0.0.0"'),
        ("InvalidImageName", 'Failed to apply default image tag "Edgefleet:x": couldn\'t parse'),
    ],
)  # fmt: skip
def test_an_image_the_kubelet_cannot_get_is_image_pull_failed_in_any_container(
    reason: str, message: str
) -> None:
    waiting = {"state": {"waiting": {"reason": reason, "message": message}}}
    fetch = {"initContainerStatuses": [{"name": "fetch-model", **waiting}]}
    server = {"containerStatuses": [{"name": "server", **waiting}]}

    for status, container in ((fetch, "fetch-model"), (server, "server")):
        assert pod_problem(pod(status)) == PodProblem(
            "m-llamacpp-abc12", "ImagePullFailed", f"{container}: {reason}: {message}"
        )


def test_a_waiting_reason_unknown_today_is_reported_not_hidden() -> None:
    status = {
        "containerStatuses": [
            {"name": "egress", "state": {"waiting": {"reason": "SomethingNew", "message": "why"}}}
        ],
    }

    assert pod_problem(pod(status), "EgressFailing") == PodProblem(
        "m-llamacpp-abc12", "EgressFailing", "egress: SomethingNew: why"
    )


def test_healthy_and_starting_pods_have_no_problem() -> None:
    healthy = {
        "phase": "Running",
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "True"},
        ],
        "initContainerStatuses": [
            {"name": "fetch-model", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
        ],
        "containerStatuses": [{"name": "server", "state": {"running": {"startedAt": T0}}}],
    }
    starting = {
        "phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "True"}],
        "initContainerStatuses": [
            {"name": "fetch-model", "state": {"waiting": {"reason": "PodInitializing"}}}
        ],
        "containerStatuses": [
            {"name": "server", "state": {"waiting": {"reason": "PodInitializing"}}}
        ],
    }

    assert pod_problem(pod(healthy)) is None
    assert pod_problem(pod(starting)) is None
    assert pod_problem(pod({})) is None


# --- smallmodel_status -----------------------------------------------------------


def deployment(engine: str, desired: int, ready: int, updated: int | None = None) -> WorkloadFacts:
    updated = desired if updated is None else updated
    return WorkloadFacts("Deployment", f"m-{engine}", engine, desired, ready, updated, 1, 1)


def model_status(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "generation": 1,
        "plans": [EnginePlan("llamacpp", 2, 3)],
        "workloads": [deployment("llamacpp", 2, 2)],
        "problems": [],
        "ready_endpoints": 2,
        "service": "m",
        "previous": [],
        "now": T0,
    }
    arguments.update(overrides)
    return smallmodel_status(**arguments)


def test_all_replicas_ready_whole_status() -> None:
    status = model_status(
        generation=3,
        plans=[EnginePlan("vllm", 1, 1), EnginePlan("llamacpp", 2, 3)],
        workloads=[deployment("vllm", 1, 1), deployment("llamacpp", 2, 2)],
        ready_endpoints=3,
    )

    assert status == {
        "observedGeneration": 3,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "AllReplicasReady",
                "message": "3/3 ready (vllm 1/1, llamacpp 2/2)",
                "lastTransitionTime": T0,
                "observedGeneration": 3,
            },
            {
                "type": "Progressing",
                "status": "False",
                "reason": "Stable",
                "message": "every workload is up to date",
                "lastTransitionTime": T0,
                "observedGeneration": 3,
            },
            {
                "type": "Degraded",
                "status": "False",
                "reason": "AsExpected",
                "message": "no failure seen",
                "lastTransitionTime": T0,
                "observedGeneration": 3,
            },
        ],
        "engines": {
            "vllm": {"desired": 1, "ready": 1, "workload": "Deployment/m-vllm"},
            "llamacpp": {"desired": 2, "ready": 2, "workload": "Deployment/m-llamacpp"},
        },
        "readyReplicas": 3,
        "desiredReplicas": 3,
        "service": "m",
        "endpoints": 3,
    }


def test_first_rollout_is_progressing_without_a_failure() -> None:
    status = model_status(workloads=[deployment("llamacpp", 2, 0, updated=2)], ready_endpoints=0)

    assert summary(status) == {
        "Ready": ("False", "ReplicasNotReady"),
        "Progressing": ("True", "RollingOut"),
        "Degraded": ("False", "AsExpected"),
    }
    assert conditions(status)["Progressing"]["message"] == "rolling out: llamacpp 0/2"


def test_workload_not_created_yet_is_progressing() -> None:
    status = model_status(workloads=[], ready_endpoints=0)

    assert status["engines"] == {"llamacpp": {"desired": 2, "ready": 0, "workload": "Deployment/-"}}
    assert summary(status)["Progressing"] == ("True", "RollingOut")
    assert summary(status)["Ready"] == ("False", "ReplicasNotReady")


def test_rolling_update_that_keeps_every_replica_serving_stays_ready() -> None:
    # maxUnavailable 0: both old pods keep serving while the new template rolls out.
    status = model_status(workloads=[deployment("llamacpp", 2, 2, updated=1)])

    assert summary(status) == {
        "Ready": ("True", "AllReplicasReady"),
        "Progressing": ("True", "RollingOut"),
        "Degraded": ("False", "AsExpected"),
    }


def test_unschedulable_pods_make_the_model_not_ready_and_degraded() -> None:
    problem = PodProblem("m-llamacpp-abc12", "Unschedulable", SCHEDULER)

    status = model_status(
        workloads=[deployment("llamacpp", 2, 0, updated=2)], problems=[problem], ready_endpoints=0
    )

    message = f"0/2 ready; m-llamacpp-abc12: {SCHEDULER}"
    assert conditions(status)["Ready"] == {
        "type": "Ready",
        "status": "False",
        "reason": "Unschedulable",
        "message": message,
        "lastTransitionTime": T0,
        "observedGeneration": 1,
    }
    assert summary(status)["Progressing"] == ("False", "Stable")
    assert conditions(status)["Degraded"] == {
        "type": "Degraded",
        "status": "True",
        "reason": "Unschedulable",
        "message": message,
        "lastTransitionTime": T0,
        "observedGeneration": 1,
    }


def test_some_ready_and_a_failing_pod_is_degraded_but_still_progressing() -> None:
    problem = PodProblem("m-llamacpp-x", "ServerFailing", "server: CrashLoopBackOff")

    status = model_status(workloads=[deployment("llamacpp", 2, 1)], problems=[problem])

    assert summary(status) == {
        "Ready": ("False", "ServerFailing"),
        "Progressing": ("True", "RollingOut"),
        "Degraded": ("True", "ServerFailing"),
    }


def test_per_node_with_no_eligible_nodes() -> None:
    status = model_status(plans=[EnginePlan("llamacpp", None, 0)], workloads=[], ready_endpoints=0)

    assert conditions(status)["Ready"]["reason"] == "NoEligibleNodes"
    assert conditions(status)["Ready"]["status"] == "False"
    assert conditions(status)["Ready"]["message"] == (
        "no node matches the placement (selector, sites, tolerations); nothing to run"
    )
    assert status["engines"] == {"llamacpp": {"desired": 0, "ready": 0, "workload": "DaemonSet/-"}}


def test_per_node_daemonset_ready() -> None:
    daemonset = WorkloadFacts("DaemonSet", "m-llamacpp", "llamacpp", 3, 3, 3, 1, 1)

    status = model_status(plans=[EnginePlan("llamacpp", None, 3)], workloads=[daemonset])

    assert summary(status)["Ready"] == ("True", "AllReplicasReady")
    assert status["engines"]["llamacpp"]["workload"] == "DaemonSet/m-llamacpp"


def test_replicas_zero_is_scaled_to_zero_and_not_degraded() -> None:
    status = model_status(
        plans=[EnginePlan("llamacpp", 0, 3)],
        workloads=[deployment("llamacpp", 0, 0)],
        ready_endpoints=0,
    )

    assert summary(status) == {
        "Ready": ("False", "ScaledToZero"),
        "Progressing": ("False", "Stable"),
        "Degraded": ("False", "AsExpected"),
    }
    assert status["desiredReplicas"] == 0


def test_apply_error_wins_over_everything() -> None:
    error = "Deployment m-llamacpp: admission webhook denied the request"

    status = model_status(apply_error=error)

    assert conditions(status)["Ready"]["reason"] == "ApplyFailed"
    assert conditions(status)["Ready"]["message"] == error
    assert summary(status) == {
        "Ready": ("False", "ApplyFailed"),
        "Progressing": ("False", "Stable"),
        "Degraded": ("True", "ApplyFailed"),
    }


def test_a_refused_spec_says_why_and_still_counts_what_runs() -> None:
    problem = "invalid SmallModel: spec.serving.maxConcurrency: 8 is more than serving.instances"

    # The last valid spec's workloads keep serving; the status counts them.
    status = model_status(invalid=problem, apply_error="an older refusal")

    assert conditions(status)["Ready"]["message"] == problem
    assert summary(status) == {
        "Ready": ("False", "InvalidSpec"),
        "Progressing": ("False", "Stable"),
        "Degraded": ("True", "InvalidSpec"),
    }
    assert (status["readyReplicas"], status["desiredReplicas"]) == (2, 2)


def test_a_refused_spec_with_nothing_running_is_not_called_unschedulable() -> None:
    status = model_status(invalid="invalid SmallModel: ...", plans=[], workloads=[])

    assert summary(status)["Ready"] == ("False", "InvalidSpec")
    assert status["engines"] == {}


def test_transition_time_kept_while_status_holds_and_moved_when_it_flips() -> None:
    first = model_status(now=T0)
    same = model_status(now=T1, previous=first["conditions"])

    assert same == first

    flipped = model_status(
        now=T1,
        previous=first["conditions"],
        workloads=[deployment("llamacpp", 2, 1)],
        generation=2,
    )
    times = {c["type"]: c["lastTransitionTime"] for c in flipped["conditions"]}
    # Ready flipped to False, Progressing to True, Degraded to True (1/2): all moved.
    assert times == {"Ready": T1, "Progressing": T1, "Degraded": T1}
    assert all(c["observedGeneration"] == 2 for c in flipped["conditions"])

    # The same False with a new reason keeps its time: only the status counts.
    problem = PodProblem("p", "ServerFailing", "server: boom")
    later = model_status(
        now="2026-01-01T00:09:00Z",
        previous=flipped["conditions"],
        workloads=[deployment("llamacpp", 2, 1)],
        problems=[problem],
    )
    assert conditions(later)["Ready"]["reason"] == "ServerFailing"
    assert conditions(later)["Ready"]["lastTransitionTime"] == T1


# --- routingpolicy_status -------------------------------------------------------

ROUTER = WorkloadFacts("Deployment", "p-router", "router", 1, 1, 1, 1, 1)
ROUTER_DOWN = WorkloadFacts("Deployment", "p-router", "router", 1, 0, 1, 1, 1)
EGRESS = WorkloadFacts("Deployment", "p-egress", "egress", 1, 1, 1, 1, 1)
TARGETS = [{"smallModel": "a", "weight": 3}, {"smallModel": "b"}]


def policy_status(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "generation": 1,
        "targets": TARGETS,
        "target_endpoints": {"a": 2, "b": 1},
        "router": ROUTER,
        "egress": EGRESS,
        "cloud": True,
        "previous": [],
        "now": T0,
    }
    arguments.update(overrides)
    return routingpolicy_status(**arguments)


def test_policy_routing_whole_status() -> None:
    status = policy_status(generation=5)

    assert status == {
        "observedGeneration": 5,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Routing",
                "message": "3 local endpoint(s) ready; egress ready",
                "lastTransitionTime": T0,
                "observedGeneration": 5,
            },
            {
                "type": "Degraded",
                "status": "False",
                "reason": "AsExpected",
                "message": "every target and the egress are ready",
                "lastTransitionTime": T0,
                "observedGeneration": 5,
            },
        ],
        "resolvedTargets": [
            {"smallModel": "a", "service": "a", "weight": 3, "readyEndpoints": 2},
            {"smallModel": "b", "service": "b", "weight": 1, "readyEndpoints": 1},
        ],
    }


def test_missing_target_is_named() -> None:
    status = policy_status(target_endpoints={"a": 2, "b": None})

    assert summary(status) == {
        "Ready": ("True", "Routing"),
        "Degraded": ("True", "TargetsUnavailable"),
    }
    assert conditions(status)["Degraded"]["message"] == "no SmallModel named b in this namespace"


def test_no_local_endpoint_and_no_cloud_is_no_backends() -> None:
    status = policy_status(target_endpoints={"a": 0, "b": 0}, egress=None, cloud=False)

    assert conditions(status)["Ready"]["reason"] == "NoBackends"
    assert conditions(status)["Degraded"]["message"] == "no local endpoint is ready"


def test_cloud_covers_targets_that_are_not_ready() -> None:
    status = policy_status(target_endpoints={"a": 0, "b": 0})

    assert summary(status) == {
        "Ready": ("True", "Routing"),
        "Degraded": ("True", "TargetsUnavailable"),
    }
    assert conditions(status)["Ready"]["message"] == "0 local endpoint(s) ready; egress ready"


def test_router_not_ready() -> None:
    for router in (None, ROUTER_DOWN):
        status = policy_status(router=router)
        assert conditions(status)["Ready"]["reason"] == "RouterNotReady"
        assert conditions(status)["Ready"]["status"] == "False"


def test_invalid_policy_wins() -> None:
    message = "invalid policy: spec.budget.onExceeded: must be one of local-only, reject"

    status = policy_status(invalid=message, target_endpoints={"a": 0, "b": 0}, egress=None)

    assert conditions(status)["Ready"]["reason"] == "InvalidPolicy"
    assert conditions(status)["Ready"]["message"] == message
    # Only the facts, not the consequences of a policy that never ran.
    assert conditions(status)["Degraded"]["status"] == "False"


def test_cloud_enabled_without_a_ready_egress() -> None:
    with_local = policy_status(egress=None)
    without_local = policy_status(egress=None, target_endpoints={"a": 0, "b": 0})

    assert summary(with_local) == {
        "Ready": ("True", "Routing"),
        "Degraded": ("True", "TargetsUnavailable"),
    }
    assert (
        conditions(with_local)["Ready"]["message"] == "3 local endpoint(s) ready; egress NOT ready"
    )
    assert conditions(with_local)["Degraded"]["message"] == "the egress has no ready pod"
    assert summary(without_local)["Ready"] == ("False", "NoBackends")
    assert conditions(without_local)["Degraded"]["message"] == (
        "the egress has no ready pod; no local endpoint is ready"
    )


def test_cloud_disabled_needs_no_egress() -> None:
    status = policy_status(egress=None, cloud=False)

    assert summary(status) == {"Ready": ("True", "Routing"), "Degraded": ("False", "AsExpected")}
    assert conditions(status)["Ready"]["message"] == "3 local endpoint(s) ready"


# --- what is written survives the API server ---------------------------------------


def status_schema(crd_template: str) -> dict[str, Any]:
    out = subprocess.run(
        [
            str(versions.bin_dir() / "helm"),
            "template",
            "edgefleet",
            str(CHART),
            "--kube-version",
            "v1.36.3",
            "--show-only",
            f"templates/crds/{crd_template}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    crd = yaml.safe_load(out.stdout)
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]["properties"]["status"]


def pruned(value: Any, schema: dict[str, Any]) -> Any:
    """What the API server keeps of `value` under a structural schema (unknown fields dropped)."""
    if isinstance(value, dict) and "properties" in schema:
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return value
        return {
            key: pruned(item, schema["properties"][key])
            for key, item in value.items()
            if key in schema["properties"]
        }
    if isinstance(value, list) and "items" in schema:
        return [pruned(item, schema["items"]) for item in value]
    return value


@pytest.mark.parametrize(
    ("crd_template", "status"),
    [
        (
            "smallmodels.yaml",
            model_status(
                plans=[EnginePlan("vllm", 1, 1), EnginePlan("llamacpp", 2, 3)],
                workloads=[deployment("vllm", 1, 1), deployment("llamacpp", 2, 2)],
            ),
        ),
        ("routingpolicies.yaml", policy_status(target_endpoints={"a": 2, "b": None})),
    ],
)
def test_every_status_field_written_is_in_the_crd(crd_template: str, status: dict) -> None:
    # A pruned field never reads back, so the operator would see a change and
    # patch the status again on every refresh, forever.
    assert pruned(status, status_schema(crd_template)) == status


SECRET_MISSING = PodProblem(
    "p-egress-7d9f-x2", "EgressFailing",
    'egress: CreateContainerConfigError: secret "cloud-llm" not found',
)  # fmt: skip


def test_a_failing_egress_is_quoted_while_the_policy_still_routes_locally() -> None:
    status = policy_status(egress=None, problems={"egress": SECRET_MISSING})

    assert summary(status) == {"Ready": ("True", "Routing"), "Degraded": ("True", "EgressFailing")}
    assert conditions(status)["Degraded"]["message"] == (
        "the egress has no ready pod; p-egress-7d9f-x2: egress: CreateContainerConfigError: "
        'secret "cloud-llm" not found'
    )


def test_a_failing_router_is_its_readys_reason_and_degraded() -> None:
    image = PodProblem("p-router-1", "ImagePullFailed", "router: ErrImageNeverPull: not present")
    failing = policy_status(router=ROUTER_DOWN, problems={"router": image})
    starting = policy_status(router=ROUTER_DOWN)

    expected = "the router has no ready pod; p-router-1: router: ErrImageNeverPull: not present"
    assert conditions(failing)["Ready"] == conditions(failing)["Ready"] | {
        "status": "False", "reason": "ImagePullFailed", "message": expected,
    }  # fmt: skip
    assert summary(failing)["Degraded"] == ("True", "ImagePullFailed")
    assert conditions(failing)["Degraded"]["message"] == expected
    # A router that is only starting is not a failure.
    assert summary(starting) == {
        "Ready": ("False", "RouterNotReady"),
        "Degraded": ("False", "AsExpected"),
    }


def test_a_ready_egress_or_router_is_not_blamed_for_an_old_pods_problem() -> None:
    status = policy_status(problems={"egress": SECRET_MISSING, "router": SECRET_MISSING})

    assert summary(status) == {"Ready": ("True", "Routing"), "Degraded": ("False", "AsExpected")}


def test_a_policy_that_routes_while_degraded_warns_once_per_reason() -> None:
    policy = {
        "apiVersion": "edgefleet.io/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": "p", "namespace": "shop", "uid": "u-1"},
    }
    healthy = policy_status()["conditions"]
    failing = policy_status(egress=None, problems={"egress": SECRET_MISSING})["conditions"]
    router_down = policy_status(router=None, egress=None)["conditions"]
    # No backend at all: Ready False (NoBackends, its own Event), Degraded EgressFailing.
    nothing = policy_status(
        egress=None, problems={"egress": SECRET_MISSING}, target_endpoints={"a": 0, "b": 0}
    )["conditions"]

    async def transitions() -> None:
        degraded_transition(policy, healthy, failing)
        degraded_transition(policy, failing, failing)  # no news: no second Event
        degraded_transition(policy, failing, healthy)
        degraded_transition(policy, healthy, router_down)  # not Ready: Ready's Event tells
        degraded_transition(policy, healthy, nothing)
        degraded_transition(policy, nothing, failing)  # Ready again, still Degraded: news

    _, events = with_events(transitions)

    assert [(e.type, e.reason) for e in events] == [("Warning", "EgressFailing")] * 2
    assert 'secret "cloud-llm" not found' in events[0].message
    assert summary({"conditions": nothing})["Ready"] == ("False", "NoBackends")
    assert 'secret "cloud-llm" not found' in conditions({"conditions": nothing})["Ready"]["message"]
