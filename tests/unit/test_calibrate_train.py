"""Training on the user's labels: SmolLM2's own failures, held out, ranked better than the
shipped classifier (trained on Mixtral vs GPT-4 labels) ranks them.

The labels are those `edgefleet calibrate` recorded for the shipped task set
(examples/calibration/tasks.jsonl) on SmolLM2-135M, graded by reference with the cloud
counted correct (docs/routing-quality.md says how they were made).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from edgefleet.calibrate.prompts import CalibrationError
from edgefleet.calibrate.train import Example, held_out_mask, train
from edgefleet.routing.complexity import ComplexityScorer

ROOT = Path(__file__).resolve().parents[2]
TASKS = ROOT / "examples" / "calibration" / "tasks.jsonl"
LABELS = ROOT / "tests" / "data" / "calibration" / "smollm2-labels.jsonl"


def smollm2_examples() -> list[Example]:
    tasks = {t["id"]: t for t in map(json.loads, TASKS.read_text().splitlines())}
    examples = []
    for label in map(json.loads, LABELS.read_text().splitlines()):
        task = tasks[label["id"]]
        examples.append(
            Example(task["id"], task["prompt"], task["category"], label["weak"], label["strong"])
        )
    return examples


@pytest.fixture(scope="module")
def trained():
    return train(smollm2_examples(), "calibrated-test", {})


def test_the_calibrated_classifier_routes_smollm2s_failures_better_on_held_out_prompts(
    trained,
) -> None:
    assert trained.held_out_count >= 600
    assert trained.calibrated.apgr >= trained.shipped.apgr + 0.05
    assert trained.calibrated.cpt50 < trained.shipped.cpt50
    assert trained.calibrated.cpt80 < trained.shipped.cpt80


def test_the_artefact_is_the_routers_format_and_its_thresholds_follow_the_share(trained) -> None:
    scorer = ComplexityScorer(trained.artefact)
    assert scorer.version == "calibrated-test"
    assert scorer.threshold_for_share(0.2) >= scorer.threshold_for_share(0.5)
    assert 0.0 <= scorer.score("What is 83874 plus 41646? Answer with the number only.") <= 1.0


def test_the_held_out_split_is_fixed_and_about_thirty_percent_of_each_category() -> None:
    examples = smollm2_examples()
    mask = held_out_mask(examples)
    assert (mask == held_out_mask(list(examples))).all()
    held = Counter(e.category for e, m in zip(examples, mask, strict=True) if m)
    total = Counter(e.category for e in examples)
    for category, count in total.items():
        assert abs(held[category] / count - 0.3) < 0.02, category


def test_labels_that_are_all_alike_teach_nothing_and_say_so() -> None:
    same = [Example(f"p{i}", f"What is {i} plus 1?", "a", 1.0, 1.0) for i in range(40)]
    with pytest.raises(CalibrationError, match="same label"):
        train(same, "v", {})
    with pytest.raises(CalibrationError, match="too few labels to train on: 5, at least 20"):
        train(same[:5], "v", {})


def test_small_categories_do_not_all_land_in_the_held_out_split() -> None:
    examples = [Example(f"{c}-{i}", "x", c, 0.0, 1.0) for c in "abcdefg" for i in range(4)]
    assert held_out_mask(examples).sum() == 9  # 30 % of 28, not 3 of every 4
