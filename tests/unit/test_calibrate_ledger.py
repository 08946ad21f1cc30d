"""The cloud ledger: one paid call per prompt, whatever retries; the budget always holds."""

from __future__ import annotations

from edgefleet.calibrate.ledger import CloudLedger, Verdict
from edgefleet.routing.policy import BudgetPolicy

PRICES = {"price_per_1k_input_tokens": 1.0, "price_per_1k_output_tokens": 2.0}


def test_a_prompt_answered_once_is_never_sent_again() -> None:
    ledger = CloudLedger(BudgetPolicy(**PRICES))
    assert ledger.claim("p1", 100, 50).verdict is Verdict.SEND
    reply = ledger.answered("p1", "Lima", 30, 5)
    again = ledger.claim("p1", 100, 50)
    assert again.verdict is Verdict.ANSWERED and again.reply == reply
    assert reply.cost == (30 * 1.0 + 5 * 2.0) / 1000
    summary = ledger.summary()
    assert (summary.calls, summary.spent_tokens, summary.lost) == (1, 35, 0)


def test_a_prompt_whose_worker_died_mid_call_is_lost_not_resent() -> None:
    ledger = CloudLedger(BudgetPolicy(**PRICES))
    ledger.claim("p1", 100, 50)
    # The worker died before recording: the retried task claims again.
    assert ledger.claim("p1", 100, 50).verdict is Verdict.LOST
    summary = ledger.summary()
    # Charged at its worst case: the cloud may have billed it.
    assert (summary.calls, summary.lost, summary.spent_tokens) == (1, 1, 150)


def test_the_budget_is_never_exceeded_and_once_out_stays_out() -> None:
    ledger = CloudLedger(BudgetPolicy(max_cloud_tokens=400, **PRICES))
    assert ledger.claim("p1", 100, 100).verdict is Verdict.SEND
    assert ledger.claim("p2", 100, 100).verdict is Verdict.SEND
    assert ledger.claim("p3", 100, 100).verdict is Verdict.OVER_BUDGET
    ledger.answered("p1", "x", 10, 10)  # frees most of p1's reservation
    # Out means out: a job stops rather than labelling whatever happens to fit.
    assert ledger.claim("p4", 10, 10).verdict is Verdict.OVER_BUDGET
    summary = ledger.summary()
    assert summary.budget_exhausted and summary.spent_tokens <= 400


def test_a_failed_call_stays_charged_at_its_worst_case() -> None:
    ledger = CloudLedger(BudgetPolicy(max_cloud_tokens=1000, **PRICES))
    ledger.claim("p1", 100, 50)
    ledger.failed("p1")
    assert ledger.claim("p1", 100, 50).verdict is Verdict.LOST
    summary = ledger.summary()
    assert (summary.failed_calls, summary.lost, summary.spent_tokens) == (1, 0, 150)


def test_workers_are_counted_by_process() -> None:
    ledger = CloudLedger(BudgetPolicy())
    for worker in (11, 11, 12):
        ledger.worker_done(worker)
    assert ledger.summary().labels_by_worker == {11: 2, 12: 1}
