"""RoutingPolicy parsing: the same strict verdict for the router, the egress and admission."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.routing.policy import PolicyError, RoutingPolicy, load_policy, parse_policy
from edgefleet.routing.privacy import BUILTIN_DETECTORS

FULL = {
    "apiVersion": "edgefleet.io/v1alpha1",
    "kind": "RoutingPolicy",
    "metadata": {"name": "shop-floor"},
    "spec": {
        "modelName": "assistant",
        "cloud": {"enabled": True},
        "privacy": {
            "detectors": ["email", "iban"],
            "customPatterns": [{"name": "employee-id", "regex": r"EMP-\d{6}"}],
        },
        "complexity": {"targetCloudShare": 0.2},
        "capacity": {"maxQueueDepth": 0, "maxPredictedTtftMs": 800, "cloudWhenNoLocal": False},
        "budget": {
            "windowSeconds": 60,
            "maxCloudTokens": 1000,
            "maxCloudCost": 0.5,
            "pricePer1kInputTokens": 0.01,
            "pricePer1kOutputTokens": 0.03,
            "onExceeded": "reject",
        },
        "failover": {"localToCloud": False, "breakerFailures": 2, "breakerCooldownSeconds": 5},
    },
}


def test_whole_resource_is_read_into_typed_fields() -> None:
    policy = parse_policy(FULL)
    assert policy.name == "shop-floor"
    assert policy.model_name == "assistant"
    assert policy.privacy.detectors == ("email", "iban")
    assert policy.privacy.custom_patterns[0].name == "employee-id"
    assert policy.complexity.target_cloud_share == 0.2
    assert policy.complexity.threshold is None
    assert policy.capacity.max_queue_depth == 0
    assert policy.capacity.cloud_when_no_local is False
    assert policy.budget.max_cloud_tokens == 1000
    assert policy.budget.on_exceeded == "reject"
    assert policy.failover.local_to_cloud is False
    assert policy.failover.breaker_failures == 2


def test_bare_spec_and_empty_spec_give_defaults() -> None:
    assert parse_policy({}) == RoutingPolicy()
    assert parse_policy({"complexity": {"threshold": 0.7}}).complexity.threshold == 0.7
    assert RoutingPolicy().privacy.detectors == BUILTIN_DETECTORS


def test_every_problem_is_reported_with_its_field_path() -> None:
    spec = {
        "complexity": {"threshold": 1.5},
        "budget": {"onExceeded": "panic", "maxCloudCost": -1, "maxCloudTokns": 5},
        "failover": {"breakerFailures": 0},
        "capacity": {"cloudWhenNoLocal": "yes"},
    }
    with pytest.raises(PolicyError) as caught:
        parse_policy(spec)
    problems = caught.value.problems
    assert "spec.complexity.threshold: must be a number within [0, 1], got 1.5" in problems
    assert "spec.budget.onExceeded: must be one of local, reject, got 'panic'" in problems
    assert "spec.budget.maxCloudCost: must be a number >= 0, got -1" in problems
    assert any(p.startswith("spec.budget.maxCloudTokns: unknown field") for p in problems)
    assert "spec.failover.breakerFailures: must be an integer >= 1, got 0" in problems
    assert "spec.capacity.cloudWhenNoLocal: must be true or false, got 'yes'" in problems
    assert len(problems) == 6


def test_threshold_and_share_together_are_refused() -> None:
    with pytest.raises(PolicyError, match="give threshold or targetCloudShare, not both"):
        parse_policy({"complexity": {"threshold": 0.5, "targetCloudShare": 0.3}})


def test_unknown_detector_and_bad_regex_are_refused() -> None:
    with pytest.raises(PolicyError, match=r"spec\.privacy: .*passport_scan"):
        parse_policy({"privacy": {"detectors": ["email", "passport_scan"]}})
    with pytest.raises(PolicyError, match=r"spec\.privacy: .*broken"):
        parse_policy({"privacy": {"customPatterns": [{"name": "broken", "regex": "(unclosed"}]}})


def test_on_sensitive_is_read_defaults_to_local_and_refuses_other_values() -> None:
    assert RoutingPolicy().privacy.on_sensitive == "local"
    for choice in ("local", "redact", "reject"):
        parsed = parse_policy({"privacy": {"onSensitive": choice}})
        assert parsed.privacy.on_sensitive == choice
    with pytest.raises(PolicyError) as caught:
        parse_policy({"privacy": {"onSensitive": "mask"}})
    assert caught.value.problems == [
        "spec.privacy.onSensitive: must be one of local, redact, reject, got 'mask'"
    ]


def test_wrong_kind_is_refused() -> None:
    with pytest.raises(PolicyError, match="kind: must be RoutingPolicy"):
        parse_policy({"kind": "SmallModel", "spec": {}})


def test_files_in_yaml_and_bad_files_get_clear_errors(tmp_path: Path) -> None:
    good = tmp_path / "policy.yaml"
    good.write_text("spec:\n  complexity:\n    threshold: 0.4\n")
    assert load_policy(good).complexity.threshold == 0.4
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed\n")
    with pytest.raises(PolicyError, match=r"invalid .*bad.yaml: not valid YAML"):
        load_policy(bad)
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.yaml")


OPERATOR_SPEC = {
    "modelName": "hybrid",
    "local": {"targets": [{"smallModel": "smollm2", "weight": 3}, {"smallModel": "qwen"}]},
    "cloud": {
        "enabled": True,
        "baseURL": "https://api.openai.com/v1",
        "model": "gpt-4o-mini",
        "apiKeySecretRef": {"name": "cloud-llm", "key": "api-key"},
    },
    "privacy": {"sensitiveNamespaces": ["hr", "payroll"]},
}


def test_operator_fields_are_read_into_typed_fields() -> None:
    from edgefleet.routing.policy import CloudEgress, LocalTarget, SecretKeyRef

    policy = parse_policy(OPERATOR_SPEC)
    assert policy.local_targets == (LocalTarget("smollm2", 3), LocalTarget("qwen", 1))
    assert policy.cloud_enabled is True
    assert policy.cloud_egress == CloudEgress(
        "https://api.openai.com/v1", "gpt-4o-mini", SecretKeyRef("cloud-llm", "api-key")
    )
    assert policy.privacy.sensitive_namespaces == ("hr", "payroll")


def test_local_is_optional_for_the_file_based_router() -> None:
    policy = parse_policy({"cloud": {"enabled": False}})
    assert policy.local_targets == ()
    assert policy.cloud_egress.base_url is None
    assert policy.privacy.sensitive_namespaces == ()


def test_operator_fields_are_checked_with_field_paths() -> None:
    spec = {
        "local": {
            "targets": [
                {"smallModel": "Small_Model"},
                {"smallModel": "a", "weight": 101},
                {"smallModel": "a"},
                {"smallModel": "b", "replicas": 2},
                "c",
            ]
        },
        "cloud": {"baseURL": "api.openai.com", "model": "", "apiKeySecretRef": {"name": "x"}},
        "privacy": {"sensitiveNamespaces": ["ok", "Not-OK", "ok"]},
    }
    with pytest.raises(PolicyError) as caught:
        parse_policy(spec)
    problems = caught.value.problems
    for expected in (
        "spec.local.targets[0].smallModel: must be a SmallModel name",
        "spec.local.targets[1].weight: must be an integer within 1..100, got 101",
        "spec.local.targets[2].smallModel: 'a' is listed twice",
        "spec.local.targets[3].replicas: unknown field",
        "spec.local.targets[4]: must be a mapping",
        "spec.cloud.baseURL: must be an http(s):// URL, got 'api.openai.com'",
        "spec.cloud.model: must be a non-empty string",
        "spec.cloud.apiKeySecretRef.key: must be a Secret key",
        "spec.privacy.sensitiveNamespaces[1]: must be a DNS-1123 label",
        "spec.privacy.sensitiveNamespaces[2]: 'ok' is listed twice",
    ):
        assert any(problem.startswith(expected) for problem in problems), (expected, problems)
    assert len(problems) == 10


@pytest.mark.parametrize("local", [{"targets": []}, {"targets": None}, {"targets": "smollm2"}])
def test_local_targets_when_given_must_name_a_model(local: object) -> None:
    with pytest.raises(PolicyError, match=r"spec\.local\.targets: must be a non-empty list"):
        parse_policy({"local": local})
