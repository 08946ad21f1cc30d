"""Build llama.cpp for edgefleet, once per recipe, into ~/.cache/edgefleet/.

    python inference-server/llama_cpp_build.py wheel            # portable wheel dir (default)
    python inference-server/llama_cpp_build.py wheel --native   # opt-in: this CPU only
    python inference-server/llama_cpp_build.py tools            # llama-server, llama-batched-bench

Each command prints the folder holding what it built, building it first when the
cache lacks it. The cache key is a hash of the recipe (version, CMake flags and
this file), so a changed recipe builds anew and an unchanged one never twice.

Portable (the default, and the only build that is ever shipped or cached for
the product): no -march=native; ggml's CPU backend is built as one loadable
module per CPU level (GGML_BACKEND_DL) and the best one this CPU can run is
picked at run time. A native build compiled on a CPU with AMX died with SIGILL
on another machine of the same kind, so the AMX variant is left out, and the
list of variants is kept to the levels that matter for edge CPUs (each variant
is a full compile of ggml-cpu).

Two small edits to the llama-cpp-python sdist make that work:
- ggml's x86 variant list is replaced by VARIANTS below;
- llama_cpp/llama_cpp.py loads the CPU variants from its own lib folder right
  after loading libllama (ggml only searches the executable's folder and the
  working directory, neither of which is site-packages), so every user of the
  wheel, `python -m llama_cpp.server` included, gets the dispatch.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

VERSION = "0.3.36"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgefleet"

# (name, ggml features): each is compiled as libggml-cpu-<name>.so; ggml scores
# them against CPUID at load time and takes the best one the CPU supports.
VARIANTS = (
    ("x64", ""),  # any x86-64: SSE2 only
    ("haswell", "SSE42 AVX F16C FMA AVX2 BMI2"),  # x86-64-v3: Intel 2013+, AMD Zen 1-3
    ("alderlake", "SSE42 AVX F16C FMA AVX2 BMI2 AVX_VNNI"),  # Intel client without AVX-512
    ("skylakex", "SSE42 AVX F16C FMA AVX2 BMI2 AVX512"),
    # AVX-512 with VBMI and VNNI: Ice Lake and later Xeons, AMD Zen 4/5.
    ("icelake", "SSE42 AVX F16C FMA AVX2 BMI2 AVX512 AVX512_VBMI AVX512_VNNI"),
)

PORTABLE_FLAGS = (
    "-DGGML_NATIVE=OFF",
    "-DGGML_BACKEND_DL=ON",
    "-DGGML_CPU_ALL_VARIANTS=ON",
    # scikit-build-core installs modules under <platlib>/<bindir>: put the
    # CPU variants next to libllama.so, where the loader below looks.
    "-DCMAKE_INSTALL_BINDIR=llama_cpp/lib",
)
NATIVE_FLAGS = ("-DGGML_NATIVE=ON",)
PATCH_REVISION = 1

LOADER = """
# edgefleet build: ggml's CPU backend is one loadable module per CPU level
# (GGML_BACKEND_DL). Load the best one this CPU runs from this package's own
# lib folder; ggml would only look beside the executable and in the cwd.
# The calls go through libllama's handle, so they reach the very libggml it
# linked (the wheel holds several copies of libggml.so under other names).
def _load_cpu_backends() -> None:
    _lib.ggml_backend_reg_count.restype = ctypes.c_size_t
    if _lib.ggml_backend_reg_count() == 0:
        _lib.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
        _lib.ggml_backend_load_all_from_path(str(_base_path).encode())


_load_cpu_backends()
"""


def _run(cmd: list[str], **kwargs) -> None:
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, **kwargs)


def recipe_key(kind: str, native: bool) -> str:
    """A hash of everything that decides what gets built; comments and layout do not count.

    Bump PATCH_REVISION when the patch functions change what they write.
    """
    recipe = (kind, VERSION, native, VARIANTS, PORTABLE_FLAGS, NATIVE_FLAGS, LOADER, PATCH_REVISION)
    return hashlib.sha256(repr(recipe).encode()).hexdigest()[:12]


def sdist() -> Path:
    """The llama-cpp-python source archive, downloaded once into the cache."""
    folder = CACHE / "sdist"
    found = sorted(folder.glob(f"llama_cpp_python-{VERSION}.tar.gz"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--no-binary",
            ":all:",
            "-d",
            str(folder),
            f"llama-cpp-python=={VERSION}",
        ]
    )
    return next(folder.glob(f"llama_cpp_python-{VERSION}.tar.gz"))


def _extract(archive: tarfile.TarFile, workdir: Path) -> None:
    """Unpack the sdist, refusing members that would land outside `workdir`.

    Extraction filters came in Python 3.11.4; Debian bookworm's python3 (the
    image base) is 3.11.2, so older versions check the paths themselves.
    """
    if hasattr(tarfile, "data_filter"):
        archive.extractall(workdir, filter="data")
        return
    root = workdir.resolve()
    for member in archive.getmembers():
        target = (root / member.name).resolve()
        if root not in target.parents or member.issym() or member.islnk() or member.isdev():
            raise SystemExit(f"refusing sdist member {member.name!r}: outside {root} or not a file")
    archive.extractall(workdir)


def patched_source(workdir: Path, portable: bool) -> Path:
    with tarfile.open(sdist()) as archive:
        _extract(archive, workdir)
    src = workdir / f"llama_cpp_python-{VERSION}"
    if portable:
        _patch_variants(src / "vendor/llama.cpp/ggml/src/CMakeLists.txt")
        _patch_loader(src / "llama_cpp/llama_cpp.py")
    return src


def _patch_variants(cmakelists: Path) -> None:
    text = cmakelists.read_text()
    block = re.search(
        r'(if \(GGML_SYSTEM_ARCH STREQUAL "x86"\)\n)(\s+ggml_add_cpu_backend_variant\(x64\).*?)'
        r'(\n\s+elseif\s*\(GGML_SYSTEM_ARCH STREQUAL "ARM"\))',
        text,
        flags=re.S,
    )
    if block is None:
        raise SystemExit(f"{cmakelists}: the x86 CPU variant list moved; update the patch")
    lines = "\n".join(
        f"        ggml_add_cpu_backend_variant({f'{name} {features}'.strip()})"
        for name, features in VARIANTS
    )
    cmakelists.write_text(text[: block.start(2)] + lines + text[block.end(2) :])


def _patch_loader(module: Path) -> None:
    text = module.read_text()
    anchor = "_lib = load_shared_library(_lib_base_name, _base_path)\n"
    if anchor not in text:
        raise SystemExit(f"{module}: library loading moved; update the patch")
    module.write_text(text.replace(anchor, anchor + LOADER, 1))


def _publish(staging: Path, target: Path, started: float) -> Path:
    (staging / ".complete").write_text(f"built in {time.monotonic() - started:.0f}s\n")
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    print(f"built in {time.monotonic() - started:.0f}s into {target}", file=sys.stderr)
    return target


def build_wheel(native: bool) -> Path:
    label = "native" if native else "portable"
    target = CACHE / "wheels" / f"llama-cpp-python-{VERSION}-{label}-{recipe_key('wheel', native)}"
    if (target / ".complete").exists():
        return target
    print(
        f"building llama-cpp-python {VERSION} ({label}; once, several minutes on 2 cores)",
        file=sys.stderr,
        flush=True,
    )
    started = time.monotonic()
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="llama-build-") as tmp:
        src = patched_source(Path(tmp), portable=not native)
        env = {
            **os.environ,
            "CMAKE_ARGS": " ".join(NATIVE_FLAGS if native else PORTABLE_FLAGS),
            "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2),
        }
        _run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(staging), str(src)],
            env=env,
        )
    return _publish(staging, target, started)


def build_tools() -> Path:
    """llama.cpp's own C++ server and batched bench, portable, for benchmarks."""
    target = CACHE / "llama-tools" / f"{VERSION}-portable-{recipe_key('tools', False)}"
    if (target / ".complete").exists():
        return target
    started = time.monotonic()
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="llama-tools-") as tmp:
        src = patched_source(Path(tmp), portable=True) / "vendor/llama.cpp"
        build = Path(tmp) / "build"
        flags = [f for f in PORTABLE_FLAGS if "INSTALL_BINDIR" not in f]
        _run(
            [
                "cmake",
                "-S",
                str(src),
                "-B",
                str(build),
                "-DCMAKE_BUILD_TYPE=Release",
                "-DLLAMA_CURL=OFF",
                "-DLLAMA_OPENSSL=OFF",
                "-DBUILD_SHARED_LIBS=ON",
                "-DCMAKE_BUILD_RPATH=$ORIGIN",
                *flags,
            ]
        )
        _run(
            [
                "cmake",
                "--build",
                str(build),
                "-j",
                str(os.cpu_count() or 2),
                "--target",
                "llama-server",
                "llama-batched-bench",
            ]
        )
        # llama.cpp sends its programs and backend modules to <build>/bin
        # whatever the command line says; keep them before the build goes.
        for built in (build / "bin").iterdir():
            shutil.copy2(built, staging / built.name, follow_symlinks=True)
    return _publish(staging, target, started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("wheel", "tools"))
    parser.add_argument(
        "--native",
        action="store_true",
        help="compile for this CPU only (-march=native); never ship it",
    )
    args = parser.parse_args()
    if args.what == "tools" and args.native:
        parser.error("tools are built portable only")
    print(build_wheel(args.native) if args.what == "wheel" else build_tools())


if __name__ == "__main__":
    main()
