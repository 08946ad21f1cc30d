"""When status is recomputed: whose input a change is, and when a burst has settled (pure)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from edgefleet.operator.config import OperatorConfig
from edgefleet.operator.handlers.common import status_rounds
from edgefleet.operator.names import SITE_LABEL as SITE
from edgefleet.operator.placement import NodeFacts
from edgefleet.operator.spec import parse_smallmodel_spec
from edgefleet.operator.state import Desired, ModelState, OperatorContext, States
from edgefleet.operator.triggers import (
    ROUTINGPOLICY,
    SMALLMODEL,
    Debounce,
    Parent,
    StatusTrigger,
    parents_of_child,
)

MANAGED = {"app.kubernetes.io/managed-by": "edgefleet-operator"}


def no_policies(namespace: str, model: str) -> list[str]:
    return []


def test_a_lone_change_is_due_after_the_quiet_period() -> None:
    assert Debounce(quiet_s=0.1, max_delay_s=0.5).due(first=10.0, latest=10.0) == pytest.approx(
        10.1
    )


def test_each_change_in_a_burst_pushes_the_round_back() -> None:
    assert Debounce(quiet_s=0.1, max_delay_s=0.5).due(first=10.0, latest=10.3) == pytest.approx(
        10.4
    )


def test_a_burst_that_never_ends_still_gets_its_round_by_the_bound() -> None:
    assert Debounce(quiet_s=0.1, max_delay_s=0.5).due(first=10.0, latest=10.45) == pytest.approx(
        10.5
    )
    assert Debounce(quiet_s=0.1, max_delay_s=0.5).due(first=10.0, latest=99.0) == pytest.approx(
        10.5
    )


@pytest.mark.parametrize("kind", ["Deployment", "DaemonSet", "Pod"])
def test_a_model_server_workload_or_pod_concerns_its_model(kind: str) -> None:
    labels = {**MANAGED, "edgefleet.io/model": "m", "edgefleet.io/engine": "llamacpp"}
    assert parents_of_child(kind, "shop", labels, no_policies) == [Parent(SMALLMODEL, "shop", "m")]


@pytest.mark.parametrize("kind", ["Deployment", "Pod"])
def test_a_router_or_egress_deployment_or_pod_concerns_its_policy(kind: str) -> None:
    labels = {
        **MANAGED,
        "edgefleet.io/routing-policy": "p",
        "app.kubernetes.io/component": "egress",
    }
    assert parents_of_child(kind, "shop", labels, no_policies) == [
        Parent(ROUTINGPOLICY, "shop", "p")
    ]


def test_a_models_endpoints_concern_the_model_and_every_policy_that_targets_it() -> None:
    labels = {**MANAGED, "kubernetes.io/service-name": "m"}

    def targeting(namespace: str, model: str) -> list[str]:
        return {("shop", "m"): ["b", "a", "b"]}.get((namespace, model), [])

    assert parents_of_child("EndpointSlice", "shop", labels, targeting) == [
        Parent(SMALLMODEL, "shop", "m"),
        Parent(ROUTINGPOLICY, "shop", "a"),
        Parent(ROUTINGPOLICY, "shop", "b"),
    ]


def test_a_router_binding_in_a_sensitive_namespace_concerns_the_policy_in_its_own() -> None:
    labels = {
        **MANAGED,
        "edgefleet.io/routing-policy": "p",
        "edgefleet.io/routing-policy-namespace": "shop",
    }
    assert parents_of_child("RoleBinding", "payroll", labels, no_policies) == [
        Parent(ROUTINGPOLICY, "shop", "p")
    ]


def test_a_pod_of_no_model_or_policy_concerns_nobody() -> None:
    assert parents_of_child("Pod", "shop", MANAGED, no_policies) == []
    assert parents_of_child("EndpointSlice", "shop", MANAGED, no_policies) == []


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_no_change_gives_a_safety_net_round_after_the_timeout() -> None:
    trigger = StatusTrigger(Debounce(), Clock())

    assert asyncio.run(trigger.next_round(timeout_s=0)) is False


def test_a_settled_change_gives_a_round_and_a_change_during_the_round_gives_another() -> None:
    clock = Clock()

    async def rounds() -> list[bool]:
        trigger = StatusTrigger(Debounce(quiet_s=0.1, max_delay_s=0.5), clock)
        trigger.poke()
        clock.now += 1  # the burst has long settled
        first = await trigger.next_round(timeout_s=300)
        trigger.poke()  # while that round ran
        clock.now += 1
        second = await trigger.next_round(timeout_s=300)
        third = await trigger.next_round(timeout_s=0)
        return [first, second, third]

    assert asyncio.run(rounds()) == [True, True, False]


GPU_LABEL = "edgefleet.io/gpu"
BUILTIN = {"gguf": {"uri": "builtin://smollm2-135m"}}


def planned(states: States, name: str, site: str, eligible: dict[str, bool]) -> ModelState:
    """A model whose plan was made for a placement on `site`, with these eligible nodes."""
    spec = parse_smallmodel_spec({"source": BUILTIN, "placement": {"sites": [site]}})
    state = states.model("shop", name)
    state.desired = Desired(1, spec, dict(eligible), [], [], "digest")
    return state


def test_a_node_change_replans_only_the_models_whose_eligible_nodes_it_changes() -> None:
    async def rounds() -> dict[str, tuple[bool, bool, dict[str, bool]]]:
        states = States(Debounce(quiet_s=0, max_delay_s=0, node_window_s=0))
        on_a = planned(states, "on-a", "site-a", {})
        on_b = planned(states, "on-b", "site-b", {"n9": False})
        unplanned = states.model("shop", "new")
        # The node controller lifts a site-a node's not-ready taint: it becomes eligible.
        states.node_changed("n1", NodeFacts("n1", labels={SITE: "site-a"}), GPU_LABEL)
        # A heartbeat-only change of an eligible node of site-b moves nothing.
        states.node_changed("n9", NodeFacts("n9", labels={SITE: "site-b"}), GPU_LABEL)
        result = {}
        for name, state in (("on-a", on_a), ("on-b", on_b), ("new", unplanned)):
            poked = await state.trigger.next_round(timeout_s=0.05)
            eligible = state.desired.eligible if state.desired else {}
            result[name] = (poked, state.replan, dict(eligible))
        # The node goes: it leaves the eligible nodes again.
        states.node_changed("n1", None, GPU_LABEL)
        result["on-a gone"] = (on_a.replan, on_a.replan, on_a.desired.eligible)
        return result

    assert asyncio.run(rounds()) == {
        "on-a": (True, True, {"n1": False}),
        "on-b": (False, False, {"n9": False}),
        "new": (True, False, {}),
        "on-a gone": (True, True, {}),
    }


def test_a_flapping_node_costs_a_model_one_round_per_node_window() -> None:
    async def rounds() -> tuple[bool, bool, bool, dict[str, bool]]:
        states = States(Debounce(quiet_s=0, max_delay_s=0, node_window_s=0.2))
        model = planned(states, "on-a", "site-a", {})
        ready = NodeFacts("n1", labels={SITE: "site-a"})
        tainted = NodeFacts("n1", labels={SITE: "site-a"}, unschedulable=True)
        # Late heartbeats: the node goes and comes back, twice, within the window.
        for facts in (ready, tainted, ready, tainted, ready):
            states.node_changed("n1", facts, GPU_LABEL)
        before_window = await model.trigger.next_round(timeout_s=0.01)
        at_window_end = await model.trigger.next_round(timeout_s=5)
        after = await model.trigger.next_round(timeout_s=0.3)
        return before_window, at_window_end, after, dict(model.desired.eligible)

    # One round, after the window, which sees the node as it is now.
    assert asyncio.run(rounds()) == (False, True, False, {"n1": False})


def test_a_change_for_a_resource_not_known_yet_is_left_to_its_first_round() -> None:
    states = States()
    states.poke(Parent(SMALLMODEL, "shop", "later"))
    assert states.models == {}


def test_a_forgotten_model_is_gone_and_a_new_one_of_that_name_starts_afresh() -> None:
    states = States()
    first = states.model("shop", "m")
    first.applied = "abc"
    states.forget(Parent(SMALLMODEL, "shop", "m"))
    assert states.model("shop", "m").applied is None


def test_the_fleet_moves_on_a_new_or_departed_node_but_not_on_a_repeat() -> None:
    states = States()
    assert states.fleet.observe(NodeFacts("n1"))
    assert not states.fleet.observe(NodeFacts("n1"))
    assert states.fleet.forget("n1")
    assert not states.fleet.forget("n1")


@pytest.mark.parametrize("kind", [SMALLMODEL, ROUTINGPOLICY])
def test_a_deleted_resources_daemon_stops_after_its_round_in_progress(kind: str) -> None:
    # Kopf stops a daemon on a deletion marker, which a resource without finalizers
    # never shows: without forget() the rounds went on repairing a deleted policy.
    states = States(Debounce(quiet_s=0.0, max_delay_s=0.0))
    state = states.model("ns", "a") if kind == SMALLMODEL else states.policy("ns", "a")
    ctx = OperatorContext(OperatorConfig(), None, states, api_endpoints=[])  # type: ignore[arg-type]
    rounds: list[int] = []

    async def one_round() -> None:
        rounds.append(len(rounds))
        assert len(rounds) <= 2, "a round after the deletion"
        if len(rounds) == 2:
            states.forget(Parent(kind, "ns", "a"))
        else:
            state.trigger.poke()  # another change: another round

    async def daemon() -> None:
        await asyncio.wait_for(status_rounds(ctx, state, one_round, logging.getLogger()), 5)

    asyncio.run(daemon())

    assert rounds == [0, 1] and state.gone
    assert ("ns", "a") not in states.models and ("ns", "a") not in states.policies
