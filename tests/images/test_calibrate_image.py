"""The calibration image (edgefleet-calibrate) run with podman as KubeRay runs a RayJob.

KubeRay 1.5 starts the head pod with `/bin/bash -c -- "ulimit -n 65536; ray start --head
..."`, checks it with exec probes that `wget` the raylet's and the dashboard's health
endpoints, and in K8sJobMode runs a submitter that submits the entrypoint to the dashboard
at :8265 and follows its logs. These tests do the same, the submitter in a container of its
own on the head's network, without capabilities and without a way out (`--network=none`).
The image is built when its inputs changed (images/build.py); podman is installed from
Debian's packages when missing, and the tests fail, never skip, where that is impossible.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator

import pytest

from images import build

# A cold build (the CPU image, then Ray and scikit-learn from PyPI) takes minutes.
pytestmark = pytest.mark.timeout(1800)

READY_TIMEOUT_S = 120.0
HEAD_ARGS = (
    "--dashboard-host=0.0.0.0 --metrics-export-port=8080 --block "
    "--dashboard-agent-listen-port=52365 --num-cpus=1 --disable-usage-stats"
)
# KubeRay's readiness and liveness probe on a head pod (utils.BaseWgetHealthCommand).
HEAD_PROBE = (
    "wget --tries 1 -T 2 -q -O- http://localhost:52365/api/local_raylet_healthz | grep success"
    " && wget --tries 1 -T 10 -q -O- http://localhost:8265/api/gcs_healthz | grep success"
)
# Pods KubeRay makes for the chart run without privileges (docs/STYLE.md, pods).
UNPRIVILEGED = ("--cap-drop=ALL", "--security-opt=no-new-privileges")


@pytest.fixture(scope="module")
def images() -> tuple[build.BuiltImage, build.BuiltImage]:
    """The CPU image and the calibration image built on it."""
    cpu = build.ensure_image("edgefleet")
    return cpu, build.ensure_image("edgefleet-calibrate")


@pytest.fixture(scope="module")
def image(images: tuple[build.BuiltImage, build.BuiltImage]) -> build.BuiltImage:
    return images[1]


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(build.podman(*args), capture_output=True, text=True, check=check)


def run_once(image: build.BuiltImage, *command: str, check: bool = True) -> str:
    """stdout and stderr of `command` in a fresh container of the image, as its own user."""
    flags = ["--rm", "--network=none", *UNPRIVILEGED, *build.run_options()]
    entrypoint = ["--entrypoint", command[0], image.local_ref, *command[1:]]
    done = podman("run", *flags, *entrypoint, check=check)
    return done.stdout + done.stderr


def logs(name: str) -> str:
    found = podman("logs", name, check=False)
    return found.stdout + found.stderr


@pytest.fixture(scope="module")
def head(image: build.BuiltImage) -> Iterator[str]:
    """A Ray head started as KubeRay starts it, once its probes pass."""
    name = f"edgefleet-ray-head-{uuid.uuid4().hex[:8]}"
    command = f"ulimit -n 65536; ray start --head {HEAD_ARGS}"
    podman(
        "run", "--detach", f"--name={name}", "--network=none", *UNPRIVILEGED,
        *build.run_options(), "--entrypoint=/bin/bash", image.local_ref, "-c", "--", command,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while podman("exec", name, "bash", "-c", HEAD_PROBE, check=False).returncode != 0:
            state = podman("inspect", "--format={{.State.Status}}", name).stdout.strip()
            if state != "running":
                pytest.fail(f"the Ray head container is {state}:\n{logs(name)[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"KubeRay's probes fail after {READY_TIMEOUT_S:.0f}s:\n{logs(name)}")
            time.sleep(1)
        yield name
    finally:
        podman("rm", "--force", "--time=10", name, check=False)


def test_the_cpu_image_every_node_pulls_stays_without_ray(
    images: tuple[build.BuiltImage, build.BuiltImage],
) -> None:
    cpu, _ = images
    found = run_once(cpu, "python", "-c", "import ray", check=False)
    assert "No module named 'ray'" in found


def test_the_calibrate_image_adds_layers_to_the_cpu_image_and_changes_none(
    images: tuple[build.BuiltImage, build.BuiltImage],
) -> None:
    layers = [
        podman("image", "inspect", "--format={{json .RootFS.Layers}}", built.local_ref).stdout
        for built in images
    ]
    cpu, calibrate = (json.loads(found) for found in layers)
    assert calibrate[: len(cpu)] == cpu
    assert len(calibrate) > len(cpu)


def test_the_image_runs_as_uid_10001_with_its_home(image: build.BuiltImage) -> None:
    assert run_once(image, "id", "-u").strip() == "10001"
    assert run_once(image, "sh", "-c", "echo $HOME").strip() == "/home/edgefleet"


def test_a_login_shell_finds_ray_and_python_in_the_virtual_environment(
    image: build.BuiltImage,
) -> None:
    # KubeRay's ENABLE_LOGIN_SHELL=true runs `bash -lc`, and Debian's /etc/profile resets PATH.
    found = run_once(image, "bash", "-lc", "command -v ray python").split()
    assert found == ["/opt/edgefleet/venv/bin/ray", "/opt/edgefleet/venv/bin/python"]


def test_a_rayjob_submitter_runs_a_job_on_the_head(image: build.BuiltImage, head: str) -> None:
    job = f"edgefleet-test-{uuid.uuid4().hex[:8]}"
    address = "http://127.0.0.1:8265"
    entrypoint = "python -c \"import ray; ray.init(); print('resources', ray.cluster_resources())\""
    # KubeRay's K8sJobMode submitter command (common.BuildJobSubmitCommand).
    submitter = (
        f"if ! ray job status --address {address} {job} >/dev/null 2>&1 ; then "
        f"ray job submit --address {address} --no-wait --submission-id {job} -- {entrypoint} ; "
        f"fi ; ray job logs --address {address} --follow {job}"
    )
    done = podman(
        "run", "--rm", f"--network=container:{head}", *UNPRIVILEGED, *build.run_options(),
        "--entrypoint=/bin/bash", image.local_ref, "-ce", "--", submitter, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "'CPU': 1.0" in output, output
    details = podman("exec", head, "wget", "-q", "-O-", f"{address}/api/jobs/{job}").stdout
    assert json.loads(details)["status"] == "SUCCEEDED", details


def test_the_calibration_job_loads_beside_the_head(head: str) -> None:
    imports = "import edgefleet.calibrate.pipeline, sklearn, ray.data"
    podman("exec", head, "python", "-c", imports)
    usage = podman("exec", head, "edgefleet-calibrate", "--help").stdout
    assert usage.startswith("usage: edgefleet calibrate")


def test_the_archive_names_the_image_as_the_chart_would(image: build.BuiltImage) -> None:
    assert image.public_ref == build.public_ref("edgefleet-calibrate")
    assert image.public_ref.startswith(f"{build.PUBLIC_REPOSITORY}/edgefleet-calibrate:")
    with tarfile.open(image.archive) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))
    assert [entry["RepoTags"] for entry in manifest] == [[image.public_ref]]
