"""Picking from the shipped calibration task set (examples/calibration/tasks.jsonl)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

TASKS = Path(__file__).resolve().parents[2] / "examples" / "calibration" / "tasks.jsonl"


def shipped_tasks(per_cell: int, levels: tuple[int, ...]) -> list[dict[str, Any]]:
    """The first `per_cell` shipped tasks of each family at each of `levels`."""
    chosen, seen = [], Counter()
    for line in TASKS.read_text(encoding="utf-8").splitlines():
        task = json.loads(line)
        cell = (task["category"], task["difficulty"])
        if task["difficulty"] in levels and seen[cell] < per_cell:
            seen[cell] += 1
            chosen.append(task)
    return chosen
