"""The llama.cpp build is portable: CPU levels chosen at run time, never AMX, never native.

A build compiled with -march=native on a CPU with AMX crashed every model
server with SIGILL on another machine of the same kind. These tests read the
installed libraries themselves, so they fail on any such build.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.model_server import ModelServer

LIB = Path(importlib.util.find_spec("llama_cpp").origin).parent / "lib"
AMX_MNEMONIC = re.compile(
    r"\s(tilezero|tileloadd|tileloaddt1|tilestored|ldtilecfg|sttilecfg|tdp\w+)\s"
)
ZMM = re.compile(r"%zmm\d+")


def cpu_modules() -> dict[str, Path]:
    return {
        path.name.removeprefix("libggml-cpu-").split(".so")[0]: path
        for path in LIB.glob("libggml-cpu-*.so*")
    }


def disassembly(path: Path) -> str:
    objdump = shutil.which("objdump")
    assert objdump, "objdump (binutils) is needed to inspect the llama.cpp build"
    return subprocess.run(
        [objdump, "-d", "--no-show-raw-insn", str(path)], check=True, capture_output=True, text=True
    ).stdout


def test_the_cpu_backend_is_one_module_per_cpu_level_without_amx() -> None:
    levels = cpu_modules()
    assert {"x64", "haswell", "skylakex", "icelake"} <= set(levels), sorted(levels)
    assert "sapphirerapids" not in levels
    # A native build has a single libggml-cpu.so compiled for the build machine.
    assert not list(LIB.glob("libggml-cpu.so*"))


def test_no_library_holds_amx_instructions() -> None:
    for path in sorted(LIB.glob("lib*.so*")):
        found = AMX_MNEMONIC.search(disassembly(path))
        assert found is None, f"{path.name} contains AMX instruction {found.group(1)}"


def test_code_outside_the_cpu_modules_is_built_for_any_x86_64() -> None:
    # Everything that is not dispatched at run time must run on the oldest CPU:
    # a native build vectorises libllama and libggml-base with the build CPU's
    # widest registers.
    for name in ("libllama.so", "libggml-base.so", "libggml.so"):
        path = next(LIB.glob(name + "*"))
        assert not ZMM.search(disassembly(path)), f"{path.name} uses AVX-512 registers"
    assert not ZMM.search(disassembly(cpu_modules()["haswell"]))


def expected_level(flags: set[str]) -> str:
    """The module ggml should pick here: the richest level whose features this CPU has."""
    avx512 = {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"}
    avx2 = {"avx", "avx2", "fma", "f16c", "bmi2", "sse4_2"}
    if avx512 | {"avx512vbmi", "avx512_vnni"} | avx2 <= flags:
        return "icelake"
    if avx512 | avx2 <= flags:
        return "skylakex"
    if avx2 | {"avx_vnni"} <= flags:
        return "alderlake"
    if avx2 <= flags:
        return "haswell"
    return "x64"


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    pytest.fail("/proc/cpuinfo lists no CPU flags")


def test_the_loaded_module_is_the_best_this_cpu_supports() -> None:
    probe = (
        "import llama_cpp\n"
        "from edgefleet.serving.engines.cpu_backend import loaded_cpu_backend\n"
        "print(loaded_cpu_backend())\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert loaded == expected_level(cpu_flags())


def test_the_server_decodes_once_before_it_reports_serving(model_server: ModelServer) -> None:
    log = model_server.log()
    warm_up = log.index(f"warm-up decode on llama.cpp's {expected_level(cpu_flags())} CPU backend")
    done = log.index("warm-up decode done")
    serving = re.search(r"serving \S+ with llamacpp", log)
    assert serving, log[-2000:]
    assert warm_up < done < serving.start()
