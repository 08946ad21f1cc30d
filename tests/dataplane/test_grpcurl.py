"""grpcurl, the tool people reach for first, sees and calls the server through reflection.

grpcurl comes from the test bed's Go-built binaries (`make testbed`, run by
`make test` before pytest).
"""

from __future__ import annotations

import json

from tests.cluster import kube
from tests.support.model_server import ModelServer


def test_grpcurl_lists_inference_oip_and_health(model_server: ModelServer) -> None:
    listed = kube.run("grpcurl", "-plaintext", model_server.target, "list", timeout=30)
    services = listed.stdout.split()
    for service in (
        "edgefleet.v1.Inference",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
    ):
        assert service in services, listed.stdout


def test_grpcurl_generates_through_reflection(model_server: ModelServer) -> None:
    request = {
        "prompt": "What is the capital of France?",
        "sampling": {"max_tokens": 16, "temperature": 0},
    }
    called = kube.run(
        "grpcurl",
        "-plaintext",
        "-d",
        json.dumps(request),
        model_server.target,
        "edgefleet.v1.Inference/Generate",
        timeout=60,
    )
    reply = json.loads(called.stdout)
    assert "Paris" in reply["text"]
    assert reply["served_by"]["engine"] == "llamacpp"
