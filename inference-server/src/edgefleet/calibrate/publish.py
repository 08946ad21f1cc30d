"""A run's result as a ConfigMap, for the operator to read (the in-cluster RayJob).

The run's ConfigMap holds either the artefact (`complexity.json.gz`, binary) and
`report.json`, or `error` and `reason` (one CamelCase word) when the run stopped. It is
created once, whole, after the artefact was written and checked to load: the operator sees
a finished result or none. It is owned by the RouterCalibration, so it goes with it.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from edgefleet.calibrate.artefacts import ARTEFACT_FILE, REPORT_FILE

ERROR_KEY = "error"
REASON_KEY = "reason"
CALIBRATION_LABEL = "edgefleet.io/router-calibration"
# A ConfigMap holds at most 1 MiB, keys and metadata included.
MAX_CONFIGMAP_BYTES = 1024 * 1024 - 16 * 1024


class PublishError(Exception):
    """The result could not be handed over; the message says why."""


@dataclass(frozen=True)
class Destination:
    namespace: str
    name: str
    # The RouterCalibration's name and uid, for the owner reference.
    owner_name: str
    owner_uid: str


def result_config_map(
    where: Destination,
    artefact: bytes | None = None,
    report: dict | None = None,
    error: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """The ConfigMap of a run: an artefact and its report, or an error and its reason."""
    data: dict[str, str] = {}
    binary: dict[str, str] = {}
    if artefact is not None:
        binary[ARTEFACT_FILE] = base64.b64encode(artefact).decode("ascii")
        data[REPORT_FILE] = json.dumps(report, indent=2, sort_keys=True) + "\n"
    else:
        data[ERROR_KEY] = error or "the calibration stopped"
        data[REASON_KEY] = reason or "CalibrationFailed"
    size = len(artefact or b"") + sum(len(v.encode()) for v in data.values())
    if size > MAX_CONFIGMAP_BYTES:
        raise PublishError(
            f"the result is {size} bytes, more than a ConfigMap holds ({MAX_CONFIGMAP_BYTES})"
        )
    manifest: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": where.name,
            "namespace": where.namespace,
            "labels": {CALIBRATION_LABEL: where.owner_name},
            "ownerReferences": [
                {
                    "apiVersion": "edgefleet.io/v1alpha1",
                    "kind": "RouterCalibration",
                    "name": where.owner_name,
                    "uid": where.owner_uid,
                }
            ],
        },
        "data": data,
    }
    if binary:
        manifest["binaryData"] = binary
    return manifest


def publish(manifest: dict[str, Any]) -> None:
    """Create the run's ConfigMap with the pod's ServiceAccount; never overwrite one."""
    from kubernetes import client

    from edgefleet.kubeapi import api_client

    meta = manifest["metadata"]
    api = client.CoreV1Api(api_client())
    try:
        api.create_namespaced_config_map(meta["namespace"], manifest, _request_timeout=60)
    except client.ApiException as exc:
        what = f"cannot create ConfigMap {meta['namespace']}/{meta['name']}"
        raise PublishError(f"{what}: {exc.status} {exc.reason}") from exc
