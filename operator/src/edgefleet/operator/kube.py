"""The operator's only door to the API: server-side apply, list, delete, status.

Thin on purpose: manifests come from the pure builders and status from
edgefleet.operator.status; this module maps a kind to its REST path and
sends it. Credentials and which refusals are transient are shared with the
router (edgefleet.kubeapi). Server-side apply with one field manager
makes every reconcile idempotent: a restarted operator re-applies the same
objects under the same names and nothing is duplicated.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kubernetes import client

from edgefleet.kubeapi import transient
from edgefleet.operator.names import FIELD_MANAGER

# kind → (API prefix, plural). Only what the operator manages.
KINDS: dict[str, tuple[str, str]] = {
    "Deployment": ("/apis/apps/v1", "deployments"),
    "DaemonSet": ("/apis/apps/v1", "daemonsets"),
    "Service": ("/api/v1", "services"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    "HorizontalPodAutoscaler": ("/apis/autoscaling/v2", "horizontalpodautoscalers"),
    "SmallModel": ("/apis/edgefleet.io/v1alpha1", "smallmodels"),
    "RoutingPolicy": ("/apis/edgefleet.io/v1alpha1", "routingpolicies"),
    "RouterCalibration": ("/apis/edgefleet.io/v1alpha1", "routercalibrations"),
    # KubeRay's: a RouterCalibration's runs.
    "RayJob": ("/apis/ray.io/v1", "rayjobs"),
    "EndpointSlice": ("/apis/discovery.k8s.io/v1", "endpointslices"),
}


class ApiError(Exception):
    """A refused API call, with the server's status code and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message

    @property
    def transient(self) -> bool:
        """Worth sending again unchanged (conflict, throttling, server trouble, no answer)."""
        return transient(self.status)


def path(kind: str, namespace: str, name: str = "") -> str:
    prefix, plural = KINDS[kind]
    url = f"{prefix}/namespaces/{namespace}/{plural}"
    if name:
        url += f"/{name}"
    return url


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    def _call(
        self,
        method: str,
        url: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        _, full_url, headers, _, _ = self.api.param_serialize(
            method,
            url,
            query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            auth_settings=["BearerToken"],
        )
        # The client encodes a body itself for JSON content types only (it would
        # encode text twice); an apply (YAML, of which JSON is a subset) goes as text.
        payload = body if body is None or "json" in content_type else json.dumps(body)
        try:
            response = self.api.call_api(method, full_url, header_params=headers, body=payload)
            data = response.read()
        except client.ApiException as exc:
            raise ApiError(exc.status or 0, _message(exc.body) or str(exc.reason)) from exc
        if response.status >= 400:
            raise ApiError(response.status, _message(data))
        return json.loads(data) if data else None

    def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        url = path(manifest["kind"], meta["namespace"], meta["name"])
        query = [("fieldManager", FIELD_MANAGER), ("force", "true")]
        return self._call(
            "PATCH", url, query=query, body=manifest, content_type="application/apply-patch+yaml"
        )

    def patch_status(self, kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge `status` into the resource's status subresource (other keys are kept)."""
        self._call(
            "PATCH",
            path(kind, namespace, name) + "/status",
            body={"status": dict(status)},
            content_type="application/merge-patch+json",
        )

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when there is none."""
        try:
            found: dict[str, Any] = self._call("GET", path(kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return found

    def list(self, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        result = self._call("GET", path(kind, namespace), query=[("labelSelector", selector)])
        return list(result.get("items", []))

    def delete(self, kind: str, namespace: str, name: str) -> None:
        try:
            # Options as a query parameter: the client would encode a body twice.
            self._call(
                "DELETE", path(kind, namespace, name), query=[("propagationPolicy", "Background")]
            )
        except ApiError as exc:
            if exc.status != 404:
                raise


def _message(data: Any) -> str:
    try:
        return str(json.loads(data).get("message", data))
    except (TypeError, ValueError, AttributeError):
        return str(data)
