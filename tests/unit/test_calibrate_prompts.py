"""A prompt file is checked whole before anything is asked; every problem is named."""

from __future__ import annotations

import json

import pytest

from edgefleet.calibrate.prompts import CalibrationError, parse_prompts, require_references


def lines(*items: object) -> str:
    return "\n".join(item if isinstance(item, str) else json.dumps(item) for item in items)


def test_a_good_file_gives_rows_with_the_match_inferred_from_the_reference() -> None:
    rows = parse_prompts(
        lines(
            {"id": "a", "prompt": "What is 2 plus 2?", "reference": 4},
            "",
            {"id": "b", "prompt": "Capital of Peru?", "reference": "Lima", "category": "geo"},
            {"id": "c", "prompt": "Pick one\nA. x\nB. y", "reference": "B", "match": "choice"},
            {"id": "d", "prompt": "Say something nice."},
        )
    )
    assert [(r.id, r.reference, r.match, r.category) for r in rows] == [
        ("a", "4", "numeric", ""),
        ("b", "Lima", "exact", "geo"),
        ("c", "B", "choice", ""),
        ("d", None, None, ""),
    ]


def test_every_problem_is_reported_with_its_line() -> None:
    text = lines(
        {"id": "a", "prompt": "ok"},
        "{not json",
        {"id": "", "prompt": "no id"},
        {"id": "a", "prompt": "same id"},
        {"id": "e", "prompt": "x", "refrence": "typo"},
        {"id": "f", "prompt": "x", "reference": "ten", "match": "numeric"},
        ["a list"],
    )
    with pytest.raises(CalibrationError) as caught:
        parse_prompts(text, "p.jsonl")
    message = str(caught.value)
    assert message.startswith("invalid prompt file p.jsonl: ")
    for expected in [
        "line 2: not JSON",
        "line 3: id must be a non-empty string",
        "line 4: id 'a' already used on line 1",
        "line 5: unknown keys ['refrence']",
        "line 6: reference 'ten' is not a number",
        "line 7: must be a JSON object, got list",
    ]:
        assert expected in message


def test_an_empty_file_is_refused() -> None:
    with pytest.raises(CalibrationError, match="no prompts"):
        parse_prompts("\n\n")


def test_reference_grading_names_the_prompts_without_a_reference() -> None:
    rows = parse_prompts(
        lines({"id": "a", "prompt": "x", "reference": 1}, {"id": "b", "prompt": "y"})
    )
    with pytest.raises(CalibrationError, match=r"missing on 1: b \(add them, or use --grading"):
        require_references(rows)
