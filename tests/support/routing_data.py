"""Where the routing DEV data is: ../shared/data/routing/dev.jsonl beside the checkout.

A clone elsewhere (CI clones into a temporary folder) finds the workplace's
copy at /work/shared, or wherever EDGEFLEET_ROUTING_DATA points.
"""

from __future__ import annotations

import os
from pathlib import Path

_RELATIVE = Path("shared") / "data" / "routing" / "dev.jsonl"


def dev_data_path() -> Path:
    """The first existing candidate; the first candidate when none exists (for messages)."""
    candidates = [
        *([Path(os.environ["EDGEFLEET_ROUTING_DATA"])] if "EDGEFLEET_ROUTING_DATA" in os.environ
          else []),
        Path(__file__).resolve().parents[2].parent / _RELATIVE,
        Path("/work") / _RELATIVE,
    ]  # fmt: skip
    return next((path for path in candidates if path.exists()), candidates[0])


def required_dev_data() -> Path:
    """The DEV data for a test that needs it: missing data fails the test, never skips it."""
    path = dev_data_path()
    if not path.exists():
        import pytest

        pytest.fail(
            f"routing DEV data not found at {path}: put shared/ beside the checkout "
            "or set EDGEFLEET_ROUTING_DATA"
        )
    return path
