"""The routing-quality metrics against hand-computed cases and the data README's references."""

from __future__ import annotations

import json

import pytest

from edgefleet.routing import quality
from tests.support.routing_data import dev_data_path, required_dev_data

DEV = dev_data_path()


def test_curve_steps_through_prompts_in_score_order():
    curve = quality.pgr_curve([3, 2, 1], weak=[0, 0, 1], strong=[1, 1, 0])
    # Gap 1/3; gains +1, +1, -1 in score order -> PGR 1, 2, 1.
    assert curve.shares == pytest.approx((0, 1 / 3, 2 / 3, 1))
    assert curve.pgrs == pytest.approx((0, 1, 2, 1))
    assert quality.apgr(curve) == pytest.approx(7 / 6)
    assert quality.cpt(curve, 0.5) == pytest.approx(1 / 6)
    assert quality.cpt(curve, 1.5) == pytest.approx(1 / 2)
    assert quality.pgr_at(curve, 0.5) == pytest.approx(1.5)


def test_tied_scores_move_together_like_random_tie_breaking():
    curve = quality.pgr_curve([1, 1, 0, 0], weak=[0, 0, 0, 0], strong=[1, 0, 1, 0])
    assert curve.shares == pytest.approx((0, 0.5, 1))
    assert curve.pgrs == pytest.approx((0, 0.5, 1))
    assert quality.apgr(curve) == pytest.approx(0.5)
    constant = quality.pgr_curve([7] * 5, weak=[0, 1, 0, 0, 1], strong=[1, 1, 1, 0, 0])
    assert quality.apgr(constant) == pytest.approx(0.5)
    assert quality.cpt(constant, 0.5) == pytest.approx(0.5)


def test_oracle_cpt_equals_target_times_quality_gap_for_binary_labels():
    weak = [1, 0, 0, 1, 0, 1, 1, 0]
    strong = [1, 1, 1, 0, 0, 1, 1, 1]
    curve = quality.pgr_curve(quality.oracle_scores(weak, strong), weak, strong)
    gap = (sum(strong) - sum(weak)) / len(weak)
    assert quality.cpt(curve, 0.8) == pytest.approx(0.8 * gap)


def test_pgr_is_undefined_when_both_models_are_equally_good():
    with pytest.raises(ValueError):
        quality.pgr_curve([1, 2], weak=[1, 0], strong=[0, 1])
    with pytest.raises(ValueError):
        quality.pgr_curve([1, 2], weak=[1, 0], strong=[0])


def _dev_by_benchmark() -> dict[str, list[dict]]:
    required_dev_data()
    groups: dict[str, list[dict]] = {}
    with DEV.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            groups.setdefault(row["benchmark"], []).append(row)
    return groups


# From the data README's "Reference points on DEV" table.
REFERENCE = {
    # benchmark: oracle (APGR, CPT50, CPT80), length (APGR, CPT50, CPT80)
    "mmlu": ((1.294, 0.0631, 0.1010), (0.568, 0.3561, 0.7527)),
    "gsm8k": ((1.049, 0.1161, 0.1857), (0.582, 0.3795, 0.7204)),
    "mt_bench": ((0.893, 0.1088, 0.2190), (0.527, 0.2857, 0.9238)),
}


@pytest.mark.parametrize("benchmark", sorted(REFERENCE))
def test_reproduces_readme_oracle_and_prompt_length_references(benchmark):
    rows = _dev_by_benchmark()[benchmark]
    weak = [r["weak_correct"] for r in rows]
    strong = [r["strong_correct"] for r in rows]
    routers = {
        "oracle": quality.oracle_scores(weak, strong),
        "length": [len(r["prompt"]) for r in rows],
    }
    for (name, scores), (ref_apgr, ref_cpt50, ref_cpt80) in zip(
        routers.items(), REFERENCE[benchmark], strict=True
    ):
        curve = quality.pgr_curve(scores, weak, strong)
        assert round(quality.apgr(curve), 3) == ref_apgr, name
        assert round(quality.cpt(curve, 0.5), 4) == ref_cpt50, name
        assert round(quality.cpt(curve, 0.8), 4) == ref_cpt80, name


def test_random_routing_averages_half_on_mmlu():
    rows = _dev_by_benchmark()["mmlu"]
    mean, sd = quality.random_apgr(
        [r["weak_correct"] for r in rows], [r["strong_correct"] for r in rows], orderings=40
    )
    assert abs(mean - 0.5) < 0.02
    assert 0.005 < sd < 0.04
