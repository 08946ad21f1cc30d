"""When local replicas are too busy, overflow to the cloud, with hysteresis.

Load comes from each replica's GetStats (polled) and the router's own count of
requests it has in flight there (exact and instant, which the poll is not
during a burst). Overflow starts when even the least-loaded replica is at the
queue or predicted-TTFT limit, and ends only when load falls below a fraction
of both limits, so routing does not flap at the boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgefleet.routing.policy import CapacityPolicy


@dataclass(frozen=True)
class ReplicaLoad:
    """One local replica as the router sees it."""

    name: str
    ready: bool
    running: int
    waiting: int
    max_concurrency: int
    recent_ttft_ms: float
    # Requests this router has sent there and not yet seen finish.
    in_flight: int = 0

    @property
    def busy(self) -> int:
        # The router's own count wins when it is ahead of the last poll.
        return max(self.running + self.waiting, self.in_flight)

    @property
    def queue_ahead(self) -> int:
        """How many requests a newcomer would wait behind (negative: slots free)."""
        return self.busy - self.max_concurrency

    def predicted_ttft_ms(self) -> float:
        """A newcomer waits for the queue ahead of it to start, then prefills.

        With `c` slots and `q` requests ahead, it starts after about (q + 1) / c
        slot hand-overs; the recent TTFT stands for the cost of one.
        """
        if self.queue_ahead < 0:
            return self.recent_ttft_ms
        return self.recent_ttft_ms * (1 + (self.queue_ahead + 1) / max(1, self.max_concurrency))


def least_loaded(replicas: list[ReplicaLoad]) -> ReplicaLoad | None:
    ready = [r for r in replicas if r.ready]
    if not ready:
        return None
    return min(ready, key=lambda r: (r.queue_ahead / max(1, r.max_concurrency), r.name))


class OverflowGate:
    def __init__(self) -> None:
        self.overflowing = False

    def update(self, policy: CapacityPolicy, best: ReplicaLoad | None) -> bool:
        """Feed the least-loaded ready replica; returns whether to overflow now."""
        if best is None:
            # No local replica at all is a different reason (capacity.no_local).
            self.overflowing = False
            return False
        ahead = best.queue_ahead
        # A free slot starts a newcomer at once: the cloud cannot beat that by
        # queueing less, and a replica's recent TTFT is only refreshed by the
        # requests it gets, so it must not keep traffic away on its own.
        ttft = best.predicted_ttft_ms() if ahead >= 0 else 0.0
        if self.overflowing:
            # Calm again once the queue ahead is down to a fraction of the limit
            # (with a limit of 0: a slot is free) and TTFT is well under its limit.
            fraction = policy.recover_fraction
            calm = ahead <= policy.max_queue_depth * fraction - 1 and (
                ttft < policy.max_predicted_ttft_ms * fraction
            )
            self.overflowing = not calm
        else:
            self.overflowing = (
                ahead >= policy.max_queue_depth or ttft >= policy.max_predicted_ttft_ms
            )
        return self.overflowing
