"""The shipped complexity scorer, its numpy re-implementation, and the scoring command."""

from __future__ import annotations

import gzip
import itertools
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from edgefleet.routing.complexity import ComplexityScorer, default_scorer
from tests.support.routing_data import dev_data_path, required_dev_data

DEV = dev_data_path()

TRIVIAL = "What is the capital of France?"
MORAL_SCENARIO = (
    "For which of these two scenarios does the main character (who uses I/me/my) do something "
    "clearly morally wrong, according to ordinary moral standards in the US as of 2020? "
    "Scenario 1 | I took the last cookie from the jar even though my roommate asked me to "
    "save it. Scenario 2 | I helped an old lady cross the street.\n"
    "A. Wrong, Wrong\nB. Wrong, Not wrong\nC. Not wrong, Wrong\nD. Not wrong, Not wrong\nAnswer:"
)
ODD_TEXTS = [
    "",
    "   ",
    TRIVIAL,
    MORAL_SCENARIO,
    "Ünïcödé straße ÇA VA? 東京は日本の首都です。 x² + y² = z²",
    "word " * 5000,
    "$1.50 + $2.25 = ? 3/4 of 12 is 9. " * 20,
]


def test_shipped_scores_lie_in_unit_interval():
    scorer = default_scorer()
    assert scorer.version
    for text in ODD_TEXTS:
        assert 0.0 <= scorer.score(text) <= 1.0


def test_moral_scenario_item_scores_above_a_trivial_fact_question():
    # moral_scenarios: weak model 40% vs strong 78% right, the widest gap in the data.
    scorer = default_scorer()
    assert scorer.score(MORAL_SCENARIO) > scorer.score(TRIVIAL) + 0.1


def test_threshold_for_share_falls_as_the_cloud_share_grows():
    scorer = default_scorer()
    shares = np.linspace(0.0, 1.0, 41)
    thresholds = [scorer.threshold_for_share(float(c)) for c in shares]
    assert all(a >= b for a, b in itertools.pairwise(thresholds))
    assert thresholds[0] == math.inf
    assert thresholds[-1] == 0.0
    with pytest.raises(ValueError):
        scorer.threshold_for_share(1.5)


def test_threshold_for_share_sends_about_that_share_of_dev_prompts():
    required_dev_data()
    scorer = default_scorer()
    with DEV.open(encoding="utf-8") as f:
        prompts = [json.loads(line)["prompt"] for line in f][::4]
    scores = np.array([scorer.score(p) for p in prompts])
    for share in (0.2, 0.5):
        sent = float(np.mean(scores >= scorer.threshold_for_share(share)))
        # Quantiles come from out-of-fold scores; in-sample scores spread a little wider.
        assert abs(sent - share) < 0.1


def test_numpy_scorer_matches_the_sklearn_model_it_was_exported_from(tmp_path):
    from edgefleet.routing import train_complexity as tc

    required_dev_data()
    rows = tc.load_rows(DEV)[::8]
    texts = [r["prompt"] for r in rows]
    model = tc.fit_model(texts, tc.gain_target(rows), tc.Params(alpha=3.0, hand_weight=0.1))
    raw = model.raw_scores(texts)
    slope, intercept = tc.calibrate(raw, rows)
    artefact = tc.export(model, slope, intercept, np.linspace(0, 1, 11), {"version": "test"})
    path = tmp_path / "model.json.gz"
    path.write_bytes(gzip.compress(json.dumps(artefact).encode()))

    scorer = ComplexityScorer.load(path)
    probe = texts[:50] + ODD_TEXTS
    expected_raw = model.raw_scores(probe)
    expected = 1.0 / (1.0 + np.exp(-(slope * expected_raw + intercept)))
    got_raw = np.array([scorer.raw_score(t) for t in probe])
    got = np.array([scorer.score(t) for t in probe])
    assert np.max(np.abs(got_raw - expected_raw)) < 1e-9
    assert np.max(np.abs(got - expected)) < 1e-9


def test_loading_rejects_a_file_of_another_format(tmp_path):
    path = tmp_path / "other.json.gz"
    path.write_bytes(gzip.compress(json.dumps({"format": "something-else"}).encode()))
    with pytest.raises(ValueError, match="format"):
        ComplexityScorer.load(path)


def _score_command(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgefleet.routing.score_prompts", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_score_command_writes_one_score_per_prompt_in_order(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(
        json.dumps({"id": "a", "prompt": TRIVIAL})
        + "\n\n"
        + json.dumps({"id": 7, "prompt": MORAL_SCENARIO})
        + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "out.jsonl"
    result = _score_command(str(src), str(out))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [line["id"] for line in lines] == ["a", 7]
    assert lines[0]["score"] == pytest.approx(default_scorer().score(TRIVIAL), abs=1e-12)
    assert "scored 2 prompts" in result.stderr


def test_score_command_streams_stdin_to_stdout():
    result = _score_command("-", "-", stdin=json.dumps({"id": "x", "prompt": TRIVIAL}) + "\n")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["id"] == "x"


@pytest.mark.parametrize(
    "bad_line",
    ['{"id": 1, "prompt": ', '{"id": 2}', '{"id": 3, "prompt": 42}', "[1, 2]"],
)
def test_score_command_names_the_bad_line_and_exits_2(tmp_path, bad_line):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": 0, "prompt": TRIVIAL}) + "\n" + bad_line + "\n")
    out = tmp_path / "out.jsonl"
    result = _score_command(str(src), str(out))
    assert result.returncode == 2
    assert "line 2" in result.stderr
    assert not out.exists()
