"""Redaction: values out before a prompt leaves, back in as the answer arrives, in any pieces."""

from __future__ import annotations

import itertools

from edgefleet.routing.privacy import CustomPattern, PrivacyScanner, SensitiveSpan
from edgefleet.routing.redaction import PLACEHOLDER, Redaction, Restorer, redact, restore
from tests.bench.bench_entities import load as load_entities
from tests.support.pii_corpus import pii_prompts

SCANNER = PrivacyScanner()


def redact_all(texts: list[str], scanner: PrivacyScanner = SCANNER) -> Redaction:
    return redact(texts, [scanner.spans(text) for text in texts])


def span(text: str, value: str, kind: str) -> SensitiveSpan:
    start = text.index(value)
    return SensitiveSpan(start, start + len(value), kind, value)


def test_one_value_gets_one_placeholder_in_every_message() -> None:
    texts = [
        "You help Anna Schmidt (anna.schmidt@example.com) with her letters.",
        "Write to anna.schmidt@example.com and to bob.jones@example.org.",
        "Sign it from Anna Schmidt.",
    ]
    redaction = redact_all(texts)
    assert redaction.texts == (
        "You help [PERSON_1] ([EMAIL_1]) with her letters.",
        "Write to [EMAIL_1] and to [EMAIL_2].",
        "Sign it from [PERSON_1].",
    )
    assert redaction.values == {
        "[PERSON_1]": "Anna Schmidt",
        "[EMAIL_1]": "anna.schmidt@example.com",
        "[EMAIL_2]": "bob.jones@example.org",
    }


def test_overlapping_spans_become_one_placeholder_over_their_union() -> None:
    text = "Ship to Anna Schmidt, 42 Elm Street, Springfield today."
    spans = [
        span(text, "Anna Schmidt, 42 Elm Street", "address"),
        span(text, "Anna Schmidt", "person"),
        span(text, "42 Elm Street, Springfield", "address"),
    ]
    redaction = redact([text], [spans])
    assert redaction.texts == ("Ship to [ADDRESS_1] today.",)
    assert redaction.values == {"[ADDRESS_1]": "Anna Schmidt, 42 Elm Street, Springfield"}


def test_a_placeholder_already_in_the_prompt_is_never_handed_out() -> None:
    texts = ["Fill in [EMAIL_1] in this template.", "My address is jo@example.com."]
    redaction = redact_all(texts)
    assert redaction.texts[1] == "My address is [EMAIL_2]."
    assert restore("Sent [EMAIL_1] to [EMAIL_2].", redaction.values) == (
        "Sent [EMAIL_1] to jo@example.com."
    )


def test_custom_detectors_are_named_in_their_placeholders() -> None:
    scanner = PrivacyScanner(["email"], [CustomPattern("employee-id", r"EMP-\d{6}")])
    redaction = redact_all(["Badge EMP-123456 lost."], scanner)
    assert redaction.texts == ("Badge [EMPLOYEE_ID_1] lost.",)
    assert PLACEHOLDER.fullmatch("[EMPLOYEE_ID_1]")


def test_restoring_the_redacted_prompt_gives_the_prompt_back() -> None:
    texts = [p.text for p in pii_prompts()[:60]]
    redaction = redact_all(texts)
    assert [restore(text, redaction.values) for text in redaction.texts] == texts


def test_redacted_prompts_pass_the_scan_the_egress_runs() -> None:
    """Every flagged prompt of both corpora, redacted, holds nothing a detector finds."""
    texts = [p.text for p in pii_prompts()] + [row["text"] for row in load_entities()]
    flagged = [text for text in texts if SCANNER.spans(text)]
    assert len(flagged) > 300
    still_found = [
        (text, SCANNER.scan(redacted))
        for text in flagged
        for redacted in redact_all([text]).texts
        if SCANNER.scan(redacted)
    ]
    assert still_found == []


ANSWER = "Dear [PERSON_1], we wrote to [EMAIL_1] and [EMAIL_12]; [PERSON_1] agreed."
VALUES = {
    "[PERSON_1]": "Anna Schmidt",
    "[EMAIL_1]": "anna@example.com",
    "[EMAIL_12]": "z@example.org",
}
RESTORED = "Dear Anna Schmidt, we wrote to anna@example.com and z@example.org; Anna Schmidt agreed."


def streamed(chunks: list[str], values: dict[str, str] = VALUES) -> tuple[str, list[str]]:
    restorer = Restorer(values)
    passed = [restorer.feed(chunk) for chunk in chunks] + [restorer.flush()]
    return "".join(passed), passed


def test_restoring_replaces_every_known_placeholder() -> None:
    assert restore(ANSWER, VALUES) == RESTORED


def test_a_placeholder_split_anywhere_between_chunks_is_restored() -> None:
    for cuts in itertools.combinations(range(1, len(ANSWER)), 2):
        a, b = cuts
        chunks = [ANSWER[:a], ANSWER[a:b], ANSWER[b:]]
        assert streamed(chunks)[0] == RESTORED, chunks


def test_one_character_at_a_time_is_restored_and_nothing_is_held_needlessly() -> None:
    text, passed = streamed(list(ANSWER))
    assert text == RESTORED
    # Outside a possible placeholder each character is passed on as it comes.
    assert passed[:5] == ["D", "e", "a", "r", " "]


def test_a_tail_that_never_becomes_a_placeholder_is_passed_on_as_it_came() -> None:
    text, passed = streamed(["See [EMA", "IL"])
    assert passed[0] == "See "
    assert text == "See [EMAIL"
    assert streamed(["a [PERSON_", "2] b"])[0] == "a [PERSON_2] b"
    assert streamed(["[", "[PERSON_1]"])[0] == "[Anna Schmidt"


def test_placeholders_the_model_altered_are_left_as_they_are() -> None:
    altered = "[Person_1], [PERSON 1], PERSON_1, [EMAIL_1 ], [EMAIL_2]"
    assert restore(altered, VALUES) == altered
    assert streamed([altered[:7], altered[7:]])[0] == altered


def test_without_placeholders_text_passes_straight_through() -> None:
    assert streamed(["[a", "b]", "["], {})[1] == ["[a", "b]", "[", ""]
