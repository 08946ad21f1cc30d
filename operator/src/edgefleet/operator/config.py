"""The operator's settings: one typed class, read from EDGEFLEET_* environment variables.

The Helm chart sets these on the operator's Deployment; defaults suit a
cluster where the chart's own names were kept.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class OperatorConfig:
    # The CPU image: operator, router, egress and llama.cpp model servers.
    image: str = "ghcr.io/edgefleet/edgefleet:0.1.0"
    # The GPU image (a vLLM base) for vLLM model servers.
    vllm_image: str = "ghcr.io/edgefleet/edgefleet-vllm:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    # The CPU image with Ray (RouterCalibration runs: KubeRay's head and workers).
    calibration_image: str = "ghcr.io/edgefleet/edgefleet-calibrate:0.1.0"
    # The chart's ClusterRole every router's ServiceAccount is bound to.
    router_cluster_role: str = "edgefleet-router"
    # The chart's ClusterRole (pods: list, watch) bound to a router's
    # ServiceAccount in each of its policy's privacy.sensitiveNamespaces.
    router_pods_cluster_role: str = "edgefleet-router-pods"
    # The chart's ClusterRole (configmaps: create) a RouterCalibration's run is bound to.
    calibration_cluster_role: str = "edgefleet-calibration"
    # Kopf peering object (ClusterKopfPeering) shared by every operator replica.
    peering_name: str = "edgefleet"
    # A node is a GPU node when it carries this label with value "true"
    # (NVIDIA GPU feature discovery's label; the kwok fleet sets it too).
    gpu_node_label: str = "nvidia.com/gpu.present"
    gpu_resource: str = "nvidia.com/gpu"
    # Status follows changes to a resource's children and the nodes within a
    # second; this is the safety net: every resource's status is recomputed,
    # and drift repaired, at least this often even when no event said so.
    status_interval_s: float = 300.0
    # Comma-separated CIDRs model pods may fetch http(s) sources from (besides
    # in-cluster pods); empty keeps model pods inside the cluster.
    model_fetch_cidrs: str = ""
    # Comma-separated API server endpoints as ip:port for the router's
    # NetworkPolicy; empty: read from the `kubernetes` Service's EndpointSlice.
    api_server_endpoints: str = ""
    # JSON {"nodeSelector", "tolerations", "resources"} for router and egress
    # pods (the chart's router.pod / egress.pod values).
    router_pod: str = ""
    egress_pod: str = ""
    # DEBUG, INFO, WARNING or ERROR.
    log_level: str = "INFO"
    # Parallel synchronous handler threads (manifest building and API calls).
    workers: int = 16

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorConfig:
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for item in fields(cls):
            raw = environ.get(f"EDGEFLEET_{item.name.upper()}")
            if raw is None:
                continue
            kind = type(item.default)
            try:
                values[item.name] = kind(raw)
            except ValueError as exc:
                raise ValueError(
                    f"EDGEFLEET_{item.name.upper()}: must be {kind.__name__}, got {raw!r}"
                ) from exc
        return cls(**values)  # type: ignore[arg-type]

    def pod_settings(self, component: str) -> dict[str, Any]:
        raw = self.router_pod if component == "router" else self.egress_pod
        if not raw:
            return {}
        try:
            settings = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"EDGEFLEET_{component.upper()}_POD: not JSON: {exc}") from exc
        if not isinstance(settings, dict):
            raise ValueError(f"EDGEFLEET_{component.upper()}_POD: must be a JSON object")
        return settings

    def fetch_cidrs(self) -> list[str]:
        return [c.strip() for c in self.model_fetch_cidrs.split(",") if c.strip()]
