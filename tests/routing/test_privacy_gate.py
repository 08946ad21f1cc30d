"""Fail-closed privacy: 240 prompts with PII, while every other rule says "cloud".

Three ways the policy pushes traffic out: complexity (threshold 0), overflow
(local slots full, queue limit 0) and no local replica. In each, every PII
prompt is served locally or refused with UNAVAILABLE, and the recording proxy
in front of the cloud proves that none of the planted values left. A control
prompt without PII in each phase shows the cloud route was really open.
"""

from __future__ import annotations

import concurrent.futures
import threading
from pathlib import Path

import pytest

from edgefleet.routing.privacy import PrivacyScanner
from edgefleet.serving.readiness import free_local_port
from edgefleet.v1 import inference_pb2 as pb
from tests.bench.bench_entities import load as load_entities
from tests.routing.conftest import Stack
from tests.support.pii_corpus import PiiPrompt, pii_prompts
from tests.support.routing import Router, ask_or_error, running_router

CONTROL = "Name a large city in Europe."
PROMPTS = pii_prompts()
# Served locally, each costs a prefill of its (long) prompt: half the corpus,
# every kind 17 times or more, keeps the phase within minutes on 2 cores.
SERVED_SAMPLE = PROMPTS[::2]


def _send_all(router: Router, prompts: list[PiiPrompt]) -> list[tuple[str, str, str]]:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda p: ask_or_error(router.stub, p.text, max_tokens=1), prompts))


def _assert_nothing_leaked(stack: Stack, sent_before: int, prompts: list[PiiPrompt]) -> None:
    arrived = stack.proxy.received()[sent_before:]
    contents = [m["content"] for body in arrived for m in body["messages"] if m["role"] == "user"]
    assert contents == [CONTROL], "only the control prompt may reach the cloud"
    leaked = [p for p in prompts if p.value in stack.proxy.received_text()]
    assert not leaked


def test_corpus_covers_every_detector_kind() -> None:
    kinds = {p.detector for p in PROMPTS}
    assert len(PROMPTS) >= 200
    assert kinds == {"email", "phone", "credit_card", "iban", "us_ssn", "national_id", "secret"}


@pytest.mark.timeout(900)
def test_pii_stays_local_when_complexity_says_cloud(stack: Stack, tmp_path: Path) -> None:
    spec = {"complexity": {"threshold": 0.0}}
    with running_router(tmp_path, spec, [stack.local.target], stack.egress.target) as router:
        sent_before = len(stack.proxy.received())
        outcomes = _send_all(router, SERVED_SAMPLE)
        for prompt, (target, reason, code) in zip(SERVED_SAMPLE, outcomes, strict=True):
            assert (target, code) == ("local", "OK"), (prompt.detector, reason)
            assert reason.startswith("privacy.detector."), reason
        assert ask_or_error(router.stub, CONTROL, max_tokens=4)[:2] == ("cloud", "complexity.high")
        _assert_nothing_leaked(stack, sent_before, SERVED_SAMPLE)


@pytest.mark.timeout(900)
def test_pii_stays_local_while_local_overflows(stack: Stack, tmp_path: Path) -> None:
    spec = {"complexity": {"threshold": 1.0}, "capacity": {"maxQueueDepth": 0}}
    subset = [p for kind in sorted({p.detector for p in PROMPTS})
              for p in [q for q in PROMPTS if q.detector == kind][:3]]  # fmt: skip
    with running_router(tmp_path, spec, [stack.local.target], stack.egress.target) as router:
        sent_before = len(stack.proxy.received())
        # Two answers hold both local slots to start the overflow; from then on
        # the PII requests themselves (four at a time, two slots) keep it going.
        holding = pb.GenerateRequest(
            prompt="Count slowly from one to two hundred.",
            sampling=pb.SamplingParams(max_tokens=48, ignore_eos=True, temperature=0),
        )
        streams = [router.stub.GenerateStream(holding, timeout=300) for _ in range(2)]
        started = [threading.Event(), threading.Event()]

        def drain(index: int) -> None:
            for _ in streams[index]:
                started[index].set()

        holders = [threading.Thread(target=drain, args=(i,)) for i in range(2)]
        for holder in holders:
            holder.start()
        for event in started:
            assert event.wait(120)
        try:
            control = ask_or_error(router.stub, CONTROL, max_tokens=4)
            assert control[:2] == ("cloud", "capacity.overflow")
            outcomes = _send_all(router, subset)
        finally:
            for stream in streams:
                stream.cancel()
            for holder in holders:
                holder.join()
        for prompt, (target, reason, code) in zip(subset, outcomes, strict=True):
            assert (target, code) == ("local", "OK"), (prompt.detector, reason)
        _assert_nothing_leaked(stack, sent_before, subset)


def test_pii_is_refused_not_sent_when_no_local_replica_is_up(stack: Stack, tmp_path: Path) -> None:
    dead_local = f"127.0.0.1:{free_local_port()}"
    spec = {"complexity": {"threshold": 1.0}}
    with running_router(
        tmp_path, spec, [dead_local], stack.egress.target, wait_ready=False
    ) as router:
        sent_before = len(stack.proxy.received())
        assert ask_or_error(router.stub, CONTROL, max_tokens=4)[:2] == (
            "cloud",
            "capacity.no_local",
        )
        outcomes = _send_all(router, PROMPTS)
        for prompt, (target, reason, code) in zip(PROMPTS, outcomes, strict=True):
            assert (target, code) == ("reject", "UNAVAILABLE"), prompt.detector
            assert reason.startswith("privacy.detector."), reason
        _assert_nothing_leaked(stack, sent_before, PROMPTS)


def test_client_marked_sensitive_is_never_sent_out(stack: Stack, tmp_path: Path) -> None:
    spec = {"complexity": {"threshold": 0.0}}
    with running_router(tmp_path, spec, [stack.local.target], stack.egress.target) as router:
        sent_before = len(stack.proxy.received())
        request = pb.GenerateRequest(
            prompt="Nothing detectable in here, but the client knows better.",
            sampling=pb.SamplingParams(max_tokens=2),
            routing=pb.RoutingHints(sensitivity=pb.SENSITIVITY_SENSITIVE),
        )
        response = router.stub.Generate(request, timeout=120)
        assert (response.route.target, response.route.reason) == ("local", "privacy.client_marked")
        assert len(stack.proxy.received()) == sent_before


def test_entity_findings_stay_local_and_the_rest_goes_out(stack: Stack, tmp_path: Path) -> None:
    """The entity detectors run on cloud-bound requests: each held-out labelled prompt is routed
    as the egress's scanner judges it (quality is asserted in tests/unit/test_entities.py)."""
    rows = load_entities("heldout")
    prompts = [r["text"] for r in rows if r["labels"]][:8] + [
        r["text"] for r in rows if not r["labels"]
    ][:4]
    scanner = PrivacyScanner()
    spec = {"complexity": {"threshold": 0.0}}
    with running_router(tmp_path, spec, [stack.local.target], stack.egress.target) as router:
        sent_before = len(stack.proxy.received())
        flagged = []
        for text in prompts:
            finding = scanner.sensitive([text])
            target, reason, code = ask_or_error(router.stub, text, max_tokens=1)
            if finding is None:
                assert (target, reason, code) == ("cloud", "complexity.high", "OK"), text
            else:
                flagged.append(text)
                assert (target, code) == ("local", "OK"), text
                assert reason == f"privacy.detector.{finding.detector}", text
        assert len(flagged) >= 8  # the labelled prompts; a look-alike may be flagged too
        assert len(stack.proxy.received()) - sent_before == len(prompts) - len(flagged)
        assert not [text for text in flagged if text in stack.proxy.received_text()]
