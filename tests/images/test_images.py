"""The CPU image that `make images` builds, run as a real container with podman.

The module builds the image when its inputs changed (images/build.py; cached
otherwise, a cold build takes minutes) and then runs it with podman, no
network: the server as PID 1 with the image's own command, a client inside the
same container. podman is installed from Debian's packages when missing; where
that is impossible the tests fail, they never skip.
"""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from images import build
from tests.dataplane.test_portable_build import cpu_flags, expected_level

# A cold build (Debian base, dependencies from PyPI) takes several minutes.
pytestmark = pytest.mark.timeout(1800)

SERVING_TIMEOUT_S = 120.0
CHART = build.REPO / "charts" / "edgefleet"
BUILD_TOOLS = ("gcc", "cc", "c++", "g++", "cmake", "make", "ld")


@pytest.fixture(scope="module")
def image() -> build.BuiltImage:
    return build.ensure_image("edgefleet")


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(build.podman(*args), capture_output=True, text=True, check=check)


def run_once(image: build.BuiltImage, *command: str) -> str:
    """stdout of `command` in a fresh container of the image, as its own user."""
    flags = ["--rm", "--network=none", *build.run_options(), "--entrypoint", command[0]]
    return podman("run", *flags, image.local_ref, *command[1:]).stdout


@pytest.fixture(scope="module")
def server(image: build.BuiltImage) -> Iterator[str]:
    """A container running the image's own command (edgefleet-server --model default)."""
    name = f"edgefleet-image-test-{uuid.uuid4().hex[:8]}"
    podman(
        "run", "--detach", f"--name={name}", "--network=none", *build.run_options(), image.local_ref
    )
    try:
        wait_serving(name)
        yield name
    finally:
        podman("rm", "--force", "--time=10", name, check=False)


def wait_serving(name: str) -> None:
    deadline = time.monotonic() + SERVING_TIMEOUT_S
    while time.monotonic() < deadline:
        health = podman("exec", name, "edgefleet", "--timeout", "5", "health", check=False)
        if health.returncode == 0:
            return
        state = podman("inspect", "--format={{.State.Status}}", name).stdout.strip()
        if state != "running":
            pytest.fail(f"the server container is {state}:\n{logs(name)[-3000:]}")
        time.sleep(2)
    pytest.fail(f"not SERVING after {SERVING_TIMEOUT_S:.0f}s:\n{logs(name)[-3000:]}")


def logs(name: str) -> str:
    found = podman("logs", name, check=False)
    return found.stdout + found.stderr


def test_the_image_runs_as_uid_10001_not_root(image: build.BuiltImage) -> None:
    assert run_once(image, "id", "-u").strip() == "10001"
    assert run_once(image, "id", "-g").strip() == "10001"


def test_the_runtime_image_holds_no_compiler_or_build_tool(image: build.BuiltImage) -> None:
    script = f"for tool in {' '.join(BUILD_TOOLS)}; do command -v $tool; done; true"
    assert run_once(image, "sh", "-c", script) == ""
    assert (
        run_once(image, "sh", "-c", "ls -d /usr/lib/gcc/* /usr/include/* 2>/dev/null; true") == ""
    )


def test_the_server_process_runs_as_uid_10001(server: str) -> None:
    pid = podman("inspect", "--format={{.State.Pid}}", server).stdout.strip()
    status = Path(f"/proc/{pid}/status").read_text()
    uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, re.M)
    assert uids and uids.groups() == ("10001", "10001"), status


def test_the_server_answers_grpc_health_inside_its_container(server: str) -> None:
    health = podman("exec", server, "edgefleet", "health")
    assert health.stdout.strip() == "SERVING"
    by_model = podman("exec", server, "edgefleet", "health", "--service", "smollm2-135m")
    assert by_model.stdout.strip() == "SERVING"


def test_the_server_generates_with_the_packaged_model(server: str) -> None:
    reply = podman(
        "exec",
        server,
        "edgefleet",
        "generate",
        "--no-stream",
        "--max-tokens",
        "8",
        "--temperature",
        "0",
        "What is the capital of France?",
    )
    assert reply.stdout.strip(), reply.stderr
    summary = re.search(r"\[local/llamacpp/smollm2-135m@\S+ .*tokens=(\d+)\+(\d+)", reply.stderr)
    assert summary, reply.stderr
    assert 1 <= int(summary.group(2)) <= 8


def test_the_portable_build_loads_the_cpu_variant_this_cpu_supports(server: str) -> None:
    level = expected_level(cpu_flags())
    log = logs(server)
    assert f"/llama_cpp/lib/libggml-cpu-{level}.so" in log, log[-3000:]
    assert f"warm-up decode on llama.cpp's {level} CPU backend" in log, log[-3000:]


def test_the_archive_names_the_image_as_the_chart_does(image: build.BuiltImage) -> None:
    # `ctr images import`, `kind load image-archive` and `docker load` take the
    # name from the archive's manifest: the chart's default image, so a chart
    # installed with its defaults runs the loaded image.
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert image.public_ref == f"{values['image']['repository']}:{chart['appVersion']}"
    with tarfile.open(image.archive) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))
    assert [entry["RepoTags"] for entry in manifest] == [[image.public_ref]]
