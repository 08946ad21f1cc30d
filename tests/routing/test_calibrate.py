"""`edgefleet calibrate` against the real stack: SmolLM2 behind edgefleet-server, the real
egress, the llama_cpp.server cloud stand-in behind its recording proxy, and Ray on 2 CPUs.

Prompts come from the shipped task set; a few dozen at a time, with short answers, so that
each test runs in a few minutes on a loaded 2-core machine.
"""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from edgefleet.calibrate.artefacts import ARTEFACT_FILE, LABELS_FILE, REPORT_FILE
from edgefleet.calibrate.main import (
    CalibrationSettings,
    calibrate,
    label_prompts,
    prepare,
    start_ray,
)
from edgefleet.calibrate.pipeline import ledger_summary, new_ledger
from edgefleet.calibrate.prompts import CalibrationError
from edgefleet.routing.complexity import default_scorer
from tests.routing.conftest import Stack
from tests.support.calibration_tasks import shipped_tasks
from tests.support.routing import ask, audit_lines, running_router, wait_for

SENSITIVE_PROMPT = "Please mail jane.roe@example.org: what is 2 plus 2?"
CLASSIFIER = "edgefleet:router_complexity_classifier"

pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    import ray

    start_ray(num_cpus=2)
    yield
    ray.shutdown()


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_policy(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"kind": "RoutingPolicy", "metadata": {"name": "cal"},
                                "spec": spec}))  # fmt: skip
    return path


def run_audit(stack: Stack, run_id: str) -> list[dict[str, Any]]:
    return [a for a in audit_lines(stack.audit_log) if a["request_id"].startswith(run_id + ":")]


def test_reference_calibration_writes_an_artefact_the_router_then_serves(
    stack: Stack, tmp_path: Path, ray_cluster: None
) -> None:
    settings = CalibrationSettings(
        policy=write_policy(tmp_path / "policy.json", {}),
        prompts=write_jsonl(tmp_path / "prompts.jsonl", shipped_tasks(2, (1, 5))),
        local=(stack.local.target,),
        out=tmp_path / "calibrations",
        assume_cloud_correct=True,
        max_tokens=16,
    )
    sent_before = len(stack.proxy.received())
    path, report = calibrate(settings, prepare(settings))

    assert report["labels"] == 28 and report["held_out"] + report["train"] == 28
    assert report["cloud"] == {"calls": 0, "tokens": 0, "cost": 0, "lost_to_worker_failures": 0}
    assert len(stack.proxy.received()) == sent_before
    assert (
        report["cloud_counted_correct"]
        and report["shipped"]["version"] == "tfidf-ridge-1+a3d2805bec"
    )
    assert report["promoted"] == (report["calibrated"]["apgr"] > report["shipped"]["apgr"])
    assert report["labelling"]["per_local_replica"].keys() == {stack.local.target}
    assert path == settings.out / report["version"] / ARTEFACT_FILE
    assert {p.name for p in path.parent.iterdir()} == {ARTEFACT_FILE, REPORT_FILE, LABELS_FILE}
    assert [p.name for p in settings.out.iterdir()] == [report["version"]]

    spec = {"complexity": {"calibration": str(path)}}
    local, cloud = [stack.local.target], stack.egress.target
    with running_router(tmp_path, spec, local, cloud) as router:
        assert router.metric(CLASSIFIER, version=report["version"]) == 1
        response, _ = ask(router.stub, "What is 6 plus 9? Answer with the number only.")
        assert response.route.reason.startswith("complexity.")

        router.set_policy({})  # back to the shipped classifier, without a restart
        shipped = default_scorer().version
        wait_for(lambda: router.metric(CLASSIFIER, version=shipped) == 1, 30, "shipped again")
        assert router.metric(CLASSIFIER, version=report["version"]) == 0

        rejected = router.metric("edgefleet:router_policy_reloads_total", result="rejected")
        router.set_policy({"complexity": {"calibration": str(tmp_path / "missing.json.gz")}})
        wait_for(
            lambda: (
                router.metric("edgefleet:router_policy_reloads_total", result="rejected") > rejected
            ),
            30,
            "the unreadable calibration refused",
        )
        assert router.metric(CLASSIFIER, version=shipped) == 1
        assert "missing.json.gz" in router.server.log()


def test_judge_mode_asks_the_cloud_once_per_prompt_and_never_for_a_sensitive_one(
    stack: Stack, tmp_path: Path, ray_cluster: None
) -> None:
    rows = [{"id": t["id"], "prompt": t["prompt"]} for t in shipped_tasks(1, (1,))]
    rows.append({"id": "private", "prompt": SENSITIVE_PROMPT})
    settings = CalibrationSettings(
        policy=write_policy(tmp_path / "policy.json", {"budget": {"maxCloudTokens": 100_000}}),
        prompts=write_jsonl(tmp_path / "prompts.jsonl", rows),
        local=(stack.local.target,),
        out=tmp_path / "calibrations",
        cloud=stack.egress.target,
        grading="judge",
        max_tokens=16,
        judge_max_tokens=24,
    )
    prepared = prepare(settings)
    assert prepared[2] == ["private"]
    policy = prepared[0]
    labelling = label_prompts(settings, prepared, new_ledger(policy.budget))

    # The stand-in (SmolLM2 as a judge) seldom writes a rating: its grades prove no quality.
    assert {r.id for r in labelling.rows} == {r["id"] for r in rows} - {"private"}
    assert {r.status for r in labelling.rows} <= {"labelled", "no_rating"}
    for row in labelling.rows:
        if row.status == "labelled":
            assert row.strong == 1.0 and row.weak in (0.0, 0.25, 0.5, 0.75, 1.0)
    audited = Counter(a["request_id"] for a in run_audit(stack, labelling.run_id))
    assert audited == Counter(f"{labelling.run_id}:{r.id}:cloud" for r in labelling.rows)
    assert labelling.spend.calls == len(labelling.rows) and labelling.spend.lost == 0
    assert "jane.roe" not in stack.proxy.received_text()


def test_a_worker_killed_mid_job_costs_no_second_cloud_call(
    stack: Stack, tmp_path: Path, ray_cluster: None
) -> None:
    cap = 50_000
    rows = [{"id": t["id"], "prompt": t["prompt"]} for t in shipped_tasks(1, (1, 2))]
    settings = CalibrationSettings(
        policy=write_policy(tmp_path / "policy.json", {"budget": {"maxCloudTokens": cap}}),
        prompts=write_jsonl(tmp_path / "prompts.jsonl", rows),
        local=(stack.local.target,),
        out=tmp_path / "calibrations",
        cloud=stack.egress.target,
        grading="judge",
        max_tokens=16,
        judge_max_tokens=16,
    )
    prepared = prepare(settings)
    ledger = new_ledger(prepared[0].budget)
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(label_prompts, settings, prepared, ledger)

        def a_worker_has_labelled_two() -> bool:
            return any(n >= 2 for n in ledger_summary(ledger).labels_by_worker.values())

        wait_for(a_worker_has_labelled_two, 600, "a worker to label two prompts")
        victim = max(ledger_summary(ledger).labels_by_worker.items(), key=lambda kv: kv[1])[0]
        os.kill(victim, signal.SIGKILL)
        labelling = job.result(timeout=1100)

    assert sorted(r.id for r in labelling.rows) == sorted(r["id"] for r in rows)
    assert {r.status for r in labelling.rows} <= {"labelled", "no_rating", "lost"}
    spend = labelling.spend
    assert victim in spend.labels_by_worker and len(spend.labels_by_worker) > 2  # restarted
    audited = Counter(a["request_id"] for a in run_audit(stack, labelling.run_id))
    assert set(audited.values()) == {1}, "a prompt went to the cloud twice"
    answered = {f"{labelling.run_id}:{r.id}:cloud" for r in labelling.rows if r.status != "lost"}
    assert answered <= set(audited) and len(audited) <= spend.calls
    assert spend.spent_tokens <= cap
    assert sum(a["prompt_tokens"] + a["completion_tokens"] for a in run_audit(
        stack, labelling.run_id)) <= cap  # fmt: skip


def test_an_exhausted_budget_stops_the_job_and_writes_nothing(
    stack: Stack, tmp_path: Path, ray_cluster: None
) -> None:
    cap = 600
    out = tmp_path / "calibrations"
    (out / "previous").mkdir(parents=True)
    settings = CalibrationSettings(
        policy=write_policy(tmp_path / "policy.json", {"budget": {"maxCloudTokens": cap}}),
        prompts=write_jsonl(tmp_path / "prompts.jsonl", shipped_tasks(1, (1,))),
        local=(stack.local.target,),
        out=out,
        cloud=stack.egress.target,
        max_tokens=16,
    )
    ledger = new_ledger(prepare(settings)[0].budget)
    with pytest.raises(CalibrationError, match=r"the cloud budget \(maxCloudTokens 600\) ran out"):
        calibrate(settings, prepare(settings), ledger)
    assert [p.name for p in out.iterdir()] == ["previous"]
    spend = ledger_summary(ledger)
    assert 0 < spend.calls < 7 and spend.spent_tokens <= cap
