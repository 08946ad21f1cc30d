"""The shipped task set: generated, reproducible, and checkable by its own grader."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from edgefleet.calibrate.grading import grade
from edgefleet.calibrate.prompts import parse_prompts
from edgefleet.calibrate.tasks import FAMILIES, LEVELS, generate, to_jsonl

SHIPPED = Path(__file__).resolve().parents[2] / "examples" / "calibration" / "tasks.jsonl"


def test_the_shipped_task_set_is_the_generators_output_byte_for_byte() -> None:
    assert SHIPPED.read_text(encoding="utf-8") == to_jsonl(generate())


def test_same_seed_same_tasks_other_seed_other_tasks() -> None:
    assert generate(70, seed=1) == generate(70, seed=1)
    assert [t.prompt for t in generate(70, seed=1)] != [t.prompt for t in generate(70, seed=2)]


def test_every_family_has_every_difficulty_in_equal_numbers() -> None:
    tasks = generate()
    cells = Counter((t.category, t.difficulty) for t in tasks)
    assert set(cells) == {(family, level) for family in FAMILIES for level in LEVELS}
    assert len(set(cells.values())) == 1
    assert len(tasks) == 2100


def test_every_gold_answer_passes_its_own_check_and_the_file_parses() -> None:
    tasks = generate()
    rows = parse_prompts(to_jsonl(tasks))
    assert [r.id for r in rows] == [t.id for t in tasks]
    for task, row in zip(tasks, rows, strict=True):
        assert row.match == task.match, task.id
        assert grade(task.reference, task.reference, task.match), task.id


def test_multiple_choice_offers_the_right_answer_once_under_its_letter() -> None:
    for task in generate():
        if task.category != "multiple_choice":
            continue
        options = dict(
            line.split(". ", 1) for line in task.prompt.splitlines() if line[:2] in
            {"A.", "B.", "C.", "D."}
        )  # fmt: skip
        assert len(options) == 4 and len(set(options.values())) == 4, task.id
        assert task.reference in options, task.id


def test_arithmetic_operands_have_as_many_digits_as_the_difficulty() -> None:
    for task in generate():
        if task.category == "arithmetic":
            operands = re.findall(r"\d+", task.prompt)
            assert max(len(n) for n in operands) == task.difficulty, task.id
