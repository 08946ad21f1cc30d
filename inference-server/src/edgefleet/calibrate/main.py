"""`edgefleet calibrate`: label your prompts on your local model and retrain the router's
complexity classifier on them, on this machine (Ray started locally).

    edgefleet calibrate --policy routingpolicy.yaml --prompts examples/calibration/tasks.jsonl \\
        --local 127.0.0.1:50051 --cloud 127.0.0.1:50061 --out calibrations/

Everything is checked before anything is asked (the policy, every prompt line, references,
that every endpoint serves); prompts the policy's privacy gate flags are left out and never
reach the cloud. The result is `OUT/<version>/` (`complexity.json.gz`, `report.json`,
`labels.jsonl`), written together or not at all; exit 0 when written, 2 with one line saying
why when not. Serve it with `spec.complexity.calibration: OUT/<version>/complexity.json.gz`
in the RoutingPolicy.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.calibrate.artefacts import write_version
from edgefleet.calibrate.endpoints import check_serving
from edgefleet.calibrate.prompts import (
    CalibrationError,
    PromptRow,
    load_prompts,
    require_references,
)
from edgefleet.calibrate.publish import (
    Destination,
    PublishError,
    publish,
    result_config_map,
)
from edgefleet.routing.complexity import ComplexityScorer, default_scorer
from edgefleet.routing.policy import PolicyError, RoutingPolicy, load_policy
from edgefleet.serving.config import DEFAULT_SYSTEM_PROMPT

if TYPE_CHECKING:  # Ray and scikit-learn load only when a job runs
    from edgefleet.calibrate.ledger import LedgerSummary
    from edgefleet.calibrate.pipeline import Labelled
    from edgefleet.calibrate.train import Trained

FORMAT_VERSION = "calibrated-1"
# The policy, the prompts the cloud may see, the ids of those the privacy gate keeps local.
Prepared = tuple[RoutingPolicy, list[PromptRow], list[str]]

log = logging.getLogger("edgefleet.calibrate")


@dataclass(frozen=True)
class CalibrationSettings:
    policy: Path
    prompts: Path
    local: tuple[str, ...]
    out: Path
    cloud: str | None = None
    grading: str = "reference"
    # Reference grading without asking the cloud: it counts as right on every prompt.
    assume_cloud_correct: bool = False
    workers: int = 2
    max_tokens: int = 48
    judge_max_tokens: int = 96
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    # Caps for this run's cloud spend instead of the policy budget's (None: the policy's).
    max_cloud_tokens: int | None = None
    max_cloud_cost: float | None = None


def _plan(settings: CalibrationSettings, policy: RoutingPolicy, run_id: str) -> Any:
    from edgefleet.calibrate.pipeline import LabelPlan

    return LabelPlan(
        local=settings.local,
        cloud=settings.cloud,
        grading=settings.grading,
        grade_cloud=settings.grading == "reference" and not settings.assume_cloud_correct,
        policy_name=policy.name,
        system_prompt=settings.system_prompt,
        max_tokens=settings.max_tokens,
        judge_max_tokens=settings.judge_max_tokens,
        run_id=run_id,
        detectors=policy.privacy.detectors,
        custom_patterns=policy.privacy.custom_patterns,
    )


def prepare(settings: CalibrationSettings) -> Prepared:
    """The policy, the prompts the cloud may see, and the ids of those it may not.

    Raises CalibrationError for anything that would stop the job later: nothing has been
    sent when it does.
    """
    try:
        policy = load_policy(settings.policy)
    except PolicyError as exc:
        raise CalibrationError(str(exc), reason="InvalidPolicy") from exc
    policy = with_budget_caps(policy, settings.max_cloud_tokens, settings.max_cloud_cost)
    if settings.grading not in ("reference", "judge"):
        raise CalibrationError(f"--grading must be reference or judge, got {settings.grading!r}")
    rows = load_prompts(settings.prompts)
    if settings.grading == "reference":
        require_references(rows)
    needs_cloud = settings.grading == "judge" or not settings.assume_cloud_correct
    if needs_cloud and not settings.cloud:
        raise CalibrationError(
            f"--grading {settings.grading} asks the cloud: give --cloud (the egress)"
            + (", or --assume-cloud-correct" if settings.grading == "reference" else "")
        )
    if not settings.local:
        raise CalibrationError("give --local: the local model endpoints to calibrate for")
    if settings.workers < 1:
        raise CalibrationError(f"--workers must be at least 1, got {settings.workers}")
    scanner = policy.scanner()
    sensitive = [row.id for row in rows if scanner.sensitive([row.prompt]) is not None]
    kept = [row for row in rows if row.id not in set(sensitive)]
    check_serving(list(settings.local), "local model")
    if needs_cloud and settings.cloud:
        check_serving([settings.cloud], "cloud egress")
    return policy, kept, sensitive


def with_budget_caps(
    policy: RoutingPolicy, max_tokens: int | None, max_cost: float | None
) -> RoutingPolicy:
    """The policy with this run's cloud caps in place of its budget's, where given."""
    budget = policy.budget
    if max_tokens is not None:
        budget = replace(budget, max_cloud_tokens=max_tokens)
    if max_cost is not None:
        budget = replace(budget, max_cloud_cost=max_cost)
    return replace(policy, budget=budget)


def start_ray(num_cpus: int | None = None, address: str | None = None) -> bool:
    """Start (or join) Ray unless this process already has; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return True
    local = {
        "num_cpus": num_cpus or os.cpu_count() or 1,
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "log_to_driver": False,
    }
    # A local start waits a fixed 30 s for its raylet to register; on a busy
    # 2-core node that sometimes runs out (seen in CI), and a second start
    # from a clean slate succeeds. Only that failure is tried again, once.
    try:
        ray.init(**local)
    except Exception as error:
        if "timed out during startup" not in str(error):
            raise
        log.warning("local Ray did not start in time (%s); starting it once more", error)
        ray.shutdown()
        ray.init(**local)
    return True


@dataclass(frozen=True)
class Labelling:
    """What the labelling pipeline returned: a row per prompt, and the ledger's books."""

    run_id: str
    started: datetime.datetime
    rows: list[Labelled]
    spend: LedgerSummary
    seconds: float


def label_prompts(settings: CalibrationSettings, prepared: Prepared, ledger: Any) -> Labelling:
    """Run the Ray Data pipeline over the prepared prompts; `ledger` is pipeline.new_ledger's."""
    from edgefleet.calibrate.pipeline import label, ledger_summary

    policy, rows, _ = prepared
    started = datetime.datetime.now(datetime.UTC)
    run_id = f"cal-{started:%Y%m%dT%H%M%S}-{os.getpid()}"
    clock = time.monotonic()
    labelled = label(rows, _plan(settings, policy, run_id), settings.workers, ledger)
    seconds = time.monotonic() - clock
    return Labelling(run_id, started, labelled, ledger_summary(ledger), seconds)


def calibrate(
    settings: CalibrationSettings, prepared: Prepared, ledger: Any = None
) -> tuple[Path, dict]:
    """Run the whole job in this process's Ray; returns the artefact's path and the report.

    `prepared` is what prepare(settings) returned. `ledger` lets a caller watch the job's
    cloud ledger (pipeline.new_ledger); by default the job makes its own.
    """
    from edgefleet.calibrate.pipeline import new_ledger
    from edgefleet.calibrate.train import Example, train

    policy = prepared[0]
    ledger = ledger if ledger is not None else new_ledger(policy.budget)
    labelling = label_prompts(settings, prepared, ledger)
    labelled, spend, budget = labelling.rows, labelling.spend, policy.budget
    if spend.budget_exhausted:
        caps = ", ".join(
            f"{name} {value}"
            for name, value in (("maxCloudTokens", budget.max_cloud_tokens),
                                ("maxCloudCost", budget.max_cloud_cost))
            if value is not None
        )  # fmt: skip
        raise CalibrationError(
            f"the cloud budget ({caps}) ran out after {spend.calls} cloud calls "
            f"({spend.spent_tokens} tokens, cost {spend.spent_cost:.6f}); nothing written",
            reason="BudgetExhausted",
        )
    failed = [row for row in labelled if row.status == "failed"]
    if failed:
        raise CalibrationError(
            f"{len(failed)} of {len(labelled)} prompts could not be answered, e.g. "
            f"{failed[0].id}: {failed[0].error}; nothing written",
            reason="LabellingFailed",
        )
    examples = [
        Example(row.id, row.prompt, row.category, row.weak, row.strong)
        for row in labelled
        if row.status == "labelled"
    ]
    digest = hashlib.sha256(
        json.dumps(sorted((e.id, e.prompt, e.weak, e.strong) for e in examples)).encode()
    ).hexdigest()
    version = f"{FORMAT_VERSION}+{labelling.started:%Y%m%d%H%M%S}-{digest[:10]}"
    shipped = default_scorer()
    meta = {"base": shipped.version, "grading": settings.grading, "labels_sha256": digest}
    trained = train(examples, version, meta)
    report = report_of(settings, prepared, labelling, trained, shipped.version)
    labels = [
        {
            "id": r.id,
            "category": r.category,
            "status": r.status,
            "weak": _or_none(r.weak),
            "strong": _or_none(r.strong),
        }
        for r in labelled
    ]
    path = write_version(settings.out, version, trained.artefact, report, labels)
    return path, report


def report_of(
    settings: CalibrationSettings,
    prepared: Prepared,
    labelling: Labelling,
    trained: Trained,
    shipped_version: str,
) -> dict:
    """The report.json of a finished job, as plain data."""
    policy, rows, sensitive = prepared
    labelled, spend, seconds = labelling.rows, labelling.spend, labelling.seconds
    version = trained.artefact["version"]
    share = policy.complexity.target_cloud_share
    return {
        "version": version,
        "created": labelling.started.isoformat(timespec="seconds"),
        "policy": policy.name,
        "prompts_file": str(settings.prompts),
        "grading": settings.grading,
        "cloud_counted_correct": settings.grading == "judge" or settings.assume_cloud_correct,
        "prompts": {
            "total": len(rows) + len(sensitive),
            "kept_local_by_privacy_gate": len(sensitive),
            "by_status": dict(Counter(row.status for row in labelled)),
        },
        "labels": trained.train_count + trained.held_out_count,
        "train": trained.train_count,
        "held_out": trained.held_out_count,
        "cloud": {
            "calls": spend.calls,
            "tokens": spend.spent_tokens,
            "cost": round(spend.spent_cost, 8),
            "lost_to_worker_failures": spend.lost,
        },
        "shipped": {"version": shipped_version, **asdict(trained.shipped)},
        "calibrated": {"version": version, **asdict(trained.calibrated)},
        "threshold_for_target_share": (
            {
                "share": share,
                "threshold": ComplexityScorer(trained.artefact).threshold_for_share(share),
            }
            if share is not None
            else None
        ),
        "promoted": trained.calibrated.apgr > trained.shipped.apgr,
        "labelling": {
            "workers": settings.workers,
            "seconds": round(seconds, 2),
            "labels_per_second": round(len(labelled) / seconds, 3),
            "per_local_replica": {
                replica: round(count / seconds, 3)
                for replica, count in sorted(Counter(r.local_replica for r in labelled).items())
            },
        },
    }


def _or_none(value: float) -> float | None:
    """NaN (no label) as JSON's null: NaN is not JSON."""
    return None if math.isnan(value) else value


def summary(path: Path, report: dict) -> str:
    """What a person reads after a run: where it went, how it compares, what to do next."""
    shipped, calibrated = report["shipped"], report["calibrated"]
    lines = [
        f"wrote {path} ({report['labels']} labels, {report['held_out']} held out; cloud "
        f"{report['cloud']['calls']} calls, cost {report['cloud']['cost']})",
        "| classifier | APGR | CPT(50%) | CPT(80%) |",
        "|---|---:|---:|---:|",
    ]
    for name, figures in (("shipped", shipped), ("calibrated", calibrated)):
        lines.append(
            f"| {name} {figures['version']} | {figures['apgr']:.3f} | "
            f"{100 * figures['cpt50']:.1f}% | {100 * figures['cpt80']:.1f}% |"
        )
    if report["promoted"]:
        lines.append(f"promoted: serve it with spec.complexity.calibration: {path}")
    else:
        lines.append("not promoted: the calibrated classifier is no better on the held-out prompts")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgefleet calibrate", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    p.add_argument("--policy", type=Path, required=True, help="the RoutingPolicy (YAML or JSON)")
    p.add_argument(
        "--prompts", type=Path, required=True, help='JSONL: {"id","prompt","reference"?}'
    )
    p.add_argument("--local", required=True, help="local model servers, host:port,...")
    p.add_argument("--cloud", help="the egress, host:port (judge grading, or grading the cloud)")
    p.add_argument("--grading", choices=("reference", "judge"), default="reference")
    p.add_argument(
        "--assume-cloud-correct",
        action="store_true",
        help="reference grading without asking the cloud: count its answers right",
    )
    p.add_argument("--out", type=Path, default=Path("calibrations"))
    p.add_argument("--workers", type=int, default=2, help="Ray workers labelling at once")
    p.add_argument("--max-tokens", type=int, default=48, help="answer length, local and cloud")
    p.add_argument("--num-cpus", type=int, help="CPUs Ray may use (default: all)")
    p.add_argument("--ray-address", help="join this Ray cluster instead of starting one")
    p.add_argument("--max-cloud-tokens", type=int, help="this run's cap instead of the policy's")
    p.add_argument("--max-cloud-cost", type=float, help="this run's cap instead of the policy's")
    cluster = p.add_argument_group("in the cluster (the operator's RayJob)")
    cluster.add_argument(
        "--publish-configmap",
        metavar="NAMESPACE/NAME",
        help="also hand the result (or why there is none) over as this new ConfigMap",
    )
    cluster.add_argument(
        "--owner",
        metavar="NAME/UID",
        help="the RouterCalibration that owns the published ConfigMap",
    )
    return p


def _destination(args: argparse.Namespace) -> Destination | None:
    if not args.publish_configmap:
        return None
    namespace, _, name = args.publish_configmap.partition("/")
    owner_name, _, owner_uid = (args.owner or "").partition("/")
    if not (namespace and name and owner_name and owner_uid):
        raise SystemExit(
            "edgefleet calibrate: --publish-configmap NAMESPACE/NAME needs --owner NAME/UID"
        )
    return Destination(namespace, name, owner_name, owner_uid)


def _publish(where: Destination | None, **result: Any) -> None:
    if where is None:
        return
    try:
        publish(result_config_map(where, **result))
    except PublishError as exc:
        print(f"edgefleet calibrate: {exc}", file=sys.stderr)
        sys.exit(3)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    where = _destination(args)
    settings = CalibrationSettings(
        policy=args.policy,
        prompts=args.prompts,
        local=tuple(a.strip() for a in args.local.split(",") if a.strip()),
        out=args.out,
        cloud=args.cloud,
        grading=args.grading,
        assume_cloud_correct=args.assume_cloud_correct,
        workers=args.workers,
        max_tokens=args.max_tokens,
        max_cloud_tokens=args.max_cloud_tokens,
        max_cloud_cost=args.max_cloud_cost,
    )
    try:
        prepared = prepare(settings)  # every check that needs no Ray, before starting it
        started = start_ray(args.num_cpus, args.ray_address)
        try:
            path, report = calibrate(settings, prepared)
        finally:
            if started:
                import ray

                ray.shutdown()
    except CalibrationError as exc:
        print(f"edgefleet calibrate: {exc}", file=sys.stderr)
        _publish(where, error=str(exc), reason=exc.reason)
        sys.exit(2)
    _publish(where, artefact=path.read_bytes(), report=report)
    print(summary(path, report))


if __name__ == "__main__":
    main()
