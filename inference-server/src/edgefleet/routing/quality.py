"""Routing-quality metrics: PGR curve, APGR and CPT over a full threshold sweep.

Definitions follow the routing data's README (RouteLLM's metrics): a router scores every
prompt, prompts with score >= t go to the strong model, and sweeping t over every distinct
score gives the curve of PGR (performance gap recovered) against the share of strong calls.
Prompts with equal scores move together, so a tie group is one step of the curve; linear
interpolation across it equals the expected result of random tie-breaking.

Pure functions over plain sequences; compute them per benchmark, never pooled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from random import Random


@dataclass(frozen=True)
class PgrCurve:
    """Points (share of strong calls, PGR), from (0, 0) to (1, 1), share increasing."""

    shares: tuple[float, ...]
    pgrs: tuple[float, ...]


def pgr_curve(scores: Sequence[float], weak: Sequence[float], strong: Sequence[float]) -> PgrCurve:
    """The full-sweep PGR curve of a router's `scores` (higher = send to strong first).

    `weak` / `strong` are the per-prompt quality of each model (0/1 or a judge score).
    Raises ValueError when the lengths differ, the set is empty, or both models have the
    same mean quality (PGR is undefined then).
    """
    n = len(scores)
    if n == 0 or len(weak) != n or len(strong) != n:
        raise ValueError("scores, weak and strong must be non-empty and of equal length")
    gap = (sum(strong) - sum(weak)) / n
    if gap == 0:
        raise ValueError("the two models have equal mean quality: PGR is undefined")
    order = sorted(range(n), key=lambda i: scores[i], reverse=True)
    shares = [0.0]
    pgrs = [0.0]
    taken = 0
    gain = 0.0
    i = 0
    while i < n:
        group_score = scores[order[i]]
        while i < n and scores[order[i]] == group_score:
            j = order[i]
            gain += strong[j] - weak[j]
            taken += 1
            i += 1
        shares.append(taken / n)
        pgrs.append(gain / n / gap)
    return PgrCurve(tuple(shares), tuple(pgrs))


def apgr(curve: PgrCurve) -> float:
    """Area under the PGR curve on [0, 1] by the trapezoidal rule (random routing: 0.5)."""
    c, p = curve.shares, curve.pgrs
    return sum((c[k + 1] - c[k]) * (p[k] + p[k + 1]) / 2 for k in range(len(c) - 1))


def cpt(curve: PgrCurve, target_pgr: float) -> float:
    """Smallest share of strong calls at which the interpolated curve reaches `target_pgr`.

    `target_pgr` is a fraction (0.5 for CPT(50%)). Every curve ends at PGR 1, so a target
    of at most 1 is always reached.
    """
    c, p = curve.shares, curve.pgrs
    if p[0] >= target_pgr:
        return c[0]
    for k in range(1, len(c)):
        if p[k] >= target_pgr:
            # The previous point is below target, so p[k] > p[k-1]: no division by zero.
            return c[k - 1] + (c[k] - c[k - 1]) * (target_pgr - p[k - 1]) / (p[k] - p[k - 1])
    raise ValueError(f"the curve never reaches PGR {target_pgr}")


def pgr_at(curve: PgrCurve, share: float) -> float:
    """PGR at a given share of strong calls, interpolated linearly between sweep points."""
    c, p = curve.shares, curve.pgrs
    if not 0.0 <= share <= 1.0:
        raise ValueError("share must lie in [0, 1]")
    for k in range(1, len(c)):
        if c[k] >= share:
            if c[k] == c[k - 1]:
                return p[k]
            return p[k - 1] + (p[k] - p[k - 1]) * (share - c[k - 1]) / (c[k] - c[k - 1])
    return p[-1]


def oracle_scores(weak: Sequence[float], strong: Sequence[float]) -> list[float]:
    """The upper-bound router: strong first where it gains most (strong - weak)."""
    return [s - w for w, s in zip(weak, strong, strict=True)]


def random_apgr(
    weak: Sequence[float], strong: Sequence[float], orderings: int = 200, seed: int = 0
) -> tuple[float, float]:
    """Mean and standard deviation of APGR over random orderings (expected value 0.5)."""
    rng = Random(seed)
    n = len(weak)
    values = []
    for _ in range(orderings):
        ranks = list(range(n))
        rng.shuffle(ranks)
        values.append(apgr(pgr_curve(ranks, weak, strong)))
    mean = sum(values) / orderings
    var = sum((v - mean) ** 2 for v in values) / max(orderings - 1, 1)
    return mean, var**0.5
