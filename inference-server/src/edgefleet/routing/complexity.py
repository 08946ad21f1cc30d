"""The learned prompt-complexity score: how much a prompt needs the cloud model.

A linear model over word 1-2-gram TF-IDF and a few hand features, trained with
scikit-learn by `edgefleet.routing.train_complexity` and shipped as a gzip JSON artefact.
Inference is reimplemented here with numpy and the standard library, so the router
needs no scikit-learn; tokenisation and vectorising follow scikit-learn's
`TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)` exactly, and a unit test holds
the two to the same scores.

A score is in [0, 1]: higher means the prompt more likely needs the strong model. It is a
calibrated estimate of P(the strong model does better than the weak one) on the training
mix, so treat it as a ranking first and a probability second.
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
import re
from collections import Counter
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

ARTEFACT_NAME = "complexity-v1.json.gz"
ARTEFACT_FORMAT = "edgefleet-complexity/1"

# scikit-learn's default token pattern, applied to the lower-cased text.
_TOKEN = re.compile(r"(?u)\b\w\w+\b")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_SENTENCE_END = re.compile(r"[.?!](?:\s|$)")
_DECIMAL = re.compile(r"\d\.\d")
_MATH_OP = re.compile(r"[=+*/^<>]")

_BASE_FEATURES = (
    "log_chars",
    "log_words",
    "log_uppercase",
    "log_numbers",
    "log_sentences",
    "log_dollars",
    "log_decimals",
    "log_math_ops",
    "moral_scenarios_style",
)
# Each base feature twice: once for multiple-choice prompts, once for the rest, because
# length or digit counts mean different things in an MMLU item and in a word problem.
HAND_FEATURE_NAMES: tuple[str, ...] = (
    *(f"choice_{n}" for n in _BASE_FEATURES),
    *(f"open_{n}" for n in _BASE_FEATURES),
    "has_choices",
)


def word_ngrams(text: str) -> list[str]:
    """Word unigrams then bigrams, exactly as TfidfVectorizer(ngram_range=(1, 2)) builds them."""
    tokens = _TOKEN.findall(text.lower())
    return tokens + [f"{a} {b}" for a, b in itertools.pairwise(tokens)]


def hand_features(text: str) -> list[float]:
    """The hand features in HAND_FEATURE_NAMES order (training and inference share this)."""
    base = [
        math.log1p(len(text)),
        math.log1p(len(text.split())),
        math.log1p(sum(ch.isupper() for ch in text)),
        math.log1p(len(_NUMBER.findall(text))),
        math.log1p(len(_SENTENCE_END.findall(text))),
        math.log1p(text.count("$")),
        math.log1p(len(_DECIMAL.findall(text))),
        math.log1p(len(_MATH_OP.findall(text))),
        float("Scenario 1" in text),
    ]
    choices = 1.0 if "\nA." in text else 0.0
    return [v * choices for v in base] + [v * (1.0 - choices) for v in base] + [choices]


class ComplexityScorer:
    """Scores prompts with a trained artefact; cheap to call, safe to share between threads."""

    def __init__(self, params: dict) -> None:
        if params.get("format") != ARTEFACT_FORMAT:
            raise ValueError(f"not a complexity artefact of format {ARTEFACT_FORMAT!r}")
        if tuple(params["hand_features"]) != HAND_FEATURE_NAMES:
            raise ValueError("artefact was trained on other hand features than this code has")
        self.version: str = params["version"]
        self._vocabulary = {term: i for i, term in enumerate(params["vocabulary"])}
        self._idf = np.asarray(params["idf"], dtype=np.float64)
        self._word_coef = np.asarray(params["word_coef"], dtype=np.float64)
        self._hand_mean = np.asarray(params["hand_mean"], dtype=np.float64)
        self._hand_coef = np.asarray(params["hand_coef"], dtype=np.float64)
        self._intercept = float(params["intercept"])
        self._cal_slope = float(params["calibration"]["slope"])
        self._cal_intercept = float(params["calibration"]["intercept"])
        self._quantiles = np.asarray(params["score_quantiles"], dtype=np.float64)
        if len(self._idf) != len(self._vocabulary) or len(self._word_coef) != len(self._idf):
            raise ValueError("artefact vocabulary, idf and weights differ in length")

    @classmethod
    def load(cls, path: Path | None = None) -> ComplexityScorer:
        """Load an artefact file; None loads the one shipped in this package."""
        if path is None:
            with (
                resources.files("edgefleet.routing")
                .joinpath("models", ARTEFACT_NAME)
                .open("rb") as f
            ):
                raw = f.read()
        else:
            raw = Path(path).read_bytes()
        return cls(json.loads(gzip.decompress(raw)))

    def raw_score(self, text: str) -> float:
        """The linear model's output before calibration (what the training script fits)."""
        counts = Counter(g for g in word_ngrams(text) if g in self._vocabulary)
        value = self._intercept
        if counts:
            idx = np.fromiter((self._vocabulary[g] for g in counts), dtype=np.int64)
            tf = np.fromiter(counts.values(), dtype=np.float64)
            weights = (1.0 + np.log(tf)) * self._idf[idx]
            value += float(weights @ self._word_coef[idx]) / float(np.sqrt(weights @ weights))
        hand = np.asarray(hand_features(text), dtype=np.float64)
        return value + float((hand - self._hand_mean) @ self._hand_coef)

    def score(self, text: str) -> float:
        """Complexity in [0, 1]; higher means send to the cloud model sooner."""
        z = self._cal_slope * self.raw_score(text) + self._cal_intercept
        # Two-sided form so that neither branch can overflow exp().
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)

    def threshold_for_share(self, cloud_share: float) -> float:
        """Score threshold (send when score >= it) for about `cloud_share` cloud calls.

        Read off quantiles of out-of-fold scores on the training prompts, so the share holds
        for traffic like that mix. Non-increasing in `cloud_share`; 0.0 at share 1 and
        +inf at share 0 (nothing reaches it).
        """
        if not 0.0 <= cloud_share <= 1.0:
            raise ValueError(f"cloud_share must lie in [0, 1], got {cloud_share}")
        if cloud_share == 0.0:
            return math.inf
        if cloud_share == 1.0:
            return 0.0
        levels = np.linspace(0.0, 1.0, len(self._quantiles))
        return float(np.interp(1.0 - cloud_share, levels, self._quantiles))


@lru_cache(maxsize=1)
def default_scorer() -> ComplexityScorer:
    """The shipped scorer, loaded once per process."""
    return ComplexityScorer.load()
