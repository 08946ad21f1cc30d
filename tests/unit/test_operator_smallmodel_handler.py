"""The SmallModel handlers at their boundary: refused specs, and one reconcile at a time.

Runs the real handler functions on a real event loop with Kopf's own event
queue. The API server is the one part not here: where a handler must reach
it, `RecordingApi` answers for it in memory and records what was sent. Kopf's
event queue is reached through its context variables, as its own event
poster does: tests/unit/test_operator_finalizers.py is where this suite
already pins Kopf internals it relies on.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import kopf
import pytest
from kopf._core.engines.posting import event_queue_loop_var, event_queue_var, settings_var

from edgefleet.operator.config import OperatorConfig
from edgefleet.operator.handlers import smallmodel
from edgefleet.operator.placement import EnginePlan
from edgefleet.operator.state import OperatorContext, States

NS = "shop"
VALID = {"source": {"gguf": {"uri": "builtin://smollm2-135m"}}, "engine": "llamacpp"}
# Four admitted, but a pool of two model copies decodes two: the server would refuse it.
REFUSED = {**VALID, "serving": {"maxConcurrency": 4, "instances": 2}}
PROBLEM = "invalid SmallModel: spec.serving.maxConcurrency: 4 is more than serving.instances (2)"
LOG = logging.getLogger("test")


def body(spec: dict[str, Any], generation: int) -> dict[str, Any]:
    return {
        "apiVersion": "edgefleet.io/v1alpha1",
        "kind": "SmallModel",
        "metadata": {
            "name": "m", "namespace": NS, "uid": "u-1", "generation": generation,
            "resourceVersion": f"{generation}00",
        },
        "spec": spec,
    }  # fmt: skip


def operator(kube: Any = None) -> OperatorContext:
    # Without a kube, any API call fails the test.
    return OperatorContext(OperatorConfig(), kube, States(), api_endpoints=[])


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


async def status_round(ctx: OperatorContext, spec: dict[str, Any], generation: int) -> None:
    await smallmodel.status_round(
        ctx, ctx.states.model(NS, "m"), body=body(spec, generation), nodes=None,
        model_deployments=None, model_daemonsets=None, model_pod_problems=None,
        model_ready_pods=None, service_endpoints=None, logger=LOG,
    )  # fmt: skip


class RecordingApi:
    """The API server, as the operator's Kube sees it: answers at once and records each call.

    While `hold` is set, an apply waits for `gate` (the test decides when the
    API server answers) and says so through `applying`.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.statuses: list[dict[str, Any]] = []
        self.hold = False
        self.gate = threading.Event()
        self.applying: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        self.calls.append(("apply", f"{manifest['kind']}/{manifest['metadata']['name']}"))
        if self.hold and self.applying is not None and self.loop is not None:
            self.hold = False
            self.loop.call_soon_threadsafe(self.applying.set)
            assert self.gate.wait(timeout=30), "the test never let the API server answer"
        return dict(manifest)

    def list(self, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        self.calls.append(("list", kind))
        return []

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.calls.append(("delete", f"{kind}/{name}"))

    def patch_status(self, kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.calls.append(("status", f"{kind}/{name}"))
        self.statuses.append(dict(status))


class CountingExecutor(ThreadPoolExecutor):
    """The loop's worker threads, counting the blocking work handed to them."""

    def __init__(self) -> None:
        super().__init__(max_workers=4)
        self.submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def test_a_refused_spec_warns_and_touches_nothing() -> None:
    api = RecordingApi()
    ctx = operator(api)

    async def refuse() -> kopf.PermanentError:
        with pytest.raises(kopf.PermanentError) as refused:
            smallmodel.wanted_or_refuse(ctx, ctx.states.model(NS, "m"), body(REFUSED, 1), [])
        return refused.value

    error, events = with_events(refuse)

    # Kopf retries nothing until the spec changes; what runs keeps running.
    assert api.calls == []
    assert str(error).startswith(PROBLEM)
    assert [(e.type, e.reason) for e in events] == [("Warning", "InvalidSpec")]
    assert events[0].message == str(error)


def test_status_says_invalid_spec_and_keeps_counting_the_last_valid_plan() -> None:
    api = RecordingApi()
    ctx = operator(api)
    # Generation 1 was valid and planned (what its workloads still run).
    first = smallmodel.desired(ctx, ctx.states.model(NS, "m"), body(VALID, 1), [])
    assert first.plans == [EnginePlan("llamacpp", 1, 0)]

    _, events = with_events(lambda: status_round(ctx, REFUSED, 2))

    [status] = api.statuses
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert ready["message"].startswith(PROBLEM)
    assert status["observedGeneration"] == 2
    assert status["engines"] == {
        "llamacpp": {"desired": 1, "ready": 0, "workload": "Deployment/-"},
    }
    assert [(e.type, e.reason) for e in events] == [("Warning", "InvalidSpec")]
    # Nothing was applied: only the status was written.
    assert [call for call, _ in api.calls] == ["status"]


def test_a_status_round_waits_for_the_reconcile_of_the_same_model_and_repairs_nothing() -> None:
    """The race Kopf allows: its daemon runs beside the update handler of the same object.

    Generation 1 is applied; generation 2 arrives. The update handler's
    reconcile is inside the API when the model's status round starts, and
    that round, too, sees children older than the spec: without the model's
    lock it would reconcile generation 2 again, its API calls interleaved
    with the handler's.
    """
    api = RecordingApi()
    ctx = operator(api)
    state = ctx.states.model(NS, "m")
    two_replicas = {**VALID, "replicas": 2}

    async def race() -> CountingExecutor:
        loop = asyncio.get_running_loop()
        executor = CountingExecutor()
        loop.set_default_executor(executor)
        api.loop, api.applying = loop, asyncio.Event()
        await smallmodel.apply(
            ctx, state, body=body(VALID, 1), nodes=None,
            model_deployments=None, model_daemonsets=None, logger=LOG,
        )  # fmt: skip
        api.calls.clear()
        api.hold = True
        update = asyncio.create_task(
            smallmodel.apply(
                ctx, state, body=body(two_replicas, 2), nodes=None,
                model_deployments=None, model_daemonsets=None, logger=LOG,
            )
        )  # fmt: skip
        await api.applying.wait()  # the update's first apply is inside the API server
        handed_over = executor.submitted
        round_ = asyncio.create_task(status_round(ctx, two_replicas, 2))
        # One loop turn runs the round up to where it waits: the model's lock,
        # or (were there none) its own reconcile handed to a worker thread.
        await asyncio.sleep(0)
        try:
            assert executor.submitted == handed_over, "the round reached the API beside the update"
        finally:
            api.gate.set()
        await asyncio.gather(update, round_)
        return executor

    with_events(race)

    applied = [what for call, what in api.calls if call == "apply"]
    # One reconcile of generation 2, whole, then the round's status write; no second apply.
    assert len(applied) == len(set(applied))
    assert applied[0] == "Deployment/m-llamacpp"
    assert api.calls[-1] == ("status", "SmallModel/m")
    assert api.statuses[-1]["observedGeneration"] == 2
    assert api.statuses[-1]["desiredReplicas"] == 2
    assert state.applied == smallmodel.desired(ctx, state, body(two_replicas, 2), []).fingerprint


def test_a_round_with_nothing_changed_makes_no_api_call() -> None:
    """What keeps an idle fleet free: the safety-net round finds the status it wrote."""
    api = RecordingApi()
    ctx = operator(api)

    async def two_rounds() -> None:
        await status_round(ctx, VALID, 1)
        await status_round(ctx, VALID, 1)

    with_events(two_rounds)

    assert api.calls == [("status", "SmallModel/m")]
