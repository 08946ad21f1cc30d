"""Local replica choice honours the targets' weights (router.choice)."""

from __future__ import annotations

from edgefleet.router.choice import pick_replica
from edgefleet.routing.overflow import ReplicaLoad, least_loaded


def replica(name: str, busy: int, slots: int = 4, ready: bool = True) -> ReplicaLoad:
    return ReplicaLoad(name, ready, running=busy, waiting=0, max_concurrency=slots,
                       recent_ttft_ms=100.0)  # fmt: skip


def weights(table: dict[str, int]):
    return lambda name: table.get(name, 1)


def test_equal_weights_pick_the_least_loaded_replica() -> None:
    fleet = [replica("a", 3), replica("b", 1), replica("c", 2)]
    assert pick_replica(fleet, weights({})).name == "b"
    assert pick_replica(fleet, weights({})) == least_loaded(fleet)


def test_a_heavier_replica_takes_load_until_it_carries_its_share() -> None:
    # Weight 3 against 1, the light replica holding 1: counting the newcomer,
    # the heavy one is preferred until it would hold three times as much (6).
    heavy_light = weights({"heavy": 3, "light": 1})
    assert pick_replica([replica("heavy", 4), replica("light", 1)], heavy_light).name == "heavy"
    assert pick_replica([replica("heavy", 6), replica("light", 1)], heavy_light).name == "light"


def test_weights_split_a_steady_load_in_proportion() -> None:
    # Hand out 40 long-running requests one by one; each stays in flight.
    busy = {"heavy": 0, "light": 0}
    table = weights({"heavy": 3, "light": 1})
    for _ in range(40):
        fleet = [replica(name, count, slots=64) for name, count in busy.items()]
        busy[pick_replica(fleet, table).name] += 1
    assert busy == {"heavy": 30, "light": 10}


def test_load_is_relative_to_each_replicas_slots() -> None:
    # Same weight: 3 of 8 slots busy is lighter than 2 of 4.
    fleet = [replica("small", 2, slots=4), replica("big", 3, slots=8)]
    assert pick_replica(fleet, weights({})).name == "big"


def test_replicas_not_ready_are_never_picked() -> None:
    fleet = [replica("a", 0, ready=False), replica("b", 9, ready=True)]
    assert pick_replica(fleet, weights({"a": 100})).name == "b"
    assert pick_replica([replica("a", 0, ready=False)], weights({})) is None
    assert pick_replica([], weights({})) is None
