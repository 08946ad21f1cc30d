"""Budget, circuit breaker and overflow hysteresis, driven by a fake clock."""

from __future__ import annotations

import random

from edgefleet.router.engine import Ending, charged_usage
from edgefleet.routing.breaker import BreakerState, CircuitBreaker
from edgefleet.routing.budget import CloudBudget, Reservation, prompt_token_bound
from edgefleet.routing.overflow import OverflowGate, ReplicaLoad, least_loaded
from edgefleet.routing.policy import BudgetPolicy, CapacityPolicy
from edgefleet.serving.types import Usage


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_budget_never_overspends_whatever_the_interleaving() -> None:
    policy = BudgetPolicy(
        max_cloud_tokens=5000,
        max_cloud_cost=0.05,
        price_per_1k_input_tokens=0.01,
        price_per_1k_output_tokens=0.03,
    )
    budget = CloudBudget(policy, Clock())
    rng = random.Random(3)
    open_reservations = []
    for _ in range(500):
        if open_reservations and rng.random() < 0.5:
            reservation = open_reservations.pop(rng.randrange(len(open_reservations)))
            budget.settle(
                reservation,
                rng.randint(0, reservation.input_tokens),
                rng.randint(0, reservation.output_tokens),
            )
        else:
            reservation = budget.reserve(rng.randint(10, 400), rng.randint(1, 300))
            if reservation is not None:
                open_reservations.append(reservation)
        snap = budget.snapshot()
        assert snap.spent_tokens + snap.reserved_tokens <= 5000
        assert snap.spent_cost + snap.reserved_cost <= 0.05 + 1e-12


def test_budget_refuses_what_does_not_fit_and_frees_on_release() -> None:
    budget = CloudBudget(BudgetPolicy(max_cloud_tokens=100), Clock())
    first = budget.reserve(60, 20)
    assert first is not None
    assert budget.reserve(10, 20) is None
    budget.release(first)
    assert budget.reserve(10, 20) is not None


def test_budget_settles_actual_usage_and_resets_each_window() -> None:
    clock = Clock()
    policy = BudgetPolicy(window_seconds=60, max_cloud_tokens=100, price_per_1k_input_tokens=1.0)
    budget = CloudBudget(policy, clock)
    reservation = budget.reserve(50, 40)
    assert reservation is not None
    assert budget.settle(reservation, 30, 10) == 0.03
    assert budget.snapshot().spent_tokens == 40
    assert budget.reserve(50, 20) is None
    clock.now += 60
    assert budget.snapshot().spent_tokens == 0
    assert budget.reserve(50, 20) is not None


def test_prompt_token_bound_is_at_least_the_utf8_length() -> None:
    texts = ["héllo wörld", "日本語のテキスト"]
    assert prompt_token_bound(texts) >= sum(len(t.encode()) for t in texts)


def test_breaker_opens_after_failures_and_closes_after_a_good_trial() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=30, clock=clock)
    for _ in range(2):
        assert breaker.acquire()
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.acquire()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.available() and not breaker.acquire()
    clock.now += 30
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.acquire()
    assert not breaker.acquire(), "only one trial call in half-open"
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED


def test_breaker_failed_trial_opens_again_for_a_full_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=10, clock=clock)
    breaker.record_failure()
    clock.now += 10
    assert breaker.acquire()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.now += 9
    assert breaker.state is BreakerState.OPEN


def _replica(name: str, running: int, waiting: int, in_flight: int = 0) -> ReplicaLoad:
    return ReplicaLoad(name, True, running, waiting, 4, 100.0, in_flight)


def test_overflow_starts_at_the_queue_limit_and_ends_only_when_calm() -> None:
    policy = CapacityPolicy(max_queue_depth=2, max_predicted_ttft_ms=10_000, recover_fraction=0.5)
    gate = OverflowGate()
    assert not gate.update(policy, _replica("a", 4, 1))
    assert gate.update(policy, _replica("a", 4, 2))
    # Below the limit but not yet calm: still overflowing (no flapping).
    assert gate.update(policy, _replica("a", 4, 1))
    assert not gate.update(policy, _replica("a", 4, 0))
    assert not gate.update(policy, _replica("a", 4, 1))


def test_routers_own_in_flight_count_wins_over_a_stale_poll() -> None:
    policy = CapacityPolicy(max_queue_depth=2)
    assert OverflowGate().update(policy, _replica("a", 0, 0, in_flight=6))


def test_predicted_ttft_limit_triggers_overflow() -> None:
    policy = CapacityPolicy(max_queue_depth=100, max_predicted_ttft_ms=150)
    replica = _replica("a", 4, 0)  # full: a newcomer waits one hand-over
    assert replica.predicted_ttft_ms() == 125.0
    assert not OverflowGate().update(policy, replica)
    assert OverflowGate().update(policy, _replica("a", 4, 2))


def test_slow_but_idle_replica_does_not_overflow_and_recovers_once_idle() -> None:
    policy = CapacityPolicy(max_queue_depth=100, max_predicted_ttft_ms=150)
    slow = ReplicaLoad("a", True, 0, 0, 4, 9000.0)
    assert not OverflowGate().update(policy, slow)
    gate = OverflowGate()
    assert gate.update(policy, ReplicaLoad("a", True, 4, 1, 4, 9000.0))
    # The stale TTFT figure does not hold the overflow once a slot is free.
    assert not gate.update(policy, ReplicaLoad("a", True, 2, 0, 4, 9000.0))


def test_least_loaded_skips_unready_replicas() -> None:
    busy, idle = _replica("busy", 4, 3), _replica("idle", 1, 0)
    down = ReplicaLoad("down", False, 0, 0, 4, 0.0)
    assert least_loaded([busy, down, idle]) == idle
    assert least_loaded([down]) is None


def test_a_cloud_attempt_is_charged_its_reported_usage_its_worst_case_or_nothing() -> None:
    reserved = Reservation(id=1, window=0, input_tokens=50, output_tokens=40, cost=0.0)
    reported = Usage(30, 10)
    assert charged_usage(Ending.ANSWERED, True, reserved, reported) == reported
    # Failed or abandoned: the prompt may be billed, and the whole answer once text flowed.
    for ending in (Ending.BACKEND_FAILED, Ending.ABANDONED):
        assert charged_usage(ending, False, reserved, None) == Usage(50, 0)
        assert charged_usage(ending, True, reserved, None) == Usage(50, 40)
    # Turned down (rate limit, refusal) before any text: nothing to pay, the hold is released.
    assert charged_usage(Ending.TURNED_DOWN, False, reserved, None) is None
    assert charged_usage(Ending.TURNED_DOWN, True, reserved, None) == Usage(50, 40)
