"""Reference grading reads what a small model writes; the judge's rating is parsed strictly."""

from __future__ import annotations

import pytest

from edgefleet.calibrate.grading import (
    chosen_letter,
    grade,
    judge_prompt,
    last_number,
    parse_rating,
    rating_quality,
)


@pytest.mark.parametrize(
    ("answer", "reference", "right"),
    [
        ("1250", "1250", True),
        ("The answer is 1,250.", "1250", True),
        ("**-3546**", "-3546", True),
        ("There are 178.5 days.", "178.5", True),
        ("7, not 5", "7", False),  # the last number counts
        ("83874 + 41646 = 124520", "125520", False),
        ("I cannot tell.", "15", False),
        ("12345", "1234", False),
    ],
)
def test_numeric_answers_are_read_from_the_last_number(
    answer: str, reference: str, right: bool
) -> None:
    assert grade(answer, reference, "numeric") is right


def test_last_number_reads_separators_and_signs() -> None:
    assert last_number("from 1,000,000 down to -42.5") == -42.5
    assert last_number("version v2 of x3") is None


@pytest.mark.parametrize(
    ("answer", "reference", "right"),
    [
        ("The capital of Peru is Lima.", "Lima", True),
        ("lima", "Lima", True),
        ("Brasília", "Brasilia", True),
        ("It is Port Vila, on Efate.", "Port Vila", True),
        ("Parisian cafés", "Paris", False),
        ("Port of Vila", "Port Vila", False),
        ("2024-04-04", "2024-04-04", True),
        ("2024-04-05", "2024-04-04", False),
        ("OLLEH", "olleh", True),
    ],
)
def test_exact_answers_match_the_reference_as_whole_words(
    answer: str, reference: str, right: bool
) -> None:
    assert grade(answer, reference, "exact") is right


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        ("B", "B"),
        ("A", "A"),
        ("A. 5000", "A"),
        ("The answer is C.", "C"),
        ("Answer: (D)", "D"),
        ("**B**", "B"),
        ("I think (C) is right", "C"),
        ("A cat sat on the mat.", None),
        ("None of them.", None),
    ],
)
def test_the_chosen_option_letter_is_found_but_not_the_article(
    answer: str, letter: str | None
) -> None:
    assert chosen_letter(answer) == letter


def test_choice_grading_compares_letters() -> None:
    assert grade("The answer is B", "b", "choice")
    assert not grade("A cat", "A", "choice")


def test_an_unknown_match_is_refused() -> None:
    with pytest.raises(ValueError, match="match must be one of"):
        grade("x", "x", "fuzzy")


@pytest.mark.parametrize(
    ("reply", "rating"),
    [
        ("Lima.\nRating: [[5]]", 5),
        ("My answer: 60\nRating: 2", 2),
        ("first [[1]] then on reflection [[4]]", 4),
        ("Rating: 42", None),  # not a 1-5 rating
        ("The capital of Peru is Quito.", None),  # what SmolLM2 writes as a judge
    ],
)
def test_a_judges_rating_is_parsed_or_nothing(reply: str, rating: int | None) -> None:
    assert parse_rating(reply) == rating


def test_ratings_map_onto_zero_to_one_and_the_prompt_holds_both_texts() -> None:
    assert [rating_quality(r) for r in (1, 3, 5)] == [0.0, 0.5, 1.0]
    text = judge_prompt("What is 2 plus 2?", "")
    assert "What is 2 plus 2?" in text and "(empty)" in text and "[[N]]" in text
