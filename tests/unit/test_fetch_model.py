"""The fetch-model init container command, against real files and a real HTTP server."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edgefleet.serving.fetch_model import (
    RECORD_FILE,
    SCRATCH_PREFIX,
    BuiltinSource,
    DownloadOptions,
    FetchError,
    HttpSource,
    LocalSource,
    ModelFormat,
    Progress,
    SourceRecord,
    Step,
    fetch,
    main,
    parse_source,
    plan_fetch,
)
from edgefleet.serving.model_files import DEFAULT_MODEL_SHA256, default_model_path

PVC_ROOT = Path("/mnt/pvc")
# Quick retries: the backoff is real waiting, kept short so the suite stays fast.
FAST = DownloadOptions(timeout_s=10, attempts=3, backoff_s=0.01)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fake_gguf(size: int = 5 << 19) -> bytes:
    """Bytes that start like a GGUF file: enough for the fetcher's format check."""
    return b"GGUF" + os.urandom(size - 4)


def hf_archive(prefix: str = "smollm2/", extra: dict[str, bytes] | None = None) -> bytes:
    files = {f"{prefix}config.json": b'{"model_type": "llama"}', f"{prefix}model.safetensors": b"w"}
    files.update(extra or {})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@dataclass
class ModelHost:
    """A real HTTP server on 127.0.0.1 whose routes misbehave on request."""

    files: dict[str, bytes] = field(default_factory=dict)
    #: path -> how many of its first requests get 503.
    fail_first: dict[str, int] = field(default_factory=dict)
    #: path -> bytes served instead of the real ones.
    wrong_bytes: dict[str, bytes] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)
    base_url: str = ""

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"


@pytest.fixture
def host() -> Iterator[ModelHost]:
    state = ModelHost()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with lock:
                seen = state.requests.get(self.path, 0)
                state.requests[self.path] = seen + 1
            if seen < state.fail_first.get(self.path, 0):
                self.send_error(503, "warming up")
                return
            body = state.wrong_bytes.get(self.path, state.files.get(self.path))
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture
def said() -> list[str]:
    return []


def leftovers(dest: Path) -> list[str]:
    return sorted(path.name for path in dest.iterdir() if path.name.startswith(SCRATCH_PREFIX))


# --- pure parts -----------------------------------------------------------


def test_each_uri_form_becomes_its_typed_source() -> None:
    assert parse_source("builtin://smollm2-135m", PVC_ROOT) == BuiltinSource("smollm2-135m")
    assert parse_source("file:///models/a%20b.gguf", PVC_ROOT) == LocalSource(
        Path("/models/a b.gguf")
    )
    assert parse_source("pvc://models-rwx/llm/x.gguf", PVC_ROOT) == LocalSource(
        Path("/mnt/pvc/models-rwx/llm/x.gguf")
    )
    url = "https://models.example/x.gguf?sig=1"
    assert parse_source(url, PVC_ROOT) == HttpSource(url)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("ftp://host/x.gguf", "unsupported model source 'ftp://host/x.gguf'; use builtin://"),
        ("/models/x.gguf", "unsupported model source"),
        ("s3://bucket/x.gguf", "unsupported model source"),
        ("builtin://llama-70b", "unknown builtin model .* packaged models: builtin://smollm2-135m"),
        ("file://models/x.gguf", "not an absolute file URI; write file:///abs/path"),
        ("pvc://Bad_Claim/x.gguf", "does not name a claim"),
        ("pvc://models/../etc/passwd", "without '..'"),
        ("pvc://models", "needs a path inside the claim"),
        ("https:///x.gguf", "has no host"),
    ],
)
def test_bad_uris_are_refused_with_a_clear_message(uri: str, message: str) -> None:
    with pytest.raises(FetchError, match=message):
        parse_source(uri, PVC_ROOT)


def test_plan_picks_the_step_from_source_and_format(tmp_path: Path) -> None:
    digest = "ab" * 32
    cases = {
        ("builtin://smollm2-135m", "", ModelFormat.GGUF): Step.LINK_FILE,
        ("builtin://smollm2-135m", "", ModelFormat.HF): Step.CONVERT_BUILTIN,
        ("file:///m/x.gguf", "", ModelFormat.GGUF): Step.LINK_FILE,
        ("file:///m/hf", "", ModelFormat.HF): Step.LINK_FOLDER,
        ("pvc://c/hf.tar.gz", digest, ModelFormat.HF): Step.EXTRACT_ARCHIVE,
        ("https://h/x.gguf", digest, ModelFormat.GGUF): Step.DOWNLOAD_FILE,
        ("https://h/x.tar.gz", digest, ModelFormat.HF): Step.DOWNLOAD_ARCHIVE,
    }
    for (uri, sha, fmt), step in cases.items():
        plan = plan_fetch(uri, sha, fmt, tmp_path, PVC_ROOT)
        assert plan.step is step, uri
    builtin = plan_fetch("builtin://smollm2-135m", "", ModelFormat.GGUF, tmp_path, PVC_ROOT)
    assert builtin.sha256 == DEFAULT_MODEL_SHA256
    assert builtin.target == tmp_path / "model.gguf"


def test_plan_refuses_what_cannot_be_verified(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="needs --sha256"):
        plan_fetch("https://h/x.gguf?token=secret", "", ModelFormat.GGUF, tmp_path, PVC_ROOT)
    with pytest.raises(FetchError, match="not on the folder"):
        plan_fetch("file:///m/hf", "ab" * 32, ModelFormat.HF, tmp_path, PVC_ROOT)
    with pytest.raises(FetchError, match="not 64 hexadecimal digits"):
        plan_fetch("file:///m/x.gguf", "abc", ModelFormat.GGUF, tmp_path, PVC_ROOT)
    with pytest.raises(FetchError, match=f"sha256 {DEFAULT_MODEL_SHA256}, not the sha256"):
        plan_fetch("builtin://smollm2-135m", "cd" * 32, ModelFormat.GGUF, tmp_path, PVC_ROOT)


def test_secret_query_strings_never_reach_messages(tmp_path: Path) -> None:
    with pytest.raises(FetchError) as error:
        plan_fetch(
            "https://me:pw@h:8443/x.gguf?token=secret", "", ModelFormat.GGUF, tmp_path, PVC_ROOT
        )
    assert "secret" not in str(error.value) and "pw" not in str(error.value)
    assert "https://h:8443/x.gguf" in str(error.value)


def test_plan_skips_only_when_record_and_target_both_match(tmp_path: Path) -> None:
    uri, digest = "https://h/x.gguf", "ab" * 32
    record = SourceRecord(uri, digest, ModelFormat.GGUF)
    assert SourceRecord.from_json(record.to_json()) == record
    assert SourceRecord.from_json("{not json") is None

    def step(existing: SourceRecord | None, present: bool, sha: str = digest) -> Step:
        return plan_fetch(uri, sha, ModelFormat.GGUF, tmp_path, PVC_ROOT, existing, present).step

    assert step(record, present=True) is Step.SKIP
    assert step(record, present=False) is Step.DOWNLOAD_FILE
    assert step(None, present=True) is Step.DOWNLOAD_FILE
    assert step(record, present=True, sha="cd" * 32) is Step.DOWNLOAD_FILE


def test_progress_reports_every_tenth_and_every_five_seconds() -> None:
    lines: list[str] = []
    now = [0.0]
    progress = Progress("downloading x", 100 << 20, lines.append, clock=lambda: now[0])
    for megabytes in range(1, 101):
        now[0] += 0.01
        progress.update(megabytes << 20)
    assert len(lines) == 10
    assert lines[0] == "downloading x: 10.0 MiB / 100.0 MiB (10%) at 100.0 MiB/s"
    assert lines[-1].startswith("downloading x: 100.0 MiB / 100.0 MiB (100%)")

    lines.clear()
    unknown = Progress("downloading y", None, lines.append, clock=lambda: now[0])
    unknown.update(1)
    now[0] += 5.0
    unknown.update(2048)
    assert lines == ["downloading y: 2.0 KiB of unknown size at 409 B/s"]


# --- builtin, file:// and pvc:// ------------------------------------------


def test_builtin_gguf_is_verified_and_symlinked_not_copied(tmp_path: Path, said: list[str]) -> None:
    plan = fetch("builtin://smollm2-135m", "", ModelFormat.GGUF, tmp_path, say=said.append)
    model = tmp_path / "model.gguf"
    assert model.is_symlink()
    assert model.resolve() == default_model_path().resolve()
    assert plan.sha256 == DEFAULT_MODEL_SHA256
    assert json.loads((tmp_path / RECORD_FILE).read_text()) == {
        "uri": "builtin://smollm2-135m",
        "sha256": DEFAULT_MODEL_SHA256,
        "format": "gguf",
    }
    assert any(line.startswith("checking SmolLM2") and "(100%)" in line for line in said)
    assert leftovers(tmp_path) == []


def test_file_uri_with_right_sha_is_linked(tmp_path: Path, said: list[str]) -> None:
    data = fake_gguf(4096)
    source = tmp_path / "store" / "x.gguf"
    source.parent.mkdir()
    source.write_bytes(data)
    dest = tmp_path / "dest"
    fetch(f"file://{source}", sha256(data), ModelFormat.GGUF, dest, say=said.append)
    assert (dest / "model.gguf").resolve() == source
    assert (dest / "model.gguf").read_bytes() == data


def test_file_uri_with_wrong_sha_names_both_digests_and_leaves_nothing(
    tmp_path: Path, said: list[str]
) -> None:
    data = fake_gguf(4096)
    source = tmp_path / "x.gguf"
    source.write_bytes(data)
    dest = tmp_path / "dest"
    with pytest.raises(FetchError) as error:
        fetch(f"file://{source}", "ab" * 32, ModelFormat.GGUF, dest, say=said.append)
    assert sha256(data) in str(error.value) and "ab" * 32 in str(error.value)
    assert sorted(path.name for path in dest.iterdir()) == []


def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path, said: list[str]) -> None:
    source = tmp_path / "notes.txt"
    source.write_bytes(b"hello")
    with pytest.raises(FetchError, match=r"is not a GGUF file \(it starts with b'hell'"):
        fetch(f"file://{source}", "", ModelFormat.GGUF, tmp_path / "d", say=said.append)


def test_missing_file_is_refused(tmp_path: Path, said: list[str]) -> None:
    with pytest.raises(FetchError, match="no file at"):
        fetch(f"file://{tmp_path}/absent.gguf", "", ModelFormat.GGUF, tmp_path, say=said.append)


def test_pvc_uri_resolves_under_the_claims_mount(tmp_path: Path, said: list[str]) -> None:
    pvc_root = tmp_path / "pvc"
    folder = pvc_root / "models-rwx" / "smollm2-hf"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    dest = tmp_path / "dest"
    uri = "pvc://models-rwx/smollm2-hf"
    fetch(uri, "", ModelFormat.HF, dest, pvc_root=pvc_root, say=said.append)
    assert (dest / "hf").resolve() == folder
    # A folder without config.json is not a model.
    (pvc_root / "models-rwx" / "empty").mkdir()
    with pytest.raises(FetchError, match="not a Hugging Face folder"):
        fetch("pvc://models-rwx/empty", "", ModelFormat.HF, dest, pvc_root, say=said.append)


def test_local_hf_archive_is_verified_and_extracted(tmp_path: Path, said: list[str]) -> None:
    archive = tmp_path / "hf.tar.gz"
    archive.write_bytes(hf_archive(prefix=""))
    dest = tmp_path / "dest"
    fetch(f"file://{archive}", sha256(archive.read_bytes()), ModelFormat.HF, dest, say=said.append)
    assert (dest / "hf" / "config.json").read_bytes() == b'{"model_type": "llama"}'
    assert not (dest / "hf").is_symlink()
    # Readable by a server running as another user than the init container.
    assert (dest / "hf").stat().st_mode & 0o777 == 0o755
    assert (dest / "hf" / "model.safetensors").stat().st_mode & 0o777 == 0o644


def test_builtin_hf_without_torch_says_what_is_missing(tmp_path: Path, said: list[str]) -> None:
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("this environment can convert; the message is for the CPU image")
    with pytest.raises(FetchError, match=r"needs torch, transformers, gguf \(the vLLM image"):
        fetch("builtin://smollm2-135m", "", ModelFormat.HF, tmp_path, say=said.append)
    assert list(tmp_path.iterdir()) == []


# --- http(s) ----------------------------------------------------------------


def test_http_download_with_right_sha_shows_progress(
    tmp_path: Path, host: ModelHost, said: list[str]
) -> None:
    data = fake_gguf(5 << 20)
    host.files["/m/x.gguf"] = data
    fetch(
        host.url("/m/x.gguf"),
        sha256(data),
        ModelFormat.GGUF,
        tmp_path,
        options=FAST,
        say=said.append,
    )
    model = tmp_path / "model.gguf"
    assert not model.is_symlink() and model.read_bytes() == data
    progress = [line for line in said if line.startswith("downloading")]
    assert len(progress) >= 5
    assert progress[-1].startswith(f"downloading {host.url('/m/x.gguf')}: 5.0 MiB / 5.0 MiB (100%)")
    assert leftovers(tmp_path) == []


def test_http_without_sha_is_refused_before_any_request(
    tmp_path: Path, host: ModelHost, said: list[str]
) -> None:
    host.files["/x.gguf"] = fake_gguf(64)
    dest = tmp_path / "dest"
    with pytest.raises(FetchError, match="needs --sha256"):
        fetch(host.url("/x.gguf"), "", ModelFormat.GGUF, dest, options=FAST, say=said.append)
    assert host.requests == {}
    assert not dest.exists()


def test_http_wrong_bytes_are_refused_and_removed(
    tmp_path: Path, host: ModelHost, said: list[str]
) -> None:
    data, wrong = fake_gguf(4096), fake_gguf(4096)
    host.files["/x.gguf"] = data
    host.wrong_bytes["/x.gguf"] = wrong
    with pytest.raises(FetchError) as error:
        fetch(
            host.url("/x.gguf"),
            sha256(data),
            ModelFormat.GGUF,
            tmp_path,
            options=FAST,
            say=said.append,
        )
    message = str(error.value)
    assert f"has sha256 {sha256(wrong)}, expected {sha256(data)}" in message
    assert list(tmp_path.iterdir()) == []


def test_http_503s_are_retried_until_success(
    tmp_path: Path, host: ModelHost, said: list[str]
) -> None:
    data = fake_gguf(4096)
    host.files["/x.gguf"] = data
    host.fail_first["/x.gguf"] = 2
    fetch(
        host.url("/x.gguf"), sha256(data), ModelFormat.GGUF, tmp_path, options=FAST, say=said.append
    )
    assert host.requests["/x.gguf"] == 3
    assert (tmp_path / "model.gguf").read_bytes() == data
    assert any("HTTP 503" in line and "try 2/3" in line for line in said)


def test_http_retries_are_bounded(tmp_path: Path, host: ModelHost, said: list[str]) -> None:
    host.files["/x.gguf"] = fake_gguf(64)
    host.fail_first["/x.gguf"] = 100
    with pytest.raises(FetchError, match=r"failed after 3 tries: HTTP 503"):
        fetch(
            host.url("/x.gguf"),
            "ab" * 32,
            ModelFormat.GGUF,
            tmp_path,
            options=FAST,
            say=said.append,
        )
    assert host.requests["/x.gguf"] == 3
    assert list(tmp_path.iterdir()) == []


def test_http_404_fails_at_once_with_the_status(
    tmp_path: Path, host: ModelHost, said: list[str]
) -> None:
    with pytest.raises(FetchError, match=r"GET http://127\.0\.0\.1:\d+/absent\.gguf: HTTP 404"):
        fetch(
            host.url("/absent.gguf"),
            "ab" * 32,
            ModelFormat.GGUF,
            tmp_path,
            options=FAST,
            say=said.append,
        )
    assert host.requests["/absent.gguf"] == 1
    assert list(tmp_path.iterdir()) == []


def unused_port() -> int:
    """A port nobody listens on: bound, then closed, so connecting is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_refused_connection_is_retried_then_reported(tmp_path: Path, said: list[str]) -> None:
    url = f"http://127.0.0.1:{unused_port()}/x.gguf"
    with pytest.raises(FetchError, match=r"failed after 3 tries: .*[Cc]onnection refused"):
        fetch(url, "ab" * 32, ModelFormat.GGUF, tmp_path, options=FAST, say=said.append)
    assert sum("try " in line for line in said) == 2


def test_http_hf_archive_is_extracted_into_hf(
    tmp_path: Path, host: ModelHost, said: list[str]
) -> None:
    archive = hf_archive(prefix="smollm2/")
    host.files["/smollm2.tar.gz"] = archive
    fetch(
        host.url("/smollm2.tar.gz"),
        sha256(archive),
        ModelFormat.HF,
        tmp_path,
        options=FAST,
        say=said.append,
    )
    assert sorted(path.name for path in (tmp_path / "hf").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    assert sorted(path.name for path in tmp_path.iterdir()) == [RECORD_FILE, "hf"]


@pytest.mark.parametrize("evil", ["../evil", "/tmp/evil-abs", "smollm2/../../evil"])
def test_archive_escaping_the_folder_is_refused(
    tmp_path: Path, host: ModelHost, said: list[str], evil: str
) -> None:
    archive = hf_archive(extra={evil: b"owned"})
    host.files["/evil.tar.gz"] = archive
    dest = tmp_path / "dest"
    with pytest.raises(FetchError, match=re.escape(f"archive member '{evil}' would land outside")):
        fetch(
            host.url("/evil.tar.gz"),
            sha256(archive),
            ModelFormat.HF,
            dest,
            options=FAST,
            say=said.append,
        )
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil-abs").exists()


def test_archive_symlink_pointing_out_is_refused(tmp_path: Path, said: list[str]) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        link = tarfile.TarInfo("hf/config.json")
        link.type, link.linkname = tarfile.SYMTYPE, "../../etc/passwd"
        tar.addfile(link)
    archive = tmp_path / "hf.tar"
    archive.write_bytes(buffer.getvalue())
    with pytest.raises(FetchError, match=r"'hf/config\.json' would land outside"):
        fetch(f"file://{archive}", "", ModelFormat.HF, tmp_path / "d", say=said.append)


def test_second_run_skips_and_a_new_source_replaces(
    tmp_path: Path, host: ModelHost, said: list[str]
) -> None:
    first, second = hf_archive(prefix=""), hf_archive(prefix="", extra={"extra.txt": b"2"})
    host.files["/1.tar.gz"], host.files["/2.tar.gz"] = first, second
    plan = fetch(
        host.url("/1.tar.gz"),
        sha256(first),
        ModelFormat.HF,
        tmp_path,
        options=FAST,
        say=said.append,
    )
    assert plan.step is Step.DOWNLOAD_ARCHIVE
    again = fetch(
        host.url("/1.tar.gz"),
        sha256(first),
        ModelFormat.HF,
        tmp_path,
        options=FAST,
        say=said.append,
    )
    assert again.step is Step.SKIP
    assert host.requests["/1.tar.gz"] == 1
    assert said[-1].endswith("nothing to do")
    fetch(
        host.url("/2.tar.gz"),
        sha256(second),
        ModelFormat.HF,
        tmp_path,
        options=FAST,
        say=said.append,
    )
    assert (tmp_path / "hf" / "extra.txt").read_bytes() == b"2"
    assert leftovers(tmp_path) == []


def test_a_crashed_runs_scratch_is_cleared(tmp_path: Path, said: list[str]) -> None:
    (tmp_path / f"{SCRATCH_PREFIX}abc.part").write_bytes(b"half")
    (tmp_path / f"{SCRATCH_PREFIX}def").mkdir()
    fetch("builtin://smollm2-135m", "", ModelFormat.GGUF, tmp_path, say=said.append)
    assert leftovers(tmp_path) == []


# --- the command ----------------------------------------------------------


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "edgefleet.serving.fetch_model", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_cli_succeeds_then_skips_and_prints_the_model_path(tmp_path: Path) -> None:
    argv = ("--source", "builtin://smollm2-135m", "--dest", str(tmp_path), "--format", "gguf")
    done = run_cli(*argv)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{tmp_path / 'model.gguf'}\n"
    again = run_cli(*argv)
    assert again.returncode == 0
    assert again.stderr.endswith("nothing to do\n")


def test_cli_errors_are_one_line_and_non_zero(tmp_path: Path) -> None:
    bad = run_cli("--source", "ftp://h/x", "--dest", str(tmp_path), "--format", "gguf")
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1
    assert bad.stderr.startswith("fetch-model: error: unsupported model source 'ftp://h/x'")
    assert run_cli("--source", "builtin://smollm2-135m", "--format", "gguf").returncode == 2


def test_main_reports_an_unwritable_destination_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    code = main(["--source", "builtin://smollm2-135m", "--dest", str(blocker), "--format", "gguf"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("fetch-model: error: ") and err.count("\n") == 1
