"""The operator's Kopf registry: finalizers, daemons, login (pure: the registry only)."""

from __future__ import annotations

import kopf

from edgefleet.operator.config import OperatorConfig
from edgefleet.operator.main import build_registry


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
    assert set(daemons) == {"keep_smallmodel_status", "keep_routingpolicy_status"}
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
