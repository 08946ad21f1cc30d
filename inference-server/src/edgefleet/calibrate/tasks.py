"""A checkable task set: generated prompts with gold answers, at graded difficulty.

    python -m edgefleet.calibrate.tasks --out examples/calibration/tasks.jsonl

Seven families, each at difficulty 1 (easy) to 5 (hard), the same number of prompts per
family and level: arithmetic with growing digit counts, multi-step word problems, unit
conversion, date arithmetic, capitals (from household names to obscure ones), string
manipulation on longer and longer words, and multiple choice. Every prompt says how to
answer, so that `edgefleet.calibrate.grading` can check it: a number, a word or phrase, a
date, or a letter. The output depends only on the seed and the count: the shipped file is
this module's output, and a test holds the two to the same bytes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from random import Random

SEED = 20261206
DEFAULT_COUNT = 2100
LEVELS = (1, 2, 3, 4, 5)
NUMBER_ONLY = "Answer with the number only."


@dataclass(frozen=True)
class Task:
    """One line of a prompt file: what to ask and how to check the answer."""

    id: str
    prompt: str
    reference: str
    # How the reference is compared: "numeric", "exact" (the phrase, as words) or "choice".
    match: str
    category: str
    difficulty: int


def _arithmetic(rng: Random, level: int) -> tuple[str, str, str]:
    low, high = 10 ** (level - 1) if level > 1 else 1, 10**level - 1
    a, b = rng.randint(low, high), rng.randint(low, high)
    op = rng.choice("+-*" if level < 4 else "+-")
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    sign = {"+": "plus", "-": "minus", "*": "times"}[op]
    return f"What is {a} {sign} {b}? {NUMBER_ONLY}", str(value), "numeric"


_NAMES = ("Ana", "Ben", "Chen", "Dara", "Emil", "Fatima", "Gus", "Hana", "Ivo", "Jon", "Kira")
_ITEMS = ("apples", "books", "stickers", "marbles", "pencils", "coins", "cards", "shells")


def _word_problem(rng: Random, level: int) -> tuple[str, str, str]:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    count = rng.randint(3, 9 * level)
    sentences = [f"{name} has {count} {item}."]
    for _ in range(level):
        kind = rng.choice(("buy", "give", "double") if count < 200 else ("buy", "give"))
        if kind == "buy":
            n = rng.randint(2, 5 * level + 5)
            count += n
            sentences.append(f"Then {name} buys {n} more.")
        elif kind == "give" and count > 2:
            n = rng.randint(1, count - 1)
            count -= n
            sentences.append(f"Then {name} gives {n} away.")
        else:
            count *= 2
            sentences.append(f"Then the number of {item} doubles.")
    question = f"How many {item} does {name} have now? {NUMBER_ONLY}"
    return " ".join([*sentences, question]), str(count), "numeric"


# (bigger unit, smaller unit, how many of the smaller make one bigger); later ones are rarer.
_UNITS = (
    ("metres", "centimetres", 100),
    ("kilograms", "grams", 1000),
    ("hours", "minutes", 60),
    ("days", "hours", 24),
    ("weeks", "days", 7),
    ("kilometres", "metres", 1000),
    ("minutes", "seconds", 60),
    ("litres", "millilitres", 1000),
)


def _units(rng: Random, level: int) -> tuple[str, str, str]:
    big, small, factor = rng.choice(_UNITS[: 3 + level])
    if level <= 2:
        n: float = rng.randint(2, 9 * level)
        prompt = f"How many {small} are in {n} {big}?"
        value = n * factor
    elif level == 3:
        n = rng.randint(2, 40) + 0.5
        prompt = f"How many {small} are in {n} {big}?"
        value = n * factor
    elif level == 4:
        n, extra = rng.randint(2, 50), rng.randint(1, factor - 1)
        prompt = f"How many {small} are in {n} {big} and {extra} {small}?"
        value = n * factor + extra
    else:
        hours, minutes, seconds = rng.randint(2, 30), rng.randint(1, 59), rng.randint(1, 59)
        prompt = f"How many seconds are in {hours} hours, {minutes} minutes and {seconds} seconds?"
        value = (hours * 60 + minutes) * 60 + seconds
    return f"{prompt} {NUMBER_ONLY}", _number(value), "numeric"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _dates(rng: Random, level: int) -> tuple[str, str, str]:
    start = datetime.date(2020, 1, 1) + datetime.timedelta(days=rng.randint(0, 2500))
    if level == 5:
        return (
            f"What day of the week was {start.isoformat()}? Answer with the day's name only.",
            _WEEKDAYS[start.weekday()],
            "exact",
        )
    days = rng.randint(1, (3, 20, 60, 400)[level - 1])
    later = start + datetime.timedelta(days=days)
    if level == 1:
        return (
            f"What is the day after {start.isoformat()}? Answer as YYYY-MM-DD.",
            (start + datetime.timedelta(days=1)).isoformat(),
            "exact",
        )
    return (
        f"What date is {days} days after {start.isoformat()}? Answer as YYYY-MM-DD.",
        later.isoformat(),
        "exact",
    )


# Capitals by how well known they are: level 1 household names, level 5 rarely asked.
_CAPITALS: tuple[tuple[tuple[str, str], ...], ...] = (
    (("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Germany", "Berlin"),
     ("Spain", "Madrid"), ("England", "London"), ("Russia", "Moscow"), ("Egypt", "Cairo")),
    (("Canada", "Ottawa"), ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Norway", "Oslo"),
     ("Austria", "Vienna"), ("Ireland", "Dublin"), ("Sweden", "Stockholm"),
     ("Poland", "Warsaw")),
    (("Australia", "Canberra"), ("Brazil", "Brasilia"), ("Turkey", "Ankara"),
     ("Kenya", "Nairobi"), ("Argentina", "Buenos Aires"), ("Finland", "Helsinki"),
     ("Hungary", "Budapest"), ("Peru", "Lima")),
    (("Mongolia", "Ulaanbaatar"), ("Nigeria", "Abuja"), ("Morocco", "Rabat"),
     ("New Zealand", "Wellington"), ("Pakistan", "Islamabad"), ("Vietnam", "Hanoi"),
     ("Bolivia", "Sucre"), ("Slovenia", "Ljubljana")),
    (("Burkina Faso", "Ouagadougou"), ("Kyrgyzstan", "Bishkek"), ("Bhutan", "Thimphu"),
     ("Eritrea", "Asmara"), ("Suriname", "Paramaribo"), ("Vanuatu", "Port Vila"),
     ("Tajikistan", "Dushanbe"), ("Malawi", "Lilongwe")),
)  # fmt: skip


def _capitals(rng: Random, level: int) -> tuple[str, str, str]:
    country, capital = rng.choice(_CAPITALS[level - 1])
    return (
        f"What is the capital of {country}? Answer with the city's name only.",
        capital,
        "exact",
    )


_WORDS = (
    "cat", "sun", "tree", "blue", "house", "river", "garden", "planet", "journey",
    "elephant", "mountain", "computer", "umbrella", "chocolate", "adventure", "dictionary",
    "kaleidoscope", "extraordinary", "photosynthesis", "misunderstanding",
)  # fmt: skip


def _strings(rng: Random, level: int) -> tuple[str, str, str]:
    word = rng.choice(_WORDS[(level - 1) * 4 : (level - 1) * 4 + 4])
    kind = rng.choice(("reverse", "count", "upper") if level > 1 else ("upper", "count"))
    if kind == "reverse":
        return (
            f'Write the word "{word}" backwards. Answer with that word only.',
            word[::-1],
            "exact",
        )
    if kind == "upper":
        return (
            f'Write the word "{word}" in capital letters. Answer with that word only.',
            word.upper(),
            "exact",
        )
    letter = rng.choice(sorted(set(word)))
    return (
        f'How many times does the letter "{letter}" appear in the word "{word}"? {NUMBER_ONLY}',
        str(word.count(letter)),
        "numeric",
    )


def _choice(rng: Random, level: int) -> tuple[str, str, str]:
    """A question from another family, as four options; the reference is the right letter."""
    family = rng.choice((_arithmetic, _capitals, _units))
    question, answer, _ = family(rng, level)
    question = question.rsplit("?", 1)[0] + "?"
    wrong: set[str] = set()
    while len(wrong) < 3:
        if family is _capitals:
            _, city = rng.choice(rng.choice(_CAPITALS))
            candidate = city
        else:
            candidate = _number(float(answer) + rng.choice((-1, 1)) * rng.randint(1, 10 * level))
        if candidate != answer:
            wrong.add(candidate)
    options = [*sorted(wrong), answer]
    rng.shuffle(options)
    letters = "ABCD"
    lines = "\n".join(f"{letters[i]}. {option}" for i, option in enumerate(options))
    prompt = f"{question}\n{lines}\nAnswer with the letter of the correct option only."
    return prompt, letters[options.index(answer)], "choice"


FAMILIES: dict[str, Callable[[Random, int], tuple[str, str, str]]] = {
    "arithmetic": _arithmetic,
    "word_problem": _word_problem,
    "units": _units,
    "dates": _dates,
    "capitals": _capitals,
    "strings": _strings,
    "multiple_choice": _choice,
}


def generate(count: int = DEFAULT_COUNT, seed: int = SEED) -> list[Task]:
    """`count` tasks (rounded down to a multiple of families x levels), same seed same tasks."""
    per_cell = count // (len(FAMILIES) * len(LEVELS))
    if per_cell < 1:
        raise ValueError(f"count must be at least {len(FAMILIES) * len(LEVELS)}, got {count}")
    tasks = []
    for category, family in FAMILIES.items():
        # One generator per family, so adding a family never changes another's prompts.
        rng = Random(f"{seed}:{category}")
        for level in LEVELS:
            for index in range(per_cell):
                prompt, reference, match = family(rng, level)
                tasks.append(
                    Task(f"{category}-{level}-{index:03d}", prompt, reference, match,
                         category, level)
                )  # fmt: skip
    return tasks


def to_jsonl(tasks: list[Task]) -> str:
    return "".join(json.dumps(asdict(task), ensure_ascii=False) + "\n" for task in tasks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="the JSONL file to write; default stdout")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    text = to_jsonl(generate(args.count, args.seed))
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
