"""The chart's CRD templates: what `helm template` renders, and agreement with the router's parser.

The RoutingPolicy schema repeats the field names and defaults of
edgefleet.routing.policy; these tests catch the two drifting apart, which would
let the API server accept a policy the router refuses (or default it differently).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefleet.routing import policy
from edgefleet.routing.privacy import BUILTIN_DETECTORS
from tests.cluster import versions

CHART = Path(__file__).resolve().parents[2] / "charts" / "edgefleet"
CRD_NAMES = [
    "routercalibrations.edgefleet.io",
    "routingpolicies.edgefleet.io",
    "smallmodels.edgefleet.io",
]
KEEP = "helm.sh/resource-policy"


def helm() -> str:
    cached = versions.bin_dir() / "helm"
    if cached.exists():
        return str(cached)
    found = shutil.which("helm")
    if found is None:
        pytest.fail(f"helm is neither cached in {cached.parent} nor on PATH: run `make testbed`")
    return found


def render(*values: str) -> list[dict[str, Any]]:
    """The whole chart's objects, rendered for the test bed's Kubernetes version."""
    sets = [arg for value in values for arg in ("--set", value)]
    out = subprocess.run(
        [helm(), "template", "edgefleet", str(CHART), "--namespace", "edgefleet-system",
         "--kube-version", versions.KUBERNETES_VERSION, *sets],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def crds(*values: str) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d for d in render(*values) if d["kind"] == "CustomResourceDefinition"
    }


@pytest.fixture(scope="module")
def routing_policy_spec() -> dict[str, Any]:
    crd = crds()["routingpolicies.edgefleet.io"]
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]


def snake(name: str) -> str:
    """camelCase field name to the parser's snake_case attribute: pricePer1kInputTokens ->
    price_per_1k_input_tokens, baseURL -> base_url."""
    return re.sub(r"(?<=[a-z])(?=[A-Z0-9])", "_", name).lower()


def test_every_crd_renders_by_default_and_are_kept_on_uninstall() -> None:
    rendered = crds()

    assert sorted(rendered) == CRD_NAMES
    for crd in rendered.values():
        metadata = crd["metadata"]
        assert metadata["annotations"] == {KEEP: "keep"}
        assert metadata["labels"]["app.kubernetes.io/part-of"] == "edgefleet"
        assert metadata["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        assert crd["spec"]["group"] == "edgefleet.io"
        assert crd["spec"]["scope"] == "Namespaced"
        assert crd["spec"]["names"]["categories"] == ["edgefleet"]
    short_names = {name: crd["spec"]["names"]["shortNames"] for name, crd in rendered.items()}
    assert short_names == {CRD_NAMES[0]: ["rcal"], CRD_NAMES[1]: ["rp"], CRD_NAMES[2]: ["sm"]}


def test_crds_without_keep_carry_no_annotations_at_all() -> None:
    rendered = crds("crds.keep=false")

    assert sorted(rendered) == CRD_NAMES
    for crd in rendered.values():
        # Not an empty or null `annotations:`, which tools that merge into it trip over.
        assert "annotations" not in crd["metadata"]


def test_disabled_crds_render_nothing() -> None:
    assert crds("crds.enabled=false") == {}


def test_routing_policy_fields_are_the_parsers(routing_policy_spec: dict[str, Any]) -> None:
    spec = routing_policy_spec["properties"]
    assert set(spec) == policy.SPEC_FIELDS

    def fields(section: Any) -> set[str]:
        return {f.name for f in dataclasses.fields(section)}

    pairs = {
        "capacity": fields(policy.CapacityPolicy),
        "budget": fields(policy.BudgetPolicy),
        "failover": fields(policy.FailoverPolicy),
        "complexity": fields(policy.ComplexityPolicy),
        "privacy": fields(policy.PrivacyPolicy),
        "cloud": {"enabled"} | fields(policy.CloudEgress),
    }
    for section, parser_fields in pairs.items():
        assert {snake(name) for name in spec[section]["properties"]} == parser_fields, section
    target = spec["local"]["properties"]["targets"]["items"]["properties"]
    assert {snake(name) for name in target} == fields(policy.LocalTarget)
    secret_ref = spec["cloud"]["properties"]["apiKeySecretRef"]["properties"]
    assert set(secret_ref) == fields(policy.SecretKeyRef)


def test_routing_policy_defaults_are_the_parsers(routing_policy_spec: dict[str, Any]) -> None:
    spec = routing_policy_spec["properties"]
    parser_defaults = {
        "capacity": policy.CapacityPolicy(),
        "budget": policy.BudgetPolicy(),
        "failover": policy.FailoverPolicy(),
    }
    for section, defaults in parser_defaults.items():
        for name, schema in spec[section]["properties"].items():
            expected = getattr(defaults, snake(name))
            # The parser's None means "no limit": the CRD gives no default then.
            assert schema.get("default") == expected, f"spec.{section}.{name}"
    assert spec["modelName"]["default"] == policy.RoutingPolicy().model_name
    on_sensitive = spec["privacy"]["properties"]["onSensitive"]
    assert on_sensitive["default"] == policy.PrivacyPolicy().on_sensitive
    assert on_sensitive["enum"] == list(policy.ON_SENSITIVE)
    weight = spec["local"]["properties"]["targets"]["items"]["properties"]["weight"]
    assert weight["default"] == policy.LocalTarget("x").weight


def test_detectors_are_the_builtin_ones(routing_policy_spec: dict[str, Any]) -> None:
    privacy = routing_policy_spec["properties"]["privacy"]["properties"]
    assert privacy["detectors"]["items"]["enum"] == list(BUILTIN_DETECTORS)
    assert privacy["detectors"]["default"] == list(BUILTIN_DETECTORS)
    # A custom pattern may not take a built-in detector's name.
    name_rules = privacy["customPatterns"]["items"]["properties"]["name"][
        "x-kubernetes-validations"
    ]
    assert any(str(list(BUILTIN_DETECTORS)) in rule["rule"] for rule in name_rules)
