"""The router demo (`make demo-router`), run as a person runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]


def test_readme_demo_shows_three_routes_with_reasons() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgefleet.router.demo"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=CHECKOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Answers go to stdout, the CLI's "[where route=... ]" summaries to stderr.
    out = result.stdout + result.stderr
    assert "==> all SERVING" in out
    assert "Paris" in out
    # The CLI prints where each answer came from and why.
    assert "[local/llamacpp/smollm2-135m@" in out and "route=local:complexity.low" in out
    assert "[cloud/openai/cloud-llm@" in out and "route=cloud:complexity.high" in out
    assert "route=local:privacy.detector.email" in out
    # Only the hard question reached the cloud: one audit line, and no prompt text in it.
    audited = [line for line in out.splitlines() if "prompt_sha256=" in line]
    assert len(audited) == 1 and audited[0].strip().startswith("ok")


def test_demo_outside_a_checkout_asks_for_a_policy_file(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgefleet.router.demo"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "no policy file at examples/routingpolicy.yaml" in result.stderr
    assert "--policy FILE" in result.stderr and "Traceback" not in result.stderr
