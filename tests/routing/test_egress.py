"""The egress: the one way out, audited, retrying only what is worth retrying."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from edgefleet.serving.readiness import free_local_port
from tests.routing.conftest import Stack
from tests.support.cloud import STAND_IN_MODEL
from tests.support.model_server import running_server
from tests.support.routing import SYSTEM, ask, audit_lines


def _last_audit(stack: Stack) -> dict:
    return audit_lines(stack.audit_log)[-1]


def test_answer_is_audited_with_a_hash_and_never_the_prompt(stack: Stack) -> None:
    prompt = "Name one planet of the solar system, in one word: audited-marker-7731."
    response, _ = ask(stack.egress.stub, prompt, max_tokens=8)
    assert response.served_by.backend == "cloud" and response.text
    line = _last_audit(stack)
    assert line["request_id"] == response.id
    assert line["outcome"] == "ok" and line["attempts"] == 1
    assert line["cloud_model"] == STAND_IN_MODEL
    canonical = json.dumps([["system", SYSTEM], ["user", prompt]], ensure_ascii=False)
    assert line["prompt_sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert line["completion_tokens"] == response.usage.completion_tokens
    assert "audited-marker-7731" not in stack.audit_log.read_text()


def test_egress_refuses_pii_itself_and_sends_nothing(stack: Stack) -> None:
    sent_before = len(stack.proxy.received())
    for prompt in [
        "Please mail jane.roe@example.org the minutes.",
        "Charge card 4111 1111 1111 1111 for the order.",
        "Wire it to DE89 3704 0044 0532 0130 00 today.",
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            ask(stack.egress.stub, prompt)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "refused by the egress" in caught.value.details()
        assert _last_audit(stack)["outcome"] == "refused_sensitive"
    with pytest.raises(grpc.RpcError) as caught:
        ask(stack.egress.stub, "Nothing personal here.", sensitive=True)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert len(stack.proxy.received()) == sent_before


def test_retryable_cloud_errors_are_retried_others_are_not(stack: Stack) -> None:
    stack.proxy.fail_next(503, 429)
    response, _ = ask(stack.egress.stub, "Say yes.", max_tokens=4)
    assert response.text
    assert _last_audit(stack)["attempts"] == 3

    stack.proxy.fail_next(400)
    with pytest.raises(grpc.RpcError) as caught:
        ask(stack.egress.stub, "Say yes.", max_tokens=4)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _last_audit(stack)["attempts"] == 1

    stack.proxy.fail_next(503, 503, 503)
    with pytest.raises(grpc.RpcError) as caught:
        ask(stack.egress.stub, "Say yes.", max_tokens=4)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    line = _last_audit(stack)
    assert (line["attempts"], line["outcome"]) == (3, "UNAVAILABLE")


def test_api_key_comes_from_a_file_and_a_wrong_key_is_a_clear_error(
    stack: Stack, tmp_path: Path
) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text("not-the-key\n")
    args = (
        "--base-url", stack.proxy.base_url, "--cloud-model", STAND_IN_MODEL,
        "--api-key-file", str(key_file), "--audit-log", str(tmp_path / "audit.jsonl"),
    )  # fmt: skip
    with (
        running_server(*args, module="edgefleet.egress.main") as egress,
        pytest.raises(grpc.RpcError) as caught,
    ):
        ask(egress.stub, "Say yes.", max_tokens=4)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "check the API key secret" in caught.value.details()


def test_egress_without_a_key_or_cloud_url_refuses_to_start() -> None:
    command = [sys.executable, "-m", "edgefleet.egress.main",
               "--listen", f"127.0.0.1:{free_local_port()}", "--metrics-listen", ""]  # fmt: skip
    no_url = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert no_url.returncode == 2
    assert "--base-url is required; --cloud-model is required" in no_url.stderr
    env = {k: v for k, v in os.environ.items() if k != "EDGEFLEET_CLOUD_API_KEY"}
    no_key = subprocess.run(
        [*command, "--base-url", "http://127.0.0.1:9/v1", "--cloud-model", "m"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert no_key.returncode == 2
    assert "no API key" in no_key.stderr
