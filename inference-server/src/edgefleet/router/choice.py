"""Which local replica gets the next request, honouring the targets' weights.

The rule: the ready replica with the least load per unit of weight, where
load counts the newcomer too, relative to the replica's own slots:

    score = (busy + 1) / (max_concurrency * weight)

so with equal weights this is the least-loaded replica (as before weights),
and a replica of weight 2 takes requests until it carries about twice the
load of a weight-1 one. Weights therefore split traffic under load; an idle
fleet sends one request at a time to the heaviest replica (ties: by name),
which is the fastest place for it to go. Each replica of a SmallModel
carries that target's weight, so a target with more ready replicas takes
more traffic, as its capacity allows.
"""

from __future__ import annotations

from collections.abc import Callable

from edgefleet.routing.overflow import ReplicaLoad


def weighted_score(replica: ReplicaLoad, weight: int) -> float:
    return (replica.busy + 1) / (max(1, replica.max_concurrency) * max(1, weight))


def pick_replica(
    replicas: list[ReplicaLoad], weight_of: Callable[[str], int]
) -> ReplicaLoad | None:
    """The ready replica with the lowest weighted score; None when none is ready."""
    ready = [replica for replica in replicas if replica.ready]
    if not ready:
        return None
    return min(ready, key=lambda r: (weighted_score(r, weight_of(r.name)), r.name))
