"""`make demo` ends a failure with one line: what failed, during which step, where the logs are."""

from __future__ import annotations

from pathlib import Path

from tests.cluster import realnode, testbed
from tests.cluster.demo import failure_line


def test_a_failure_is_one_line_naming_the_step_the_cause_and_the_logs() -> None:
    error = RuntimeError("UNAVAILABLE: 502 - upstream down\nTraceback (most recent call last): ...")
    paths = testbed.Paths(Path("/tmp/bed"))
    line = failure_line(error, "a simple question, to the router", paths)
    assert "\n" not in line
    assert "'a simple question, to the router'" in line
    assert "502 - upstream down" in line and "Traceback" not in line
    assert str(paths.cluster_dir / "logs") in line
    assert str(realnode.state_root() / "real-0") in line


def test_an_error_without_a_message_is_named_by_its_type() -> None:
    line = failure_line(TimeoutError(), "waiting for the model", testbed.Paths(Path("/tmp/bed")))
    assert "TimeoutError" in line
