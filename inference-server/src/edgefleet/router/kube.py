"""The router's edges to the Kubernetes API: EndpointSlice and Pod watches, status patch.

The `kubernetes` client is blocking, so the watch runs in a thread and hands
each new set of slices to the event loop with call_soon_threadsafe; status
patches run in a worker thread. Everything decided (which addresses, what to
report) is pure and lives in router.discovery and router.status.

RBAC this needs, and nothing more: `discovery.k8s.io` `endpointslices`
list and watch; `edgefleet.io` `routingpolicies/status` patch; and `pods`
list and watch in each namespace of `privacy.sensitiveNamespaces`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from edgefleet.kubeapi import HTTP_GONE
from edgefleet.router.discovery import endpoints_from_slices, service_selector
from edgefleet.router.pods import PodIndex, apply_watch_event
from edgefleet.router.sources import Endpoints
from edgefleet.router.status import RouterFigures, router_status, should_send, with_timestamp

log = logging.getLogger("edgefleet.router.kube")

# The API server ends each watch after this long; the thread then re-watches
# from the last resourceVersion, and sees a stop request at least this often.
WATCH_TIMEOUT_S = 60
# A connection silent for longer than this (bookmarks included) is dead.
READ_TIMEOUT_S = WATCH_TIMEOUT_S + 30
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
GROUP, VERSION, PLURAL = "edgefleet.io", "v1alpha1", "routingpolicies"


class ListWatch:
    """Lists, then watches, one kind of object in one namespace.

    `lister` is the client's namespaced list method (the watch calls it too).
    Every change hands the whole current set (raw API dicts) to `deliver` on
    the event loop. A watch that ends is resumed from the last
    resourceVersion; 410 Gone relists at once; any other failure relists
    after a jittered, doubling backoff. After any failure `lost` is told on
    the loop (events may have been missed until the next list is delivered).
    """

    what = "object"

    def __init__(
        self,
        api: client.ApiClient,
        lister: Callable[..., Any],
        namespace: str,
        deliver: Callable[[Any, list[dict[str, Any]]], None],
        loop: asyncio.AbstractEventLoop,
        *,
        selector: str = "",
        lost: Callable[[Any], None] | None = None,
    ) -> None:
        self.api = api
        self.lister = lister
        self.namespace = namespace
        self.selector = selector
        self.deliver = deliver
        self.lost = lost
        self.loop = loop
        self._stopping = threading.Event()
        self._watch: watch.Watch | None = None
        self.thread = threading.Thread(target=self._run, name=f"{self.what}-watch", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Stop soon; a blocked read ends by WATCH_TIMEOUT_S (the thread is a daemon)."""
        self._stopping.set()
        if self._watch is not None:
            self._watch.stop()

    def _hand_over(self, objects: Mapping[str, dict[str, Any]]) -> None:
        if not self._stopping.is_set():
            self.loop.call_soon_threadsafe(self.deliver, self, list(objects.values()))

    def _lose(self) -> None:
        if self.lost is not None and not self._stopping.is_set():
            self.loop.call_soon_threadsafe(self.lost, self)

    def _run(self) -> None:
        backoff = BACKOFF_MIN_S
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                objects, version = self._list()
                self._hand_over(objects)
                self._follow(objects, version)
                continue
            except ApiException as exc:
                self._lose()
                if exc.status == HTTP_GONE:
                    log.info("%s watch expired (410 Gone); listing again", self.what)
                    continue
                log.warning(
                    "%s watch in %s failed: %s %s", self.what, self.namespace, exc.status,
                    exc.reason,
                )  # fmt: skip
            except Exception as exc:  # any failure: back off, relist, go on
                self._lose()
                log.warning("%s watch in %s failed: %s", self.what, self.namespace, exc)
            # A list that works but a watch that keeps failing must not turn into
            # polling: the backoff only starts over after a long healthy spell.
            if time.monotonic() - started > BACKOFF_MAX_S:
                backoff = BACKOFF_MIN_S
            # Full jitter, so many routers do not hammer a recovering API server together.
            self._stopping.wait(random.uniform(BACKOFF_MIN_S, backoff))
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _selection(self) -> dict[str, str]:
        return {"label_selector": self.selector} if self.selector else {}

    def _list(self) -> tuple[dict[str, dict[str, Any]], str]:
        listed = self.lister(self.namespace, **self._selection(), _request_timeout=READ_TIMEOUT_S)
        objects = {
            item.metadata.name: self.api.sanitize_for_serialization(item) for item in listed.items
        }
        return objects, listed.metadata.resource_version

    def _follow(self, objects: dict[str, dict[str, Any]], version: str) -> None:
        """Apply watch events until stopped; raises on errors (410 included)."""
        while not self._stopping.is_set():
            self._watch = watch.Watch()
            for event in self._watch.stream(
                self.lister,
                self.namespace,
                **self._selection(),
                resource_version=version,
                allow_watch_bookmarks=True,
                timeout_seconds=WATCH_TIMEOUT_S,
                _request_timeout=READ_TIMEOUT_S,
            ):
                obj = event["raw_object"]
                version = obj["metadata"]["resourceVersion"]
                if apply_watch_event(objects, event["type"], obj):
                    self._hand_over(objects)


class SliceWatch(ListWatch):
    """The EndpointSlices of some Services in one namespace."""

    what = "EndpointSlice"

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        services: list[str],
        deliver: Callable[[SliceWatch, list[dict[str, Any]]], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        lister = client.DiscoveryV1Api(api).list_namespaced_endpoint_slice
        super().__init__(api, lister, namespace, deliver, loop, selector=service_selector(services))


class PodWatch(ListWatch):
    """Every Pod of one namespace (a sensitive one: its pod IPs mark clients)."""

    what = "Pod"

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        deliver: Callable[[PodWatch, list[dict[str, Any]]], None],
        lost: Callable[[PodWatch], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        lister = client.CoreV1Api(api).list_namespaced_pod
        super().__init__(api, lister, namespace, deliver, loop, lost=lost)


class SensitiveNamespaces:
    """Keeps a PodIndex equal to the pods of the policy's sensitive namespaces.

    One PodWatch per namespace; `retarget` on a policy reload starts and stops
    watches. Needs `pods` list and watch in each namespace (the operator binds
    it there); until a namespace's first list arrives, the index says it is
    unsynced and the router treats every unplaced client as sensitive.
    """

    def __init__(self, api: client.ApiClient, index: PodIndex) -> None:
        self.api = api
        self.index = index
        self._watches: dict[str, PodWatch] = {}

    def retarget(self, namespaces: Iterable[str]) -> None:
        wanted = set(namespaces)
        for gone in set(self._watches) - wanted:
            self._watches.pop(gone).stop()
        self.index.follow(wanted)
        loop = asyncio.get_running_loop()
        for new in sorted(wanted - set(self._watches)):
            watch_ = PodWatch(self.api, new, self._received, self._lost, loop)
            self._watches[new] = watch_
            watch_.start()
            log.info("watching Pods in sensitive namespace %s", new)

    def _current(self, source: PodWatch) -> bool:
        return self._watches.get(source.namespace) is source

    def _received(self, source: PodWatch, pods: list[dict[str, Any]]) -> None:
        if self._current(source):
            was_synced = self.index.synced(source.namespace)
            self.index.replace(source.namespace, pods)
            if not was_synced:
                log.info("sensitive namespace %s: %d pod(s) known", source.namespace, len(pods))

    def _lost(self, source: PodWatch) -> None:
        if self._current(source):
            self.index.lost(source.namespace)

    def stop(self) -> None:
        for watch_ in self._watches.values():
            watch_.stop()
        self._watches.clear()


class Discovery:
    """Keeps the engine's endpoints equal to what the slices say; retargetable."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        local_services: Mapping[str, int],
        cloud_service: str | None,
        apply: Callable[[Endpoints], Awaitable[None]],
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.local_services = dict(local_services)
        self.cloud_service = cloud_service
        self.apply = apply
        self._watch: SliceWatch | None = None
        self._latest: Endpoints | None = None
        self._applied: Endpoints | None = None
        self._changed = asyncio.Event()
        self._applier: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._applier = asyncio.create_task(self._apply_changes())
        self._restart()

    def retarget(self, local_services: Mapping[str, int]) -> None:
        """New local Services (a policy reload): watch their slices instead."""
        if dict(local_services) == self.local_services:
            return
        self.local_services = dict(local_services)
        self._restart()

    def _restart(self) -> None:
        if self._watch is not None:
            self._watch.stop()
        services = [*self.local_services, *([self.cloud_service] if self.cloud_service else [])]
        self._watch = SliceWatch(
            self.api, self.namespace, services, self._received, asyncio.get_running_loop()
        )
        self._watch.start()
        log.info("watching EndpointSlices in %s: %s", self.namespace, self._watch.selector)

    def _received(self, source: SliceWatch, slices: list[dict[str, Any]]) -> None:
        if source is not self._watch:
            return  # a late word from a watch already replaced
        self._latest = endpoints_from_slices(slices, self.local_services, self.cloud_service)
        self._changed.set()

    async def _apply_changes(self) -> None:
        # One apply at a time, always the newest: a burst of events collapses.
        while True:
            await self._changed.wait()
            self._changed.clear()
            latest = self._latest
            if latest is not None and latest != self._applied:
                await self.apply(latest)
                self._applied = latest

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.stop()
        if self._applier is not None:
            self._applier.cancel()


class StatusReporter:
    """Merge-patches `status.router` of one RoutingPolicy from the router's figures."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        policy: str,
        figures: Callable[[], RouterFigures],
        interval_s: float,
    ) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.policy = policy
        self.figures = figures
        self.interval_s = interval_s

    def _patch(self, body: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, PLURAL, self.policy, body,
            _content_type="application/merge-patch+json",
            _request_timeout=30,
        )  # fmt: skip

    async def run(self) -> None:
        sent: dict[str, Any] | None = None
        since_sent = 0
        while True:
            current = router_status(self.figures())
            if should_send(sent, current, since_sent):
                try:
                    await asyncio.to_thread(self._patch, with_timestamp(current, datetime.now(UTC)))
                    sent, since_sent = current, 0
                except ApiException as exc:
                    log.warning(
                        "cannot report to RoutingPolicy %s/%s: %s %s",
                        self.namespace, self.policy, exc.status, exc.reason,
                    )  # fmt: skip
                except Exception as exc:  # the next interval tries again
                    log.warning("cannot report to RoutingPolicy %s: %s", self.policy, exc)
            since_sent += 1
            await asyncio.sleep(self.interval_s)
