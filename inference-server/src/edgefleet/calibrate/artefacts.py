"""Calibrated artefacts on disk: written whole or not at all, and loaded by the router.

A calibration writes one folder per version, `OUT/<version>/` holding
`complexity.json.gz` (the format the router loads), `report.json` and `labels.jsonl` (each
prompt's id, category, status and the two qualities; no prompt, no answer). All are written
into a hidden staging folder beside it, flushed to disk, checked to load, and the folder is
then renamed into place in one step: a reader sees the whole version or none of it, and a
failed run leaves nothing behind. Versions are never overwritten.

The router serves one when its policy says `spec.complexity.calibration: PATH` (the
artefact file; a relative path is read from the policy file's folder).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

from edgefleet.calibrate.prompts import CalibrationError
from edgefleet.routing.complexity import ComplexityScorer, default_scorer
from edgefleet.routing.policy import PolicyError, RoutingPolicy

ARTEFACT_FILE = "complexity.json.gz"
REPORT_FILE = "report.json"
LABELS_FILE = "labels.jsonl"


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_version(
    out_dir: Path, version: str, artefact: dict, report: dict, labels: list[dict]
) -> Path:
    """Write `OUT/<version>/` atomically; returns the artefact's path."""
    final = out_dir / version
    if final.exists():
        raise CalibrationError(f"{final} already exists; versions are never overwritten")
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=out_dir))
    try:
        # mtime=0: the same model gives the same bytes.
        _write_synced(
            staging / ARTEFACT_FILE, gzip.compress(json.dumps(artefact).encode(), mtime=0)
        )
        ComplexityScorer.load(staging / ARTEFACT_FILE)
        _write_synced(staging / REPORT_FILE, (json.dumps(report, indent=2) + "\n").encode())
        lines = "".join(json.dumps(label) + "\n" for label in labels)
        _write_synced(staging / LABELS_FILE, lines.encode())
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    directory = os.open(out_dir, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return final / ARTEFACT_FILE


def scorer_for(policy: RoutingPolicy, policy_dir: Path | None) -> ComplexityScorer:
    """The scorer a policy asks for: its calibration artefact, else the shipped one.

    Raises PolicyError when the artefact cannot be loaded, so a router keeps the
    policy (and the scorer) it has.
    """
    calibration = policy.complexity.calibration
    if calibration is None:
        return default_scorer()
    path = Path(calibration)
    if not path.is_absolute() and policy_dir is not None:
        path = policy_dir / path
    try:
        return ComplexityScorer.load(path)
    except (ValueError, KeyError, TypeError, EOFError, gzip.BadGzipFile) as exc:
        problem = f"{path} is not a complexity artefact: {exc}"
    except OSError as exc:  # after BadGzipFile, which is one
        problem = f"cannot read {path}: {exc.strerror}"
    raise PolicyError([f"spec.complexity.calibration: {problem}"])
