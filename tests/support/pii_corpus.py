"""Deterministic test prompts: long, realistic requests with one planted piece of personal data or
one secret each, and clean prompts full of numbers that hold none.

The planted values are valid (Luhn-valid card numbers with real issuer prefixes, mod-97-valid
IBANs, issuable SSNs and National Insurance numbers, ...), placed in varied formats and spots:
inside sentences, after punctuation, in code blocks, JSON, CSV, .env files. The surrounding
questions (maths, law, code, data) are the kind a complexity router would send to the cloud.
"""

from __future__ import annotations

import base64
import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass

from edgefleet.routing.privacy import PATTERN_DETECTORS


@dataclass(frozen=True)
class PiiPrompt:
    text: str
    detector: str  # the kind planted, one of PATTERN_DETECTORS
    value: str  # the planted value, verbatim in text


# --- filler ------------------------------------------------------------------------------

# Every number in these is short or of a shape no detector flags: they are clean prompts too.
_FILLER: dict[str, list[str]] = {
    "maths": [
        "A train leaves at {hh}:{mm} travelling at {n2} km/h and a second one leaves {n1} minutes "
        "later at {n3} km/h. When does the second train catch up, and how far have both gone?",
        "Prove that the sum of the first {n2} odd numbers is {n2}^2, then generalise the argument "
        "to any arithmetic progression with difference {n1}.",
        "Solve the system {n1}x + {n2}y = {n3} and {n2}x - {n1}y = {n1}, showing each step.",
        "In {year}, {n1} of {n2} students passed; if {n2} of {n3} pass next year, by how many "
        "percentage points does the pass rate change?",
        "Compute the integral of x^{n1} * e^(-{n1}x) from 0 to infinity and say which "
        "substitution makes it tractable.",
        "What is the probability of drawing {n1} aces from a deck of 52 cards in {n2} draws "
        "without replacement? Give the exact fraction and a decimal to {n1} places.",
        "Is 2^{n2} - 1 prime? Explain the Lucas-Lehmer test and how long it takes for p = {n3}.",
    ],
    "law": [
        "Under clause {n1}.{n1} of the lease dated {date}, the tenant must give {n2} days' notice; "
        "does an email sent on a Sunday count as notice?",
        "Compare the limitation periods for contract claims in England ({n1} years) and Germany "
        "(3 years) and explain when each period starts to run.",
        "An invoice of {price} was paid {n2} days late. Is the supplier owed statutory interest at "
        "{n1}% above the base rate, and from which date?",
        "Summarise how GDPR Article {n2} differs from the CCPA for a small online shop with about "
        "{n3} customers a month.",
        "My employer changed my contract on {date} without consultation; what remedies exist and "
        "how strong is a claim after {n1} years of service?",
    ],
    "code": [
        "I am moving from Python {version} to 3.12 and my asyncio code now warns about "
        "get_event_loop. How should I restructure the start-up code?",
        "Write a function that merges {n1} sorted lists in O(n log k) time and explain the heap "
        "invariant it relies on.",
        "Our deployment pins image tag v{version} and requests {n3}m CPU and {n3}Mi memory; why is "
        "the pod OOMKilled under load, and how do I size the limits?",
        "The service listens on port {port} and the readiness probe times out after {n3} ms. What "
        "should the probe and the server's shutdown sequence look like?",
        "Refactor this loop so it stops allocating a new list on each of its {n3} iterations, and "
        "explain what the garbage collector was doing before.",
        "Why does `git rebase -i HEAD~{n1}` drop my merge commits, and what does --rebase-merges "
        "change?",
    ],
    "data": [
        "Revenue grew from {price} in Q1 to {price} in Q{q}; compute the compound quarterly growth "
        "rate and say whether a log scale makes the chart clearer.",
        "A survey had {n3} respondents with a mean age of {n2}.{n1} and a standard deviation of "
        "{n1}.{n1}. Is that enough for a 95% confidence interval of {n1} years either way?",
        "Fit a logistic regression to the churn table below and tell me which of the {n2} "
        "features matter; the classes are imbalanced {n1}:{n2}.",
        "Our dashboard shows {pct}% conversion on {date} but {pct}% the day after. What checks "
        "would separate a tracking bug from a real drop?",
    ],
    "support": [
        "I booked flight BA{n3} for {date} and it was cancelled {n1} hours before departure. "
        "Please draft a complaint that cites the compensation rules.",
        "The parcel weighed {n1}.{n1} kg and was shipped on {date}; tracking says it is held at "
        "customs. What documents will they ask for?",
        "Our order #{n3} arrived damaged. Write a polite but firm email asking for a replacement "
        "within {n2} days.",
        "Please check this letter to the bank for tone and grammar before I send it today.",
    ],
}


def _fill(rng: random.Random, template: str) -> str:
    values = {
        "n1": rng.randint(2, 9),
        "n2": rng.randint(10, 99),
        "n3": rng.randint(100, 999),
        "hh": f"{rng.randint(6, 22):02d}",
        "mm": f"{rng.choice([0, 15, 30, 45]):02d}",
        "year": rng.randint(1990, 2024),
        "date": rng.choice(
            [
                f"{rng.randint(2019, 2025)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                f"{rng.randint(1, 28)} March {rng.randint(2019, 2025)}",
                f"{rng.randint(1, 12)}/{rng.randint(1, 28)}/{rng.randint(2019, 2025)}",
            ]
        ),
        "price": rng.choice(
            [
                f"${rng.randint(1, 99)},{rng.randint(100, 999)}.{rng.randint(10, 99)}",
                f"€{rng.randint(10, 9999)}.{rng.randint(10, 99)}",
            ]
        ),
        "version": f"3.{rng.randint(6, 11)}.{rng.randint(0, 12)}",
        "port": rng.choice([80, 443, 8080, 8443, 50051, 9090]),
        "q": rng.randint(2, 4),
        "pct": f"{rng.randint(1, 9)}.{rng.randint(0, 9)}",
    }
    return template.format(**values)


def _paragraphs(rng: random.Random, count: int) -> list[str]:
    """`count` paragraphs on one main topic and one side topic, no sentence twice."""
    main, side = rng.sample(sorted(_FILLER), k=2)
    pool = rng.sample(_FILLER[main], k=len(_FILLER[main])) + rng.sample(_FILLER[side], k=3)
    paragraphs = []
    for _ in range(count):
        size = rng.randint(2, 3)
        taken, pool = pool[:size], pool[size:]
        if not taken:
            break
        paragraphs.append(" ".join(_fill(rng, s) for s in taken))
    return paragraphs


# --- values ------------------------------------------------------------------------------

_FIRST = ["anna", "jürgen", "li", "maría", "oliver", "priya", "sam", "zoë", "kwame", "fatima"]
_LAST = ["schmidt", "okafor", "nguyen", "garcía", "smith", "kowalski", "rossi", "tanaka"]
_DOMAINS = ["example.com", "mail.example.co.uk", "corp.example.de", "example.io", "uni.example.edu"]


def _email(rng: random.Random) -> tuple[str, str]:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    local = rng.choice(
        [f"{first}.{last}", f"{first}+{rng.choice(['news', 'bank', 'x1'])}", f"{first[0]}_{last}99"]
    )
    value = f"{local}@{rng.choice(_DOMAINS)}"
    if rng.random() < 0.2:
        value = value.title()
    return value, "email"


def _d(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def _phone(rng: random.Random) -> tuple[str, str]:
    area = f"{rng.randint(2, 9)}{rng.randint(0, 8)}{rng.randint(0, 9)}"
    exchange, line = f"{rng.randint(2, 9)}{_d(rng, 2)}", _d(rng, 4)
    formats = [
        f"({area}) {exchange}-{line}",
        f"{area}.{exchange}.{line}",
        f"{area}-{exchange}-{line}",
        f"+1-{area}-{exchange}-{line}",
        f"+1 ({area}) {exchange}-{line}",
        f"+44 20 {rng.randint(3, 8)}{_d(rng, 3)} {_d(rng, 4)}",
        f"+44 (0)20 {rng.randint(3, 8)}{_d(rng, 3)} {_d(rng, 4)}",
        f"+44 7700 9{_d(rng, 5)}",
        f"020 {rng.randint(3, 8)}{_d(rng, 3)} {_d(rng, 4)}",
        f"07700 9{_d(rng, 5)}",
        f"+49 30 {rng.randint(1, 9)}{_d(rng, 6)}",
        f"+49 151 {_d(rng, 8)}",
        f"030 {rng.randint(1, 9)}{_d(rng, 7)}",
        f"+33 {rng.randint(1, 7)} {_d(rng, 2)} {_d(rng, 2)} {_d(rng, 2)} {_d(rng, 2)}",
        f"0{rng.randint(1, 7)} {_d(rng, 2)} {_d(rng, 2)} {_d(rng, 2)} {_d(rng, 2)}",
        f"+34 9{_d(rng, 2)} {_d(rng, 3)} {_d(rng, 3)}",
        f"+1{area}{exchange}{line}",
    ]
    return rng.choice(formats), "phone"


def _luhn_complete(partial: str) -> str:
    total = 0
    for position, char in enumerate(reversed(partial)):
        digit = int(char)
        if position % 2 == 0:  # doubled once the check digit is appended
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return partial + str((10 - total % 10) % 10)


_CARD_BRANDS: list[tuple[Callable[[random.Random], str], int, tuple[int, ...]]] = [
    (lambda r: "4", 16, (4, 4, 4, 4)),  # Visa
    (lambda r: str(r.randint(51, 55)), 16, (4, 4, 4, 4)),  # Mastercard
    (lambda r: str(r.randint(2221, 2720)), 16, (4, 4, 4, 4)),
    (lambda r: r.choice(["34", "37"]), 15, (4, 6, 5)),  # Amex
    (lambda r: r.choice(["6011", "65"]), 16, (4, 4, 4, 4)),  # Discover
    (lambda r: str(r.randint(3528, 3589)), 16, (4, 4, 4, 4)),  # JCB
    (lambda r: "36", 14, (4, 6, 4)),  # Diners Club
    (lambda r: "62", 16, (4, 4, 4, 4)),  # UnionPay
    (lambda r: "62", 19, (4, 4, 4, 4, 3)),
]


def _card(rng: random.Random) -> tuple[str, str]:
    prefix, length, groups = rng.choice(_CARD_BRANDS)
    start = prefix(rng)
    number = _luhn_complete(start + _d(rng, length - len(start) - 1))
    separator = rng.choice(["", " ", "-"])
    parts, at = [], 0
    for size in groups:
        parts.append(number[at : at + size])
        at += size
    return separator.join(parts), "credit_card"


# BBAN shapes: (count, kind) with kind "n" digits, "a" capital letters.
_BBANS: dict[str, list[tuple[int, str]]] = {
    "DE": [(18, "n")],
    "GB": [(4, "a"), (14, "n")],
    "FR": [(23, "n")],
    "NL": [(4, "a"), (10, "n")],
    "ES": [(20, "n")],
    "IT": [(1, "a"), (22, "n")],
    "BE": [(12, "n")],
    "AT": [(16, "n")],
    "CH": [(17, "n")],
    "PL": [(24, "n")],
    "IE": [(4, "a"), (14, "n")],
    "PT": [(21, "n")],
    "SE": [(20, "n")],
    "DK": [(14, "n")],
    "FI": [(14, "n")],
    "NO": [(11, "n")],
    "LU": [(16, "n")],
}


def iban(rng: random.Random, country: str) -> str:
    """A valid IBAN for `country`, compact."""
    bban = "".join(
        "".join(rng.choice(string.digits if kind == "n" else string.ascii_uppercase)
                for _ in range(count))
        for count, kind in _BBANS[country]
    )  # fmt: skip
    number = int("".join(str(int(c, 36)) for c in bban + country + "00"))
    return f"{country}{98 - number % 97:02d}{bban}"


def _iban(rng: random.Random) -> tuple[str, str]:
    value = iban(rng, rng.choice(sorted(_BBANS)))
    style = rng.random()
    if style < 0.5:
        value = " ".join(value[i : i + 4] for i in range(0, len(value), 4))
    elif style < 0.6:
        value = value.lower()
    return value, "iban"


def _ssn(rng: random.Random) -> tuple[str, str]:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    number = f"{area:03d}{rng.randint(1, 99):02d}{rng.randint(1, 9999):04d}"
    separator = rng.choice(["-", "-", " "])
    return separator.join([number[:3], number[3:5], number[5:]]), "us_ssn"


_NINO_FIRST = "ABCEGHJKLMNOPRSTWXYZ"
_NINO_SECOND = "ABCEGHJKLMNPRSTWXYZ"


def _national_id(rng: random.Random) -> tuple[str, str]:
    while True:
        prefix = rng.choice(_NINO_FIRST) + rng.choice(_NINO_SECOND)
        if prefix not in {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}:
            break
    digits, suffix = _d(rng, 6), rng.choice("ABCD")
    forms = [
        f"{prefix} {digits[:2]} {digits[2:4]} {digits[4:]} {suffix}",
        f"{prefix}{digits}{suffix}",
        f"{prefix} {digits} {suffix}",
    ]
    return rng.choice(forms), "national_id"


def _keyword_id(rng: random.Random) -> tuple[str, str]:
    """An identifier that only its keyword marks; returned with the keyword as a prefix."""
    keyword, value = rng.choice(
        [
            ("passport number", f"{rng.choice('XCKLP')}{_d(rng, 7)}"),
            ("Passport No.:", _d(rng, 9)),
            ("national ID:", f"{_d(rng, 4)} {_d(rng, 4)} {_d(rng, 4)}"),
            ("DNI", f"{_d(rng, 8)}{rng.choice('TRWAGMYFPDXBNJZSQVHLCKE')}"),
            ("BSN", _d(rng, 9)),
            ("driver's license number", f"D{_d(rng, 4)}-{_d(rng, 5)}-{_d(rng, 5)}"),
            ("Personalausweis-Nr.", f"T{_d(rng, 8)}"),
            ("tax ID", f"{_d(rng, 2)} {_d(rng, 3)} {_d(rng, 3)} {_d(rng, 3)}"),
            ("PESEL", _d(rng, 11)),
        ]
    )
    return f"{keyword} {value}", value


def _secret(rng: random.Random) -> tuple[str, str]:
    alnum = string.ascii_letters + string.digits

    def rand(n: int, chars: str = alnum) -> str:
        return "".join(rng.choice(chars) for _ in range(n))

    def password() -> str:
        return rand(rng.randint(6, 12), alnum + "!#&*-_+=.^~") + _d(rng, 2) + rand(2, "!#&*")

    def b64url(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    kind = rng.choice(
        ["aws_id", "aws_secret", "github", "github_pat", "openai", "slack", "google", "stripe",
         "jwt", "pem", "password", "env", "bearer", "url"]
    )  # fmt: skip
    if kind == "aws_id":
        return rng.choice(["AKIA", "ASIA"]) + rand(16, string.ascii_uppercase + string.digits), kind
    if kind == "aws_secret":
        return rand(40, alnum + "/+"), kind
    if kind == "github":
        return f"gh{rng.choice('pos')}_{rand(36)}", kind
    if kind == "github_pat":
        return f"github_pat_{rand(22)}_{rand(59)}", kind
    if kind == "openai":
        return rng.choice(["sk-", "sk-proj-"]) + rand(48, alnum + "_-"), kind
    if kind == "slack":
        return f"xox{rng.choice('bp')}-{_d(rng, 12)}-{_d(rng, 12)}-{rand(24)}", kind
    if kind == "google":
        return "AIza" + rand(35, alnum + "_-"), kind
    if kind == "stripe":
        return f"{rng.choice(['sk', 'rk'])}_live_{rand(24)}", kind
    if kind == "jwt":
        header = b64url({"alg": "HS256", "typ": "JWT"})
        payload = b64url({"sub": _d(rng, 8), "iat": 1700000000 + rng.randint(0, 9999)})
        return f"{header}.{payload}.{rand(43, alnum + '_-')}", kind
    if kind == "pem":
        label = rng.choice(
            ["RSA PRIVATE KEY", "PRIVATE KEY", "OPENSSH PRIVATE KEY", "EC PRIVATE KEY"]
        )
        body = "\n".join(rand(64, alnum + "+/") for _ in range(rng.randint(3, 6)))
        return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----", kind
    if kind == "url":
        return rand(12) + _d(rng, 2), kind
    if kind == "bearer":
        return rand(40, alnum + "-._~"), kind
    return password(), kind


# --- planting ----------------------------------------------------------------------------

_LABELS = {
    "email": ["email", "e-mail", "contact"],
    "phone": ["phone", "mobile", "tel"],
    "credit_card": ["card", "card_number", "cc"],
    "iban": ["iban", "account", "bank_account"],
    "us_ssn": ["ssn", "social_security"],
    "national_id": ["nino", "ni_number"],
}
_SENTENCES = [
    "For reference, my {label} is {value}, in case you need it for the letter.",
    "You can reach me via {value} after 6 pm.",
    "Details ({label}: {value}) are in the attached form.",
    "{value} is the one on file; please double-check it against the form.",
    "Use this:{value}; it was confirmed last week.",
    "The old record still shows \u201c{value}\u201d next to my name.",
    "Please anonymise it before sharing: {value}.",
]


def _plant(rng: random.Random, detector: str, value: str, secret_kind: str = "") -> str:
    """A snippet that holds `value` verbatim."""
    if detector == "secret":
        return _plant_secret(rng, value, secret_kind)
    label = rng.choice(_LABELS[detector])
    style = rng.random()
    if style < 0.5:
        return rng.choice(_SENTENCES).format(label=label, value=value)
    if style < 0.7:
        record = {"name": f"{rng.choice(_FIRST).title()} {rng.choice(_LAST).title()}", label: value}
        return f"```json\n{json.dumps({'customer': record}, ensure_ascii=False)}\n```"
    if style < 0.85:
        return f"name,{label},city\n{rng.choice(_LAST).title()},{value},Leeds"
    return f"```\n{label.upper()}={value}\n```"


def _plant_secret(rng: random.Random, value: str, kind: str) -> str:
    if kind == "pem":
        return f"Here is the key file the deploy job uses:\n\n{value}\n\nWhy does ssh reject it?"
    if kind == "aws_secret":
        return rng.choice(
            [
                f"```ini\n[default]\naws_secret_access_key = {value}\n```",
                f'export AWS_SECRET_ACCESS_KEY="{value}"',
            ]
        )
    if kind == "bearer":
        return f"```\ncurl -H 'Authorization: Bearer {value}' https://api.example.com/v1/items\n```"
    if kind == "url":
        return f'DATABASE_URL = "postgres://app:{value}@db.internal:5432/orders"'
    if kind in ("password", "env"):
        return rng.choice(
            [
                f'```python\nclient = connect(host="db", password="{value}")\n```',
                f"```\nDB_PASSWORD={value}\n```",
                f'{{"api_key": "{value}", "region": "eu-west-1"}}',
                f"config.yaml has `secret: {value}` under auth.",
                f"my password is {value} and it stopped working yesterday.",
                f"token = '{value}'",
            ]
        )
    return rng.choice(
        [
            f'```python\nclient = Client(api_key="{value}")\n```',
            f"The CI log printed {value} in plain text; how do I rotate it?",
            f'{{"credentials": {{"key": "{value}"}}}}',
            f"key:{value}",
        ]
    )


_MAKERS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "email": _email,
    "phone": _phone,
    "credit_card": _card,
    "iban": _iban,
    "us_ssn": _ssn,
    "national_id": _national_id,
    "secret": _secret,
}


def pii_prompts(count: int = 240, seed: int = 7) -> list[PiiPrompt]:
    """`count` prompts, detectors in turn, each holding one planted value."""
    rng = random.Random(seed)
    prompts = []
    for index in range(count):
        detector = PATTERN_DETECTORS[index % len(PATTERN_DETECTORS)]
        value, kind = _MAKERS[detector](rng)
        if detector == "national_id" and rng.random() < 0.5:
            snippet, value = _keyword_id(rng)
            snippet = rng.choice(["My {} is on the scan.", "Applicant: {}.", "({})"]).format(
                snippet
            )
        else:
            snippet = _plant(rng, detector, value, kind)
        paragraphs = _paragraphs(rng, rng.randint(2, 5))
        paragraphs.insert(rng.randint(0, len(paragraphs)), snippet)
        text = "\n\n".join(paragraphs)
        assert value in text, (detector, value)
        prompts.append(PiiPrompt(text=text, detector=detector, value=value))
    return prompts


# Sentences full of numbers that are not personal data: versions, dates, money, maths, codes.
_CLEAN_EXTRAS = [
    "In 1998, 12 of 40 students passed; in 2003 it was 31 of 44.",
    "We are on version 3.10.2 and plan to move to 3.12.4 by 2025-06-30.",
    "Call me at noon, or at 3 pm if the meeting runs over.",
    "The ISBN is 978-0-306-40615-7 and the older edition is 0-306-40615-2.",
    "The book's EAN is 9780306406157; the shelf code is QA76.73.P98.",
    "2^32 = 4294967296 and 20! = 2432902008176640000; why do both overflow an int32?",
    "Order 1234567812345678 was split into 3 parcels of 2.5 kg each.",
    "Our office hours are 09:00-17:30, Monday to Friday, closed on 25.12.2024.",
    "The server at 192.168.10.24:8080 answers in 35 ms; the one at 10.0.0.7 takes 120 ms.",
    "Set max_tokens = 4096 and temperature = 0.7, then compare with top_p = 0.95.",
    "The secret to good bread is time: 18 hours of cold proofing at 4 degrees.",
    "How should I store password hashes? Is a bcrypt cost factor of 12 enough in 2024?",
    "The token is validated by the gateway before the request reaches the service.",
    "Passport photos must be 35x45 mm; the fee rose from 75.50 to 88.00 euros.",
    "Exhibit 4, page 17, lines 3-9 of the 2021 ruling, case 4:21-cv-01234.",
    "Sales were 1,234,567 units in 2022 and 2,345,678 in 2023, a 90.1% increase.",
    "Coordinates 51.5074, -0.1278; altitude 35 m; bearing 270 degrees.",
    "Use colour #1a2b3c for the header and rgba(12, 34, 56, 0.8) for the overlay.",
    "UUID 123e4567-e89b-12d3-a456-426614174000 names the test tenant.",
    "Solve 3x + 5 = 20, then 17 * 23 = 391, then 1024 / 16 = 64.",
    "The SKU ABC-12345-XL costs $1,299.99 and ships in 5-7 business days.",
    "Commit a3f5c2e9 fixed the bug introduced in release v2.14.1-rc.3.",
    "Room 12-204 is on the 12th floor; extension 4521 reaches the front desk.",
    "+5 points for each correct answer, -2 for each wrong one, 40 questions in total.",
]


def clean_prompts(count: int = 60, seed: int = 11) -> list[str]:
    """`count` realistic prompts with many numbers and no personal data or secrets."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        paragraphs = _paragraphs(rng, rng.randint(1, 4))
        for extra in rng.sample(_CLEAN_EXTRAS, k=rng.randint(1, 3)):
            paragraphs.insert(rng.randint(0, len(paragraphs)), extra)
        prompts.append("\n\n".join(paragraphs))
    return prompts
