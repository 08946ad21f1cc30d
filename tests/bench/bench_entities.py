"""Precision and recall of the entity detectors on tests/data/entities.jsonl, and their cost.

    .venv/bin/python -m tests.bench.bench_entities [--errors]

Quality is counted per prompt and detector: a detector that fires on a prompt labelled with
it is a true positive, on any other prompt a false positive. Latency is the entity pass alone
(`PrivacyScanner.sensitive(..., patterns=False)`, what a cloud-bound request pays on top of
the pattern detectors) on 2,000-character prompts made by joining labelled prompts, positive
and look-alike, after one warm-up pass.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from collections import Counter
from pathlib import Path

from edgefleet.routing.entities import ENTITY_DETECTORS, find_entities
from edgefleet.routing.privacy import PrivacyScanner

DATA = Path(__file__).resolve().parents[1] / "data" / "entities.jsonl"
PROMPT_CHARS = 2000
LATENCY_PROMPTS = 500


def load(split: str | None = None) -> list[dict]:
    """The labelled prompts (the first line describes the file), of one split or all."""
    lines = DATA.read_text(encoding="utf-8").splitlines()[1:]
    rows = [json.loads(line) for line in lines]
    return [r for r in rows if split is None or r["split"] == split]


def confusion(rows: list[dict]) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    for row in rows:
        fired = {kind for kind, spans in find_entities(row["text"]).items() if spans}
        for kind in ENTITY_DETECTORS:
            expected = kind in row["labels"]
            outcome = {(True, True): "tp", (True, False): "fp", (False, True): "fn"}
            key = (kind in fired, expected)
            if key in outcome:
                counts[kind, outcome[key]] += 1
    return counts


def ratio(part: int, whole: int) -> str:
    return f"{part / whole:.3f}" if whole else "n/a"


def quality_table(rows: list[dict], title: str) -> list[str]:
    counts = confusion(rows)
    lines = [
        f"{title}: {len(rows)} prompts ({sum(1 for r in rows if not r['labels'])} look-alikes)",
        "",
        "| detector | positives | TP | FP | FN | precision | recall |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in ENTITY_DETECTORS:
        tp, fp, fn = (counts[kind, o] for o in ("tp", "fp", "fn"))
        lines.append(
            f"| {kind} | {tp + fn} | {tp} | {fp} | {fn} | {ratio(tp, tp + fp)} | "
            f"{ratio(tp, tp + fn)} |"
        )
    return lines


def long_prompts(rows: list[dict], count: int, seed: int = 15) -> list[str]:
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        parts: list[str] = []
        while sum(len(p) + 1 for p in parts) < PROMPT_CHARS:
            parts.append(rng.choice(rows)["text"])
        prompts.append(" ".join(parts)[:PROMPT_CHARS])
    return prompts


def latency_lines(rows: list[dict]) -> list[str]:
    scanner = PrivacyScanner()
    prompts = long_prompts(rows, LATENCY_PROMPTS)
    for text in prompts[:20]:
        scanner.sensitive([text], patterns=False)
    lines = [
        f"Latency, {len(prompts)} prompts of {PROMPT_CHARS} characters, one at a time:",
        "",
        "| pass | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|",
    ]
    for label, kwargs in (
        ("entity detectors (cloud-bound requests only)", {"patterns": False}),
        ("pattern detectors (every request)", {"entities": False}),
    ):
        took = []
        for text in prompts:
            started = time.perf_counter()
            scanner.sensitive([text], **kwargs)
            took.append((time.perf_counter() - started) * 1000)
        took.sort()
        p50, p99 = statistics.median(took), took[int(len(took) * 0.99) - 1]
        lines.append(f"| {label} | {p50:.2f} | {p99:.2f} | {took[-1]:.2f} |")
    return lines


def errors(rows: list[dict]) -> list[str]:
    lines = []
    for row in rows:
        found = find_entities(row["text"])
        for kind in ENTITY_DETECTORS:
            if bool(found[kind]) != (kind in row["labels"]):
                spans = [row["text"][s:e] for s, e in found[kind]]
                word = "FP" if found[kind] else "FN"
                lines.append(f"{word} {kind} [{row['split']}] {row['text'][:100]!r} {spans}")
    return lines


def cpu_flags() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return line
    return "flags: unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--errors", action="store_true", help="list every wrong prompt")
    args = parser.parse_args()
    rows = load()
    load_1, load_5, _ = os.getloadavg()
    print(
        f"Entity detectors, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{platform.platform()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load average at start {load_1:.2f}, {load_5:.2f}"
    )
    print(cpu_flags())
    print()
    for split in ("dev", "heldout"):
        print("\n".join(quality_table(load(split), f"{split} split")))
        print()
    print("\n".join(quality_table(rows, "all")))
    print()
    print("\n".join(latency_lines(rows)))
    if args.errors:
        print()
        print("\n".join(errors(rows)))


if __name__ == "__main__":
    main()
