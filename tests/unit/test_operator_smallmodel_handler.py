"""The SmallModel handlers at their boundary: a spec the parser refuses is reported, not applied.

Runs the real handler functions with Kopf's own Memo, Patch and event queue;
no API call is made (a refused spec must not reach the cluster), so no cluster
is needed. Kopf's event queue is reached through its context variables, as
its own event poster does: tests/unit/test_operator_finalizers.py is where
this suite already pins Kopf internals it relies on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import kopf
import pytest
from kopf._core.engines.posting import event_queue_loop_var, event_queue_var, settings_var

from edgefleet.operator.config import OperatorConfig
from edgefleet.operator.handlers import smallmodel
from edgefleet.operator.placement import EnginePlan

NS = "shop"
VALID = {"source": {"gguf": {"uri": "builtin://smollm2-135m"}}, "engine": "llamacpp"}
# Four admitted, but a pool of two model copies decodes two: the server would refuse it.
REFUSED = {**VALID, "serving": {"maxConcurrency": 4, "instances": 2}}
PROBLEM = "invalid SmallModel: spec.serving.maxConcurrency: 4 is more than serving.instances (2)"


def body(spec: dict[str, Any], generation: int) -> dict[str, Any]:
    return {
        "apiVersion": "edgefleet.io/v1alpha1",
        "kind": "SmallModel",
        "metadata": {"name": "m", "namespace": NS, "uid": "u-1", "generation": generation},
        "spec": spec,
    }


def fresh_memo() -> kopf.Memo:
    # No Kube: any API call would fail the test.
    return kopf.Memo(config=OperatorConfig(), kube=None)


def with_events(call: Callable[[], Coroutine[Any, Any, Any]]) -> tuple[Any, list[Any]]:
    """Run `call` with Kopf's event queue in place; its result and the events it posted."""

    async def main() -> tuple[Any, list[Any]]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        settings_var.set(kopf.OperatorSettings())
        event_queue_var.set(queue)
        event_queue_loop_var.set(asyncio.get_running_loop())
        result = await call()
        return result, [queue.get_nowait() for _ in range(queue.qsize())]

    return asyncio.run(main())


async def refresh(spec: dict[str, Any], generation: int, memo: kopf.Memo) -> kopf.Patch:
    patch = kopf.Patch()
    await smallmodel.refresh(
        body=body(spec, generation), name="m", namespace=NS, spec=spec, uid="u-1", status={},
        patch=patch, memo=memo, nodes=None, model_deployments=None, model_daemonsets=None,
        model_pod_problems=None, service_endpoints=None, logger=logging.getLogger("test"),
    )  # fmt: skip
    return patch


def test_reconcile_refuses_the_spec_warns_and_touches_nothing() -> None:
    async def reconcile() -> kopf.PermanentError:
        with pytest.raises(kopf.PermanentError) as refused:
            smallmodel.reconcile(
                body=body(REFUSED, 1), name="m", namespace=NS, spec=REFUSED, uid="u-1",
                memo=fresh_memo(), nodes=None, logger=logging.getLogger("test"),
            )  # fmt: skip
        return refused.value

    error, events = with_events(reconcile)

    # Kopf retries nothing until the spec changes; what runs keeps running.
    assert str(error).startswith(PROBLEM)
    assert [(e.type, e.reason) for e in events] == [("Warning", "InvalidSpec")]
    assert events[0].message == str(error)


def test_status_says_invalid_spec_and_keeps_counting_the_last_valid_plan() -> None:
    memo = fresh_memo()
    # Generation 1 was valid and planned (what its workloads still run).
    plans, _, _ = smallmodel.desired(body(VALID, 1), VALID, None, memo)
    assert plans == [EnginePlan("llamacpp", 1, 0)]

    patch, events = with_events(lambda: refresh(REFUSED, 2, memo))

    status = patch["status"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert ready["message"].startswith(PROBLEM)
    assert status["observedGeneration"] == 2
    assert status["engines"] == {
        "llamacpp": {"desired": 1, "ready": 0, "workload": "Deployment/-"},
    }
    assert [(e.type, e.reason) for e in events] == [("Warning", "InvalidSpec")]
