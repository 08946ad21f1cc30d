"""The SmallModel spec parser: defaults in one place, problems named by field, and the CRD agreeing.

The CRD's schema repeats the parser's field names and defaults; the agreement
tests catch the two drifting apart, which would let the API server default a
field one way while the operator reads it another (or drop a field the
operator never reads).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefleet.operator.spec import (
    SPEC_FIELDS,
    Autoscaling,
    ModelFile,
    ModelSource,
    Placement,
    Serving,
    SmallModelSpec,
    SpecError,
    parse_smallmodel_spec,
)

ROOT = Path(__file__).resolve().parents[2]
CRD_TEMPLATE = ROOT / "charts" / "edgefleet" / "templates" / "crds" / "smallmodels.yaml"
BUILTIN = {"gguf": {"uri": "builtin://smollm2-135m"}}


def crd_spec_schema() -> dict[str, Any]:
    """The SmallModel CRD's `spec` schema, read from the chart template without helm.

    Only the CRD's head and tail are templated (a comment, labels, annotations,
    the crds.enabled gate): dropping those lines leaves the plain CRD.
    """
    comment = re.compile(r"\{\{-?\s*/\*.*?\*/\s*-?\}\}", flags=re.DOTALL)
    text = comment.sub("", CRD_TEMPLATE.read_text(encoding="utf-8"))
    plain = "\n".join(line for line in text.splitlines() if "{{" not in line)
    crd = yaml.safe_load(plain)
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]


def snake(name: str) -> str:
    """camelCase field name to the parser's attribute: perNode -> per_node, sha256 -> sha256."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def nested_dataclass(hint: Any) -> type | None:
    """The dataclass a field holds (`Serving`, `ModelFile | None`), or None for plain values."""
    candidates = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    found = [c for c in candidates if dataclasses.is_dataclass(c)]
    return found[0] if found else None


def parser_default(item: dataclasses.Field[Any]) -> Any:
    if item.default is not dataclasses.MISSING:
        return item.default
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return None  # required: no default on either side


def assert_schema_is_the_parsers(schema: dict[str, Any], parsed: type, path: str) -> None:
    """Every field and scalar default of `schema` is `parsed`'s, recursively, and vice versa."""
    properties = schema["properties"]
    by_name = {item.name: item for item in dataclasses.fields(parsed)}
    assert {snake(name) for name in properties} == set(by_name), path
    hints = typing.get_type_hints(parsed)
    for name, child in properties.items():
        item = by_name[snake(name)]
        default = parser_default(item)
        nested = nested_dataclass(hints[item.name])
        if nested is not None and "properties" in child:
            assert_schema_is_the_parsers(child, nested, f"{path}.{name}")
            if "default" in child:
                # An object the API server defaults to {} is parsed to its defaults.
                assert (child["default"], default) == ({}, nested()), f"{path}.{name}"
        elif child.get("type") in ("integer", "string", "boolean"):
            # The parser's None is "no default in the CRD" (the operator decides).
            assert child.get("default") == default, f"{path}.{name}"


def test_smallmodel_fields_and_defaults_are_the_parsers() -> None:
    schema = crd_spec_schema()

    assert set(schema["properties"]) == set(SPEC_FIELDS)
    assert_schema_is_the_parsers(schema, SmallModelSpec, "spec")


def test_engine_choices_are_the_parsers() -> None:
    engine = crd_spec_schema()["properties"]["engine"]

    for choice in engine["enum"]:
        assert parse_smallmodel_spec({"source": BUILTIN, "engine": choice}).engine == choice
    with pytest.raises(SpecError, match=r"spec\.engine: must be one of auto, llamacpp, vllm"):
        parse_smallmodel_spec({"source": BUILTIN, "engine": "tensorrt"})


def test_a_minimal_spec_gets_every_default() -> None:
    assert parse_smallmodel_spec({"source": BUILTIN}) == SmallModelSpec(
        source=ModelSource(gguf=ModelFile("builtin://smollm2-135m", "")),
        engine="auto",
        replicas=None,
        per_node=False,
        placement=Placement(),
        resources={},
        serving=Serving(context_length=2048, max_concurrency=None, max_queue=16, instances=1),
        autoscaling=None,
    )


def test_a_full_spec_is_read_field_by_field() -> None:
    toleration = {"key": "edge", "operator": "Exists", "effect": "NoSchedule"}
    affinity = {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
    spec = {
        "source": {
            "gguf": {"uri": "pvc://models/m.gguf", "sha256": "a" * 64},
            "hf": {"uri": "file:///srv/m-hf"},
        },
        "engine": "llamacpp",
        "placement": {
            "nodeSelector": {"tier": "edge"},
            "tolerations": [toleration],
            "affinity": affinity,
            "sites": ["s1", "s2"],
        },
        "resources": {"requests": {"cpu": "2"}},
        "serving": {"contextLength": 4096, "maxConcurrency": 2, "maxQueue": 8, "instances": 2},
        "autoscaling": {"minReplicas": 0, "maxReplicas": 6, "targetInFlightPerReplica": 3},
    }

    assert parse_smallmodel_spec(spec) == SmallModelSpec(
        source=ModelSource(
            gguf=ModelFile("pvc://models/m.gguf", "a" * 64), hf=ModelFile("file:///srv/m-hf")
        ),
        engine="llamacpp",
        placement=Placement({"tier": "edge"}, (toleration,), affinity, ("s1", "s2")),
        resources={"requests": {"cpu": "2"}},
        serving=Serving(context_length=4096, max_concurrency=2, max_queue=8, instances=2),
        autoscaling=Autoscaling(min_replicas=0, max_replicas=6, target_in_flight_per_replica=3),
    )


def test_the_parsed_spec_shares_nothing_with_the_resource() -> None:
    spec = {"source": BUILTIN, "resources": {"limits": {"memory": "1Gi"}}}

    parsed = parse_smallmodel_spec(spec)
    spec["resources"]["limits"]["memory"] = "9Gi"

    assert parsed.resources == {"limits": {"memory": "1Gi"}}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({}, 1),
        ({"replicas": 3}, 3),
        ({"replicas": 0}, 0),
        ({"perNode": True}, None),
        ({"autoscaling": {"minReplicas": 2, "maxReplicas": 5}}, 2),
        ({"autoscaling": {"maxReplicas": 5}}, 1),
        ({"autoscaling": {"minReplicas": 0, "maxReplicas": 5}}, 0),
    ],
)
def test_requested_replicas(spec: dict[str, Any], expected: int | None) -> None:
    assert parse_smallmodel_spec({"source": BUILTIN, **spec}).requested_replicas() == expected


@pytest.mark.parametrize(
    ("serving", "engine", "concurrency"),
    [
        # What each engine class runs well, when the spec leaves it open.
        ({}, "llamacpp", 4),
        ({}, "vllm", 64),
        # A llama.cpp pool decodes one request per instance.
        ({"instances": 3}, "llamacpp", 3),
        ({"instances": 3}, "vllm", 64),
        ({"maxConcurrency": 64}, "vllm", 64),
        ({"maxConcurrency": 8}, "llamacpp", 8),
        ({"maxConcurrency": 2, "instances": 3}, "llamacpp", 2),
    ],
)
def test_concurrency_defaults_per_engine_class(
    serving: dict[str, Any], engine: str, concurrency: int
) -> None:
    parsed = parse_smallmodel_spec({"source": BUILTIN, "serving": serving})

    assert parsed.serving.concurrency(engine) == concurrency


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({}, "spec.source: needs gguf (for llama.cpp), hf (for vLLM), or both"),
        ({"source": {"gguf": {}}}, "spec.source.gguf.uri: required"),
        ({"source": {"oci": {"uri": "x"}}}, "spec.source.oci: unknown field"),
        ({"source": BUILTIN, "replicas": -1}, "spec.replicas: must be an integer >= 0, got -1"),
        ({"source": BUILTIN, "replicas": "2"}, "spec.replicas: must be an integer >= 0"),
        ({"source": BUILTIN, "perNode": "yes"}, "spec.perNode: must be true or false"),
        ({"source": BUILTIN, "serving": {"maxQueue": -1}}, "spec.serving.maxQueue: must be"),
        ({"source": BUILTIN, "serving": {"batch": 4}}, "spec.serving.batch: unknown field"),
        ({"source": BUILTIN, "placement": {"sites": "s1"}}, "spec.placement.sites: must be"),
        ({"source": BUILTIN, "replicas": 2, "perNode": True}, "replicas and perNode: true are"),
        (
            {"source": BUILTIN, "autoscaling": {"minReplicas": 3, "maxReplicas": 2}},
            "spec.autoscaling.minReplicas: must not exceed maxReplicas",
        ),
        (
            {"source": BUILTIN, "serving": {"maxConcurrency": 4, "instances": 2}},
            "spec.serving.maxConcurrency: 4 is more than serving.instances (2)",
        ),
        (
            {"source": BUILTIN, "engine": "vllm", "serving": {"instances": 2}},
            "spec.serving.instances: 2 asks for a pool of llama.cpp model copies; engine vllm",
        ),
    ],
)
def test_problems_name_their_field(spec: dict[str, Any], problem: str) -> None:
    with pytest.raises(SpecError, match=re.escape(problem)):
        parse_smallmodel_spec(spec)


def test_every_problem_is_reported_at_once() -> None:
    spec = {"engine": "gpu", "replicas": -2, "serving": {"contextLength": 1}}

    with pytest.raises(SpecError) as refused:
        parse_smallmodel_spec(spec)

    assert [problem.split(":")[0] for problem in refused.value.problems] == [
        "spec.engine",
        "spec.source",
        "spec.replicas",
        "spec.serving.contextLength",
    ]
    assert str(refused.value).startswith("invalid SmallModel: spec.engine: must be one of")


@pytest.mark.parametrize("name", ["smallmodel.yaml", "smallmodel-edge.yaml"])
def test_the_examples_pass_the_parser(name: str) -> None:
    example = yaml.safe_load((ROOT / "examples" / name).read_text(encoding="utf-8"))

    parse_smallmodel_spec(example["spec"])
