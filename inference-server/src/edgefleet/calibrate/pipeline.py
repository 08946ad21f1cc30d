"""The labelling pipeline, a Ray Data program: prompts in, graded answers out.

    prompts ──from_items──▶ map_batches(Labeller, concurrency=workers) ──▶ labelled rows
                                 │ local answer (LocalModels: GetStats backpressure)
                                 │ cloud answer or judge call (CloudEgress, claimed first
                                 │ from the one CloudLedger actor: once per prompt, in budget)
                                 ▼ grade (reference or judge)

Each Labeller is a Ray actor holding its gRPC channels; Ray Data restarts an actor that
dies and runs its batch again, and the ledger makes that rerun free of cloud calls for the
prompts already answered. Prompts the privacy gate flags never reach this pipeline.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import ray
import ray.data

from edgefleet.calibrate.endpoints import Answer, CloudEgress, EndpointFailed, LocalModels, chat
from edgefleet.calibrate.grading import (
    JUDGE_SYSTEM,
    grade,
    judge_prompt,
    parse_rating,
    rating_quality,
)
from edgefleet.calibrate.ledger import CloudLedger, CloudReply, LedgerSummary, Verdict
from edgefleet.calibrate.prompts import PromptRow
from edgefleet.routing.budget import prompt_token_bound
from edgefleet.routing.policy import BudgetPolicy
from edgefleet.routing.privacy import CustomPattern, PrivacyScanner

# Rows per Ray task: small, so work spreads over the workers and a dead one loses little.
BATCH_SIZE = 4
# Each labeller mostly waits on gRPC: a fraction of a core lets 4 share 2 cores.
WORKER_CPUS = 0.25


@dataclass(frozen=True)
class LabelPlan:
    """What every labeller needs to know; plain data, shipped to each Ray worker."""

    local: tuple[str, ...]
    cloud: str | None
    # "reference" or "judge".
    grading: str
    # Reference grading: ask the cloud and grade its answer too (True), or count it correct.
    grade_cloud: bool
    policy_name: str
    system_prompt: str
    max_tokens: int
    judge_max_tokens: int
    # Request ids are "<run_id>:<prompt id>:<local|cloud>", so the egress audit names each.
    run_id: str
    detectors: tuple[str, ...]
    custom_patterns: tuple[CustomPattern, ...]

    @property
    def needs_cloud(self) -> bool:
        return self.grading == "judge" or self.grade_cloud


@dataclass(frozen=True)
class Labelled:
    """One prompt's outcome. `status` is "labelled" or why it has no label."""

    id: str
    prompt: str
    category: str
    status: str
    # Quality of the local and the cloud answer in [0, 1]; NaN without a label.
    weak: float
    strong: float
    local_replica: str
    cloud_cost: float
    error: str


class Labeller:
    """A Ray Data callable class: one per worker, labels its batches one prompt at a time."""

    def __init__(self, plan: LabelPlan, ledger: Any) -> None:
        self.plan = plan
        self.ledger = ledger
        self.local = LocalModels(list(plan.local))
        self.cloud = CloudEgress(plan.cloud, plan.policy_name) if plan.cloud else None
        self.scanner = PrivacyScanner(plan.detectors, plan.custom_patterns)
        self.pid = os.getpid()

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        results = []
        for index in range(len(batch["id"])):
            row = PromptRow(**{key: _plain(batch[key][index]) for key in batch})
            results.append(self.label(row))
            ray.get(self.ledger.worker_done.remote(self.pid))
        return {key: [asdict(r)[key] for r in results] for key in Labelled.__dataclass_fields__}

    def label(self, row: PromptRow) -> Labelled:
        plan = self.plan
        outcome = {"id": row.id, "prompt": row.prompt, "category": row.category}
        nothing = dict(weak=math.nan, strong=math.nan, cloud_cost=0.0)
        try:
            local = self.local.answer(
                chat(plan.system_prompt, row.prompt),
                plan.max_tokens,
                f"{plan.run_id}:{row.id}:local",
            )
        except EndpointFailed as exc:
            return Labelled(**outcome, status="failed", local_replica="", error=str(exc), **nothing)
        outcome["local_replica"] = local.served_by
        if plan.grading == "reference":
            assert row.reference is not None and row.match is not None
            weak = float(grade(local.text, row.reference, row.match))
            if not plan.grade_cloud:
                return Labelled(**outcome, status="labelled", weak=weak, strong=1.0,
                                cloud_cost=0.0, error="")  # fmt: skip
            messages = chat(plan.system_prompt, row.prompt)
            reply, status, error = self._cloud(row.id, messages, plan.max_tokens)
            if reply is None:
                return Labelled(**outcome, status=status, error=error, **nothing)
            strong = float(grade(reply.text, row.reference, row.match))
            return Labelled(**outcome, status="labelled", weak=weak, strong=strong,
                            cloud_cost=reply.cost, error="")  # fmt: skip
        judging = judge_prompt(row.prompt, local.text)
        if self.scanner.sensitive([judging]) is not None:
            # The local answer brought in something the gate flags: it stays here.
            return Labelled(**outcome, status="sensitive", error="", **nothing)
        reply, status, error = self._cloud(
            row.id, chat(JUDGE_SYSTEM, judging), plan.judge_max_tokens
        )
        if reply is None:
            return Labelled(**outcome, status=status, error=error, **nothing)
        rating = parse_rating(reply.text)
        if rating is None:
            return Labelled(**outcome, status="no_rating", error="", weak=math.nan,
                            strong=math.nan, cloud_cost=reply.cost)  # fmt: skip
        return Labelled(**outcome, status="labelled", weak=rating_quality(rating), strong=1.0,
                        cloud_cost=reply.cost, error="")  # fmt: skip

    def _cloud(
        self, prompt_id: str, messages: list, max_tokens: int
    ) -> tuple[CloudReply | None, str, str]:
        """(reply, "labelled", "") through the ledger, or (None, why not, error)."""
        assert self.cloud is not None
        bound = prompt_token_bound([m.content for m in messages])
        claim = ray.get(self.ledger.claim.remote(prompt_id, bound, max_tokens))
        if claim.verdict is Verdict.ANSWERED:
            return claim.reply, "labelled", ""
        if claim.verdict is not Verdict.SEND:
            return None, claim.verdict.value, ""
        try:
            answer: Answer = self.cloud.answer(
                messages, max_tokens, f"{self.plan.run_id}:{prompt_id}:cloud"
            )
        except EndpointFailed as exc:
            ray.get(self.ledger.failed.remote(prompt_id))
            return None, "failed", str(exc)
        reply = ray.get(
            self.ledger.answered.remote(
                prompt_id, answer.text, answer.prompt_tokens, answer.completion_tokens
            )
        )
        return reply, "labelled", ""


def _plain(value: Any) -> Any:
    """A numpy scalar from a batch as the Python value it was (None stays None)."""
    return value.item() if hasattr(value, "item") else value


def new_ledger(budget: BudgetPolicy) -> Any:
    """The job's one CloudLedger actor; it is not restarted (its books are the truth)."""
    return ray.remote(CloudLedger).options(num_cpus=0, max_restarts=0).remote(budget)


def label(rows: list[PromptRow], plan: LabelPlan, workers: int, ledger: Any) -> list[Labelled]:
    """Run the pipeline over `rows` with `workers` labellers; every row comes back once."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    dataset = ray.data.from_items([asdict(row) for row in rows]).map_batches(
        Labeller,
        fn_constructor_kwargs={"plan": plan, "ledger": ledger},
        batch_size=BATCH_SIZE,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=WORKER_CPUS,
    )
    return [Labelled(**{key: _plain(value) for key, value in item.items()})
            for item in dataset.take_all()]  # fmt: skip


def ledger_summary(ledger: Any) -> LedgerSummary:
    return ray.get(ledger.summary.remote())
