"""Prompts the benchmarks share: open-ended, so every answer runs to max_tokens."""

from __future__ import annotations

LONG_ANSWER_PROMPTS = (
    "Write a detailed essay about the history of the bicycle.",
    "Explain, step by step, how a refrigerator keeps food cold.",
    "Describe a walk through a busy market in a small town.",
    "Write a long letter to a friend about your summer holiday.",
    "Explain the water cycle to a ten-year-old in detail.",
    "Describe how to plant and care for a vegetable garden.",
    "Write a story about a lighthouse keeper and a storm.",
    "Explain why the sky is blue and why sunsets are red.",
)
