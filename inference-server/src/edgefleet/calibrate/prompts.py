"""The prompt source: a JSONL file, one `{"id", "prompt", "reference"?}` object a line.

Optional keys: `match` (how the reference is compared: numeric, exact or choice; default
numeric when the reference is a number, else exact) and `category` (a group for the
held-out split and the report). Other keys are refused, as the policy parser refuses
them: a misspelt `refrence` silently ignored would label every prompt as unchecked.
The file is checked whole before anything is asked, and every problem is reported at
once with its line number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgefleet.calibrate.grading import CHOICE_LETTERS, MATCHES, is_numeric_reference

KNOWN_KEYS = {"id", "prompt", "reference", "match", "category", "difficulty"}
# Problems listed before the rest are summarised by a count.
MAX_PROBLEMS_SHOWN = 10


class CalibrationError(Exception):
    """The calibration cannot go on; the message says why, and nothing was written.

    `reason` is one CamelCase word a RouterCalibration's Failed condition carries.
    """

    def __init__(self, message: str, reason: str = "CalibrationFailed") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class PromptRow:
    id: str
    prompt: str
    reference: str | None = None
    match: str | None = None
    category: str = ""


def _row(number: int, line: str, problems: list[str]) -> PromptRow | None:
    where = f"line {number}"
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        problems.append(f"{where}: not JSON ({exc.msg})")
        return None
    if not isinstance(item, dict):
        problems.append(f"{where}: must be a JSON object, got {type(item).__name__}")
        return None
    before = len(problems)
    unknown = sorted(set(item) - KNOWN_KEYS)
    if unknown:
        problems.append(f"{where}: unknown keys {unknown}; known: {sorted(KNOWN_KEYS)}")
    id_, prompt = item.get("id"), item.get("prompt")
    if not isinstance(id_, str) or not id_.strip():
        problems.append(f"{where}: id must be a non-empty string, got {id_!r}")
    if not isinstance(prompt, str) or not prompt.strip():
        problems.append(f"{where}: prompt must be a non-empty string, got {prompt!r}")
    reference = item.get("reference")
    if reference is not None and not isinstance(reference, str | int | float):
        problems.append(f"{where}: reference must be a string or a number, got {reference!r}")
    reference = None if reference is None else str(reference)
    match = item.get("match")
    if match is not None and match not in MATCHES:
        problems.append(f"{where}: match must be one of {', '.join(MATCHES)}, got {match!r}")
    elif reference is not None:
        match = match or ("numeric" if is_numeric_reference(reference) else "exact")
        if match == "numeric" and not is_numeric_reference(reference):
            problems.append(f"{where}: reference {reference!r} is not a number (match numeric)")
        if match == "choice" and reference.strip().upper() not in CHOICE_LETTERS:
            problems.append(f"{where}: reference {reference!r} is not an option letter A-H")
    if len(problems) > before:
        return None
    return PromptRow(id_, prompt, reference, match, str(item.get("category", "")))


def parse_prompts(text: str, source: str = "prompts") -> list[PromptRow]:
    """Every row of a JSONL text, or CalibrationError naming every problem."""
    problems: list[str] = []
    rows: list[PromptRow] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        row = _row(number, line, problems)
        if row is None:
            continue
        if row.id in seen:
            problems.append(f"line {number}: id {row.id!r} already used on line {seen[row.id]}")
            continue
        seen[row.id] = number
        rows.append(row)
    if not rows and not problems:
        problems.append("no prompts")
    if problems:
        shown = problems[:MAX_PROBLEMS_SHOWN]
        if len(problems) > len(shown):
            shown.append(f"... and {len(problems) - len(shown)} more")
        raise CalibrationError(
            f"invalid prompt file {source}: " + "; ".join(shown), reason="BadPromptFile"
        )
    return rows


def load_prompts(path: Path) -> list[PromptRow]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CalibrationError(
            f"cannot read the prompt file {path}: {exc.strerror}", reason="BadPromptFile"
        ) from exc
    except UnicodeDecodeError as exc:
        raise CalibrationError(
            f"the prompt file {path} is not UTF-8 text", reason="BadPromptFile"
        ) from exc
    return parse_prompts(text, str(path))


def require_references(rows: list[PromptRow]) -> None:
    """Reference grading needs a reference on every prompt; name the ones without."""
    missing = [row.id for row in rows if row.reference is None]
    if missing:
        shown = ", ".join(missing[:MAX_PROBLEMS_SHOWN])
        more = f" and {len(missing) - MAX_PROBLEMS_SHOWN} more" if len(missing) > 10 else ""
        raise CalibrationError(
            f"--grading reference needs a reference on every prompt; missing on {len(missing)}: "
            f"{shown}{more} (add them, or use --grading judge)",
            reason="MissingReference",
        )
