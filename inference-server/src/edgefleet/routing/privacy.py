"""The privacy gate's detectors: does a text hold personal data or a secret?

The router and the egress service both call `PrivacyScanner` on every message of a request.
It leans towards detecting: a false alarm keeps a prompt on a local model, a miss sends personal
data to a cloud provider. Candidates come from cheap linear-time regexes (no nested unbounded
quantifiers) and are confirmed in Python (Luhn, mod-97, number plans), so ordinary numbers are
not flagged and no prompt can stall the request path. Everything that needs digits looks only
near runs of digits, found in one pass; keywords are matched on a lowercased copy.

Covered formats, per detector:

- email: local@domain.tld, plus-tags, subdomains, unicode letters, IDN (xn--) top-level domains.
- phone: international `+CC` numbers in groups (`+44 20 7946 0958`, `+1-202-555-0173`,
  `+44 (0)20 ...`) or contiguous (`+12025550173`), 9-15 digits; NANP `(202) 555-0173`,
  `202.555.0173`, `202-555-0173`; national numbers with a trunk 0 in groups (`020 7946 0958`,
  `01 23 45 67 89`, `030 1234567`); 9-15 bare digits right after "phone", "tel", "mobile"...
- credit_card: 13-19 digits, contiguous or grouped by spaces or dashes (4-4-4-4, 4-6-5, ...),
  with an issuer prefix valid for its length (Visa, Mastercard, Amex, Discover, JCB, Diners,
  UnionPay, Maestro, Mir) and a valid Luhn digit.
- iban: every country of the IBAN registry with its length, compact or in groups of four,
  any letter case; ISO 13616 mod-97 check. The BBAN's inner format is not checked.
- us_ssn: AAA-GG-SSSS or AAA GG SSSS without area 000/666/900-999, group 00, serial 0000;
  9 bare digits only after "SSN" / "social security".
- national_id: UK National Insurance numbers (`AB 12 34 56 C`, prefix letter rules); an
  identifier with 5+ digits within 40 characters after a keyword such as "passport",
  "national ID", "identity card", "driver's license", "tax ID", "DNI", "BSN", "PESEL", "Aadhaar".
- secret: AWS key ids and `aws_secret_access_key = ...`, GitHub (`ghp_`, `gho_`, `ghu_`,
  `ghs_`, `ghr_`, `github_pat_`), OpenAI/Anthropic-style `sk-...`, Slack `xox?-`, Google `AIza`,
  Stripe `sk_`/`rk_` live and test keys, JWTs, PEM private keys, `Bearer <token>`, passwords in
  URLs, and `password|secret|token|api_key|... = <value>` assignments (8+ characters).

Full-width forms, unicode dashes and no-break spaces are read as their ASCII equivalents.

The entity detectors (`person`, `address`, `health`, `obfuscated_contact`, see
routing/entities.py) read words in context and cost more; callers that can (the router) run
them only on requests otherwise headed for the cloud: `sensitive(..., entities=False)` first,
then `sensitive(..., patterns=False)` once the cloud is chosen (or `spans` for redaction).

Not covered: dates of birth, other countries' national ids without a
keyword, phone numbers as bare digits without a keyword or trunk 0, SSNs without separators or
keyword, digits other than ASCII and full-width, an unquoted all-letters password after a colon
(`password: correcthorse` reads like prose), and placeholders such as "YOUR_API_KEY" or the
redactor's "[SECRET_1]".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property

from edgefleet.routing.entities import ENTITY_DETECTORS, find_entities

try:
    from re import _parser as _sre  # the parse tree is the only way to see a regex's shape
except ImportError:  # pragma: no cover - Python < 3.11
    import sre_parse as _sre  # type: ignore[no-redef]

# Shapes of numbers and keys: cheap, run on every request.
PATTERN_DETECTORS: tuple[str, ...] = (
    "email",
    "phone",
    "credit_card",
    "iban",
    "us_ssn",
    "national_id",
    "secret",
)
BUILTIN_DETECTORS: tuple[str, ...] = PATTERN_DETECTORS + ENTITY_DETECTORS


@dataclass(frozen=True)
class Finding:
    """A detector matched `text[start:end]`. Holds no matched text, so it is safe to log."""

    detector: str
    start: int
    end: int

    def redacted(self) -> str:
        return f"{self.detector}@{self.start}-{self.end}"


@dataclass(frozen=True)
class SensitiveSpan:
    """What a redactor needs: `text[start:end] == value`, found by detector `kind`."""

    start: int
    end: int
    kind: str
    value: str


@dataclass(frozen=True)
class CustomPattern:
    """A policy's own detector; `regex` is Python syntax, case-sensitive unless it says `(?i)`."""

    name: str
    regex: str


Span = tuple[int, int]

# One character for one character, so offsets found in the translation hold in the original.
_PLAIN = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)}  # full-width ASCII
_PLAIN.update(dict.fromkeys([0x00A0, 0x2007, 0x2009, 0x202F, 0x3000], ord(" ")))
_PLAIN.update(dict.fromkeys([0x2010, 0x2011, 0x2012, 0x2013, 0x2014, 0x2212], ord("-")))

# Digits and the separators phone, card and SSN numbers are written with; 5+ characters.
_RUN = re.compile(r"[0-9][0-9 ().+\-]{3,}[0-9]")


class _Text:
    """One text and the views of it that several detectors share, each made on first use."""

    def __init__(self, raw: str) -> None:
        self.raw = raw
        self.plain = raw if raw.isascii() else raw.translate(_PLAIN)

    @cached_property
    def folded(self) -> str:
        """Lowercase, same length: keyword patterns run case-sensitively, about 10x faster."""
        folded = self.plain.lower()
        if len(folded) != len(self.plain):  # "İ" lowers to two characters
            folded = "".join(c.lower() if len(c.lower()) == 1 else c for c in self.plain)
        return folded

    @cached_property
    def entities(self) -> dict[str, list[tuple[int, int]]]:
        """The entity detectors' spans, judged together (a person vouches for a diagnosis)."""
        return find_entities(self.plain)

    @cached_property
    def runs(self) -> list[tuple[int, int, int]]:
        """(start, end, digit count) of each run of digits and separators with 5+ digits."""
        found = []
        for m in _RUN.finditer(self.plain):
            digits = sum(c.isdigit() for c in m.group())
            if digits >= 5:
                found.append((m.start(), m.end(), digits))
        return found

    def near_runs(self, min_digits: int, before: int, after: int) -> Iterator[Span]:
        """Windows around the runs with enough digits, where a detector's full pattern runs."""
        for start, end, digits in self.runs:
            if digits >= min_digits:
                yield max(0, start - before), min(len(self.plain), end + after)


Detect = Callable[[_Text], Iterator[Span]]

# ASCII boundaries on purpose: \b and \w count CJK letters as word characters, and a number
# written straight after Chinese or Thai text must still be found.
_START = r"(?<![A-Za-z0-9])"
_STOP = r"(?![A-Za-z0-9])"
_GROUP = re.compile(r"[0-9]+")


def _digits(s: str) -> str:
    return "".join(c for c in s if c.isdigit())


class _Keywords:
    """Lowercase keywords to find in folded text, as whole words unless told otherwise."""

    def __init__(self, *alternatives: str, whole_words: bool = True) -> None:
        # One pattern per keyword rather than one alternation: the regex engine searches for a
        # literal prefix several times faster than it tries an alternation at every character.
        end = "(?![a-z])" if whole_words else ""
        self._patterns = [re.compile(f"(?:{alternative}){end}") for alternative in alternatives]
        self._whole_words = whole_words

    def find(self, folded: str) -> Iterator[re.Match[str]]:
        for pattern in self._patterns:
            for m in pattern.finditer(folded):
                start = m.start()
                if not (self._whole_words and start and "a" <= folded[start - 1] <= "z"):
                    yield m


# --- email -------------------------------------------------------------------------------

_DOMAIN = re.compile(r"[\w-]{1,63}(?:\.[\w-]{1,63}){1,8}")


def _email(view: _Text) -> Iterator[Span]:
    # Anchored on "@" and walked outwards: a regex with the local part first would retry the
    # whole local part at every character of a long run of letters.
    text = view.plain
    at = text.find("@")
    while at != -1:
        start = at
        while (
            start > 0
            and at - start < 64
            and (text[start - 1].isalnum() or text[start - 1] in "._%+-")
        ):
            start -= 1
        while start < at and text[start] == ".":
            start += 1
        domain = _DOMAIN.match(text, at + 1) if start < at else None
        if domain:
            labels = domain.group().split(".")
            while len(labels) >= 2 and not _is_tld(labels[-1]):
                labels.pop()
            if len(labels) >= 2:
                yield start, at + 1 + len(".".join(labels))
        at = text.find("@", at + 1)


def _is_tld(label: str) -> bool:
    return (len(label) >= 2 and label.isalpha()) or label.lower().startswith("xn--")


# --- phone -------------------------------------------------------------------------------

_NANP = re.compile(
    r"(?<![A-Za-z0-9+])(?<![0-9][.,\-])(?:\+?1[ .\-]?)?"
    r"(?:\(([0-9]{3})\)[ .\-]?|([0-9]{3})[ .\-])([0-9]{3})[ .\-][0-9]{4}(?![A-Za-z0-9]|[.\-][0-9])"
)
# Separators between groups are required, so a digit run splits into groups one way only.
_INTERNATIONAL = re.compile(
    r"(?<![A-Za-z0-9+])\+[1-9][0-9]{0,3}"
    r"(?:[ .\-]?\(0\)[ .\-]?[0-9]{1,12}|[ .\-]\([0-9]{1,5}\)[ .\-]?[0-9]{1,12}|[ .\-][0-9]{1,12})"
    r"(?:[ .\-][0-9]{1,12}){0,6}(?![0-9])"
    r"|(?<![A-Za-z0-9+])\+[1-9][0-9]{7,14}(?![0-9])"
)
_TRUNK = re.compile(
    r"(?<![A-Za-z0-9+])(?<![0-9][.,])0(?:0[1-9][0-9]{0,2}|[1-9][0-9]{0,3})"
    r"(?:(?:[ \-][0-9]{2,8}){1,5}|(?:\.[0-9]{2,8}){1,5})(?![0-9])"
)
_PHONE_KEYWORD = re.compile(
    r"(?<![a-z])(?:tel|telephone|phone|mobile|cell|cellphone|fax|whatsapp|sms"
    r"|call(?:\s+me)?\s+(?:at|on))s?(?![a-z])[^0-9\n]{0,16}?(\+?[0-9]{9,15})(?![0-9])"
)


def _phone(view: _Text) -> Iterator[Span]:
    text = view.plain
    for pos, endpos in view.near_runs(9, 2, 1):
        for m in _NANP.finditer(text, pos, endpos):
            area = m.group(1) or m.group(2)
            if area[0] not in "01" and m.group(3)[0] not in "01":
                yield m.span()
        for m in _INTERNATIONAL.finditer(text, pos, endpos):
            raw = m.group()
            # The "(0)" of "+44 (0)20 ..." is dialled only from inside the country.
            groups = [g for g in _GROUP.finditer(raw) if raw[g.start() - 1 : g.end() + 1] != "(0)"]
            # "+12 500 000 000" is an amount, not a number to call.
            if len(groups) > 2 and all(g.group() == "000" for g in groups[-2:]):
                continue
            end = _dialable_end(groups)
            if end:
                yield m.start(), m.start() + end
        for m in _TRUNK.finditer(text, pos, endpos):
            groups = list(_GROUP.finditer(m.group()))
            # 05-10-2023 and 01.02.2023 are dates, even with a number after them.
            if [len(g.group()) for g in groups[:3]] == [2, 2, 4] and groups[2].group()[0] in "12":
                continue
            end = _dialable_end(groups)
            if end:
                yield m.start(), m.start() + end
    for pos, endpos in view.near_runs(9, 40, 1):
        for m in _PHONE_KEYWORD.finditer(view.folded, pos, endpos):
            yield m.span(1)


def _dialable_end(groups: list[re.Match[str]]) -> int:
    """End of the leading digit groups that make a 9-15 digit number, or 0 if none do."""
    # A phone number followed by more numbers: keep the leading groups that fit E.164.
    while len(groups) > 1 and sum(len(g.group()) for g in groups) > 15:
        groups = groups[:-1]
    return groups[-1].end() if 9 <= sum(len(g.group()) for g in groups) <= 15 else 0


# --- credit_card -------------------------------------------------------------------------

_CARD = re.compile(_START + r"(?:[0-9]{13,19}|[0-9]{4}(?:[ \-][0-9]{2,6}){2,5})" + _STOP)


def _credit_card(view: _Text) -> Iterator[Span]:
    for pos, endpos in view.near_runs(13, 1, 1):
        for m in _CARD.finditer(view.plain, pos, endpos):
            groups = list(_GROUP.finditer(m.group()))
            # A card may sit among other numbers ("order 1234 4111 1111 1111 1111"): try the
            # runs of whole groups from each group on, longest first, and skip past a match.
            i = 0
            while i < len(groups):
                for j in _card_ends(groups, i):
                    number = "".join(g.group() for g in groups[i : j + 1])
                    if _issued_card(number) and _luhn(number):
                        yield m.start() + groups[i].start(), m.start() + groups[j].end()
                        i = j
                        break
                i += 1


def _card_ends(groups: list[re.Match[str]], first: int) -> list[int]:
    """Indexes j, longest first, such that groups[first..j] hold 13-19 digits."""
    ends, digits = [], 0
    for j in range(first, len(groups)):
        digits += len(groups[j].group())
        if digits > 19:
            break
        if digits >= 13:
            ends.append(j)
    return ends[::-1]


def _luhn(number: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(number)):
        digit = int(char)
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def _issued_card(number: str) -> bool:
    """Does an issuer hand out numbers of this prefix and length?"""
    n, p2, p3, p4 = len(number), int(number[:2]), int(number[:3]), int(number[:4])
    if number[0] == "4":  # Visa
        return n in (13, 16, 19)
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:  # Mastercard
        return n == 16
    if p2 in (34, 37):  # American Express
        return n == 15
    if 300 <= p3 <= 305 or p2 in (36, 38, 39):  # Diners Club
        return 14 <= n <= 19
    if 3528 <= p4 <= 3589 or 2200 <= p4 <= 2204:  # JCB, Mir
        return 16 <= n <= 19
    if p2 in (50, 56, 57, 58) or number[0] == "6":  # Maestro, Discover, UnionPay, RuPay
        return 12 <= n <= 19
    return False


# --- iban --------------------------------------------------------------------------------

# ISO 13616 registry: country code -> IBAN length.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip
_IBAN = re.compile(
    _START + r"[A-Za-z]{2}[0-9]{2}(?:[ ]?[A-Za-z0-9]{4}){2,8}(?:[ ]?[A-Za-z0-9]{1,3})?" + _STOP
)
# Every registered BBAN format holds a run of 5+ digits (in its groups of four), and an IBAN
# spans at most 34 characters and 8 spaces on either side of it.
_IBAN_REACH = 48


def _iban(view: _Text) -> Iterator[Span]:
    text = view.plain
    for pos, endpos in view.near_runs(5, _IBAN_REACH, _IBAN_REACH):
        for m in _IBAN.finditer(text, pos, endpos):
            raw = m.group()
            length = _IBAN_LENGTHS.get(raw[:2].upper())
            if length is None:
                continue
            # A spaced IBAN may be followed by a word of four letters: cut at the country's
            # length, but only where a group ends.
            end, kept = 0, 0
            while end < len(raw) and kept < length:
                kept += raw[end] != " "
                end += 1
            whole_groups = end == len(raw) or raw[end] == " "
            if kept == length and whole_groups and _mod97(raw[:end].replace(" ", "").upper()):
                yield m.start(), m.start() + end


def _mod97(iban: str) -> bool:
    if not "02" <= iban[2:4] <= "98":
        return False
    moved = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


# --- us_ssn ------------------------------------------------------------------------------

_SSN = re.compile(
    _START + r"(?:(?<![0-9]-)[0-9]{3}-[0-9]{2}-[0-9]{4}(?!-[0-9])"
    r"|(?<![0-9] )[0-9]{3} [0-9]{2} [0-9]{4}(?! [0-9]))" + _STOP
)
_SSN_KEYWORD = re.compile(
    r"(?<![a-z])(?:ssn|ss\#|social\s+security(?:\s+(?:number|no\.?|\#))?)(?![a-z])"
    r"[^0-9\n]{0,20}?([0-9]{9}|[0-9]{3}\.[0-9]{2}\.[0-9]{4})(?![0-9])"
)


def _us_ssn(view: _Text) -> Iterator[Span]:
    for pos, endpos in view.near_runs(9, 1, 1):
        for m in _SSN.finditer(view.plain, pos, endpos):
            if _valid_ssn(_digits(m.group())):
                yield m.span()
    for pos, endpos in view.near_runs(9, 40, 1):
        for m in _SSN_KEYWORD.finditer(view.folded, pos, endpos):
            if _valid_ssn(_digits(m.group(1))):
                yield m.span(1)


def _valid_ssn(number: str) -> bool:
    area, group, serial = number[:3], number[3:5], number[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


# --- national_id -------------------------------------------------------------------------

_NINO = re.compile(
    _START + r"([A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z])[ \-]?[0-9]{2}[ \-]?[0-9]{2}[ \-]?[0-9]{2}"
    r"[ \-]?[A-D]" + _STOP,
    re.IGNORECASE,
)
_NINO_NEVER_ISSUED = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})
_ID_KEYWORDS = _Keywords(
    "passport",
    r"national\s+(?:id|identity|identification|insurance)",
    r"identity\s+(?:card|document|number)",
    r"id\s+(?:card|number|no)",
    r"person(?:al\s+(?:id|number)|alausweis|nummer)",
    r"driv(?:er'?s?|ing)\s+licen[cs]e",
    r"licen[cs]e\s+number",
    r"tax\s+(?:id|number)",
    r"citizen\s+(?:id|number)",
    r"social\s+insurance",
    r"voter\s+id",
    r"residence\s+permit",
    "ausweisnummer",
    "steuer-?id",
    "dni|nif|nino",
    "bsn",
    "pesel",
    r"codice\s+fiscale",
    "aadhaar",
)
_ID_VALUE = re.compile(_START + r"[A-Za-z0-9][A-Za-z0-9\-]{1,24}(?: [0-9]{2,6}){0,4}")
# How far after its keyword an identifier may start: "passport no. (expired):  X1234567".
_ID_REACH = 40


def _national_id(view: _Text) -> Iterator[Span]:
    text = view.plain
    for pos, endpos in view.near_runs(6, 3, 3):
        for m in _NINO.finditer(text, pos, endpos):
            if m.group(1).upper() not in _NINO_NEVER_ISSUED:
                yield m.span()
    if not view.runs:  # every identifier it reports holds 5+ digits
        return
    for keyword in _ID_KEYWORDS.find(view.folded):
        reach = keyword.end() + _ID_REACH
        for value in _ID_VALUE.finditer(text, keyword.end(), reach + 50):
            if value.start() > reach:
                break
            if sum(c.isdigit() for c in value.group()) >= 5:
                yield value.span()
                break


# --- secret ------------------------------------------------------------------------------


def _token(prefix: str, width: int, body: str) -> re.Pattern[str]:
    """A key that starts with a fixed prefix (`width` characters) and is a whole word."""
    # The boundary is checked after the prefix, so the engine still searches for the prefix
    # fast, and a key never starts inside a longer run of key characters: retrying every "eyJ"
    # of "eyJeyJeyJ..." against the rest of the run would take quadratic time.
    chars = r"[A-Za-z0-9_\-]"
    return re.compile(f"{prefix}(?<!{chars}.{{{width}}}){body}(?!{chars})")


# Case-sensitive: keys are issued with exactly these prefixes.
_TOKENS = [
    _token("A(?:KIA|SIA|GPA|IDA|ROA|IPA|NPA|NVA|BIA|CCA)", 4, "[A-Z0-9]{16}"),  # AWS key id
    _token("gh[pousr]_", 4, "[A-Za-z0-9]{30,255}"),  # GitHub
    _token("github_pat_", 11, "[A-Za-z0-9_]{22,255}"),
    _token("sk-", 3, r"[A-Za-z0-9_\-]{20,255}"),  # OpenAI, Anthropic
    _token("xox[abposr]-", 5, r"[A-Za-z0-9\-]{10,255}"),  # Slack
    _token("xapp-", 5, r"[A-Za-z0-9\-]{10,255}"),
    _token("AIza", 4, r"[A-Za-z0-9_\-]{35}"),  # Google
    _token("sk_(?:live|test)_", 8, "[A-Za-z0-9]{16,255}"),  # Stripe
    _token("rk_(?:live|test)_", 8, "[A-Za-z0-9]{16,255}"),
    _token("eyJ", 3, r"[A-Za-z0-9_\-]{5,}\.eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*"),  # JWT
]
_PEM = re.compile(r"-----BEGIN (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----")
_PEM_END = re.compile(r"-----END (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----")
_URL_PASSWORD = re.compile(r"://[^\s:/@]{1,64}:([^\s:/@]{3,128})@")
# The rest run on the lowercased text.
_AWS_SECRET = re.compile(
    r"aws_?secret_?access_?key[\"']?\s{0,3}[:=]\s{0,3}[\"']?([a-z0-9/+=]{40})(?![a-z0-9/+=])"
)
_BEARER = re.compile(r"bearer(?<![a-z]bearer)\s+([a-z0-9._~+/\-]{16,}=*)")
_SECRET_KEYWORDS = _Keywords(
    r"api[_\-]?key|apikey",
    r"access[_\-]?key",
    r"private[_\-]?key",
    "secret",
    "token",
    r"passw(?:or)?d",
    "pwd",
    "auth",
    r"credentials?",
    whole_words=False,
)
# After the keyword: the rest of the name (secret_key, token.value), a closing quote, an
# operator, then the value: quoted (spaces allowed) or bare.
_ASSIGNMENT = re.compile(
    r"(?:[_.\-][a-z0-9]+){0,3}(?![a-z0-9])[\"']?"
    r"(\s{0,3}(?::=|=>|[:=])\s{0,3}|\s+(?:is|was)\s*:?\s*)"
    r"(?:\"([^\"\n]{8,200})\"|'([^'\n]{8,200})'|`([^`\n]{8,200})`|([^\s\"'`,;]{8,200}))"
)
# Templates, the "YOUR_API_KEY" of documentation and redaction's "[SECRET_1]" (lowercased
# here; routing/redaction.py), not credentials.
_PLACEHOLDER = re.compile(
    r"<[^>]*>|\$\{.*\}|\{\{.*\}\}|%\(.*\)s|(.)\1*|(?:.*[^a-z])?your[_\-\s].*"
    r"|\[[a-z][a-z0-9_]*_[0-9]+\]",
    re.DOTALL,
)
_CODE_VALUE = re.compile(r"[()\[\]{}<>]|^[$%]")
_IDENTIFIER = re.compile(r"[a-z_][a-z_.]*")


def _secret(view: _Text) -> Iterator[Span]:
    text = view.plain
    for pattern in _TOKENS:
        for m in pattern.finditer(text):
            yield m.span()
    for m in _PEM.finditer(text):
        end = _PEM_END.search(text, m.end())
        yield m.start(), end.end() if end else m.end()
    for m in _URL_PASSWORD.finditer(text):
        yield m.span(1)
    folded = view.folded
    for pattern in (_AWS_SECRET, _BEARER):
        for m in pattern.finditer(folded):
            yield m.span(1)
    value = (0, 0)
    for keyword in _SECRET_KEYWORDS.find(folded):
        if value[0] <= keyword.start() < value[1]:  # "token=token=token=...": one value
            continue
        m = _ASSIGNMENT.match(folded, keyword.end())
        if m and _secret_value(m):
            value = m.span(next(g for g in (2, 3, 4, 5) if m.group(g) is not None))
            yield value


def _secret_value(m: re.Match[str]) -> bool:
    """Is an assigned value (lowercased) a credential rather than a placeholder or code?"""
    operator, bare = m.group(1), m.group(5)
    value = bare if bare is not None else next(g for g in m.groups()[1:] if g is not None)
    if _PLACEHOLDER.fullmatch(value.strip()):
        return False
    if bare is None:
        return True
    if _CODE_VALUE.search(bare):  # token = tokenizer(text), key = os.environ["KEY"]
        return False
    # "the token is validated", "token = next_token": prose and code, not a credential. A bare
    # word still counts in KEY=value form, the shape of .env files.
    return not (_IDENTIFIER.fullmatch(bare) and operator != "=")


# --- scanner -----------------------------------------------------------------------------

_BUILTINS: dict[str, Detect] = {
    "email": _email,
    "phone": _phone,
    "credit_card": _credit_card,
    "iban": _iban,
    "us_ssn": _us_ssn,
    "national_id": _national_id,
    "secret": _secret,
}


def _entity(kind: str) -> Detect:
    def detect(view: _Text) -> Iterator[Span]:
        yield from view.entities[kind]

    return detect


_BUILTINS.update({kind: _entity(kind) for kind in ENTITY_DETECTORS})
_NAME = re.compile(r"[a-z][a-z0-9_.\-]{0,62}")
# Quantifiers with a larger bound than this count as unbounded when judging nesting.
_LARGE_REPEAT = 16
_REPEATS = (_sre.MAX_REPEAT, _sre.MIN_REPEAT, getattr(_sre, "POSSESSIVE_REPEAT", None))


class PrivacyScanner:
    """Finds personal data and secrets in text. Immutable after construction; thread-safe."""

    def __init__(
        self,
        detectors: Iterable[str] = BUILTIN_DETECTORS,
        custom: Iterable[CustomPattern] = (),
    ) -> None:
        if isinstance(detectors, str):
            raise TypeError("detectors must be a collection of detector names, not one string")
        self._detectors: list[tuple[str, Detect]] = []
        for name in detectors:
            if name not in _BUILTINS:
                known = ", ".join(BUILTIN_DETECTORS)
                raise ValueError(f"unknown privacy detector {name!r}; known detectors: {known}")
            if name not in {n for n, _ in self._detectors}:
                self._detectors.append((name, _BUILTINS[name]))
        for pattern in custom:
            detect = _custom_detector(pattern)
            if pattern.name in self.names:
                raise ValueError(f"custom privacy pattern {pattern.name!r}: name given twice")
            self._detectors.append((pattern.name, detect))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self._detectors)

    def scan(self, text: str) -> list[Finding]:
        """Every finding, ordered by position; overlapping spans of one detector are merged."""
        view, spans = _Text(text), dict[str, list[Span]]()
        for name, detect in self._detectors:
            spans.setdefault(name, []).extend(detect(view))
        findings = []
        for name, found in spans.items():
            merged: list[list[int]] = []
            for start, end in sorted(found):
                if merged and start < merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], end)
                else:
                    merged.append([start, end])
            findings.extend(Finding(name, start, end) for start, end in merged)
        return sorted(findings, key=lambda f: (f.start, f.end, f.detector))

    def spans(self, text: str) -> list[SensitiveSpan]:
        """`scan`'s findings with the text they cover, for a redactor; never log these."""
        return [
            SensitiveSpan(f.start, f.end, f.detector, text[f.start : f.end])
            for f in self.scan(text)
        ]

    def first(self, text: str, *, patterns: bool = True, entities: bool = True) -> Finding | None:
        """Some finding, or None exactly when `scan` finds nothing; stops at the first match.

        Detectors run in the configured order, so it is not necessarily the leftmost finding.
        `patterns` / `entities` choose which built-in families run (custom patterns count as
        patterns).
        """
        view = _Text(text)
        for name, detect in self._detectors:
            if entities if name in ENTITY_DETECTORS else patterns:
                for start, end in detect(view):
                    return Finding(name, start, end)
        return None

    def sensitive(
        self, texts: Iterable[str], *, patterns: bool = True, entities: bool = True
    ) -> Finding | None:
        """The first finding in the first text that has one (offsets are within that text)."""
        for text in texts:
            finding = self.first(text, patterns=patterns, entities=entities)
            if finding is not None:
                return finding
        return None

    @property
    def has_entities(self) -> bool:
        """Does this scanner run any entity detector (the router's second, cloud-path pass)?"""
        return any(name in ENTITY_DETECTORS for name in self.names)


def _custom_detector(pattern: CustomPattern) -> Detect:
    where = f"custom privacy pattern {pattern.name!r}"
    if not _NAME.fullmatch(pattern.name):
        raise ValueError(f"{where}: name must be lowercase letters, digits, '_', '.', '-'")
    if pattern.name in _BUILTINS:
        raise ValueError(f"{where}: name is taken by a built-in detector")
    try:
        compiled = re.compile(pattern.regex)
        tree = _sre.parse(pattern.regex)
    except re.error as exc:
        raise ValueError(f"{where}: invalid regex: {exc}") from exc
    if tree.getwidth()[0] == 0:
        raise ValueError(f"{where}: regex can match the empty string")
    if _nested_repeat(tree.data, inside=False):
        raise ValueError(
            f"{where}: a repeated group contains another unbounded repeat, which can take "
            f"exponential time on some inputs; bound one of them (e.g. {{1,{_LARGE_REPEAT}}})"
        )

    def detect(view: _Text) -> Iterator[Span]:
        for m in compiled.finditer(view.raw):
            yield m.span()

    return detect


def _nested_repeat(items: list, inside: bool) -> bool:
    """Is there a large repeat inside another large repeat, as in (a+)+ or (\\w+\\s?)*?"""
    for op, arg in items:
        large = False
        if op in _REPEATS:
            large = arg[1] > _LARGE_REPEAT
            if large and inside:
                return True
        if any(_nested_repeat(sub.data, inside or large) for sub in _subpatterns(arg)):
            return True
    return False


def _subpatterns(arg: object) -> Iterator[_sre.SubPattern]:
    """The nested patterns of a parse-tree node (groups, branches, lookarounds, repeats)."""
    if isinstance(arg, _sre.SubPattern):
        yield arg
    elif isinstance(arg, tuple | list):
        for item in arg:
            yield from _subpatterns(item)
