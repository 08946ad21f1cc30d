"""Redaction: detected values out of a prompt before it leaves, and back into the answer.

A policy with `privacy.onSensitive: redact` lets a prompt the detectors flag go to the
cloud with each detected value replaced by a placeholder, `[PERSON_1]`, `[EMAIL_1]`,
`[CREDIT_CARD_2]`, and puts the values back where the cloud's answer repeats a placeholder.

Placeholders are stable within a request: one value gets one placeholder in every message
(system prompt and earlier turns included), so the cloud can refer to it across turns. A
placeholder that already occurs in the prompt's own text is never handed out, so restoring
cannot turn the user's literal "[EMAIL_1]" into someone's address. Restoring needs the
placeholder exactly as it was sent: an answer that writes "[Person_1]", "[PERSON 1]" or
"PERSON_1" keeps that text, as guessing at variants could put a value where the cloud did not
mean one. Values are matched exactly too: "Anna Schmidt" and "anna schmidt" are two values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edgefleet.routing.privacy import SensitiveSpan

# What every placeholder looks like; privacy.py's secret detector knows the shape too.
PLACEHOLDER = re.compile(r"\[[A-Z][A-Z0-9_]*_[0-9]+\]")


@dataclass(frozen=True)
class Redaction:
    """The texts as they may leave, and what each placeholder in them stands for."""

    texts: tuple[str, ...]
    # placeholder -> the value it replaced; never log these.
    values: Mapping[str, str]


def redact(texts: Sequence[str], spans: Sequence[Sequence[SensitiveSpan]]) -> Redaction:
    """`texts` with every span replaced by a placeholder; `spans[i]` are the spans of `texts[i]`.

    Spans that overlap (two detectors on one stretch of text, a name inside an address)
    become one placeholder over their union, named after the span that starts first
    (the longer one when two start together).
    """
    taken = {found for text in texts for found in PLACEHOLDER.findall(text)}
    placeholder_of: dict[str, str] = {}
    counts: dict[str, int] = {}
    redacted = []
    for text, found in zip(texts, spans, strict=True):
        pieces, position = [], 0
        for start, end, kind in _merged(found):
            value = text[start:end]
            if value not in placeholder_of:
                placeholder_of[value] = _new_placeholder(kind, counts, taken)
            pieces += [text[position:start], placeholder_of[value]]
            position = end
        pieces.append(text[position:])
        redacted.append("".join(pieces))
    return Redaction(tuple(redacted), {p: value for value, p in placeholder_of.items()})


def restore(text: str, values: Mapping[str, str]) -> str:
    """`text` with each placeholder of `values` replaced by its value, in one pass."""
    restorer = Restorer(values)
    return restorer.feed(text) + restorer.flush()


class Restorer:
    """`restore` for text that arrives in pieces, a placeholder possibly split between them.

    `feed` returns what can be passed on now; it holds back a chunk's tail that could still
    become a placeholder ("[EMA"), at most one placeholder's length. `flush` at the end
    returns what is held, as it came when it never became a placeholder.
    """

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)
        self._pattern = (
            re.compile("|".join(re.escape(p) for p in self._values)) if self._values else None
        )
        # Every placeholder holds exactly one "[" (its first character) and ends with "]",
        # so a held tail starts at a "[" and no placeholder is a prefix of another.
        self._prefixes = frozenset(p[:n] for p in self._values for n in range(1, len(p)))
        self._longest = max(map(len, self._values), default=0)
        self._held = ""

    def feed(self, chunk: str) -> str:
        text = self._held + chunk
        cut = self._incomplete_tail(text)
        self._held = text[cut:]
        return self._restored(text[:cut])

    def flush(self) -> str:
        text, self._held = self._held, ""
        return self._restored(text)

    def _incomplete_tail(self, text: str) -> int:
        """Where the tail that may still become a placeholder starts (len(text): none)."""
        for start in range(max(0, len(text) - self._longest + 1), len(text)):
            if text[start] == "[" and text[start:] in self._prefixes:
                return start
        return len(text)

    def _restored(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: self._values[m.group()], text)


def _merged(spans: Sequence[SensitiveSpan]) -> list[tuple[int, int, str]]:
    """(start, end, kind) of the spans with overlapping ones joined, in text order."""
    merged: list[tuple[int, int, str]] = []
    for span in sorted(spans, key=lambda s: (s.start, -s.end)):
        if span.start >= span.end:
            continue
        if merged and span.start < merged[-1][1]:
            start, end, kind = merged[-1]
            merged[-1] = (start, max(end, span.end), kind)
        else:
            merged.append((span.start, span.end, span.kind))
    return merged


def _new_placeholder(kind: str, counts: dict[str, int], taken: set[str]) -> str:
    # Detector names start with a letter; "employee-id" becomes EMPLOYEE_ID.
    label = re.sub(r"[^A-Z0-9]+", "_", kind.upper())
    while True:
        counts[label] = counts.get(label, 0) + 1
        placeholder = f"[{label}_{counts[label]}]"
        if placeholder not in taken:
            return placeholder
