"""The examples load, agree with each other, and pass the parsers that will read them.

The CRDs' own checks of the examples run on a real API server in
tests/controlplane/test_crds.py; here are the checks that need no cluster: the
router's strict policy parser and the fetch-model init container's source parser.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefleet.routing.policy import LocalTarget, SecretKeyRef, load_policy
from edgefleet.serving.fetch_model import BUILTIN_MODELS, normalise_sha256, parse_source

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_FILES = sorted(path.name for path in EXAMPLES.glob("*.yaml"))


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text(encoding="utf-8")) if d]


def only(name: str) -> dict[str, Any]:
    (document,) = documents(name)
    return document


def test_the_examples_are_the_documented_ones() -> None:
    assert EXAMPLE_FILES == [
        "cloud-secret.yaml",
        "routingpolicy.yaml",
        "smallmodel-edge.yaml",
        "smallmodel.yaml",
    ]
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for name in EXAMPLE_FILES:
        assert f"[{name}]({name})" in readme, f"examples/README.md does not describe {name}"


@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_every_example_is_one_kubernetes_object(name: str) -> None:
    document = only(name)

    assert {"apiVersion", "kind", "metadata"} <= set(document)
    assert document["metadata"]["name"]
    # Namespaced examples: applied with `-n`, so they must not pin a namespace.
    assert "namespace" not in document["metadata"]


def test_routing_policy_example_passes_the_router_parser() -> None:
    policy = load_policy(EXAMPLES / "routingpolicy.yaml")

    assert policy.name == "demo"
    assert policy.model_name == "hybrid"
    assert policy.cloud_enabled
    assert policy.local_targets == (LocalTarget("smollm2", 1),)
    assert policy.cloud_egress.base_url == "https://api.openai.com/v1"
    assert policy.cloud_egress.model == "gpt-4o-mini"
    assert policy.cloud_egress.api_key_secret_ref == SecretKeyRef("cloud-llm", "api-key")
    assert policy.privacy.sensitive_namespaces == ("payroll",)
    assert policy.scanner().first("badge EMP-123456") is not None


def test_routing_policy_example_names_the_other_examples() -> None:
    spec = only("routingpolicy.yaml")["spec"]
    secret = only("cloud-secret.yaml")

    targets = {target["smallModel"] for target in spec["local"]["targets"]}
    assert targets == {only("smallmodel.yaml")["metadata"]["name"]}
    ref = spec["cloud"]["apiKeySecretRef"]
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret["stringData"]


@pytest.mark.parametrize("name", ["smallmodel.yaml", "smallmodel-edge.yaml"])
def test_small_model_sources_pass_the_fetch_model_parser(name: str) -> None:
    source = only(name)["spec"]["source"]

    assert source, f"{name}: no source"
    for artifact in source.values():
        # Raises FetchError, failing the test, for a URI or digest the
        # init container would refuse.
        parse_source(artifact["uri"], Path("/mnt/pvc"))
        normalise_sha256(artifact.get("sha256"))


def test_edge_example_digest_is_the_packaged_models() -> None:
    # The edge example serves the packaged GGUF from a claim, so its digest is known.
    gguf = only("smallmodel-edge.yaml")["spec"]["source"]["gguf"]
    assert gguf["sha256"] == BUILTIN_MODELS["smollm2-135m"]
