"""edgefleet-score-prompts IN.jsonl OUT.jsonl: complexity scores for a file of prompts.

Each input line is a JSON object with "id" and "prompt" (a string); each output line is
{"id": ..., "score": ...} in input order. `-` reads stdin / writes stdout. A bad line stops
the run with exit status 2 and a message naming its line number, before anything is
written; the summary goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TextIO

from edgefleet.routing.complexity import ComplexityScorer


class BadLine(ValueError):
    pass


def read_prompts(stream: TextIO) -> list[tuple[object, str]]:
    """(id, prompt) pairs; blank lines are skipped; raises BadLine naming the line."""
    items = []
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadLine(f"line {number}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or "id" not in obj or "prompt" not in obj:
            raise BadLine(f'line {number}: expected an object with "id" and "prompt"')
        if not isinstance(obj["prompt"], str):
            raise BadLine(f'line {number}: "prompt" must be a string')
        items.append((obj["id"], obj["prompt"]))
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="edgefleet-score-prompts", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("input", help="JSON Lines with id and prompt, or - for stdin")
    parser.add_argument("output", help="JSON Lines of id and score, or - for stdout")
    parser.add_argument("--model", type=Path, default=None, help="artefact (default: shipped)")
    args = parser.parse_args(argv)

    try:
        if args.input == "-":
            items = read_prompts(sys.stdin)
        else:
            with open(args.input, encoding="utf-8") as f:
                items = read_prompts(f)
    except BadLine as e:
        print(f"edgefleet-score-prompts: {args.input}: {e}", file=sys.stderr)
        return 2
    except (OSError, UnicodeDecodeError) as e:
        print(f"edgefleet-score-prompts: cannot read {args.input}: {e}", file=sys.stderr)
        return 2

    scorer = ComplexityScorer.load(args.model)
    started = time.perf_counter()
    lines = [json.dumps({"id": pid, "score": scorer.score(text)}) + "\n" for pid, text in items]
    elapsed = time.perf_counter() - started
    if args.output == "-":
        sys.stdout.writelines(lines)
        sys.stdout.flush()
    else:
        with open(args.output, "w", encoding="utf-8") as f:
            f.writelines(lines)
    per_prompt = 1e3 * elapsed / len(items) if items else 0.0
    print(
        f"edgefleet-score-prompts: scored {len(items)} prompts with {scorer.version} "
        f"({per_prompt:.3f} ms per prompt)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
