"""What both resources' handlers share: applying children, hashing, timestamps, events."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import kopf

from edgefleet.operator.kube import ApiError, Kube


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def digest(documents: Any) -> str:
    return hashlib.sha256(json.dumps(documents, sort_keys=True).encode()).hexdigest()[:16]


def apply_children(kube: Kube, owner: Mapping[str, Any], children: list[dict[str, Any]]) -> None:
    """Adopt and server-side apply each child; API refusals become Kopf's retry signals."""
    kopf.adopt(children, owner=dict(owner))
    for child in children:
        try:
            kube.apply(child)
        except ApiError as exc:
            what = f"{child['kind']} {child['metadata']['name']}: {exc.message}"
            if exc.status in (409, 429) or exc.status >= 500 or exc.status == 0:
                raise kopf.TemporaryError(f"cannot apply {what}", delay=5) from exc
            raise ChildRefused(what) from exc


class ChildRefused(Exception):
    """The API server refused a child for good (forbidden, invalid): a person must act."""


def delete_stale(
    kube: Kube,
    namespace: str,
    selector: str,
    kinds: Iterable[str],
    wanted: set[tuple[str, str]],
    owner_uid: str,
) -> list[str]:
    """Delete children of these kinds that carry our labels and owner but are no longer wanted."""
    removed = []
    for kind in kinds:
        for item in kube.list(kind, namespace, selector):
            meta = item["metadata"]
            owned = any(ref.get("uid") == owner_uid for ref in meta.get("ownerReferences") or [])
            if owned and (kind, meta["name"]) not in wanted:
                kube.delete(kind, namespace, meta["name"])
                removed.append(f"{kind}/{meta['name']}")
    return removed


def status_changed(current: Mapping[str, Any], fresh: Mapping[str, Any]) -> bool:
    return any(current.get(key) != value for key, value in fresh.items())


def ready_transition(
    body: Mapping[str, Any], previous: list[Mapping[str, Any]], fresh: list[Mapping[str, Any]]
) -> None:
    """An Event when Ready changes (or its reason does): what a person watching should see."""
    before = next((c for c in previous if c.get("type") == "Ready"), None)
    after = next(c for c in fresh if c.get("type") == "Ready")
    if before and (before["status"], before.get("reason")) == (after["status"], after["reason"]):
        return
    if after["status"] == "True":
        kopf.event(dict(body), type="Normal", reason="Ready", message=after["message"])
    else:
        kopf.warn(dict(body), reason=after["reason"], message=after["message"])
