"""Entity detectors: people, postal addresses, health details and contacts written out in words.

What a hospital, a law firm or an HR team calls private is mostly people, places and health,
which no regular expression for a number finds. These detectors read the text as words and
judge each candidate by its context:

- person: two or more capitalised words that the name lists know as first and last names
  (Faker's 86 locales: Latin, Cyrillic, Greek, Arabic, Hebrew, Indic and CJK scripts,
  romanised Chinese and Japanese), surname first or last, with particles ("van der", "bin",
  "de la") and initials; an honorific (Mr, Dr, Frau, Señora, Pani, ...) or a cue ("patient",
  "my colleague", "Dear") before a capitalised word; CJK surname + given name. A mention is
  *public* (and not reported) when its context says so and nothing says otherwise: "What did
  Barack Obama say", "Who was Ada Lovelace", "Angela Merkel's policies", "President ...".
  A private cue in the text (a patient, a relation, a letter, a date of birth) or another
  entity found beside it wins over a public one.
- address: a house number with a street type in English, French, Spanish, Portuguese,
  Italian, Polish, German, Dutch and Nordic grammar ("42 Elm Street", "Hauptstraße 5",
  "ul. Marszałkowska 12", "12 rue de la Paix", "Calle Mayor 5"), a UK, Canadian or US
  "State ZIP" postcode, Japanese and Chinese block numbers, and a "lives at"-style cue before a
  number and words. A street named without a number ("Elm Street" the film, "Wall Street") is
  not an address.
- health: a diagnosis (a curated list of conditions plus the clinical word endings -itis,
  -osis, -oma, -emia, -pathy, ...), a medicine (MedlinePlus names and brands) or an ICD-10
  code, reported only when the text ties it to someone: a disclosure ("I was diagnosed with",
  "she is on", "my asthma", "patient ... on metformin 500 mg"), a clinical note's shape ("42F",
  "45-year-old"), or a person found in the same text. Medical record numbers always count.
  "What are the symptoms of type 2 diabetes?" is a question, not a patient.
- obfuscated_contact: an e-mail address written to dodge filters ("anna dot schmidt at
  example dot com", "anna[at]example[dot]com", "anna (at) example.com").

Each finding is a span of the original text. Everything runs in linear passes over words
found by one regex; the name and medicine lists are loaded once per process.
"""

from __future__ import annotations

import gzip
import json
import re
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

ENTITY_DETECTORS: tuple[str, ...] = ("person", "address", "health", "obfuscated_contact")

Span = tuple[int, int]


def _words(block: str) -> list[str]:
    return block.split()


@dataclass(frozen=True)
class Lexicon:
    """The shipped word lists, casefolded (see build_entity_data for their sources)."""

    first_names: frozenset[str]
    last_names: frozenset[str]
    common_words: frozenset[str]
    # Countries, states and cities, whole: "Hong Kong" is two known names but no person.
    places: frozenset[str]
    medicines: frozenset[str]
    # The longest medicine name in words, to bound phrase look-ups.
    medicine_words: int


@cache
def lexicon() -> Lexicon:
    raw = files("edgefleet.routing").joinpath("models/entities-v1.json.gz").read_bytes()
    data = json.loads(gzip.decompress(raw))
    medicines = frozenset(data["medicines"])
    return Lexicon(
        first_names=frozenset(data["first_names"]),
        last_names=frozenset(data["last_names"]),
        common_words=frozenset(data["common_words"]) | _EXTRA_COMMON,
        places=frozenset(data["places"]),
        medicines=medicines,
        medicine_words=max(len(m.split()) for m in medicines),
    )


# Words the name lists hold that a prompt mostly uses otherwise: months, weekdays, places,
# and sentence openers that Faker's word lists lack.
_EXTRA_COMMON = frozenset(
    _words(
        """
    january february march april may june july august september october november december
    monday tuesday wednesday thursday friday saturday sunday christmas easter china india paris
    london berlin rome america england france germany japan russia israel jordan georgia kenya
    chad lebanon sydney victoria washington lincoln houston dallas austin phoenix denver
    orlando florence hi hello dear thanks please what who why how where when which is are was
    can will would could should does did do this that these those there here the a an and or
    but if then my our your his her their its me we you they it he she him them i new old big
    small great good best first last next other same such only just also very dr mr mrs ms prof
    sir madam st saint san santa mount lake fort port cape apple amazon google microsoft tesla
    oracle meta intel nvidia android windows linux python java ruby rust go swift kotlin docker
    kubernetes helm grafana prometheus
        """
    )
)

# --- words -------------------------------------------------------------------------------

_WORD = re.compile(r"[^\W\d_]+(?:['\u2019\-][^\W\d_]+)*")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]+")
_POSSESSIVE = re.compile(r"['\u2019]s?$")


@dataclass(frozen=True)
class Word:
    start: int
    end: int
    text: str
    folded: str

    @property
    def capitalised(self) -> bool:
        first = self.text[0]
        # Scripts without case (Arabic, Hebrew, Devanagari) count as capitalised: a name
        # there is recognised by the lists alone.
        return first.isupper() or not first.islower()


def words(text: str) -> list[Word]:
    """The words of a text in scripts written with spaces; CJK runs are left to _cjk_names."""
    spaced = text if text.isascii() else _CJK.sub(lambda m: " " * len(m.group()), text)
    return [
        Word(m.start(), m.end(), m.group(), _POSSESSIVE.sub("", m.group().casefold()))
        for m in _WORD.finditer(spaced)
    ]


def _known(lex: Lexicon, folded: str) -> tuple[bool, bool]:
    """Is a word (or each part of a hyphenated one) a known first name, last name?"""
    parts = [folded, *folded.split("-")] if "-" in folded else [folded]
    return (
        any(p in lex.first_names for p in parts),
        any(p in lex.last_names for p in parts),
    )


# --- person ------------------------------------------------------------------------------

_PARTICLES = frozenset(
    _words(
        """
    van von der den de del della di da dos das du la le bin binti ibn al el ben ter ten y
        """
    )
)
_HONORIFICS = frozenset(
    _words(
        """
    mr mrs ms miss mx dr doctor prof professor herr frau sr sra srta señor señora señorita mme
    madame monsieur mlle pan pani signor signora sig dott dottssa dra
        """
    )
)
# Before a name: this person is someone the writer knows, treats or employs.
_PRIVATE_BEFORE = re.compile(
    r"(?<![\w])(?:patient|pt\.?|client|colleague|co-?worker|employee|tenant|customer|candidate|"
    r"applicant|student|pupil|resident|member|subscriber|claimant|defendant|plaintiff|"
    r"my (?:\w+ )?(?:wife|husband|son|daughter|mother|mum|mom|father|dad|brother|sister|"
    r"boss|manager|friend|neighbou?r|partner|uncle|aunt|cousin|grandmother|grandfather|"
    r"grandma|grandpa|child|kid|nephew|niece|teacher|landlord|assistant|team ?mate|report)|"
    r"named|called|dear|hi|hello|hey|attn:?|signed|sincerely,?|regards,?|患者|同事)"
    r"[\s,:]*$",
    re.IGNORECASE,
)
# Anywhere in the text: a message about a private person.
_PRIVATE_TEXT = re.compile(
    r"\b(?:patient|pt\b|date of birth|d\.?o\.?b\b|born on|my (?:\w+ )?(?:wife|husband|son|"
    r"daughter|mother|mum|mom|father|dad|brother|sister|boss|manager|friend|neighbou?r|"
    r"partner|colleague|client|tenant|employee)|colleague|co-?worker|employee|tenant|"
    r"applicant|candidate|performance review|disciplinary|payroll|salary|"
    r"reference letter|recommendation letter|cover letter|resume|cv\b|"
    r"draft (?:a |an )?(?:letter|e-?mail|message|reply|note)|write (?:a |an )?(?:letter|e-?mail|"
    r"message|reply|note) to|e-?mail (?:to|from)|letter (?:to|from)|message (?:to|from)|"
    r"reply to|meeting with|call with|interview with my)"
)
# Before a name, anywhere in its sentence: a question about a public figure.
_PUBLIC_QUESTION = re.compile(
    r"\b(?:what did|what does|what do|what has|what would|what were|what is|what was|"
    r"who is|who was|who were|why is|why was|why did|how did|how does|how has|when did|"
    r"compare|contrast|according to|biography|famous|history of|legacy|plot of|"
    r"(?:reforms|policies|ideas|works|life|death|reign|books|novels|films|songs|paintings|"
    r"views|speeches|theories|philosophy|teachings|quotes|career|presidency|music|poems) of)\b"
)
# Just before a name: a public role.
_PUBLIC_BEFORE = re.compile(
    r"(?<![\w])(?:president|prime minister|premier|chancellor|senator|congress(?:man|woman)|"
    r"minister|secretary of state|governor|mayor|king|queen|prince|princess|pope|emperor|empress|"
    r"ceo|founder|chairman|author|novelist|writer|poet|playwright|painter|artist|composer|"
    r"singer|rapper|musician|band|actor|actress|director|filmmaker|physicist|chemist|"
    r"mathematician|scientist|philosopher|economist|historian|footballer|striker|player|"
    r"coach|champion|athlete|astronaut|general|admiral|saint|st\.|nobel laureate|"
    r"did|has|have|does|quotes? (?:by|from)|style of|speech by|book by|novel by|poem by|"
    r"film by|movie by|song by|album by|paintings? by|by|theory of|era of|assassination of|"
    r"between|like)"
    r"[\s,:]*$"
)
# After a name: what public figures are asked about.
_PUBLIC_AFTER = re.compile(
    r"^(?:['\u2019]s?)?\s*(?:[\w'\u2019\-]+\s+){0,2}?(?:say|said|says|think|thought|believe[sd]?|wr[io]te|"
    r"famous|speech|speeches|album|albums|novel|novels|book|books|poem|poems|film|films|movie|"
    r"movies|song|songs|lyrics|theory|theorem|presidency|administration|government|cabinet|"
    r"policy|policies|campaign|quote|quotes|career|legacy|biography|painting|paintings|work|"
    r"works|tweets?|posts?|views|position|stance|contribution|contributions|discover(?:y|ies|"
    r"ed)?|invent(?:ion|ions|ed)?|found(?:ed)?|died|born in|reign|ruled?|dynasty|law|laws|"
    r"equation|principle|effect|paradox|conjecture|prize|award|nobel|won|win|wins|play|"
    r"played|sang|directed|starred|era|leadership|reforms?|doctrine|philosophy|teachings|"
    r"music|style|character|role|record|goals?|scored?|match|team|net worth|age|height|"
    r"wife|husband|label|bag|bags|jacket|perfume|fragrance|jeans|shirt|polo|shoes|sneakers|"
    r"watch|car|suv|truck|bottle|whisky|whiskey|bourbon|beer|wine|laptop|phone|tablet|model|"
    r"edition|series|brand|store|shop|collection|products?|stock|shares|earnings|outlook|"
    r"[a-z]*[0-9][a-z0-9]*)\b"
)
# A possessive before a capitalised title: "Adichie's Half of a Yellow Sun" is a work.
_TITLE_AFTER = re.compile(r"['\u2019]s\s+[A-Z]")
# A capitalised word in upper case throughout is a product, model or acronym ("EQS", "XPS").
_STREET_AFTER = re.compile(
    r"\s+(?i:street|st|avenue|ave|road|rd|lane|ln|drive|boulevard|blvd|way|close|square|"
    r"place|station|park|bridge|hall|university|college|school|hospital|foundation|institute|"
    r"museum|airport|prize|award|inc|ltd|llc|gmbh|corp|group|&)\b"
)
_PRIVATE_REACH = 60
_PUBLIC_BEFORE_REACH = 60
_PUBLIC_AFTER_REACH = 40


def _person_candidates(text: str, found: list[Word]) -> Iterator[Span]:
    lex = lexicon()
    i = 0
    while i < len(found):
        word = found[i]
        end = _full_name_end(found, i, text) if word.capitalised else None
        if end is not None:
            yield word.start, found[end].end
            i = end + 1
            continue
        if word.folded.rstrip(".") in _HONORIFICS and i + 1 < len(found):
            after = _name_after_honorific(found, i, text)
            if after is not None:
                yield word.start, found[after].end
                i = after + 1
                continue
        if (
            _name_word(word)
            and word.folded not in lex.common_words
            and _PRIVATE_BEFORE.search(text, max(0, word.start - 40), word.start)
        ):
            # After "my colleague", "patient", "Dear": the capitalised words that follow.
            last = i
            while (
                last + 1 < len(found)
                and last - i < 2
                and _name_word(found[last + 1])
                and found[last + 1].folded not in lex.common_words
                and _adjacent(text, found[last], found[last + 1])
            ):
                last += 1
            yield word.start, found[last].end
            i = last + 1
            continue
        i += 1
    yield from _cjk_names(text)


def _adjacent(text: str, left: Word, right: Word) -> bool:
    gap = text[left.end : right.start]
    return gap in (" ", "-", ". ", "\u00a0") and "\n" not in gap


def _name_word(word: Word) -> bool:
    return word.capitalised and not (len(word.text) > 1 and word.text.isupper())


def _full_name_end(found: list[Word], i: int, text: str) -> int | None:
    """Index of the last word of a full name starting at found[i], or None."""
    lex = lexicon()
    first = found[i]
    if not _name_word(first) or first.folded in lex.common_words:
        return None
    known_first, known_last = _known(lex, first.folded)
    unknown_first = not (known_first or known_last)
    if unknown_first and (i == 0 or not found[i - 1].text[0].islower()):
        # An unknown word opens a name only mid-sentence, after a lowercase word.
        return None
    end, j = None, i + 1
    while j < len(found) and j - i <= 4 and _adjacent(text, found[j - 1], found[j]):
        word = found[j]
        if word.folded in _PARTICLES and not word.capitalised:
            j += 1
            continue
        if not _name_word(word):
            break
        if len(word.text) == 1:  # an initial: "John F. Kennedy"
            j += 1
            continue
        in_first, in_last = _known(lex, word.folded)
        if unknown_first:
            # "Oluwaseun Adeyemi": an unknown given name before a known, unambiguous surname.
            if in_last and word.folded not in lex.common_words:
                end = j
            break
        if in_first or in_last:  # "Bashir Ahmadi": lists disagree on which part is which
            end = j
        else:
            # An unknown surname after a known, unambiguous first name: "Agnieszka Xyzowska".
            unambiguous = first.folded not in lex.last_names
            if known_first and unambiguous and word.folded not in lex.common_words:
                end = j
            break
        known_first |= in_first
        known_last |= in_last
        j += 1
    return end


def _a_place(text: str, found: list[Word], starts: list[int], start: int, end: int) -> bool:
    """Is the candidate part of a place's name, with a word either side at most?"""
    lex = lexicon()
    first, last = bisect_left(starts, start), bisect_left(starts, end) - 1
    if first > last:
        return False
    for left in range(max(0, first - 2), first + 1):
        for right in range(last, min(len(found), last + 3)):
            if text[found[left].start : found[right].end].casefold() in lex.places:
                return True
    return False


def _name_after_honorific(found: list[Word], i: int, text: str) -> int | None:
    lex = lexicon()
    end, j = None, i + 1
    while j < len(found) and j - i <= 3:
        gap = text[found[j - 1].end : found[j].start]
        if gap.strip(" .") or "\n" in gap:
            break
        word = found[j]
        if not word.capitalised or (word.folded in lex.common_words and end is None):
            break
        end = j
        j += 1
    return end


def _cjk_names(text: str) -> Iterator[Span]:
    """A known surname followed by a known given name, within a run of CJK characters."""
    lex = lexicon()
    for run in _CJK.finditer(text):
        chars, k = run.group(), 0
        while k < len(chars):
            match = None
            for surname_len in (2, 1):
                if chars[k : k + surname_len] not in lex.last_names:
                    continue
                for given_len in (2, 1):
                    given = chars[k + surname_len : k + surname_len + given_len]
                    if len(given) == given_len and given in lex.first_names:
                        match = surname_len + given_len
                        break
                if match:
                    break
            if match:
                yield run.start() + k, run.start() + k + match
                k += match
            else:
                k += 1


def _is_public(text: str, start: int, end: int) -> bool:
    sentence = re.split(r"[.!?\n]\s", text[max(0, start - 200) : start])[-1].lower()
    before = sentence[-_PUBLIC_BEFORE_REACH:]
    after = text[end : end + _PUBLIC_AFTER_REACH]
    return bool(
        _PUBLIC_QUESTION.search(sentence)
        or _PUBLIC_BEFORE.search(before)
        or _PUBLIC_AFTER.search(after.lower())
        or _TITLE_AFTER.match(after)
        or _TITLE_AFTER.match(text[end - 2 : end + 3])
    )


def _not_a_person(text: str, found: list[Word], starts: list[int], start: int, end: int) -> bool:
    """A street, a place or an organisation that happens to be spelt like a name."""
    before = text[max(0, start - 12) : start].lower()
    street_before = re.search(rf"(?i:{_STREET_PREFIX})\s+(?:\w+\s+)?$", before)
    return bool(
        _STREET_AFTER.match(text, end) or street_before or _a_place(text, found, starts, start, end)
    )


def _is_private(text: str, start: int) -> bool:
    before = text[max(0, start - _PRIVATE_REACH) : start].lower()
    return bool(_PRIVATE_BEFORE.search(before))


# --- address -----------------------------------------------------------------------------

_NUMBER = r"[0-9]{1,5}[A-Za-z]?(?:[/\-][0-9]{1,4}[A-Za-z]?)?"
# Every repeat is bounded, and patterns start at word or number boundaries: a run of 50,000
# letters or digits must not be retried from each of its characters to its end.
_NAME_WORD = r"[A-ZÀ-ÖØ-Þ0-9][\w'\u2019.\-]{0,40}"
_STREET_SUFFIX = (
    r"(?:street|st|avenue|ave|av|road|rd|lane|ln|drive|dr|boulevard|blvd|way|court|ct|"
    r"place|pl|terrace|ter|close|crescent|cres|square|sq|parkway|pkwy|highway|hwy|circle|"
    r"cir|trail|row|mews|grove|gardens|walk|rise|hill|parade|esplanade|quay|wharf|"
    r"embankment|view|green)\.?"
)
_STREET_PREFIX = (
    r"(?:rue|avenue|av\.|boulevard|bd|bvd|place|chemin|allée|impasse|quai|route|cours|"
    r"calle|c/|avenida|avda\.?|paseo|plaza|carrer|camino|rua|travessa|largo|praça|"
    r"alameda|via|viale|piazza|corso|vicolo|strada|ul\.|ulica|al\.|aleja|pl\.|plac|leoforos|odos|"
    r"os\.|osiedle|ulice|náměstí|utca)"
)
_STREET_COMPOUND = (
    r"(?<![\w'\u2019\-])[A-ZÄÖÜÅÆØ][\w'\u2019\-]{0,40}?(?:straße|strasse|str\.|weg|gasse|platz|allee|ring|damm|ufer|"
    r"chaussee|steig|pfad|straat|laan|gracht|plein|kade|singel|dijk|steeg|gatan|vägen|gränd|"
    r"torget|gata|gate|gaten|veien|vegen|vei|vej|gade|katu|tie|kuja|utca|út)"
)
_ADDRESSES = [
    # 42 Elm Street, 221B Baker St., 1600 Pennsylvania Avenue NW
    re.compile(
        rf"(?<![\w.,])({_NUMBER}),?\s+(?:{_NAME_WORD}\s+){{0,3}}?{_NAME_WORD}\s+"
        rf"(?i:{_STREET_SUFFIX})(?![\w])"
    ),
    # 12 rue de la Paix, 5 Calle Mayor
    re.compile(
        rf"(?<![\w.,])({_NUMBER}),?\s+(?i:{_STREET_PREFIX})\s+(?:[\w'\u2019\-]+\s+){{0,3}}?"
        rf"{_NAME_WORD}"
    ),
    # Calle Mayor 5, ul. Marszałkowska 12, Via Roma 10, rue de Rivoli 5
    re.compile(
        rf"(?<![\w])(?i:{_STREET_PREFIX})\s+(?:[\w'\u2019\-]+\s+){{0,3}}?{_NAME_WORD},?\s+"
        rf"(?:nr\.?\s*|n[º°o]\.?\s*)?({_NUMBER})(?![\w])"
    ),
    # Hauptstraße 5, Kerkstraat 12, Storgatan 3
    re.compile(rf"(?<![\w])({_STREET_COMPOUND}),?\s+(?:nr\.?\s*)?({_NUMBER})(?![\w])"),
    # UK and Canadian postcodes
    re.compile(r"(?<![\w])[A-Z]{1,2}[0-9][A-Z0-9]? ?[0-9][ABD-HJLNP-UW-Z]{2}(?![\w])"),
    re.compile(r"(?<![\w])[ABCEGHJ-NPRSTVXY][0-9][A-Z] ?[0-9][A-Z][0-9](?![\w])"),
    # Springfield, IL 62704
    re.compile(
        r"[A-Z][a-z]+,\s+(?:A[KLRZ]|C[AOT]|D[CE]|FL|GA|HI|I[ADLN]|K[SY]|LA|M[ADEINOST]|"
        r"N[CDEHJMVY]|O[HKR]|PA|RI|S[CD]|T[NX]|UT|V[AT]|W[AIVY])\s+[0-9]{5}(?:-[0-9]{4})?"
        r"(?![\w])"
    ),
    # 〒100-0001, 千代田区千代田1-1, 1丁目2番3号, 中山路123号
    re.compile(r"〒\s?[0-9]{3}-[0-9]{4}"),
    re.compile(
        r"(?<![0-9\uff10-\uff19一二三四五六七八九十])[0-9\uff10-\uff19一二三四五六七八九十]{1,4}丁目"
        r"(?:[0-9\uff10-\uff19]{1,4}番地?)?(?:[0-9\uff10-\uff19]{1,4}号)?"
    ),
    re.compile(
        r"[\u4e00-\u9fff]{1,8}(?:路|街|道|巷|弄)(?<![0-9\uff10-\uff19])[0-9\uff10-\uff19]{1,5}号"
    ),
]
# A cue, then a number and up to four words: "I live at 17 Kettle", "ship to 5 Oak".
_ADDRESS_CUE = re.compile(
    r"(?i:\b(?:live[sd]? at|living at|lives on|reside[sd]? at|home address|my address|"
    r"address is|address:|ship(?:ped)? to|deliver(?:ed)? to|send it to|located at|"
    r"anschrift|adresse|dirección|indirizzo|adres|endereço))\s*"
    rf"({_NUMBER},?\s+(?:{_NAME_WORD}\s*){{1,4}})"
)


def _addresses(text: str) -> Iterator[Span]:
    for pattern in _ADDRESSES:
        for m in pattern.finditer(text):
            number = m.group(1) if pattern.groups else ""
            if number and _looks_like_year_or_amount(text, m.start(1), number):
                continue
            yield m.span()
    for m in _ADDRESS_CUE.finditer(text):
        yield m.span(1)


def _looks_like_year_or_amount(text: str, start: int, number: str) -> bool:
    """ "the 1929 Wall Street crash", "$40 Main Street": a year or a price, not a house."""
    before = text[max(0, start - 6) : start].lower()
    if any(c in before[-2:] for c in "$€£"):
        return True
    year = len(number) == 4 and number.isdigit() and 1800 <= int(number) <= 2099
    return year and bool(re.search(r"\b(?:the|in|of|since|year|from|by)\s+$", before))


# --- health ------------------------------------------------------------------------------

_CONDITIONS = re.compile(
    r"\b(?:(?:type [12] |gestational )?diabetes(?: mellitus)?|t[12]dm|hypertension|"
    r"hypotension|asthma|copd|emphysema|cancer|carcinoma|melanoma|lymphoma|leukaemia|"
    r"leukemia|sarcoma|tumou?r|metastas[ie]s|chemotherapy|radiotherapy|hiv|aids|hepatitis|"
    r"cirrhosis|tuberculosis|pneumonia|covid(?:-19)?|influenza|sepsis|stroke|"
    r"myocardial infarction|heart attack|heart failure|atrial fibrillation|afib|angina|"
    r"arrhythmia|epilepsy|seizures?|migraines?|multiple sclerosis|parkinson'?s|"
    r"alzheimer'?s|dementia|autism|adhd|depression|major depressive disorder|"
    r"anxiety disorder|panic disorder|bipolar(?: disorder)?|schizophrenia|ptsd|ocd|"
    r"anorexia|bulimia|eating disorder|suicidal|self-harm|substance use disorder|"
    r"alcoholism|addiction|opioid use|overdose|obesity|anaemia|anemia|sickle cell|"
    r"haemophilia|hemophilia|cystic fibrosis|lupus|rheumatoid arthritis|osteoporosis|"
    r"crohn'?s(?: disease)?|ulcerative colitis|celiac disease|coeliac disease|"
    r"kidney disease|renal failure|dialysis|transplant|hypothyroidism|hyperthyroidism|"
    r"endometriosis|infertility|ivf|pregnan(?:t|cy)|miscarriage|abortion|"
    r"std|sti|chlamydia|gonorrh(?:o)?ea|syphilis|herpes|hpv|"
    r"fracture|concussion|disability|psychosis|insomnia|sleep apnea|glaucoma|cataract|"
    r"insulin|inhaler|antidepressants?|antibiotics|chemo|blood pressure|blood sugar|"
    r"cholesterol|chest pain|shortness of breath|bleeding|fever|rash|lump|palpitations|"
    r"dizziness|nausea|vomiting|headaches?|back pain|weight loss|allergic reaction|allergy)\b"
)
# Clinical word endings: arthritis, neuropathy, glioma, bacteraemia, hemiplegia.
_CLINICAL_ENDING = re.compile(
    r"\b[a-z]{3,}(?:itis|osis|oma|a?emia|pathy|plegia|algia|ectomy|otomy)\b"
)
_NOT_CLINICAL = frozenset(
    _words(
        """
    diagnosis prognosis osmosis symbiosis hypnosis diploma aroma sperm stoma coma idioma aroma
    panorama plasma trauma karma enigma dogma stigma comma dilemma chroma telepathy empathy
    sympathy apathy antipathy homeopathy dichotomy anatomy academia bohemia mesopotamia
        """
    )
)
_ICD10 = re.compile(r"\b[A-TV-Z][0-9]{2}\.[0-9A-Z]{1,4}\b")
_ICD_CUE = re.compile(r"\b(?:icd(?:-?10)?|diagnosis code|dx code|code)\b")
_RECORD_NUMBER = re.compile(
    r"\b(?:mrn|medical record(?: number| no\.?| #)?|patient (?:id|number|no\.?)|"
    r"nhs (?:number|no\.?)|chart (?:number|no\.?)|hospital (?:number|no\.?)|member id|"
    r"health (?:card|insurance) (?:number|no\.?))\s*[:#]?\s*([a-z0-9][a-z0-9\- ]{4,20}[0-9])"
)
_DOSE = re.compile(r"\b[0-9]+(?:\.[0-9]+)?\s?(?:mg|mcg|µg|ug|ml|units?|iu)\b")
# Whose health: a disclosure or a clinical note, in the same sentence as the term.
_DISCLOSURE = re.compile(
    r"\b(?:diagnosed|suffer(?:s|ed|ing)?|prescribed|taking|takes|started on|switched to|"
    r"came off|stopped taking|is on|was on|am on|are on|treated for|treatment for|"
    r"recovering from|living with|lives with|history of|hx of|h/o|positive for|"
    r"tested positive|relapse|flare|admitted|discharged|presents? with|presenting with|"
    r"complains? of|c/o|has had|have had|had a|has|have|take|took)\b"
)
_WHOSE = re.compile(
    r"\b(?:i|i'm|i've|i'd|me|my|mine|he|she|his|her|him|they|their|we|our|"
    r"the patient|patient|pt|my (?:\w+ )?(?:son|daughter|wife|husband|mother|mum|mom|father|"
    r"dad|child|kid|brother|sister|partner|friend|colleague|client))\b"
)
_POSSESSIVE_TERM = re.compile(
    r"\b(?:my|his|her|their|our|i'm|i am|i was|she's|she is|she was|he's|he is|he was)\s+"
    r"(?:\w+\s+)?$"
)
_CLINICAL_NOTE = re.compile(
    r"\b[0-9]{1,3}\s?(?:-?year-?old|yo|y/o|y\.o\.|[mf]\b)|\b(?:dob|d\.o\.b\.?)\b|"
    r"\b(?:pt|patient)\b[:\s]"
)
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|\n|$)")


def _health_terms(folded: str, found: list[Word]) -> Iterator[Span]:
    for m in _CONDITIONS.finditer(folded):
        yield m.span()
    for m in _CLINICAL_ENDING.finditer(folded):
        if m.group() not in _NOT_CLINICAL:
            yield m.span()
    lex = lexicon()
    for i, word in enumerate(found):
        phrase = word.folded
        for j in range(i, min(i + lex.medicine_words, len(found))):
            if j > i:
                phrase = f"{phrase} {found[j].folded}"
            if phrase in lex.medicines:
                yield word.start, found[j].end
    for m in _ICD10.finditer(folded.upper()):
        if _ICD_CUE.search(folded, max(0, m.start() - 30), m.start()):
            yield m.span()


def _health(text: str, folded: str, found: list[Word], has_person: bool) -> Iterator[Span]:
    for m in _RECORD_NUMBER.finditer(folded):
        yield m.span(1)
    terms = sorted(_health_terms(folded, found))
    if not terms:
        return
    if has_person or _CLINICAL_NOTE.search(folded):
        yield from terms
        return
    for sentence in _SENTENCE.finditer(folded):
        inside = [t for t in terms if sentence.start() <= t[0] < sentence.end()]
        if not inside:
            continue
        clause = sentence.group()
        personal = bool(_WHOSE.search(clause) and _DISCLOSURE.search(clause))
        for start, end in inside:
            possessed = _POSSESSIVE_TERM.search(folded, max(sentence.start(), start - 30), start)
            dosed = _DOSE.search(folded, end, min(len(folded), end + 20))
            if personal or possessed or (dosed and _WHOSE.search(clause)):
                yield start, end


# --- obfuscated contact ------------------------------------------------------------------

_AT = r"(?:\s*[\[({<]\s*(?:at|@)\s*[\])}>]\s*|\s+(?:at|AT|At)\s+|\s+@\s+|\s*\(@\)\s*)"
_DOT = r"(?:\s*[\[({<]\s*(?:dot|\.)\s*[\])}>]\s*|\s+(?:dot|DOT|Dot)\s+|\.)"
_LISTED_TLD = (
    r"(?:com|org|net|edu|gov|mil|int|info|biz|io|ai|co|app|dev|me|eu|uk|de|fr|es|it|nl|be|"
    r"at|ch|pl|cz|se|no|dk|fi|pt|ie|ru|ua|jp|cn|kr|in|au|nz|ca|us|br|mx|ar|za|tr|gr|il|"
    r"sg|hk|tw)"
)
_OBFUSCATED_EMAIL = re.compile(
    rf"(?<![\w.+%\-])([A-Za-z0-9][A-Za-z0-9_%+\-]{{0,63}}(?:{_DOT}[A-Za-z0-9_%+\-]{{1,63}}){{0,3}})"
    rf"({_AT})([A-Za-z0-9\-]{{1,63}}(?:{_DOT}[A-Za-z0-9\-]{{1,63}}){{0,3}}({_DOT})([A-Za-z]{{2,6}}))"
    rf"(?![\w])"
)
_TLD = re.compile(_LISTED_TLD)
_PLAIN_AT = re.compile(r"\s+(?:at|AT|At)\s+")
_PLAIN_DOMAIN = re.compile(r"[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+")


def _obfuscated_contacts(text: str) -> Iterator[Span]:
    lex = lexicon()
    for m in _OBFUSCATED_EMAIL.finditer(text):
        local, at, domain = m.group(1), m.group(2), m.group(3)
        # A top-level domain after a spelt "dot" may be any; after a real "." a known one.
        if m.group(4) == "." and not _TLD.fullmatch(m.group(5).lower()):
            continue
        spelled = not _PLAIN_AT.fullmatch(at) or not _PLAIN_DOMAIN.fullmatch(domain)
        # "I work at google.com" is not an address: with a plain " at " and a plain domain,
        # the local part must read like a mailbox (a name, or dots, digits, underscores).
        mailbox = (
            local.casefold() in lex.first_names
            or local.casefold() in lex.last_names
            or any(c in local for c in "._0123456789")
            or " dot " in local.lower()
        )
        if spelled or mailbox:
            yield m.span()


# --- all of them, once per text ----------------------------------------------------------


def find_entities(text: str) -> dict[str, list[Span]]:
    """Spans of each entity kind in `text` (keys: ENTITY_DETECTORS), judged together.

    A person counts when a private cue or another entity vouches for them, or when nothing
    in their sentence makes them a public figure.
    """
    found = words(text)
    folded = text.lower()
    if len(folded) != len(text):  # "İ" lowers to two characters
        folded = "".join(c.lower() if len(c.lower()) == 1 else c for c in text)
    addresses = list(_addresses(text))
    contacts = list(_obfuscated_contacts(text))
    starts = [word.start for word in found]
    candidates = [
        (start, end)
        for start, end in _person_candidates(text, found)
        if not _not_a_person(text, found, starts, start, end)
    ]
    private_text = bool(_PRIVATE_TEXT.search(folded))
    health_alone = list(_health(text, folded, found, has_person=False))
    vouched = private_text or bool(addresses or contacts or health_alone)
    persons = [
        (start, end)
        for start, end in candidates
        if vouched or _is_private(text, start) or not _is_public(text, start, end)
    ]
    health = list(_health(text, folded, found, has_person=True)) if persons else health_alone
    return {
        "person": persons,
        "address": addresses,
        "health": health,
        "obfuscated_contact": contacts,
    }
