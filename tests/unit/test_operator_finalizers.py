"""The operator's Kopf registry: finalizers, daemons, login (pure: the registry only)."""

from __future__ import annotations

from typing import Any

import kopf

from edgefleet.operator import names
from edgefleet.operator.config import OperatorConfig
from edgefleet.operator.main import CHILD_KINDS, build_registry, watch_only_managed_children


def _needing_finalizers(registry: kopf.OperatorRegistry) -> set[str]:
    found = set()
    for kind in (registry._spawning, registry._changing):
        for handler in kind._handlers:
            if handler.requires_finalizer:
                found.add(str(handler.id))
    return found


def test_only_the_sensitive_namespace_cleanup_needs_a_finalizer() -> None:
    # Status daemons must not: with the operator uninstalled, every SmallModel
    # and RoutingPolicy would become undeletable. The RoutingPolicy delete
    # handler does (bindings in other namespaces have no owner to follow), and
    # its filter keeps it to policies that list sensitive namespaces.
    assert _needing_finalizers(build_registry(OperatorConfig())) == {"delete_routingpolicy"}


def test_the_status_daemons_are_still_registered_and_cancellable() -> None:
    registry = build_registry(OperatorConfig())
    daemons = {str(h.id): h for h in registry._spawning._handlers}
    assert set(daemons) == {
        "keep_smallmodel_status",
        "keep_routingpolicy_status",
        "keep_routercalibration",
    }
    # They wait on asyncio events: Kopf must cancel them, not wait for them to notice.
    assert all(h.cancellation_timeout for h in daemons.values())


def test_building_the_registry_registers_nothing_anywhere_else() -> None:
    before = len(kopf.get_default_registry()._changing._handlers)
    build_registry(OperatorConfig())
    assert len(kopf.get_default_registry()._changing._handlers) == before


def test_the_operator_logs_in_with_the_kubernetes_clients_credentials() -> None:
    # A registry of one's own has no login handler unless one is registered:
    # without it Kopf runs out of credentials before it lists anything.
    registry = build_registry(OperatorConfig())
    logins = [h.fn for h in registry._activities._handlers if h.activity == "authentication"]
    assert logins == [kopf.login_via_client]


def _kind(selector: Any) -> tuple[str | None, str | None, str | None]:
    return selector.group, selector.version, selector.any_name or selector.plural


def test_children_are_listed_only_with_the_managed_by_label_and_no_handler_misses_one() -> None:
    # The API server filters the child kinds by the managed-by label; that drops
    # nothing a handler wants only if every handler on those kinds asks for it too.
    settings = kopf.OperatorSettings()
    watch_only_managed_children(settings)
    managed = {names.MANAGED_BY: names.MANAGER}
    selected = {_kind(s): v for s, v in settings.watching.label_selectors.items()}
    assert selected == {kind: f"{names.MANAGED_BY}={names.MANAGER}" for kind in CHILD_KINDS}
    registry = build_registry(OperatorConfig())
    on_children = [
        handler
        for handlers in (registry._indexing._handlers, registry._watching._handlers)
        for handler in handlers
        if _kind(handler.selector) in CHILD_KINDS
    ]
    assert {_kind(h.selector) for h in on_children} == set(CHILD_KINDS)
    for handler in on_children:
        assert managed.items() <= dict(handler.labels or {}).items(), handler.id
