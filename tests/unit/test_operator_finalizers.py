"""Which handlers make Kopf put a finalizer on our resources (pure: the registry only)."""

from __future__ import annotations

import kopf

import edgefleet.operator.handlers  # noqa: F401  (registers the handlers)


def _needing_finalizers() -> set[str]:
    registry = kopf.get_default_registry()
    found = set()
    for kind in (registry._spawning, registry._changing):
        for handler in kind._handlers:
            if handler.requires_finalizer:
                found.add(str(handler.id))
    return found


def test_only_the_sensitive_namespace_cleanup_needs_a_finalizer() -> None:
    # Status timers must not: with the operator uninstalled, every SmallModel
    # and RoutingPolicy would become undeletable. The RoutingPolicy delete
    # handler does (bindings in other namespaces have no owner to follow), and
    # its filter keeps it to policies that list sensitive namespaces.
    assert _needing_finalizers() == {"delete_routingpolicy"}


def test_the_timers_are_still_registered() -> None:
    registry = kopf.get_default_registry()
    timers = {str(h.id): h for h in registry._spawning._handlers}
    assert set(timers) == {"refresh_smallmodel", "refresh_routingpolicy"}
    assert all(h.interval and h.interval > 0 for h in timers.values())
