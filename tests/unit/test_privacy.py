from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable

import pytest

from edgefleet.routing.privacy import (
    BUILTIN_DETECTORS,
    PATTERN_DETECTORS,
    CustomPattern,
    Finding,
    PrivacyScanner,
)
from tests.support.pii_corpus import PiiPrompt, clean_prompts, iban, pii_prompts

SCANNER = PrivacyScanner()
CORPUS = pii_prompts()
CLEAN = clean_prompts()


def found(text: str, scanner: PrivacyScanner = SCANNER) -> list[tuple[str, str]]:
    return [(f.detector, text[f.start : f.end]) for f in scanner.scan(text)]


def covers(findings: list[Finding], detector: str, start: int, end: int) -> bool:
    return any(f.detector == detector and f.start <= start and f.end >= end for f in findings)


# --- the corpus --------------------------------------------------------------------------


def test_corpus_plants_every_kind_at_least_20_times_deterministically() -> None:
    counts = Counter(prompt.detector for prompt in CORPUS)
    assert set(counts) == set(PATTERN_DETECTORS)
    assert min(counts.values()) >= 20
    assert pii_prompts() == CORPUS
    assert all(300 <= len(prompt.text) <= 2500 for prompt in CORPUS)


@pytest.mark.parametrize("prompt", CORPUS, ids=lambda p: p.detector)
def test_every_planted_value_is_found_as_its_kind(prompt: PiiPrompt) -> None:
    start = prompt.text.index(prompt.value)
    end = start + len(prompt.value)
    findings = SCANNER.scan(prompt.text)
    assert covers(findings, prompt.detector, start, end), found(prompt.text)
    assert SCANNER.first(prompt.text) is not None


@pytest.mark.parametrize("text", CLEAN, ids=lambda t: t[:30])
def test_clean_prompts_with_numbers_are_not_flagged(text: str) -> None:
    assert found(text) == []
    assert SCANNER.first(text) is None


# --- near misses -------------------------------------------------------------------------


def bump_last_digit(number: str) -> str:
    return number[:-1] + str((int(number[-1]) + 1) % 10)


@pytest.mark.parametrize(
    "valid",
    ["4111 1111 1111 1111", "5555-5555-5555-4444", "378282246310005", "6011111111111117"],
)
def test_card_numbers_need_a_valid_luhn_digit(valid: str) -> None:
    assert found(f"card: {valid}.") == [("credit_card", valid)]
    assert found(f"card: {bump_last_digit(valid)}.") == []


def test_iban_needs_valid_check_digits() -> None:
    rng = random.Random(3)
    for country in ("DE", "GB", "FR", "NL", "ES", "IT", "CH", "NO"):
        valid = iban(rng, country)
        wrong = valid[:2] + f"{(int(valid[2:4]) + 1 - 2) % 97 + 2:02d}" + valid[4:]
        assert found(f"IBAN {valid} please") == [("iban", valid)]
        assert found(f"IBAN {wrong} please") == [], wrong


@pytest.mark.parametrize(
    "text",
    [
        # SSNs the SSA never issues.
        "SSN 000-12-3456",
        "SSN 666-12-3456",
        "SSN 912-34-5678",
        "SSN 123-00-4567",
        "SSN 123-45-0000",
        "SSN: 666123456",
        # A 16-digit order number failing Luhn, ISBNs, dates, times.
        "order number 1234567812345678",
        "ISBN 978-3-16-148410-0 or 9783161484100, and 0-306-40615-2",
        "due 2024-03-15, or 15/03/2024, or 03.15.2024 10:30",
        "On 05-10-2023 12 students came; on 01.02.2023 1430 people.",
        # Phone-like but too short, or amounts.
        "dial 555-0173 or +1 555 0173 or 020 7946",
        "call me at noon",
        "a rise of +12 500 000 000 in the budget",
        # National Insurance numbers with letters never issued.
        "QQ 12 34 56 C, GB 12 34 56 A, AB 12 34 56 E",
        # Plain numbers and code.
        "In 1998, 12 of 40 students; version 3.10.2; 2^64 = 18446744073709551616",
        'api_key = "YOUR_API_KEY"',
        'token = "<token>"',
        "token = tokenizer(text)",
        "password: ********",
        "the token is validated before use",
        "max_tokens = 4096",
    ],
)
def test_near_misses_are_not_flagged(text: str) -> None:
    assert found(text) == []


# --- formats and surroundings ------------------------------------------------------------


def fullwidth(ascii_text: str) -> str:
    return ascii_text.translate({c: c + 0xFEE0 for c in range(0x21, 0x7F)})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("电话\uff1a+86 138 0013 8000。", ("phone", "+86 138 0013 8000")),
        ("邮箱\uff1azhang.wei+cv@mail.example.cn 谢谢", ("email", "zhang.wei+cv@mail.example.cn")),
        ("โทร 02-555-0173 ค่ะ", ("phone", "02-555-0173")),  # Bangkok, with its trunk 0
        ("โทร (212) 555-0173 ค่ะ", ("phone", "(212) 555-0173")),
        (f"電話{fullwidth('090-1234-5678')}です", ("phone", fullwidth("090-1234-5678"))),
        ("🙂 card 4111111111111111 🙂", ("credit_card", "4111111111111111")),
        ("Mein Ausweis: personalausweis T220001293", ("national_id", "T220001293")),
        ("NI number ab123456c.", ("national_id", "ab123456c")),
        ("Ssn: 078-05-1120", ("us_ssn", "078-05-1120")),
        ("social security number 123456789", ("us_ssn", "123456789")),
        ("fr14 2004 1010 0505 0001 3m02 606", ("iban", "fr14 2004 1010 0505 0001 3m02 606")),
        ("PASSWORD=Tr0ub4dor&3", ("secret", "Tr0ub4dor&3")),
        ("url = 'https://bob:hunter2secret@example.org/'", ("secret", "hunter2secret")),
    ],
)
def test_values_are_found_in_any_script_and_case(text: str, expected: tuple[str, str]) -> None:
    assert expected in found(text)


def test_private_key_finding_spans_the_whole_block() -> None:
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n-----END OPENSSH PRIVATE KEY-----"
    assert found(f"my key:\n{key}\nthanks") == [("secret", key)]


def test_finding_is_loggable_without_the_value() -> None:
    text = "write to ana@example.com"
    (finding,) = SCANNER.scan(text)
    assert finding == Finding("email", 9, 24)
    assert finding.redacted() == "email@9-24"
    assert "ana" not in repr(finding)


def test_first_and_sensitive_agree_with_scan() -> None:
    for text in [p.text for p in CORPUS[:40]] + CLEAN[:10]:
        first = SCANNER.first(text)
        findings = SCANNER.scan(text)
        assert (first is None) == (findings == [])
        if first is not None:
            assert covers(findings, first.detector, first.start, first.end)
    assert SCANNER.sensitive(["hello", "see you at 10:30"]) is None
    hit = SCANNER.sensitive(["hello", "card 4111 1111 1111 1111", "ana@example.com"])
    assert hit == Finding("credit_card", 5, 24)


# --- configuration -----------------------------------------------------------------------


def test_a_subset_of_detectors_flags_only_those_kinds() -> None:
    text = "ana@example.com, card 4111 1111 1111 1111, SSN 123-45-6789"
    assert {f.detector for f in SCANNER.scan(text)} == {"email", "credit_card", "us_ssn"}
    only_email = PrivacyScanner(["email"])
    assert [f.detector for f in only_email.scan(text)] == ["email"]
    assert PrivacyScanner([]).scan(text) == []


def test_unknown_detector_is_refused_with_the_known_names() -> None:
    with pytest.raises(ValueError, match="unknown privacy detector 'ssn'") as refused:
        PrivacyScanner(["email", "ssn"])
    assert all(name in str(refused.value) for name in BUILTIN_DETECTORS)


def test_custom_patterns_flag_under_their_own_name() -> None:
    scanner = PrivacyScanner(
        ["email"],
        [
            CustomPattern("employee_id", r"\bEMP-\d{6}\b"),
            CustomPattern("project", r"(?i)project\s+bluebird"),
        ],
    )
    text = "EMP-123456 works on Project  Bluebird; emp-123456 is not an id"
    assert found(text, scanner) == [
        ("employee_id", "EMP-123456"),
        ("project", "Project  Bluebird"),
    ]
    assert scanner.first("nothing here") is None


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        (CustomPattern("broken", r"EMP-(\d+"), "'broken': invalid regex"),
        (CustomPattern("anything", r"\d*"), "'anything': regex can match the empty string"),
        (CustomPattern("lookahead", r"(?=x)"), "'lookahead': regex can match the empty string"),
        (CustomPattern("nested", r"(a+)+b"), "'nested': a repeated group contains"),
        (CustomPattern("words", r"(?:\w+\s?)*end"), "'words': a repeated group contains"),
        (CustomPattern("email", r"x@y"), "'email': name is taken by a built-in detector"),
        (CustomPattern("Bad Name", r"x"), "'Bad Name': name must be"),
    ],
)
def test_bad_custom_patterns_are_refused_naming_the_pattern(
    pattern: CustomPattern, message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        PrivacyScanner(custom=[pattern])


def test_a_custom_name_given_twice_is_refused() -> None:
    twice = [CustomPattern("code", "A1"), CustomPattern("code", "B2")]
    with pytest.raises(ValueError, match="'code': name given twice"):
        PrivacyScanner(custom=twice)


# --- cost --------------------------------------------------------------------------------

# Every pattern is linear (no nested unbounded quantifiers, starts that cannot retry inside a
# run). A backtracking pattern shows as a superlinear cost: the test compares the scan time of
# each 40-50 KB input with that of its first quarter, taking the fastest of a few runs of each
# so a loaded machine slows both alike. Linear costs about 4x (up to 7x seen under load),
# quadratic 16x.
ADVERSARIAL = {
    "letters then @": "a" * 50000 + "@",
    "at signs": "@" * 50000,
    "digit and space": "1 " * 20000,
    "digits": "1" * 50000,
    "card groups": "1234 " * 10000,
    "plus ones": "+1" * 20000,
    "trunk groups": "01 " * 15000,
    "token keywords": "token=" * 8000,
    "jwt prefixes": "eyJ" * 15000,
    "iban-like": "AB12" * 12000,
    "id keywords": "passport 12345 " * 3000,
    "pem headers": "-----BEGIN " * 4000,
    "ssn keywords": "ssn 12345 " * 5000,
    "domain labels": "a@" + "b." * 20000,
    "random symbols": "".join(random.Random(1).choice("a1 .-@+_=:'\"(") for _ in range(50000)),
}


def _fastest_scan(text: str, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        SCANNER.scan(text)
        times.append(time.perf_counter() - started)
    return min(times)


@pytest.mark.parametrize("text", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_adversarial_input_is_scanned_in_linear_time(text: str) -> None:
    whole = _fastest_scan(text)
    quarter = _fastest_scan(text[: len(text) // 4])
    # Below 20 ms the whole input is cheap whatever the curve (and timer noise dominates).
    assert whole < 0.02 or whole / quarter < 10, f"{whole:.3f}s for 4x the text of {quarter:.3f}s"


def test_a_few_kilobyte_prompt_scans_in_milliseconds() -> None:
    # Typically well under 1 ms; the bound is 10x that so a busy machine does not fail it.
    text = max((p.text for p in CORPUS), key=len)
    best = min(_timed(SCANNER.scan, text) for _ in range(5))
    assert best < 0.010


def _timed(scan: Callable[[str], object], text: str) -> float:
    started = time.perf_counter()
    scan(text)
    return time.perf_counter() - started
