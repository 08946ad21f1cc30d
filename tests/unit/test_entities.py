"""The entity detectors: people, addresses, health and spelt-out e-mail addresses.

Quality is asserted on the held-out slice of tests/data/entities.jsonl, which the detectors
were not tuned against; the whole set's figures are in docs/router.md (tests/bench).
"""

from __future__ import annotations

import time

import pytest

from edgefleet.routing.entities import ENTITY_DETECTORS, find_entities
from edgefleet.routing.policy import parse_policy
from edgefleet.routing.privacy import PATTERN_DETECTORS, PrivacyScanner
from tests.bench.bench_entities import confusion, load

HELDOUT = load("heldout")
SCANNER = PrivacyScanner()
ISSUE_PROMPT = (
    "Patient Agnieszka Kowalczyk, 42 Elm Street, diagnosed with type 2 diabetes — draft a "
    "letter to her insurer"
)


def kinds(text: str) -> set[str]:
    return {kind for kind, spans in find_entities(text).items() if spans}


def test_heldout_slice_has_every_kind_and_look_alikes() -> None:
    labels = [label for row in HELDOUT for label in row["labels"]]
    assert set(labels) == set(ENTITY_DETECTORS)
    assert sum(1 for row in HELDOUT if not row["labels"]) >= 20


@pytest.mark.parametrize("kind", ENTITY_DETECTORS)
def test_heldout_precision_and_recall(kind: str) -> None:
    counts = confusion(HELDOUT)
    tp, fp, fn = (counts[kind, outcome] for outcome in ("tp", "fp", "fn"))
    assert tp / (tp + fn) >= 0.9, (tp, fn)
    assert tp / (tp + fp) >= 0.8, (tp, fp)


def test_the_issues_prompt_is_a_person_an_address_and_health() -> None:
    assert kinds(ISSUE_PROMPT) == {"person", "address", "health"}
    finding = SCANNER.sensitive([ISSUE_PROMPT])
    assert finding is not None and finding.detector in ENTITY_DETECTORS


def test_spans_carry_kind_and_value_for_a_redactor() -> None:
    text = "Write to Agnieszka Kowalczyk at anna dot schmidt at example dot com."
    spans = {(s.kind, s.value) for s in SCANNER.spans(text)}
    assert ("person", "Agnieszka Kowalczyk") in spans
    assert ("obfuscated_contact", "anna dot schmidt at example dot com") in spans
    assert all(text[s.start : s.end] == s.value for s in SCANNER.spans(text))


@pytest.mark.parametrize(
    "text",
    [
        "What did Barack Obama say about climate change in 2015?",
        "What happens in A Nightmare on Elm Street?",
        "What are the symptoms of type 2 diabetes?",
        "I work at google.com as an SRE; how do I prepare for on-call?",
        "Which Louis Vuitton bag holds a 14-inch laptop?",
    ],
)
def test_look_alikes_stay_routable_to_the_cloud(text: str) -> None:
    assert kinds(text) == set()


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("Reach me at hans [at] firma [dot] de tomorrow.", "obfuscated_contact"),
        ("Bitte schick die Unterlagen an Lindenstraße 8, 04109 Leipzig.", "address"),
        ("I was diagnosed with epilepsy and take levetiracetam; can I drive?", "health"),
        ("Summarise the complaint our tenant Oksana Bondarenko sent yesterday.", "person"),
        ("MRN 55102934: please summarise the last admission.", "health"),
    ],
)
def test_each_detector_finds_its_kind(text: str, kind: str) -> None:
    assert kind in kinds(text)


def test_pattern_and_entity_passes_are_separate() -> None:
    """The router runs the pattern pass on every request, the entity pass only for the cloud."""
    text = "Draft a reply to Agnieszka Kowalczyk about the budget."
    assert SCANNER.sensitive([text], entities=False) is None
    finding = SCANNER.sensitive([text], patterns=False)
    assert finding is not None and finding.detector == "person"
    assert SCANNER.sensitive(["mail anna@example.com"], patterns=False) is None


def test_entity_detectors_are_on_by_default_and_a_policy_may_leave_them_out() -> None:
    assert parse_policy({}).privacy.detectors[-len(ENTITY_DETECTORS) :] == ENTITY_DETECTORS
    policy = parse_policy({"privacy": {"detectors": list(PATTERN_DETECTORS)}})
    assert not policy.scanner().has_entities
    assert policy.scanner().sensitive([ISSUE_PROMPT]) is None


ADVERSARIAL = {
    "capitalised names": "Anna " * 10000,
    "full names": "Anna Schmidt " * 4000,
    "house numbers": "1 Elm " * 8000,
    "spelt at": "a at " * 10000,
    "spelt dot": "a dot " * 10000,
    "cjk": "王" * 50000,
    "cjk block numbers": "1丁" * 20000,
    "upper letters": "A" * 50000,
    "plus ones": "+1" * 20000,
    "digits": "1" * 50000,
}


@pytest.mark.parametrize("text", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_adversarial_input_is_judged_in_linear_time(text: str) -> None:
    # 50 KB takes 0.01-0.2 s even on a loaded machine; a quadratic pattern takes many seconds.
    started = time.perf_counter()
    find_entities(text)
    assert time.perf_counter() - started < 1.5
