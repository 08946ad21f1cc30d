"""What both resources' handlers share: applying children, writing status, timing rounds."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import kopf

from edgefleet.operator.config import OperatorConfig
from edgefleet.operator.kube import ApiError, Kube
from edgefleet.operator.state import ModelState, OperatorContext, PolicyState

# While something is refused or missing (no event will say when that ends), a
# resource's daemon looks again this often instead of waiting for the safety net.
RETRY_S = 5.0


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
            raise refusal(what, exc) from exc


def refusal(what: str, exc: ApiError) -> Exception:
    """A refused apply as Kopf should see it: retried when transient, else for a person to fix."""
    if exc.transient:
        return kopf.TemporaryError(f"cannot apply {what}", delay=5)
    return ChildRefused(what)


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


def round_timeout(config: OperatorConfig, retry_soon: bool) -> float:
    """How long a resource's daemon waits for a change before a round of its own."""
    return min(RETRY_S, config.status_interval_s) if retry_soon else config.status_interval_s


async def status_rounds(
    ctx: OperatorContext,
    state: ModelState | PolicyState,
    one_round: Callable[[], Awaitable[None]],
    logger: logging.Logger | logging.LoggerAdapter,
) -> None:
    """A resource's daemon: a status round now, then after every settled burst of changes,
    or when its timer says (the safety net, a retry).

    Runs until the resource is deleted (States.forget) or Kopf cancels it (the operator
    pauses or exits).
    """
    state.trigger.poke()
    while True:
        if not await state.trigger.next_round(round_timeout(ctx.config, state.retry_soon())):
            # No change asked for it: the safety net, or a retry (what idle costs).
            ctx.states.activity["status.timer_rounds"] += 1
        if state.gone:  # deleted (States.forget): nothing left to report or repair
            return
        try:
            await one_round()
        except (kopf.TemporaryError, ApiError) as exc:
            # The API is busy or refused a repair: the next round is soon, not after
            # Kopf's restart backoff for a failed daemon.
            logger.warning("status round failed (tried again soon): %s", exc)
            state.report_failed = True


def last_status(body: Mapping[str, Any], state: ModelState | PolicyState) -> dict[str, Any]:
    """The resource's status as last written, by us or anyone.

    The body Kopf hands a daemon follows the watch, a moment behind our own
    writes: while it still shows the version we wrote over, what we wrote is newer.
    """
    version = (body.get("metadata") or {}).get("resourceVersion")
    if state.reported is not None and version == state.reported_over:
        return state.reported
    return dict(body.get("status") or {})


async def report_status(
    kube: Kube,
    kind: str,
    body: Mapping[str, Any],
    state: ModelState | PolicyState,
    current: Mapping[str, Any],
    fresh: dict[str, Any],
    logger: logging.Logger | logging.LoggerAdapter,
) -> bool:
    """Write `fresh` into the status when it differs from `current`; True when written."""
    if not status_changed(current, fresh):
        state.report_failed = False
        return False
    meta = body["metadata"]
    over = meta.get("resourceVersion")
    try:
        await asyncio.to_thread(kube.patch_status, kind, meta["namespace"], meta["name"], fresh)
    except ApiError as exc:
        if exc.status != 404:  # 404: deleted meanwhile, nothing to report to
            logger.warning("cannot write status (tried again soon): %s", exc)
            state.report_failed = True
        return False
    state.reported, state.reported_over, state.report_failed = {**current, **fresh}, over, False
    return True


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


def degraded_transition(
    body: Mapping[str, Any], previous: list[Mapping[str, Any]], fresh: list[Mapping[str, Any]]
) -> None:
    """A Warning when a resource that still works is Degraded, for something new: a
    policy routing locally while its egress fails. Not Ready has its own Event."""
    after = next(c for c in fresh if c.get("type") == "Degraded")
    if _state(fresh, "Ready")[0] != "True" or after["status"] != "True":
        return
    # Nothing new: it was Ready and Degraded for the same reason (while it was not
    # Ready, Ready's own Event told, so becoming Ready again repeats the news).
    if _state(previous, "Ready")[0] == "True" and _state(previous, "Degraded") == (
        "True",
        after["reason"],
    ):
        return
    kopf.warn(dict(body), reason=after["reason"], message=after["message"])


def _state(conditions: list[Mapping[str, Any]], kind: str) -> tuple[str, str]:
    found = next((c for c in conditions if c.get("type") == kind), {})
    return found.get("status", ""), found.get("reason", "")
