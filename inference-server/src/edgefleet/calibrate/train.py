"""Train the complexity classifier on the user's labels and judge it on held-out prompts.

The model, features and artefact format are the shipped classifier's
(`edgefleet.routing.train_complexity`): word 1-2-gram TF-IDF plus hand features, ridge
regression of the gain strong - weak, a logistic calibration and score quantiles from
out-of-fold outputs. Only the data differ: the user's prompts, graded on the user's
local model. The held-out split is set aside before anything is fit, and the model that is
evaluated on it is the one written (no refit on all data afterwards), so its figures hold
for the artefact the router loads.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from edgefleet.calibrate.prompts import CalibrationError
from edgefleet.routing import quality
from edgefleet.routing.complexity import ComplexityScorer
from edgefleet.routing.train_complexity import (
    ALPHAS,
    HAND_WEIGHTS,
    QUANTILE_LEVELS,
    Params,
    assign_folds,
    calibrate,
    export,
    fit_model,
    gain_target,
    sigmoid,
)

SPLIT_SEED = 20261206
HELD_OUT_SHARE = 0.3
FOLDS = 5
# Fewer labels than this cannot train and hold out anything meaningful.
MIN_LABELS = 20


@dataclass(frozen=True)
class Example:
    id: str
    prompt: str
    category: str
    # Quality of the local (weak) and cloud (strong) answers, in [0, 1].
    weak: float
    strong: float


@dataclass(frozen=True)
class RouterQuality:
    apgr: float
    cpt50: float
    cpt80: float


@dataclass(frozen=True)
class Trained:
    artefact: dict
    train_count: int
    held_out_count: int
    shipped: RouterQuality
    calibrated: RouterQuality
    params: Params


def held_out_mask(examples: list[Example], share: float = HELD_OUT_SHARE) -> np.ndarray:
    """True for the held-out examples, `share` of them, stratified by category.

    Examples are ordered by category, then by a hash of the id, and every position whose
    last digit is below share x 10 is held out; the count runs on across categories, so
    small categories do not all land in the held-out split.
    """
    order = sorted(
        range(len(examples)),
        key=lambda i: (
            examples[i].category,
            hashlib.sha256(f"{SPLIT_SEED}:{examples[i].id}".encode()).digest(),
        ),
    )
    mask = np.zeros(len(examples), dtype=bool)
    cut = round(share * 10)
    for position, i in enumerate(order):
        mask[i] = position % 10 < cut
    return mask


def router_quality(scores: list[float], examples: list[Example]) -> RouterQuality:
    """APGR and CPT(50 %, 80 %) of a router's scores over `examples`."""
    try:
        curve = quality.pgr_curve(scores, [e.weak for e in examples], [e.strong for e in examples])
    except ValueError as exc:
        raise CalibrationError(
            f"the held-out prompts cannot rank routers: {exc} (the local model did as well as "
            "the cloud on them; more or harder prompts are needed)",
            reason="NotEnoughLabels",
        ) from exc
    return RouterQuality(quality.apgr(curve), quality.cpt(curve, 0.5), quality.cpt(curve, 0.8))


def _rows(examples: list[Example]) -> list[dict]:
    """The training script's row shape (one benchmark; the category as subject)."""
    return [
        {"id": e.id, "prompt": e.prompt, "benchmark": "calibration", "subject": e.category,
         "weak_correct": e.weak, "strong_correct": e.strong}
        for e in examples
    ]  # fmt: skip


def _oof_scores(rows: list[dict], folds: np.ndarray, params: Params) -> np.ndarray:
    texts = [r["prompt"] for r in rows]
    gains = gain_target(rows)
    out = np.zeros(len(rows))
    for k in np.unique(folds):
        train, test = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        model = fit_model([texts[i] for i in train], gains[train], params)
        out[test] = model.raw_scores([texts[i] for i in test])
    return out


def _cv_apgr(rows: list[dict], scores: np.ndarray) -> float:
    curve = quality.pgr_curve(
        scores.tolist(), [r["weak_correct"] for r in rows], [r["strong_correct"] for r in rows]
    )
    return quality.apgr(curve)


def train(examples: list[Example], version: str, meta: dict) -> Trained:
    """Fit on the training split, evaluate shipped and calibrated on the held-out split."""
    if len(examples) < MIN_LABELS:
        raise CalibrationError(
            f"too few labels to train on: {len(examples)}, at least {MIN_LABELS} are needed",
            reason="NotEnoughLabels",
        )
    mask = held_out_mask(examples)
    train_set = [e for e, held in zip(examples, mask, strict=True) if not held]
    held_out = [e for e, held in zip(examples, mask, strict=True) if held]
    rows = _rows(train_set)
    gains = gain_target(rows)
    if not (gains > 0).any() or (gains > 0).all():
        raise CalibrationError(
            "every training prompt has the same label: the cloud did better than the local "
            "model on none of them, or on all; nothing to learn",
            reason="NotEnoughLabels",
        )
    folds = assign_folds(rows, k=FOLDS, seed=SPLIT_SEED)
    grid = [Params(alpha, weight) for alpha in ALPHAS for weight in HAND_WEIGHTS]
    oof = {params: _oof_scores(rows, folds, params) for params in grid}
    best = max(grid, key=lambda p: _cv_apgr(rows, oof[p]))
    slope, intercept = calibrate(oof[best], rows)
    quantiles = np.quantile(
        sigmoid(slope * oof[best] + intercept), np.linspace(0, 1, QUANTILE_LEVELS)
    )
    model = fit_model([r["prompt"] for r in rows], gains, best)
    artefact = export(
        model, slope, intercept, quantiles,
        {**meta, "version": version, "alpha": best.alpha, "hand_weight": best.hand_weight,
         "prompts": len(train_set), "split_seed": SPLIT_SEED},
    )  # fmt: skip
    calibrated = ComplexityScorer(artefact)
    shipped = ComplexityScorer.load()
    texts = [e.prompt for e in held_out]
    return Trained(
        artefact=artefact,
        train_count=len(train_set),
        held_out_count=len(held_out),
        shipped=router_quality([shipped.score(t) for t in texts], held_out),
        calibrated=router_quality([calibrated.score(t) for t in texts], held_out),
        params=best,
    )
