"""Builds edgefleet's container images with podman: `make images`, `python3 -m images.build`."""
