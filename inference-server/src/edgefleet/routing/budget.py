"""The cloud budget: reserve before sending, settle after, never overspend.

A request bound for the cloud reserves its worst case (an upper bound on its
prompt tokens plus its max_tokens, and their price) before it is sent. The
sum of settled spending and open reservations never exceeds the caps, so
however many requests run at once the window's cap holds; when the answer
arrives the reservation is replaced by what was really used.
Windows are fixed intervals (e.g. each hour from the router's start), which
is what a person reading the audit log can check.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

from edgefleet.routing.policy import BudgetPolicy

# Chat templates add a few tokens per message (role markers) and to open the answer.
TEMPLATE_TOKENS_PER_MESSAGE = 8
TEMPLATE_TOKENS_PER_REQUEST = 16


def prompt_token_bound(texts: list[str]) -> int:
    """An upper bound on prompt tokens without the cloud model's tokenizer.

    Byte-level BPE tokenizers never produce more tokens than UTF-8 bytes, so
    counting bytes cannot underestimate.
    """
    return (
        sum(len(text.encode("utf-8")) + TEMPLATE_TOKENS_PER_MESSAGE for text in texts)
        + TEMPLATE_TOKENS_PER_REQUEST
    )


@dataclass(frozen=True)
class Reservation:
    id: int
    window: int
    input_tokens: int
    output_tokens: int
    cost: float

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class BudgetSnapshot:
    """The current window: spent, and held by requests still running."""

    spent_tokens: int
    spent_cost: float
    reserved_tokens: int
    reserved_cost: float


class CloudBudget:
    """Single event loop: reserve() and settle() never await, so they are atomic."""

    def __init__(self, policy: BudgetPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._origin = clock()
        self._window = 0
        self._spent_tokens = 0
        self._spent_cost = 0.0
        self._open: dict[int, Reservation] = {}
        self._ids = itertools.count(1)

    def price(self, input_tokens: int, output_tokens: int) -> float:
        return (
            input_tokens * self.policy.price_per_1k_input_tokens
            + output_tokens * self.policy.price_per_1k_output_tokens
        ) / 1000

    def _roll(self) -> None:
        window = int((self._clock() - self._origin) // self.policy.window_seconds)
        if window != self._window:
            self._window = window
            self._spent_tokens = 0
            self._spent_cost = 0.0

    def _committed(self) -> tuple[int, float]:
        current = [r for r in self._open.values() if r.window == self._window]
        return (
            self._spent_tokens + sum(r.tokens for r in current),
            self._spent_cost + sum(r.cost for r in current),
        )

    def _fits(self, tokens: int, cost: float) -> bool:
        committed_tokens, committed_cost = self._committed()
        caps = self.policy
        if caps.max_cloud_tokens is not None and committed_tokens + tokens > caps.max_cloud_tokens:
            return False
        # A tiny tolerance so float rounding never refuses an exactly fitting request.
        return caps.max_cloud_cost is None or committed_cost + cost <= caps.max_cloud_cost + 1e-12

    def would_allow(self, input_tokens: int, output_tokens: int) -> bool:
        self._roll()
        return self._fits(input_tokens + output_tokens, self.price(input_tokens, output_tokens))

    def reserve(self, input_tokens: int, output_tokens: int) -> Reservation | None:
        """Hold the worst case of one request, or None when it would overspend."""
        self._roll()
        cost = self.price(input_tokens, output_tokens)
        if not self._fits(input_tokens + output_tokens, cost):
            return None
        reservation = Reservation(next(self._ids), self._window, input_tokens, output_tokens, cost)
        self._open[reservation.id] = reservation
        return reservation

    def settle(self, reservation: Reservation, input_tokens: int, output_tokens: int) -> float:
        """Replace the reservation by what was really used; returns the cost.

        The figures are recorded as reported even above the reservation, so
        the books stay true if a bound was ever wrong.
        """
        if self._open.pop(reservation.id, None) is None:
            return 0.0
        cost = self.price(input_tokens, output_tokens)
        self._roll()
        if reservation.window == self._window:
            self._spent_tokens += input_tokens + output_tokens
            self._spent_cost += cost
        return cost

    def release(self, reservation: Reservation) -> None:
        """Nothing was sent (the call failed before reaching the cloud)."""
        self._open.pop(reservation.id, None)

    def snapshot(self) -> BudgetSnapshot:
        self._roll()
        current = [r for r in self._open.values() if r.window == self._window]
        return BudgetSnapshot(
            spent_tokens=self._spent_tokens,
            spent_cost=self._spent_cost,
            reserved_tokens=sum(r.tokens for r in current),
            reserved_cost=sum(r.cost for r in current),
        )
