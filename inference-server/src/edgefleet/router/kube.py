"""The router's two edges to the Kubernetes API: EndpointSlice watch and status patch.

The `kubernetes` client is blocking, so the watch runs in a thread and hands
each new set of slices to the event loop with call_soon_threadsafe; status
patches run in a worker thread. Everything decided (which addresses, what to
report) is pure and lives in router.discovery and router.status.

RBAC this needs, and nothing more: `discovery.k8s.io` `endpointslices`
list and watch; `edgefleet.io` `routingpolicies/status` patch.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from edgefleet.router.discovery import endpoints_from_slices, service_selector
from edgefleet.router.sources import Endpoints
from edgefleet.router.status import RouterFigures, router_status, should_send, with_timestamp

log = logging.getLogger("edgefleet.router.kube")

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# The API server ends each watch after this long; the thread then re-watches
# from the last resourceVersion, and sees a stop request at least this often.
WATCH_TIMEOUT_S = 60
# A connection silent for longer than this (bookmarks included) is dead.
READ_TIMEOUT_S = WATCH_TIMEOUT_S + 30
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
HTTP_GONE = 410
GROUP, VERSION, PLURAL = "edgefleet.io", "v1alpha1", "routingpolicies"


def api_client() -> client.ApiClient:
    """In a pod, its ServiceAccount; elsewhere (tests on the host), $KUBECONFIG."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def pod_namespace() -> str:
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    except OSError:
        return ""


class SliceWatch:
    """Lists, then watches, the EndpointSlices of some Services in one namespace.

    Every change hands the whole current set (raw API dicts) to `deliver` on
    the event loop. A watch that ends is resumed from the last
    resourceVersion; 410 Gone relists at once; any other failure relists
    after a jittered, doubling backoff.
    """

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        services: list[str],
        deliver: Callable[[SliceWatch, list[dict[str, Any]]], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.api = api
        self.discovery = client.DiscoveryV1Api(api)
        self.namespace = namespace
        self.selector = service_selector(services)
        self.deliver = deliver
        self.loop = loop
        self._stopping = threading.Event()
        self._watch: watch.Watch | None = None
        self.thread = threading.Thread(target=self._run, name="endpointslice-watch", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Stop soon; a blocked read ends by WATCH_TIMEOUT_S (the thread is a daemon)."""
        self._stopping.set()
        if self._watch is not None:
            self._watch.stop()

    def _hand_over(self, slices: Mapping[str, dict[str, Any]]) -> None:
        if not self._stopping.is_set():
            self.loop.call_soon_threadsafe(self.deliver, self, list(slices.values()))

    def _run(self) -> None:
        backoff = BACKOFF_MIN_S
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                slices, version = self._list()
                self._hand_over(slices)
                self._follow(slices, version)
                continue
            except ApiException as exc:
                if exc.status == HTTP_GONE:
                    log.info("EndpointSlice watch expired (410 Gone); listing again")
                    continue
                log.warning("EndpointSlice watch failed: %s %s", exc.status, exc.reason)
            except Exception as exc:  # any failure: back off, relist, go on
                log.warning("EndpointSlice watch failed: %s", exc)
            # A list that works but a watch that keeps failing must not turn into
            # polling: the backoff only starts over after a long healthy spell.
            if time.monotonic() - started > BACKOFF_MAX_S:
                backoff = BACKOFF_MIN_S
            # Full jitter, so many routers do not hammer a recovering API server together.
            self._stopping.wait(random.uniform(BACKOFF_MIN_S, backoff))
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _list(self) -> tuple[dict[str, dict[str, Any]], str]:
        listed = self.discovery.list_namespaced_endpoint_slice(
            self.namespace, label_selector=self.selector, _request_timeout=READ_TIMEOUT_S
        )
        slices = {
            item.metadata.name: self.api.sanitize_for_serialization(item) for item in listed.items
        }
        return slices, listed.metadata.resource_version

    def _follow(self, slices: dict[str, dict[str, Any]], version: str) -> None:
        """Apply watch events until stopped; raises on errors (410 included)."""
        while not self._stopping.is_set():
            self._watch = watch.Watch()
            for event in self._watch.stream(
                self.discovery.list_namespaced_endpoint_slice,
                self.namespace,
                label_selector=self.selector,
                resource_version=version,
                allow_watch_bookmarks=True,
                timeout_seconds=WATCH_TIMEOUT_S,
                _request_timeout=READ_TIMEOUT_S,
            ):
                kind, obj = event["type"], event["raw_object"]
                version = obj["metadata"]["resourceVersion"]
                if kind == "BOOKMARK":
                    continue
                name = obj["metadata"]["name"]
                if kind == "DELETED":
                    slices.pop(name, None)
                else:
                    slices[name] = obj
                self._hand_over(slices)


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
