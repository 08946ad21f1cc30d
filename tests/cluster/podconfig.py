"""What a Pod's containers are configured with from the API: env sources and their errors.

A kubelet refuses to start a container whose env names a ConfigMap, Secret or
key that does not exist (unless the reference is `optional`), and reports
`CreateContainerConfigError` with a message naming what is missing; the same
rules apply here, so a Pod that would fail on a real node fails here too.
"""

from __future__ import annotations

import base64
from typing import Any

from kubernetes import client


class ContainerConfigError(Exception):
    """A container cannot be configured yet; the message says what is missing."""


class ObjectReader:
    """Reads ConfigMaps and Secrets of one namespace; missing objects read as None."""

    def __init__(self, core: client.CoreV1Api, namespace: str) -> None:
        self.core, self.namespace = core, namespace

    def config_map(self, name: str) -> dict[str, bytes] | None:
        try:
            obj = self.core.read_namespaced_config_map(name, self.namespace)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        data = {k: v.encode() for k, v in (obj.data or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (obj.binary_data or {}).items()})
        return data

    def secret(self, name: str) -> dict[str, bytes] | None:
        # The client leaves Secret data base64-encoded, as the API sends it.
        try:
            obj = self.core.read_namespaced_secret(name, self.namespace)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        data = {k: base64.b64decode(v) for k, v in (obj.data or {}).items()}
        data.update({k: v.encode() for k, v in (obj.string_data or {}).items()})
        return data

    def read(self, kind: str, name: str) -> dict[str, bytes] | None:
        """kind is "configMap" or "secret", as in volume and env sources."""
        return self.config_map(name) if kind == "configMap" else self.secret(name)


_KIND_NAMES = {"configMap": "configmap", "secret": "secret"}


def _key_ref(reader: ObjectReader, kind: str, ref: dict[str, Any]) -> str | None:
    """The referenced key's value; None when optional and missing; else ContainerConfigError."""
    data = reader.read(kind, ref["name"])
    optional = bool(ref.get("optional"))
    if data is None:
        if optional:
            return None
        raise ContainerConfigError(f'{_KIND_NAMES[kind]} "{ref["name"]}" not found')
    if ref["key"] not in data:
        if optional:
            return None
        label = "Secret" if kind == "secret" else "ConfigMap"
        raise ContainerConfigError(
            f"couldn't find key {ref['key']} in {label} {reader.namespace}/{ref['name']}"
        )
    return data[ref["key"]].decode(errors="replace")


def resolve_env(
    reader: ObjectReader, container: dict[str, Any], fields: dict[str, str]
) -> dict[str, str]:
    """The container's own env: `envFrom` first, then `env` (which wins), as a kubelet does.

    fields maps fieldRef paths (metadata.name, status.podIP, ...) to values.
    `$(VAR)` references inside values are not expanded.
    """
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        kind = "configMap" if "configMapRef" in source else "secret"
        ref = source.get("configMapRef") or source.get("secretRef") or {}
        data = reader.read(kind, ref["name"])
        if data is None:
            if ref.get("optional"):
                continue
            raise ContainerConfigError(f'{_KIND_NAMES[kind]} "{ref["name"]}" not found')
        prefix = source.get("prefix", "")
        env.update({prefix + k: v.decode(errors="replace") for k, v in data.items()})
    for item in container.get("env", []):
        if "value" in item or "valueFrom" not in item:
            env[item["name"]] = item.get("value", "")
            continue
        source = item["valueFrom"]
        value: str | None
        if "fieldRef" in source:
            value = fields.get(source["fieldRef"]["fieldPath"], "")
        elif "secretKeyRef" in source:
            value = _key_ref(reader, "secret", source["secretKeyRef"])
        elif "configMapKeyRef" in source:
            value = _key_ref(reader, "configMap", source["configMapKeyRef"])
        else:
            raise ContainerConfigError(
                f"env {item['name']}: unsupported valueFrom {sorted(source)} "
                "(the process kubelet knows fieldRef, secretKeyRef, configMapKeyRef)"
            )
        if value is not None:
            env[item["name"]] = value
    return env
