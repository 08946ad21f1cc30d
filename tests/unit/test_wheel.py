"""The built wheel holds every module of the source trees, and each imports from it.

pyproject.toml maps each subpackage of the `edgefleet` namespace by hand, so a
new subpackage missing from that list would work in the editable checkout and
be absent from every installed copy (and image). This builds the wheel and
imports each module from the wheel alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE_TREES = (ROOT / "inference-server" / "src", ROOT / "operator" / "src")
# Modules that need an optional extra this environment does not install.
OPTIONAL_IMPORTS = {"vllm", "gguf", "torch", "transformers", "safetensors", "accelerate"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(out), str(ROOT)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    (found,) = out.glob("edgefleet-*.whl")
    return found


def source_modules() -> set[str]:
    modules = set()
    for tree in SOURCE_TREES:
        for path in tree.rglob("*.py"):
            parts = path.relative_to(tree).with_suffix("").parts
            modules.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def wheel_modules(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if n.startswith("edgefleet/") and n.endswith(".py")]
    return {n.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for n in names}


def test_the_wheel_holds_every_source_module_and_the_packaged_classifier(wheel: Path) -> None:
    missing = source_modules() - wheel_modules(wheel)
    assert not missing, f"pyproject.toml's package map misses: {sorted(missing)}"
    with zipfile.ZipFile(wheel) as archive:
        assert any(n.startswith("edgefleet/routing/models/") for n in archive.namelist())


def test_every_module_imports_from_the_wheel_alone(wheel: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp_path)
    probe = textwrap.dedent(f"""
        import importlib, json, sys
        optional = {sorted(OPTIONAL_IMPORTS)!r}
        failed = {{}}
        for name in {sorted(wheel_modules(wheel))!r}:
            try:
                module = importlib.import_module(name)
            except ImportError as error:
                if (error.name or "").split(".")[0] not in optional:
                    failed[name] = repr(error)
                continue
            origin = getattr(module, "__file__", None) or next(iter(module.__path__))
            if not origin.startswith({str(tmp_path)!r}):
                failed[name] = "imported from " + origin
        print(json.dumps(failed))
    """)
    # -S: no .pth files, so the checkout's editable install cannot answer the
    # imports; the environment's site-packages still provides the dependencies.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), sysconfig.get_path("purelib")]),
    }
    result = subprocess.run(
        [sys.executable, "-S", "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "{}", result.stdout
