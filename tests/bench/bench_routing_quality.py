"""Routing quality of the complexity classifier on the DEV data, and its decision latency.

Scores are nested-cross-validated out-of-fold scores (edgefleet.routing.train_complexity's
kept split: 5 folds stratified by benchmark and subject, seed 20240810; hyperparameters
chosen by inner CV), so every prompt is scored by a model that never saw it. Metrics follow
the data README over the full threshold sweep (every distinct score, tie groups moving
together), per benchmark. Latency is the shipped scorer, one prompt at a time, in-process.

    .venv/bin/python tests/bench/bench_routing_quality.py [--data ../shared/data/routing/dev.jsonl]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from random import Random

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from edgefleet.routing import quality
from edgefleet.routing.complexity import default_scorer
from edgefleet.routing.train_complexity import (
    DEFAULT_DATA,
    assign_folds,
    cross_validated_scores,
    load_rows,
)

SHARES = (0.1, 0.2, 0.3, 0.5, 0.8)
RANDOM_ORDERINGS = 200
GROUPS: dict[str, Callable[[dict], bool]] = {
    "MMLU": lambda r: r["benchmark"] == "mmlu",
    "MMLU without high_school_mathematics": lambda r: (
        r["benchmark"] == "mmlu" and r["subject"] != "high_school_mathematics"
    ),
    "GSM8K": lambda r: r["benchmark"] == "gsm8k",
    "MT-Bench (21 questions, indicative only)": lambda r: r["benchmark"] == "mt_bench",
}


def metrics(scores: list[float], weak: list[float], strong: list[float]) -> list[float]:
    curve = quality.pgr_curve(scores, weak, strong)
    return [
        quality.apgr(curve),
        quality.cpt(curve, 0.5),
        quality.cpt(curve, 0.8),
        *(quality.pgr_at(curve, c) for c in SHARES),
    ]


def random_metrics(weak: list[float], strong: list[float]) -> list[float]:
    """Expected metrics of random routing: the mean over fixed-seed random orderings."""
    rng = Random(0)
    ranks = list(range(len(weak)))
    runs = []
    for _ in range(RANDOM_ORDERINGS):
        rng.shuffle(ranks)
        runs.append(metrics(list(ranks), weak, strong))
    return np.mean(np.array(runs), axis=0).tolist()


def table(name: str, rows: list[dict], oof: np.ndarray) -> str:
    weak = [r["weak_correct"] for r in rows]
    strong = [r["strong_correct"] for r in rows]
    routers = {
        f"random (mean of {RANDOM_ORDERINGS} orderings)": random_metrics(weak, strong),
        "prompt length (chars)": metrics([len(r["prompt"]) for r in rows], weak, strong),
        "**complexity classifier (nested CV)**": metrics(oof.tolist(), weak, strong),
        "oracle (strong - weak)": metrics(quality.oracle_scores(weak, strong), weak, strong),
    }
    head = "| router | APGR | CPT(50%) | CPT(80%) | " + " | ".join(
        f"PGR@{round(100 * c)}%" for c in SHARES
    )
    lines = [
        f"### {name} (n = {len(rows)}, weak {np.mean(weak):.3f}, strong {np.mean(strong):.3f})",
        "",
        head + " |",
        "|---|" + "---:|" * (3 + len(SHARES)),
    ]
    for router, m in routers.items():
        cells = [f"{m[0]:.3f}", f"{100 * m[1]:.1f}%", f"{100 * m[2]:.1f}%"]
        cells += [f"{v:.3f}" for v in m[3:]]
        lines.append(f"| {router} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def latency(prompts: list[str]) -> str:
    scorer = default_scorer()
    for text in prompts[:200]:
        scorer.score(text)
    times = []
    for text in prompts:
        t0 = time.perf_counter_ns()
        scorer.score(text)
        times.append(time.perf_counter_ns() - t0)
    ms = np.array(times) / 1e6
    return (
        f"Decision latency of the shipped scorer ({scorer.version}), {len(prompts)} DEV prompts "
        f"one at a time after warm-up, {os.cpu_count()} CPUs visible: "
        f"p50 {np.percentile(ms, 50):.3f} ms, p99 {np.percentile(ms, 99):.3f} ms, "
        f"max {ms.max():.3f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    rows = load_rows(args.data)
    print(f"computing nested-CV scores for {len(rows)} prompts ...", file=sys.stderr)
    oof = cross_validated_scores(rows, assign_folds(rows), log=lambda m: print(m, file=sys.stderr))
    print("Full threshold sweep (every distinct score); CPT and PGR@share interpolate linearly.\n")
    for name, keep in GROUPS.items():
        idx = [i for i, r in enumerate(rows) if keep(r)]
        print(table(name, [rows[i] for i in idx], oof[idx]) + "\n")
    print(latency([r["prompt"] for r in rows]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
