"""Which llama.cpp CPU backend this process runs, for start-up logs and tests.

edgefleet's llama.cpp build (inference-server/llama_cpp_build.py) ships ggml's
CPU backend as one module per CPU level, `libggml-cpu-<level>.so`, and ggml
loads the best one this CPU supports. A native build has a single
`libggml-cpu.so` compiled for the build machine, which can die with SIGILL on
another CPU: the start-up log says which one was loaded so an operator can tell.
"""

from __future__ import annotations

import re
from pathlib import Path

_MODULE = re.compile(r"/libggml-cpu(?:-(?P<level>[\w.]+))?\.so")


def loaded_cpu_backend(maps: Path = Path("/proc/self/maps")) -> str:
    """The CPU level of the loaded ggml CPU module ("icelake", "haswell", ...).

    "native" for a single-module build, "none" before llama.cpp is loaded.
    """
    try:
        text = maps.read_text()
    except OSError:
        return "unknown"
    for match in _MODULE.finditer(text):
        return match.group("level") or "native"
    return "none"
