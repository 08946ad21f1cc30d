"""The README's demo (`make demo`), run as a person runs it."""

from __future__ import annotations

import subprocess
import sys


def test_readme_demo_shows_three_routes_with_reasons() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgefleet.router.demo"],
        capture_output=True,
        text=True,
        timeout=600,
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
