"""The job's cloud ledger: each prompt goes to the cloud at most once, within the budget.

One ledger serves every Ray worker of a job (it runs as one Ray actor, whose calls run
one at a time, so each method is atomic). A worker claims a prompt before its cloud
call and records the answer after it:

- first claim: the worst case (prompt bound plus max_tokens) is reserved against the
  policy's budget; refused once the budget would be exceeded, and from then on for good;
- a claim for a prompt already answered returns that answer: a Ray task retried after a
  worker died does not pay twice;
- a claim for a prompt claimed but never recorded (its worker died during the call, which
  may have been billed) is refused: the prompt is lost to the job, its reservation stays
  charged at the worst case, so the budget holds whatever the cloud did.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from edgefleet.routing.budget import CloudBudget, Reservation
from edgefleet.routing.policy import BudgetPolicy


class Verdict(enum.Enum):
    SEND = "send"
    ANSWERED = "answered"
    LOST = "lost"
    OVER_BUDGET = "over_budget"


@dataclass(frozen=True)
class CloudReply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    cost: float


@dataclass(frozen=True)
class Claim:
    verdict: Verdict
    # Set when the verdict is ANSWERED.
    reply: CloudReply | None = None


@dataclass(frozen=True)
class LedgerSummary:
    calls: int
    failed_calls: int
    lost: int
    spent_tokens: int
    spent_cost: float
    budget_exhausted: bool
    # Worker process id -> prompts it finished, for the report and for fault tests.
    labels_by_worker: dict[int, int] = field(default_factory=dict)


class CloudLedger:
    def __init__(self, budget: BudgetPolicy) -> None:
        self._budget = CloudBudget(budget)
        self._claimed: dict[str, Reservation] = {}
        self._answered: dict[str, CloudReply] = {}
        self._failed: set[str] = set()
        self._exhausted = False
        self._workers: dict[int, int] = {}

    def claim(self, prompt_id: str, prompt_tokens_bound: int, max_tokens: int) -> Claim:
        if prompt_id in self._answered:
            return Claim(Verdict.ANSWERED, self._answered[prompt_id])
        if prompt_id in self._claimed:
            return Claim(Verdict.LOST)
        if self._exhausted:
            return Claim(Verdict.OVER_BUDGET)
        reservation = self._budget.reserve(prompt_tokens_bound, max_tokens)
        if reservation is None:
            self._exhausted = True
            return Claim(Verdict.OVER_BUDGET)
        self._claimed[prompt_id] = reservation
        return Claim(Verdict.SEND)

    def answered(
        self, prompt_id: str, text: str, prompt_tokens: int, completion_tokens: int
    ) -> CloudReply:
        cost = self._budget.settle(self._claimed[prompt_id], prompt_tokens, completion_tokens)
        reply = CloudReply(text, prompt_tokens, completion_tokens, cost)
        self._answered[prompt_id] = reply
        return reply

    def failed(self, prompt_id: str) -> None:
        """The call failed: it may have been billed, so its worst case stays charged."""
        reservation = self._claimed[prompt_id]
        self._budget.settle(reservation, reservation.input_tokens, reservation.output_tokens)
        self._failed.add(prompt_id)

    def worker_done(self, worker: int) -> None:
        self._workers[worker] = self._workers.get(worker, 0) + 1

    def summary(self) -> LedgerSummary:
        """The whole job's figures (the budget's window may have rolled over meanwhile)."""
        unanswered = [r for p, r in self._claimed.items() if p not in self._answered]
        replies = self._answered.values()
        return LedgerSummary(
            calls=len(self._claimed),
            failed_calls=len(self._failed),
            lost=len(unanswered) - len(self._failed),
            spent_tokens=sum(r.prompt_tokens + r.completion_tokens for r in replies)
            + sum(r.tokens for r in unanswered),
            spent_cost=sum(r.cost for r in replies) + sum(r.cost for r in unanswered),
            budget_exhausted=self._exhausted,
            labels_by_worker=dict(self._workers),
        )
