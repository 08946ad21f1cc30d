"""Grading an answer: against a reference (pure), or by the cloud model as a judge.

Reference grading reads what a small model actually writes ("The answer is 1,250.",
"**B**", "The capital of Peru is Lima."), so each match says what it extracts:

- numeric: the last number in the answer (thousands separators allowed), equal to the
  reference within 1e-6 relative; "The answer is 7, not 5" therefore counts as 5.
- exact: the reference as whole words anywhere in the answer, ignoring case, accents
  and punctuation around it; "Paris, the capital" matches "Paris", "Parisian" does not.
- choice: the option letter the answer picks: "Answer: B", "(B)", "B." or a lone "B"
  (never the article "A" in prose), the first one found.

Judge grading follows RouteLLM's LLM-judge labels: the cloud model answers the question
itself and rates the local answer against its own, 1 to 5, which maps to a quality in
[0, 1] for the local model (the cloud's own answer is the reference, so it counts as 1).
"""

from __future__ import annotations

import math
import re
import unicodedata

MATCHES = ("numeric", "exact", "choice")
CHOICE_LETTERS = "ABCDEFGH"

_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w])|(?<![\w.])-?\.\d+")
_NUMERIC_REFERENCE = re.compile(r"-?\d+(?:\.\d+)?")
_CHOICE_PATTERNS = (
    re.compile(r"(?:answer|option|choice)\s*(?:is|:)?\s*[:\-]?\s*\(?\*{0,2}([A-H])\b"),
    re.compile(r"\(([A-H])\)"),
    re.compile(r"(?:^|\n)\s*\*{0,2}([A-H])\s*(?:[.):]|\*\*|$)"),
    re.compile(r"(?<![\w'])([B-H])(?![\w'])"),
)


def is_numeric_reference(reference: str) -> bool:
    return _NUMERIC_REFERENCE.fullmatch(reference.strip().replace(",", "")) is not None


def last_number(answer: str) -> float | None:
    """The last number written in `answer`, or None when there is none."""
    found = _NUMBER.findall(answer)
    if not found:
        return None
    return float(found[-1].replace(",", ""))


def _words(text: str) -> list[str]:
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return re.findall(r"\w+", plain)


def contains_phrase(answer: str, reference: str) -> bool:
    """`reference` appears in `answer` as a run of whole words (case and accents ignored)."""
    want, have = _words(reference), _words(answer)
    if not want:
        return False
    width = len(want)
    return any(have[i : i + width] == want for i in range(len(have) - width + 1))


def chosen_letter(answer: str) -> str | None:
    """The option letter an answer picks, or None when it picks none."""
    for pattern in _CHOICE_PATTERNS:
        found = pattern.search(answer)
        if found:
            return found.group(1)
    return None


def grade(answer: str, reference: str, match: str) -> bool:
    """Is `answer` right? `match` is one of MATCHES."""
    if match == "numeric":
        got = last_number(answer)
        want = float(reference.strip().replace(",", ""))
        return got is not None and math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9)
    if match == "exact":
        return contains_phrase(answer, reference)
    if match == "choice":
        return chosen_letter(answer) == reference.strip().upper()
    raise ValueError(f"match must be one of {', '.join(MATCHES)}, got {match!r}")


JUDGE_SYSTEM = (
    "You are a strict grader. You answer the question yourself, then rate another "
    "assistant's answer against yours."
)
_JUDGE_TEMPLATE = """Question:
{prompt}

The assistant's answer:
{answer}

First write your own short answer to the question. Then, on the last line, rate the
assistant's answer for correctness against yours, from 1 (wrong) to 5 (fully correct),
exactly as: Rating: [[N]]"""
_RATING = (
    re.compile(r"\[\[\s*([1-5])\s*\]\]"),
    re.compile(r"rating\s*[:=]?\s*\**\s*([1-5])\b", re.IGNORECASE),
)


def judge_prompt(prompt: str, local_answer: str) -> str:
    return _JUDGE_TEMPLATE.format(prompt=prompt.strip(), answer=local_answer.strip() or "(empty)")


def parse_rating(judge_answer: str) -> int | None:
    """The judge's 1-5 rating, or None when it gave none (the prompt then has no label)."""
    for pattern in _RATING:
        found = pattern.findall(judge_answer)
        if found:
            return int(found[-1])
    return None


def rating_quality(rating: int) -> float:
    """A 1-5 rating as the local model's quality in [0, 1]."""
    return (rating - 1) / 4
