"""The SmallModel and RoutingPolicy CRDs on a real API server: schemas, defaults, CEL rules.

Only a real kube-apiserver proves these: structural pruning and strict field
validation, defaulting, the CEL rules' cost estimates and messages, printer
columns and `kubectl explain`. Each bad resource must be refused by
`kubectl apply` with the rule's own message, and leave nothing behind.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.controlplane.helpers import Cluster

pytestmark = pytest.mark.controlplane

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
API_VERSION = "edgefleet.io/v1alpha1"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

Manifest = dict[str, Any]


def example(name: str) -> Manifest:
    (document,) = [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]
    return document


def small_model(name: str = "model", **spec: Any) -> Manifest:
    """A valid SmallModel; keyword arguments replace whole spec fields."""
    base: Manifest = {"source": {"gguf": {"uri": "builtin://smollm2-135m"}}}
    return {
        "apiVersion": API_VERSION,
        "kind": "SmallModel",
        "metadata": {"name": name},
        "spec": {**base, **spec},
    }


def routing_policy(name: str = "policy", **spec: Any) -> Manifest:
    """A valid RoutingPolicy; keyword arguments replace whole spec fields."""
    base: Manifest = {"local": {"targets": [{"smallModel": "model"}]}}
    return {
        "apiVersion": API_VERSION,
        "kind": "RoutingPolicy",
        "metadata": {"name": name},
        "spec": {**base, **spec},
    }


def edited(manifest: Manifest, edit: Callable[[Manifest], None]) -> Manifest:
    changed = copy.deepcopy(manifest)
    edit(changed)
    return changed


def apply(cluster: Cluster, namespace: str, *manifests: Manifest, check: bool = True) -> Any:
    return cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump_all(manifests), check=check
    )


def test_examples_are_accepted_and_read_back_with_defaults(crds: Cluster, namespace: str) -> None:
    names = ("cloud-secret.yaml", "smallmodel.yaml", "smallmodel-edge.yaml", "routingpolicy.yaml")
    apply(crds, namespace, *(example(name) for name in names))

    # Every field an example gives comes back as it was: the schema prunes nothing.
    for name in ("smallmodel.yaml", "smallmodel-edge.yaml", "routingpolicy.yaml"):
        given = example(name)
        stored = crds.get(given["kind"], given["metadata"]["name"], namespace)
        assert _subset(given["spec"], stored["spec"]), (name, stored["spec"])

    smollm2 = crds.get("smallmodel", "smollm2", namespace)["spec"]
    assert smollm2 == {
        "source": {"gguf": {"uri": "builtin://smollm2-135m", "sha256": ""}},
        "engine": "auto",
        "perNode": False,
        "replicas": 2,
        "serving": {"contextLength": 2048, "maxConcurrency": 4, "maxQueue": 16, "instances": 1},
    }


def test_minimal_resources_get_every_default(crds: Cluster, namespace: str) -> None:
    apply(
        crds,
        namespace,
        small_model("bare"),
        small_model("scaled", autoscaling={}),
        routing_policy("bare"),
    )

    bare_model = crds.get("smallmodel", "bare", namespace)["spec"]
    assert bare_model == {
        "source": {"gguf": {"uri": "builtin://smollm2-135m", "sha256": ""}},
        "engine": "auto",
        "perNode": False,
        "serving": {"contextLength": 2048, "maxQueue": 16, "instances": 1},
    }
    scaled = crds.get("smallmodel", "scaled", namespace)["spec"]
    assert scaled["autoscaling"] == {
        "minReplicas": 1,
        "maxReplicas": 4,
        "targetInFlightPerReplica": 4,
    }

    policy = crds.get("routingpolicy", "bare", namespace)["spec"]
    assert policy == {
        "modelName": "hybrid",
        "local": {"targets": [{"smallModel": "model", "weight": 1}]},
        # No cloud section: local only, nothing leaves the cluster.
        "cloud": {"enabled": False},
        "privacy": {
            "detectors": [
                "email",
                "phone",
                "credit_card",
                "iban",
                "us_ssn",
                "national_id",
                "secret",
                "person",
                "address",
                "health",
                "obfuscated_contact",
            ],
            "onSensitive": "local",
        },
        "capacity": {
            "maxQueueDepth": 2,
            "maxPredictedTtftMs": 5000,
            "recoverFraction": 0.5,
            "cloudWhenNoLocal": True,
        },
        "budget": {
            "windowSeconds": 3600,
            "pricePer1kInputTokens": 0,
            "pricePer1kOutputTokens": 0,
            "onExceeded": "local",
        },
        "failover": {
            "localToCloud": True,
            "cloudTimeoutSeconds": 60,
            "localTimeoutSeconds": 120,
            "breakerFailures": 3,
            "breakerCooldownSeconds": 30,
        },
    }


def test_get_shows_the_printer_columns(crds: Cluster, namespace: str) -> None:
    apply(crds, namespace, small_model("smollm2"), routing_policy("demo"))
    ready = {
        "type": "Ready",
        "status": "False",
        "reason": "ReplicasNotReady",
        "message": "1 of 3 model-server pods ready",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
        "observedGeneration": 1,
    }
    model_status = {
        "status": {
            "observedGeneration": 1,
            "conditions": [ready],
            "engines": {"llamacpp": {"desired": 3, "ready": 1, "workload": "Deployment/x"}},
            "readyReplicas": 1,
            "desiredReplicas": 3,
            "service": "smollm2",
            "endpoints": 1,
        }
    }
    policy_status = {
        "status": {
            "conditions": [{**ready, "status": "True", "reason": "RouterReady"}],
            "resolvedTargets": [
                {"smallModel": "smollm2", "service": "smollm2", "weight": 1, "readyEndpoints": 1}
            ],
            "router": {
                "reportedAt": "2026-01-01T00:00:00Z",
                "requests": 120,
                "localShare": 0.82,
                "overflow": 3,
                "cloudRequests": 21,
                "cloudSpend": {"windowSeconds": 3600, "tokens": 5120, "cost": 0.03},
                "lastDecisions": [{"reason": "complexity.low", "count": 80}],
            },
        }
    }
    for kind, name, status in (
        ("smallmodel", "smollm2", model_status),
        ("routingpolicy", "demo", policy_status),
    ):
        crds.kubectl(
            "patch", kind, name, "-n", namespace, "--subresource=status", "--type=merge",
            "-p", json.dumps(status),
        )  # fmt: skip
        # The status schema is structural: nothing the operator writes is pruned.
        assert crds.get(kind, name, namespace)["status"] == status["status"]

    models = _table(crds.kubectl("get", "sm", "-n", namespace).stdout)
    assert models[0][:7] == ["NAME", "ENGINE", "READY", "DESIRED", "SERVICE", "STATUS", "REASON"]
    assert models[0][7] == "AGE"
    assert models[1][:7] == ["smollm2", "auto", "1", "3", "smollm2", "False", "ReplicasNotReady"]

    policies = _table(crds.kubectl("get", "rp", "-n", namespace).stdout)
    assert policies[0] == [
        "NAME",
        "MODEL",
        "READY",
        "REQUESTS",
        "LOCAL SHARE",
        "CLOUD SPEND",
        "AGE",
    ]
    assert policies[1][:6] == ["demo", "hybrid", "True", "120", "0.82", "0.03"]

    # Both kinds are in the `edgefleet` category.
    listed = crds.kubectl("get", "edgefleet", "-n", namespace, "-o", "name").stdout.split()
    assert sorted(listed) == [
        "routingpolicy.edgefleet.io/demo",
        "smallmodel.edgefleet.io/smollm2",
    ]


def test_kubectl_explain_describes_the_fields(crds: Cluster) -> None:
    source = crds.kubectl("explain", "smallmodel.spec.source").stdout
    assert "at least one of gguf (llama.cpp) and hf (vLLM)" in source
    assert "gguf\t<Object>" in source and "hf\t<Object>" in source

    uri = crds.kubectl("explain", "smallmodel.spec.source.gguf.uri").stdout
    assert "builtin://smollm2-135m" in uri and "pvc://CLAIM/path.gguf" in uri

    on_exceeded = crds.kubectl("explain", "routingpolicy.spec.budget.onExceeded").stdout
    assert "reject" in on_exceeded and "local" in on_exceeded


def _table(text: str) -> list[list[str]]:
    """`kubectl get` output as rows of cells.

    kubectl pads columns with at least three spaces, and a header may hold one
    ("LOCAL SHARE"), so cells are split on runs of two or more.
    """
    return [re.split(r"\s{2,}", line.strip()) for line in text.strip().splitlines()]


def _subset(given: Any, stored: Any) -> bool:
    """Whether everything in `given` is in `stored` (which may add defaults)."""
    if isinstance(given, dict):
        return isinstance(stored, dict) and all(
            key in stored and _subset(value, stored[key]) for key, value in given.items()
        )
    return given == stored


# (what is wrong, the resource, the message the API server must give)
INVALID: list[tuple[str, Manifest, str]] = [
    (
        "missing-source",
        edited(small_model(), lambda m: m["spec"].pop("source")),
        "spec.source: Required value",
    ),
    (
        "source-without-gguf-or-hf",
        small_model(source={}),
        "source needs gguf (for llama.cpp), hf (for vLLM), or both",
    ),
    (
        "bad-sha256",
        small_model(source={"gguf": {"uri": "file:///m.gguf", "sha256": SHA256.upper()}}),
        "sha256 must be 64 lowercase hexadecimal characters",
    ),
    (
        "https-without-sha256",
        small_model(source={"gguf": {"uri": "https://models.example/x.gguf"}}),
        "sha256 is required for an http:// or https:// uri",
    ),
    (
        "bad-uri-scheme",
        small_model(source={"hf": {"uri": "s3://bucket/model"}}),
        "uri must be builtin://NAME, file:///absolute/path, pvc://CLAIM/path or http(s)://host/path",
    ),
    (
        "relative-file-uri",
        small_model(source={"gguf": {"uri": "file://models/x.gguf"}}),
        "uri must be builtin://NAME, file:///absolute/path, pvc://CLAIM/path or http(s)://host/path",
    ),
    (
        "pvc-path-leaves-claim",
        small_model(source={"gguf": {"uri": "pvc://models/../etc/x.gguf"}}),
        "a pvc:// uri must stay inside its claim: no '..' in the path",
    ),
    (
        "unknown-builtin",
        small_model(source={"gguf": {"uri": "builtin://llama-70b"}}),
        "unknown builtin model; the builtin models are: builtin://smollm2-135m",
    ),
    (
        "unknown-engine",
        small_model(engine="tensorrt"),
        'Unsupported value: "tensorrt": supported values: "auto", "llamacpp", "vllm"',
    ),
    (
        "llamacpp-without-gguf",
        small_model(engine="llamacpp", source={"hf": {"uri": "file:///models/hf"}}),
        "engine: llamacpp needs source.gguf",
    ),
    (
        "vllm-with-a-file-gguf-only",
        small_model(engine="vllm", source={"gguf": {"uri": "file:///models/x.gguf"}}),
        "engine: vllm needs source.hf, or a builtin:// source.gguf",
    ),
    (
        "negative-replicas",
        small_model(replicas=-1),
        "spec.replicas in body should be greater than or equal to 0",
    ),
    (
        "perNode-with-replicas",
        small_model(replicas=2, perNode=True),
        "replicas and perNode: true are exclusive",
    ),
    (
        "autoscaling-min-above-max",
        small_model(autoscaling={"minReplicas": 5, "maxReplicas": 2}),
        "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
    ),
    (
        "autoscaling-with-replicas",
        small_model(replicas=2, autoscaling={"maxReplicas": 3}),
        "autoscaling is exclusive with replicas and perNode: true",
    ),
    (
        "pool-admitting-more-than-its-copies",
        small_model(serving={"instances": 2, "maxConcurrency": 4}),
        "serving.maxConcurrency may not exceed serving.instances",
    ),
    (
        "vllm-instance-pool",
        small_model(engine="vllm", serving={"instances": 2}),
        "engine: vllm needs 1",
    ),
    (
        "context-length-too-small",
        small_model(serving={"contextLength": 64}),
        "spec.serving.contextLength in body should be greater than or equal to 128",
    ),
    (
        "context-length-too-large",
        small_model(serving={"contextLength": 262144}),
        "spec.serving.contextLength in body should be less than or equal to 131072",
    ),
    (
        "unknown-field-in-spec",
        small_model(replica=2),
        'unknown field "spec.replica"',
    ),
    (
        "model-name-not-a-dns-label",
        small_model(name="7b-model"),
        "metadata.name must be a DNS label of at most 54 characters",
    ),
    (
        "bad-regex",
        routing_policy(privacy={"customPatterns": [{"name": "ticket", "regex": "TICKET-(\\d+"}]}),
        "customPatterns regex must be a valid regular expression (RE2 syntax)",
    ),
    (
        "regex-matching-the-empty-string",
        routing_policy(privacy={"customPatterns": [{"name": "anything", "regex": "x*"}]}),
        "that cannot match the empty string",
    ),
    (
        "custom-pattern-named-like-a-builtin",
        routing_policy(privacy={"customPatterns": [{"name": "email", "regex": "@corp"}]}),
        "customPatterns name is taken by a built-in detector",
    ),
    (
        "unknown-detector",
        routing_policy(privacy={"detectors": ["email", "passport"]}),
        'Unsupported value: "passport": supported values: "email", "phone"',
    ),
    (
        "negative-budget",
        routing_policy(budget={"maxCloudCost": -1}),
        "spec.budget.maxCloudCost in body should be greater than or equal to 0",
    ),
    (
        "threshold-and-target-cloud-share",
        routing_policy(complexity={"threshold": 0.2, "targetCloudShare": 0.3}),
        "complexity takes threshold or targetCloudShare, not both",
    ),
    (
        "threshold-above-one",
        routing_policy(complexity={"threshold": 1.5}),
        "spec.complexity.threshold in body should be less than or equal to 1",
    ),
    (
        "on-exceeded-invalid",
        routing_policy(budget={"onExceeded": "drop"}),
        'Unsupported value: "drop": supported values: "local", "reject"',
    ),
    (
        "missing-local",
        edited(routing_policy(), lambda m: m["spec"].pop("local")),
        "spec.local: Required value",
    ),
    (
        "empty-targets",
        routing_policy(local={"targets": []}),
        "local.targets needs at least one SmallModel",
    ),
    (
        "duplicate-target",
        routing_policy(local={"targets": [{"smallModel": "a"}, {"smallModel": "a", "weight": 2}]}),
        "local.targets may name each SmallModel only once",
    ),
    (
        "target-weight-zero",
        routing_policy(local={"targets": [{"smallModel": "a", "weight": 0}]}),
        "spec.local.targets[0].weight in body should be greater than or equal to 1",
    ),
    (
        "cloud-enabled-without-secret-ref",
        routing_policy(
            cloud={"enabled": True, "baseURL": "https://api.example/v1", "model": "gpt-4o-mini"}
        ),
        "cloud.enabled: true needs cloud.baseURL, cloud.model and cloud.apiKeySecretRef",
    ),
    (
        "cloud-base-url-not-http",
        routing_policy(
            cloud={
                "baseURL": "ftp://api.example/v1",
                "model": "m",
                "apiKeySecretRef": {"name": "cloud-llm", "key": "api-key"},
            }
        ),
        "baseURL must be an http:// or https:// URL",
    ),
    (
        "unknown-field-in-budget",
        routing_policy(budget={"maxCost": 2}),
        'unknown field "spec.budget.maxCost"',
    ),
]


@pytest.mark.parametrize(
    ("manifest", "message"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID]
)
def test_invalid_resource_is_refused_with_the_rules_message(
    crds: Cluster, namespace: str, manifest: Manifest, message: str
) -> None:
    refused = apply(crds, namespace, manifest, check=False)

    assert refused.returncode != 0, f"accepted: {refused.stdout}"
    assert message in refused.stderr
    # A refused create leaves nothing of that name behind.
    assert crds.get(manifest["kind"], manifest["metadata"]["name"], namespace) is None
