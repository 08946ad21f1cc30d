"""The calibration image's recipe (images/build.py, inference-server/Dockerfile.calibrate).

No podman here: what the image is built from, what decides its hash, and the pins it
installs. tests/images/test_calibrate_image.py builds and runs it.
"""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement

from images import build

CALIBRATE = build.SPECS["edgefleet-calibrate"]


def _project() -> dict:
    with open(build.REPO / "pyproject.toml", "rb") as file:
        return tomllib.load(file)["project"]


def _requirements(names: list[str]) -> dict[str, Requirement]:
    return {(req := Requirement(line)).name: req for line in names}


def test_the_calibrate_image_is_built_from_the_cpu_image_it_names_by_default() -> None:
    assert CALIBRATE.parent == "edgefleet"
    dockerfile = (build.REPO / CALIBRATE.dockerfile).read_text()
    assert f"ARG BASE_IMAGE={build.public_ref('edgefleet')}\nFROM ${{BASE_IMAGE}}\n" in dockerfile
    assert build.public_ref("edgefleet-calibrate") == (
        f"ghcr.io/edgefleet/edgefleet-calibrate:{_project()['version']}"
    )


def test_the_calibrate_image_installs_the_calibrate_extra_read_from_pyproject() -> None:
    dockerfile = (build.REPO / CALIBRATE.dockerfile).read_text()
    assert '["optional-dependencies"]["calibrate"]' in dockerfile
    assert re.search(r"^USER 10001$", dockerfile, re.M)
    assert re.search(r"^ENV HOME=/home/edgefleet", dockerfile, re.M)


def test_the_calibrate_extra_pins_ray_with_its_job_server_and_scikit_learn() -> None:
    extra = _requirements(_project()["optional-dependencies"]["calibrate"])
    assert {"default", "data"} <= extra["ray"].extras
    for name in ("ray", "scikit-learn"):
        (pin,) = extra[name].specifier
        assert pin.operator == "==", f"{name} is not pinned: {extra[name]}"


def test_the_cpu_image_every_node_pulls_holds_no_ray() -> None:
    assert build.SPECS["edgefleet"].parent is None
    assert "ray" not in _requirements(_project()["dependencies"])


def test_the_calibrate_hash_follows_its_parent_pyproject_and_dockerfile_only() -> None:
    hashed = {path.relative_to(build.REPO).as_posix() for path in build.input_files(CALIBRATE)}
    assert hashed == {"inference-server/Dockerfile.calibrate", "pyproject.toml"}
    assert build.image_key(CALIBRATE, "0" * 12, None) == build.image_key(CALIBRATE, "0" * 12, None)
    assert build.image_key(CALIBRATE, "0" * 12, None) != build.image_key(CALIBRATE, "1" * 12, None)
