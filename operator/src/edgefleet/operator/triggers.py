"""When a resource's status is recomputed: whose input a change is, and when a burst has settled.

Status is event-driven: a change to a child (workload, pod, EndpointSlice,
RoleBinding) pokes its parent's trigger, a change to what planning reads of
the nodes pokes every SmallModel, and the parent's status round runs once the
burst has settled. A slow safety-net round catches whatever no event told.
The decisions here are pure; `StatusTrigger` is the one small asyncio piece.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from edgefleet.operator import names
from edgefleet.operator.builders.routingpolicy import POLICY_NAMESPACE_LABEL

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SMALLMODEL = "SmallModel"
ROUTINGPOLICY = "RoutingPolicy"
ROUTERCALIBRATION = "RouterCalibration"


class Parent(NamedTuple):
    """A SmallModel or RoutingPolicy whose status a change may alter."""

    kind: str
    namespace: str
    name: str


@dataclass(frozen=True)
class Debounce:
    """A round waits for `quiet_s` without changes, but at most `max_delay_s` after the first.

    The quiet period lets a rollout's burst of events (a Deployment, its
    ReplicaSet's pods, their EndpointSlice) make one status write; the bound
    keeps a resource whose children never stop changing from never reporting.
    """

    quiet_s: float = 0.1
    max_delay_s: float = 0.5
    # A node's standing (eligible or not, GPU or not) may wait this long: nodes flap
    # (the node controller taints one not-ready when a heartbeat is late, and lifts it),
    # and each flap concerns every model that may run there. All of a model's node
    # changes within the window make one round at its end.
    node_window_s: float = 3.0

    def due(self, first: float, latest: float) -> float:
        """When the round for changes seen from `first` to `latest` should run."""
        return min(latest + self.quiet_s, first + self.max_delay_s)


def parents_of_child(
    kind: str,
    namespace: str,
    labels: Mapping[str, str],
    policies_targeting: Callable[[str, str], Iterable[str]],
) -> list[Parent]:
    """Whose status a change to this child may alter (our labels say whose child it is).

    `policies_targeting(namespace, model)` names the RoutingPolicies that list
    a SmallModel as a local target: a model's ready endpoints are part of their
    status too.
    """
    model = labels.get(names.MODEL_LABEL)
    policy = labels.get(names.POLICY_LABEL)
    if kind in ("Deployment", "DaemonSet", "Pod") and model:
        return [Parent(SMALLMODEL, namespace, model)]
    if kind in ("Deployment", "Pod") and policy:
        return [Parent(ROUTINGPOLICY, namespace, policy)]
    if kind == "EndpointSlice" and labels.get(SERVICE_NAME_LABEL):
        # A model's Service has the model's name (docs/operator.md).
        service = labels[SERVICE_NAME_LABEL]
        targeting = sorted(set(policies_targeting(namespace, service)))
        return [
            Parent(SMALLMODEL, namespace, service),
            *(Parent(ROUTINGPOLICY, namespace, p) for p in targeting),
        ]
    if kind == "RoleBinding" and policy and labels.get(POLICY_NAMESPACE_LABEL):
        # A router's binding in a sensitive namespace: the policy lives elsewhere.
        return [Parent(ROUTINGPOLICY, labels[POLICY_NAMESPACE_LABEL], policy)]
    return []


class StatusTrigger:
    """Collects changes to one resource's inputs; `next_round` says when to recompute."""

    def __init__(self, debounce: Debounce, clock: Callable[[], float] = time.monotonic) -> None:
        self._debounce = debounce
        self._clock = clock
        self._first: float | None = None
        self._latest = 0.0
        self._changed = asyncio.Event()
        self._node_poke: asyncio.TimerHandle | None = None

    def poke(self) -> None:
        """Something this resource's status reads has changed (call on the event loop)."""
        now = self._clock()
        if self._first is None:
            self._first = now
        self._latest = now
        self._changed.set()

    def poke_for_nodes(self) -> None:
        """What planning reads of the nodes changed: poke at the end of the node window
        (call on the event loop). Pokes in between join that one."""
        if self._node_poke is None:
            loop = asyncio.get_running_loop()
            self._node_poke = loop.call_later(self._debounce.node_window_s, self._nodes_due)

    def _nodes_due(self) -> None:
        self._node_poke = None
        self.poke()

    async def next_round(self, timeout_s: float) -> bool:
        """Wait for a round: True once changes have settled, False after `timeout_s` without any.

        Changes poked while the round then runs make the next call return
        after their own settling, so none is lost.
        """
        if self._first is None:
            try:
                async with asyncio.timeout(timeout_s):
                    await self._changed.wait()
            except TimeoutError:
                return False
        assert self._first is not None
        # Each change moves the due time: wake on it, or when the time comes.
        while (delay := self._debounce.due(self._first, self._latest) - self._clock()) > 0:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._changed.wait()
        self._first = None
        self._changed.clear()
        return True
