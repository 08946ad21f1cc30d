"""Train the complexity classifier and export it for `edgefleet.routing.complexity`.

    python -m edgefleet.routing.train_complexity \
        --data ../shared/data/routing/dev.jsonl \
        --out inference-server/src/edgefleet/routing/models/complexity-v1.json.gz

Model (fixed before looking at the reported folds): ridge regression of the per-prompt gain
strong - weak (MT-Bench: its sign) on word 1-2-gram TF-IDF plus standardised hand features.
The two hyperparameters (ridge alpha, weight of the hand features) are chosen from a small
grid by inner cross-validation, so the nested-CV numbers printed here are unseen-prompt
numbers. The shipped model is fit on all the data with parameters chosen by 5-fold CV;
its calibration (a logistic map of the raw output to P(strong better)) and the score
quantiles behind `threshold_for_share` come from that CV's out-of-fold outputs.

Needs scikit-learn (the `dev` extra); the shipped scorer does not.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix, hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler

from edgefleet.routing import quality
from edgefleet.routing.complexity import (
    ARTEFACT_FORMAT,
    ARTEFACT_NAME,
    HAND_FEATURE_NAMES,
    ComplexityScorer,
    hand_features,
)

SPLIT_SEED = 20240810
FOLDS = 5
INNER_FOLDS = 3
ALPHAS = (3.0, 10.0)
HAND_WEIGHTS = (0.03, 0.1)
# Benchmarks whose mean APGR picks the hyperparameters (MT-Bench is too small to steer).
SELECTION_BENCHMARKS = ("mmlu", "gsm8k")
QUANTILE_LEVELS = 101
DEFAULT_DATA = Path("../shared/data/routing/dev.jsonl")
DEFAULT_OUT = Path("inference-server/src/edgefleet/routing/models") / ARTEFACT_NAME


@dataclass(frozen=True)
class Params:
    alpha: float
    hand_weight: float


@dataclass
class FittedModel:
    vectorizer: TfidfVectorizer
    scaler: StandardScaler
    ridge: Ridge
    params: Params

    def raw_scores(self, texts: list[str]) -> np.ndarray:
        return self.ridge.predict(_design(self, texts, fit=False))


def load_rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def assign_folds(rows: list[dict], k: int = FOLDS, seed: int = SPLIT_SEED) -> np.ndarray:
    """Fold number per row, stratified by (benchmark, subject), from a hash of the id.

    Within each stratum rows are ordered by sha256(seed:id) and dealt round-robin, with the
    dealer carried across strata so that small strata do not all land in fold 0.
    """
    strata: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(rows):
        strata.setdefault((r["benchmark"], str(r["subject"])), []).append(i)
    folds = np.zeros(len(rows), dtype=np.int64)
    dealt = 0
    for key in sorted(strata):
        members = sorted(
            strata[key], key=lambda i: hashlib.sha256(f"{seed}:{rows[i]['id']}".encode()).digest()
        )
        for i in members:
            folds[i] = dealt % k
            dealt += 1
    return folds


def gain_target(rows: list[dict]) -> np.ndarray:
    """strong - weak per prompt; MT-Bench judge scores reduced to their sign (-1, 0, 1)."""
    gains = np.array([r["strong_correct"] - r["weak_correct"] for r in rows], dtype=np.float64)
    mt = np.array([r["benchmark"] == "mt_bench" for r in rows])
    gains[mt] = np.sign(gains[mt])
    return gains


def _design(model: FittedModel, texts: list[str], fit: bool) -> csr_matrix:
    hand = np.array([hand_features(t) for t in texts], dtype=np.float64)
    if fit:
        words = model.vectorizer.fit_transform(texts)
        hand = model.scaler.fit_transform(hand)
    else:
        words = model.vectorizer.transform(texts)
        hand = model.scaler.transform(hand)
    return hstack([words, csr_matrix(model.params.hand_weight * hand)]).tocsr()


def fit_model(texts: list[str], targets: np.ndarray, params: Params) -> FittedModel:
    model = FittedModel(
        vectorizer=TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
        scaler=StandardScaler(),
        ridge=Ridge(alpha=params.alpha),
        params=params,
    )
    model.ridge.fit(_design(model, texts, fit=True), targets)
    return model


def _mean_apgr(rows: list[dict], scores: np.ndarray, benchmarks: tuple[str, ...]) -> float:
    values = []
    for bench in benchmarks:
        idx = [i for i, r in enumerate(rows) if r["benchmark"] == bench]
        curve = quality.pgr_curve(
            scores[idx].tolist(),
            [rows[i]["weak_correct"] for i in idx],
            [rows[i]["strong_correct"] for i in idx],
        )
        values.append(quality.apgr(curve))
    return float(np.mean(values))


def _oof_raw(rows: list[dict], folds: np.ndarray, grid: list[Params]) -> dict[Params, np.ndarray]:
    """Out-of-fold raw scores of every grid point (one vectoriser fit per fold)."""
    texts = [r["prompt"] for r in rows]
    gains = gain_target(rows)
    out = {p: np.zeros(len(rows)) for p in grid}
    for k in np.unique(folds):
        train = np.flatnonzero(folds != k)
        test = np.flatnonzero(folds == k)
        # The vectoriser and scaler do not depend on the grid point, so fit them once.
        base = fit_model([texts[i] for i in train], gains[train], grid[0])
        x_train = _design(base, [texts[i] for i in train], fit=False)
        x_test = _design(base, [texts[i] for i in test], fit=False)
        for p in grid:
            hand_scale = p.hand_weight / base.params.hand_weight
            scale = np.ones(x_train.shape[1])
            scale[-len(HAND_FEATURE_NAMES) :] = hand_scale
            ridge = Ridge(alpha=p.alpha).fit(x_train.multiply(scale).tocsr(), gains[train])
            out[p][test] = ridge.predict(x_test.multiply(scale).tocsr())
    return out


def select_params(rows: list[dict], folds: np.ndarray) -> tuple[Params, np.ndarray]:
    """The grid point with the best mean APGR over `folds`, and its out-of-fold raw scores."""
    grid = [Params(a, w) for a in ALPHAS for w in HAND_WEIGHTS]
    oof = _oof_raw(rows, folds, grid)
    best = max(grid, key=lambda p: _mean_apgr(rows, oof[p], SELECTION_BENCHMARKS))
    return best, oof[best]


def cross_validated_scores(
    rows: list[dict], folds: np.ndarray | None = None, log=print
) -> np.ndarray:
    """Nested-CV out-of-fold raw scores: each outer fold's model never saw its prompts,
    and its hyperparameters were chosen by inner CV on the other folds only."""
    folds = assign_folds(rows) if folds is None else folds
    texts = [r["prompt"] for r in rows]
    gains = gain_target(rows)
    scores = np.zeros(len(rows))
    for k in np.unique(folds):
        train = np.flatnonzero(folds != k)
        test = np.flatnonzero(folds == k)
        train_rows = [rows[i] for i in train]
        inner = assign_folds(train_rows, k=INNER_FOLDS, seed=SPLIT_SEED + 1 + int(k))
        params, _ = select_params(train_rows, inner)
        model = fit_model([texts[i] for i in train], gains[train], params)
        scores[test] = model.raw_scores([texts[i] for i in test])
        log(f"outer fold {k}: alpha={params.alpha} hand_weight={params.hand_weight}")
    return scores


def calibrate(raw: np.ndarray, rows: list[dict]) -> tuple[float, float]:
    """Slope and intercept of a logistic map from raw score to P(strong does better)."""
    better = np.array([r["strong_correct"] > r["weak_correct"] for r in rows], dtype=np.int64)
    lr = LogisticRegression(C=1e6, max_iter=1000).fit(raw.reshape(-1, 1), better)
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


def export(
    model: FittedModel, slope: float, intercept: float, quantiles: np.ndarray, meta: dict
) -> dict:
    """The artefact as plain JSON data (what ComplexityScorer reads)."""
    vocab = model.vectorizer.vocabulary_
    terms = sorted(vocab, key=vocab.__getitem__)
    n_words = len(terms)
    coef = model.ridge.coef_
    # Fold standardisation and the hand weight into the hand coefficients:
    # w * coef * (x - mean) / scale = (x - mean) @ (w * coef / scale).
    hand_coef = model.params.hand_weight * coef[n_words:] / model.scaler.scale_
    return {
        "format": ARTEFACT_FORMAT,
        "version": meta["version"],
        "vocabulary": terms,
        "idf": model.vectorizer.idf_.tolist(),
        "word_coef": coef[:n_words].tolist(),
        "hand_features": list(HAND_FEATURE_NAMES),
        "hand_mean": model.scaler.mean_.tolist(),
        "hand_coef": hand_coef.tolist(),
        "intercept": float(model.ridge.intercept_),
        "calibration": {"slope": slope, "intercept": intercept},
        "score_quantiles": quantiles.tolist(),
        "meta": meta,
    }


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def summary_table(rows: list[dict], scores: np.ndarray) -> str:
    lines = ["| benchmark | n | APGR | CPT(50%) | CPT(80%) |", "|---|---:|---:|---:|---:|"]
    groups = {
        "MMLU": lambda r: r["benchmark"] == "mmlu",
        "MMLU w/o high_school_mathematics": lambda r: (
            r["benchmark"] == "mmlu" and r["subject"] != "high_school_mathematics"
        ),
        "GSM8K": lambda r: r["benchmark"] == "gsm8k",
        "MT-Bench": lambda r: r["benchmark"] == "mt_bench",
    }
    for name, keep in groups.items():
        idx = [i for i, r in enumerate(rows) if keep(r)]
        curve = quality.pgr_curve(
            scores[idx].tolist(),
            [rows[i]["weak_correct"] for i in idx],
            [rows[i]["strong_correct"] for i in idx],
        )
        lines.append(
            f"| {name} | {len(idx)} | {quality.apgr(curve):.3f} | "
            f"{100 * quality.cpt(curve, 0.5):.1f}% | {100 * quality.cpt(curve, 0.8):.1f}% |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--skip-cv", action="store_true", help="skip the nested-CV report")
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.perf_counter()
    data = args.data.read_bytes()
    rows = load_rows(args.data)
    log(f"{len(rows)} prompts from {args.data}")
    folds = assign_folds(rows)

    if not args.skip_cv:
        log("nested cross-validation (unseen-prompt estimate) ...")
        print("Nested 5-fold CV, full threshold sweep:")
        print(summary_table(rows, cross_validated_scores(rows, folds, log=log)))

    log("choosing the shipped model's parameters by 5-fold CV on all data ...")
    params, oof = select_params(rows, folds)
    log(f"chosen: alpha={params.alpha} hand_weight={params.hand_weight}")
    slope, intercept = calibrate(oof, rows)
    quantiles = np.quantile(sigmoid(slope * oof + intercept), np.linspace(0, 1, QUANTILE_LEVELS))
    model = fit_model([r["prompt"] for r in rows], gain_target(rows), params)
    meta = {
        "version": f"tfidf-ridge-1+{hashlib.sha256(data).hexdigest()[:10]}",
        "data_sha256": hashlib.sha256(data).hexdigest(),
        "prompts": len(rows),
        "alpha": params.alpha,
        "hand_weight": params.hand_weight,
        "split_seed": SPLIT_SEED,
    }
    artefact = export(model, slope, intercept, quantiles, meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0 keeps the gzip bytes identical across runs on the same data.
    args.out.write_bytes(gzip.compress(json.dumps(artefact).encode(), mtime=0))

    # Check the exported, numpy-only scorer against the scikit-learn model it came from.
    scorer = ComplexityScorer.load(args.out)
    sample = [r["prompt"] for r in rows[:: max(1, len(rows) // 200)]]
    expected = model.raw_scores(sample)
    worst = max(abs(scorer.raw_score(t) - e) for t, e in zip(sample, expected, strict=True))
    log(
        f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, version {scorer.version}); "
        f"max |numpy - sklearn| = {worst:.2e}; {time.perf_counter() - started:.0f} s"
    )
    return 0 if worst < 1e-6 else 1


if __name__ == "__main__":
    raise SystemExit(main())
