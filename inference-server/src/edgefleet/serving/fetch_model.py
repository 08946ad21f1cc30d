"""Put a SmallModel's weights where its model server expects them.

The operator's init container `fetch-model` runs this before every model
server starts (docs/operator.md, SmallModel `spec.source`):

    python -m edgefleet.serving.fetch_model --source URI [--sha256 HEX] \\
        --dest DIR --format gguf|hf [--pvc-root /mnt/pvc]

It leaves `DIR/model.gguf` (format gguf, for llama.cpp) or `DIR/hf/` (format
hf, a Hugging Face folder for vLLM) and exits 0; on any problem it prints one
line on stderr and exits 1 (2 for bad flags). Sources:

    builtin://smollm2-135m   the packaged SmolLM2 GGUF, checked against its known
                             sha256 and symlinked; for hf, converted (needs the
                             vLLM image's transformers and torch)
    file:///abs/path         a GGUF file, or for hf a folder or a .tar(.gz) archive
    pvc://CLAIM/path         the same, on the claim mounted at <pvc-root>/CLAIM
    http(s)://host/path      downloaded; --sha256 required; for hf a .tar(.gz) archive

Nothing half-written ever sits at the final name: work happens under
`DIR/.fetch-*` names, is fsynced and verified, then renamed into place. A small
`DIR/.source` record, written last, lets a restarted container (an emptyDir
outlives it) skip work that is already done.

The first half of this module is pure (parsing, planning, progress text) and
unit tested on its own; the second half does the I/O.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import importlib.util
import json
import os
import posixpath
import re
import secrets
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath

from edgefleet.serving.errors import ModelFileError
from edgefleet.serving.model_files import (
    DEFAULT_MODEL_NAME,
    DEFAULT_MODEL_SHA256,
    default_model_path,
)

GGUF_FILE = "model.gguf"
HF_DIR = "hf"
RECORD_FILE = ".source"
#: Every scratch name starts with this, so a crashed run's leftovers are
#: recognisable and the server never mistakes them for a model.
SCRATCH_PREFIX = ".fetch-"
#: Packaged models by builtin:// name, with the sha256 of their GGUF file.
BUILTIN_MODELS = {DEFAULT_MODEL_NAME: DEFAULT_MODEL_SHA256}
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_GGUF_MAGIC = b"GGUF"
_SHA256 = re.compile(r"[0-9a-f]{64}")
# A PersistentVolumeClaim name is a DNS-1123 subdomain.
_CLAIM_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_CHUNK_BYTES = 1 << 20


Say = Callable[[str], None]


class FetchError(Exception):
    """Why the model could not be fetched, in one line meant for a person."""


class ModelFormat(StrEnum):
    GGUF = "gguf"
    HF = "hf"


# --- What to fetch: typed sources and the plan (pure) ---------------------


@dataclass(frozen=True)
class BuiltinSource:
    name: str


@dataclass(frozen=True)
class LocalSource:
    """A path this container can read: from file://, or pvc:// under its mount."""

    path: Path


@dataclass(frozen=True)
class HttpSource:
    url: str


ModelSource = BuiltinSource | LocalSource | HttpSource


def parse_source(uri: str, pvc_root: Path) -> ModelSource:
    """Turn a SmallModel source URI into a typed source, or raise FetchError."""
    parts = urllib.parse.urlsplit(uri.strip())
    scheme = parts.scheme.lower()
    if scheme == "builtin":
        name = parts.netloc + parts.path
        if name not in BUILTIN_MODELS:
            known = ", ".join(f"builtin://{known}" for known in BUILTIN_MODELS)
            raise FetchError(f"unknown builtin model {uri!r}; packaged models: {known}")
        return BuiltinSource(name)
    if scheme == "file":
        path = urllib.parse.unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not path.startswith("/"):
            raise FetchError(f"{uri!r} is not an absolute file URI; write file:///abs/path")
        return LocalSource(Path(path))
    if scheme == "pvc":
        claim, subpath = parts.netloc, urllib.parse.unquote(parts.path).lstrip("/")
        if not _CLAIM_NAME.fullmatch(claim):
            raise FetchError(f"{uri!r} does not name a claim; write pvc://CLAIM/path")
        if not subpath or ".." in PurePosixPath(subpath).parts:
            raise FetchError(f"{uri!r} needs a path inside the claim, without '..'")
        return LocalSource(pvc_root / claim / subpath)
    if scheme in ("http", "https"):
        if not parts.netloc:
            raise FetchError(f"{uri!r} has no host")
        return HttpSource(uri.strip())
    raise FetchError(
        f"unsupported model source {uri!r}; use builtin://NAME, file:///abs/path, "
        "pvc://CLAIM/path, http:// or https://"
    )


def normalise_sha256(text: str | None) -> str | None:
    """The digest in lowercase hex, None for no digest; FetchError when malformed."""
    digest = (text or "").strip().lower()
    if not digest:
        return None
    if not _SHA256.fullmatch(digest):
        raise FetchError(f"sha256 {text!r} is not 64 hexadecimal digits")
    return digest


class Step(StrEnum):
    SKIP = "skip"  # the destination already holds this model
    LINK_FILE = "link-file"  # symlink a local GGUF file after checking it
    LINK_FOLDER = "link-folder"  # symlink a local Hugging Face folder
    EXTRACT_ARCHIVE = "extract-archive"  # unpack a local .tar(.gz) into DIR/hf
    CONVERT_BUILTIN = "convert-builtin"  # packaged GGUF -> Hugging Face folder
    DOWNLOAD_FILE = "download-file"  # download a GGUF file
    DOWNLOAD_ARCHIVE = "download-archive"  # download and unpack a .tar(.gz)


@dataclass(frozen=True)
class SourceRecord:
    """What `DIR/.source` says the destination holds (written after verifying it)."""

    uri: str
    sha256: str | None
    format: ModelFormat

    def to_json(self) -> str:
        return json.dumps({"uri": self.uri, "sha256": self.sha256, "format": self.format}) + "\n"

    @classmethod
    def from_json(cls, text: str) -> SourceRecord | None:
        """The record, or None when the text is not one (then the work is redone)."""
        try:
            data = json.loads(text)
            return cls(data["uri"], data["sha256"], ModelFormat(data["format"]))
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class FetchPlan:
    step: Step
    source: ModelSource
    #: The digest the fetched bytes must have; None when nothing is checked.
    sha256: str | None
    #: DIR/model.gguf or DIR/hf.
    target: Path
    #: Written to DIR/.source once the target is in place.
    record: SourceRecord


def plan_fetch(
    uri: str,
    sha256: str | None,
    model_format: ModelFormat,
    dest: Path,
    pvc_root: Path,
    existing: SourceRecord | None = None,
    target_present: bool = False,
) -> FetchPlan:
    """Decide what to do, from the request and what the destination already holds."""
    source = parse_source(uri, pvc_root)
    digest = normalise_sha256(sha256)
    target = target_path(dest, model_format)
    step: Step
    if isinstance(source, BuiltinSource):
        known = BUILTIN_MODELS[source.name]
        if digest not in (None, known):
            raise FetchError(
                f"{uri} is the packaged GGUF with sha256 {known}, not the sha256 {digest} given"
            )
        digest = known
        step = Step.LINK_FILE if model_format is ModelFormat.GGUF else Step.CONVERT_BUILTIN
    elif isinstance(source, LocalSource):
        if model_format is ModelFormat.GGUF:
            step = Step.LINK_FILE
        elif source.path.name.endswith(ARCHIVE_SUFFIXES):
            step = Step.EXTRACT_ARCHIVE
        else:
            step = Step.LINK_FOLDER
            if digest is not None:
                raise FetchError(
                    f"sha256 is checked on files and archives, not on the folder {uri}; "
                    "point at a .tar.gz of it or leave sha256 empty"
                )
    else:
        if digest is None:
            raise FetchError(f"downloading {_redact(uri)} needs --sha256 (the file's digest)")
        step = Step.DOWNLOAD_FILE if model_format is ModelFormat.GGUF else Step.DOWNLOAD_ARCHIVE
    record = SourceRecord(uri.strip(), digest, model_format)
    if existing == record and target_present:
        step = Step.SKIP
    return FetchPlan(step, source, digest, target, record)


def target_path(dest: Path, model_format: ModelFormat) -> Path:
    """Where the server finds the model: DIR/model.gguf or DIR/hf."""
    return dest / (GGUF_FILE if model_format is ModelFormat.GGUF else HF_DIR)


def _redact(url: str) -> str:
    """The URL without credentials or query: signed URLs carry secrets there."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"


def _human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    raise AssertionError("unreachable")


class Progress:
    """Progress lines for long work: every `every_fraction` of the total or `every_s`."""

    def __init__(
        self,
        what: str,
        total: int | None,
        emit: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
        every_fraction: float = 0.1,
        every_s: float = 5.0,
    ) -> None:
        self.what, self.total, self.emit, self.clock = what, total, emit, clock
        self.every_fraction, self.every_s = every_fraction, every_s
        self.started = self.last_time = clock()
        self.next_fraction = every_fraction

    def update(self, done: int) -> None:
        now = self.clock()
        fraction_due = bool(self.total) and done / self.total >= self.next_fraction
        if fraction_due or now - self.last_time >= self.every_s:
            self.emit(self.line(done, now))
            self.last_time = now
            if self.total:
                reached = done / self.total
                while self.next_fraction <= reached:
                    self.next_fraction += self.every_fraction

    def line(self, done: int, now: float) -> str:
        rate = done / max(now - self.started, 1e-6)
        if self.total:
            amount = f"{_human_bytes(done)} / {_human_bytes(self.total)} ({done / self.total:.0%})"
        else:
            amount = f"{_human_bytes(done)} of unknown size"
        return f"{self.what}: {amount} at {_human_bytes(rate)}/s"


# --- Doing it (I/O) -------------------------------------------------------


@dataclass(frozen=True)
class DownloadOptions:
    timeout_s: float = 30.0
    #: Tries in all for connection errors, 5xx and 429; other HTTP errors fail at once.
    attempts: int = 4
    #: Wait before the second try; doubled before each later one.
    backoff_s: float = 1.0


def _say(message: str) -> None:
    print(f"fetch-model: {message}", file=sys.stderr, flush=True)


def fetch(
    uri: str,
    sha256: str | None,
    model_format: ModelFormat,
    dest: Path,
    pvc_root: Path = Path("/mnt/pvc"),
    options: DownloadOptions | None = None,
    say: Say = _say,
) -> FetchPlan:
    """Make `dest` hold the model, or raise FetchError leaving no partial target."""
    record_path = dest / RECORD_FILE
    existing = SourceRecord.from_json(record_path.read_text()) if record_path.is_file() else None
    target = target_path(dest, model_format)
    present = target.is_file() if model_format is ModelFormat.GGUF else _is_hf_folder(target)
    # Planned before touching anything, so bad input changes nothing on disk.
    plan = plan_fetch(uri, sha256, model_format, dest, pvc_root, existing, present)
    if plan.step is Step.SKIP:
        say(f"{plan.target} already holds {_redact(plan.record.uri)}; nothing to do")
        return plan
    dest.mkdir(parents=True, exist_ok=True)
    _remove_scratch(dest)
    # The old record no longer describes what will be there: drop it first, so a
    # crash from here on makes the next run redo the work rather than skip it.
    record_path.unlink(missing_ok=True)
    say(f"{plan.step}: {_redact(uri) if isinstance(plan.source, HttpSource) else uri}")
    _RUNNERS[plan.step](plan, dest, options or DownloadOptions(), say)
    _write_atomically(record_path, plan.record.to_json())
    say(f"ready: {plan.target}" + (f" (sha256 {plan.sha256})" if plan.sha256 else ""))
    return plan


def _source_path(plan: FetchPlan) -> Path:
    if isinstance(plan.source, BuiltinSource):
        try:
            return default_model_path()
        except ModelFileError as exc:
            raise FetchError(str(exc)) from exc
    assert isinstance(plan.source, LocalSource)
    return plan.source.path


def _link_file(plan: FetchPlan, dest: Path, _: DownloadOptions, say: Say) -> None:
    path = _source_path(plan)
    if not path.is_file():
        raise FetchError(f"{plan.record.uri}: no file at {path}")
    _check_gguf_magic(path, plan.record.uri)
    if plan.sha256:
        _verify(path, plan.sha256, plan.record.uri, say)
    _install_symlink(path, plan.target, dest)


def _link_folder(plan: FetchPlan, dest: Path, _: DownloadOptions, say: Say) -> None:
    path = _source_path(plan)
    if not _is_hf_folder(path):
        raise FetchError(f"{plan.record.uri}: {path} is not a Hugging Face folder (no config.json)")
    _install_symlink(path, plan.target, dest)


def _extract_local_archive(plan: FetchPlan, dest: Path, _: DownloadOptions, say: Say) -> None:
    path = _source_path(plan)
    if not path.is_file():
        raise FetchError(f"{plan.record.uri}: no file at {path}")
    if plan.sha256:
        _verify(path, plan.sha256, plan.record.uri, say)
    _install_from_archive(path, plan.target, dest, say)


def _convert_builtin(plan: FetchPlan, dest: Path, _: DownloadOptions, say: Say) -> None:
    missing = [name for name in ("torch", "transformers", "gguf") if not _importable(name)]
    if missing:
        raise FetchError(
            f"{plan.record.uri} as a Hugging Face folder is converted from the packaged GGUF, "
            f"which needs {', '.join(missing)} (the vLLM image has them); "
            "run the vLLM image or give a file://, pvc:// or https:// Hugging Face source"
        )
    # Imported on this path only: converting is the vLLM environment's work.
    from edgefleet.serving import convert_gguf

    gguf = _source_path(plan)
    assert plan.sha256 is not None
    _verify(gguf, plan.sha256, plan.record.uri, say)
    cached = convert_gguf.converted_dir(plan.sha256)
    if _is_hf_folder(cached):
        # The vLLM image converts at build time: link that, convert nothing.
        say(f"using the conversion cached at {cached}")
        _install_symlink(cached, plan.target, dest)
        return
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=dest))
    try:
        say("converting the packaged GGUF to a Hugging Face folder (a minute or so)")
        convert_gguf.convert(gguf, scratch)
        _seal_tree(scratch)
        _install(scratch, plan.target, dest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _download_file(plan: FetchPlan, dest: Path, options: DownloadOptions, say: Say) -> None:
    part = _scratch_file(dest)
    try:
        _download_verified(plan, part, options, say)
        _check_gguf_magic(part, plan.record.uri)
        part.chmod(0o644)
        _install(part, plan.target, dest)
    finally:
        part.unlink(missing_ok=True)


def _download_archive(plan: FetchPlan, dest: Path, options: DownloadOptions, say: Say) -> None:
    part = _scratch_file(dest)
    try:
        _download_verified(plan, part, options, say)
        _install_from_archive(part, plan.target, dest, say)
    finally:
        part.unlink(missing_ok=True)


_RUNNERS: dict[Step, Callable[[FetchPlan, Path, DownloadOptions, Say], None]] = {
    Step.LINK_FILE: _link_file,
    Step.LINK_FOLDER: _link_folder,
    Step.EXTRACT_ARCHIVE: _extract_local_archive,
    Step.CONVERT_BUILTIN: _convert_builtin,
    Step.DOWNLOAD_FILE: _download_file,
    Step.DOWNLOAD_ARCHIVE: _download_archive,
}


class _Retryable(Exception):
    """A failure worth another try: the network or the server, not the request."""


def _download_verified(plan: FetchPlan, part: Path, options: DownloadOptions, say: Say) -> None:
    assert isinstance(plan.source, HttpSource) and plan.sha256 is not None
    shown = _redact(plan.source.url)
    for attempt in range(1, options.attempts + 1):
        try:
            actual = _download_once(plan.source.url, part, options, say)
            break
        except _Retryable as exc:
            if attempt == options.attempts:
                raise FetchError(f"GET {shown} failed after {attempt} tries: {exc}") from exc
            delay = options.backoff_s * 2 ** (attempt - 1)
            say(f"GET {shown}: {exc}; try {attempt + 1}/{options.attempts} in {delay:.1f}s")
            time.sleep(delay)
    if actual != plan.sha256:
        raise FetchError(f"{shown} has sha256 {actual}, expected {plan.sha256}; discarded it")


def _download_once(url: str, part: Path, options: DownloadOptions, say: Say) -> str:
    """Stream `url` into `part` (fsynced) and return its sha256."""
    request = urllib.request.Request(url, headers={"User-Agent": "edgefleet-fetch-model"})
    try:
        response = urllib.request.urlopen(request, timeout=options.timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code == 429:
            raise _Retryable(f"HTTP {exc.code} {exc.reason}") from exc
        raise FetchError(f"GET {_redact(url)}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise _Retryable(str(exc.reason)) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise _Retryable(str(exc) or type(exc).__name__) from exc
    digest = hashlib.sha256()
    received = 0
    with response, part.open("wb") as out:
        total = response.length
        progress = Progress(f"downloading {_redact(url)}", total, say)
        try:
            while chunk := response.read(_CHUNK_BYTES):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                progress.update(received)
        except (OSError, http.client.HTTPException) as exc:
            raise _Retryable(f"connection lost after {received} bytes: {exc!r}") from exc
        if total is not None and received < total:
            raise _Retryable(f"connection closed after {received} of {total} bytes")
        out.flush()
        os.fsync(out.fileno())
    say(progress.line(received, time.monotonic()))
    return digest.hexdigest()


def _verify(path: Path, expected: str, uri: str, say: Say) -> None:
    digest = hashlib.sha256()
    progress = Progress(f"checking {path.name}", path.stat().st_size, say)
    done = 0
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            digest.update(chunk)
            done += len(chunk)
            progress.update(done)
    if digest.hexdigest() != expected:
        raise FetchError(f"{uri} has sha256 {digest.hexdigest()}, expected {expected}")


def _check_gguf_magic(path: Path, uri: str) -> None:
    with path.open("rb") as stream:
        head = stream.read(len(_GGUF_MAGIC))
    if head != _GGUF_MAGIC:
        raise FetchError(f"{uri} is not a GGUF file (it starts with {head!r}, not b'GGUF')")


def _install_from_archive(archive: Path, target: Path, dest: Path, say: Say) -> None:
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=dest))
    try:
        say(f"unpacking {archive.name}")
        folder = extract_archive(archive, scratch)
        _seal_tree(folder)
        _install(folder, target, dest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def extract_archive(archive: Path, into: Path) -> Path:
    """Unpack a .tar(.gz) into `into`; return the Hugging Face folder inside it.

    Refuses the whole archive, before writing anything, when a member would land
    outside `into` (an absolute path, `..`, or a link pointing out) or is not a
    plain file, folder or link. The folder is `into` itself or its single top folder.
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar.getmembers():
                _check_member(member)
            # The "data" filter is a second guard on top of the checks above.
            tar.extractall(into, filter="data")
    except (tarfile.TarError, EOFError) as exc:
        raise FetchError(f"{archive.name} is not a readable tar archive: {exc}") from exc
    if _is_hf_folder(into):
        return into
    children = list(into.iterdir())
    if len(children) == 1 and _is_hf_folder(children[0]):
        return children[0]
    raise FetchError("the archive holds no config.json at its top or in its single top folder")


def _check_member(member: tarfile.TarInfo) -> None:
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise FetchError(f"archive member {member.name!r} is not a file or folder; refusing it")
    name = PurePosixPath(member.name)
    outside = name.is_absolute() or ".." in name.parts
    if member.issym() or member.islnk():
        # A symlink's target is relative to its own folder, a hard link's to the archive's top.
        base = posixpath.dirname(member.name) if member.issym() else ""
        landing = posixpath.normpath(posixpath.join(base, member.linkname))
        outside = outside or member.linkname.startswith("/") or landing.split("/")[0] == ".."
    if outside:
        raise FetchError(
            f"archive member {member.name!r} would land outside the model folder; refusing it"
        )


def _is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _scratch_file(dest: Path) -> Path:
    handle, name = tempfile.mkstemp(prefix=SCRATCH_PREFIX, suffix=".part", dir=dest)
    os.close(handle)
    return Path(name)


def _scratch_name(dest: Path) -> Path:
    """A fresh scratch name in `dest`, for what mkstemp cannot create (links, renames)."""
    return dest / f"{SCRATCH_PREFIX}{secrets.token_hex(8)}"


def _install_symlink(source: Path, target: Path, dest: Path) -> None:
    link = _scratch_name(dest)
    try:
        link.symlink_to(source.resolve())
        _install(link, target, dest)
    finally:
        link.unlink(missing_ok=True)


def _install(ready: Path, target: Path, dest: Path) -> None:
    """Rename `ready` to `target`, replacing whatever was there, then sync the folder."""
    if target.is_dir() and not target.is_symlink():
        # rename() cannot replace a folder: move the old one aside first.
        aside = _scratch_name(dest)
        target.rename(aside)
        ready.rename(target)
        shutil.rmtree(aside)
    else:
        os.replace(ready, target)
    _fsync_dir(dest)


def _write_atomically(path: Path, text: str) -> None:
    scratch = _scratch_file(path.parent)
    try:
        with scratch.open("w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        scratch.chmod(0o644)
        os.replace(scratch, path)
        _fsync_dir(path.parent)
    finally:
        scratch.unlink(missing_ok=True)


def _seal_tree(folder: Path) -> None:
    """Make a finished folder durable and readable by the server's user.

    Scratch folders are created private (0700); the server container may run
    as another user than this init container, so files become 0644, folders 0755.
    """
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            os.chmod(path, 0o644)
            with open(path, "rb") as stream:
                os.fsync(stream.fileno())
        os.chmod(root, 0o755)
        _fsync_dir(Path(root))


def _fsync_dir(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _remove_scratch(dest: Path) -> None:
    """Remove what a run that crashed here left behind (only our own scratch names)."""
    for leftover in dest.glob(f"{SCRATCH_PREFIX}*"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgefleet.serving.fetch_model",
        description="Fetch and verify a SmallModel's weights into a folder for the model server.",
    )
    parser.add_argument("--source", required=True, help="builtin://, file://, pvc://, http(s)://")
    parser.add_argument("--sha256", default="", help="expected sha256 (required for http(s))")
    parser.add_argument("--dest", required=True, type=Path, help="folder to put the model in")
    parser.add_argument("--format", required=True, choices=[f.value for f in ModelFormat])
    parser.add_argument("--pvc-root", type=Path, default=Path("/mnt/pvc"), help="claims' mounts")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="per network operation")
    parser.add_argument("--attempts", type=int, default=4, help="download tries in all")
    args = parser.parse_args(argv)
    if args.attempts < 1 or args.timeout_s <= 0:
        parser.error("--attempts must be at least 1 and --timeout-s positive")
    options = DownloadOptions(timeout_s=args.timeout_s, attempts=args.attempts)
    try:
        plan = fetch(
            args.source, args.sha256, ModelFormat(args.format), args.dest, args.pvc_root, options
        )
    except FetchError as exc:
        _say(f"error: {exc}")
        return 1
    except OSError as exc:
        # A full disk or an unwritable destination: still one line, not a traceback.
        _say(f"error: {exc}")
        return 1
    print(plan.target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
