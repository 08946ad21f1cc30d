"""RoutingPolicy: the typed form of the custom resource's spec, with one strict parser.

The router loads it from a file (the operator writes the spec into a
ConfigMap), the operator's admission check uses the same parser, so a policy
is accepted or refused with the same message everywhere. Every problem names
its field path (`spec.budget.onExceeded: ...`); unknown fields are refused
because a misspelt limit silently ignored is a budget overrun.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from edgefleet.kubeapi.specreader import SpecReader
from edgefleet.routing.privacy import BUILTIN_DETECTORS, CustomPattern, PrivacyScanner

API_VERSION = "edgefleet.io/v1alpha1"
KIND = "RoutingPolicy"


# Kubernetes object names: a SmallModel (and so its Service) is a DNS-1123
# label, a Secret a DNS-1123 subdomain; a Secret's keys are a narrower set.
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]{1,253}")


def is_dns_label(value: object) -> bool:
    return isinstance(value, str) and _DNS_LABEL.fullmatch(value) is not None


class PolicyError(ValueError):
    """A policy that must not be used; the message lists every problem found."""

    def __init__(self, problems: list[str], source: str = "policy") -> None:
        super().__init__(f"invalid {source}: " + "; ".join(problems))
        self.problems = problems


# What a detector's finding does to a request: keep it on local models, let the cloud have
# it with the values replaced by placeholders, or refuse it.
ON_SENSITIVE = ("local", "redact", "reject")


@dataclass(frozen=True)
class PrivacyPolicy:
    detectors: tuple[str, ...] = BUILTIN_DETECTORS
    custom_patterns: tuple[CustomPattern, ...] = ()
    # Requests from clients in these namespaces are sensitive whatever they say.
    sensitive_namespaces: tuple[str, ...] = ()
    # One of ON_SENSITIVE. Only detectors' findings are redacted or refused: a request the
    # client marks sensitive, or from a sensitive namespace, always stays local.
    on_sensitive: str = "local"


@dataclass(frozen=True)
class LocalTarget:
    """A SmallModel in the policy's namespace; its Service has the same name."""

    small_model: str
    # 1..100: how strongly each of its ready replicas is preferred (see router.choice).
    weight: int = 1


@dataclass(frozen=True)
class SecretKeyRef:
    name: str
    key: str


@dataclass(frozen=True)
class CloudEgress:
    """Where the egress sends cloud traffic. The operator reads it; the router does not.

    Whether the cloud may be used at all is RoutingPolicy.cloud_enabled, which
    the routing decision reads.
    """

    base_url: str | None = None
    model: str | None = None
    api_key_secret_ref: SecretKeyRef | None = None


@dataclass(frozen=True)
class ComplexityPolicy:
    # Exactly one of the two is used: a fixed score threshold, or the share of
    # traffic (on the training distribution) the cloud should get. With
    # neither given, 30 % of that distribution goes to the cloud.
    threshold: float | None = None
    target_cloud_share: float | None = 0.3
    # A calibrated classifier to score with instead of the shipped one (`edgefleet
    # calibrate`): the artefact file, relative to the policy file's folder; None: shipped.
    calibration: str | None = None


@dataclass(frozen=True)
class CapacityPolicy:
    # Overflow to the cloud when a new request would wait behind this many
    # others even on the least-loaded local replica (0: as soon as every slot
    # is busy), or when its predicted time to first token reaches the limit.
    max_queue_depth: int = 2
    max_predicted_ttft_ms: float = 5000.0
    # Hysteresis: overflow ends once load falls below this fraction of both limits.
    recover_fraction: float = 0.5
    # While no local replica is ready (cold start, scaled to zero), may the cloud serve?
    cloud_when_no_local: bool = True


@dataclass(frozen=True)
class BudgetPolicy:
    window_seconds: float = 3600.0
    max_cloud_tokens: int | None = None
    max_cloud_cost: float | None = None
    price_per_1k_input_tokens: float = 0.0
    price_per_1k_output_tokens: float = 0.0
    # What a request gets when the cloud would overspend: "local" or "reject".
    on_exceeded: str = "local"


@dataclass(frozen=True)
class FailoverPolicy:
    # May a request that failed locally be retried on the cloud? (Never a sensitive one.)
    local_to_cloud: bool = True
    cloud_timeout_seconds: float = 60.0
    local_timeout_seconds: float = 120.0
    breaker_failures: int = 3
    breaker_cooldown_seconds: float = 30.0


@dataclass(frozen=True)
class RoutingPolicy:
    name: str = "default"
    # The model name clients ask the router for ("default" always works too).
    model_name: str = "hybrid"
    cloud_enabled: bool = True
    cloud_egress: CloudEgress = field(default_factory=CloudEgress)
    # Empty: the router's endpoints come from flags or a file, not from SmallModels.
    local_targets: tuple[LocalTarget, ...] = ()
    privacy: PrivacyPolicy = field(default_factory=PrivacyPolicy)
    complexity: ComplexityPolicy = field(default_factory=ComplexityPolicy)
    capacity: CapacityPolicy = field(default_factory=CapacityPolicy)
    budget: BudgetPolicy = field(default_factory=BudgetPolicy)
    failover: FailoverPolicy = field(default_factory=FailoverPolicy)

    def scanner(self) -> PrivacyScanner:
        return PrivacyScanner(self.privacy.detectors, self.privacy.custom_patterns)


def _privacy(reader: SpecReader, spec: Mapping[str, Any]) -> PrivacyPolicy:
    known = {"detectors", "customPatterns", "sensitiveNamespaces", "onSensitive"}
    data = reader.section(spec, "privacy", "spec", known)
    detectors = data.get("detectors", list(BUILTIN_DETECTORS))
    if not isinstance(detectors, list) or not all(isinstance(d, str) for d in detectors):
        reader.problems.append("spec.privacy.detectors: must be a list of detector names")
        detectors = list(BUILTIN_DETECTORS)
    patterns: list[CustomPattern] = []
    raw_patterns = data.get("customPatterns", [])
    if not isinstance(raw_patterns, list):
        reader.problems.append("spec.privacy.customPatterns: must be a list")
        raw_patterns = []
    for index, item in enumerate(raw_patterns):
        path = f"spec.privacy.customPatterns[{index}]"
        if not isinstance(item, Mapping) or not {"name", "regex"} <= set(item):
            reader.problems.append(f"{path}: must be a mapping with name and regex")
            continue
        reader.unknown(item, path, {"name", "regex"})
        patterns.append(CustomPattern(str(item["name"]), str(item["regex"])))
    namespaces = _names(reader, data, "sensitiveNamespaces", "spec.privacy", "namespace names")
    on_sensitive = reader.choice(data, "onSensitive", "spec.privacy", "local", ON_SENSITIVE)
    policy = PrivacyPolicy(tuple(detectors), tuple(patterns), namespaces, on_sensitive)
    try:
        PrivacyScanner(policy.detectors, policy.custom_patterns)
    except ValueError as exc:
        reader.problems.append(f"spec.privacy: {exc}")
    return policy


def _names(
    reader: SpecReader, data: Mapping[str, Any], key: str, path: str, what: str
) -> tuple[str, ...]:
    """A list of unique DNS-1123 labels (namespaces, object names)."""
    value = data.get(key) or []
    if not isinstance(value, list):
        reader.problems.append(f"{path}.{key}: must be a list of {what}, got {value!r}")
        return ()
    names: list[str] = []
    for index, name in enumerate(value):
        if not is_dns_label(name):
            reader.problems.append(
                f"{path}.{key}[{index}]: must be a DNS-1123 label "
                f"(lowercase letters, digits, '-', at most 63), got {name!r}"
            )
        elif name in names:
            reader.problems.append(f"{path}.{key}[{index}]: {name!r} is listed twice")
        else:
            names.append(name)
    return tuple(names)


def _local(reader: SpecReader, spec: Mapping[str, Any]) -> tuple[LocalTarget, ...]:
    data = reader.section(spec, "local", "spec", {"targets"})
    path = "spec.local.targets"
    if "targets" not in data:
        return ()
    raw = data["targets"]
    if not isinstance(raw, list) or not raw:
        reader.problems.append(f"{path}: must be a non-empty list of {{smallModel, weight}}")
        return ()
    targets: list[LocalTarget] = []
    for index, item in enumerate(raw):
        item_path = f"{path}[{index}]"
        if not isinstance(item, Mapping):
            reader.problems.append(f"{item_path}: must be a mapping with smallModel and weight")
            continue
        reader.unknown(item, item_path, {"smallModel", "weight"})
        name = item.get("smallModel")
        weight = reader.number(
            item, "weight", item_path, 1, lambda v: 1 <= v <= 100, "within 1..100", True
        )
        if not is_dns_label(name):
            reader.problems.append(
                f"{item_path}.smallModel: must be a SmallModel name (a DNS-1123 label), "
                f"got {name!r}"
            )
        elif any(target.small_model == name for target in targets):
            reader.problems.append(f"{item_path}.smallModel: {name!r} is listed twice")
        else:
            targets.append(LocalTarget(name, weight))
    return tuple(targets)


def _cloud_egress(reader: SpecReader, cloud: Mapping[str, Any]) -> CloudEgress:
    path = "spec.cloud"
    base_url = cloud.get("baseURL")
    if base_url is not None and (
        not isinstance(base_url, str) or not re.fullmatch(r"https?://[^\s/]+(/\S*)?", base_url)
    ):
        reader.problems.append(f"{path}.baseURL: must be an http(s):// URL, got {base_url!r}")
        base_url = None
    model = cloud.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        reader.problems.append(f"{path}.model: must be a non-empty string, got {model!r}")
        model = None
    ref = cloud.get("apiKeySecretRef")
    secret: SecretKeyRef | None = None
    if ref is not None:
        ref_path = f"{path}.apiKeySecretRef"
        if not isinstance(ref, Mapping):
            reader.problems.append(f"{ref_path}: must be a mapping with name and key")
        else:
            reader.unknown(ref, ref_path, {"name", "key"})
            name, key = ref.get("name"), ref.get("key")
            valid = True
            if not isinstance(name, str) or not _DNS_SUBDOMAIN.fullmatch(name):
                reader.problems.append(f"{ref_path}.name: must be a Secret name, got {name!r}")
                valid = False
            if not isinstance(key, str) or not _SECRET_KEY.fullmatch(key):
                reader.problems.append(
                    f"{ref_path}.key: must be a Secret key (letters, digits, '-', '_', '.'), "
                    f"got {key!r}"
                )
                valid = False
            secret = SecretKeyRef(name, key) if valid else None
    return CloudEgress(base_url, model, secret)


def _complexity(reader: SpecReader, spec: Mapping[str, Any]) -> ComplexityPolicy:
    known = {"threshold", "targetCloudShare", "calibration"}
    data = reader.section(spec, "complexity", "spec", known)
    path = "spec.complexity"
    if "threshold" in data and "targetCloudShare" in data:
        reader.problems.append(f"{path}: give threshold or targetCloudShare, not both")
    in_unit = (lambda v: 0.0 <= v <= 1.0), "within [0, 1]"
    share = reader.number(data, "targetCloudShare", path, None, *in_unit)
    threshold = reader.number(data, "threshold", path, None, *in_unit)
    calibration = data.get("calibration")
    if calibration is not None and (not isinstance(calibration, str) or not calibration.strip()):
        reader.problems.append(
            f"{path}.calibration: must be a calibrated artefact's path, got {calibration!r}"
        )
        calibration = None
    if share is None and threshold is None:
        return ComplexityPolicy(calibration=calibration)
    return ComplexityPolicy(threshold=threshold, target_cloud_share=share, calibration=calibration)


def _capacity(reader: SpecReader, spec: Mapping[str, Any]) -> CapacityPolicy:
    known = {"maxQueueDepth", "maxPredictedTtftMs", "recoverFraction", "cloudWhenNoLocal"}
    data = reader.section(spec, "capacity", "spec", known)
    path, base = "spec.capacity", CapacityPolicy()
    positive = (lambda v: v > 0), "above 0"
    return CapacityPolicy(
        max_queue_depth=reader.number(
            data, "maxQueueDepth", path, base.max_queue_depth, lambda v: v >= 0, ">= 0", True
        ),
        max_predicted_ttft_ms=reader.number(
            data, "maxPredictedTtftMs", path, base.max_predicted_ttft_ms, *positive
        ),
        recover_fraction=reader.number(
            data, "recoverFraction", path, base.recover_fraction, lambda v: 0 < v <= 1, "in (0, 1]"
        ),
        cloud_when_no_local=reader.flag(data, "cloudWhenNoLocal", path, base.cloud_when_no_local),
    )


def _budget(reader: SpecReader, spec: Mapping[str, Any]) -> BudgetPolicy:
    known = {
        "windowSeconds",
        "maxCloudTokens",
        "maxCloudCost",
        "pricePer1kInputTokens",
        "pricePer1kOutputTokens",
        "onExceeded",
    }
    data = reader.section(spec, "budget", "spec", known)
    path, base = "spec.budget", BudgetPolicy()
    not_negative = (lambda v: v >= 0), ">= 0"
    return BudgetPolicy(
        window_seconds=reader.number(
            data, "windowSeconds", path, base.window_seconds, lambda v: v >= 1, ">= 1"
        ),
        max_cloud_tokens=reader.number(
            data, "maxCloudTokens", path, None, *not_negative, integer=True
        ),
        max_cloud_cost=reader.number(data, "maxCloudCost", path, None, *not_negative),
        price_per_1k_input_tokens=reader.number(
            data, "pricePer1kInputTokens", path, 0.0, *not_negative
        ),
        price_per_1k_output_tokens=reader.number(
            data, "pricePer1kOutputTokens", path, 0.0, *not_negative
        ),
        on_exceeded=reader.choice(data, "onExceeded", path, "local", ("local", "reject")),
    )


def _failover(reader: SpecReader, spec: Mapping[str, Any]) -> FailoverPolicy:
    known = {
        "localToCloud",
        "cloudTimeoutSeconds",
        "localTimeoutSeconds",
        "breakerFailures",
        "breakerCooldownSeconds",
    }
    data = reader.section(spec, "failover", "spec", known)
    path, base = "spec.failover", FailoverPolicy()
    positive = (lambda v: v > 0), "above 0"
    return FailoverPolicy(
        local_to_cloud=reader.flag(data, "localToCloud", path, base.local_to_cloud),
        cloud_timeout_seconds=reader.number(
            data, "cloudTimeoutSeconds", path, base.cloud_timeout_seconds, *positive
        ),
        local_timeout_seconds=reader.number(
            data, "localTimeoutSeconds", path, base.local_timeout_seconds, *positive
        ),
        breaker_failures=reader.number(
            data, "breakerFailures", path, base.breaker_failures, lambda v: v >= 1, ">= 1", True
        ),
        breaker_cooldown_seconds=reader.number(
            data, "breakerCooldownSeconds", path, base.breaker_cooldown_seconds, *positive
        ),
    )


SPEC_FIELDS = {
    "modelName",
    "local",
    "cloud",
    "privacy",
    "complexity",
    "capacity",
    "budget",
    "failover",
}


def parse_policy(document: Any, source: str = "policy") -> RoutingPolicy:
    """A RoutingPolicy from a whole custom resource or from its bare spec.

    Raises PolicyError listing every problem, each with its field path.
    """
    if not isinstance(document, Mapping):
        raise PolicyError([f"must be a mapping, got {type(document).__name__}"], source)
    reader = SpecReader()
    name = "default"
    if "spec" in document or "kind" in document:
        if document.get("kind", KIND) != KIND:
            reader.problems.append(f"kind: must be {KIND}, got {document.get('kind')!r}")
        if document.get("apiVersion", API_VERSION) != API_VERSION:
            reader.problems.append(
                f"apiVersion: must be {API_VERSION}, got {document.get('apiVersion')!r}"
            )
        metadata = document.get("metadata") or {}
        name = str(metadata.get("name", name)) if isinstance(metadata, Mapping) else name
        spec = document.get("spec") or {}
        if not isinstance(spec, Mapping):
            raise PolicyError(["spec: must be a mapping"], source)
    else:
        spec = document
    reader.unknown(spec, "spec", SPEC_FIELDS)
    cloud = reader.section(
        spec, "cloud", "spec", {"enabled", "baseURL", "model", "apiKeySecretRef"}
    )
    model_name = spec.get("modelName", "hybrid")
    if not isinstance(model_name, str) or not model_name.strip():
        reader.problems.append(f"spec.modelName: must be a non-empty string, got {model_name!r}")
        model_name = "hybrid"
    policy = RoutingPolicy(
        name=name,
        model_name=model_name,
        cloud_enabled=reader.flag(cloud, "enabled", "spec.cloud", True),
        cloud_egress=_cloud_egress(reader, cloud),
        local_targets=_local(reader, spec),
        privacy=_privacy(reader, spec),
        complexity=_complexity(reader, spec),
        capacity=_capacity(reader, spec),
        budget=_budget(reader, spec),
        failover=_failover(reader, spec),
    )
    if reader.problems:
        raise PolicyError(reader.problems, source)
    return policy


Parsed = TypeVar("Parsed")


def load_file(path: Path, parse: Callable[[Any, str], Parsed]) -> Parsed:
    """Read a YAML or JSON file (JSON is YAML) and parse it; every failure is a PolicyError."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError([f"cannot read: {exc.strerror}"], str(path)) from exc
    except yaml.YAMLError as exc:
        raise PolicyError([f"not valid YAML or JSON: {exc}"], str(path)) from exc
    return parse(document, str(path))


def load_policy(path: Path) -> RoutingPolicy:
    return load_file(path, parse_policy)
