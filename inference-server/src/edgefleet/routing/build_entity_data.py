"""Build the word lists the entity detectors ship with (routing/models/entities-v1.json.gz).

Run once by a developer, never at run time: `python -m edgefleet.routing.build_entity_data`
with the dev extra installed (Faker, drug-named-entity-recognition). The product reads only
the written file, so a router needs neither package nor any download.

Sources, both MIT-licensed (their notices are copied into the file's `licences`):

- Faker (joke2k/faker): the first and last names of its 86 person locales (Latin, Cyrillic,
  Greek, Arabic, Hebrew, Devanagari, CJK scripts and romanised Japanese/Chinese names), the
  countries, states and cities of its address locales, and the common words of its lorem
  locales (the names that are also everyday words, like "Will").
- drug-named-entity-recognition (Fast Data Science): medicine names and brands from
  MedlinePlus, with DrugBank and MeSH identifiers.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import importlib
import importlib.metadata
import json
import pickle
import pkgutil
import re
from pathlib import Path

OUTPUT = Path(__file__).parent / "models" / "entities-v1.json.gz"
_LETTERS = re.compile(r"[^\W\d_]{2,}")
# Chinese, Japanese and Korean names are written with one- and two-character parts.
_CJK = re.compile(r"[\u3400-\u9fff\uac00-\ud7af]+")
_EVERYDAY_WORD_LOCALES = ("en_US", "de_DE", "fr_FR", "it_IT", "nl_NL", "da_DK")


def _faker_names() -> tuple[set[str], set[str]]:
    import faker.providers.person as person

    first: set[str] = set()
    last: set[str] = set()
    for module in pkgutil.iter_modules(person.__path__):
        provider = importlib.import_module(f"{person.__name__}.{module.name}").Provider
        for attribute in dir(provider):
            if not attribute.startswith(("first_", "last_")):
                continue
            value = getattr(provider, attribute)
            if isinstance(value, tuple | list | dict) and all(isinstance(v, str) for v in value):
                into = first if attribute.startswith("first_") else last
                for name in value:
                    # "Ó Crimín", "TZU-HSIANG": each word of a name counts on its own.
                    into.update(word.casefold() for word in _LETTERS.findall(name))
                    into.update(_CJK.findall(name))
    return first, last


def _faker_places() -> set[str]:
    """Countries, states and cities, whole and casefolded: "Hong Kong" is not a person."""
    import faker.providers.address as address

    places: set[str] = set()
    for module in pkgutil.iter_modules(address.__path__):
        provider = importlib.import_module(f"{address.__name__}.{module.name}").Provider
        for attribute in ("countries", "cities", "city_names", "states", "provinces", "regions"):
            value = getattr(provider, attribute, ())
            if isinstance(value, tuple | list | dict):
                places.update(v.casefold() for v in value if isinstance(v, str))
    return places


def _faker_common_words() -> set[str]:
    import faker.providers.lorem as lorem

    words: set[str] = set()
    # The locales whose word lists are everyday vocabulary; others hold lorem ipsum or
    # sample prose full of people's names ("Antonio", "Jakub"), which must stay names.
    for locale in _EVERYDAY_WORD_LOCALES:
        provider = importlib.import_module(f"{lorem.__name__}.{locale}").Provider
        words.update(w.casefold() for w in getattr(provider, "word_list", ()) if " " not in w)
    return words


def _medicines(common: set[str]) -> set[str]:
    import drug_named_entity_recognition

    folder = Path(drug_named_entity_recognition.__file__).parent
    with bz2.open(folder / "drug_ner_dictionary.pkl.bz2") as file:
        data = pickle.load(file)
    names = set()
    canonical, about = data["drug_variant_to_canonical"], data["drug_canonical_to_data"]
    # Names and brands of medicines with a MedlinePlus page: the other entries are mostly
    # chemical synonyms and protein classes, which a prompt about chemistry uses freely.
    for variant in data["drug_variant_to_variant_data"]:
        if not any("medline_plus_id" in about.get(c, {}) for c in canonical.get(variant, ())):
            continue
        name = variant.casefold().strip()
        if len(name) >= 4 and name not in common and _LETTERS.fullmatch(name.replace(" ", "")):
            names.add(name)
    return names


def _licence(distribution: str) -> str:
    files = importlib.metadata.files(distribution) or []
    for file in files:
        if file.name.upper().startswith("LICEN"):
            return file.read_text()
    raise SystemExit(f"{distribution}: no licence file found")


def build() -> dict:
    first, last = _faker_names()
    common = _faker_common_words()
    return {
        "sources": {
            "faker": importlib.metadata.version("faker"),
            "drug-named-entity-recognition": importlib.metadata.version(
                "drug-named-entity-recognition"
            ),
        },
        "licences": {
            "faker": _licence("faker"),
            "drug-named-entity-recognition": _licence("drug-named-entity-recognition"),
        },
        "first_names": sorted(first),
        "last_names": sorted(last),
        "common_words": sorted(common),
        "places": sorted(_faker_places()),
        "medicines": sorted(_medicines(common)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    data = build()
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    # mtime=0: the same inputs give the same bytes, so a rebuild shows no spurious diff.
    args.output.write_bytes(gzip.compress(payload, mtime=0))
    sizes = {k: len(v) for k, v in data.items() if isinstance(v, list)}
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes): {sizes}")


if __name__ == "__main__":
    main()
