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

# A lookup the router keeps local and a multi-step problem it sends to the
# cloud: the classifier scores them far apart, so a threshold between the two
# (see `threshold_between`) routes each one way.
SIMPLE = "What is the capital of France?"
COMPLEX = (
    "A train leaves a station at 3:15 pm travelling at 84 km/h; a second train leaves the same "
    "station 40 minutes later on a parallel track at 112 km/h. Each stops for 6 minutes every "
    "90 km. At what time, to the minute, does the second train draw level with the first, and "
    "how far from the station? Show every step of the working."
)
