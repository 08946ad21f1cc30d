"""What the operator remembers between handler calls: one typed state per resource, one owner.

Kopf runs a resource's change handlers one at a time, but its daemons run
beside them: each state's `lock` makes a reconcile (create, update, resume)
and a status round (which may repair drift) of the same resource take turns,
so two of them never interleave their API calls or their bookkeeping.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from edgefleet.operator.builders.routingpolicy import ServedArtefact
from edgefleet.operator.config import OperatorConfig
from edgefleet.operator.kube import Kube
from edgefleet.operator.placement import EnginePlan, FleetFacts, NodeFacts, counts_as
from edgefleet.operator.spec import SmallModelSpec
from edgefleet.operator.triggers import (
    ROUTERCALIBRATION,
    SMALLMODEL,
    Debounce,
    Parent,
    StatusTrigger,
)

# Key of a resource: (namespace, name).
Key = tuple[str, str]


@dataclass(frozen=True)
class Desired:
    """A SmallModel's plan and children for one generation and the fleet as it stands.

    `eligible` (node name -> GPU node?) is kept current by node events on the
    event loop (States.node_changed); the plan is recounted from it.
    """

    generation: Any
    model: SmallModelSpec
    eligible: dict[str, bool]
    plans: list[EnginePlan]
    children: list[dict[str, Any]]
    fingerprint: str


@dataclass
class ModelState:
    trigger: StatusTrigger
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # The last valid spec's plan and children (what runs, even under an invalid edit).
    desired: Desired | None = None
    # A node event changed the eligible nodes: the plan is recounted in the next round.
    replan: bool = False
    # Fingerprint of the children last applied; None until the first apply.
    applied: str | None = None
    # The API server's refusal of a child, until an apply succeeds.
    apply_error: str | None = None
    # Stale workloads were found by one LIST in this operator's life; the indexes since.
    listed: bool = False
    # The last apply included autoscalers (so dropping autoscaling deletes them).
    scaled: bool = False
    # A wanted workload was missing in the last round (twice in a row: deleted by someone).
    missing_before: bool = False
    # The status last written, and the resourceVersion it was written over.
    reported: dict[str, Any] | None = None
    reported_over: str | None = None
    # The last status write failed: try again soon rather than at the safety net.
    report_failed: bool = False
    # The resource is deleted: its daemon stops (States.forget).
    gone: bool = False

    def retry_soon(self) -> bool:
        return bool(self.apply_error) or self.report_failed or self.missing_before


@dataclass
class PolicyState:
    trigger: StatusTrigger
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    applied: str | None = None
    apply_error: str | None = None
    # Why the router's own parser refused the spec, or None.
    invalid: str | None = None
    # Sensitive namespaces that did not exist at the last sync (no event says when they do).
    missing_namespaces: list[str] = field(default_factory=list)
    # The calibrated classifier the router was last handed (None: the shipped one).
    artefact: ServedArtefact | None = None
    reported: dict[str, Any] | None = None
    reported_over: str | None = None
    report_failed: bool = False
    gone: bool = False

    def retry_soon(self) -> bool:
        return bool(self.apply_error) or self.report_failed or bool(self.missing_namespaces)


@dataclass
class CalibrationState:
    # Pokes from the RouterCalibration's and its RayJobs' events.
    trigger: StatusTrigger
    gone: bool = False


class States:
    """Every resource's state and the fleet's facts: created on first use, dropped on deletion."""

    def __init__(self, debounce: Debounce | None = None) -> None:
        self.debounce = debounce or Debounce()
        self.models: dict[Key, ModelState] = {}
        self.policies: dict[Key, PolicyState] = {}
        self.calibrations: dict[Key, CalibrationState] = {}
        self.fleet = FleetFacts()
        # Watch events handled, by kind, and status rounds run and written: what
        # the operator did, for its liveness endpoint (and the scale benchmark).
        self.activity: Counter[str] = Counter()

    def model(self, namespace: str, name: str) -> ModelState:
        key = (namespace, name)
        if key not in self.models:
            self.models[key] = ModelState(StatusTrigger(self.debounce))
        return self.models[key]

    def policy(self, namespace: str, name: str) -> PolicyState:
        key = (namespace, name)
        if key not in self.policies:
            self.policies[key] = PolicyState(StatusTrigger(self.debounce))
        return self.policies[key]

    def calibration(self, namespace: str, name: str) -> CalibrationState:
        key = (namespace, name)
        if key not in self.calibrations:
            self.calibrations[key] = CalibrationState(StatusTrigger(self.debounce))
        return self.calibrations[key]

    def forget(self, parent: Parent) -> None:
        """The resource is deleted: drop its state and stop its daemon.

        Kopf stops a daemon only when it sees a deletion marker, which a resource
        without finalizers never shows (ours carry none, see main._without_finalizers):
        left alone, the daemon would go on repairing the children of a deleted resource.
        """
        table: dict[Key, Any] = (
            self.models if parent.kind == SMALLMODEL
            else self.calibrations if parent.kind == ROUTERCALIBRATION
            else self.policies
        )  # fmt: skip
        state = table.pop((parent.namespace, parent.name), None)
        if state is not None:
            state.gone = True
            state.trigger.poke()

    def poke(self, parent: Parent) -> None:
        """A parent's input changed; one the operator does not know (yet) is left alone.

        A resource's first status round runs when its daemon starts, so a
        change seen before that is not lost.
        """
        table: dict[Key, Any] = self.models if parent.kind == SMALLMODEL else self.policies
        state = table.get((parent.namespace, parent.name))
        if state is not None:
            state.trigger.poke()

    def node_changed(self, node: str, facts: NodeFacts | None, gpu_label: str) -> int:
        """A node came, went (None) or changed what planning reads: recount whom it concerns.

        Only a model for which the node's standing changed (eligible or not, GPU
        or not) is replanned and gets a status round, at the end of its node window
        (Debounce.node_window_s): the node controller retainting a thousand nodes of
        other sites costs the other models a dictionary lookup each, and a flapping
        node one round per window. A model with no plan yet makes one in its round.
        Returns how many models it poked.
        """
        poked = 0
        for state in self.models.values():
            planned = state.desired
            if planned is None:
                state.trigger.poke_for_nodes()
                poked += 1
                continue
            standing = counts_as(planned.model.placement, facts, gpu_label)
            if planned.eligible.get(node) == standing:
                continue
            if standing is None:
                del planned.eligible[node]
            else:
                planned.eligible[node] = standing
            state.replan = True
            state.trigger.poke_for_nodes()
            poked += 1
        return poked


@dataclass(frozen=True)
class OperatorContext:
    """What every handler shares, put in Kopf's memo once at startup."""

    config: OperatorConfig
    kube: Kube
    states: States
    # Where the API server listens, for the router's NetworkPolicy.
    api_endpoints: list[tuple[str, int]]
